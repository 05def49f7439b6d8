"""Percentile bands: the lo/mid/hi series of a recorded percentile statistic."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normviz.errors import MissingDataError

__all__ = ["Band", "level_columns", "percentile_band"]


@dataclass(frozen=True)
class Band:
    """Three series of one band: ``lo``, ``mid``, ``hi`` (each ``[S]``) and their levels."""

    lo: np.ndarray
    mid: np.ndarray
    hi: np.ndarray
    levels: tuple[float, float, float]


def level_columns(levels: Sequence[float], wanted: Iterable[float]) -> list[int]:
    """Column of each wanted level in a percentile statistic.

    Raises
    ------
    MissingDataError
        Naming the level that was not recorded and the levels that were.
    """
    have = [float(v) for v in levels]
    cols = []
    for w in wanted:
        matches = [i for i, v in enumerate(have) if math.isclose(v, float(w), abs_tol=1e-9)]
        if not matches:
            raise MissingDataError(f"percentile level {w:g} was not recorded (levels: {have})")
        cols.append(matches[0])
    return cols


def percentile_band(
    values: Any,
    levels: Sequence[float],
    lo: float = 15.0,
    mid: float = 50.0,
    hi: float = 85.0,
) -> Band:
    """Pick the ``lo``/``mid``/``hi`` percentile series out of a ``[S, levels]`` statistic.

    Works for ``percentiles`` (levels ``run.layout.percentile_levels``) and for
    ``group_mean``/``group_scale`` (levels ``run.layout.group_levels``). The
    default 15/50/85 are Ioffe & Szegedy's (2015, Fig. 1).
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(levels):
        raise ValueError(f"expected [steps, {len(levels)}] values, got shape {arr.shape}")
    i, j, k = level_columns(levels, (lo, mid, hi))
    return Band(arr[:, i], arr[:, j], arr[:, k], (float(lo), float(mid), float(hi)))
