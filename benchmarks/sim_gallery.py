"""The simulator's artifact gallery (docs/artifacts.png): each artifact class as simulated DES
stamps (srch, temp, diff), beside real stamps of that class where the project has one.

Every stamp is drawn as the survey's scanning GIFs show it (:func:`scale_u8`: srch and temp
from the 1st to the 99.5th percentile, diff with zero at mid-grey), so simulated and real look
alike where their pixels do. Real examples, labelled by class by eye:

- ``--des PATH``: the DES scanners' sample of Ayyar et al. (2022): ``input_x.npy`` of
  vmos1/cnn_supernova_b_paper (``model_inference/sample_test_data/``), or a realset ``.npz``
  (benchmarks/realdata/README.md) whose ids are ``ayyar2022-<k>``. The repository states no
  licence: the project does not ship it, and the gallery shows it only where given.
- ``--ztf DIR``: ZTF alert packets (``.avro``/``.parquet``); those with ``drb <= 0.1`` (ZTF's own
  deep real/bogus score calls them bogus) whose class is listed in :data:`ZTF_CLASSES`.

    python benchmarks/sim_gallery.py --ztf tests/data/alerts --out docs/artifacts.png
    python benchmarks/sim_gallery.py --des /path/to/input_x.npy --out /tmp/artifacts.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.sim.encoders import scale_u8
from s2v_batch.sim.physics import ARTIFACT_KINDS
from s2v_batch.sim.simulator import simulate_stamps

#: The DES sample's artifacts (index in input_x.npy) and their class, by eye (docs/SIMULATOR.md).
DES_CLASSES: dict[int, str] = {
    0: "psf_mismatch",  # a star: dark core in a bright ring
    2: "double_star",  # two stars, a dipole on each
    3: "dipole",  # a galaxy core: a +/- pair
    4: "dipole",  # a star: a +/- pair
    7: "noise_spike",  # noise with column-like structure
    9: "psf_mismatch",  # a star: bright core (and a column line in srch)
}
#: ZTF alerts with drb <= 0.1 in tests/data/alerts and their class, by eye (uncertain: sharp
#: compact positives in srch and diff only, 20-30 sigma, at ZTF's 1"/px).
ZTF_CLASSES: dict[int, str] = {
    1095578115915010045: "hot_pixel",  # a flat 2x2 group
    1095578115815010038: "cosmic_ray",  # a short 3x2 deposit
}
N_SIM = 3  # simulated examples a class
N_REAL = 2  # real examples a class, at most
GAP, LABEL_W, HEAD = 3, 112, 14


def _des_stamps(path: Path) -> dict[str, list[np.ndarray]]:
    if path.suffix == ".npz":
        z = np.load(path, allow_pickle=False)
        ids = [str(i) for i in z["ids"]]
        x = {int(i.rsplit("-", 1)[1]): z["x"][j] for j, i in enumerate(ids) if "-" in i}
    else:
        arr = np.load(path, allow_pickle=False)
        x = dict(enumerate(arr))
    out: dict[str, list[np.ndarray]] = {}
    for k, kind in DES_CLASSES.items():
        if k in x:
            out.setdefault(kind, []).append(np.asarray(x[k]))
    return out


def _ztf_stamps(folder: Path) -> dict[str, list[np.ndarray]]:
    # deferred: the alert readers are only needed where ZTF examples are asked for
    from s2v_batch.core.surveys import get_survey
    from s2v_batch.formats.alertio import iter_path
    from s2v_batch.formats.alertpackets import alert_stamp

    ztf = get_survey("ztf")
    out: dict[str, list[np.ndarray]] = {}
    seen: set[int] = set()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".avro", ".parquet")):
        for _, rec in iter_path(str(path)):
            if not isinstance(rec, dict) or rec.get("candid") not in ZTF_CLASSES:
                continue
            if rec["candid"] in seen:
                continue
            seen.add(rec["candid"])
            _, stamp, _, fields = alert_stamp(rec, ztf, 63)
            drb = fields.get("drb")
            if drb is not None and drb <= 0.1:
                out.setdefault(ZTF_CLASSES[rec["candid"]], []).append(stamp)
    return out


def _u8(stamp: np.ndarray) -> np.ndarray:
    """A stamp as its three scanning-GIF images side by side (uint8 kept as it is)."""
    if stamp.dtype == np.uint8:
        return stamp
    return np.stack([scale_u8(stamp[None, :, :, c], ch)[0] for c, ch in enumerate(CHANNELS)], -1)


def _triplet(stamp: np.ndarray, size: int) -> np.ndarray:
    u = _u8(stamp)
    if u.shape[0] != size:  # other surveys' cut-outs: centre-crop or pad to the DES size
        pad = max(0, size - u.shape[0])
        u = np.pad(u, ((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
        o = (u.shape[0] - size) // 2
        u = u[o : o + size, o : o + size]
    row = np.full((size, 3 * size + 2, 1), 255, np.uint8)[..., 0]
    for c in range(3):
        row[:, c * (size + 1) : c * (size + 1) + size] = u[..., c]
    return row


def gallery(real: dict[str, list[tuple[str, np.ndarray]]], seed: int = 26) -> Image.Image:
    """The gallery image: one row a class, N_SIM simulated triplets then the real ones."""
    b = simulate_stamps(6000, np.random.default_rng(seed), real_fraction=0.0)
    size = b.pixels.shape[1]
    tw = 3 * size + 2
    ncol = N_SIM + N_REAL
    w = LABEL_W + ncol * (tw + 3 * GAP) + GAP
    h = HEAD + len(ARTIFACT_KINDS) * (size + GAP) + GAP
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    draw.text((LABEL_W, 1), "simulated DES (srch temp diff)", fill=0)
    draw.text((LABEL_W + N_SIM * (tw + 3 * GAP), 1), "real (source)", fill=0)
    for r, kind in enumerate(ARTIFACT_KINDS):
        y = HEAD + r * (size + GAP)
        draw.text((2, y + size // 2 - 6), kind, fill=0)
        idx = np.flatnonzero(b.kinds == kind)[:N_SIM]
        for j, i in enumerate(idx):
            x = LABEL_W + j * (tw + 3 * GAP)
            img.paste(Image.fromarray(_triplet(b.pixels[i], size)), (x, y))
        for j, (src, stamp) in enumerate(real.get(kind, [])[:N_REAL]):
            x = LABEL_W + (N_SIM + j) * (tw + 3 * GAP) + 2 * GAP
            img.paste(Image.fromarray(_triplet(stamp, size)), (x, y))
            draw.text((x + 2, y + size - 11), src, fill=255)
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/artifacts.png"))
    ap.add_argument("--des", type=Path, help="the DES sample: input_x.npy or a realset .npz")
    ap.add_argument("--ztf", type=Path, help="a folder of ZTF alert packets")
    ap.add_argument("--seed", type=int, default=26)
    args = ap.parse_args(argv)
    real: dict[str, list[tuple[str, np.ndarray]]] = {}
    try:
        if args.des:
            for kind, stamps in _des_stamps(args.des).items():
                real.setdefault(kind, []).extend(("DES", s) for s in stamps)
        if args.ztf:
            for kind, stamps in _ztf_stamps(args.ztf).items():
                real.setdefault(kind, []).extend(("ZTF", s) for s in stamps)
    except (OSError, ValueError, KeyError) as exc:
        print(f"sim_gallery: cannot read the real stamps: {exc}", file=sys.stderr)
        return 2
    img = gallery(real, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"{args.out}: {img.size[0]}x{img.size[1]}, {args.out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
