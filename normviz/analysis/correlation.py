"""Rank correlation: Spearman's ρ with tied values given their mean rank."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["rank_values", "spearman"]


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    a, b = rank_values(np.asarray(x, dtype=float)), rank_values(np.asarray(y, dtype=float))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def rank_values(v: np.ndarray) -> np.ndarray:
    """The rank of each value (0 for the smallest); tied values get their mean rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tie = v == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks
