"""Writing the reports of every season and night, skipping those whose scores have not changed.

Layout written::

    OUT/index.html
    OUT/<season>/report.json, report.html, score_histogram.png, mdr_fpr.png,
                 nights.png, trend.png, gallery.png (with a store),
                 agreement.png (scores with the survey's own score: ZTF, Rubin)
    OUT/<season>/nights/<night>/report.json, report.html, score_histogram.png, mdr_fpr.png,
                                gallery.png (with a store)

Each ``report.json`` records the ``identity`` of what it was made from: per night the scores'
run (``run_id``, ``model_sha256``, ``n_stamps`` from the night's manifest), and the settings that
change its content. With ``skip_unchanged`` a report whose recorded identity is the current one
and whose files are all there is not written again. ``report.json`` is written last, so a write cut
short leaves the old identity behind and the next run writes the report again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2v_batch.core.config import ReportConfig
from s2v_batch.core.fsutil import write_bytes_atomic
from s2v_batch.report import content, gallery, html, plots
from s2v_batch.report import nights as nights_mod
from s2v_batch.report import scanning as scanning_mod
from s2v_batch.report.content import REPORT_FILES, SEASON_FILES
from s2v_batch.report.tally import (
    ReportError,
    Tally,
    discover,
    night_identity,
    read_night,
    season_key,
)

#: ``ReportSummary.status`` values.
WRITTEN, UNCHANGED = "written", "unchanged"


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_reports` wrote.

    Attributes
    ----------
    out_dir : pathlib.Path
        The reports folder.
    index_html : pathlib.Path
        ``out_dir/index.html``.
    seasons : dict
        Season name -> the season's ``report.json`` content (all its figures).
    season_dirs : dict
        Season name -> its report folder.
    paths : tuple of pathlib.Path
        Every file written, the index last (when it was written).
    status : dict
        Season name -> ``"written"`` or ``"unchanged"`` (skipped: its scores and settings are
        those its report was made from).
    nights_written : dict
        Season name -> how many of its night reports were written.
    """

    out_dir: Path
    index_html: Path
    seasons: dict[str, dict[str, Any]]
    season_dirs: dict[str, Path]
    paths: tuple[Path, ...]
    status: dict[str, str] = field(default_factory=dict)
    nights_written: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for a terminal."""
        parts = []
        for name, rep in self.seasons.items():
            rf = rep["reduction_factor"]
            state = self.status.get(name, WRITTEN)
            done = (
                "unchanged, not rewritten"
                if state == UNCHANGED
                else f"written ({self.nights_written.get(name, 0)} night report(s))"
            )
            parts.append(
                f"{name}: {rep['n_nights']} night(s), {rep['n_stamps']:,} stamps, "
                f"{rep['n_candidates']:,} candidates"
                + (f" (x{rf:.1f} fewer)" if rf is not None else "")
                + (" [SIMULATED]" if rep["simulated"] else "")
                + (" [MIXED DATA]" if rep.get("data_kind") == "mixed" else "")
                + f", {done}"
            )
        return f"report: {'; '.join(parts)}; index {self.index_html}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _current(folder: Path, ident: Mapping[str, Any]) -> dict[str, Any] | None:
    """The report in ``folder`` when it was made from ``ident`` and all its files exist."""
    rep = _read_json(folder / REPORT_FILES["json"])
    if not isinstance(rep, dict) or rep.get("identity") != ident:
        return None
    names = {**REPORT_FILES, **(rep.get("files") or {})}.values()
    return rep if all((folder / n).is_file() for n in names) else None


def _write_one(
    folder: Path,
    tally: Tally,
    *,
    kind: str,
    season: str,
    nights: list[int],
    ident: Mapping[str, Any],
    common: Mapping[str, Any],
    sizes: Mapping[str, int],
    store_root: Path | None,
    night_rows: list[dict[str, Any]] | None = None,
    flag_mads: float = 5.0,
    verdicts: scanning_mod.Verdicts | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Write the files of one report; return its JSON content and the paths written."""
    rep = content.clean(content.figures(tally, kind=kind, season=season, nights=nights, **common))
    rep["identity"] = dict(ident)
    rep["scanning"] = content.clean(
        scanning_mod.section(verdicts, season=season, nights=nights, rep=rep)
    )
    content.use_measured_seconds(rep, tally)  # the time figures: measured where people scanned
    what = f"season {season}" if kind == "season" else f"season {season}, night {nights[0]}"
    sim = content.title_note(rep)
    pngs = {
        "score_histogram": plots.histogram_png(
            tally.histogram, rep["thresholds"], f"Scores, {what}{sim}"
        ),
        "mdr_fpr": plots.mdr_fpr_png(
            tally.histogram, tally.confusion, rep["threshold"], f"MDR vs FPR, {what}{sim}"
        ),
    }
    if tally.agreement is not None:
        col = tally.agreement.column
        pngs["agreement"] = plots.agreement_png(
            tally.agreement, rep["threshold"], f"s2v against {col}, {what}{sim}"
        )
    if night_rows is not None:
        night_range, flagged = nights_mod.flag_nights(night_rows, flag_mads)
        rep["night_reports"] = content.clean(night_rows)
        rep["night_range"] = content.clean(night_range)
        rep["flagged_nights"] = content.clean(flagged)
        rep["files"].update(SEASON_FILES)
        pngs["nights"] = plots.nights_png(rep, f"Night by night, {what}{sim}")
        pngs["trend"] = plots.trend_png(rep)
    doc, sprite = gallery.galleries(
        tally.picks, sizes, season=season, labelled=rep["labelled"], store_root=store_root
    )
    rep["galleries"] = content.clean(doc)
    if sprite is not None:
        rep["files"]["gallery"] = gallery.SPRITE
        pngs["gallery"] = sprite
    folder.mkdir(parents=True, exist_ok=True)
    if sprite is None:  # an earlier report's galleries, not drawn now
        (folder / gallery.SPRITE).unlink(missing_ok=True)
    paths = []
    for key, data in pngs.items():
        paths.append(folder / rep["files"][key])
        write_bytes_atomic(paths[-1], data)
    paths.append(folder / rep["files"]["html"])
    write_bytes_atomic(paths[-1], html.report_html(rep))
    paths.append(folder / rep["files"]["json"])
    write_bytes_atomic(paths[-1], content.to_json(rep))  # last: it says the report is whole
    return rep, paths


def write_reports(
    scores_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    season: str | None = None,
    seconds_per_stamp: float | None = None,
    simulated: bool | None = None,
    model_card: Mapping[str, Any] | None = None,
    skip_unchanged: bool = False,
    store: str | os.PathLike[str] | None = None,
    config: ReportConfig | None = None,
    verdicts: str | None = None,
) -> ReportSummary:
    """Write per-season and per-night reports from the Parquet scores.

    Parameters
    ----------
    scores_root : path
        Root of the hive-partitioned scores (``season=<S>/night=<N>/part-*.parquet``).
    out_dir : path
        Reports folder; created if missing. ``index.html`` lists every season report in it,
        including ones written by earlier calls.
    season : str, optional
        Report on this season only; default every season found.
    seconds_per_stamp : float, optional
        Human scanning time per stamp for the time-saved figures (default: the config's, 0.5).
    simulated : bool, optional
        Whether the scores come from simulated stamps (True) or survey observations (False),
        for scores that do not say. When None, taken from the rows' ``data_provenance`` (each
        night's, recorded at ingest); the model's provenance comes from its card, separately.
    model_card : mapping, optional
        The model card (``ModelCard.to_dict()``): target recall, provenance, sha256 check.
    skip_unchanged : bool
        Leave alone a season (and a night) whose report records the current identity of its
        scores and settings and whose files all exist; the index is rewritten only when a
        report was written (or it is missing). Re-running a finished night then rewrites no
        file. Default: write everything.
    store : path, optional
        The Zarr store the scores were computed from: the galleries read their stamps from it.
        Without it the reports say the galleries were skipped, and why.
    config : ReportConfig, optional
        Gallery sizes and the flagging range (and seconds per stamp); defaults otherwise.
    verdicts : str, optional
        The scanners' verdict database (SQLite file or ``postgresql://`` URL) for the
        "Scanning" section; default ``SCORES/_verdicts.sqlite`` where it exists.

    Returns
    -------
    ReportSummary

    Raises
    ------
    ReportError
        When the root holds no Parquet scores, ``season`` is not among them, a file is not in
        the layout or holds unusable values.
    """
    root, out = Path(scores_root), Path(out_dir)
    cfg = config if config is not None else ReportConfig()
    sec = float(seconds_per_stamp if seconds_per_stamp is not None else cfg.seconds_per_stamp)
    if not (math.isfinite(sec) and sec > 0):
        raise ReportError(f"seconds_per_stamp must be a positive number, got {seconds_per_stamp}")
    if model_card is not None and not isinstance(model_card, Mapping):
        raise ReportError(f"model_card must be a mapping, got {type(model_card).__name__}")
    store_root = Path(store) if store is not None else None
    if store_root is not None and not store_root.is_dir():
        raise ReportError(f"store {store_root} does not exist or is not a folder")
    found = discover(root, season)
    vdb = scanning_mod.read_verdicts(root, verdicts)
    common = dict(seconds_per_stamp=sec, simulated=simulated, card=model_card)
    sizes = {k.removeprefix("gallery_"): v for k, v in cfg.gallery_sizes().items()}
    night_sizes = {k: cfg.night_gallery if v else 0 for k, v in sizes.items()}
    keep = {k: max(v, night_sizes[k]) for k, v in sizes.items()}
    settings = content.settings_identity(
        sec,
        simulated,
        model_card,
        store=str(store_root.resolve()) if store_root else None,
        galleries={**sizes, "night": cfg.night_gallery},
        flag_mads=cfg.flag_mads,
    )
    if vdb is not None:  # a new verdict puts every report out of date
        settings = {**settings, "verdicts": vdb.identity}
    shared = dict(common=common, store_root=store_root, verdicts=vdb)

    written: list[Path] = []
    seasons: dict[str, dict[str, Any]] = {}
    season_dirs: dict[str, Path] = {}
    status: dict[str, str] = {}
    nights_written: dict[str, int] = {}
    for name in sorted(found, key=season_key):
        season_dir = out / name
        season_dirs[name] = season_dir
        night_ids = {n: night_identity(root, name, n, found[name][n]) for n in found[name]}
        season_id = content.identity(settings, night_ids)
        if skip_unchanged:
            old = _current(season_dir, season_id)
            if old is not None and all(
                _current(season_dir / "nights" / str(n), content.identity(settings, {n: i}))
                for n, i in night_ids.items()
            ):
                seasons[name], status[name], nights_written[name] = old, UNCHANGED, 0
                continue
        season_tally = Tally(picks=gallery.Picks(sizes) if store_root else None)
        night_rows = []
        nights_written[name] = 0
        for night in sorted(found[name]):
            picks = gallery.Picks(keep) if store_root else None
            tally = read_night(found[name][night], f"season {name} night {night}", night, picks)
            season_tally.merge(tally)
            folder = season_dir / "nights" / str(night)
            ident = content.identity(settings, {night: night_ids[night]})
            rep = _current(folder, ident) if skip_unchanged else None
            if rep is None:
                rep, paths = _write_one(
                    folder,
                    tally,
                    kind="night",
                    season=name,
                    nights=[night],
                    ident=ident,
                    sizes=night_sizes,
                    **shared,
                )
                written += paths
                nights_written[name] += 1
            night_rows.append(nights_mod.night_row(rep))
        rep, paths = _write_one(
            season_dir,
            season_tally,
            kind="season",
            season=name,
            nights=sorted(found[name]),
            ident=season_id,
            sizes=sizes,
            night_rows=night_rows,
            flag_mads=cfg.flag_mads,
            **shared,
        )
        written += paths
        seasons[name], status[name] = rep, WRITTEN

    index = out / "index.html"
    if written or not index.is_file():
        write_bytes_atomic(index, html.index_html(_season_reports(out, seasons)))
        written.append(index)
    return ReportSummary(
        out_dir=out,
        index_html=index,
        seasons=seasons,
        season_dirs=season_dirs,
        paths=tuple(written),
        status=status,
        nights_written=nights_written,
    )


def _season_reports(out: Path, fresh: Mapping[str, dict[str, Any]]) -> list[Mapping[str, Any]]:
    """Season reports for the index: those just written plus earlier ones in ``out``."""
    reps: dict[str, Mapping[str, Any]] = {}
    for path in sorted(out.glob(f"*/{REPORT_FILES['json']}")):
        rep = _read_json(path)  # not ours or half-written by someone else: left out
        if content.is_season_report(rep, path.parent.name):
            reps[rep["season"]] = rep
    reps.update(fresh)
    return [reps[s] for s in sorted(reps, key=season_key)]


def rerender(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Render every report page and the index again from the ``report.json`` files alone.

    No scores are read: a reports folder copied elsewhere can be re-rendered (after a change of
    the page layout, say). Returns the pages written, the index last.
    """
    out = Path(out_dir)
    pages = []
    for path in sorted(
        [*out.glob(f"*/{REPORT_FILES['json']}"), *out.glob(f"*/nights/*/{REPORT_FILES['json']}")]
    ):
        rep = _read_json(path)
        if not (isinstance(rep, dict) and rep.get("schema") == content.SCHEMA_ID):
            continue
        page = path.parent / (rep.get("files") or REPORT_FILES)["html"]
        write_bytes_atomic(page, html.report_html(rep))
        pages.append(page)
    index = out / "index.html"
    write_bytes_atomic(index, html.index_html(_season_reports(out, {})))
    return [*pages, index]
