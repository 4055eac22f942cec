"""The shipped models on real stamps: per source, recall and FPR at the card's threshold, ROC AUC.

Reads the public real stamps laid out in one or more DIRs (benchmarks/realdata/README.md says
where each source lives and how to lay it out), scores each source with every model of its
survey (float32, the card's threshold), prints n, reals / artifacts, recall, FPR, ROC AUC and the
count right, and draws the stamps each model gets wrong as a gallery PNG (per source and
model) in OUTDIR. With no ``--data`` it runs on what the project ships
(benchmarks/realdata/data and tests/data/alerts).

    python benchmarks/realdata/check.py                        # shipped data, shipped models
    python benchmarks/realdata/check.py --with-shipped --data ~/realdata --write-card
    python benchmarks/realdata/check.py --data ~/realdata --model old.keras --out /tmp/check
    python benchmarks/realdata/check.py --export realsets/ --no-score   # realset .npz files

``--write-card`` puts a ``real_data`` entry (date, command, model digest, figures per source)
into each model's card JSON, replacing the one there: re-running after a retraining refreshes
it. Labels: the DES sample's are the DES scanners'; ZTF's are a proxy (``drb``), so its figures
measure agreement with ZTF's own classifier, not the truth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from realsets import (  # noqa: E402
    RealsetError,
    find_des_ayyar,
    load_realset,
    read_alerts,
    read_btsbot,
    read_des_ayyar,
    save_realset,
)

#: What the project ships (sources of the same name in several folders are merged).
SHIPPED_DATA = (HERE / "data", REPO / "tests" / "data" / "alerts")
#: A gallery shows at most this many stamps (the worst first).
GALLERY_MAX = 30
_SKIP_NAMES = {"README.md", "LICENSE", "NOTICE"}


class CheckError(Exception):
    """Bad input: one line for the user."""


# --- the sources ------------------------------------------------------------------------------


def discover(roots: list[Path]) -> list[tuple[str, str, Path]]:
    """``(kind, name, path)`` of every source in the roots, in a stable order.

    Each sub-folder (or ``.npz`` realset) of a root is a source named after it; its kind by its
    content: the DES sample (``input_x.npy`` + ``input_labels_y.txt``, or a clone / bare git dir
    of vmos1/cnn_supernova_b_paper), BTSbot's triplets, alert packets (``.avro``/``.parquet``).
    """
    found: list[tuple[str, str, Path]] = []
    for root in roots:
        if not root.exists():
            raise CheckError(f"--data {root}: no such folder")
        if not root.is_dir():
            raise CheckError(
                f"--data {root}: not a folder (give the folder that holds the sources)"
            )
        if find_des_ayyar(root) and (root / "HEAD").is_file():
            found.append(("des", "des-ayyar2022", root))
            continue
        for child in sorted(root.iterdir()):
            if child.name.startswith(".") or child.name in _SKIP_NAMES:
                continue
            if child.is_file() and child.suffix == ".npz":
                found.append(("npz", child.stem, child))
            elif child.is_dir():
                kind = _kind_of(child)
                if kind:
                    found.append((kind, child.name, child))
    if not found:
        names = ", ".join(str(r) for r in roots)
        raise CheckError(
            f"no real stamps found in {names}: expected sub-folders of alert packets, the DES "
            "sample or BTSbot's triplets, or realset .npz files (benchmarks/realdata/README.md)"
        )
    return found


def _kind_of(folder: Path) -> str | None:
    if find_des_ayyar(folder):
        return "des"
    if any(folder.rglob("usage_triplets.npy")):
        return "btsbot"
    if any(folder.glob("*.npz")):
        return "npzdir"
    if any(p.suffix in (".avro", ".parquet") for p in folder.rglob("*")):
        return "alerts"
    return None


def load_sources(roots: list[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Counter]]:
    """Every source as a realset (same-named sources merged, each stamp ID once) and what each
    left out."""
    seen: set[str] = set()
    parts: dict[str, list[dict[str, Any]]] = {}
    left: dict[str, Counter] = {}
    for kind, name, path in discover(roots):
        try:
            if kind == "des":
                rs = read_des_ayyar(path, source=name)
            elif kind == "btsbot":
                rs = read_btsbot(path, source=name)
            elif kind == "npz":
                rs = load_realset(path)
                name = rs["source"]
            elif kind == "npzdir":  # a folder of realsets, each named by its own `source`
                for npz in sorted(path.glob("*.npz")):
                    rs = load_realset(npz)
                    parts.setdefault(rs["source"], []).append(rs)
                continue
            else:
                rs, why = read_alerts(path, name, seen)
                left.setdefault(name, Counter()).update(why)
        except RealsetError as exc:
            raise CheckError(str(exc)) from None
        if rs is not None:
            parts.setdefault(name, []).append(rs)
    sources = {}
    for name, rss in sorted(parts.items()):
        try:
            sources[name] = _merge(name, rss)
        except RealsetError as exc:
            raise CheckError(str(exc)) from None
    return sources, left


def _merge(name: str, rss: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rss) == 1:
        return rss[0]
    first = rss[0]
    for rs in rss[1:]:
        if rs["survey"] != first["survey"] or rs["x"].shape[1:] != first["x"].shape[1:]:
            raise RealsetError(f"source {name}: parts of different surveys or stamp sizes")
    out: dict[str, Any] = {"source": name, "survey": first["survey"]}
    for key in ("x", "y", "ids", "group", "proxy"):
        if all(key in rs for rs in rss):
            out[key] = np.concatenate([rs[key] for rs in rss])
    if "labels" in first:
        out["labels"] = first["labels"]
    _, keep = np.unique(out["ids"], return_index=True)
    keep.sort()
    return {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in out.items()}


# --- figures ----------------------------------------------------------------------------------


def figures(score: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """n, reals, artifacts, recall, FPR (None without artifacts), ROC AUC (None with one class),
    the count right, at ``threshold``."""
    from s2v_batch.metrics.classification import roc_auc

    cand = score >= threshold
    real, art = y == 1, y == 0
    return {
        "n": int(len(y)),
        "n_real": int(real.sum()),
        "n_artifact": int(art.sum()),
        "recall": float(cand[real].mean()) if real.any() else None,
        "fpr": float(cand[art].mean()) if art.any() else None,
        "roc_auc": float(roc_auc(score, y)) if real.any() and art.any() else None,
        "right": int((cand == real).sum()),
        "threshold": float(threshold),
    }


def training_use(source: str, card: Any) -> str | None:
    """How the model's training used a source, by its card: ``trained`` (``--real-train``: only
    its held-out groups may be checked), ``chosen`` (``--choose-on``: not held out) or None."""
    data = card.training_data or {}

    def sources_of(key: str) -> set[str]:
        sets = (data.get(key) or {}).get("sets") or []
        return {str(s.get("source")) for s in sets if isinstance(s, dict)}

    if source in sources_of("real_train"):
        return "trained"
    if source in sources_of("model_choice"):
        return "chosen"
    return None


def gallery(
    path: Path, rs: dict[str, Any], score: np.ndarray, wrong: np.ndarray, title: str
) -> Path | None:
    """The wrongly called stamps (srch, temp, diff) as one PNG, the most confident miss first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.flatnonzero(wrong)
    if not len(idx):
        return None
    # Most wrong first: a real scored lowest, an artifact scored highest.
    err = np.where(rs["y"][idx] == 1, 1 - score[idx], score[idx])
    idx = idx[np.argsort(-err, kind="stable")][:GALLERY_MAX]
    cols = 3 * min(len(idx), 3)
    rows = -(-len(idx) // 3)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(idx):
        r, c0 = divmod(k, 3)
        for ch in range(3):
            img = rs["x"][i, :, :, ch].astype(np.float32)
            lo, hi = np.percentile(img, [1, 99.5])
            ax = axes[r, 3 * c0 + ch]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="upper")
            if ch == 0:
                what = "real" if rs["y"][i] == 1 else "artifact"
                ax.set_title(f"{rs['ids'][i]}\n{what} {score[i]:.2f}", fontsize=6, loc="left")
    fig.suptitle(title + " (srch, temp, diff)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def check_model(
    model: Path, sources: dict[str, dict[str, Any]], out: Path | None
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Score every source of the model's survey; figures per source (and pooled)."""
    from s2v_batch.model.artifact import ModelArtifactError, load_card
    from s2v_batch.model.inference import Predictor

    try:
        card = load_card(model)
    except ModelArtifactError as exc:
        raise CheckError(str(exc)) from None
    size = int(card.input_shape[0])
    mine = {n: rs for n, rs in sources.items() if rs["survey"] == card.survey}
    results: dict[str, dict[str, Any]] = {}
    if not mine:
        return card, results
    predictor = Predictor(model.with_suffix(".keras"), batch_size=64)
    pooled: list[tuple[np.ndarray, np.ndarray, bool]] = []
    for name, rs in mine.items():
        if rs["x"].shape[1] != size:
            print(f"  {card.stem}: {name} skipped: stamps {rs['x'].shape[1]} px, model {size} px")
            continue
        use = training_use(name, card)
        part = "all stamps"
        if use == "trained":
            # deferred: the training package's split, the one --real-train used
            from s2v_batch.training.realsets import heldout_groups

            keep = heldout_groups(rs["group"])
            rs = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in rs.items()}
            part = "held-out groups only (the others were trained on)"
            if not len(rs["y"]):
                print(f"  {card.stem}: {name} skipped: every group was trained on")
                continue
        elif use == "chosen":
            part = "all stamps, used to choose the model (not held out)"
        score = predictor.predict(rs["x"]).astype(np.float64)
        fig = figures(score, rs["y"], card.threshold)
        held_out = use != "chosen"
        fig.update(labels=rs.get("labels", ""), held_out=held_out, part=part)
        wrong = (score >= card.threshold) != (rs["y"] == 1)
        fig["wrong"] = [str(i) for i in rs["ids"][wrong]]
        if out is not None:
            png = gallery(out / f"wrong-{card.stem}-{card.sha256[:8]}-{name}.png", rs, score, wrong,
                          f"{card.stem} on {name}: {int(wrong.sum())} wrong of {len(wrong)}")  # fmt: skip
            fig["gallery"] = str(png) if png else None
        results[name] = fig
        pooled.append((score, rs["y"], held_out))
    if len(pooled) > 1:
        score = np.concatenate([p[0] for p in pooled])
        y = np.concatenate([p[1] for p in pooled])
        fig = figures(score, y, card.threshold)
        fig.update(labels="all the sources above together", held_out=all(p[2] for p in pooled),
                   part="the stamps of the sources above")  # fmt: skip
        results[f"{card.survey}-all"] = fig
    return card, results


def card_entry(card: Any, results: dict[str, dict[str, Any]], command: str) -> dict[str, Any]:
    """The ``real_data`` entry of a card: date, command, the model's digest, figures per source."""
    keep = ("n", "n_real", "n_artifact", "recall", "fpr", "roc_auc", "right", "threshold",
            "labels", "held_out", "part")  # fmt: skip
    return {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "sha256": card.sha256,
        "precision": "float32",
        "sources": {name: {k: fig[k] for k in keep} for name, fig in results.items()},
    }


def write_card(model: Path, entry: dict[str, Any]) -> Path:
    """Put ``entry`` as ``real_data`` into the model's card JSON (replacing any), then re-read it."""
    from s2v_batch.model.artifact import ModelArtifactError, load_card

    path = model.with_suffix(".json")
    data = json.loads(path.read_text())
    data["real_data"] = entry
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    try:
        load_card(path)
    except ModelArtifactError as exc:
        raise CheckError(
            f"{path}: the card no longer loads after writing real_data: {exc}"
        ) from None
    return path


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(card: Any, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{card.stem} (sha256 {card.sha256[:8]}, {card.survey}, threshold {card.threshold:.4f}, "
          "float32)")  # fmt: skip
    print(f"  {'source':<24} {'n':>4} {'real/art':>9} {'recall':>7} {'FPR':>7} {'AUC':>6} "
          f"{'right':>9}  held out")  # fmt: skip
    for name, f in results.items():
        ra = f"{f['n_real']}/{f['n_artifact']}"
        print(f"  {name:<24} {f['n']:>4} {ra:>9} {_fmt(f['recall']):>7} {_fmt(f['fpr']):>7} "
              f"{_fmt(f['roc_auc']):>6} {f['right']:>4} of {f['n']:<3}  {'yes' if f['held_out'] else 'NO'}")  # fmt: skip


def default_models() -> list[Path]:
    from s2v_batch.model.shipped import shipped_models_dir

    return sorted(p.with_suffix(".keras") for p in shipped_models_dir().glob("*.json"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, action="append", default=None, metavar="DIR",
                    help="a folder of sources (repeatable); default: what the project ships")  # fmt: skip
    ap.add_argument("--with-shipped", action="store_true",
                    help="read the shipped data as well as the --data folders")  # fmt: skip
    ap.add_argument("--model", type=Path, action="append", default=None, metavar="M",
                    help="a model (.keras or .json; repeatable); default: every shipped model")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path(".bench/realdata"), metavar="OUTDIR",
                    help="galleries and summary.json go here (default .bench/realdata)")  # fmt: skip
    ap.add_argument("--export", type=Path, default=None, metavar="NPZDIR",
                    help="write each source as a realset .npz here")  # fmt: skip
    ap.add_argument("--no-score", action="store_true", help="read (and export) only")
    ap.add_argument("--write-card", action="store_true",
                    help="put the figures into each model's card JSON as real_data")  # fmt: skip
    args = ap.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/realdata/check.py" + "".join(
        " " + shlex.quote(a) for a in argv_used
    )
    try:
        return run(args, command)
    except CheckError as exc:
        print(f"check.py: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    roots = list(args.data or [])
    if not roots or args.with_shipped:
        roots = [*SHIPPED_DATA, *roots]
    models = args.model or default_models()
    for m in models:
        if m.suffix not in (".keras", ".json") or not m.with_suffix(".json").is_file():
            raise CheckError(f"--model {m}: expected a .keras or .json of a model with its card")
    sources, left = load_sources(roots)
    for name, rs in sources.items():
        y = rs["y"]
        why = ", ".join(f"{v} {k}" for k, v in sorted(left.get(name, Counter()).items()))
        print(f"{name} ({rs['survey']}, {rs['x'].shape[1]} px): {len(y)} stamps, "
              f"{int((y == 1).sum())} real / {int((y == 0).sum())} artifact"
              + (f"; left out: {why}" if why else ""))  # fmt: skip
    if args.export:
        for name, rs in sources.items():
            try:
                print(f"exported {save_realset(rs, args.export / f'{name}.npz')}")
            except OSError as exc:
                raise CheckError(f"--export {args.export}: cannot write ({exc})") from None
    if args.no_score:
        return 0
    summary: dict[str, Any] = {"date": datetime.date.today().isoformat(), "command": command,
                               "models": {}}  # fmt: skip
    for model in models:
        card, results = check_model(model, sources, args.out)
        if not results:
            print(f"\n{card.stem}: no {card.survey} source in the data given (README: sources)")
            continue
        print_table(card, results)
        for name, f in results.items():
            if f.get("gallery"):
                print(f"  {name}: wrong: {', '.join(f['wrong'][:12])}"
                      f"{' ...' if len(f['wrong']) > 12 else ''} -> {f['gallery']}")  # fmt: skip
        summary["models"][str(model)] = {"card": card.stem, "sources": results}
        if args.write_card:
            print(
                f"  real_data written into {write_card(model, card_entry(card, results, command))}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nsummary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
