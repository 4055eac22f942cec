"""Human scanning time with and without the model (DESIGN.md section 3).

A human needs about 0.5 s a stamp (autoscan, space2vec); the model leaves only the candidates
(``score >= threshold``) to scan. The figures every report states come from :func:`time_saved`.
"""

from __future__ import annotations

import math

from s2v_batch.metrics.classification import MetricsError, is_integer, safe_ratio

__all__ = ["WORKING_DAY_HOURS", "time_saved"]

#: Hours in the working day of :func:`time_saved`.
WORKING_DAY_HOURS = 8.0


def time_saved(
    n_stamps: int,
    n_candidates: int,
    seconds_per_stamp: float = 0.5,
    n_false_positives: int | None = None,
) -> dict[str, float | None]:
    """Human scanning time with and without the model (DESIGN.md section 3).

    Parameters
    ----------
    n_stamps : int
        Stamps a human would scan without the model.
    n_candidates : int
        Stamps left to scan with it (``score >= threshold``).
    seconds_per_stamp : float
        Human time per stamp; 0.5 s as in autoscan and space2vec.
    n_false_positives : int, optional
        Candidates that are artifacts, when labels tell.

    Returns
    -------
    dict
        ``hours_all``, ``hours_candidates``, ``hours_saved``, ``working_days_saved`` (8 h days),
        ``reduction_factor`` (stamps / candidates; ``nan`` with no candidate), ``hours_wasted``
        (false positives x seconds; ``None`` when unknown) and ``seconds_per_stamp``.
    """
    for name, value in (("n_stamps", n_stamps), ("n_candidates", n_candidates)):
        if not is_integer(value) or value < 0:
            raise MetricsError(f"{name} must be an integer >= 0, got {value!r}")
    if n_candidates > n_stamps:
        raise MetricsError(f"n_candidates ({n_candidates}) exceeds n_stamps ({n_stamps})")
    sec = float(seconds_per_stamp)
    if not (math.isfinite(sec) and sec > 0):
        raise MetricsError(f"seconds_per_stamp must be a positive number, got {seconds_per_stamp}")
    hours_all = n_stamps * sec / 3600.0
    hours_cand = n_candidates * sec / 3600.0
    wasted: float | None = None
    if n_false_positives is not None:
        if not is_integer(n_false_positives) or not 0 <= n_false_positives <= n_candidates:
            raise MetricsError(
                f"n_false_positives must be an integer in [0, n_candidates={n_candidates}], "
                f"got {n_false_positives!r}"
            )
        wasted = n_false_positives * sec / 3600.0
    saved = hours_all - hours_cand
    return {
        "seconds_per_stamp": sec,
        "hours_all": hours_all,
        "hours_candidates": hours_cand,
        "hours_saved": saved,
        "working_days_saved": saved / WORKING_DAY_HOURS,
        "reduction_factor": safe_ratio(n_stamps, n_candidates),
        "hours_wasted": wasted,
    }
