"""The fused core statistics, host side: what needs sorting, done in NumPy on the writer's thread.

:class:`~normviz.record.assemble.CoreAssembler` leaves placeholders in a recorded row for
the percentiles and histograms of each site's value sample, the percentiles over its
normalization groups, the non-finite count and the value count, and appends what
they are computed from to the row's float32 vector. :class:`RowFinisher` fills them
in, after the one host copy of the row, on the writer's thread: the training
thread never sorts. NumPy's sort releases the GIL and is 10-20x faster than
``torch.sort`` on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from normviz.record import stats as S
from normviz.record.core import HOST_FINISHED
from normviz.store import schema
from normviz.store.layout import Layout

if TYPE_CHECKING:
    from normviz.record.rows import Packing


def first_edges(vmin: np.ndarray, vmax: np.ndarray, bins: int = S.HIST_BINS) -> np.ndarray:
    """Histogram edges fixed at a layer's first recorded step: its range widened by 10%.

    [n] minima and maxima -> [n, bins + 1] float32 edges (a non-finite range gives [-1.1, 1.1]).
    """
    vmin = np.asarray(vmin, dtype=np.float32).reshape(-1, 1)
    vmax = np.asarray(vmax, dtype=np.float32).reshape(-1, 1)
    finite = np.isfinite(vmin) & np.isfinite(vmax)
    lo = np.where(finite, vmin, np.float32(-1.0))
    hi = np.where(finite, vmax, np.float32(1.0))
    pad = np.maximum((hi - lo) * np.float32(0.1), (np.abs(lo) + np.abs(hi)) * np.float32(1e-3) + np.float32(1e-6))
    steps = np.linspace(0.0, 1.0, bins + 1, dtype=np.float32)
    return ((lo - pad) + steps * ((hi + pad) - (lo - pad))).astype(np.float32)


def sorted_quantiles(srt: np.ndarray, n_valid: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Row-wise percentiles of row-sorted values whose first ``n_valid[i]`` entries are valid
    (NaN sorts last); NumPy's "linear" method. Rows without a valid value give NaN."""
    levels_arr = np.asarray(levels, dtype=np.float64)
    top = np.maximum(n_valid - 1, 0).astype(np.float64)[:, None]
    pos = levels_arr[None, :] / 100.0 * top
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, top.astype(np.int64))
    frac = pos - lo
    rows = np.arange(srt.shape[0])[:, None]
    a = srt[rows, lo].astype(np.float64)
    b = srt[rows, hi].astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: fixed just below
        q = a + (b - a) * frac
    q[np.isinf(a) & (a == b)] = a[np.isinf(a) & (a == b)]  # inf - inf would give NaN
    q[n_valid == 0] = np.nan
    return q


def sorted_histograms(srt: np.ndarray, n_valid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Row-wise histograms of row-sorted samples: [n, B+1] edges -> [n, B+2] counts of
    ``[e_i, e_{i+1})``, then values below ``e_0`` first and values ``>= e_B`` last; NaN not counted.

    ``below[i, j]`` (values < e_j) is found by one binary search run on every (row, edge)
    at once: a fixed ~log2(m) rounds of array ops whatever the number of sites, so the
    writer's thread holds the GIL for a few dozen NumPy calls, not a loop over sites.
    """
    n, m = srt.shape
    rows = np.arange(n)[:, None]
    lo = np.zeros(edges.shape, dtype=np.int64)
    hi = np.broadcast_to(n_valid[:, None], edges.shape).astype(np.int64)
    padded = np.concatenate([srt, np.zeros((n, 1), dtype=srt.dtype)], axis=1)  # mid may reach m
    for _ in range(max(1, int(m).bit_length())):
        mid = (lo + hi) // 2
        go_right = (padded[rows, mid] < edges) & (lo < hi)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(go_right | (lo >= hi), hi, mid)
    below = lo.astype(np.float64)
    return np.concatenate([below[:, :1], np.diff(below, axis=1), n_valid[:, None] - below[:, -1:]], axis=1)


class RowFinisher:
    """Unpacks recorded rows into the file's datasets, filling in the host-finished statistics
    (called on the writer's thread, once per flush for all the rows it publishes: sorting
    them together costs a few NumPy calls, whatever the number of rows and sites).

    *edges* are the [n_sites, HIST_BINS + 1] histogram edges stored in the file.
    """

    def __init__(self, layout: Layout, packing: Packing, edges: np.ndarray) -> None:
        self.n = len(layout.sites)
        self.edges = np.asarray(edges, dtype=np.float32)
        self.packing = packing
        self.slots = {
            st.name: st for st in layout.stats if st.group == schema.ACT and st.name in HOST_FINISHED
        }
        self.f4_width = packing.sizes["f4"]

    def __call__(self, rows: Sequence[tuple[np.ndarray, np.ndarray, tuple[Any, ...]]]) -> dict[str, np.ndarray]:
        """*rows* are (f4, f8, (group_sizes, numel)) as queued: f4 is the row's float32 vector
        followed by the host share of :class:`~normviz.record.assemble.DeviceBlocks`. Returns every
        dataset's block of the rows, ``{"<group>/<name>": [k, width]}``."""
        k = len(rows)
        f4 = np.stack([r[0][: self.f4_width] for r in rows])
        f8 = np.stack([r[1] for r in rows])
        parts = [split_host(r[0][self.f4_width :], self.n) for r in rows]
        sizes = [size for r in rows for size in r[2][0]]
        numel = [c for r in rows for c in r[2][1]]
        values = host_values(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            sizes,
            numel,
            np.tile(self.edges, (k, 1)),
            tuple(self.slots),
        )
        blocks = self.packing.unpack(f4, f8)
        for name, st in self.slots.items():
            per_row = values[name].reshape(k, -1, values[name].shape[-1])
            # Per-site values are indexed by site; group summaries already follow st.rows.
            block = (per_row if name in _PER_NORM_ROW else per_row[:, st.rows]).reshape(k, -1)
            vec = self.packing.slot(st)[0]
            # Through the dtype of the vector the statistic travels in, as if packed on the device.
            blocks[f"{st.group}/{st.name}"] = block.astype(np.float32 if vec == "f4" else np.float64)
        return blocks


def split_host(host: np.ndarray, n_sites: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The host share of one row: samples [n_sites, SAMPLE_SIZE], non-finite flags [n_sites],
    and the norm rows' group means and scales (flat)."""
    size = n_sites * S.SAMPLE_SIZE
    return host[:size].reshape(n_sites, S.SAMPLE_SIZE), host[size : size + n_sites], host[size + n_sites :]


def host_values(
    samples: np.ndarray, nonfinite: np.ndarray, groups: np.ndarray, group_sizes: Sequence[int],
    numel: Sequence[int | None], edges: np.ndarray, names: Sequence[str] = HOST_FINISHED,
) -> dict[str, np.ndarray]:
    """The host-finished statistics of any number of sites (of one row or many).

    *samples* [n, SAMPLE_SIZE], *nonfinite* [n] (non-zero, NaN included: some value of the
    site is not finite), *numel* [n] (None: the site did not run), *edges* [n, HIST_BINS + 1];
    *groups* holds each norm row's group means then group scales, ``group_sizes`` long.
    Per-site arrays have one row per site; ``group_mean`` / ``group_scale`` one row per
    norm row.
    """
    present = nonfinite != 0  # NaN != 0
    srt = np.sort(samples, axis=1)  # NaN last
    n_valid = (~np.isnan(samples)).sum(axis=1)
    missing = np.array([c is None for c in numel], dtype=bool)
    counts = np.array([np.nan if c is None else c for c in numel], dtype=np.float64)
    values: dict[str, np.ndarray] = {}
    if "percentiles" in names:
        values["percentiles"] = sorted_quantiles(srt, n_valid, S.PERCENTILE_LEVELS)
    if "hist" in names:
        hist = sorted_histograms(srt, n_valid, edges)
        hist[missing] = 0.0
        values["hist"] = hist
    if "nonfinite" in names:
        in_sample = (~np.isfinite(samples)).sum(axis=1)
        estimate = np.maximum(np.round(in_sample * (counts / S.SAMPLE_SIZE)), 1.0)
        values["nonfinite"] = np.where(missing, np.nan, np.where(present, estimate, 0.0))[:, None]
    if "numel" in names:
        values["numel"] = counts[:, None]
    if "group_mean" in names or "group_scale" in names:
        values["group_mean"], values["group_scale"] = _group_percentiles(groups, group_sizes)
    return values


_PER_NORM_ROW = ("group_mean", "group_scale")


def _group_percentiles(groups: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles at GROUP_LEVELS of each norm row's group means and group scales.

    *groups* holds, for each norm row with ``sizes[i] > 0``, its group means then its group
    scales. Returns two [len(sizes), len(GROUP_LEVELS)] arrays, one row per norm row (NaN
    for a row without groups). All series are padded with NaN into one matrix and sorted
    at once.
    """
    k = len(S.GROUP_LEVELS)
    out = np.full((2 * len(sizes), k), np.nan)
    series = np.repeat(np.asarray(sizes, dtype=np.int64), 2)  # mean and scale of each row
    if series.size and series.max() > 0:
        width = int(series.max())
        have = series > 0
        lengths = series[have]
        padded = np.full((lengths.size, width), np.nan, dtype=np.float32)
        padded[np.arange(width)[None, :] < lengths[:, None]] = groups[: int(lengths.sum())]
        n_valid = (~np.isnan(padded)).sum(axis=1)
        out[have] = sorted_quantiles(np.sort(padded, axis=1), n_valid, S.GROUP_LEVELS)
    return out[0::2], out[1::2]
