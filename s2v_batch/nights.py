"""The observing-night calendar: nights are named by the local date of their evening.

A night runs from local noon to local noon at the observatory, so the 09:00 run of 2 September
(the scheduled nightly run, the morning after) processes night ``20130901``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .conventions import is_night, is_season

#: DES observes with DECam at CTIO, Chile: nights follow its local time.
OBSERVATORY_TZ = "America/Santiago"
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
            raise NightError(f"season must look like SV or Y1 ... Y6, got {s!r}")
    sel_n = None if nights is None else sorted({resolve_night(n) for n in nights})
    return sel_s, sel_n
