"""A scanning session simulated end to end on a simulated season: three scanners judge the
candidates through the scanning API with a known error rate and known seconds (drawn from the
simulator's truth); `s2v report` measures the FDR and the seconds from the verdicts; `s2v labels
export` writes the consensus; `s2v train --verdicts` trains a model on it, and its card says so."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scan_data import Client, ThreadServer

from s2v_batch.cli.main import main
from s2v_batch.ingest.labels import read_labels
from s2v_batch.metrics.scanning import consensus, wilson_interval
from s2v_batch.scan.server import prepare
from s2v_batch.store.verdicts import default_db, open_verdicts

ERROR_RATE = 0.08  # each verdict flipped against the truth with this probability
SKIP_RATE = 0.04
SECONDS_MEDIAN = 2.0  # seconds on a stamp: lognormal, median 2 s, sigma 0.5 (in log)
SCANNERS = ("ann", "bob", "cy")


@pytest.fixture(scope="module")
def session(scanned_season, tmp_path_factory) -> dict[str, Any]:
    """Three scanners through the API, two real/bogus verdicts wanted a stamp, until none is left."""
    scores, truth = scanned_season["scores"], scanned_season["truth"]
    db = default_db(scores)  # the default: the report finds it beside the scores
    db.unlink(missing_ok=True)
    scanning = prepare(scores, scanned_season["store"], per_stamp=2)
    srv = ThreadServer(scanning)
    rng = np.random.default_rng(99)
    drawn: list[dict[str, Any]] = []
    try:
        clients = {s: Client(srv.url) for s in SCANNERS}
        sids = {s: c.session(s, "threshold" if s == "bob" else "best") for s, c in clients.items()}
        active = list(SCANNERS)
        while active:  # take turns, one stamp each, as people at once would
            for s in list(active):
                c = clients[s]
                status, doc = c.call("GET", f"/api/next?session={sids[s]}&n=1")
                if not doc["items"]:
                    active.remove(s)
                    continue
                it = doc["items"][0]
                u = rng.random()
                real = truth[it["stamp_id"]] == 1
                verdict = ("skip" if u < SKIP_RATE else
                           ("bogus" if real else "real") if u < SKIP_RATE + ERROR_RATE else
                           ("real" if real else "bogus"))  # fmt: skip
                sec = float(SECONDS_MEDIAN * np.exp(rng.normal(0, 0.5)))
                status, doc = c.call("POST", "/api/verdict", {"session": sids[s], "season": "Y1",
                                     "stamp_id": it["stamp_id"], "verdict": verdict, "seconds": sec})  # fmt: skip
                assert status == 200, doc
                drawn.append({"season": "Y1", "night": it["night"], "stamp_id": it["stamp_id"],
                              "scanner": s, "verdict": verdict, "seconds": sec})  # fmt: skip
    finally:
        srv.stop()
        scanning.db.close()
    out = tmp_path_factory.mktemp("session-reports")
    assert main(["report", str(scores), "--out", str(out)]) == 0
    rep = json.loads((out / "Y1" / "report.json").read_text())
    return {"db": db, "drawn": pd.DataFrame(drawn), "rep": rep, "out": out, **scanned_season}


def test_every_candidate_got_two_decisive_verdicts_from_different_scanners(session) -> None:
    d = session["drawn"]
    decisive = d[d["verdict"] != "skip"]
    assert not d.duplicated(["scanner", "stamp_id"]).any()
    n_cand = len(prepare(session["scores"], session["store"]).candidates)
    counts = decisive.groupby("stamp_id").size()
    # Per-stamp K=2, no more; a stamp two of the three scanners skipped can get only one.
    skips = d[d["verdict"] == "skip"].groupby("stamp_id").size()
    wanted = (len(SCANNERS) - skips.reindex(counts.index, fill_value=0)).clip(upper=2)
    assert len(counts) == n_cand - int((skips == len(SCANNERS)).sum())
    assert (counts == wanted).all() and (counts == 2).mean() > 0.95


def test_report_measures_the_fdr_and_the_seconds_that_were_drawn(session) -> None:
    sc, d, truth = session["rep"]["scanning"], session["drawn"], session["truth"]
    assert sc["measured"] and sc["n_verdicts"] == len(d) and sc["n_scanners"] == 3
    # The figures are those of the verdicts drawn, exactly ...
    cons = consensus(d)
    n_bogus = int((cons["label"] == 0).sum())
    assert (sc["n_scanned"], sc["n_judged_bogus"]) == (len(cons), n_bogus)
    assert sc["fdr"] == pytest.approx(n_bogus / len(cons))
    assert (sc["fdr_low"], sc["fdr_high"]) == pytest.approx(wilson_interval(n_bogus, len(cons)))
    assert sc["seconds"]["median"] == pytest.approx(float(np.median(d["seconds"])))
    for s in SCANNERS:
        mine = d[d["scanner"] == s]
        assert sc["by_scanner"][s]["n"] == len(mine)
        assert sc["by_scanner"][s]["seconds"]["median"] == pytest.approx(np.median(mine["seconds"]))
    # ... and they find what was put in: the truth's FDR of the scanned candidates lies in the
    # Wilson interval, the drawn median seconds in the measured quartiles.
    true_fdr = float(np.mean([truth[i] == 0 for i in cons["stamp_id"]]))
    assert sc["fdr_low"] <= true_fdr <= sc["fdr_high"], (true_fdr, sc["fdr_low"], sc["fdr_high"])
    assert sc["seconds"]["q1"] < SECONDS_MEDIAN < sc["seconds"]["q3"]
    # Agreement: two scanners err independently at 8%: kappa well above chance, below 1.
    assert 0.4 < sc["agreement"]["fleiss_kappa"] < 1.0
    decisive = d[d["verdict"] != "skip"].groupby("stamp_id").size()
    assert sc["agreement"]["n_stamps_multi"] == int((decisive >= 2).sum())
    ts = sc["time_saved"]
    assert ts["seconds_per_stamp"] == sc["seconds"]["median"] and "measured" in sc["seconds_source"]
    # The report's own time figures use the measured seconds in place of the assumed 0.5 s.
    assert session["rep"]["seconds_per_stamp"] == sc["seconds"]["median"]
    assert session["rep"]["hours_saved"] == pytest.approx(ts["hours_saved"])
    assert session["rep"]["seconds_basis"].startswith("measured")
    # The night reports have their own section; the page says it.
    nights = sorted(session["drawn"]["night"].unique())
    per_night = [json.loads((session["out"] / "Y1" / "nights" / str(n) / "report.json").read_text())
                 for n in nights]  # fmt: skip
    assert sum(r["scanning"]["n_verdicts"] for r in per_night) == len(d)
    page = (session["out"] / "Y1" / "report.html").read_text()
    assert "<h2>Scanning</h2>" in page and "95% Wilson interval" in page


def test_without_verdicts_the_report_says_the_figures_are_assumed(session, tmp_path) -> None:
    assert main(["report", str(session["scores"]), "--out", str(tmp_path),
                 "--verdicts", str(tmp_path / "empty.sqlite")]) == 2  # fmt: skip
    open_verdicts(tmp_path / "empty.sqlite").close()
    assert main(["report", str(session["scores"]), "--out", str(tmp_path),
                 "--verdicts", str(tmp_path / "empty.sqlite")]) == 0  # fmt: skip
    sc = json.loads((tmp_path / "Y1" / "report.json").read_text())["scanning"]
    assert not sc["measured"] and "assumes 0.5 s a stamp" in sc["note"]
    assert "assumes 0.5 s a stamp" in (tmp_path / "Y1" / "report.html").read_text()
    rep = json.loads((tmp_path / "Y1" / "report.json").read_text())
    assert rep["seconds_per_stamp"] == 0.5 and rep["seconds_basis"].startswith("assumed")


def test_labels_export_and_training_on_the_verdicts(session, tmp_path) -> None:
    csv = tmp_path / "labels.csv"
    assert main(["labels", "export", str(session["db"]), "--out", str(csv)]) == 0
    cons = consensus(session["drawn"])
    labels = read_labels(csv)
    assert labels.ids.tolist() == sorted(cons["stamp_id"].tolist())
    table = pd.read_csv(csv, comment="#").set_index("ID")
    assert int(table["N_VERDICTS"].sum()) == int(cons["n_verdicts"].sum())
    out = tmp_path / "model"
    assert main(["train", str(session["store"]), "--out", str(out), "--verdicts",
                 str(session["db"]), "--arch", "vgg6", "--epochs", "1", "--batch-size", "32",
                 "--learning-rate", "1e-3", "--patience", "1", "--name", "from-verdicts",
                 "--data-description", "simulated season, scanned in a test", "--simulated",
                 "--no-progress"]) == 0  # fmt: skip
    card = json.loads((out / "from-verdicts-1.json").read_text())
    td = card["training_data"]
    human = td["human_verdicts"]
    assert human["n_verdicts"] == int(cons["n_verdicts"].sum())
    assert human["n_labels"] == len(cons)
    assert human["n_real"] == int(cons["label"].sum())
    assert (
        f"{len(cons)} stamps labelled by the consensus of {human['n_verdicts']} human verdicts"
        in td["description"]
    )
    assert (out / "from-verdicts-1.keras").is_file()
    # The verdicts' labels are the ones trained on, the other stamps keep their stored labels:
    # one label flipped shows which source a stamp's label comes from.
    from s2v_batch.store.dataset import list_nights, read_stamp_ids
    from s2v_batch.training.data import LabelledNights
    from s2v_batch.training.verdicts import verdict_labels

    paths = [r.path for r in list_nights(session["store"])]
    paths, relabel, _ = verdict_labels(session["db"], paths)
    said = dict(zip(cons["stamp_id"].tolist(), cons["label"].tolist(), strict=True))
    assert {sid: lab for m in relabel.values() for sid, lab in m.items()} == said
    flip = next(iter(said))
    for m in relabel.values():
        if flip in m:
            m[flip] = 1 - m[flip]
    said[flip] = 1 - said[flip]
    source = LabelledNights(paths, relabel=relabel)
    for night in source.nights:
        for i, sid in enumerate(read_stamp_ids(night.path).tolist()):
            assert night.label[i] == said.get(sid, session["truth"][sid]), sid
