"""The numbers normviz figures show, computed with NumPy alone.

Renderers draw; this package computes. Everything here takes and returns NumPy
arrays (or reads a :class:`~normviz.store.reader.Run` through its public
methods), imports neither matplotlib, torch nor h5py, and can be tested against
hand computations. One module per job; every name is also importable from
``normviz.analysis`` itself (``from normviz import analysis; analysis.select_names(...)``).

===============  ==================================================================
module           its job
===============  ==================================================================
``drift``        covariate-shift drift between recorded steps (:func:`channel_drift`,
                 :func:`drift_sites`, how it is defined) and BatchNorm's batch-vs-running
                 mismatch (:func:`bn_mismatch`)
``percentiles``  lo/mid/hi bands of a percentile statistic (:func:`percentile_band`)
``heatmaps``     log-scaled matrices, shared log limits, cell edges
``rows``         which recorded rows to read (:func:`rows_for_steps`, :func:`pick_rows`,
                 :func:`forward_row`)
``divergence``   where a run or a scalar went non-finite
``series``       long series thinned for plotting (:func:`envelope`, :func:`block_mean`)
``layers``       layer order across runs and layer selection (:func:`select_names`)
``correlation``  Spearman's rank correlation
``ranks``        the ranks of a multi-rank run: pooled moments, each rank's BatchNorm
                 spread (:func:`~normviz.analysis.ranks.rank_spread`)
``findings``     the paper reproductions' findings, measured from a recorded run
                 (imported on demand: ``from normviz.analysis import findings``)
===============  ==================================================================
"""

from __future__ import annotations

from normviz.analysis.divergence import first_nonfinite, run_divergence, scalar_divergence
from normviz.analysis.drift import DriftSite, bn_mismatch, channel_drift, drift_sites, gaussian_symmetric_kl
from normviz.analysis.heatmaps import edges_from_centers, flow_matrix, log_limits
from normviz.analysis.layers import merged_order, select_names
from normviz.analysis.percentiles import Band, level_columns, percentile_band
from normviz.analysis.rows import forward_row, pick_rows, rows_for_steps
from normviz.analysis.series import Envelope, block_mean, envelope

__all__ = [
    "Band",
    "DriftSite",
    "Envelope",
    "block_mean",
    "bn_mismatch",
    "channel_drift",
    "drift_sites",
    "edges_from_centers",
    "envelope",
    "first_nonfinite",
    "flow_matrix",
    "forward_row",
    "gaussian_symmetric_kl",
    "level_columns",
    "log_limits",
    "merged_order",
    "percentile_band",
    "pick_rows",
    "rows_for_steps",
    "run_divergence",
    "scalar_divergence",
    "select_names",
]
