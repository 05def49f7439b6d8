"""The norm kind ``dyt`` and its two statistics, ``dyt_alpha`` and ``dyt_saturation``.

A :class:`~normviz.datatypes.Statistic` sees one site's activation (a
:class:`normviz.record.stats.SiteTensor`), not the module that produced it. DyT's
statistics need the module's ``alpha``, so the classifier remembers, for every
:class:`~normviz.datatypes.NormSpec` it hands out, the module it describes; the
recorder passes that very spec to the statistic as ``ctx.spec``. The lookup
holds weak references only, so it keeps no model alive. Should a recorder ever
pass a copy of the spec instead, the layer name (``ctx.site.layer``) is used,
as long as exactly one live DyT module was classified under that name.

Both statistics stay on the device: ``alpha`` is read as a tensor (cloned, since
the optimizer updates it in place before the row is written) and the saturated
fraction is a count over the whole input tensor, divided on the device. No
``.item()``, no host copy.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from normviz.datatypes import NormSpec, Site, Statistic
from normviz_dyt.module import DyT

__all__ = [
    "KIND",
    "LOOKALIKE_NAMES",
    "SATURATION_THRESHOLD",
    "STATISTICS",
    "classify",
    "dyt_spec",
]

#: The norm kind this plugin adds.
KIND = "dyt"

#: ``|α·x|`` above this counts as saturated: ``tanh(2) ≈ 0.964``, within 4 % of
#: its asymptote, where the gradient ``1 − tanh²`` has fallen below 0.071.
SATURATION_THRESHOLD = 2.0

#: Class names of DyT implementations other than :class:`~normviz_dyt.DyT` that
#: are recognised too (the paper's reference code calls it ``DynamicTanh``),
#: provided they hold a one-value tensor ``alpha``.
LOOKALIKE_NAMES = frozenset({"DyT", "DynamicTanh"})


def _alpha_of(module: nn.Module) -> torch.Tensor | None:
    alpha = getattr(module, "alpha", None)
    if isinstance(alpha, torch.Tensor) and alpha.numel() == 1 and alpha.is_floating_point():
        return alpha
    return None


def dyt_spec(module: nn.Module) -> NormSpec | None:
    """The spec of a DyT module (or look-alike), else None.

    Channels are the last dim for channels-last DyT (LayerNorm's place in a
    transformer), dim 1 otherwise. ``group_dims=None``: DyT normalizes no group
    of values, so normviz records no normalization-group summary for it.
    """
    if isinstance(module, DyT):
        channels_last = module.channels_last
    elif type(module).__name__ in LOOKALIKE_NAMES and _alpha_of(module) is not None:
        channels_last = bool(getattr(module, "channels_last", True))
    else:
        return None
    return NormSpec(KIND, channel_dim=-1 if channels_last else 1, group_dims=None)


class ModuleLookup:
    """Which module a spec handed out by :func:`classify` describes (weak references only)."""

    def __init__(self) -> None:
        self._by_spec: dict[int, tuple[weakref.ref[NormSpec], weakref.ref[nn.Module]]] = {}
        self._by_name: dict[str, weakref.WeakSet[nn.Module]] = {}

    def remember(self, name: str, spec: NormSpec, module: nn.Module) -> None:
        key = id(spec)

        def forget(ref: weakref.ref[NormSpec], key: int = key) -> None:
            entry = self._by_spec.get(key)
            if entry is not None and entry[0] is ref:
                del self._by_spec[key]

        self._by_spec[key] = (weakref.ref(spec, forget), weakref.ref(module))
        self._by_name.setdefault(name, weakref.WeakSet()).add(module)

    def module(self, ctx: Any) -> nn.Module:
        """The module of the site ``ctx`` describes.

        Raises
        ------
        LookupError
            When the module cannot be told for certain (the recorder then
            disables the statistic for the run, with a warning).
        """
        entry = self._by_spec.get(id(ctx.spec))
        if entry is not None and entry[0]() is ctx.spec:
            module = entry[1]()
            if module is not None:
                return module
        layer = ctx.site.layer
        candidates = list(self._by_name.get(layer, ()))
        if len(candidates) == 1:
            return candidates[0]
        raise LookupError(
            f"normviz-dyt: cannot tell which DyT module layer {layer!r} is "
            f"({len(candidates)} live DyT modules were classified under that name)"
        )


LOOKUP = ModuleLookup()


def classify(name: str, module: nn.Module) -> NormSpec | None:
    """:func:`dyt_spec`, remembering the module for the statistics."""
    spec = dyt_spec(module)
    if spec is not None:
        LOOKUP.remember(name, spec, module)
    return spec


def _alpha(ctx: Any) -> torch.Tensor:
    alpha = _alpha_of(LOOKUP.module(ctx))
    if alpha is None:
        raise LookupError(f"normviz-dyt: layer {ctx.site.layer!r} has no one-value tensor 'alpha'")
    return alpha.detach()


def _dyt_alpha(ctx: Any) -> torch.Tensor:
    # clone(): the optimizer changes alpha in place before the row is copied out.
    return _alpha(ctx).reshape(1).to(device=ctx.x.device, dtype=torch.float32).clone()


def _dyt_saturation(ctx: Any) -> torch.Tensor:
    x = ctx.x
    # alpha as the module holds it, so that alpha * x is the product its forward computes
    alpha = _alpha(ctx).to(device=x.device)
    saturated = torch.count_nonzero((x * alpha).abs() > SATURATION_THRESHOLD)
    return (saturated.to(torch.float32) / max(x.numel(), 1)).reshape(1)


def _is_dyt(role: str) -> Any:
    def applies(site: Site) -> bool:
        return site.kind == KIND and site.role == role

    return applies


def _one(site: Site) -> int:
    return 1


#: The statistics this plugin registers; recorded on DyT layers only.
STATISTICS: tuple[Statistic, ...] = (
    Statistic(
        "dyt_alpha",
        _dyt_alpha,
        _one,
        "DyT layers (output site): the scalar alpha the forward pass used (exact)",
        applies=_is_dyt("output"),
    ),
    Statistic(
        "dyt_saturation",
        _dyt_saturation,
        _one,
        f"DyT layers (input site): fraction of all input values with |alpha*x| > {SATURATION_THRESHOLD:g}, "
        "where tanh is saturated (exact, whole tensor)",
        applies=_is_dyt("input"),
    ),
)
