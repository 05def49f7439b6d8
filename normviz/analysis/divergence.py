"""Where a run diverged: its first non-finite row or scalar value."""

from __future__ import annotations

from typing import Any

import numpy as np

from normviz.errors import MissingDataError

__all__ = ["first_nonfinite", "run_divergence", "scalar_divergence"]


def first_nonfinite(*arrays: Any) -> int | None:
    """First row (axis 0) where any of the arrays holds a non-finite value, or None.

    Arrays with a ``nonfinite`` count (values ≥ 0) are better checked with
    ``count > 0``: pass ``np.where(count > 0, np.nan, 0)``.
    """
    first: int | None = None
    for a in arrays:
        arr = np.asarray(a, dtype=np.float64)
        if arr.size == 0:
            continue
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        idx = np.flatnonzero(bad)
        if idx.size and (first is None or idx[0] < first):
            first = int(idx[0])
    return first


def scalar_divergence(values: Any) -> int | None:
    """Index where a per-step scalar (e.g. the loss) diverged, or None.

    That is the first ``±inf``, or the first NaN of a series that is finite
    before it and non-finite from there to its end. A scalar given only at
    some steps (NaN elsewhere, see ``Run.scalar``) has NaN gaps before its
    last value and is not taken for diverged.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size == 0:
        return None
    candidates = []
    inf = np.flatnonzero(np.isinf(y))
    if inf.size:
        candidates.append(int(inf[0]))
    finite = np.isfinite(y)
    nan = np.flatnonzero(np.isnan(y))
    if nan.size:
        i = int(nan[0])
        if i > 0 and finite[:i].all() and not finite[i:].any():
            candidates.append(i)
    return min(candidates) if candidates else None


def run_divergence(run: Any, rows: slice | None = None) -> int | None:
    """First recorded row (relative to ``rows``) where the run held a non-finite value.

    Looks at the ``nonfinite`` counts of every site and at ``grad_norm``, when
    recorded. Returns None for a run that stayed finite.
    """
    checks = []
    try:
        _, counts = run.stat_all("nonfinite", steps=rows)
        checks.append(np.where(np.asarray(counts) > 0, np.nan, 0.0))
    except MissingDataError:
        pass
    try:
        _, grads = run.grad("grad_norm", steps=rows)
        checks.append(grads)
    except MissingDataError:
        pass
    return first_nonfinite(*checks)
