"""Decimation: long series thinned for plotting.

Long series are thinned for plotting by :func:`envelope` (lines: the mean of
each block of consecutive points plus the block's min and max, so spikes stay
visible) and :func:`block_mean` (heatmaps: the mean of each block of rows).
:func:`normviz.analysis.rows.rows_for_steps` turns a training-step range into the
slice of recorded rows to read, so only those rows leave the file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Envelope", "block_mean", "envelope"]


@dataclass(frozen=True)
class Envelope:
    """A series thinned for plotting: ``x``, ``y`` and the min/max envelope ``lo``/``hi``.

    ``lo`` and ``hi`` are None when the series was short enough to keep whole.
    """

    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None


def _blocks(n: int, max_points: int) -> int:
    return max(1, math.ceil(n / max(1, max_points)))


def _block_reduce(arr: np.ndarray, k: int, how: str) -> np.ndarray:
    n = arr.shape[0]
    m = math.ceil(n / k)
    pad = m * k - n
    if pad:
        arr = np.concatenate([arr, np.full((pad,) + arr.shape[1:], np.nan)], axis=0)
    arr = arr.reshape((m, k) + arr.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        finite = np.where(np.isfinite(arr), arr, np.nan)
        if how == "mean":
            return np.nanmean(finite, axis=1)
        if how == "min":
            return np.nanmin(finite, axis=1)
        return np.nanmax(finite, axis=1)


def envelope(x: Any, y: Any, max_points: int = 1000) -> Envelope:
    """Thin a long series to at most ``max_points`` points, keeping its extremes.

    Consecutive points are grouped in equal blocks; each block gives one point
    at the mean of its ``x``, the mean of its finite ``y``, and its min and max
    (``lo``/``hi``). A series of ``max_points`` or fewer is returned unchanged
    (``lo = hi = None``).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x {xs.shape} and y {ys.shape} must be 1-D and of the same length")
    if len(xs) <= max_points:
        return Envelope(xs, ys, None, None)
    k = _blocks(len(xs), max_points)
    return Envelope(
        _block_reduce(xs, k, "mean"),
        _block_reduce(ys, k, "mean"),
        _block_reduce(ys, k, "min"),
        _block_reduce(ys, k, "max"),
    )


def block_mean(steps: Any, values: Any, max_rows: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Average blocks of consecutive rows so that at most ``max_rows`` remain.

    Returns ``(steps, values)``: each block's mean step and the mean of its
    finite values (per column). Short inputs are returned as float64 copies.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if v.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} steps but {v.shape[0]} rows")
    if len(s) <= max_rows:
        return s.copy(), v.copy()
    k = _blocks(len(s), max_rows)
    return _block_reduce(s, k, "mean"), _block_reduce(v, k, "mean")
