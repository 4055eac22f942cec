"""A shipped model's bfloat16 threshold, recomputed without retraining (``s2v threshold``).

``s2v train`` writes a card's float32 ``threshold`` and its ``thresholds["bfloat16"]`` together.
A card written before precisions has the first only; this module rebuilds the card's own
validation stamps and chooses the bfloat16 threshold on them for the card's target recall. The
validation stamps are the card's recorded stores when they are still on disk; for a simulated
model they are simulated again from the recipe its card records (``training_data``: the nights
of ``stores``, the counts, format and seed of ``description``), ingested, and split by the same
``stamp_id`` hash. The rebuild is checked against the card before anything is written: the same
number of validation stamps, reals and artifacts, and float32's threshold found again.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2v_batch.core.config import IngestConfig
from s2v_batch.core.fsutil import write_bytes_atomic
from s2v_batch.model.artifact import ModelCard, load_artifact, load_card
from s2v_batch.pipeline.cluster import open_client

__all__ = ["ThresholdError", "ThresholdResult", "recipe_of", "recompute_thresholds"]

#: How far float32's recomputed threshold may sit from the card's: the card's came from the
#: model before some inference rewrites (the fused normalisation moves scores by up to ~1e-4).
FLOAT32_AGREEMENT = 2e-3
_DES = re.compile(
    r"\b(?P<season>Y\d|SV) (?P<nights>\d+)x(?P<n>\d+) (?P<fmt>gif|fits|tar) seed (?P<seed>\d+)"
)
_ALERTS = re.compile(
    r"(?P<nights>\d+) nights x (?P<n>\d+)(?: alerts)?, (?P<fmt>\w+)(?: format)?, seed (?P<seed>\d+)"
)
_FRACTION = re.compile(r"real fraction (?P<f>[0-9.]+)")
_STORE = re.compile(r"(?P<season>[A-Za-z0-9_.-]+)/(?P<night>\d{8})\.zarr$")


class ThresholdError(ValueError):
    """The validation stamps of a card cannot be found or rebuilt as the card recorded them."""


@dataclass
class ThresholdResult:
    """What :func:`recompute_thresholds` found (and wrote, unless ``dry_run``)."""

    card_path: Path
    float32: float
    float32_card: float
    bfloat16: float
    n_validation: int
    source: str
    written: bool

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"threshold: {self.card_path.name}: bfloat16 {self.bfloat16:.6g} (float32 "
            f"{self.float32_card:.6g}, recomputed {self.float32:.6g}) on {self.n_validation} "
            f"validation stamps ({self.source}); "
            + ("card updated" if self.written else "card not written (--dry-run)")
        )


def recipe_of(card: ModelCard) -> list[dict[str, Any]]:
    """The simulator calls that made a simulated model's training nights, from its card.

    Returns
    -------
    list of dict
        ``survey``, ``season``, ``first_night``, ``nights``, ``n`` (stamps a night), ``fmt``,
        ``seed``, ``real_fraction``: one a season.

    Raises
    ------
    ThresholdError
        When the card is not of simulated data or its recipe cannot be read.
    """
    data = card.training_data or {}
    text = str(data.get("description", ""))
    if not data.get("simulated"):
        raise ThresholdError(f"{card.stem} was not trained on simulated stamps: give --store")
    firsts: dict[str, int] = {}
    for s in data.get("stores", []):
        m = _STORE.search(str(s))
        if m:
            night = int(m["night"])
            firsts[m["season"]] = min(firsts.get(m["season"], night), night)
    frac = _FRACTION.search(text)
    common = {"survey": card.survey, "real_fraction": float(frac["f"]) if frac else 0.5}
    found = [m.groupdict() for m in _DES.finditer(text)] if card.survey == "des" else []
    if card.survey != "des" and (m := _ALERTS.search(text)) and len(firsts) == 1:
        found = [{"season": next(iter(firsts)), **m.groupdict()}]
    out = []
    for f in found:
        if f["season"] not in firsts:
            break
        out.append({**common, **f, "first_night": firsts[f["season"]],
                    **{k: int(f[k]) for k in ("nights", "n", "seed")}})  # fmt: skip
    if not out or len(out) != len(firsts):
        raise ThresholdError(
            f"cannot read the simulation recipe of {card.stem} from its card "
            f"(description {text!r}, stores {data.get('stores')}): give --store"
        )
    return out


def _simulate(recipe: list[dict[str, Any]], raw: Path) -> None:
    # deferred: the simulator pulls in its renderers and encoders only when it runs
    from s2v_batch.sim.alerts import simulate_alerts
    from s2v_batch.sim.simulator import simulate

    for r in recipe:
        if r["survey"] == "des":
            simulate(raw, season=r["season"], nights=r["nights"], stamps_per_night=r["n"],
                     fmt=r["fmt"], seed=r["seed"], first_night=r["first_night"],
                     real_fraction=r["real_fraction"], progress=False)  # fmt: skip
        else:
            simulate_alerts(raw, survey=r["survey"], nights=r["nights"], alerts_per_night=r["n"],
                            fmt=r["fmt"], seed=r["seed"], first_night=r["first_night"],
                            real_fraction=r["real_fraction"])  # fmt: skip


def recompute_thresholds(
    card_path: str | Path,
    *,
    stores: list[str | Path] | None = None,
    workdir: str | Path | None = None,
    cluster: str | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> ThresholdResult:
    """Choose the bfloat16 threshold of a model on its own validation stamps, write it to the card.

    Parameters
    ----------
    card_path : path
        The model's ``.json`` card or ``.keras`` file.
    stores : list of path, optional
        Zarr stores (or night datasets) holding the model's training nights; default the card's
        recorded ``stores`` when they exist, else (simulated models) a rebuild from the recipe.
    workdir : path, optional
        Where a rebuild simulates and ingests (default: a temporary folder, removed after).
    cluster : str, optional
        Dask cluster spec for the ingest of a rebuild (default: a local cluster).
    dry_run : bool
        Compute and report only; the card is left as it is.
    log : callable
        Where progress lines go.

    Returns
    -------
    ThresholdResult

    Raises
    ------
    ThresholdError
        When the validation stamps cannot be found or do not match the card.
    """
    # deferred: training reads Zarr and runs the model (Keras)
    from s2v_batch.training.data import VALIDATION, LabelledNights, resolve_nights
    from s2v_batch.training.loop import validation_threshold

    card_path = Path(card_path).with_suffix(".json")
    card = load_card(card_path)
    recorded = [Path(s) for s in (card.training_data or {}).get("stores", [])]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if stores:
            paths, source = resolve_nights(stores), "the stores given"
        elif recorded and all(p.exists() for p in recorded):
            paths, source = resolve_nights(recorded), "the card's stores"
        else:
            paths, source = (
                _rebuild(card, Path(tmp), cluster, log),
                "rebuilt from the card's recipe",
            )
        nights = LabelledNights(paths)
        expected = (card.training_data or {}).get("n_stamps", {}).get("validation")
        got = nights.count(VALIDATION)
        if expected is not None and got != int(expected):
            raise ThresholdError(
                f"{got} validation stamps ({source}), but the card of {card.stem} records "
                f"{expected}: these are not its training nights"
            )
        model, card = load_artifact(card_path)
        log(f"threshold: scoring {got} validation stamps at float32 and bfloat16")
        f32, scores, labels, _ = validation_threshold(nights, model, card.target_recall)
        bf16 = validation_threshold(nights, model, card.target_recall, "bfloat16")[0]
    vm = card.validation_metrics or {}
    ok = (labels == 1).sum(), (labels == 0).sum()
    if "n_real" in vm and ok != (vm["n_real"], vm["n_artifact"]):
        raise ThresholdError(
            f"the validation stamps hold {ok[0]} reals and {ok[1]} artifacts, the card records "
            f"{vm['n_real']} and {vm['n_artifact']}: these are not its validation stamps"
        )
    if abs(f32 - card.threshold) > FLOAT32_AGREEMENT:
        raise ThresholdError(
            f"float32's threshold on these stamps is {f32:.6g}, the card's {card.threshold:.6g}: "
            "the model or its validation stamps are not the card's"
        )
    if not dry_run:
        # Only the new key is added: the rest of the card stays as written, byte for byte.
        data = json.loads(card_path.read_text())
        data["thresholds"] = {**data.get("thresholds", {}), "bfloat16": bf16}
        write_bytes_atomic(card_path, (json.dumps(data, indent=2) + "\n").encode())
        load_card(card_path)  # still a valid card
    return ThresholdResult(card_path, f32, card.threshold, bf16, got, source, not dry_run)


def _rebuild(card: ModelCard, tmp: Path, cluster: str | None, log: Callable[[str], None]):
    """Simulate and ingest the card's training nights under ``tmp``; their night datasets."""
    # deferred: the ingest driver and the cluster (Dask) only for a rebuild
    from s2v_batch.ingest.driver import ingest
    from s2v_batch.sim.simulator import LABELS_CSV
    from s2v_batch.training.data import resolve_nights

    recipe = recipe_of(card)
    raw, store = tmp / "raw", tmp / "store"
    log(f"threshold: simulating {card.stem}'s training nights again: {recipe}")
    _simulate(recipe, raw)
    labels = raw / LABELS_CSV
    size = card.input_shape[0]
    config = IngestConfig(stamp_size=size, ztf_stamp_size=size, rubin_stamp_size=size)
    with open_client(cluster) as client:
        ingest(raw, store, client, labels=labels if labels.is_file() else None, config=config,
               progress=False, log=log)  # fmt: skip
    return resolve_nights([store])
