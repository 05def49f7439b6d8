"""The norm modules the built-in models put where their norm goes, by kind.

:func:`make_norm` builds PyTorch's own classes where they exist, and channels-first
layer and RMS norms for images; ``none`` is ``nn.Identity``, so a run without a norm
lines up with the others layer by layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normviz.default_plugins.norm_kinds import KINDS

NORM_KINDS: tuple[str, ...] = KINDS
"""Every norm kind the builders know: the built-in kinds, in their order."""

TRANSFORMER_NORM_KINDS: tuple[str, ...] = ("layer", "rms", "none")
"""The kinds that make sense on a (batch, sequence, features) tensor."""


def _affine_view(param: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) parameter to broadcast over (N, C, *spatial)."""
    return param.view(-1, *([1] * (ndim - 2)))


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel dim of (N, C, *spatial) tensors (ConvNeXt style).

    Each (n, h, w) position is normalized over its C values, then scaled and
    shifted per channel: ``y = (x - mean_C) / sqrt(var_C + eps) * weight + bias``
    with the biased variance, as :class:`torch.nn.LayerNorm` does.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.normalized_shape = (num_channels,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape (N, C, *spatial) over C."""
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * _affine_view(self.weight, x.ndim) + _affine_view(self.bias, x.ndim)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class ChannelsFirstRMSNorm(nn.Module):
    """RMSNorm over the channel dim of (N, C, *spatial) tensors.

    Each (n, h, w) position is divided by the root mean square of its C values
    (no mean is subtracted), then scaled per channel:
    ``y = x / sqrt(mean_C(x**2) + eps) * weight``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.normalized_shape = (num_channels,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Divide ``x`` of shape (N, C, *spatial) by its RMS over C."""
        y = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return y * _affine_view(self.weight, x.ndim)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def _group_count(channels: int, preferred: int = 4) -> int:
    """The seed's G=4, or the largest divisor of ``channels`` below it."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1  # pragma: no cover - the loop always ends at 1


def make_norm(kind: str, channels: int, *, dims: int) -> nn.Module:
    """Build the norm module of ``kind`` for ``channels`` features.

    ``dims`` is 1 for vectors (N, C) and for (N, L, C) sequences (layer and rms
    norms normalize the last dim), 2 for images (N, C, H, W).  Group norm uses
    G=4 groups as in the seed (fewer when C has no divisor of 4).  Instance norm
    exists for images only.  Raises ``ValueError`` for an unknown kind, a bad
    ``dims`` or a kind that does not apply.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 (vectors/sequences) or 2 (images), not {dims!r}")
    if channels < 1:
        raise ValueError(f"channels must be positive, not {channels!r}")
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels) if dims == 1 else ChannelsFirstLayerNorm(channels)
    if kind == "instance":
        if dims == 1:
            raise ValueError("instance norm needs spatial dims (dims=2); it is not defined for vectors")
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    if kind == "rms":
        return nn.RMSNorm(channels) if dims == 1 else ChannelsFirstRMSNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {', '.join(NORM_KINDS)}")
