"""Read a night's stamps straight from its Zarr v3 shard files, without zarr-python's machinery.

A night's ``stamps`` array (:mod:`s2v_batch.store.dataset`) is sharded along ``stamp``: a shard file holds
inner chunks of whole stamps, each compressed on its own, and an index of their byte ranges.
zarr-python reads a block through its asyncio event loop and copies every decoded chunk into a
freshly allocated output; profiled on the 2-core VM, reading 4,096 float32 stamps cost 176 us of
CPU a stamp against 46 us for the zstd decompression itself (uint8: 35 against 12), about a tenth
of the CNN's own cost. :class:`StampReader` parses the array's ``zarr.json`` once, keeps each
shard's index, reads the byte ranges a block needs into a reused buffer and decompresses each
inner chunk straight into the caller's array; file reads and decompression release the GIL, so
reader threads run beside the model.

It reads exactly the layouts the store writes (``sharding_indexed`` over whole stamps, inner
codecs ``bytes`` little-endian then ``zstd`` or ``blosc``, index ``bytes`` + optional ``crc32c``,
at the end or the start of the shard, default chunk keys) and hands anything else to zarr, so it
never returns different values than zarr would (tested on both store encodings).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

_EMPTY = 2**64 - 1


class CorruptShardError(ValueError):
    """A shard file whose bytes do not hold what its index says (cut short, bad checksum): the
    stored night is damaged, which no retry mends."""

    def __init__(self, path: Path, what: str) -> None:
        night = next((p for p in Path(path).parents if p.suffix == ".zarr"), Path(path))
        super().__init__(
            f"{path}: {what}: the stored night is damaged; delete {night} and ingest it again"
        )


class _Layout:
    """What the fast path needs from a ``stamps/zarr.json``; raises ValueError when unsupported."""

    def __init__(self, meta: dict[str, Any]) -> None:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise ValueError("not a Zarr v3 array")
        if meta.get("storage_transformers"):
            raise ValueError("storage transformers")
        self.shape = tuple(int(v) for v in meta["shape"])
        grid = meta["chunk_grid"]
        shard = tuple(int(v) for v in grid["configuration"]["chunk_shape"])
        if grid["name"] != "regular" or shard[1:] != self.shape[1:]:
            raise ValueError("shards must span whole stamps")
        self.shard = shard[0]
        keys = meta["chunk_key_encoding"]
        if keys["name"] != "default":
            raise ValueError("chunk keys")
        self.sep = keys.get("configuration", {}).get("separator", "/")
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.fill = self.dtype.type(meta["fill_value"])
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            raise ValueError("not sharded")
        conf = codec["configuration"]
        inner = tuple(int(v) for v in conf["chunk_shape"])
        if inner[1:] != self.shape[1:] or self.shard % inner[0]:
            raise ValueError("inner chunks must be whole stamps and divide the shard")
        self.chunk = inner[0]
        self.n_inner = self.shard // self.chunk
        self.decoder = _decoder(conf["codecs"], self.dtype)
        index = [c["name"] for c in conf["index_codecs"]]
        if (
            index[0] != "bytes"
            or conf["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little"
            or index[1:] not in ([], ["crc32c"])
        ):
            raise ValueError("index codecs")
        self.crc = index[1:] == ["crc32c"]
        self.index_at_end = conf.get("index_location", "end") == "end"
        self.index_bytes = 16 * self.n_inner + (4 if self.crc else 0)
        self.stamp_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:]))


def _decoder(codecs: list[dict[str, Any]], dtype: np.dtype):
    """The decompressor of the inner chunks (``bytes`` little-endian, then zstd or blosc)."""
    if not codecs or codecs[0]["name"] != "bytes":
        raise ValueError("inner codecs must start with bytes")
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if endian != "little" and dtype.itemsize > 1:
        raise ValueError("big-endian chunks")
    rest = codecs[1:]
    if not rest:
        return None
    if len(rest) != 1:
        raise ValueError("more than one compressor")
    import numcodecs

    name, conf = rest[0]["name"], rest[0].get("configuration", {})
    if name == "zstd":
        return numcodecs.Zstd(level=int(conf.get("level", 0)))
    if name == "blosc":
        return numcodecs.Blosc()  # decoding reads everything it needs from the blosc header
    raise ValueError(f"compressor {name}")


class StampReader:
    """Reads blocks of stamps of one night's ``stamps`` array into numpy arrays.

    Thread-safe: shard indexes are shared, scratch buffers are per thread. Falls back to
    zarr-python for layouts it does not know.

    Parameters
    ----------
    array_path : path
        The ``stamps`` folder of a night dataset (``<night>.zarr/stamps``).
    """

    def __init__(self, array_path: str | os.PathLike[str]) -> None:
        self.path = Path(array_path)
        meta = json.loads((self.path / "zarr.json").read_text())
        self.shape = tuple(int(v) for v in meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        try:
            self._layout: _Layout | None = _Layout(meta)
        except (ValueError, KeyError, TypeError):
            self._layout = None
        self._zarr: Any = None
        self._indexes: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._local = threading.local()

    @property
    def fast(self) -> bool:
        """Whether blocks are read by this module (True) or by zarr-python (False)."""
        return self._layout is not None

    @property
    def chunk_stamps(self) -> int:
        """Stamps per inner chunk (the unit of decompression: read whole ones)."""
        return self._layout.chunk if self._layout is not None else self._zarr_array().chunks[0]

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Stamps ``[start, stop)`` as an array ``(stop - start, h, w, c)`` of the stored dtype.

        Parameters
        ----------
        start, stop : int
            A range within the array (clipped to it, as a slice would be).
        out : numpy.ndarray, optional
            A C-contiguous array of that shape and dtype to fill (no allocation; reuse it
            between blocks). A new one is returned when omitted.

        Returns
        -------
        numpy.ndarray
            ``out`` when given.
        """
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        stop = max(start, stop)
        shape = (stop - start, *self.shape[1:])
        if out is None:
            out = np.empty(shape, self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {shape}")
        if self._layout is None:
            out[...] = self._zarr_array()[start:stop]
            return out
        lay = self._layout
        for shard in range(start // lay.shard, -(-stop // lay.shard) if stop > start else 0):
            s0 = shard * lay.shard
            a, b = max(start, s0), min(stop, s0 + lay.shard)
            self._read_shard(shard, a - s0, b - s0, out[a - start : b - start])
        return out

    # ------------------------------------------------------------------ internals

    def _zarr_array(self):
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(self.path, mode="r")
        return self._zarr

    def _shard_file(self, shard: int) -> Path:
        lay = self._layout
        parts = ["c", str(shard), *["0"] * (len(self.shape) - 1)]
        return self.path.joinpath(*parts) if lay.sep == "/" else self.path / lay.sep.join(parts)

    def _index(self, shard: int, fd: int) -> np.ndarray:
        st = os.fstat(fd)
        key = (shard, st.st_ino, st.st_size, st.st_mtime_ns)  # a rewritten shard is read anew
        idx = self._indexes.get(key)
        if idx is not None:
            return idx
        lay = self._layout
        pos = st.st_size - lay.index_bytes if lay.index_at_end else 0
        raw = os.pread(fd, lay.index_bytes, pos)
        if len(raw) != lay.index_bytes:
            raise CorruptShardError(self._shard_file(shard), "shard index cut short")
        if lay.crc:
            import google_crc32c

            body, stored = raw[:-4], raw[-4:]
            if np.uint32(google_crc32c.value(body)).tobytes() != stored:
                raise CorruptShardError(self._shard_file(shard), "shard index checksum mismatch")
            raw = body
        idx = np.frombuffer(raw, dtype="<u8").reshape(lay.n_inner, 2).copy()
        self._indexes[key] = idx
        return idx

    def _scratch(self, nbytes: int) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = bytearray(max(nbytes, 2 * len(buf) if buf is not None else 0))
            self._local.buf = buf
        return memoryview(buf)[:nbytes]

    def _read_shard(self, shard: int, a: int, b: int, out: np.ndarray) -> None:
        """Stamps ``[a, b)`` of one shard (offsets within it) into ``out``."""
        lay = self._layout
        try:
            fd = os.open(self._shard_file(shard), os.O_RDONLY)
        except FileNotFoundError:  # never written: zarr reads the fill value
            out[...] = lay.fill
            return
        try:
            idx = self._index(shard, fd)
            c0, c1 = a // lay.chunk, -(-b // lay.chunk)
            ranges = idx[c0:c1]
            present = ranges[:, 0] != _EMPTY
            if present.any():
                lo = int(ranges[present, 0].min())
                hi = int((ranges[present, 0] + ranges[present, 1]).max())
                data = self._scratch(hi - lo)
                if os.preadv(fd, [data], lo) != hi - lo:
                    raise CorruptShardError(self._shard_file(shard), "shard cut short")
            for k, (off, nbytes) in zip(range(c0, c1), ranges.tolist(), strict=True):
                k0 = k * lay.chunk  # the chunk's stamps, within the shard
                lo_s, hi_s = max(a, k0), min(b, k0 + lay.chunk)
                dest = out[lo_s - a : hi_s - a]
                if off == _EMPTY:
                    dest[...] = lay.fill
                    continue
                src = data[off - lo : off - lo + nbytes]
                if (lo_s, hi_s) == (k0, k0 + lay.chunk):
                    self._decode(src, dest)
                else:  # a part of a chunk: decode it whole, copy the rows needed
                    whole = np.empty((lay.chunk, *self.shape[1:]), self.dtype)
                    self._decode(src, whole)
                    dest[...] = whole[lo_s - k0 : hi_s - k0]
        finally:
            os.close(fd)

    def _decode(self, src: memoryview, dest: np.ndarray) -> None:
        target = dest.reshape(-1).view(np.uint8)
        dec = self._layout.decoder
        if dec is None:
            if len(src) != target.nbytes:
                raise CorruptShardError(self.path, "an inner chunk has the wrong size")
            target[...] = np.frombuffer(src, np.uint8)
        else:
            dec.decode(src, out=target)
