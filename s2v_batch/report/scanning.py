"""The reports' "Scanning" section: the figures people's verdicts give (``s2v scan``).

Where a verdict database exists (``SCORES/_verdicts.sqlite`` by default, or the one named), each
night and season report gets, from the standing verdicts on its nights: verdicts by scanner, the
measured seconds a candidate (median, quartiles, per scanner), the model's FDR on the scanned
candidates (the share judged bogus by the consensus) with its 95% Wilson interval, the agreement
between scanners where a stamp has several verdicts (Fleiss' and Cohen's kappa), and the time
saved computed with the measured median seconds (:func:`s2v_batch.metrics.scanning.scanning_figures`).
Without verdicts the section says the scanning time is assumed and the FDR of unlabelled nights
unknown, as before.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s2v_batch.metrics.scanning import scanning_figures
from s2v_batch.store.verdicts import default_db, open_verdicts

__all__ = ["Verdicts", "read_verdicts", "section", "section_html"]


class Verdicts:
    """The standing verdicts of one database (a pandas DataFrame) and where they came from."""

    def __init__(self, frame: Any, source: str, identity: dict[str, int]) -> None:
        self.frame = frame
        self.source = source
        self.identity = identity

    def of(self, season: str, nights: Sequence[int]) -> Any:
        """The verdicts on the given nights of a season."""
        f = self.frame
        return f[(f["season"] == season) & f["night"].isin([int(n) for n in nights])]


def read_verdicts(scores_root: str | Path, db: str | None = None) -> Verdicts | None:
    """The verdicts of ``db`` (default: ``SCORES/_verdicts.sqlite`` when it exists), or None."""
    target = db if db is not None else default_db(scores_root)
    if db is None and not Path(target).is_file():
        return None
    if db is not None and not str(db).startswith(("postgresql://", "postgres://")):
        if not Path(str(db).removeprefix("sqlite:///")).is_file():
            raise FileNotFoundError(f"verdict database {db} does not exist")
    with open_verdicts(target) as vdb:
        every = vdb.read()
    standing = every[every["verdict"] != "undo"]
    standing = standing[~standing["id"].isin(every["undoes"].dropna().astype("int64"))]
    ident = {"rows": len(every), "last_id": int(every["id"].max()) if len(every) else 0}
    return Verdicts(standing, str(target), ident)


def section(
    verdicts: Verdicts | None,
    *,
    season: str,
    nights: Sequence[int],
    rep: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``scanning`` entry of a report's JSON."""
    assumed = float(rep["seconds_per_stamp"])
    v = verdicts.of(season, nights) if verdicts is not None else None
    if v is None or v.empty:
        where = f" in {verdicts.source}" if verdicts is not None else ""
        return {
            "measured": False,
            "database": verdicts.source if verdicts is not None else None,
            "note": (
                f"no scanners' verdicts on these stamps{where}: the scanning time assumes "
                f"{assumed:g} s a stamp, and the FDR of unlabelled nights is unknown "
                "(`s2v scan SCORES --store STORE` collects verdicts)"
            ),
        }
    figs = scanning_figures(
        v, n_stamps=int(rep["n_scored"]), n_candidates=int(rep["n_candidates"]),
        assumed_seconds=assumed,
    )  # fmt: skip
    return {"measured": True, "database": verdicts.source, **figs}


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "&mdash;"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(f"{x:,}" if isinstance(x, int) else str(x))


def section_html(rep: Mapping[str, Any]) -> str:
    """The "Scanning" section of a report page (empty for reports written before it existed)."""
    sc = rep.get("scanning")
    if not sc:
        return ""
    out = ["<h2>Scanning</h2>"]
    if not sc["measured"]:
        return out[0] + f"<p>{html.escape(sc['note'])}</p>"
    s, ag, ts = sc["seconds"], sc["agreement"], sc["time_saved"]
    out.append(
        f"<p>{sc['n_verdicts']:,} standing verdicts by {sc['n_scanners']} scanner(s) "
        f"(from {html.escape(sc['database'])}); {sc['n_scanned']:,} candidates have a real/bogus "
        f"consensus.</p>"
    )
    rows = [
        ("model's FDR on the scanned candidates (judged bogus)",
         f"{_f(sc['fdr'])} (95% Wilson interval {_f(sc['fdr_low'])} &ndash; {_f(sc['fdr_high'])};"
         f" {sc['n_judged_bogus']:,} bogus of {sc['n_scanned']:,})"),
        ("seconds a candidate: median (quartiles)",
         f"{_f(s['median'], 2)} ({_f(s['q1'], 2)} &ndash; {_f(s['q3'], 2)}), {s['n']:,} verdicts"),
        ("agreement: Fleiss' kappa", f"{_f(ag['fleiss_kappa'])} on {ag['n_stamps_multi']:,} "
         "stamps with 2 or more verdicts"),
    ]  # fmt: skip
    if ag.get("cohen_pair"):
        a, b, n = ag["cohen_pair"]
        rows.append((f"agreement: Cohen's kappa, {html.escape(a)} and {html.escape(b)}",
                     f"{_f(ag['cohen_kappa'])} on {n:,} common stamps"))  # fmt: skip
    rows += [
        (f"hours saved ({html.escape(sc['seconds_source'])})", _f(ts["hours_saved"], 2)),
        ("hours to scan the candidates (measured seconds)", _f(ts["hours_candidates"], 2)),
        ("working days saved (8 h)", _f(ts["working_days_saved"], 2)),
    ]
    out.append(
        "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    )
    head = "<tr><th>scanner</th><th>real</th><th>bogus</th><th>skip</th><th>median s</th><th>quartiles s</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{d['real']:,}</td><td>{d['bogus']:,}</td>"
        f"<td>{d['skip']:,}</td><td>{_f(d['seconds']['median'], 2)}</td>"
        f"<td>{_f(d['seconds']['q1'], 2)} &ndash; {_f(d['seconds']['q3'], 2)}</td></tr>"
        for name, d in sc["by_scanner"].items()
    )
    out.append(f"<table>{head}{body}</table>")
    return "".join(out)
