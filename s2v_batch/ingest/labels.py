"""The autoscan labels/features CSV: ``#`` comment lines, then ``ID``, ``OBJECT_TYPE`` and features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s2v_batch.core.conventions import object_type_to_label


class LabelsError(ValueError):
    """A labels CSV that cannot be used."""


@dataclass(frozen=True)
class Labels:
    """Labels by stamp ID, in the project's convention (1 real, 0 artifact, -1 unknown)."""

    ids: np.ndarray  # int64, sorted, unique
    labels: np.ndarray  # int8, aligned with ids
    n_rows: int
    n_bad_rows: int

    def lookup(self, stamp_id: np.ndarray) -> np.ndarray:
        """Labels of ``stamp_id`` (-1 where the CSV has no row)."""
        stamp_id = np.asarray(stamp_id, dtype=np.int64)
        out = np.full(stamp_id.shape, -1, dtype=np.int8)
        if len(self.ids) == 0:
            return out
        pos = np.clip(np.searchsorted(self.ids, stamp_id), 0, len(self.ids) - 1)
        hit = self.ids[pos] == stamp_id
        out[hit] = self.labels[pos[hit]]
        return out

    def n_missing(self, seen_ids: np.ndarray) -> int:
        """CSV rows whose ID is not among ``seen_ids``."""
        return int((~np.isin(self.ids, np.asarray(seen_ids, dtype=np.int64))).sum())


def read_labels(path: str | Path) -> Labels:
    """Read the autoscan CSV and convert ``OBJECT_TYPE`` (0 real, 1 artifact) to labels (1, 0).

    Rows with a non-numeric ID are counted as bad; for an ID listed twice the first row wins.

    Raises
    ------
    LabelsError
        Missing file or missing ``ID``/``OBJECT_TYPE`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels CSV {path} does not exist")
    try:
        df = pd.read_csv(path, comment="#", usecols=lambda c: c in ("ID", "OBJECT_TYPE"))
    except (ValueError, pd.errors.ParserError) as exc:
        raise LabelsError(f"labels CSV {path} cannot be parsed: {exc}") from None
    missing = {"ID", "OBJECT_TYPE"} - set(df.columns)
    if missing:
        raise LabelsError(f"labels CSV {path} lacks column(s) {sorted(missing)}")
    ids = pd.to_numeric(df["ID"], errors="coerce")
    ot = pd.to_numeric(df["OBJECT_TYPE"], errors="coerce")
    good = ids.notna() & (ids == ids.round())
    frame = pd.DataFrame({"id": ids[good].astype("int64"), "label": object_type_to_label(ot[good])})
    frame = frame.drop_duplicates("id", keep="first").sort_values("id")
    return Labels(
        ids=frame["id"].to_numpy(),
        labels=frame["label"].to_numpy(np.int8),
        n_rows=len(df),
        n_bad_rows=int((~good).sum()),
    )
