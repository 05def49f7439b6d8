"""Figures: styles, colours and saving shared by all renderers.

Submodules are imported on demand so that ``import normviz.plot`` stays
cheap: :mod:`normviz.plot.palette` (colours per norm kind, no matplotlib),
:mod:`normviz.plot.style` (sizes and fonts), :mod:`normviz.plot.save` (reproducible
files), :mod:`normviz.plot.common` (the drawing helpers for renderers, a facade over
``looks``, ``layout``, ``artists`` and ``selection``), :mod:`normviz.plot.ticks` (tick
labels that fit), :mod:`normviz.plot.renderers` (the built-in figures' drawing code),
:mod:`normviz.plot.follow` (``plot --follow``) and :mod:`normviz.plot.api`
(:func:`~normviz.plot.api.plot`, :func:`~normviz.plot.api.render_to_files`).

Importing a submodule makes ``normviz.plot`` name this package rather than the
function :func:`normviz.plot`; the package is therefore callable itself, so
``normviz.plot(runs, "loss")`` works either way.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, runs: Any, renderer: str, **options: Any) -> Any:
        """Draw *runs* with the named renderer into a new Figure (see :func:`normviz.plot.api.plot`)."""
        from normviz.plot.api import plot

        return plot(runs, renderer, **options)


sys.modules[__name__].__class__ = _CallablePackage
