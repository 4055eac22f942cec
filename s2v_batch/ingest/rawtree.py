"""Where the raw stamps are: discovery of stamp files and tar archives, grouped by night.

A stamp is three files ``srch<ID>``, ``temp<ID>``, ``diff<ID>`` (``.gif`` or ``.fits``), loose in a
folder tree or as members of ``.tar`` archives; season and night are the nearest path components
that look like them (``<anything>/<season>/<YYYYMMDD>/<anything>``). Discovery walks the tree
once and cuts each night into units of work, with a fingerprint of each night's raw inputs.
Alert packets (``.avro``, ``.parquet``, ``.tar.gz`` archives) met on the way are placed by
:mod:`s2v_batch.ingest.alerttree` (their night may come from an archive's name or from the alerts).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from s2v_batch.core import provenance
from s2v_batch.core.conventions import is_night, is_season
from s2v_batch.core.fsutil import raw_identity
from s2v_batch.ingest.alerttree import AlertInputs
from s2v_batch.ingest.units import CHANNEL_INDEX, STAMP_FILE_RE, Unit


@dataclass
class Discovery:
    """What a raw tree holds, by night."""

    units: dict[tuple[str, int], list[Unit]] = field(default_factory=dict)
    #: The raw fingerprint of each night: a digest of its files' relative paths, sizes and mtimes.
    raw_fingerprints: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Inputs that cannot be placed in a season/night: ``(path, reason)``.
    unplaced: list[tuple[str, str]] = field(default_factory=list)
    #: Night folders seen but not entered (``discover(nights=...)``): what else the tree holds.
    other_nights: set[int] = field(default_factory=set)
    n_files: int = 0
    n_archives: int = 0
    #: The raw root walked (what the markers of simulated data are looked for under).
    root: str = ""

    def provenance(self, key: tuple[str, int]) -> tuple[str, dict]:
        """A night's data provenance (``simulated``, ``survey`` or ``mixed``) and its evidence,
        from the simulator's markers (:mod:`s2v_batch.core.provenance`)."""
        files = [f for u in self.units[key] for f in u.files()]
        return provenance.Classifier(Path(self.root)).night(files)


def place(parts: Iterable[str]) -> tuple[str | None, int | None]:
    """Season and night from path components (the nearest matching ones win)."""
    season = night = None
    for p in parts:
        if is_season(p):
            season = p
        elif is_night(p):
            night = int(p)
    return season, night


def discover(
    raw: str | Path,
    *,
    unit_stamps: int = 2048,
    nights: Collection[int] | None = None,
    content: bool = False,
) -> Discovery:
    """Walk a raw tree once and group its stamps into units of work per night.

    Parameters
    ----------
    raw : path
        Root of the raw tree: loose ``srch/temp/diff<ID>.{gif,fits}`` files and/or ``.tar`` archives.
    unit_stamps : int
        Loose stamps per unit (a tar archive is one unit).
    nights : collection of int, optional
        Only these nights: folders of other nights are not entered (a nightly run on a raw root
        of many seasons lists only the season folders and its own night's files).
    content : bool
        Fingerprint each raw file by a hash of its bytes, not its size and mtime
        (``IngestConfig.fingerprint: content``; :func:`s2v_batch.core.fsutil.raw_identity`).

    Returns
    -------
    Discovery
    """
    raw = Path(raw)
    if not raw.exists():
        raise FileNotFoundError(f"raw input {raw} does not exist")
    disc = Discovery(root=str(raw))
    groups: dict[tuple[str, int], dict[tuple[str, str], list[str | None]]] = {}
    archives: dict[tuple[str, int], list[str]] = {}
    hashes: dict[tuple[str, int], hashlib._Hash] = {}
    # A folder that cannot be listed is an error, not an empty folder (os.walk's default).
    roots = [(str(raw.parent), [], [raw.name])] if raw.is_file() else os.walk(raw, onerror=_raise)

    alert_inputs = AlertInputs()
    for dirpath, dirnames, filenames in roots:
        keep = sorted(d for d in dirnames if not d.startswith("."))
        if nights is not None:
            skipped = {int(d) for d in keep if is_night(d) and int(d) not in nights}
            disc.other_nights |= skipped
            keep = [d for d in keep if not (is_night(d) and int(d) in skipped)]
        dirnames[:] = keep
        rel_parts = Path(os.path.relpath(dirpath, raw.parent)).parts
        season, night = place(rel_parts)
        for fname in sorted(filenames):
            if alert_inputs.take(dirpath, fname, rel_parts):
                continue
            is_tar = fname.lower().endswith(".tar")
            m = None if is_tar else STAMP_FILE_RE.match(fname)
            if not is_tar and m is None:
                continue
            path = os.path.join(dirpath, fname)
            if season is None or night is None:
                disc.unplaced.append((path, "no <season>/<YYYYMMDD> folder in the path"))
                continue
            if nights is not None and night not in nights:
                continue
            key = (season, night)
            hashes.setdefault(key, hashlib.sha256()).update(
                raw_identity(path, raw, content).encode()
            )
            if is_tar:
                archives.setdefault(key, []).append(path)
                disc.n_archives += 1
            else:
                slots = groups.setdefault(key, {}).setdefault((dirpath, m.group(2)), [None] * 3)
                ch = CHANNEL_INDEX[m.group(1).lower()]
                if slots[ch] is not None:
                    disc.unplaced.append((path, f"second {m.group(1)} file for the same stamp"))
                    continue
                slots[ch] = path
                disc.n_files += 1
    placed = alert_inputs.place(raw, unit_stamps=unit_stamps, nights=nights, content=content)
    disc.unplaced.extend(placed.unplaced)
    disc.other_nights |= placed.other_nights
    disc.n_files += placed.n_files
    disc.n_archives += placed.n_archives
    for key, lines in placed.lines.items():
        hashes.setdefault(key, hashlib.sha256()).update("".join(lines).encode())
    for key in sorted(set(groups) | set(archives) | set(placed.units)):
        units: list[Unit] = []
        for path in archives.get(key, []):
            units.append(Unit(key[0], key[1], len(units), archive=path))
        items = sorted(groups.get(key, {}).items(), key=lambda kv: (kv[0][0], _id_sort(kv[0][1])))
        for i in range(0, len(items), unit_stamps):
            chunk = tuple((idt, tuple(paths)) for (_, idt), paths in items[i : i + unit_stamps])
            units.append(Unit(key[0], key[1], len(units), stamps=chunk))
        for u in placed.units.get(key, []):
            units.append(replace(u, index=len(units)))
        disc.units[key] = units
        disc.raw_fingerprints[key] = hashes[key].hexdigest()
    return disc


def _raise(exc: OSError) -> None:
    raise exc


def _id_sort(text: str) -> tuple[int, int, str]:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
