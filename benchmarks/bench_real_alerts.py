"""How the shipped ZTF model does on real ZTF alerts, against the survey's own deep real/bogus
score ``drb`` (schema 3.3 on).

Every ``.avro`` / ``.parquet`` file under the folders given is read with s2v's readers, each
alert once (by ``candid``); its stamp is made as ingest makes it (edge cut-outs padded) and
scored with the model. Reported: the 2x2 table of s2v's candidates (score >= the card's
threshold) against ``drb >= 0.5``, the agreement and Cohen's kappa, s2v's recall on the alerts
ZTF is sure of (``drb >= 0.9``), the share of s2v's candidates ZTF calls bogus (``drb <= 0.1``),
and the ROC AUC of s2v's score against ``drb >= 0.5`` taken as the label (how well s2v ranks
what ZTF calls real above what it calls bogus). ``rb`` (ZTF's older random forest) is reported
against ``drb`` the same way, as the yardstick of a second real/bogus score.

Where the alerts come from is the user's business (public broker repositories hold a few hundred:
tests/data/alerts/README.md lists some); nothing here downloads anything.

    python benchmarks/bench_real_alerts.py tests/data/alerts /path/to/more/alerts
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from s2v_batch.core.surveys import get_survey
from s2v_batch.formats.alertio import iter_path
from s2v_batch.formats.alertpackets import alert_stamp
from s2v_batch.formats.decode import StampError
from s2v_batch.metrics.agreement import Agreement
from s2v_batch.metrics.classification import roc_auc
from s2v_batch.model.artifact import load_card
from s2v_batch.model.shipped import shipped_model_for


def read_alerts(folders: list[Path]) -> tuple[dict[int, dict], Counter]:
    """candid -> {stamp, frac, fields, version}, and why the others were left out."""
    ztf = get_survey("ztf")
    out: dict[int, dict] = {}
    skipped: Counter = Counter()
    files = sorted(
        p for f in folders for p in Path(f).rglob("*") if p.suffix in (".avro", ".parquet")
    )
    for path in files:
        for _, rec in iter_path(str(path)):
            if isinstance(rec, Exception):
                skipped["unreadable"] += 1
                continue
            if not isinstance(rec, dict) or "candid" not in rec or rec["candid"] in out:
                skipped["not ZTF or seen already"] += 1
                continue
            try:
                sid, stamp, frac, fields = alert_stamp(rec, ztf, 63)
            except StampError as exc:
                skipped[str(exc).split(" (")[0]] += 1
                continue
            if math.isnan(fields["drb"]):
                skipped["no drb (schema before 3.3)"] += 1
                continue
            out[sid] = {"stamp": stamp, "frac": frac, "fields": fields,
                        "version": rec.get("schemavsn")}  # fmt: skip
    return out, skipped


def figures(score: np.ndarray, threshold: float, drb: np.ndarray) -> dict:
    cand = score >= threshold
    agr = Agreement("drb")
    agr.add(cand, np.clip(score, 0, 1), drb)
    sure, bogus = drb >= 0.9, drb <= 0.1
    out = agr.as_dict()
    out["recall_where_drb_ge_0.9"] = float(cand[sure].mean()) if sure.any() else None
    out["n_drb_ge_0.9"] = int(sure.sum())
    out["share_of_candidates_with_drb_le_0.1"] = (
        float((cand & bogus).sum() / cand.sum()) if cand.any() else None
    )
    out["n_candidates"] = int(cand.sum())
    labels = (drb >= 0.5).astype(np.int8)
    out["roc_auc_vs_drb_ge_0.5"] = (
        float(roc_auc(score, labels)) if 0 < labels.sum() < len(labels) else None
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped ZTF model")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args(argv)

    from s2v_batch.model.inference import Predictor

    model = args.model or shipped_model_for("ztf", 63)
    card = load_card(model.with_suffix(".json"))
    t0 = time.perf_counter()
    alerts, skipped = read_alerts(args.folders)
    if not alerts:
        print("no ZTF alert with drb found under the folders given", file=sys.stderr)
        return 2
    ids = sorted(alerts)
    stamps = np.stack([alerts[i]["stamp"] for i in ids])
    drb = np.array([alerts[i]["fields"]["drb"] for i in ids], np.float64)
    rb = np.array([alerts[i]["fields"]["rb"] for i in ids], np.float64)
    frac = np.array([alerts[i]["frac"] for i in ids])
    score = Predictor(model, batch_size=64).predict(stamps).astype(np.float64)
    seconds = time.perf_counter() - t0
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_real_alerts.py " + " ".join(map(str, args.folders)),
        "model": f"{card.name}-{card.version}",
        "model_trained_on_simulated": bool(card.training_data.get("simulated")),
        "threshold": card.threshold,
        "n_alerts": len(ids),
        "schema_versions": dict(Counter(str(alerts[i]["version"]) for i in ids)),
        "left_out": dict(skipped),
        "n_masked": int((frac > 0).sum()),
        "s2v": figures(score, card.threshold, drb),
        "rb_at_0.5": figures(rb, 0.5, drb),
        "score_quantiles": [float(q) for q in np.quantile(score, [0.1, 0.5, 0.9])],
        "drb_quantiles": [float(q) for q in np.quantile(drb, [0.1, 0.5, 0.9])],
        "seconds": round(seconds, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
