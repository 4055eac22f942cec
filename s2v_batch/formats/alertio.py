"""Alert packets out of files and archives, as records (dicts), streaming.

Supported inputs (what :func:`iter_path` and :func:`iter_archive` read):

- **Avro object container files** (``.avro``; magic ``Obj\\x01``), of one or many records: ZTF's
  alert files and Kafka messages, Rubin packets written with a container. They carry their writer's
  schema, so any schema version reads.
- **Confluent-framed schemaless records** (byte 0, a 4-byte schema ID, then one record; several
  may follow each other in a file): Rubin's Kafka messages as brokers dump them. The schema comes
  from the ``.avsc`` files found in the raw tree (:class:`~s2v_batch.formats.alertschema.SchemaRegistry`).
  Bare schemaless records without that header cannot be read (nothing says their schema).
- **Parquet alert files** (``.parquet``) with the packets' nested fields as columns (``candid``,
  ``candidate`` struct, ``cutoutScience`` struct or binary ...), read a row group at a time.
- **Archives** ``.tar.gz`` / ``.tgz`` of such files (ZTF's ``ztf_public_YYYYMMDD.tar.gz``), read
  as a stream with :mod:`tarfile`'s stream mode, one member at a time: never unpacked to disk,
  never held whole in memory.

Every item is ``(where, record)`` or ``(where, AlertReadError)``: a file or member that cannot be
read (whole, or from some point on) yields one error in place of what it could not read.
"""

from __future__ import annotations

import io
import itertools
import re
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from s2v_batch.core.fsutil import data_bytes
from s2v_batch.formats.alertschema import (
    CONTAINER_MAGIC,
    FRAME,
    SchemaRegistry,
    schema_name,
    unframe_header,
)
from s2v_batch.formats.avro import iter_records

#: Names of inputs that hold alert packets (archives are told apart by their suffix).
ALERT_FILE_RE = re.compile(r"\.(avro|parquet)$", re.IGNORECASE)
ALERT_ARCHIVE_RE = re.compile(r"\.(tar\.gz|tgz)$", re.IGNORECASE)
#: Rows decoded at a time from a Parquet alert file (cut-outs make a row ~100 kB).
PARQUET_BATCH = 256

Item = tuple[str, "dict[str, Any] | AlertReadError"]


class AlertReadError(Exception):
    """A file, member or record that cannot be read; the message is the quarantine reason."""


def is_alert_file(name: str) -> bool:
    """An ``.avro`` or ``.parquet`` file."""
    return bool(ALERT_FILE_RE.search(name))


def is_alert_archive(name: str) -> bool:
    """A ``.tar.gz`` or ``.tgz`` archive (of alert files)."""
    return bool(ALERT_ARCHIVE_RE.search(name))


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def iter_avro(stream: BinaryIO, where: str, registry: SchemaRegistry | None) -> Iterator[Item]:
    """Records of an Avro stream: a container file, or framed schemaless records.

    ``stream`` must support ``peek`` (a buffered reader) so that its kind can be told without
    consuming it. Records are yielded as they are decoded: memory does not grow with the file.
    """
    import fastavro

    head = stream.peek(8)[:8]
    if not head:
        yield where, AlertReadError("empty file")
        return
    if head.startswith(CONTAINER_MAGIC):
        n = 0
        try:
            for rec in iter_records(stream):
                yield f"{where}#{n}", rec
                n += 1
        except Exception as exc:  # fastavro (and a damaged archive under it) raise many types
            what = f"from record {n} on" if n else "(no record readable)"
            yield (
                f"{where}#{n}",
                AlertReadError(f"undecodable Avro container {what}: {_error_text(exc)}"),
            )
        return
    if unframe_header(head) is None:
        yield where, AlertReadError("not Avro (no container header, no Confluent framing)")
        return
    n = 0
    while True:
        hdr = stream.read(FRAME.size)
        if not hdr:
            return
        sid = unframe_header(hdr)
        here = f"{where}#{n}"
        if sid is None:
            yield here, AlertReadError(f"bad Confluent frame header at record {n}")
            return
        try:
            schema = (registry or SchemaRegistry()).get(sid)
        except KeyError as exc:
            yield here, AlertReadError(f"framed record: {exc.args[0]}")
            return
        try:
            rec = fastavro.schemaless_reader(stream, schema, None)
        except Exception as exc:
            yield (
                here,
                AlertReadError(f"undecodable framed record (schema ID {sid}): {_error_text(exc)}"),
            )
            return
        yield here, rec
        n += 1


def iter_parquet(path: str) -> Iterator[Item]:
    """Records of a Parquet alert file, a batch of rows at a time."""
    import pyarrow.parquet as pq

    n = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
            for rec in batch.to_pylist():
                yield f"{path}#{n}", rec
                n += 1
    except Exception as exc:  # pyarrow raises several types for damaged files
        yield (
            f"{path}#{n}",
            AlertReadError(f"unreadable Parquet alert file from row {n} on ({_error_text(exc)})"),
        )


def iter_path(path: str, registry: SchemaRegistry | None = None) -> Iterator[Item]:
    """Records of one loose alert file (``.avro`` or ``.parquet``)."""
    if path.lower().endswith(".parquet"):
        yield from iter_parquet(path)
        return
    try:
        f = open(path, "rb", buffering=1 << 16)
    except OSError as exc:
        yield path, AlertReadError(f"unreadable file ({exc.strerror or exc})")
        return
    with f:
        try:
            yield from iter_avro(f, path, registry)
        except OSError as exc:
            yield path, AlertReadError(f"unreadable file ({exc.strerror or exc})")


def iter_archive(path: str, registry: SchemaRegistry | None = None) -> Iterator[Item]:
    """Records of every ``.avro`` member of a ``.tar.gz`` archive, streaming member by member.

    Members that are not ``.avro`` files are skipped (a README, checksums). A truncated or
    corrupt archive yields one error for the rest of it after the records read so far.
    """
    for group in iter_archive_members(path, registry):
        yield from group


def iter_archive_members(
    path: str, registry: SchemaRegistry | None = None, skip: int = 0
) -> Iterator[Iterator[Item]]:
    """The items of an archive (as :func:`iter_archive`) grouped: one iterator per ``.avro``
    member, each to be read whole before the next is taken (they share one stream); an archive
    that cannot be opened, or is damaged past some member, gives one last group of one error.

    ``skip``: the first ``skip`` ``.avro`` members are passed over undecoded (their bytes are
    inflated, as a gzip stream must be, but neither their Avro nor their cut-outs are decoded):
    a resumed ingest goes on after the members it has staged.
    """
    try:
        raw = open(path, "rb", buffering=1 << 16)
    except OSError as exc:
        yield iter([(path, AlertReadError(f"unreadable alert archive ({_error_text(exc)})"))])
        return
    with raw:
        yield from _iter_archive_stream(raw, path, registry, skip)


def _iter_archive_stream(
    raw: BinaryIO, path: str, registry: SchemaRegistry | None, skip: int = 0
) -> Iterator[Iterator[Item]]:
    try:
        tf = tarfile.open(fileobj=raw, mode="r|*", bufsize=1 << 16)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield iter([(path, AlertReadError(f"unreadable alert archive ({_error_text(exc)})"))])
        return
    broken: list[BaseException] = []

    def member_items(f: BinaryIO, where: str) -> Iterator[Item]:
        try:
            yield from iter_avro(f, where, registry)
        except Exception as exc:  # the archive's stream failed under the member: see below
            broken.append(exc)

    with tf:
        last = ""
        try:
            for member in tf:
                # tarfile keeps every TarInfo it has read (for getmembers): ~0.5 kB a member,
                # 0.5 GB for a night of a million alerts. A stream never goes back to them.
                tf.members.clear()
                if not member.isfile() or not member.name.lower().endswith(".avro"):
                    continue
                last = member.name
                if skip:
                    skip -= 1  # stream mode: the next member header is found past its data
                    continue
                # ExFileObject is a buffered reader: it peeks and streams, the member stays
                # in the archive's stream (never held whole).
                yield member_items(tf.extractfile(member), f"{path}:{member.name}")
                if broken:
                    raise broken[0]
        except Exception as exc:  # tarfile, gzip and zlib errors of a damaged archive
            after = f" after member {last}" if last else ""
            error = AlertReadError(f"damaged alert archive{after} ({_error_text(exc)})")
            yield iter([(path, error)])


def estimate_records(path: str, registry: SchemaRegistry | None = None, sample: int = 64) -> int:
    """How many alerts (records and unreadable items) an alert file or archive holds.

    Exact for a Parquet file (its metadata) and for a file or archive of up to ``sample``
    records; beyond that, estimated from the bytes on disk that its first ``sample`` records
    took (an archive's compressed bytes). For the free-space check before ingest: reads a few
    records, never the whole input.
    """
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # a damaged file: its worker reads and quarantines it
            return 0
    size = data_bytes(path)
    with open(path, "rb", buffering=1 << 16) as raw:
        if is_alert_archive(path):
            items = itertools.chain.from_iterable(_iter_archive_stream(raw, path, registry))
        else:
            items = iter_avro(raw, path, registry)
        n = 0
        for n, _ in enumerate(items, start=1):  # noqa: B007  (n counts the items read)
            if n >= sample:
                break
        else:
            return n  # the whole input was read
        used = raw.tell()
    return max(n, round(n * size / max(used, 1)))


def peek_schema_name(path: str, registry: SchemaRegistry | None = None) -> str | None:
    """The name of the top-level schema of an alert file or archive's first member, reading only
    its head (used to tell the survey of a folder); None when it cannot be told."""
    try:
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            names = set(pq.read_schema(path).names)
            if {"candid", "candidate"} <= names:
                return "ztf.alert"
            if "diaSource" in names:
                return "lsst.alert"
            return None
        if is_alert_archive(path):
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    if member.isfile() and member.name.lower().endswith(".avro"):
                        return _avro_schema_name(tf.extractfile(member), registry)
            return None
        with open(path, "rb") as f:
            return _avro_schema_name(io.BufferedReader(f), registry)
    except Exception:
        return None


def _avro_schema_name(stream: BinaryIO, registry: SchemaRegistry | None) -> str | None:
    import fastavro

    head = stream.peek(8)[:8]
    if head.startswith(CONTAINER_MAGIC):
        return schema_name(fastavro.reader(stream).writer_schema)
    sid = unframe_header(head)
    if sid is None or registry is None:
        return None
    try:
        return schema_name(registry.get(sid))
    except KeyError:
        return None
