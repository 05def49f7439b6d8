"""Frozen descriptors exchanged between normviz and its plugins.

``NormSpec`` says how a module normalizes, ``Statistic`` what to compute on an
activation, ``Renderer`` how to draw runs. Nothing here imports h5py or pyplot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

T_contra = TypeVar("T_contra", contravariant=True)


class Register(Protocol[T_contra]):
    """The callable a ``normviz_register_*`` hook receives."""

    def __call__(self, item: T_contra, /) -> None: ...


@dataclass(frozen=True)
class NormSpec:
    """How a normalization layer normalizes.

    Parameters
    ----------
    kind:
        Norm kind: ``batch``, ``layer``, ``instance``, ``group``, ``rms`` or a kind a
        plugin adds (e.g. ``dyt``).
    channel_dim:
        The channel dimension of the layer's input: ``1`` for (N, C, ...) tensors,
        ``-1`` for (..., features) tensors.
    group_dims:
        How one *normalization group* is formed. ``"batch"``: one channel over all
        other dims; ``"sample-channel"``: one (sample, channel) over the spatial dims;
        ``"trailing"``: one row over the last ``normalized_ndim`` dims;
        ``"channel"``: one position over the channel dim (channels-first layer
        norms); ``"group"``: one (sample, group of C/G channels); ``None``: not a
        mean/variance normalizer (no group summary).
    normalized_ndim:
        Number of trailing dims normalized together (``"trailing"`` only).
    num_groups:
        G for ``"group"``.
    centered:
        False for RMS-style norms (they divide by the RMS and subtract no mean).
    """

    kind: str
    channel_dim: int = 1
    group_dims: str | None = "batch"
    normalized_ndim: int = 1
    num_groups: int = 1
    centered: bool = True


@dataclass(frozen=True)
class Site:
    """One recorded tensor: a layer's input or output, for one call per forward."""

    layer: str
    role: str  # "input" or "output"
    call: int
    kind: str | None
    module_type: str
    channels: int
    channel_dim: int
    stored_channels: int = 0

    @property
    def key(self) -> str:
        """Stable identifier ``layer|role|call`` (layer names may hold any character)."""
        return f"{self.layer}|{self.role}|{self.call}"


@dataclass(frozen=True)
class Statistic:
    """An extra per-site statistic computed on the device during recording.

    ``compute(ctx)`` receives a :class:`normviz.record.stats.SiteTensor` (the
    detached activation in its own dtype, plus its site and norm spec) and returns
    a 1-D tensor of ``width(site)`` values on the same device (another width is
    stored as NaN, with a warning). It must not synchronise with the host (no
    ``.item()``, ``.cpu()``, ``.tolist()``).
    """

    name: str
    compute: Callable[[Any], torch.Tensor]
    width: Callable[[Site], int]
    description: str = ""
    applies: Callable[[Site], bool] = field(default=lambda site: True)
    default: bool = True
    dtype: str = "float32"  # storage dtype: float32, float64, int32 or int64
    fused: bool = False  # built-in core statistic: the recorder computes it batched; compute() is the reference


@dataclass(frozen=True)
class Renderer:
    """A named figure: ``draw(runs, fig, **options) -> Figure``."""

    name: str
    draw: Callable[..., Figure]
    description: str = ""
    requires: frozenset[str] = frozenset()
    options: Sequence[str] = ()
