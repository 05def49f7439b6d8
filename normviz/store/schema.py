"""The on-disk schema of a normviz run file: every name and version in one place.

Prose specification: ``docs/schema.md``. A run file is one HDF5 file:

``/``                      attrs ``schema``, ``schema_version``, ``normviz_version``, ``created_utc``,
                           ``meta`` (JSON: label, experiment, norm kind, rank, options, versions, ...)
``/layout``                uint8 JSON text: layers, sites, statistics, scalar capacity (see :class:`Layout`)
``/status``                int64 [3]: clean close flag, last recorded step, steps seen
``/steps/step``            int64 [S]: the training step of each recorded row (the commit marker)
``/steps/wall_time``       float64 [S]
``/scalars/step``          int64 [T]: every training step
``/scalars/values``        float64 [T, K]: one column per scalar name (NaN where absent)
``/scalars/names``         S128 [K]: column names, "" for free columns
``/act/<stat>``            float32 [S, W]: site statistics, the sites' columns side by side
``/act/hist_edges``        float32 [n_sites, HIST_BINS + 1]
``/grad/<stat>``           float32 [S, L]: one column per layer with parameters
``/module/<stat>``         float32 [S, W]: module tensors (γ, β, running statistics), side by side

Which columns of a flat ``[S, W]`` dataset belong to which site or layer is in
``/layout`` (offsets), written once before any row.
"""

from __future__ import annotations

SCHEMA_NAME = "normviz.run"
#: Bumped in its minor version at every change; every earlier version stays readable
#: (archived files of each: tests/data/schema-<version>/).
#: 1.1: ``/layout`` describes the file only (no in-memory packing fields ``vec``, ``start``).
#: 1.2: a sharded model's (DTensor) files add the partial sums :data:`GRAD_PARTIAL_STATS`
#: and ``meta["sharding"]`` (device mesh, placements); recomputed forwards are not recorded.
#: 1.3: ``/act/rms_kurtosis``, ``/grad/update_angle`` (and the partial sum ``weight_after_sumsq``);
#: each ``act`` statistic's ``merge`` attribute; ``meta["optimizer"]``, ``meta["feeds_norm"]``.
#: 1.4: eval series: run files beside a run's (``<run>.eval.h5``, ``<run>.eval-<name>.h5``;
#: :mod:`normviz.store.series`) holding its marked eval passes, with ``meta["series"]`` and
#: ``meta["series_of"]`` and no ``/grad`` datasets.
SCHEMA_VERSION = "1.4"
SCHEMA_MAJOR = 1

LAYOUT = "layout"
STATUS = "status"
STEPS = "steps"
STEP = "steps/step"
WALL_TIME = "steps/wall_time"
SCALAR_STEP = "scalars/step"
SCALAR_VALUES = "scalars/values"
SCALAR_NAMES = "scalars/names"
HIST_EDGES = "act/hist_edges"

ACT = "act"
GRAD = "grad"
MODULE = "module"
GROUPS: tuple[str, ...] = (ACT, GRAD, MODULE)

#: Status vector slots.
STATUS_CLEAN, STATUS_LAST_STEP, STATUS_STEPS_SEEN = 0, 1, 2

#: Scalar columns reserved up front (datasets cannot be added once SWMR is on).
SCALAR_CAPACITY = 64
SCALAR_NAME_BYTES = 128

#: Module tensors recorded per norm layer after each recorded step.
MODULE_STATS: tuple[str, ...] = ("weight", "bias", "running_mean", "running_var")

#: Gradient statistics, one value per layer with parameters.
GRAD_STATS: tuple[str, ...] = (
    "grad_norm", "grad_abs_mean", "grad_abs_max", "weight_norm", "update_ratio", "update_angle",
)
#: The additive partial sums of a sharded model's layers (each rank: its local shards, a
#: replicated tensor counted on one rank only), which the merge sums over the ranks' files.
GRAD_PARTIAL_STATS: tuple[str, ...] = (
    "grad_sumsq", "grad_abs_sum", "grad_count", "grad_nonfinite", "weight_sumsq", "update_sumsq", "weight_after_sumsq",
)
#: A sharded model's gradients that hold unreduced partial sums on each rank (``Partial``
#: placement, e.g. a sequence-parallel norm's weight): the rank's values themselves, each
#: layer's side by side; the merge adds the ranks' vectors and then takes norms.
GRAD_PARTIAL_VALUES = "grad_partial_values"
