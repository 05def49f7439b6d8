"""Hook specifications: the whole contract between normviz and its plugins.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose
names match the specs below. Third-party plugins are found through the entry-point
group ``normviz``; the built-ins in :mod:`normviz.default_plugins` are registered
through the same plugin manager, by module name. Call hooks with keyword
arguments only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from normviz.datatypes import NormKind, NormSpec, Register, Renderer, Statistic

hookspec = pluggy.HookspecMarker("normviz")
hookimpl = pluggy.HookimplMarker("normviz")


@hookspec(firstresult=True)
def normviz_classify_module(name: str, module: nn.Module) -> NormSpec | None:
    """Claim *module* as a normalization layer and say how it normalizes.

    Parameters
    ----------
    name:
        The module's qualified name from ``model.named_modules()`` (root: ``""``).
    module:
        The module. Do not modify it or register hooks on it.

    Returns
    -------
    A :class:`~normviz.datatypes.NormSpec`, or ``None`` to pass. The first non-None
    answer wins; the built-in classifier runs last, so plugins can override it.
    """


@hookspec
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Call ``register(Statistic(...))`` once per extra statistic to record."""


@hookspec
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Call ``register(Renderer(...))`` once per figure this plugin draws."""


@hookspec
def normviz_register_norm_kinds(register: Register[NormKind]) -> None:
    """Call ``register(NormKind(...))`` once per norm kind this plugin classifies modules as:
    its label, how its normalization groups are formed, and how its runs are drawn."""
