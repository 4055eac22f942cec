"""Labels from people's verdicts, for training on stamps already in the store (``--verdicts``).

The verdict database (:mod:`s2v_batch.store.verdicts`) names stamps by season, night and
``stamp_id``; the consensus of each stamp's standing real/bogus verdicts
(:func:`s2v_batch.metrics.scanning.consensus`: the majority; ties and skips left out) becomes its
label, in place of what the store holds; the other stamps keep their stored labels (a night that
nobody labelled holds -1: there, only what people said is trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s2v_batch.metrics.scanning import consensus
from s2v_batch.store.verdicts import open_verdicts
from s2v_batch.training.data import TrainingError

__all__ = ["verdict_labels"]


def verdict_labels(
    db: str | Path, nights: Sequence[Path]
) -> tuple[list[Path], dict[Path, dict[int, int]], dict[str, Any]]:
    """The nights, the verdicts' labels by night and stamp_id, and the facts for the card.

    Parameters
    ----------
    db : str or path
        A SQLite file or a ``postgresql://`` URL.
    nights : sequence of path
        Night datasets, ``<store>/<season>/<night>.zarr``.

    Returns
    -------
    tuple
        ``(nights, relabel, facts)``: the nights as given; for those with consensus labels,
        ``{stamp_id: label}``; and ``facts`` (database, verdicts and labels used, per class).

    Raises
    ------
    TrainingError
        A database that does not exist, or no consensus label on a stamp of these nights.
    """
    if (
        not str(db).startswith(("postgresql://", "postgres://"))
        and not Path(str(db).removeprefix("sqlite:///")).is_file()
    ):
        raise TrainingError(f"verdict database {db} does not exist")
    with open_verdicts(db) as vdb:
        v = vdb.read(standing=True)
    cons = consensus(v)
    by_night: dict[tuple[str, int], Path] = {}
    for p in nights:
        if p.stem.isdigit():
            by_night[(p.parent.name, int(p.stem))] = Path(p)
    relabel: dict[Path, dict[int, int]] = {}
    n_verdicts = n_real = 0
    for row in cons.itertuples(index=False):
        path = by_night.get((str(row.season), int(row.night)))
        if path is None:
            continue
        relabel.setdefault(path, {})[int(row.stamp_id)] = int(row.label)
        n_verdicts += int(row.n_verdicts)
        n_real += int(row.label)
    n_labels = sum(len(m) for m in relabel.values())
    if not n_labels:
        raise TrainingError(
            f"no stamp of the {len(nights)} night(s) has a consensus verdict in {db} "
            f"({len(cons)} consensus labels there in all)"
        )
    facts = {
        "database": str(db),
        "n_verdicts": n_verdicts,
        "n_labels": n_labels,
        "n_real": n_real,
        "n_bogus": n_labels - n_real,
        "rule": "majority of standing real/bogus verdicts a stamp; ties and skips left out; "
        "they replace the stored labels of those stamps, the others keep theirs",
    }
    return list(nights), relabel, facts
