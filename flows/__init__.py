"""Thin Prefect 3 flows around the ``s2v_batch`` library: :mod:`s2v_flows.nightly` (one night:
ingest, score, report), :mod:`s2v_flows.backfill` (every night under a raw root, skipping complete
ones) and :mod:`s2v_flows.demo`. The library never imports Prefect; these modules do, and only they.
"""

from __future__ import annotations

import os

# Prefect's local ephemeral server starts on the first flow run of a process; its default start-up
# limit (20 s) is too tight on a small, busy machine where the first start also migrates the
# database. Set before Prefect is imported (it reads its settings once); an explicit value wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The local server would otherwise send usage analytics out: a laptop run talks to no one.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
