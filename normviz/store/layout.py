"""The layout of a run: which layers, sites and statistics its rows hold.

The recorder freezes a :class:`Layout` at the first recorded step (once every
layer has been seen); the writer creates every dataset from it before the first
row, and stores it as JSON in the file so the reader knows which columns of a
flat ``[steps, width]`` dataset belong to which site or layer.
"""

from __future__ import annotations

import json
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

    @property
    def key(self) -> str:
        return f"{self.layer}|{self.role}|{self.call}"


@dataclass
class StatEntry:
    """One dataset of the file and where its columns come from in a step's vectors.

    ``group`` is ``act`` (rows index sites), ``module`` (rows index layers) or ``grad``
    (one column per layer with parameters). ``vec`` names the step vector the
    values travel in (``f4`` or ``f8``) and ``start`` where they begin there.
    """

    group: str
    name: str
    dtype: str
    rows: list[int]
    offsets: list[int]
    vec: str = "f4"
    start: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.offsets[-1]


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

    def vector_sizes(self) -> dict[str, int]:
        """Length of each step vector."""
        sizes = {"f4": 0, "f8": 0}
        for st in self.stats:
            sizes[st.vec] = max(sizes[st.vec], st.start + st.width)
        return sizes

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(
            layers=[LayerEntry(**d) for d in raw["layers"]],
            sites=[SiteEntry(**d) for d in raw["sites"]],
            stats=[StatEntry(**d) for d in raw["stats"]],
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
