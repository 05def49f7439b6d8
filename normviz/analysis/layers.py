"""Layer choice: merging the layer orders of several runs, selecting layers by glob and limit."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["merged_order", "select_names"]


def merged_order(sequences: Iterable[Sequence[str]]) -> list[str]:
    """Merge name lists that share an order (e.g. the layers of runs of one model).

    A name missing from the lists seen so far is placed right after the name
    that precedes it in its own list, so ``[a, b, d]`` and ``[a, c, d]`` give
    ``[a, b, c, d]``.
    """
    out: list[str] = []
    for seq in sequences:
        prev: str | None = None
        for name in seq:
            if name not in out:
                at = 0 if prev is None else out.index(prev) + 1
                while at < len(out) and out[at] not in seq:
                    at += 1  # keep names only other lists have before this one
                out.insert(at, name)
            prev = name
    return out


def select_names(
    names: Sequence[str], pattern: str | Sequence[str] | None = None, limit: int | None = None
) -> list[str]:
    """Names matching a glob (or any of several), thinned evenly to ``limit``.

    Matching uses :func:`fnmatch.fnmatchcase` on the qualified layer name;
    ``"*"``-free patterns match exactly. When more than ``limit`` names match,
    an evenly spaced subset is kept that always includes the first (the
    shallowest) and, for ``limit >= 2``, the last (the deepest); ``limit = 1``
    keeps the first. Order is preserved. Every renderer's ``max_layers`` goes
    through here, so they all agree on which layers a small limit keeps.
    """
    if pattern is None:
        chosen = list(names)
    else:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        patterns = [p.strip() for part in patterns for p in part.split(",") if p.strip()]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if limit is not None and limit > 0 and len(chosen) > limit:
        if limit == 1:
            return [chosen[0]]
        idx = np.round(np.linspace(0, len(chosen) - 1, limit)).astype(int)
        chosen = [chosen[i] for i in sorted({int(i) for i in idx})]
    return chosen
