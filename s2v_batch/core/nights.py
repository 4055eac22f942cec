"""The observing-night calendar: nights are named by the local date of their evening.

A night runs from local noon to local noon at the observatory, so the 09:00 run of 2 September
(the scheduled nightly run, the morning after) processes night ``20130901``. Each survey's nights
follow its observatory's clock (:data:`SURVEY_TZ`): DES at CTIO and Rubin at Cerro Pachon
(America/Santiago), ZTF at Palomar (America/Los_Angeles). An alert's night comes from its
detection time (:func:`night_of_jd`, :func:`night_of_mjd`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from s2v_batch.core.conventions import is_night, is_season

#: DES observes with DECam at CTIO, Chile: nights follow its local time.
OBSERVATORY_TZ = "America/Santiago"
#: Each survey's observatory clock: CTIO (DES), Palomar (ZTF), Cerro Pachon (Rubin).
SURVEY_TZ = {"des": OBSERVATORY_TZ, "ztf": "America/Los_Angeles", "rubin": "America/Santiago"}
#: Julian date of the MJD epoch, and TAI - UTC since 2017 (Rubin's times are TAI).
MJD_JD_OFFSET = 2400000.5
TAI_MINUS_UTC_S = 37.0
_MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.UTC)
_NIGHT_WORDS = {"last", "last-night", "last_night", "yesterday"}


class NightError(ValueError):
    """A night, season or timezone that cannot be used."""


def last_night(when: dt.datetime, tz: str = OBSERVATORY_TZ) -> int:
    """The observing night that ``when`` falls in or most recently followed, as ``YYYYMMDD``.

    A night is named by the local date of its evening and runs from noon to noon, so a run at
    09:00 local time processes the night that began the evening before.

    Parameters
    ----------
    when : datetime.datetime
        A timezone-aware time (a naive one is taken as UTC).
    tz : str
        The observatory's IANA timezone.

    Returns
    -------
    int
    """
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise NightError(
            f"unknown timezone {tz!r} (expected an IANA name such as {OBSERVATORY_TZ})"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    local = when.astimezone(zone) - dt.timedelta(hours=12)
    return int(local.strftime("%Y%m%d"))


def night_of_mjd(mjd: float, tz: str, *, tai: bool = False) -> int:
    """The observing night (local evening date, ``YYYYMMDD``) of a time given as an MJD.

    Parameters
    ----------
    mjd : float
        Modified Julian date (UTC; TAI when ``tai``, as Rubin's ``midpointMjdTai``).
    tz : str
        The observatory's IANA timezone (:data:`SURVEY_TZ`).
    tai : bool
        The time is TAI: 37 s are taken off (it matters only within 37 s of local noon).

    Raises
    ------
    NightError
        A time that is not a finite number, or out of the calendar's range.
    """
    try:
        value = float(mjd)
        if tai:
            value -= TAI_MINUS_UTC_S / 86400.0
        when = _MJD_EPOCH + dt.timedelta(days=value)
    except (TypeError, ValueError, OverflowError):
        raise NightError(f"not a usable detection time: MJD {mjd!r}") from None
    night = last_night(when, tz)
    if not is_night(str(night)):
        raise NightError(f"detection time MJD {mjd!r} is outside 1900-2099")
    return night


def night_of_jd(jd: float, tz: str) -> int:
    """The observing night (local evening date) of a Julian date (UTC), as ZTF's ``jd``."""
    try:
        return night_of_mjd(float(jd) - MJD_JD_OFFSET, tz)
    except (TypeError, ValueError):
        raise NightError(f"not a usable detection time: JD {jd!r}") from None


def shift_night(night: int, days: int) -> int:
    """The night ``days`` after (or before, when negative) ``night``."""
    d = dt.datetime.strptime(str(int(night)), "%Y%m%d") + dt.timedelta(days=days)
    return int(d.strftime("%Y%m%d"))


def resolve_night(
    night: int | str | None, tz: str = OBSERVATORY_TZ, when: dt.datetime | None = None
) -> int:
    """A validated ``YYYYMMDD`` night; ``None`` or ``"last"``: :func:`last_night` of ``when``
    (default now; a scheduled run passes its scheduled time).

    Raises
    ------
    NightError
        For anything else than a plausible ``YYYYMMDD`` date.
    """
    if night is None or (isinstance(night, str) and night.strip().lower() in _NIGHT_WORDS):
        return last_night(when or dt.datetime.now(dt.UTC), tz)
    text = str(night).strip()
    if isinstance(night, bool) or not is_night(text):
        raise NightError(f"night must be a YYYYMMDD date or 'last', got {night!r}")
    return int(text)


def check_selection(
    seasons: Iterable[str] | None, nights: Iterable[int | str] | None
) -> tuple[list[str] | None, list[int] | None]:
    """Validated, sorted season and night selections (None: all)."""
    sel_s = None if seasons is None else sorted({str(s) for s in seasons})
    for s in sel_s or []:
        if not is_season(s):
            raise NightError(
                f"season must look like SV, Y1 ... Y6, ZTF2024 or RUBIN2026, got {s!r}"
            )
    sel_n = None if nights is None else sorted({resolve_night(n) for n in nights})
    return sel_s, sel_n
