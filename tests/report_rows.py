"""Score rows for the report tests, written as the scores contract says (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The scores contract of docs/ARCHITECTURE.md ("Scores"), written out here on purpose: the
# report must read what the contract says, whoever writes it.
SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("score", pa.float32()),
        ("is_candidate", pa.bool_()),
        ("threshold", pa.float32()),
        ("label", pa.int8()),
        ("model_version", pa.string()),
        ("model_sha256", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
    ]
)
SHA = "5" * 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_night(
    rng: np.random.Generator,
    n: int,
    *,
    threshold: float,
    labelled: float,
    n_errors: int = 0,
    version: str = "1.0",
) -> dict[str, np.ndarray]:
    """Rows of one night: label-dependent scores, a share of unknown labels, some errors."""
    label = rng.integers(0, 2, n).astype(np.int8)
    score = np.clip(rng.beta(1 + 5 * label, 3), 0, 1).astype(np.float32)
    known = rng.random(n) < labelled
    error = np.full(n, None, dtype=object)
    error[rng.choice(n, n_errors, replace=False)] = "decode failed: truncated block"
    ok = np.array([e is None for e in error])
    return {
        "stamp_id": np.arange(n, dtype=np.int64) + rng.integers(0, 10**9),
        "score": score,
        "ok": ok,
        "is_candidate": (score >= np.float32(threshold)) & ok,
        "threshold": np.full(n, threshold, dtype=np.float32),
        "label": np.where(known, label, -1).astype(np.int8),
        "model_version": np.full(n, version, dtype=object),
        "error": error,
    }


def write_part(path: Path, rows: dict[str, np.ndarray], null_labels: bool = False) -> None:
    """Write rows as one part, scores null where there is an error, as the sink does."""
    n = rows["score"].size
    label = pa.array(rows["label"], pa.int8())
    if null_labels:  # unknown written as null, the other allowed spelling
        label = pa.array([None if v == -1 else int(v) for v in rows["label"]], pa.int8())
    table = pa.table(
        {
            "stamp_id": rows["stamp_id"],
            "score": pa.array(rows["score"], pa.float32(), mask=~rows["ok"]),
            "is_candidate": rows["is_candidate"],
            "threshold": rows["threshold"],
            "label": label,
            "model_version": pa.array(rows["model_version"], pa.string()),
            "model_sha256": pa.array([SHA] * n, pa.string()),
            "run_id": pa.array(["run-1"] * n, pa.string()),
            "scored_at": pa.array([datetime(2026, 11, 1, tzinfo=UTC)] * n, SCHEMA.field(8).type),
            "error": pa.array(rows["error"], pa.string()),
        },
        schema=SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def concat(*nights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in nights]) for k in nights[0]}
