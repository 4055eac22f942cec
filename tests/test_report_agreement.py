"""Reports of alert scores show s2v's candidates against the survey's own score (ZTF ``drb``,
Rubin ``reliability``): the 2x2 counts, agreement, kappa and a density PNG, from a real ingest
and scoring of simulated alerts; DES reports carry no such section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_rows import load_report_json

from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.ingest.driver import ingest
from s2v_batch.model.shipped import default_model_path
from s2v_batch.report import write_reports
from s2v_batch.scoring.driver import score
from s2v_batch.sim.alerts import simulate_alerts

CFG = IngestConfig(unit_stamps=32, shard_stamps=64, chunk_stamps=32, rubin_stamp_size=51)
SCORE = ScoreConfig(part_stamps=64, batch_size=64)


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def _scored(client, root: Path, survey: str, fmt: str, model: Path | None) -> Path:
    sim = simulate_alerts(root / "raw", survey=survey, nights=2, alerts_per_night=60, fmt=fmt,
                          seed=21)  # fmt: skip
    ingest(sim.out, root / "store", client, labels=sim.out / "autoscan_features.3.csv",
           config=CFG, progress=False)  # fmt: skip
    score(root / "store", root / "scores", client, model_path=model, config=SCORE, progress=False)
    return root / "scores"


@pytest.fixture(scope="module")
def ztf(client, tmp_path_factory) -> dict:
    """Two ZTF nights scored with the shipped ZTF model (picked by the store's survey)."""
    root = tmp_path_factory.mktemp("ztf-agree")
    scores = _scored(client, root, "ztf", "archive", None)
    summary = write_reports(scores, root / "reports", store=root / "store")
    return {"scores": scores, "out": root / "reports", "summary": summary}


def _expected(df: pd.DataFrame, column: str) -> dict:
    ok = df.score.notna() & df[column].notna()
    c, v = df.is_candidate[ok].astype(bool), df[column][ok] >= 0.5
    cells = {"both": int((c & v).sum()), "s2v_only": int((c & ~v).sum()),
             "survey_only": int((~c & v).sum()), "neither": int((~c & ~v).sum())}  # fmt: skip
    n = sum(cells.values())
    agree = (cells["both"] + cells["neither"]) / n
    pe = ((cells["both"] + cells["s2v_only"]) * (cells["both"] + cells["survey_only"])
          + (cells["survey_only"] + cells["neither"]) * (cells["s2v_only"] + cells["neither"])
          ) / n**2  # fmt: skip
    return {**cells, "n": n, "n_missing": int((~ok).sum()), "agreement": agree,
            "kappa": (agree - pe) / (1 - pe)}  # fmt: skip


def _check(rep: dict, want: dict, column: str) -> None:
    ag = rep["agreement"]
    assert ag["survey_score"] == column and ag["survey_threshold"] == 0.5
    for k in ("both", "s2v_only", "survey_only", "neither", "n", "n_missing"):
        assert ag[k] == want[k], k
    assert ag["agreement"] == pytest.approx(want["agreement"])
    assert ag["kappa"] == pytest.approx(want["kappa"])


def _check_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 300


def test_ztf_reports_show_the_agreement_with_drb(ztf):
    df = pd.read_parquet(ztf["scores"])
    assert df.drb.notna().all() and df.is_candidate.any() and (~df.is_candidate).any()
    season = ztf["out"] / "ZTF2024"
    rep = load_report_json(season / "report.json")
    want = _expected(df, "drb")
    assert want["n"] == 120 and 0 < want["both"] < 120  # both cells of s2v's side are used
    _check(rep, want, "drb")
    assert rep["files"]["agreement"] == "agreement.png"
    _check_png(season / "agreement.png")
    page = (season / "report.html").read_text()
    assert "Agreement with the survey's score (drb)" in page
    assert f"<td class='n'>{want['both']:,}</td>" in page and "agreement.png" in page
    for night in rep["nights"]:  # each night report: its own rows; the season: their sum
        folder = season / "nights" / str(night)
        nrep = load_report_json(folder / "report.json")
        _check(nrep, _expected(df[df.night == night], "drb"), "drb")
        _check_png(folder / "agreement.png")
        assert "Agreement with the survey" in (folder / "report.html").read_text()
    assert all((season / "nights" / str(n) / "agreement.png") in ztf["summary"].paths
               for n in rep["nights"])  # fmt: skip


def test_rubin_reports_show_the_agreement_with_reliability(client, tmp_path):
    # Rubin cut-outs cropped to 51x51 (CFG) score with the DES model, named explicitly.
    scores = _scored(client, tmp_path, "rubin", "framed", default_model_path())
    write_reports(scores, tmp_path / "reports")
    df = pd.read_parquet(scores)
    (season,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    rep = load_report_json(season / "report.json")
    _check(rep, _expected(df, "reliability"), "reliability")
    _check_png(season / "agreement.png")


def test_des_reports_have_no_agreement_section(client, tmp_path):
    from s2v_batch.sim.simulator import simulate

    sim = simulate(tmp_path / "raw", season="Y1", nights=1, stamps_per_night=60, fmt="gif", seed=4)
    ingest(sim.out, tmp_path / "store", client, labels=sim.out / "autoscan_features.3.csv",
           config=CFG, progress=False)  # fmt: skip
    score(tmp_path / "store", tmp_path / "scores", client, config=SCORE, progress=False)
    summary = write_reports(tmp_path / "scores", tmp_path / "reports")
    for folder in (
        tmp_path / "reports" / "Y1",
        tmp_path / "reports" / "Y1" / "nights" / "20130901",
    ):
        rep = load_report_json(folder / "report.json")
        assert "agreement" not in rep and "agreement" not in rep["files"]
        assert not (folder / "agreement.png").exists()
        assert "Agreement with the survey" not in (folder / "report.html").read_text()
    assert not any(p.name == "agreement.png" for p in summary.paths)


def test_a_night_without_the_survey_score_counts_it_missing(ztf, tmp_path):
    # drb is null before ZTF schema 3.3: those stamps are counted apart, not guessed.
    src = ztf["scores"]
    parts = sorted(src.glob("season=*/night=*/part-*.parquet"))
    dest = tmp_path / "scores"
    for p in parts:
        t = pq.read_table(p)
        i = t.schema.get_field_index("drb")
        t = t.set_column(i, "drb", pa.nulls(t.num_rows, t.schema.field("drb").type))
        (dest / p.parent.relative_to(src)).mkdir(parents=True, exist_ok=True)
        pq.write_table(t, dest / p.relative_to(src))
    write_reports(dest, tmp_path / "reports")
    rep = load_report_json(tmp_path / "reports" / "ZTF2024" / "report.json")
    ag = rep["agreement"]
    assert ag["n"] == 0 and ag["n_missing"] == 120 and ag["agreement"] is None
    assert "Agreement with the survey" in (tmp_path / "reports/ZTF2024/report.html").read_text()
