"""Stamp galleries: which stamps to show, reading their pixels from the store, and the sprites.

While the scores are read, :class:`Picks` keeps, per gallery kind, the few rows that gallery
shows (bounded: the gallery size, whatever the season size). The pixels are then read from the
Zarr store by ``stamp_id``, a night at a time, stretched for display per channel (zscale for
``srch`` and ``temp``, symmetric about the background for ``diff``) and written as one PNG sprite
a report: a column of srch | temp | diff triplets at stored resolution, which the page shows
one triplet at a time, enlarged with square pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.conventions import LABEL_ARTIFACT, LABEL_REAL

# The stretch, the sprite and the pixels' reading are shared with the scanning page, a layer
# down; imported here under the names the reports (and their tests) have always used.
from s2v_batch.formats.display import GAP, STRETCH, sprite_png, stretch
from s2v_batch.store.pixels import read_pixels

__all__ = ["GAP", "KINDS", "SPRITE", "STRETCH", "Picks", "galleries", "read_pixels", "sprite_png",
           "stretch", "tiebreak"]  # fmt: skip

#: Gallery kinds, in page order: (kind, title, what it answers).
KINDS: tuple[tuple[str, str, str], ...] = (
    ("top", "Top candidates", "the candidates the model is surest are real"),
    ("threshold", "Candidates closest to the threshold", "the candidates it is least sure of"),
    (
        "false_positives",
        "False positives, highest scores",
        "labelled artifacts it is surest are real",
    ),
    (
        "false_negatives",
        "False negatives, lowest scores",
        "labelled reals it is surest are artifacts (missed)",
    ),
)
SPRITE = "gallery.png"


def tiebreak(stamp_id: np.ndarray) -> np.ndarray:
    """A deterministic scramble of stamp ids (Fibonacci hashing, modulo 2**64) to order ties."""
    with np.errstate(over="ignore"):
        return np.asarray(stamp_id, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)


@dataclass
class Picks:
    """The best few rows for each gallery kind; mergeable. ``sizes``: rows kept per kind."""

    sizes: Mapping[str, int]
    rows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(
        self,
        stamp_id: np.ndarray,
        score: np.ndarray,
        label: np.ndarray,
        cand: np.ndarray,
        threshold: np.ndarray,
        night: int,
    ) -> None:
        """Offer scored rows of one night (errored rows already left out)."""
        near = np.abs(score - threshold)
        offers = {
            "top": (cand, -score),
            "threshold": (cand & np.isfinite(near), near),
            "false_positives": (cand & (label == LABEL_ARTIFACT), -score),
            "false_negatives": (~cand & (label == LABEL_REAL), score),
        }
        for kind, (mask, key) in offers.items():
            if self.sizes.get(kind, 0) > 0 and mask.any():
                cols = {
                    "key": key[mask],
                    "stamp_id": stamp_id[mask],
                    "score": score[mask],
                    "label": label[mask],
                    "night": np.full(int(mask.sum()), night, np.int64),
                }
                self._keep(kind, cols)

    def merge(self, other: Picks) -> None:
        for kind, cols in other.rows.items():
            if self.sizes.get(kind, 0) > 0:
                self._keep(kind, cols)

    def _keep(self, kind: str, cols: dict[str, np.ndarray]) -> None:
        old = self.rows.get(kind)
        if old is not None:
            cols = {k: np.concatenate([old[k], cols[k]]) for k in cols}
        # Best key first. Many scores tie (a float32 1.0 for the surest reals): ties go by a hash
        # of the stamp_id, so they are spread over the season's nights, not all from its first,
        # and the same scores always give the same gallery.
        order = np.lexsort((tiebreak(cols["stamp_id"]), cols["key"]))[: self.sizes[kind]]
        self.rows[kind] = {k: v[order] for k, v in cols.items()}

    def best(self, kind: str, n: int) -> list[dict[str, Any]]:
        """The first ``n`` rows of a kind, as plain dicts."""
        cols = self.rows.get(kind)
        if cols is None:
            return []
        return [
            {
                "stamp_id": int(cols["stamp_id"][i]),
                "score": float(cols["score"][i]),
                "label": int(cols["label"][i]),
                "night": int(cols["night"][i]),
            }
            for i in range(min(n, len(cols["key"])))
        ]


def galleries(
    picks: Picks | None,
    sizes: Mapping[str, int],
    *,
    season: str,
    labelled: bool,
    store_root: Path | None,
) -> tuple[dict[str, Any], bytes | None]:
    """The ``galleries`` entry of a report's JSON and its sprite (PNG bytes, or None).

    One sprite holds every gallery of a report, each stamp once (a stamp can be a top candidate
    and a false positive); each listed stamp names its ``row`` in the sprite.
    """
    doc: dict[str, Any] = {"store": str(store_root) if store_root else None, "stretch": STRETCH}
    if store_root is None:
        doc["skipped"] = (
            "no Zarr store was given, and the galleries show the stamps' pixels: run "
            "`s2v report SCORES --out OUT --store STORE` to add them"
        )
        return {**doc, "items": []}, None
    if not any(sizes.values()):
        doc["skipped"] = "every gallery size is 0 in the report config"
        return {**doc, "items": []}, None
    doc["skipped"] = None
    items = []
    wanted: dict[int, dict[str, Any]] = {}  # stamp_id -> row, in first-shown order
    for kind, title, answers in KINDS:
        n = sizes.get(kind, 0)
        item: dict[str, Any] = {"kind": kind, "title": title, "answers": answers, "stamps": []}
        items.append(item)
        if n == 0:
            item["note"] = "turned off in the report config"
        elif kind.startswith("false_") and not labelled:
            item["note"] = "needs labelled stamps; there are none"
        else:
            item["stamps"] = picks.best(kind, n) if picks else []
            item["note"] = None if item["stamps"] else "no stamp of this kind"
            for r in item["stamps"]:
                wanted.setdefault(r["stamp_id"], r)
    rows = list(wanted.values())
    pixels, notes = read_pixels(store_root, season, rows)
    found = {r["stamp_id"]: i for i, (r, p) in enumerate(zip(rows, pixels, strict=True))}
    shown = [i for i in found.values() if pixels[i] is not None]
    row_of = {rows[i]["stamp_id"]: j for j, i in enumerate(shown)}
    for item in items:
        drawn = [
            dict(r, row=row_of[r["stamp_id"]]) for r in item["stamps"] if r["stamp_id"] in row_of
        ]
        if len(drawn) < len(item["stamps"]):
            item["note"] = f"{len(item['stamps']) - len(drawn)} stamp(s) not found in the store"
        item["stamps"] = drawn
    doc["notes"] = notes
    doc["items"] = items
    if not shown:
        doc["image"] = None
        return doc, None
    stack = np.stack([pixels[i] for i in shown])
    png, doc["size"] = sprite_png(stretch(stack))
    doc["image"] = SPRITE
    doc["cell"] = [int(stack.shape[2]), int(stack.shape[1])]
    doc["gap"] = GAP
    return doc, png
