"""A simulated season of 20 nights, one of them bad on purpose, scored by the shipped model and
reported with `s2v report SCORES --out OUT --store STORE`: galleries, the night-by-night view,
the flagged night, and the pages checked in a real headless browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_rows import check_night_rows, load_report_json

from s2v_batch.cli.main import main
from s2v_batch.core.config import ConfigError, ReportConfig, ScoreConfig
from s2v_batch.report import write_reports
from s2v_batch.report.gallery import stretch, tiebreak
from s2v_batch.scoring.driver import score
from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore

SEASON = "Y1"
NIGHTS = [20130901 + i for i in range(20)]
BAD = 20130912
PER_NIGHT = 100


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def season(tmp_path_factory: pytest.TempPathFactory, dask_client) -> dict[str, Any]:
    """Stores and scores of the season; the bad night is simulated with 95% artifacts."""
    base = tmp_path_factory.mktemp("season")
    store_root, scores = base / "store", base / "scores"
    rng = np.random.default_rng(2013)
    for i, night in enumerate(NIGHTS):
        batch = simulate_stamps(PER_NIGHT, rng, real_fraction=0.05 if night == BAD else 0.5)
        zstore.write_night(
            zstore.night_path(store_root, SEASON, night),
            batch.pixels,
            (i + 1) * 100_000 + np.arange(PER_NIGHT, dtype=np.int64),
            batch.labels,
            batch.masked.reshape(PER_NIGHT, -1).mean(axis=1).astype(np.float32),
            season=SEASON,
            night=night,
            attrs={"night_fingerprint": f"sim-{night}"},
        )
    cfg = ScoreConfig(batch_size=128, part_stamps=PER_NIGHT)
    score(store_root, scores, dask_client, config=cfg, progress=False)
    out = base / "reports"
    assert main(["report", str(scores), "--out", str(out), "--store", str(store_root)]) == 0
    rep = load_report_json(out / SEASON / "report.json")
    return {"store": store_root, "scores": scores, "out": out, "rep": rep, "base": base}


def test_the_bad_night_and_only_it_is_flagged(season) -> None:
    rep = season["rep"]
    assert rep["n_nights"] == len(NIGHTS) and rep["n_stamps"] == len(NIGHTS) * PER_NIGHT
    # Each night's stamps, errors, candidate fraction, recall, FDR and AUC, the robust range
    # and the flags, against the same figures computed here from the Parquet rows.
    want = check_night_rows(rep, season["scores"], SEASON)
    assert want.index.tolist() == NIGHTS and (want["n_stamps"] == PER_NIGHT).all()
    assert want["recall"].notna().all() and want["fdr"].notna().all()  # labelled nights
    assert [f["night"] for f in rep["flagged_nights"]] == [BAD]
    reason = rep["flagged_nights"][0]["reason"]
    assert "below the season's robust range" in reason and "median" in reason
    page = (season["out"] / SEASON / "report.html").read_text()
    assert "<tr class='flag'><td><a href='nights/20130912/report.html'>" in page
    assert "1 night(s) flagged" in page
    with Image.open(season["out"] / SEASON / "nights.png") as img:
        assert img.size[0] > 500
    index = (season["out"] / "index.html").read_text()
    assert f"src='{SEASON}/trend.png'" in index and f"{BAD} (flagged)" in index


def _scores(season) -> pd.DataFrame:
    """The season's scores; ``tb`` orders ties (many float32 scores of exactly 1.0)."""
    df = pd.read_parquet(season["scores"], filters=[("season", "==", SEASON)])
    return df.assign(tb=tiebreak(df["stamp_id"].to_numpy()))


def test_galleries_show_the_right_stamps(season) -> None:
    rep, df = season["rep"], _scores(season)
    cfg = ReportConfig()
    items = {it["kind"]: it for it in rep["galleries"]["items"]}
    assert rep["galleries"]["skipped"] is None and set(items) == {
        "top", "threshold", "false_positives", "false_negatives"
    }  # fmt: skip
    cand = df[df["is_candidate"]]
    top = [s["stamp_id"] for s in items["top"]["stamps"]]
    want = cand.sort_values(["score", "tb"], ascending=[False, True])["stamp_id"]
    assert top == want.head(cfg.gallery_top).tolist()
    assert len({s["night"] for s in items["top"]["stamps"]}) > 3  # ties spread over nights
    near = (cand["score"] - cand["threshold"]).abs()
    want = cand.assign(near=near).sort_values(["near", "tb"])["stamp_id"]
    assert [s["stamp_id"] for s in items["threshold"]["stamps"]] == want.head(16).tolist()
    fp = df[df["is_candidate"] & (df["label"] == 0)]
    want = fp.sort_values(["score", "tb"], ascending=[False, True])["stamp_id"].head(16)
    assert [s["stamp_id"] for s in items["false_positives"]["stamps"]] == want.tolist()
    # Stamps with an error (no score) are in no gallery.
    fn = df[df["score"].notna() & ~df["is_candidate"] & (df["label"] == 1)]
    want = fn.sort_values(["score", "tb"])["stamp_id"].head(16)
    assert [s["stamp_id"] for s in items["false_negatives"]["stamps"]] == want.tolist()

    # The sprite row of the top stamp is its pixels, read back by stamp_id and stretched.
    doc, first = rep["galleries"], items["top"]["stamps"][0]
    ds = zstore.open_night(zstore.night_path(season["store"], SEASON, first["night"]))
    i = int(np.flatnonzero(ds["stamp_id"].values == first["stamp_id"])[0])
    want_px = stretch(ds["stamps"].values[i : i + 1])[0]
    with Image.open(season["out"] / SEASON / doc["image"]) as img:
        sprite = np.asarray(img)
    (w, h), gap = doc["cell"], doc["gap"]
    assert sprite.shape == (doc["size"][1], doc["size"][0])
    y = first["row"] * (h + gap)
    for ch in range(3):
        x = ch * (w + gap)
        np.testing.assert_array_equal(sprite[y : y + h, x : x + w], want_px[:, :, ch])
    # Each stamp is drawn once, however many galleries show it.
    shown = {s["stamp_id"]: s["row"] for it in items.values() for s in it["stamps"]}
    assert sorted(shown.values()) == list(range(len(shown)))
    assert doc["size"][1] == len(shown) * (h + gap) - gap

    page = (season["out"] / SEASON / "report.html").read_text()
    assert f"stamp_id {first['stamp_id']}<br>score {first['score']:.4f} &middot; real" in page
    assert page.count("<img src='gallery.png'") == sum(len(it["stamps"]) for it in items.values())

    night = load_report_json(season["out"] / SEASON / "nights" / str(BAD) / "report.json")
    n_items = night["galleries"]["items"]
    assert night["galleries"]["image"] == "gallery.png" and n_items[0]["stamps"]
    assert all(len(it["stamps"]) <= cfg.night_gallery for it in n_items)
    assert all(s["night"] == BAD for it in n_items for s in it["stamps"])


def test_without_a_store_the_galleries_say_why(season) -> None:
    scores, out = season["base"] / "two-nights", season["base"] / "no-store"
    for night in NIGHTS[:2]:  # two nights are enough here
        part = f"season={SEASON}/night={night}"
        shutil.copytree(season["scores"] / part, scores / part)
    r = write_reports(scores, out)
    doc = r.seasons[SEASON]["galleries"]
    assert doc["items"] == [] and "no Zarr store was given" in doc["skipped"]
    assert not list(out.rglob("gallery*.png"))
    page = (out / SEASON / "report.html").read_text()
    assert "Galleries skipped: no Zarr store was given" in page
    # Too few nights for a robust range: none flagged, and the page says why.
    assert r.seasons[SEASON]["flagged_nights"] == []
    assert "at least 5 are needed" in page


def test_report_config_validates_gallery_sizes() -> None:
    with pytest.raises(ConfigError, match="at most 400"):
        ReportConfig(gallery_top=300, gallery_threshold=200)
    with pytest.raises(ConfigError, match="gallery_top must be an integer >= 0"):
        ReportConfig(gallery_top=-1)
    assert ReportConfig(gallery_top=0).gallery_sizes()["gallery_top"] == 0


def test_page_weight(season) -> None:
    """The season page and everything it loads stays well under a few MB."""
    folder = season["out"] / SEASON
    page = (folder / "report.html").read_text()
    srcs = set(re.findall(r"<img src='([^']+)'", page))
    weight = len(page.encode()) + sum((folder / s).stat().st_size for s in srcs)
    assert len(srcs) == 4 and weight < 1_500_000, (srcs, weight)


# -- a real browser ---------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


_PROBE = (
    "<script>window.addEventListener('load',function(){var r=[];"
    "for(var i=0;i<document.images.length;i++){var m=document.images[i];"
    "r.push([m.getAttribute('src'),m.complete,m.naturalWidth]);}"
    "var p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify(r);"
    "document.body.appendChild(p);});</script>"
)


def images_in_browser(chrome: str, page: Path, profile: Path) -> list[list[Any]]:
    """[src, complete, naturalWidth] of every img of ``page`` as headless Chromium loaded it.

    The page is copied beside itself with a probe script added (same folder: the same
    relative paths), and loaded with every host name unresolvable: nothing may come from the
    network.
    """
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        done = subprocess.run(
            [
                chrome,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    m = re.search(r"<pre id=\"probe\">(.*?)</pre>", done.stdout, re.S)
    assert m, f"no probe result from {chrome}: {done.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture(scope="session")
def chrome() -> str:
    """Chromium's path; without one the test skips (fails under S2V_REQUIRE_REAL=1, as in CI).
    Session-scoped and named first: it runs before the season and its Dask client are built."""
    from conftest import skip_or_fail

    path = _chromium()
    if path is None:
        skip_or_fail(
            "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"
        )
    return path


def test_pages_load_their_images_in_a_headless_browser(chrome, season, tmp_path: Path) -> None:
    out = season["out"]
    pages = {
        out / "index.html": 1,
        out / SEASON / "report.html": 4,  # histogram, MDR-FPR, nights, the gallery sprite
        out / SEASON / "nights" / str(BAD) / "report.html": 3,
    }
    for page, least in pages.items():
        images = images_in_browser(chrome, page, tmp_path / "profile")
        srcs = {src for src, _, _ in images}
        assert len(srcs) >= least, (page, images)
        broken = [img for img in images if not (img[1] and img[2] > 0)]
        assert not broken, f"{page}: images that did not load: {broken}"
