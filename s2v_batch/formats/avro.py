"""Avro object container files read block by block, with their writer schemas parsed once.

ZTF publishes every alert as its own container file, each carrying the full writer schema
(15-50 kB of JSON). ``fastavro.reader`` parses that schema again for every file, which costs
about as much as decoding the alert. Here the header is read by hand (magic, metadata map, sync
marker: Avro 1.x specification, "Object Container Files"), the schema is parsed once per
distinct schema text and kept, and each block's records are decoded with
``fastavro.schemaless_reader``. Codecs ``null`` and ``deflate`` are read here; a file of any
other codec is handed whole to ``fastavro.reader``.
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
#: A block (or metadata value) may not claim more than this: a damaged length is not allocated.
MAX_BLOCK_BYTES = 512 << 20


class ContainerError(ValueError):
    """A damaged container file; the message says where."""


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ContainerError(f"truncated {what} ({len(data)} of {n} bytes)")
    return data


def read_long(stream: BinaryIO) -> int | None:
    """One zig-zag varint ``long``; None at a clean end of the stream."""
    shift = result = 0
    first = True
    while True:
        b = stream.read(1)
        if not b:
            if first:
                return None
            raise ContainerError("truncated varint")
        first = False
        byte = b[0]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7
        if shift > 63:
            raise ContainerError("varint longer than 64 bits")


def _length(stream: BinaryIO, what: str) -> int:
    n = read_long(stream)
    if n is None:
        raise ContainerError(f"truncated {what}")
    if not 0 <= n <= MAX_BLOCK_BYTES:
        raise ContainerError(f"bad {what} length {n}")
    return n


def read_header(stream: BinaryIO) -> tuple[dict[str, bytes], bytes, bytes]:
    """The metadata map, the sync marker, and the header's bytes as read (for a fallback)."""
    raw = io.BytesIO()

    class _Tee:
        def read(self, n: int) -> bytes:
            data = stream.read(n)
            raw.write(data)
            return data

    tee = _Tee()
    if _read_exact(tee, 4, "header") != MAGIC:
        raise ContainerError("not an Avro container file")
    meta: dict[str, bytes] = {}
    while True:
        count = read_long(tee)
        if count is None:
            raise ContainerError("truncated header")
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's byte size
            _length(tee, "metadata block")
            count = -count
        for _ in range(count):
            key = _read_exact(tee, _length(tee, "metadata key"), "metadata key")
            meta[key.decode("utf-8", "replace")] = _read_exact(
                tee, _length(tee, "metadata value"), "metadata value"
            )
    sync = _read_exact(tee, SYNC_SIZE, "sync marker")
    return meta, sync, raw.getvalue()


@functools.lru_cache(maxsize=32)
def _parsed(schema_json: bytes) -> Any:
    import fastavro

    return fastavro.parse_schema(json.loads(schema_json))


def writer_schema(meta: dict[str, bytes]) -> Any:
    """The parsed writer schema of a container's metadata (cached by its text)."""
    try:
        return _parsed(meta["avro.schema"])
    except KeyError:
        raise ContainerError("no avro.schema in the header") from None


class _Prepended(io.RawIOBase):
    """``head`` then the rest of ``stream``: a consumed header handed back to fastavro."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = io.BytesIO(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._head.readinto(b)
        if n:
            return n
        data = self._stream.read(len(b))
        b[: len(data)] = data
        return len(data)


def iter_records(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """The records of a container file, block by block.

    Raises
    ------
    ContainerError, and fastavro's errors for a record that does not decode
        At the first damage; the records before it have been yielded.
    """
    import fastavro

    meta, sync, head = read_header(stream)
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace")
    if codec not in ("null", "deflate"):
        yield from fastavro.reader(io.BufferedReader(_Prepended(head, stream)))
        return
    schema = writer_schema(meta)
    while True:
        count = read_long(stream)
        if count is None:
            return
        if count < 0:
            raise ContainerError(f"bad block record count {count}")
        data = _read_exact(stream, _length(stream, "block"), "block")
        if _read_exact(stream, SYNC_SIZE, "sync marker") != sync:
            raise ContainerError("sync marker mismatch (damaged block)")
        if codec == "deflate":
            try:
                data = zlib.decompress(data, -15)
            except zlib.error as exc:
                raise ContainerError(f"corrupt deflate block ({exc})") from None
        buf = io.BytesIO(data)
        for _ in range(count):
            yield fastavro.schemaless_reader(buf, schema, None)
