"""Checks a scoring run makes before it starts: which shipped model fits the nights (when none is
named), and whether the nights fit the model and the scores root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s2v_batch.core.conventions import STAMP_SIZE, survey_of_season
from s2v_batch.model.shipped import shipped_model_for
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink


def model_for_nights(refs: list[zstore.NightRef]) -> Path:
    """The shipped model for these nights: the one whose card names their survey and stamp size.

    Raises
    ------
    ValueError
        When the nights mix surveys or stamp sizes (one model cannot take them all: select one
        with ``--season`` or give ``--model``), or no shipped model matches
        (``ModelArtifactError``).
    """
    kinds = set()
    for r in refs:
        size = zstore.read_attrs(r.path).get("stamp_size")
        kinds.add((survey_of_season(r.season), int(size) if size is not None else STAMP_SIZE))
    if len(kinds) > 1:
        what = ", ".join(f"{s} {n}x{n}" for s, n in sorted(kinds))
        raise ValueError(
            f"the selected nights hold stamps of several surveys or sizes ({what}) and no model "
            "was named: score one survey at a time (select it with --season) or give --model"
        )
    ((survey, size),) = kinds
    return shipped_model_for(survey, size)


def nights_problem(
    refs: list[zstore.NightRef], scores_root: str | Path, card: Any, model_path: Path
) -> str | None:
    """Why these nights cannot be scored into ``scores_root`` with this model, or None.

    - A scores root holds the nights of one survey: their parts share one schema (an alert
      survey's scores carry its alert fields).
    - The model takes the stamps of these nights (ZTF's are 63x63, DES's 51x51).
    """
    new = {survey_of_season(r.season) for r in refs}
    old = sink.surveys_of(scores_root) if Path(scores_root).is_dir() else set()
    if len(new | old) > 1:
        held = f" (it holds {', '.join(sorted(old))} nights)" if old else ""
        return (
            f"one scores root holds the nights of one survey: {', '.join(sorted(new | old))} "
            f"nights under {scores_root}{held}; score each survey into its own root "
            "(select with --season)"
        )
    want = tuple(card.input_shape[:2])
    for r in refs:
        size = zstore.read_attrs(r.path).get("stamp_size")
        if size is not None and (int(size), int(size)) != want:
            return (
                f"model {card.name}-{card.version} ({Path(model_path).name}) takes "
                f"{want[0]}x{want[1]} stamps; {r.season}/{r.night} holds {size}x{size} stamps: "
                "give a model of that input with --model"
            )
    return None


def survey_mismatch(refs: list[zstore.NightRef], card: Any) -> str | None:
    """A warning when the model was trained on another survey's stamps than these nights'
    (the run goes on: the user named the model; the rows' model identity tells which it was)."""
    model_survey = str(getattr(card, "survey", "des") or "des").lower()
    others = sorted({survey_of_season(r.season) for r in refs} - {model_survey})
    if not others:
        return None
    return (
        f"model {card.name}-{card.version} was trained on {model_survey.upper()} stamps; these "
        f"nights are {', '.join(o.upper() for o in others)}: its scores and threshold are not "
        "validated for them"
    )
