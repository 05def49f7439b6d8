"""Which recorded rows to read: a step range, a few spread-out rows, the row a forward pass used."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["forward_row", "pick_rows", "rows_for_steps"]


def rows_for_steps(steps: Any, start: int | None = None, stop: int | None = None) -> slice:
    """The recorded rows whose training step lies in ``[start, stop)``.

    ``steps`` is ``run.steps`` (increasing). ``None`` leaves a side open. The
    slice can be passed as ``steps=`` to the reader so only those rows are read.
    """
    arr = np.asarray(steps)
    i0 = 0 if start is None else int(np.searchsorted(arr, start, side="left"))
    i1 = len(arr) if stop is None else int(np.searchsorted(arr, stop, side="left"))
    return slice(i0, max(i0, i1))


def pick_rows(n: int, k: int = 3) -> list[int]:
    """Up to ``k`` distinct row indices spread over ``n`` rows: first, …, last.

    For ``k = 3``: first, middle and last recorded step. Fewer when ``n < k``.
    """
    if n <= 0:
        return []
    if k <= 1:
        return [n - 1]
    picks = np.round(np.linspace(0, n - 1, min(k, n))).astype(int)
    return sorted({int(i) for i in picks})


def forward_row(steps: Any, row: int) -> int:
    """The recorded row holding the parameters the forward pass of ``row`` used.

    Module tensors (γ, β, running statistics) are recorded when the step
    closes, after the optimizer has updated them, while activations are
    recorded during the forward pass. The γ and β that produced the
    activations of training step ``s`` are those recorded at step ``s − 1``:
    that row is returned when step ``s − 1`` was recorded, else ``row``
    itself (off by one update).
    """
    arr = np.asarray(steps)
    if 0 < row < len(arr) and arr[row - 1] == arr[row] - 1:
        return row - 1
    return row
