"""write_reports(skip_unchanged=True): a report made from the current scores is not written again;
rerender() rebuilds pages from report.json alone."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from report_rows import SHA, make_night, write_part

from s2v_batch.report import REPORT_FILES, rerender, write_reports
from s2v_batch.store import scores as sink
from s2v_batch.store.publish import publish_night

NIGHTS = (20140901, 20140902, 20140903)


def publish(root: Path, night: int, seed: int, season: str = "Y2") -> str:
    """Score rows published as the scorer publishes them: staged, then swapped in with a manifest."""
    rows = make_night(np.random.default_rng(seed), 300, threshold=0.06, labelled=1.0)
    run_id = uuid.uuid4().hex
    stage = sink.staging_dir(root, season, night, "k")
    write_part(sink.part_path(stage, 0, run_id), rows)
    manifest = {"run_id": run_id, "model_sha256": SHA, "n_stamps": 300, "season": season}
    publish_night(stage, root, season, night, manifest)
    return run_id


def snapshot(out: Path) -> dict[Path, tuple[int, int]]:
    """(inode, mtime) of every file: an atomic rewrite changes both."""
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def scores(tmp_path: Path) -> Path:
    root = tmp_path / "scores"
    for i, night in enumerate(NIGHTS):
        publish(root, night, seed=i)
    return root


def test_second_call_rewrites_nothing_and_a_rescored_night_is_written(
    scores: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    first = write_reports(scores, out, skip_unchanged=True)
    assert first.status == {"Y2": "written"} and first.nights_written == {"Y2": 3}
    assert first.seasons["Y2"]["identity"]["nights"]["20140901"]["model_sha256"] == SHA
    before = snapshot(out)
    assert len(before) == 4 * 4 + 2 + 1  # 4 reports, nights.png and trend.png, the index

    again = write_reports(scores, out, skip_unchanged=True)
    assert again.status == {"Y2": "unchanged"} and again.paths == ()
    assert "unchanged" in again.line()
    assert again.seasons["Y2"] == first.seasons["Y2"]
    assert snapshot(out) == before

    publish(scores, 20140902, seed=9)  # the night is scored again: a new run
    third = write_reports(scores, out, skip_unchanged=True)
    assert third.status == {"Y2": "written"} and third.nights_written == {"Y2": 1}
    after = snapshot(out)
    changed = {p.relative_to(out).as_posix() for p in after if after[p] != before[p]}
    night2 = {f"Y2/nights/20140902/{n}" for n in REPORT_FILES.values()}
    season = {f"Y2/{n}" for n in [*REPORT_FILES.values(), "nights.png", "trend.png"]}
    assert changed == night2 | season | {"index.html"}


def test_settings_missing_files_and_default_write_again(scores: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    write_reports(scores, out, skip_unchanged=True)
    # Another human scanning time changes every figure of time: everything is written.
    r = write_reports(scores, out, skip_unchanged=True, seconds_per_stamp=1.0)
    assert r.status == {"Y2": "written"} and r.nights_written == {"Y2": 3}
    assert write_reports(scores, out, skip_unchanged=True, seconds_per_stamp=1.0).paths == ()
    # Another model card (the settings it quotes) too.
    card = {"sha256": SHA, "target_recall": 0.95}
    r = write_reports(scores, out, skip_unchanged=True, seconds_per_stamp=1.0, model_card=card)
    assert r.nights_written == {"Y2": 3}
    # A lost file: the report that lacks it is written again.
    (out / "Y2" / "nights" / "20140903" / REPORT_FILES["mdr_fpr"]).unlink()
    r = write_reports(scores, out, skip_unchanged=True, seconds_per_stamp=1.0, model_card=card)
    assert r.status == {"Y2": "written"} and r.nights_written == {"Y2": 1}
    assert (out / "Y2" / "nights" / "20140903" / REPORT_FILES["mdr_fpr"]).is_file()
    # Without the option every report is written.
    r = write_reports(scores, out, seconds_per_stamp=1.0, model_card=card)
    assert r.status == {"Y2": "written"} and r.nights_written == {"Y2": 3}


def test_scores_without_manifest_are_identified_by_their_files(tmp_path: Path) -> None:
    root, out = tmp_path / "scores", tmp_path / "reports"
    part = root / "season=Y3" / "night=20150901" / "part-00000.parquet"
    write_part(part, make_night(np.random.default_rng(3), 200, threshold=0.06, labelled=0.5))
    assert write_reports(root, out, skip_unchanged=True).status == {"Y3": "written"}
    assert write_reports(root, out, skip_unchanged=True).status == {"Y3": "unchanged"}
    write_part(part, make_night(np.random.default_rng(4), 250, threshold=0.06, labelled=0.5))
    r = write_reports(root, out, skip_unchanged=True)
    assert r.status == {"Y3": "written"} and r.seasons["Y3"]["n_stamps"] == 250


def test_rerender_from_json_alone(scores: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    write_reports(scores, out)
    pages = sorted(out.rglob(REPORT_FILES["html"]))
    before = {p: p.read_bytes() for p in pages}
    for p in pages:
        p.unlink()
    (out / "index.html").unlink()
    os.rename(scores, tmp_path / "gone")  # no scores needed
    written = rerender(out)
    assert written[-1] == out / "index.html" and sorted(written[:-1]) == pages
    assert {p: p.read_bytes() for p in pages} == before
    assert "href='Y2/report.html'" in (out / "index.html").read_text()
