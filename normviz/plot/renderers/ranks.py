"""Built-in renderer ``ranks``: how far each rank's BatchNorm batch statistics are from the global batch's.

Under DDP every rank normalizes with the mean and variance of its own slice of
the batch. This figure draws, for the BatchNorm layers of multi-rank runs
(:mod:`normviz.merge`):

1. per layer, over training, the distance of the statistics each rank
   normalizes with from the pooled (global-batch) ones: mean over channels of
   |m_r − m| / sqrt(v) (left) and of |log(v_r / v)| (right), averaged over
   ranks. A SyncBatchNorm layer normalizes with the pooled statistics, so its
   line lies at 0; the rank-local statistics of its input — what BatchNorm
   would have used on the same data — are drawn dotted beside it;
2. that distance for each layer, its mean over training with its spread over
   the recorded steps (± 1 sd; drawn by seaborn from a tidy frame of the steps;
   hollow: a SyncBatchNorm layer's rank-local statistics), against the values
   each channel statistic averages over on one rank (numel / channels: the
   per-rank batch size times the spatial size), with the value expected for
   independent values, sqrt(2 (W − 1) / (π W n)), dashed: real activations are
   correlated within a sample, so small per-rank batches are worse than n says;
3. a check measured from the module state: how much the ranks' running means
   disagree after each step (mean over channels of |rm_r − rm| / sqrt(rv)).
   DDP re-broadcasts rank 0's buffers at each forward, so BatchNorm ranks differ
   by the momentum times their last batch's difference; SyncBatchNorm ranks
   update with the same global statistics and agree exactly.

Runs of a single process are left out; with no multi-rank run the renderer
raises :class:`~normviz.errors.MissingDataError`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

if TYPE_CHECKING:
    from normviz.merge import MergedRun, RankSpread


def _floor(ax: Any) -> None:
    """A y axis from just below 0, so that lines at exactly 0 (SyncBatchNorm) stay visible."""
    top = max(ax.get_ylim()[1], 1e-6)
    ax.axhline(0, color="0.85", linewidth=0.5, zorder=0)
    ax.set_ylim(-0.04 * top, top)


def _bn_layers(run: MergedRun, layers: str | None) -> list[str]:
    names = [lay.name for lay in run.layers if lay.kind == "batch"]
    return analysis.select_names(names, layers)


def _spread_frame(merged: list[Any], spreads: list[list[RankSpread]], shown: list[str]) -> pd.DataFrame:
    """Tidy rows (run, layer, n = values per channel per rank, one recorded step's spread
    |m_r − m| / σ averaged over ranks, and whether it is the rank-local one of a SyncBatchNorm
    layer) of the layers shown."""
    rows = []
    for run, sp in zip(merged, spreads):
        for s in sp:
            if s.layer not in shown:
                continue
            n = float(np.nanmean(s.values_per_channel))
            series = [(False, s.used_mean)] + ([(True, s.input_mean)] if s.synced else [])
            for local, values in series:
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a step with no value on any rank
                    per_step = np.nanmean(values, axis=1)
                rows += [{"run": run.label, "layer": s.layer, "n": n, "spread": float(v), "local": local}
                         for v in per_step if np.isfinite(v)]
    return pd.DataFrame(rows, columns=["run", "layer", "n", "spread", "local"])


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 3,
) -> Figure:
    """Draw the per-rank spread of BatchNorm batch statistics into ``fig``.

    Options: ``layers`` (glob over layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (BatchNorm layers drawn over training).
    """
    # Imported here: normviz.merge imports the run-file reader (h5py), which drawing modules leave to callers.
    from normviz.merge import MergedRun, merge_ranks, rank_spread

    given = common.as_runs(runs)
    merged = [r for r in merge_ranks(given) if isinstance(r, MergedRun) and len(r.ranks) > 1]
    if not merged:
        raise MissingDataError(  # no paths, no count: said once for every experiment it skips
            "ranks: every run has a single rank; record each torchrun rank with normviz.distributed.rank_path "
            "to compare ranks"
        )
    merged = common.sort_runs(merged)
    looks = common.run_looks(merged)
    names = [_bn_layers(run, layers) for run in merged]
    shown = analysis.select_names(analysis.merged_order(names), None, max_layers)
    # Only the layers drawn are measured: each costs a read of every rank's statistics.
    spreads: list[list[RankSpread]] = []
    for run, run_names in zip(merged, names):
        rows = common.step_rows(run, steps)
        spreads.append([rank_spread(run, name, steps=rows) for name in run_names if name in shown])
    if not shown:
        raise MissingDataError("ranks: no BatchNorm layer" + (f" matches {layers!r}" if layers else "")
                               + " in " + ", ".join(r.label for r in merged))
    heights = [0.42] * len(shown) + [0.6]
    common.fit_rows(fig, 1, row_ratio=sum(heights) + 0.15, panel_rows=0.3 + len(heights))
    # A thin heading row above each BatchNorm's pair of panels names the layer across both.
    ratios = [h for height in heights[:-1] for h in (common.HEADING_RATIO, height)] + heights[-1:]
    grid = fig.add_gridspec(len(ratios), 2, height_ratios=ratios)
    top = None
    for i, name in enumerate(shown):
        kind = next((lay.module_type for lay in merged[0].layers if lay.name == name), "")
        common.heading_row(fig, grid[2 * i, :], f"{name or '(root)'} {kind}".strip())
        axes = [fig.add_subplot(grid[2 * i + 1, 0], sharex=top), fig.add_subplot(grid[2 * i + 1, 1], sharex=top)]
        top = top or axes[0]
        for run, look, sp in zip(merged, looks, spreads):
            s = next((x for x in sp if x.layer == name), None)
            if s is None:
                continue
            x = np.asarray(s.steps, dtype=np.float64)
            for ax, used, local in ((axes[0], s.used_mean, s.input_mean), (axes[1], s.used_var, s.input_var)):
                ax.plot(x, np.nanmean(used, axis=1), color=look.color, linestyle=look.linestyle, linewidth=1.0,
                        gid=f"used:{run.label}:{name}")
                if s.synced:
                    ax.plot(x, np.nanmean(local, axis=1), color=look.color, linestyle=":", linewidth=0.8,
                            alpha=0.8, gid=f"local:{run.label}:{name}")
        axes[0].set_title("batch mean:\n|m_r − m| / σ", loc="left", fontsize="small")
        axes[1].set_title("batch variance:\n|log(v_r / v)|", loc="left", fontsize="small")
        for ax in axes:
            _floor(ax)
            if i == len(shown) - 1:
                common.step_axis(ax)
            else:
                ax.tick_params(labelbottom=False)
    # Spread against the values per channel per rank: each layer's mean over training, with
    # its spread over the recorded steps (± 1 sd), drawn by seaborn from a tidy frame.
    ax = fig.add_subplot(grid[-1, 0])
    frame = _spread_frame(merged, spreads, shown)
    ns = sorted(set(frame["n"])) if len(frame) else []
    for hollow in (False, True):
        part = frame[frame["local"] == hollow]
        if not len(part):
            continue
        before = set(ax.get_lines())
        sns.lineplot(
            data=part, x="n", y="spread", hue="run", style="run", ax=ax, estimator="mean", errorbar="sd",
            err_style="bars", err_kws={"elinewidth": 0.6, "capsize": 0}, linestyle="", markersize=4,
            palette={run.label: look.color for run, look in zip(merged, looks)},
            markers={run.label: look.marker for run, look in zip(merged, looks)}, dashes=False, legend=False,
        )
        for line in set(ax.get_lines()) - before:
            line.set_gid("size-local" if hollow else "size")
            line.set_markeredgecolor(line.get_color())
            if hollow:  # hollow: what a SyncBatchNorm layer's ranks would have normalized with alone
                line.set_markerfacecolor("none")
    world = max(r.world_size for r in merged)
    if ns:
        grid_n = np.geomspace(min(ns) / 1.5, max(ns) * 1.5, 50)
        ax.plot(grid_n, np.sqrt(2 * (world - 1) / (np.pi * world * grid_n)), color="0.5", linestyle="--",
                linewidth=0.8, gid="iid")
    ax.set_xscale("log")
    _floor(ax)
    ax.set_xlabel("values per channel\nper rank (numel / C)")
    ax.set_ylabel("mean |m_r − m| / σ")
    ax.set_title("spread vs per-rank batch", loc="left", fontsize="small")
    spread_ax = ax
    # Running means after each step: measured agreement between ranks.
    ax = fig.add_subplot(grid[-1, 1])
    for run, look, sp in zip(merged, looks, spreads):
        vals = [np.nanmean(s.running_mean, axis=1) for s in sp
                if s.layer in shown and np.isfinite(s.running_mean).any()]
        if not vals:
            continue
        x = np.asarray(sp[0].steps, dtype=np.float64)
        ax.plot(x, np.mean(vals, axis=0), color=look.color, linestyle=look.linestyle, linewidth=1.0,
                gid=f"running:{run.label}")
    _floor(ax)
    running_title = "ranks' running means disagree by"
    ax.set_title(running_title, loc="left", fontsize="small")
    running_ax = ax
    ax.set_ylabel("|rm_r − rm| / σ")
    common.step_axis(ax)
    handles, labels = common.look_handles(looks)
    if any(s.synced for sp in spreads for s in sp):
        handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=0.8))
        labels.append("SyncBN: rank-local input")
    handles.append(Line2D([], [], color="0.5", linestyle="--", linewidth=0.8))
    labels.append("independent values")
    common.figure_legend(fig, handles, labels, title=common.legend_title(merged), ncols=2)
    common.figure_title(fig, f"per-rank BatchNorm statistics ({world} ranks)", merged)
    common.wrap_titles_to_panels(fig, [(running_ax, running_title, ""), (spread_ax, "spread vs per-rank batch", "")])
    return fig
