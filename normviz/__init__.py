"""normviz: see what normalization does inside a neural network.

Record per-layer activation and gradient statistics of PyTorch training into HDF5
(:class:`Recorder`), read them back (:func:`open`), and draw them with renderer
plugins (:func:`plot`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "NormKind",
    "NormSpec",
    "Recorder",
    "Renderer",
    "Run",
    "Site",
    "Statistic",
    "__version__",
    "hookimpl",
    "mark_step",
    "open",
    "plot",
    "precise_bn",
]

if TYPE_CHECKING:
    from normviz.datatypes import NormKind, NormSpec, Renderer, Site, Statistic
    from normviz.hookspecs import hookimpl
    from normviz.record.population import precise_bn
    from normviz.record.recorder import Recorder
    from normviz.store.reader import Run

# Names resolved on first use, from the module that defines them: `import normviz` stays
# light (no torch, no matplotlib, no h5py) and torch loads only when recording. The plugin
# API (Renderer, Statistic, NormKind, NormSpec, Site, hookimpl) comes from modules that import
# nothing heavy, so a plugin module can import it at no cost.
_LAZY: dict[str, str] = {
    "Recorder": "normviz.record.recorder",
    "Run": "normviz.store.reader",
    "precise_bn": "normviz.record.population",
    "hookimpl": "normviz.hookspecs",
    "NormKind": "normviz.datatypes",
    "NormSpec": "normviz.datatypes",
    "Renderer": "normviz.datatypes",
    "Site": "normviz.datatypes",
    "Statistic": "normviz.datatypes",
}


def open(path: Any) -> Run:  # noqa: A001 - the public name is fixed: normviz.open
    """Open a run file: ``normviz.open("run.h5") -> Run``."""
    from normviz.store.reader import open_run

    return open_run(path)


def plot(runs: Any, renderer: str, **options: Any) -> Any:
    """Draw *runs* with the named renderer into a new Figure and return it."""
    from normviz.plot.api import plot as _plot

    return _plot(runs, renderer, **options)


def mark_step(**scalars: Any) -> bool:
    """Close a training step of a script run by ``normviz record SCRIPT`` that never calls
    ``optimizer.step()`` (a hand-written update): call it once per step, after the update.

    A no-op returning False outside ``normviz record`` (the script still runs as plain
    Python); see :func:`normviz.record.script.mark_step`.
    """
    import sys

    script = sys.modules.get("normviz.record.script")  # loaded only when a script is being recorded
    if script is None:
        return False
    return bool(script.mark_step(**scalars))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'normviz' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
