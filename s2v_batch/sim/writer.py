"""Writing simulated stamps in the survey's raw layouts: loose gif/fits files and tar archives.

- :class:`NightWriter`: one night's stamps as ``ccd<NN>/{srch,temp,diff}<ID>.{gif,fits}`` files,
  or streamed into ``stamps_<KKK>.tar`` archives (members ``stamps_<KKK>/...``).
- :func:`pack_night_as_tar`: turn a night written as loose files into tar archives afterwards,
  one archive per folder (``ccd07/`` becomes ``ccd07.tar`` with members ``ccd07/...``): the
  layout the survey distributes and the ingest reads without unpacking.

Archives are written under a temporary name and renamed when complete; their member metadata
(time stamp = the night, owner, mode) is fixed, so the same stamps give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

from s2v_batch.core.conventions import CHANNELS, is_night
from s2v_batch.sim.encoders import FILL_1E30, encode_gifs, fits_assemble, fits_card, scale_u8
from s2v_batch.sim.survey import DES, SimulationError

__all__ = ["NightWriter", "pack_night_as_tar"]


def _night_mtime(night: int | str) -> int:
    """Midnight UTC of the night ``YYYYMMDD`` as a Unix time: the tar members' time stamp."""
    d = _dt.datetime.strptime(str(night), "%Y%m%d").replace(tzinfo=_dt.UTC)
    return int(d.timestamp())


class _Tar:
    """A tar archive written under a temporary name; :meth:`close` renames it into place."""

    def __init__(self, path: Path, mtime: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.mtime = mtime
        self.tf = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o644
        info.uname = info.gname = "des"
        self.tf.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tf.close()
        os.replace(self.tmp, self.path)


def pack_night_as_tar(night_dir: str | os.PathLike[str]) -> list[Path]:
    """Replace each folder of loose stamp files in a night by one tar archive of them.

    ``<night>/ccd07/diff123.gif`` becomes the member ``ccd07/diff123.gif`` of ``<night>/ccd07.tar``
    (plain, uncompressed): the layout the survey distributes and ingest reads without unpacking.
    Each archive is complete before its folder is removed; members are sorted by name and carry
    fixed metadata (the night's date when the folder is named ``YYYYMMDD``), so packing the same
    files gives the same bytes.

    Parameters
    ----------
    night_dir : path
        A night folder (``RAW/<season>/<YYYYMMDD>``) holding folders of stamp files.

    Returns
    -------
    list of pathlib.Path
        The archives written, in name order.

    Raises
    ------
    SimulationError
        ``night_dir`` is not a folder, or one of its folders holds a folder.
    """
    night_dir = Path(night_dir)
    if not night_dir.is_dir():
        raise SimulationError(f"cannot pack {night_dir}: not a folder")
    mtime = _night_mtime(night_dir.name) if is_night(night_dir.name) else 0
    subs = sorted(p for p in night_dir.iterdir() if p.is_dir())
    for sub in subs:  # check everything before changing anything
        nested = [p.name for p in sub.iterdir() if not p.is_file()]
        if nested:
            raise SimulationError(f"cannot pack {sub}: it holds non-file entries {nested[:3]}")
    archives = []
    for sub in subs:
        tar = _Tar(night_dir / f"{sub.name}.tar", mtime)
        try:
            for f in sorted(sub.iterdir()):
                tar.add(f"{sub.name}/{f.name}", f.read_bytes())
        except BaseException:
            tar.tf.close()
            tar.tmp.unlink(missing_ok=True)
            raise
        tar.close()
        shutil.rmtree(sub)
        archives.append(tar.path)
    return archives


def _write_file(path: Path, data: bytes) -> None:
    # os.open/os.write: no Python buffer object per tiny file (~15% faster).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class NightWriter:
    """Writes the stamps of one night: loose files under ccd folders, or tar archives.

    Parameters
    ----------
    night_dir : pathlib.Path
        ``RAW/<season>/<YYYYMMDD>`` (created).
    night : int
        The night, ``YYYYMMDD``.
    fmt : {"gif", "fits", "tar"}
    member_fmt : {"gif", "fits"}
        Format of the tar members (fmt "tar").
    per_archive : int
        Stamps per tar archive.
    """

    def __init__(self, night_dir: Path, night: int, fmt: str, member_fmt: str, per_archive: int):
        self.dir = night_dir
        self.fmt = fmt
        self.ext = member_fmt if fmt == "tar" else fmt
        self.per_archive = per_archive
        self.mtime = _night_mtime(night)
        self.tar: _Tar | None = None
        self.stem = ""
        self.in_archive = 0
        self.n_archives = 0
        self.files = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._made: set[int] = set()

    def _channel_bytes(self, batch, ids, ccd, expnum, mjd, season):
        """Yield ``(stamp index, channel, bytes)`` for the whole batch."""
        pix = batch.pixels
        m = pix.shape[0]
        if self.ext == "gif":
            gifs = [encode_gifs(scale_u8(pix[..., c], ch)) for c, ch in enumerate(CHANNELS)]
            for i in range(m):
                for c, ch in enumerate(CHANNELS):
                    yield i, ch, gifs[c][i]
            return
        feats = batch.features
        band = feats["BAND"].to_numpy()
        fwhm = feats["FWHM"].to_numpy()
        skysig = feats["SKYSIG"].to_numpy()
        gain = feats["GAIN"].to_numpy()
        zp = feats["ZP"].to_numpy()
        any_mask = batch.masked.any(axis=(1, 2))
        scale = DES.pixel_scale
        common = b"".join(
            fits_card(k, v)
            for k, v in {
                "TELESCOP": DES.telescope,
                "INSTRUME": DES.instrument,
                "MJD-OBS": float(mjd),
                "PIXSCAL1": scale,
                "PIXSCAL2": scale,
                "SEASON": season,
                "SIMULATD": True,
            }.items()
        )
        chan_cards = {ch: fits_card("STAMPTYP", ch, "srch, temp or diff") for ch in CHANNELS}
        for i in range(m):
            stamp = pix[i]
            if any_mask[i] and ids[i] % 2 == 0:
                # Half the masked stamps use the 1e-30 fill instead of NaN (both occur in DES).
                stamp = np.where(batch.masked[i][..., None], FILL_1E30, stamp)
            own = {
                "OBJECT": str(int(ids[i])),
                "BAND": str(band[i]),
                "FILTER": f"{band[i]} DECam SDSS c0001",
                "CCDNUM": int(ccd[i]),
                "EXPNUM": int(expnum[i]),
                "GAIN": round(float(gain[i]), 4),
                "SKYSIG": round(float(skysig[i]), 4),
                "FWHM": round(float(fwhm[i]) / scale, 4),
                "SEEING": round(float(fwhm[i]), 4),
                "MAGZP": round(float(zp[i]), 4),
            }
            cards = b"".join(fits_card(k, v) for k, v in own.items()) + common
            for c, ch in enumerate(CHANNELS):
                yield i, ch, fits_assemble(stamp[..., c], cards + chan_cards[ch])

    def write(self, batch, ids, ccd, expnum, mjd: float, season: str) -> None:
        """Write a :class:`~s2v_batch.sim.simulator.SimulatedBatch` with its IDs, CCDs, exposures."""
        for i, ch, data in self._channel_bytes(batch, ids, ccd, expnum, mjd, season):
            name = f"{ch}{int(ids[i])}.{self.ext}"
            if self.fmt == "tar":
                self._add_member(name, data, last=ch == CHANNELS[-1])
            else:
                sub = self.dir / f"ccd{int(ccd[i]):02d}"
                if int(ccd[i]) not in self._made:
                    sub.mkdir(exist_ok=True)
                    self._made.add(int(ccd[i]))
                _write_file(sub / name, data)
                self.files += 1

    def _add_member(self, name: str, data: bytes, *, last: bool) -> None:
        if self.tar is None:
            self.stem = f"stamps_{self.n_archives:03d}"
            self.tar = _Tar(self.dir / f"{self.stem}.tar", self.mtime)
        self.tar.add(f"{self.stem}/{name}", data)
        if last:
            self.in_archive += 1
            if self.in_archive >= self.per_archive:
                self._finish_tar()

    def _finish_tar(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
            self.n_archives += 1
            self.files += 1
            self.in_archive = 0

    def close(self) -> int:
        """Finish the open archive, return the number of files written."""
        self._finish_tar()
        return self.files
