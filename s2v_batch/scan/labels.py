"""``s2v labels export``: the scanners' consensus as the autoscan labels CSV the ingest reads.

One row a stamp with a majority of standing real/bogus verdicts (ties and stamps with only skips
left out; :func:`s2v_batch.metrics.scanning.consensus`): ``ID``, ``OBJECT_TYPE`` (autoscan's
coding: 0 real, 1 artifact), then ``SEASON``, ``NIGHT``, ``N_VERDICTS`` (the real/bogus verdicts
the label rests on), ``N_REAL`` and ``N_BOGUS``. ``#`` lines first say where it came from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from s2v_batch.core.conventions import label_to_object_type
from s2v_batch.core.fsutil import write_bytes_atomic
from s2v_batch.metrics.scanning import consensus
from s2v_batch.store.verdicts import open_verdicts

__all__ = ["ExportSummary", "export_labels"]


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_labels` wrote."""

    out: Path
    n_labels: int
    n_real: int
    n_bogus: int
    n_verdicts: int
    n_left_out: int

    def line(self) -> str:
        """One line for the command's output."""
        return (
            f"labels export: {self.n_labels} labels ({self.n_real} real, {self.n_bogus} bogus) "
            f"from {self.n_verdicts} standing verdicts; {self.n_left_out} stamp(s) left out "
            f"(ties or skips only); wrote {self.out}"
        )


def export_labels(db: str | Path, out: str | Path, season: str | None = None) -> ExportSummary:
    """Write the consensus labels of a verdict database as an autoscan CSV.

    Parameters
    ----------
    db : str or path
        A SQLite file or a ``postgresql://`` URL.
    out : path
        The CSV to write (atomically).
    season : str, optional
        Only this season.

    Returns
    -------
    ExportSummary
    """
    if (
        not str(db).startswith(("postgresql://", "postgres://"))
        and not Path(str(db).removeprefix("sqlite:///")).is_file()
    ):
        raise FileNotFoundError(f"verdict database {db} does not exist")
    with open_verdicts(db) as vdb:
        v = vdb.read(season=season, standing=True)
    cons = consensus(v)
    n_stamps = v[["season", "stamp_id"]].drop_duplicates().shape[0] if len(v) else 0
    table = cons.rename(columns={"stamp_id": "ID", "season": "SEASON", "night": "NIGHT",
                                 "n_verdicts": "N_VERDICTS", "n_real": "N_REAL",
                                 "n_bogus": "N_BOGUS"})  # fmt: skip
    table["OBJECT_TYPE"] = label_to_object_type(cons["label"].to_numpy()).astype("int8")
    table = table[["ID", "OBJECT_TYPE", "SEASON", "NIGHT", "N_VERDICTS", "N_REAL", "N_BOGUS"]]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    head = (
        f"# s2v labels export of {db} at {now}\n"
        "# consensus of people's verdicts: the majority of standing real/bogus verdicts a stamp\n"
        "# OBJECT_TYPE as autoscan codes it: 0 real, 1 artifact\n"
    )
    out = Path(out)
    write_bytes_atomic(out, (head + table.to_csv(index=False)).encode())
    n_real = int((cons["label"] == 1).sum())
    return ExportSummary(out, len(cons), n_real, len(cons) - n_real, len(v), n_stamps - len(cons))
