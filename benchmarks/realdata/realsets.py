"""Real-stamp sets ("realsets"): the public real stamps of a source, as one dict or ``.npz`` file.

A realset (the contract of issue 26, read by training and by the simulator's gallery too):

- ``x``: uint8 or float32, ``(n, S, S, 3)``, channels srch, temp, diff, raw pixels as s2v ingest
  stores them (masked pixels filled with the channel's median; the models normalise themselves);
- ``y``: int8 ``(n,)``, 1 real, 0 artifact/bogus (the project's convention);
- ``ids``: str ``(n,)``, a stable ID per stamp (ZTF: ``candid``; DES sample: ``ayyar2022-<k>``);
- ``group``: str ``(n,)``, what a held-out split keeps together (ZTF: ``objectId``; DES: the ID);
- ``source``: 0-d str, the source's name; ``survey``: 0-d str (``des``, ``ztf``, ``rubin``).

Optional keys: ``proxy`` float32 ``(n,)``, the survey's own score the label was drawn from (ZTF
``drb``, Rubin ``reliability``); ``labels``: 0-d str, how the labels were made.

:func:`load_realset` and :func:`save_realset` need numpy only. The readers of each source's
published layout (:func:`read_des_ayyar`, :func:`read_btsbot`, :func:`read_alerts`) import
s2v-batch's readers when called.
"""

from __future__ import annotations

import csv
import math
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BOGUS_AT_MOST",
    "REAL_AT_LEAST",
    "RealsetError",
    "find_des_ayyar",
    "load_realset",
    "proxy_label",
    "read_alerts",
    "read_btsbot",
    "read_des_ayyar",
    "save_realset",
]

#: Labels by proxy from the survey's own real/bogus score (ZTF ``drb``, Rubin ``reliability``):
#: real at or above, bogus at or below; alerts in between are left out.
REAL_AT_LEAST = 0.9
BOGUS_AT_MOST = 0.1
PROXY_LABELS = (
    f"proxy: the survey's own score (ZTF drb, Rubin reliability) >= {REAL_AT_LEAST} real, "
    f"<= {BOGUS_AT_MOST} bogus, in between left out"
)
DES_LABELS = "DES scanners (Ayyar et al. 2022 relabelling of the autoscan set)"
#: Where the DES sample lies in a clone of vmos1/cnn_supernova_b_paper.
DES_REPO_DIR = "model_inference/sample_test_data"
DES_X, DES_Y = "input_x.npy", "input_labels_y.txt"
BTSBOT_X, BTSBOT_CSV = "usage_triplets.npy", "usage_candidates.csv"
_KEYS = ("x", "y", "ids", "group", "source", "survey")


class RealsetError(ValueError):
    """A realset file or a source's files are missing or malformed (one-line message)."""


def _check(rs: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in _KEYS if k not in rs]
    if missing:
        raise RealsetError(f"{where}: realset lacks key(s) {', '.join(missing)}")
    x, n = rs["x"], len(rs["y"])
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise RealsetError(f"{where}: x has shape {x.shape}, expected (n, S, S, 3)")
    if x.dtype not in (np.uint8, np.float32):
        raise RealsetError(f"{where}: x is {x.dtype}, expected uint8 or float32")
    if not (len(x) == n == len(rs["ids"]) == len(rs["group"])):
        raise RealsetError(f"{where}: x, y, ids and group differ in length")
    if n and not np.isin(rs["y"], (0, 1)).all():
        raise RealsetError(f"{where}: y holds values other than 0 and 1")
    if rs["survey"] not in ("des", "ztf", "rubin"):
        raise RealsetError(f"{where}: unknown survey {rs['survey']!r}")
    return rs


def load_realset(path: str | Path) -> dict[str, Any]:
    """Read a realset ``.npz``.

    Parameters
    ----------
    path : path
        A file written by :func:`save_realset` (``check.py --export``).

    Returns
    -------
    dict
        ``x``, ``y`` (int8), ``ids`` and ``group`` (str arrays), ``source`` and ``survey``
        (str), and the optional keys present (``proxy``, ``labels``).

    Raises
    ------
    RealsetError
        When the file is missing, not an ``.npz`` or lacks a key.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RealsetError(f"{path}: cannot read a realset .npz ({exc})") from None
    out = dict(data)
    for k in ("source", "survey", "labels"):
        if k in out:
            out[k] = str(out[k][()])
    if "y" in out:
        out["y"] = out["y"].astype(np.int8)
    for k in ("ids", "group"):
        if k in out:
            out[k] = out[k].astype(str)
    return _check(out, str(path))


def save_realset(rs: dict[str, Any], path: str | Path) -> Path:
    """Write a realset as a compressed ``.npz`` (the keys of the contract, optional ones too)."""
    _check(rs, str(path))
    arrays = {
        "x": rs["x"],
        "y": np.asarray(rs["y"], np.int8),
        "ids": np.asarray(rs["ids"], str),
        "group": np.asarray(rs["group"], str),
        "source": np.array(rs["source"]),
        "survey": np.array(rs["survey"]),
    }
    if "proxy" in rs:
        arrays["proxy"] = np.asarray(rs["proxy"], np.float32)
    if "labels" in rs:
        arrays["labels"] = np.array(rs["labels"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def proxy_label(score: float) -> int | None:
    """1 (real), 0 (bogus) or None (left out) from the survey's own score."""
    if not math.isfinite(score):
        return None
    if score >= REAL_AT_LEAST:
        return 1
    if score <= BOGUS_AT_MOST:
        return 0
    return None


# --- the DES scanners' sample (Ayyar et al. 2022) -------------------------------------------


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def find_des_ayyar(path: Path) -> bool:
    """Whether ``path`` holds the DES sample (its two files, a clone or a bare git dir)."""
    if _is_git_dir(path):
        return _git_show(path, f"{DES_REPO_DIR}/{DES_X}") is not None
    return path.is_dir() and any(path.rglob(DES_X))


def _git_show(gitdir: Path, name: str) -> bytes | None:
    try:
        out = subprocess.run(
            ["git", f"--git-dir={gitdir}", "show", f"HEAD:{name}"],
            capture_output=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def read_des_ayyar(path: str | Path, source: str = "des-ayyar2022") -> dict[str, Any]:
    """The ten DES stamps published with Ayyar et al. 2022 (PASP 134 094501) as a realset.

    ``input_x.npy`` (10, 51, 51, 3) uint8, channels srch, temp, diff (cut from autoscan's GIFs),
    and ``input_labels_y.txt`` with **1 = artifact, 0 = real** (the opposite of s2v's
    convention: flipped here).

    Parameters
    ----------
    path : path
        A folder holding both files (at any depth: a clone of vmos1/cnn_supernova_b_paper
        works), or a bare git dir of that repository.
    source : str
        The realset's name.

    Raises
    ------
    RealsetError
        When the files are missing or do not match.
    """
    import io

    path = Path(path)
    if _is_git_dir(path):
        xb = _git_show(path, f"{DES_REPO_DIR}/{DES_X}")
        yb = _git_show(path, f"{DES_REPO_DIR}/{DES_Y}")
        if xb is None or yb is None:
            raise RealsetError(f"{path}: git dir without {DES_REPO_DIR}/{DES_X} and {DES_Y}")
        x = np.load(io.BytesIO(xb), allow_pickle=False)
        ytext = yb.decode()
    else:
        xs = sorted(path.rglob(DES_X))
        if not xs:
            raise RealsetError(f"{path}: no {DES_X} (the DES sample) found")
        ypath = xs[0].parent / DES_Y
        if not ypath.is_file():
            raise RealsetError(f"{xs[0]}: no {DES_Y} beside it")
        try:
            x = np.load(xs[0], allow_pickle=False)
        except ValueError as exc:
            raise RealsetError(f"{xs[0]}: not a numpy array file ({exc})") from None
        ytext = ypath.read_text()
    try:
        artifact = np.array([int(float(v)) for v in ytext.split()], np.int8)
    except ValueError:
        raise RealsetError(f"{path}: {DES_Y} holds something other than 0/1 labels") from None
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(artifact):
        raise RealsetError(f"{path}: {DES_X} shape {x.shape} does not match {len(artifact)} labels")
    ids = np.array([f"ayyar2022-{k}" for k in range(len(x))])
    x = x.astype(np.uint8) if x.dtype == np.uint8 else x.astype(np.float32)
    return {
        "x": x,
        "y": (1 - artifact).astype(np.int8),
        "ids": ids,
        "group": ids.copy(),
        "source": source,
        "survey": "des",
        "labels": DES_LABELS,
    }


# --- BTSbot's example triplets ---------------------------------------------------------------


def read_btsbot(path: str | Path, source: str = "ztf-btsbot") -> dict[str, Any]:
    """BTSbot's example triplets (nabeelre/BTSbot ``btsbot/example_data``) as a realset.

    ``usage_triplets.npy`` (n, 63, 63, 3) float64 science, reference, difference, each cut-out
    divided by its L2 norm and NaN set to 0 by BTSbot (a positive scale per channel, which the
    models' per-stamp normalisation undoes); ``usage_candidates.csv`` gives ``objectId``, ``jd``
    and ``drb`` per row (its ``candid`` is rounded to 6 digits, so the ID here is
    ``objectId@jd``). Labels by proxy from ``drb`` (BTSbot's own ``label`` says whether the
    source joined the Bright Transient Survey, not whether it is real).
    """
    path = Path(path)
    xs = sorted(path.rglob(BTSBOT_X))
    if not xs or not (xs[0].parent / BTSBOT_CSV).is_file():
        raise RealsetError(f"{path}: no {BTSBOT_X} with {BTSBOT_CSV} beside it")
    x = np.load(xs[0], allow_pickle=False)
    with open(xs[0].parent / BTSBOT_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"objectId", "jd", "drb"}
    if rows and not need <= set(rows[0]):
        raise RealsetError(
            f"{xs[0].parent / BTSBOT_CSV}: lacks column(s) {sorted(need - set(rows[0]))}"
        )
    if x.ndim != 4 or x.shape[1:] != (63, 63, 3) or len(x) != len(rows):
        raise RealsetError(f"{xs[0]}: shape {x.shape} does not match {len(rows)} CSV rows")
    keep, y, ids, group, proxy = [], [], [], [], []
    for k, row in enumerate(rows):
        label = proxy_label(float(row.get("drb") or "nan"))
        if label is None:
            continue
        keep.append(k)
        y.append(label)
        ids.append(f"{row['objectId']}@{float(row['jd']):.5f}")
        group.append(row["objectId"])
        proxy.append(float(row["drb"]))
    return {
        "x": x[keep].astype(np.float32),
        "y": np.array(y, np.int8),
        "ids": np.array(ids, str),
        "group": np.array(group, str),
        "source": source,
        "survey": "ztf",
        "proxy": np.array(proxy, np.float32),
        "labels": PROXY_LABELS,
    }


# --- alert packets (ZTF, Rubin) ---------------------------------------------------------------


def read_alerts(
    path: str | Path, source: str, seen: set[str] | None = None
) -> tuple[dict[str, Any] | None, Counter]:
    """Every alert packet under ``path`` (``.avro``, ``.parquet``) as a realset, with s2v's readers.

    Each alert is read once (by ``candid`` / ``diaSourceId``; ``seen`` carries the IDs already
    taken by other sources) and its stamp made as ingest makes it (edge cut-outs padded, masked
    pixels filled). Labels by proxy (:data:`PROXY_LABELS`) from ZTF ``drb`` or Rubin ``reliability``.

    Returns
    -------
    realset or None, Counter
        None when no alert was labelled; the counter says why alerts were left out.
    """
    from s2v_batch.core.surveys import get_survey
    from s2v_batch.formats.alertio import iter_path
    from s2v_batch.formats.alertpackets import alert_stamp, survey_of_record
    from s2v_batch.formats.decode import StampError

    seen = set() if seen is None else seen
    left: Counter = Counter()
    rows: dict[str, list] = {}
    files = sorted(p for p in Path(path).rglob("*") if p.suffix in (".avro", ".parquet"))
    for file in files:
        for _, rec in iter_path(str(file)):
            if isinstance(rec, Exception):
                left["unreadable"] += 1
                continue
            survey = survey_of_record(rec)
            if survey is None:
                left["not a ZTF or Rubin alert"] += 1
                continue
            sv = get_survey(survey)
            try:
                sid, stamp, _frac, fields = alert_stamp(rec, sv, sv.default_size)
            except StampError as exc:
                left[str(exc).split(" (")[0]] += 1
                continue
            key = f"{sid}"
            if key in seen:
                left["seen already"] += 1
                continue
            seen.add(key)
            score = fields["drb"] if survey == "ztf" else fields["reliability"]
            label = proxy_label(score)
            if label is None:
                left["no drb/reliability" if not math.isfinite(score) else "score in between"] += 1
                continue
            group = fields["objectId"] or key
            rows.setdefault(survey, []).append((key, stamp, label, group, score))
    if len(rows) > 1:
        raise RealsetError(f"{path}: alerts of several surveys ({', '.join(rows)}); split them")
    if not rows:
        return None, left
    ((survey, items),) = rows.items()
    items.sort(key=lambda r: int(r[0]))
    return {
        "x": np.stack([r[1] for r in items]).astype(np.float32),
        "y": np.array([r[2] for r in items], np.int8),
        "ids": np.array([r[0] for r in items], str),
        "group": np.array([r[3] for r in items], str),
        "source": source,
        "survey": survey,
        "proxy": np.array([r[4] for r in items], np.float32),
        "labels": PROXY_LABELS,
    }, left
