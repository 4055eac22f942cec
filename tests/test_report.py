"""Tests of s2v_batch.report on a small real hive-partitioned Parquet dataset."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_rows import (
    PNG_MAGIC,
    SHA,
    check_night_rows,
    concat,
    load_report_json,
    make_night,
    write_part,
)

from s2v_batch.metrics import classification as m
from s2v_batch.metrics import timesaved
from s2v_batch.metrics.histogram import ScoreHistogram
from s2v_batch.report import REPORT_FILES, ReportError, write_reports
from s2v_batch.report.content import provenance as _provenance


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two seasons: Y1 with three nights (one in two parts, one unlabelled) and SV with one."""
    rng = np.random.default_rng(20130901)
    root = tmp_path_factory.mktemp("scores")
    nights = {
        ("Y1", 20130901): make_night(rng, 1500, threshold=0.06, labelled=0.8, n_errors=7),
        ("Y1", 20130902): make_night(rng, 1200, threshold=0.06, labelled=1.0),
        ("Y1", 20130903): make_night(rng, 600, threshold=0.5, labelled=0.0, n_errors=2),
        ("SV", 20121105): make_night(rng, 900, threshold=0.06, labelled=0.5, version="<b>0.9</b>"),
    }
    # One row whose is_candidate disagrees with its score: the report counts is_candidate.
    sv = nights[("SV", 20121105)]
    flip = int(np.flatnonzero(sv["ok"] & (sv["score"] < 0.06))[0])
    sv["is_candidate"][flip] = True
    for (season, night), rows in nights.items():
        d = root / f"season={season}" / f"night={night}"
        if night == 20130902:  # two parts
            half = {k: v[:500] for k, v in rows.items()}, {k: v[500:] for k, v in rows.items()}
            write_part(d / "part-00000.parquet", half[0])
            write_part(d / "part-00001.parquet", half[1], null_labels=True)
        else:
            write_part(d / "part-00000.parquet", rows)
        (d / "_manifest.json").write_text("{}")
    # Staging leftovers must be ignored, as pyarrow and pandas ignore them.
    junk = make_night(rng, 50, threshold=0.06, labelled=1.0)
    write_part(
        root / "_staging" / "season=Y1" / "night=20130901" / "k" / "part-00000.parquet", junk
    )
    write_part(root / "season=Y1" / "night=20130901" / ".part-00009.parquet.tmp-1.parquet", junk)

    out = tmp_path_factory.mktemp("reports")
    summary = write_reports(root, out, simulated=True)
    return {"root": root, "out": out, "summary": summary, "nights": nights}


def load(out: Path, *parts: str) -> dict[str, Any]:
    """A report's JSON, parsed strictly (NaN or Infinity in it fails the test)."""
    return load_report_json(out.joinpath(*parts) / "report.json")


def expected(rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """The figures computed directly from the rows with the metrics module."""
    ok = rows["ok"]
    s, lab, cand = rows["score"][ok], rows["label"][ok], rows["is_candidate"][ok]
    real, art = lab == 1, lab == 0
    conf = m.Confusion(
        tp=int((cand & real).sum()),
        fp=int((cand & art).sum()),
        tn=int((~cand & art).sum()),
        fn=int((~cand & real).sum()),
    )
    return {
        "n_stamps": int(ok.size),
        "n_scored": int(ok.sum()),
        "n_errors": int((~ok).sum()),
        "n_candidates": int(cand.sum()),
        "conf": conf,
        "auc": m.roc_auc(s, lab),
        "hist": ScoreHistogram().add(s, lab),
        "exact_ops": m.standard_operating_points(s, lab),
        "time": timesaved.time_saved(
            int(ok.sum()), int(cand.sum()), 0.5, conf.fp if conf.n_labelled else None
        ),
    }


def check_figures(rep: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
    want = expected(rows)
    for key in ("n_stamps", "n_scored", "n_errors", "n_candidates"):
        assert rep[key] == want[key], key
    conf = want["conf"]
    for key in ("tp", "fp", "tn", "fn", "n_labelled", "n_real", "n_artifact"):
        assert rep[key] == getattr(conf, key), key
    for key in ("hours_all", "hours_candidates", "hours_saved", "working_days_saved"):
        assert rep[key] == pytest.approx(want["time"][key]), key
    assert rep["hours_wasted"] == pytest.approx(want["time"]["hours_wasted"])
    assert rep["reduction_factor"] == pytest.approx(want["time"]["reduction_factor"])
    if conf.n_labelled:
        assert rep["labelled"] is True
        for key in ("recall", "mdr", "fpr", "fdr", "precision"):
            assert rep[key] == pytest.approx(getattr(conf, key)), key
        assert rep["roc_auc"] == pytest.approx(want["auc"], abs=1e-3)
        assert rep["operating_points"] == want["hist"].standard_operating_points()
        for kind, points in want["exact_ops"].items():
            assert rep["operating_points"][kind] == pytest.approx(points, abs=0.02)
    else:
        assert rep["labelled"] is False
        assert rep["recall"] is None and rep["roc_auc"] is None and rep["operating_points"] is None


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


# -- the main run -----------------------------------------------------------------------------


def test_layout_and_files(dataset) -> None:
    out, summary = dataset["out"], dataset["summary"]
    assert summary.index_html == out / "index.html"
    assert set(summary.seasons) == {"Y1", "SV"}
    expected_dirs = [out / "SV", out / "Y1"] + [
        out / s / "nights" / str(n) for s, n in dataset["nights"]
    ]
    for d in expected_dirs:
        for name in REPORT_FILES.values():
            assert (d / name).is_file(), d / name
            assert d / name in summary.paths
        check_png(d / "score_histogram.png")
        check_png(d / "mdr_fpr.png")
    for season in ("SV", "Y1"):  # a season also draws its nights and the index's trend line
        check_png(out / season / "nights.png")
        assert (out / season / "trend.png").is_file()
    assert len(summary.paths) == 4 * len(expected_dirs) + 2 * 2 + 1
    assert summary.season_dirs == {"Y1": out / "Y1", "SV": out / "SV"}
    assert "Y1: 3 night(s)" in summary.line() and "[SIMULATED]" in summary.line()


@pytest.mark.parametrize(
    ("season", "night"), [("Y1", 20130901), ("Y1", 20130902), ("SV", 20121105)]
)
def test_night_figures_match_metrics(dataset, season, night) -> None:
    rep = load(dataset["out"], season, "nights", str(night))
    assert (rep["kind"], rep["season"], rep["night"], rep["nights"]) == (
        "night",
        season,
        night,
        [night],
    )
    check_figures(rep, dataset["nights"][(season, night)])
    assert rep["threshold"] == 0.06  # shortest decimal of the stored float32
    assert rep["run_ids"] == ["run-1"] and rep["model_sha256"] == SHA
    assert rep["scored_at_first"].startswith("2026-11-01T00:00:00")


def test_errors_are_counted_and_explained(dataset) -> None:
    rep = load(dataset["out"], "Y1", "nights", "20130901")
    assert rep["n_errors"] == 7 and rep["n_scored"] == 1493
    assert rep["error_messages"] == {"decode failed: truncated block": 7}
    assert any("no score" in w for w in rep["warnings"])
    # The staging and temporary parts (50 rows each) were not read.
    assert rep["n_stamps"] == 1500


def test_unlabelled_night_gets_a_report(dataset) -> None:
    out = dataset["out"]
    rep = load(out, "Y1", "nights", "20130903")
    check_figures(rep, dataset["nights"][("Y1", 20130903)])
    assert rep["threshold"] == 0.5 and rep["hours_wasted"] is None
    page = (out / "Y1" / "nights" / "20130903" / "report.html").read_text()
    assert "No labelled stamps" in page and "true positives" not in page


def test_season_is_the_sum_of_its_nights(dataset) -> None:
    out, nights = dataset["out"], dataset["nights"]
    rep = load(out, "Y1")
    assert rep["kind"] == "season" and rep["night"] is None
    assert rep["nights"] == [20130901, 20130902, 20130903] and rep["n_nights"] == 3
    check_figures(rep, concat(*(nights[("Y1", n)] for n in rep["nights"])))
    # Each night's row against its figures computed here from the Parquet rows (pandas):
    # 20130903 is unlabelled (no recall, FDR or AUC); three nights draw no range, flag none.
    want = check_night_rows(rep, dataset["root"], "Y1")
    assert want["n_stamps"].tolist() == [1500, 1200, 600] and want["n_errors"].tolist() == [7, 0, 2]
    assert rep["night_range"]["median"] is None and rep["flagged_nights"] == []
    assert want["n_stamps"].sum() == rep["n_stamps"]
    # Two thresholds in one season: no single threshold, and a warning says so.
    assert rep["threshold"] is None and rep["thresholds"] == [0.06, 0.5]
    assert any("different thresholds" in w for w in rep["warnings"])
    assert dataset["summary"].seasons["Y1"] == rep


def test_is_candidate_mismatch_is_flagged_and_followed(dataset) -> None:
    rep = load(dataset["out"], "SV")
    check_figures(rep, dataset["nights"][("SV", 20121105)])
    check_night_rows(rep, dataset["root"], "SV")  # the night row counts is_candidate too
    assert any("is_candidate different" in w for w in rep["warnings"])


def test_json_holds_every_design_figure(dataset) -> None:
    rep = load(dataset["out"], "SV")
    design = {
        "season", "nights", "n_stamps", "n_scored", "n_errors", "n_candidates", "threshold",
        "model_version", "model_sha256", "simulated", "data_provenance", "seconds_per_stamp",
        "hours_all", "hours_candidates", "hours_saved", "working_days_saved",
        "reduction_factor", "hours_wasted", "n_labelled", "tp", "fp", "tn", "fn", "recall",
        "mdr", "fpr", "fdr", "roc_auc", "operating_points",
    }  # fmt: skip
    assert design <= set(rep)
    assert set(rep["operating_points"]) == {"mdr_at_fpr", "fpr_at_mdr"}
    assert rep["simulated"] is True and "SIMULATED" in rep["data_provenance"]


def test_html_is_self_contained_escaped_and_says_simulated(dataset) -> None:
    out = dataset["out"]
    page = (out / "SV" / "report.html").read_text()
    # Plots are the PNG files beside the page, linked by relative path (not embedded: a season
    # of 200 nights would carry every image twice); the page loads nothing from the network.
    for name in ("score_histogram.png", "mdr_fpr.png", "nights.png"):
        assert f"<img src='{name}'" in page
    assert "base64" not in page and "http://" not in page and "https://" not in page
    assert "Galleries skipped: no Zarr store was given" in page
    assert "SIMULATED DATA" in page
    assert "&lt;b&gt;0.9&lt;/b&gt;" in page and "<b>0.9</b>" not in page
    assert "nights/20121105/report.html" in page
    index = (out / "index.html").read_text()
    for link in ("Y1/report.html", "SV/report.html", "Y1/nights/20130903/report.html"):
        assert f"href='{link}'" in index
    assert "SIMULATED" in index
    assert index.index(">SV<") < index.index(">Y1<")  # SV comes before Y1


# -- options ----------------------------------------------------------------------------------


def test_season_filter_and_card_provenance(dataset, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    (out / "Y1").mkdir(parents=True)  # an earlier run's season report
    shutil.copy(dataset["out"] / "Y1" / "report.json", out / "Y1" / "report.json")
    card = {
        "name": "s2v",
        "version": "0.9",
        "sha256": "f" * 64,
        "threshold": 0.06,
        "target_recall": 0.95,
        "training_data": {"source": "s2v-batch simulator", "simulated": True, "n_stamps": 5000},
    }
    summary = write_reports(
        dataset["root"], out, season="SV", model_card=card, seconds_per_stamp=1.0
    )
    assert set(summary.seasons) == {"SV"}
    assert sorted(p.name for p in (out / "Y1").iterdir()) == ["report.json"]  # left alone
    rep = load(out, "SV")
    # The rows carry no data_provenance (written by hand): the data are unknown, and the
    # card's "trained on simulated stamps" is the model's provenance, said apart.
    assert rep["simulated"] is None and rep["data_kind"] == "unknown"
    assert "Data provenance unknown" in rep["data_provenance"]
    assert rep["model_trained_on"] == "simulated"
    assert "trained on simulated" in rep["model_provenance"]
    assert rep["seconds_per_stamp"] == 1.0
    assert rep["hours_all"] == pytest.approx(rep["n_scored"] / 3600)
    assert rep["target_recall"] == 0.95
    hist = expected(dataset["nights"][("SV", 20121105)])["hist"]
    assert rep["threshold_for_target_recall"] == hist.threshold_for_recall(0.95)
    assert rep["model_card"]["version"] == "0.9"
    assert any("sha256" in w and "another model" in w for w in rep["warnings"])
    index = summary.index_html.read_text()
    assert "href='Y1/report.html'" in index and "href='SV/report.html'" in index


def test_provenance_sentences() -> None:
    p = _provenance("survey", None)
    assert p["simulated"] is False and "SIMULATED" not in p["data_provenance"]
    assert p["model_trained_on"] == "unknown" and p["model_warning"] is None
    p = _provenance(None, None)
    assert p["simulated"] is None and "unknown" in p["data_provenance"]
    p = _provenance("survey", {"training_data": {"source": "DES Y1 autoscan", "simulated": False}})
    assert p["model_trained_on"] == "survey" and p["model_warning"] is None
    p = _provenance("survey", {"training_data": {"description": "Simulated DES-like stamps"}})
    assert p["simulated"] is False and p["model_trained_on"] == "simulated"
    assert "model trained on simulated stamps" in p["model_warning"]
    p = _provenance("simulated", {"training_data": {"simulated": True}})
    assert p["simulated"] is True and "SIMULATED DATA" in p["data_provenance"]
    assert p["model_warning"] is None  # simulated data, simulated model: nothing to warn of
    assert _provenance("mixed", None)["data_kind"] == "mixed"


# -- errors -----------------------------------------------------------------------------------


def test_empty_or_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        write_reports(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "scores" / "_staging" / "season=Y1" / "night=20130901").mkdir(parents=True)
    with pytest.raises(ReportError, match="no Parquet scores"):
        write_reports(tmp_path / "scores", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_season_raises(dataset, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="'Y9' has no scores.*SV, Y1"):
        write_reports(dataset["root"], tmp_path / "out", season="Y9")


def _one_night(tmp_path: Path, **changes: Any) -> Path:
    rows = make_night(np.random.default_rng(1), 40, threshold=0.06, labelled=1.0)
    rows.update(changes)
    root = tmp_path / "scores"
    write_part(root / "season=Y2" / "night=20140901" / "part-00000.parquet", rows)
    return root


def test_bad_values_raise_clear_errors(tmp_path: Path) -> None:
    label = np.zeros(40, dtype=np.int8)
    label[3] = 5
    root = _one_night(tmp_path, label=label)
    with pytest.raises(ReportError, match=r"season Y2 night 20140901: label .* found \[5\]"):
        write_reports(root, tmp_path / "out")
    score = np.full(40, 0.5, dtype=np.float32)
    score[0] = 1.5
    root = _one_night(tmp_path / "b", score=score)
    with pytest.raises(ReportError, match=r"outside \[0, 1\]"):
        write_reports(root, tmp_path / "out")
    with pytest.raises(ReportError, match="seconds_per_stamp"):
        write_reports(root, tmp_path / "out", seconds_per_stamp=0)


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    root = _one_night(tmp_path)
    night = root / "season=Y2" / "night=20140901"
    pq.write_table(pa.table({"score": pa.array([0.5], pa.float32())}), night / "part-00001.parquet")
    with pytest.raises(ReportError, match="lacks required column.*is_candidate"):
        write_reports(root, tmp_path / "out")
    (night / "part-00001.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ReportError, match="cannot read Parquet file"):
        write_reports(root, tmp_path / "out")
    (night / "part-00001.parquet").unlink()
    shutil.copy(night / "part-00000.parquet", root / "season=Y2" / "stray.parquet")
    with pytest.raises(ReportError, match="not under season=<S>/night=<YYYYMMDD>"):
        write_reports(root, tmp_path / "out")


def test_parts_with_other_column_types_and_missing_optional_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = make_night(rng, 300, threshold=0.06, labelled=0.7, n_errors=3)
    b = make_night(rng, 200, threshold=0.06, labelled=0.7)
    night = tmp_path / "scores" / "season=Y3" / "night=20150901"
    write_part(night / "part-00000.parquet", a)
    # Another writer: float64 scores, int64 labels with nulls, large strings, no error or
    # scored_at column. Only the four required columns are needed.
    other = pa.table(
        {
            "score": pa.array(b["score"].astype(np.float64)),
            "is_candidate": b["is_candidate"],
            "threshold": pa.array(b["threshold"].astype(np.float64)),
            "label": pa.array([None if v == -1 else int(v) for v in b["label"]], pa.int64()),
            "model_version": pa.array(list(b["model_version"]), pa.large_string()),
        }
    )
    pq.write_table(other, night / "part-00001.parquet")
    summary = write_reports(tmp_path / "scores", tmp_path / "out")
    rep = summary.seasons["Y3"]
    check_figures(rep, concat(a, b))
    assert rep["model_version"] == "1.0" and rep["n_errors"] == 3
