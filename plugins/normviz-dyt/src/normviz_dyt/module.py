"""Dynamic Tanh (DyT): ``y = γ · tanh(α · x) + β``, a drop-in replacement for LayerNorm.

Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization" (CVPR 2025)
observe that trained LayerNorms map their inputs through an S-shaped curve and
replace them by an element-wise ``tanh`` with one learnable scalar ``α`` (the
input scale, initialised at 0.5) and LayerNorm's own per-channel affine
``γ`` (``weight``) and ``β`` (``bias``). DyT computes no statistic over the
batch or the token: it squashes each value on its own, so it is not a
normalizer in the mean/variance sense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DyT", "convert_layernorms"]


class DyT(nn.Module):
    """Dynamic Tanh: ``y = weight * tanh(alpha * x) + bias``.

    Parameters
    ----------
    normalized_shape
        The trailing shape of the input (as for :class:`torch.nn.LayerNorm`), or,
        with ``channels_last=False``, the number of channels of an ``(N, C, …)``
        input.
    alpha_init
        Initial value of the learnable scalar ``alpha`` (0.5 in the paper).
    elementwise_affine
        Learn ``weight`` (γ, init 1) and ``bias`` (β, init 0), as LayerNorm does.
    bias
        Learn ``bias`` (ignored without ``elementwise_affine``).
    channels_last
        True for ``(…, features)`` inputs (transformers); False for ``(N, C, …)``
        inputs, where γ and β broadcast over dim 1 (ConvNets).
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        *,
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not channels_last and len(shape) != 1:
            raise ValueError("DyT with channels_last=False takes the number of channels, one int")
        self.normalized_shape: tuple[int, ...] = shape
        self.alpha_init = float(alpha_init)
        self.channels_last = channels_last
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init, **factory))
        if elementwise_affine:
            self.weight: nn.Parameter | None = nn.Parameter(torch.ones(shape, **factory))
            self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.alpha * x)
        if self.channels_last:
            if self.weight is not None:
                y = y * self.weight
            if self.bias is not None:
                y = y + self.bias
            return y
        view = (-1,) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            y = y * self.weight.reshape(view)
        if self.bias is not None:
            y = y + self.bias.reshape(view)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, alpha_init={self.alpha_init}, "
            f"elementwise_affine={self.weight is not None}, channels_last={self.channels_last}"
        )

    @classmethod
    def from_layernorm(cls, norm: nn.LayerNorm, *, alpha_init: float = 0.5) -> DyT:
        """A DyT with the shape, affine options, device and dtype of ``norm`` (fresh parameters)."""
        ref = norm.weight if norm.weight is not None else None
        return cls(
            norm.normalized_shape,
            alpha_init=alpha_init,
            elementwise_affine=norm.elementwise_affine,
            bias=norm.bias is not None,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )


def convert_layernorms(model: nn.Module, *, alpha_init: float = 0.5) -> nn.Module:
    """Replace every :class:`torch.nn.LayerNorm` in ``model`` by a :class:`DyT`, in place.

    Returns ``model`` (or a DyT when ``model`` is itself a LayerNorm). The new
    layers have fresh parameters (γ = 1, β = 0, α = ``alpha_init``), as when a
    model is built with DyT from the start.
    """
    if isinstance(model, nn.LayerNorm):
        return DyT.from_layernorm(model, alpha_init=alpha_init)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(model, name, DyT.from_layernorm(child, alpha_init=alpha_init))
        else:
            convert_layernorms(child, alpha_init=alpha_init)
    return model
