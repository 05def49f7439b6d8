"""normviz-dyt: teach normviz Dynamic Tanh (DyT), a drop-in replacement for LayerNorm.

This package is a normviz plugin, found through the entry point ``dyt`` of the
group ``normviz`` (see ``pyproject.toml``). normviz registers the package itself
with its plugin manager, so the hook implementations below are all there is
to the contract (:mod:`normviz.hookspecs`):

- :func:`normviz_classify_module` claims :class:`DyT` layers (and look-alikes
  such as the paper's ``DynamicTanh``) as the norm kind ``dyt``;
- :func:`normviz_register_statistics` adds ``dyt_alpha`` and ``dyt_saturation``,
  recorded on DyT layers only;
- :func:`normviz_register_renderers` adds the figure ``dyt``.

- :func:`normviz_register_norm_kinds` describes the kind ``dyt`` (its label and
  its groups: none, DyT normalizes nothing), for figures and ``normviz plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from normviz import NormKind, hookimpl
from normviz_dyt.module import DyT, convert_layernorms
from normviz_dyt.render import RENDERER
from normviz_dyt.statistics import KIND, SATURATION_THRESHOLD, STATISTICS, classify

if TYPE_CHECKING:
    from torch import nn

    from normviz.datatypes import NormSpec, Register, Renderer, Statistic

__version__ = "0.1.0"

__all__ = [
    "DyT",
    "KIND",
    "NORM_KIND",
    "RENDERER",
    "SATURATION_THRESHOLD",
    "STATISTICS",
    "__version__",
    "convert_layernorms",
    "normviz_classify_module",
    "normviz_register_norm_kinds",
    "normviz_register_renderers",
    "normviz_register_statistics",
]

#: The norm kind this plugin adds, as figures and ``normviz plugins`` show it.
NORM_KIND = NormKind(KIND, "DyT", "no groups: an element-wise tanh(αx) with a learned α, no statistics")


@hookimpl
def normviz_classify_module(name: str, module: nn.Module) -> NormSpec | None:
    """Claim DyT layers as kind ``dyt``; pass on everything else."""
    return classify(name, module)


@hookimpl
def normviz_register_norm_kinds(register: Register[NormKind]) -> None:
    """Register the kind ``dyt``."""
    register(NORM_KIND)


@hookimpl
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Register ``dyt_alpha`` and ``dyt_saturation``."""
    for statistic in STATISTICS:
        register(statistic)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``dyt`` renderer."""
    register(RENDERER)
