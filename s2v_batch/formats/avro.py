"""Avro object container files read block by block, with their writer schemas parsed once.

ZTF publishes every alert as its own container file, each carrying the full writer schema
(15-50 kB of JSON). ``fastavro.reader`` parses that schema again for every file, which costs
about as much as decoding the alert. Here the header is read by hand (magic, metadata map, sync
marker: Avro 1.x specification, "Object Container Files"), the schema is parsed once per
distinct schema text and kept, and each block's records are decoded with
``fastavro.schemaless_reader``.

Every codec of the specification is decompressed here, block by block: ``null``, ``deflate``
(raw RFC 1951), ``snappy`` (raw snappy through ``cramjam``, then the big-endian CRC-32 of the
uncompressed block, which is checked), ``zstandard`` (``compression.zstd``, or its backport
``backports.zstd`` before Python 3.14: the module fastavro itself writes with), ``bzip2`` and
``xz`` (standard library). Brokers publish alerts in all of them (Fink: snappy). A codec whose
library is missing, or one outside the specification, is a one-line :class:`ContainerError`.
"""

from __future__ import annotations

import bz2
import functools
import io
import json
import lzma
import struct
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


def _null(data: bytes) -> bytes:
    return data


def _inflate(data: bytes) -> bytes:
    return zlib.decompress(data, -15)  # raw deflate: no zlib header, as the specification says


# The codec libraries are dependencies; a missing one fails only the containers that need it.
try:
    from cramjam import snappy as _snappy_lib
except ImportError:
    _snappy_lib = None
try:
    from compression import zstd as _zstd_lib  # Python 3.14+
except ImportError:
    try:
        from backports import zstd as _zstd_lib
    except ImportError:
        _zstd_lib = None


def _snappy(data: bytes) -> bytes:
    if _snappy_lib is None:
        raise ContainerError("snappy codec needs the cramjam package (pip install cramjam)")
    if len(data) < 4:
        raise ContainerError("corrupt snappy block (shorter than its CRC)")
    out = bytes(_snappy_lib.decompress_raw(data[:-4]))
    if zlib.crc32(out) != struct.unpack(">I", data[-4:])[0]:
        raise ContainerError("corrupt snappy block (CRC-32 mismatch)")
    return out


def _zstandard(data: bytes) -> bytes:
    if _zstd_lib is None:
        raise ContainerError(
            "zstandard codec needs the backports.zstd package (pip install backports.zstd)"
        )
    # decompress() reads every frame of the block, with or without a content size in its header.
    return _zstd_lib.decompress(data)


#: Codec name -> block decompressor (each raises its library's error on corrupt data).
CODECS = {
    "null": _null,
    "deflate": _inflate,
    "snappy": _snappy,
    "zstandard": _zstandard,
    "bzip2": bz2.decompress,
    "xz": lzma.decompress,
}


def decompress_block(codec: str, data: bytes) -> bytes:
    """The records' bytes of one block of a container written with ``codec``.

    Raises
    ------
    ContainerError
        An unknown codec, a codec whose library is missing, or a corrupt block.
    """
    try:
        fn = CODECS[codec]
    except KeyError:
        raise ContainerError(
            f"unsupported Avro codec {codec!r} (read: {', '.join(CODECS)})"
        ) from None
    try:
        return fn(data)
    except ContainerError:
        raise
    except Exception as exc:  # zlib.error, OSError (bz2), LZMAError, ZstdError, cramjam's errors
        text = str(exc).strip().splitlines()
        raise ContainerError(
            f"corrupt {codec} block ({text[0] if text else type(exc).__name__})"
        ) from None


def iter_records(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """The records of a container file, block by block.

    Raises
    ------
    ContainerError, and fastavro's errors for a record that does not decode
        At the first damage; the records before it have been yielded.
    """
    import fastavro

    meta, sync, _ = read_header(stream)
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    if codec not in CODECS:
        raise ContainerError(f"unsupported Avro codec {codec!r} (read: {', '.join(CODECS)})")
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
        buf = io.BytesIO(decompress_block(codec, data))
        for _ in range(count):
            yield fastavro.schemaless_reader(buf, schema, None)
