"""Frozen descriptors exchanged between normviz and its plugins.

``NormSpec`` says how a module normalizes, ``Statistic`` what to compute on an
activation, ``Renderer`` how to draw runs, ``RunLike`` what a renderer may read of a
run (a recorded run, or the merged ranks of one). Nothing here imports h5py or pyplot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

    from normviz.store.layout import Layout

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
class NormKind:
    """A norm kind as normviz lists and draws it, registered through
    ``normviz_register_norm_kinds`` (the built-in kinds the same way as a plugin's).

    Parameters
    ----------
    name:
        The kind, as a :class:`NormSpec` and a run's ``norm_kind`` name it (``batch``).
    label:
        How titles and legends name it (``BatchNorm``).
    groups:
        How one normalization group is formed (what one mean/variance or RMS is
        computed over), for people: ``one channel over N and the spatial dims``.
    per_channel:
        Whether its groups lie within one channel (BatchNorm, InstanceNorm): its output
        group means and scales are then the channels' β and |γ|.
    color, linestyle, marker:
        How its runs are drawn; None: a stable choice from the name among the colours,
        dash patterns and markers no built-in kind uses.
    """

    name: str
    label: str
    groups: str = ""
    per_channel: bool = False
    color: str | None = None
    linestyle: Any = None
    marker: str | None = None


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
    heads: int = 0  # an attention module's output: its heads (normviz.record.attention), else 0

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
    #: How the rank files of one multi-rank run combine it (:class:`normviz.merge.MergedRun`):
    #: ``"sum"``, ``"max"``, ``"min"`` (exact for additive / extremal values), ``"mean"`` (the
    #: ranks' values weighted by their value counts: approximate), ``"none"`` (not mergeable:
    #: read the ranks apart), ``"exact"`` (a built-in rule of the merge, exact). Stored with
    #: the statistic in the file.
    merge: str = "mean"


@dataclass(frozen=True)
class Renderer:
    """A named figure: ``draw(runs, fig, **options) -> Figure``."""

    name: str
    draw: Callable[..., Figure]
    description: str = ""
    requires: frozenset[str] = frozenset()
    options: Sequence[str] = ()


@runtime_checkable
class RunLike(Protocol):
    """What renderers and analyses read of a run: :class:`normviz.store.reader.Run` (one
    file) and :class:`normviz.merge.MergedRun` (the rank files of one torchrun run) both
    answer it in full.

    Statistics are arrays whose first axis is the recorded row; ``steps=`` takes a slice
    of recorded rows, ``rows=`` an array of row indices (not both). See
    ``docs/plugins.md`` for the shapes.
    """

    path: Path
    meta: dict[str, Any]
    layout: Layout
    schema_version: str
    steps: np.ndarray

    @property
    def label(self) -> str: ...
    @property
    def experiment(self) -> str | None: ...
    @property
    def norm_kind(self) -> str: ...
    @property
    def rank(self) -> int | None: ...
    @property
    def world_size(self) -> int: ...
    @property
    def status(self) -> dict[str, int]: ...
    @property
    def layers(self) -> list[Any]: ...
    @property
    def norm_layers(self) -> list[Any]: ...
    @property
    def sites(self) -> list[Any]: ...
    @property
    def statistics(self) -> dict[str, list[str]]: ...
    @property
    def scalar_names(self) -> list[str]: ...
    @property
    def scalar_steps(self) -> np.ndarray: ...
    @property
    def scalars(self) -> dict[str, np.ndarray]: ...

    def stat(self, name: str, layer: str, role: str = "output", *, call: int = 0, steps: slice | None = None,
             rows: Any = None) -> np.ndarray: ...
    def stat_all(self, name: str, *, steps: slice | None = None, rows: Any = None) -> tuple[list[Any], np.ndarray]: ...
    def grad(self, name: str, *, steps: slice | None = None, rows: Any = None) -> tuple[list[str], np.ndarray]: ...
    def module_stat(self, name: str, layer: str, *, steps: slice | None = None, rows: Any = None) -> np.ndarray: ...
    def hist_edges(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray: ...
    def channel_index(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray: ...
    def wall_time(self) -> np.ndarray: ...
    def scalar(self, name: str) -> np.ndarray: ...
    def to_frame(self) -> Any: ...
    def refresh(self) -> None: ...
    def close(self) -> None: ...
