"""Heatmap helpers: a gradient statistic as a log-scaled matrix, shared log limits, cell edges."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["edges_from_centers", "flow_matrix", "log_limits"]


def flow_matrix(values: Any) -> np.ndarray:
    """A ``[S, L]`` gradient statistic as a ``[L, S]`` matrix for a log-scaled heatmap.

    Rows are layers (model order), columns recorded steps. Values that cannot be
    shown on a log scale (≤ 0, NaN, ±inf) become NaN.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected [steps, layers], got shape {arr.shape}")
    out = arr.T.copy()
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def log_limits(*arrays: Any, default: tuple[float, float] = (1e-8, 1.0)) -> tuple[float, float]:
    """``(vmin, vmax)`` over the finite positive values of all arrays, for a shared log scale.

    Equal limits are widened by a factor 10 around the value; ``default`` is
    returned when no value is finite and positive.
    """
    lows, highs = [], []
    for a in arrays:
        arr = np.asarray(a, dtype=np.float64)
        good = arr[np.isfinite(arr) & (arr > 0)]
        if good.size:
            lows.append(good.min())
            highs.append(good.max())
    if not lows:
        return default
    vmin, vmax = float(min(lows)), float(max(highs))
    if vmin == vmax:
        vmin, vmax = vmin / np.sqrt(10.0), vmax * np.sqrt(10.0)
    return vmin, vmax


def edges_from_centers(centers: Any) -> np.ndarray:
    """Cell edges around increasing cell centres (midpoints; the ends mirrored).

    One centre ``c`` gives ``[c - 0.5, c + 0.5]``.
    """
    c = np.asarray(centers, dtype=np.float64)
    if c.size == 0:
        return np.array([0.0, 1.0])
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
