"""Conventions fixed by DESIGN.md section 3: channels, labels, score direction, seasons, nights."""

from __future__ import annotations

import re

import numpy as np

#: Channel order everywhere: search, template, difference.
CHANNELS: tuple[str, str, str] = ("srch", "temp", "diff")
#: Default stamp edge in pixels (DES); other surveys use 63.
STAMP_SIZE = 51

LABEL_REAL = 1
LABEL_ARTIFACT = 0
LABEL_UNKNOWN = -1

#: DES seasons (``SV``, ``Y1`` ... ``Y6``): what the DES simulator writes.
SEASON_RE = re.compile(r"^(SV|Y[0-9]+)$")
#: Alert surveys' seasons: the survey's name and the year of the night (``ZTF2024``,
#: ``RUBIN2026``); the survey decides the stamp size and the alert fields kept.
ALERT_SEASON_RE = re.compile(r"^(ZTF|RUBIN)((?:19|20)[0-9]{2})$")
#: Any season name (what a ``<season>`` folder, a store folder and ``--season`` may be).
ANY_SEASON_RE = re.compile(r"^(SV|Y[0-9]+|(?:ZTF|RUBIN)(?:19|20)[0-9]{2})$")
#: The surveys s2v-batch reads, by the name commands use.
SURVEYS: tuple[str, str, str] = ("des", "ztf", "rubin")
NIGHT_RE = re.compile(r"^(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])$")


def object_type_to_label(object_type: np.ndarray) -> np.ndarray:
    """Convert autoscan ``OBJECT_TYPE`` codes to project labels.

    autoscan codes 0 = real, 1 = artifact; the project uses 1 = real, 0 = artifact,
    -1 = unknown. Anything else (missing, NaN, other codes) becomes -1.

    Parameters
    ----------
    object_type : numpy.ndarray
        The ``OBJECT_TYPE`` column, any numeric dtype (floats may hold NaN).

    Returns
    -------
    numpy.ndarray
        int8 labels.
    """
    ot = np.asarray(object_type, dtype="float64")
    out = np.full(ot.shape, LABEL_UNKNOWN, dtype=np.int8)
    out[ot == 0] = LABEL_REAL
    out[ot == 1] = LABEL_ARTIFACT
    return out


def label_to_object_type(label: np.ndarray) -> np.ndarray:
    """Inverse of :func:`object_type_to_label` for known labels (used by the simulator)."""
    lab = np.asarray(label)
    if np.any((lab != LABEL_REAL) & (lab != LABEL_ARTIFACT)):
        raise ValueError("only known labels (0 or 1) have an autoscan OBJECT_TYPE")
    return np.where(lab == LABEL_REAL, 0, 1).astype(np.int8)


def is_season(name: str) -> bool:
    """True when ``name`` is a season: DES ``SV``, ``Y1`` ..., or an alert survey's year
    (``ZTF2024``, ``RUBIN2026``)."""
    return bool(ANY_SEASON_RE.match(name))


def survey_of_season(season: str) -> str:
    """The survey a season belongs to: ``des``, ``ztf`` or ``rubin``.

    Raises
    ------
    ValueError
        For a name that is not a season.
    """
    m = ALERT_SEASON_RE.match(season)
    if m:
        return m.group(1).lower()
    if SEASON_RE.match(season):
        return "des"
    raise ValueError(f"{season!r} is not a season (SV, Y1 ..., ZTF2024, RUBIN2026 ...)")


def alert_season(survey: str, night: int) -> str:
    """The season of an alert survey's night: the survey's name and the night's year
    (``alert_season("ztf", 20240131) == "ZTF2024"``)."""
    if survey not in ("ztf", "rubin"):
        raise ValueError(f"not an alert survey: {survey!r}")
    return f"{survey.upper()}{int(night) // 10000}"


def is_night(name: str) -> bool:
    """True when ``name`` is a plausible ``YYYYMMDD`` night."""
    return bool(NIGHT_RE.match(name))
