"""Reading ZTF alert files of every Avro codec: s2v's block reader against ``fastavro.reader``.

ZTF (and brokers) publish one alert per container file, each carrying its ~30 kB writer schema.
``fastavro.reader`` parses that schema again for every file; s2v's reader
(:mod:`s2v_batch.formats.avro`) parses each distinct schema once and decompresses the blocks
itself. Both decode the same records (checked); files are in the page cache, one process.

    python benchmarks/bench_codecs.py --files 400
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
import time
from pathlib import Path

import fastavro
import numpy as np

from s2v_batch.formats.alertio import iter_path
from s2v_batch.formats.alertschema import parsed_schema
from s2v_batch.sim.alerts import ztf_record
from s2v_batch.sim.simulator import simulate_stamps

CODECS = ("null", "deflate", "snappy", "zstandard", "bzip2", "xz")


def write_files(folder: Path, codec: str, n: int) -> list[Path]:
    pix = simulate_stamps(n, np.random.default_rng(1), size=63).pixels
    paths = []
    for i in range(n):
        rec = ztf_record(10**9 + i, "ZTF24bench", 2460311.7, pix[i], rb=0.5, drb=0.5)
        buf = io.BytesIO()
        fastavro.writer(buf, parsed_schema("ztf"), [rec], codec=codec)
        p = folder / f"{codec}-{i}.avro"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def timed(fn, paths: list[Path]) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    ids = fn(paths)
    return time.perf_counter() - t0, ids


def ours(paths: list[Path]) -> list[int]:
    return [rec["candid"] for p in paths for _, rec in iter_path(str(p))]


def plain(paths: list[Path]) -> list[int]:
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out += [rec["candid"] for rec in fastavro.reader(f)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=400)
    args = ap.parse_args(argv)
    print(f"# {platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{args.files} one-alert files per codec")  # fmt: skip
    print("| codec | bytes/file | s2v files/s | fastavro.reader files/s | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for codec in CODECS:
            paths = write_files(Path(d), codec, args.files)
            size = sum(p.stat().st_size for p in paths) / len(paths)
            ours(paths[:5]), plain(paths[:5])  # warm: schema cache, imports
            t_plain, a = timed(plain, paths)
            t_ours, b = timed(ours, paths)
            assert a == b, codec
            n = len(paths)
            print(f"| {codec} | {size:,.0f} | {n / t_ours:,.0f} | {n / t_plain:,.0f} | "
                  f"{t_plain / t_ours:.1f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
