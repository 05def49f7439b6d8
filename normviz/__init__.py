"""normviz: see what normalization does inside a neural network.

Record per-layer activation and gradient statistics of PyTorch training into HDF5
(:class:`Recorder`), read them back (:func:`open`), and draw them with renderer
plugins (:func:`plot`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Recorder", "Run", "open", "plot", "hookimpl", "__version__"]

if TYPE_CHECKING:
    from normviz.record.recorder import Recorder
    from normviz.store.reader import Run


def open(path: Any) -> Run:  # noqa: A001 - the public name is fixed: normviz.open
    """Open a run file: ``normviz.open("run.h5") -> Run``."""
    from normviz.store.reader import open_run

    return open_run(path)


def plot(runs: Any, renderer: str, **options: Any) -> Any:
    """Draw *runs* with the named renderer into a new Figure and return it."""
    from normviz.plot.api import plot as _plot

    return _plot(runs, renderer, **options)


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import normviz` light (torch loads only when recording).
    if name == "Recorder":
        from normviz.record.recorder import Recorder

        return Recorder
    if name == "Run":
        from normviz.store.reader import Run

        return Run
    if name == "hookimpl":
        from normviz.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'normviz' has no attribute {name!r}")
