"""Callbacks that attach a :class:`normviz.Recorder` to training frameworks.

- :mod:`normviz.integrations.lightning` — ``NormvizCallback`` for PyTorch Lightning
  (``pip install "normviz[lightning]"``).
- :mod:`normviz.integrations.transformers` — ``NormvizCallback`` for the Hugging Face
  ``Trainer`` (``pip install "normviz[transformers]"``).

Each submodule imports its framework only when imported itself; ``import normviz``
never pulls either in.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["rank_path"]


def rank_path(path: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The run file of one rank: *path* itself when ``world_size == 1``, else
    ``run.h5`` -> ``run.rank{N}.h5`` (the rank goes before the extension)."""
    p = Path(path)
    if world_size <= 1:
        return p
    suffix = p.suffix or ".h5"
    return p.with_name(f"{p.stem if p.suffix else p.name}.rank{rank}{suffix}")
