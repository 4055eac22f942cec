"""Per-season and per-night reports (JSON, HTML, PNG) from the hive-partitioned Parquet scores.

One concern a module: :mod:`.tally` reads the scores (through :mod:`s2v_batch.store.scores`'s layout)
into exact counts and a streaming histogram, :mod:`.content` makes the JSON content,
:mod:`.plots` the PNGs, :mod:`.html` the pages (from the JSON alone) and :mod:`.write` writes
them, skipping reports whose scores have not changed.
"""

from s2v_batch.report.content import REPORT_FILES
from s2v_batch.report.tally import ReportError
from s2v_batch.report.write import ReportSummary, rerender, write_reports

__all__ = ["REPORT_FILES", "ReportError", "ReportSummary", "rerender", "write_reports"]
