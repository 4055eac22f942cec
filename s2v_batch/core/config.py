"""Typed configuration, validated once at the boundary and passed down as the part each step needs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from s2v_batch.core import resources
from s2v_batch.core.conventions import STAMP_SIZE
from s2v_batch.core.encoding import EncodingError, keepbits


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


def check_positive(name: str, value: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _seconds(name: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and 0 <= value < float("inf")):
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")


@dataclass(frozen=True)
class IngestConfig:
    """How ingest cuts and stores work.

    stamp_size: stamp edge in pixels (51 for DES); ztf_stamp_size, rubin_stamp_size: the alert
    surveys' (see ``size_for``). unit_stamps: loose stamps (or alert files) per decode task,
    and alerts (archive members) per staged part of a nightly alert archive (a killed ingest
    resumes after the last whole part).
    shard_stamps: stamps per Zarr shard (one write task each). chunk_stamps: stamps per inner chunk.
    lock_wait: seconds to wait for another writer of the same season. float_encoding: how float
    (FITS) stamps are stored, ``lossless`` or ``bitround-K`` (:mod:`s2v_batch.core.encoding`; uint8
    stamps are always lossless). edge_cutouts: ``pad`` (default) or ``quarantine`` ZTF cut-outs
    cut short by a CCD edge (see ``edge_for``).
    """

    stamp_size: int = STAMP_SIZE
    #: Stamp edge of ZTF alerts (their cut-outs are 63x63; others are quarantined).
    ztf_stamp_size: int = 63
    #: Stamp edge Rubin cut-outs (of varying size) are centre-cropped or padded to.
    rubin_stamp_size: int = 63
    unit_stamps: int = 2048
    shard_stamps: int = 4096
    chunk_stamps: int = 256
    #: Seconds to wait while another process ingests the same season (then StoreBusyError).
    lock_wait: float = 3600.0
    float_encoding: str = "lossless"
    #: ZTF cut-outs smaller than 63x63 (cut short by a CCD edge): ``pad`` them back on the
    #: edge's side (the pad counted in masked_fraction) and score them, or ``quarantine`` them.
    edge_cutouts: str = "pad"
    #: What a night's raw fingerprint reads of each raw file: ``stat`` (its path relative to the
    #: raw root, size and mtime: one stat, and a tree copied with ``cp -a`` keeps it) or
    #: ``content`` (its path and a sha256 of its bytes: every file read, and a copy that does not
    #: keep mtimes keeps it too).
    fingerprint: str = "stat"

    def __post_init__(self) -> None:
        try:
            keepbits(self.float_encoding)
        except EncodingError as exc:
            raise ConfigError(f"float_encoding: {exc}") from None
        if self.fingerprint not in ("stat", "content"):
            raise ConfigError(f"fingerprint must be stat or content, got {self.fingerprint!r}")
        if self.edge_cutouts not in ("pad", "quarantine"):
            raise ConfigError(f"edge_cutouts must be pad or quarantine, got {self.edge_cutouts!r}")
        for name in (
            "stamp_size",
            "ztf_stamp_size",
            "rubin_stamp_size",
            "unit_stamps",
            "shard_stamps",
            "chunk_stamps",
        ):
            check_positive(name, getattr(self, name))
        _seconds("lock_wait", self.lock_wait)
        if self.shard_stamps % self.chunk_stamps:
            raise ConfigError("shard_stamps must be a multiple of chunk_stamps")

    def size_for(self, survey: str) -> int:
        """The stamp edge of a survey's stamps: ``des`` (``stamp_size``), ``ztf``, ``rubin``."""
        return {"ztf": self.ztf_stamp_size, "rubin": self.rubin_stamp_size}.get(
            survey, self.stamp_size
        )

    def edge_for(self, survey: str) -> str | None:
        """How a survey's edge cut-outs are handled (``edge_cutouts``); None for DES, whose
        stamps have no edge cut-outs (its stored nights' fingerprints stay as they were)."""
        return None if survey == "des" else self.edge_cutouts


#: The precisions a night can be scored at (``ScoreConfig.precision``, ``s2v score --precision``):
#: ``auto`` becomes ``bfloat16`` where the hardware computes it natively, else ``float32``
#: (:func:`s2v_batch.model.precision.resolve_precision`).
PRECISIONS = ("float32", "bfloat16", "auto")


@dataclass(frozen=True)
class ScoreConfig:
    """How scoring runs: model batch size, threshold override, precision (``float32``,
    ``bfloat16`` or ``auto``; see :data:`PRECISIONS`), stamps per task (one Parquet part each:
    small enough that every worker gets several), and seconds to wait for another writer of the
    same night. ``mixed_precision`` is the old name of ``precision: bfloat16`` (True) and
    ``float32`` (False), still read; giving both is refused."""

    batch_size: int = 512
    threshold: float | None = None
    precision: str = "float32"
    mixed_precision: bool | None = None
    part_stamps: int = 2048
    #: Seconds to wait while another process scores the same night (then StoreBusyError).
    lock_wait: float = 3600.0

    def __post_init__(self) -> None:
        if self.mixed_precision is not None:
            if not isinstance(self.mixed_precision, bool):
                raise ConfigError(
                    f"mixed_precision must be true or false, got {self.mixed_precision!r}; "
                    "it is the old name of precision (float32, bfloat16, auto)"
                )
            old = "bfloat16" if self.mixed_precision else "float32"
            if self.precision not in ("float32", old):
                raise ConfigError(
                    f"mixed_precision: {str(self.mixed_precision).lower()} contradicts precision: "
                    f"{self.precision}; give precision only (float32, bfloat16, auto)"
                )
            # The old name is translated once, here: everything downstream reads precision.
            object.__setattr__(self, "precision", old)
            object.__setattr__(self, "mixed_precision", None)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        check_positive("batch_size", self.batch_size)
        check_positive("part_stamps", self.part_stamps)
        _seconds("lock_wait", self.lock_wait)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be within [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class ReportConfig:
    """Report settings.

    seconds_per_stamp: seconds a human needs per stamp (DESIGN.md section 3).
    gallery_top, gallery_threshold, gallery_false_positives, gallery_false_negatives: stamps in
    each gallery of a season page (top candidates by score, candidates closest to the threshold,
    highest-scored false positives, lowest-scored false negatives); 0 turns a gallery off.
    night_gallery: stamps in each gallery of a night page. At most 400 stamps are drawn for a
    season page (they are read from the store, a few at a time).
    flag_mads: a night is flagged when its candidate fraction is outside the season's median
    +- this many MADs (MAD floored at the night's binomial noise).
    """

    seconds_per_stamp: float = 0.5
    gallery_top: int = 16
    gallery_threshold: int = 16
    gallery_false_positives: int = 16
    gallery_false_negatives: int = 16
    night_gallery: int = 4
    flag_mads: float = 5.0

    def __post_init__(self) -> None:
        if not self.seconds_per_stamp > 0:
            raise ConfigError("seconds_per_stamp must be > 0")
        sizes = self.gallery_sizes()
        for name, value in [*sizes.items(), ("night_gallery", self.night_gallery)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if sum(sizes.values()) > 400 or self.night_gallery > 100:
            raise ConfigError(
                "galleries are for looking at: at most 400 stamps on a season page "
                f"(got {sum(sizes.values())}) and 100 a gallery on a night page "
                f"(got {self.night_gallery})"
            )
        if not (isinstance(self.flag_mads, int | float) and self.flag_mads > 0):
            raise ConfigError(f"flag_mads must be a number > 0, got {self.flag_mads!r}")

    def gallery_sizes(self) -> dict[str, int]:
        """Stamps per season gallery, by gallery kind."""
        return {
            "gallery_top": self.gallery_top,
            "gallery_threshold": self.gallery_threshold,
            "gallery_false_positives": self.gallery_false_positives,
            "gallery_false_negatives": self.gallery_false_negatives,
        }


@dataclass(frozen=True)
class PipelineConfig:
    """A whole run's settings, as read from a YAML file (``s2v nightly --config``)."""

    ingest: IngestConfig = IngestConfig()
    score: ScoreConfig = ScoreConfig()
    report: ReportConfig = ReportConfig()

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> PipelineConfig:
        """Build from a mapping with optional ``ingest``, ``score`` and ``report`` sections."""
        data = data or {}
        unknown = set(data) - {"ingest", "score", "report"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}")
        parts = {}
        for name, typ in (
            ("ingest", IngestConfig),
            ("score", ScoreConfig),
            ("report", ReportConfig),
        ):
            section = data.get(name) or {}
            allowed = {f.name for f in fields(typ)}
            bad = set(section) - allowed
            if bad:
                raise ConfigError(
                    f"unknown key(s) in {name}: {sorted(bad)}; allowed: {sorted(allowed)}"
                )
            try:
                parts[name] = typ(**section)
            except TypeError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        return cls(**parts)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read and validate a YAML config: a file, or the name of a shipped config (``gpu``,
        ``gpu.yaml``, ``configs/gpu.yaml``); an existing file wins (see :mod:`s2v_batch.core.resources`).
        """
        try:
            path = resources.find(resources.PIPELINE_CONFIGS, path)
        except resources.ResourceNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        return cls.from_mapping(data)
