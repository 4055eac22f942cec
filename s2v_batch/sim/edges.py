"""Simulated ZTF edge cut-outs: alerts detected near a readout quadrant's edge, whose cut-outs
ZTF sends cut short on that side (63x53, 41x63 ...), with the candidate's pixel position saying
which side (the ingest pads them back: :func:`s2v_batch.formats.alertpackets.pad_edge_cutout`).
"""

from __future__ import annotations

import numpy as np

#: The readout quadrant of ZTF (rows, columns) the simulated edge cut-outs sit on.
_ZTF_QUADRANT = (3080, 3072)


def edge_draws(edges: tuple[np.random.Generator, float] | None, m: int) -> np.ndarray | None:
    """Per alert ``(is_edge, side, lost)``, drawn from their own generator (the other draws of
    a night are the same with or without edge cut-outs)."""
    if edges is None or edges[1] <= 0:
        return None
    gen, fraction = edges
    return np.stack(
        [gen.random(m) < fraction, gen.integers(0, 4, m), gen.integers(6, 23, m)], axis=1
    )


def edge_cut(
    pix: np.ndarray, draw: np.ndarray
) -> tuple[np.ndarray, tuple[float | None, float | None]]:
    """An alert's cut-outs cut short by a quadrant edge, as ZTF sends them near one (63x53,
    41x63 ...), and the candidate's ``(xpos, ypos)`` that puts it there; else as they are."""
    is_edge, side, lost = (int(v) for v in draw)
    if not is_edge:
        return pix, (None, None)
    ny, nx = _ZTF_QUADRANT
    near, far = 31.4 - lost, None  # the candidate sits ``31 - lost`` pixels from the edge
    if side == 0:  # first rows lost (low ypos)
        return pix[lost:], (1536.0, near)
    if side == 1:  # last rows lost (high ypos)
        far = ny - 1 - near
        return pix[: pix.shape[0] - lost], (1536.0, far)
    if side == 2:  # first columns lost (low xpos)
        return pix[:, lost:], (near, 1540.0)
    far = nx - 1 - near
    return pix[:, : pix.shape[1] - lost], (far, 1540.0)
