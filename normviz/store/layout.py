"""The layout of a run file: which layers, sites and statistics its datasets hold.

:func:`build_layout` turns what the recorder saw at the first recorded step (layers,
sites, the statistics each site computes, the module tensors and gradient layers) into
a :class:`Layout`: every dataset's group, dtype, attributes and column offsets. The
writer creates the datasets from it before the first row and stores it as JSON in
``/layout``, so the reader knows which columns of a flat ``[steps, width]`` dataset
belong to which site or layer. It describes the file only; how a row travels in
memory is the recorder's business (:mod:`normviz.record.rows`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerEntry:
    """A recorded module: a norm layer, a layer with parameters, or both."""

    name: str
    kind: str | None
    module_type: str
    channels: int | None
    calls: int = 1
    channel_dim: int = -1
    spec: dict[str, Any] | None = None
    grad_index: int | None = None
    n_params: int = 0


@dataclass
class SiteEntry:
    """A recorded tensor: a layer's input or output for one call per forward."""

    layer: str
    role: str
    call: int
    kind: str | None
    module_type: str
    channels: int
    channel_dim: int
    channel_index: list[int] | None = None  # None: every channel is stored
    # A rank's slice of a sharded tensor (schema 1.2): its channels are
    # channel_offset : channel_offset + channels of global_channels (None: the whole axis);
    # counted False: a replicated copy that another rank counts.
    channel_offset: int = 0
    global_channels: int | None = None
    counted: bool = True

    @property
    def key(self) -> str:
        return f"{self.layer}|{self.role}|{self.call}"


def kept_channels(total: int, max_channels: int) -> list[int]:
    """The channels of a ``total``-channel axis whose series a rank keeps when the axis is
    sharded (tensor parallel): ``max_channels`` evenly spaced ones, first and last included.
    The recorder and the merge both take them from here, so they agree."""
    keep = min(total, max_channels) if max_channels > 0 else total
    if keep <= 1:
        return [0][:keep]
    return sorted({int(round(i * (total - 1) / (keep - 1))) for i in range(keep)})


@dataclass
class StatEntry:
    """One dataset of the file: ``group`` is ``act`` (``rows`` index sites), ``module``
    (rows index layers) or ``grad`` (one column per layer with parameters); row ``i``'s
    columns are ``offsets[i]:offsets[i + 1]``."""

    group: str
    name: str
    dtype: str
    rows: list[int]
    offsets: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.offsets[-1]


#: Keys of schema 1.0's ``/layout`` that described the recorder's memory, not the file.
_PACKING_KEYS = ("vec", "start")


@dataclass
class Layout:
    """Everything needed to create, fill and read a run file's datasets."""

    layers: list[LayerEntry]
    sites: list[SiteEntry]
    stats: list[StatEntry]
    hist_bins: int
    sample_size: int
    percentile_levels: list[float]
    group_levels: list[float]
    max_channels: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(
            layers=[LayerEntry(**d) for d in raw["layers"]],
            sites=[SiteEntry(**d) for d in raw["sites"]],
            stats=[StatEntry(**{k: v for k, v in d.items() if k not in _PACKING_KEYS}) for d in raw["stats"]],
            hist_bins=raw["hist_bins"],
            sample_size=raw["sample_size"],
            percentile_levels=raw["percentile_levels"],
            group_levels=raw["group_levels"],
            max_channels=raw["max_channels"],
        )

    def stat(self, group: str, name: str) -> StatEntry | None:
        for st in self.stats:
            if st.group == group and st.name == name:
                return st
        return None


@dataclass(frozen=True)
class SiteStatistic:
    """A statistic as the recorder computes it: per site ``rows[i]``, ``widths[i]`` values."""

    name: str
    dtype: str
    description: str
    rows: list[int]
    widths: list[int]
    merge: str = "mean"  # how ranks combine it (Statistic.merge)


def _offsets(widths: list[int]) -> list[int]:
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    return offsets


def build_layout(
    layers: list[LayerEntry],
    sites: list[SiteEntry],
    site_stats: list[SiteStatistic],
    module_stats: dict[str, tuple[list[int], list[int]]],
    n_grad_layers: int,
    *,
    hist_bins: int,
    sample_size: int,
    percentile_levels: list[float],
    group_levels: list[float],
    max_channels: int,
    grad_stats: Sequence[str] | None = None,
    grad_partial_widths: dict[int, int] | None = None,
) -> Layout:
    """The file's layout: the site statistics (``act``, plus the output-gradient norm of
    every output site), the module tensors (``module``: name → layer rows and widths, in
    :data:`~normviz.store.schema.MODULE_STATS` order) and one column per layer with
    parameters for each gradient statistic (``grad``: ``grad_stats``, by default
    :data:`~normviz.store.schema.GRAD_STATS`; ``grad_partial_widths``: gradient column →
    how many partial-sum gradient values that layer has). A statistic without rows makes
    no dataset."""
    from normviz.store import schema

    if grad_stats is None:
        grad_stats = schema.GRAD_STATS

    entries: list[StatEntry] = []

    def add(group: str, name: str, dtype: str, rows: list[int], widths: list[int], attrs: dict[str, Any]) -> None:
        if rows:
            entries.append(StatEntry(group, name, dtype, rows, _offsets(widths), attrs))

    for s in site_stats:
        attrs: dict[str, Any] = {"description": s.description, "merge": s.merge}
        if s.name == "percentiles":
            attrs["levels"] = list(percentile_levels)
        if s.name in ("group_mean", "group_scale"):
            attrs["levels"] = list(group_levels)
        add(schema.ACT, s.name, s.dtype, s.rows, s.widths, attrs)
    out_rows = [i for i, site in enumerate(sites) if site.role == "output"]
    add(schema.ACT, "output_grad_norm", "float32", out_rows, [1] * len(out_rows), {"description": "‖∂L/∂output‖"})
    for name in schema.MODULE_STATS:
        rows, widths = module_stats.get(name, ([], []))
        add(schema.MODULE, name, "float32", rows, widths, {})
    for name in grad_stats:
        add(schema.GRAD, name, "float32", list(range(n_grad_layers)), [1] * n_grad_layers, {})
    if grad_partial_widths:
        rows = sorted(grad_partial_widths)
        add(schema.GRAD, schema.GRAD_PARTIAL_VALUES, "float32", rows, [grad_partial_widths[r] for r in rows],
            {"description": "this rank's unreduced partial gradient values (Partial placement)"})
    return Layout(
        layers=layers,
        sites=sites,
        stats=entries,
        hist_bins=hist_bins,
        sample_size=sample_size,
        percentile_levels=list(percentile_levels),
        group_levels=list(group_levels),
        max_channels=max_channels,
    )
