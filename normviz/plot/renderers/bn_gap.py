"""Built-in renderer ``bn-gap``: BatchNorm's train/eval gap (Wu & Johnson 2021), from the opt-in
statistic ``bn_running_gap`` of a run and of its eval series (:meth:`normviz.Recorder.evaluating`).

A BatchNorm normalizes each training batch with that batch's statistics and an eval batch
with running averages (EMA). Three panels (several runs: one colour per run):

1. per BatchNorm, by depth, the mean over channels of |μ_batch − μ_reference| / σ_reference
   over the last ``last`` fraction of rows: training batches against the EMA before each
   update (solid), eval batches against the EMA (series ``eval``, dashed) and against
   population statistics (series ``precise``, :func:`normviz.precise_bn`, dotted). The
   sampling part shrinks as 1/√B; an EMA gap far above the population one is the EMA
   lagging the weights;
2. over training, the same gaps of one BatchNorm (``layer``; default the deepest);
3. over training, that BatchNorm's eval-mode output against its training-mode output: the
   mean over channels of |μ_eval − μ_train| / σ_train, per eval series. What the next
   layer sees at evaluation, against what it was trained on.

Runs of different lengths share the x axis as the fraction of training (step / last step).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz.analysis.bn_gap import STAT, bn_layers, gap, mean_gaps, output_shift, series_names
from normviz.errors import MissingDataError
from normviz.plot import common

#: The sources of a gap: (eval series or None for training, line style, legend text).
SOURCES: tuple[tuple[str | None, Literal["-", "--", ":"], str], ...] = (
    (None, "-", "training batches vs EMA"),
    ("eval", "--", "eval batches vs EMA (series eval)"),
    ("precise", ":", "eval batches vs population (series precise)"),
)


def _read(run: Any, layer: str | None, last: float) -> dict[str, Any]:
    layers = bn_layers(run)
    if not layers:
        raise MissingDataError(f"{run.path}: no {STAT!r} in this run: it is opt-in (Recorder(statistics=[{STAT!r}]) "
                               f"or normviz record --stat {STAT}) and needs BatchNorm layers", statistic=STAT)
    chosen = layers[-1] if layer is None else layer
    if chosen not in layers:
        raise MissingDataError(f"{run.path}: {chosen!r} has no {STAT!r}; BatchNorm layers: {layers}", statistic=STAT)
    have = set(series_names(run))
    out: dict[str, Any] = {"layers": layers, "layer": chosen, "depth": {}, "over": {}, "shift": {}}
    end = max(float(run.steps[-1]) if len(run.steps) else 1.0, 1.0)
    for series, _, _ in SOURCES:
        if series is not None and series not in have:
            continue
        out["depth"][series] = np.array(list(mean_gaps(run, series, last=last).values()))
        steps, values = gap(run, chosen, series)
        out["over"][series] = (np.asarray(steps, dtype=np.float64), values[:, 0])
        if series is not None:
            steps, shift = output_shift(run, chosen, series)
            out["shift"][series] = (np.asarray(steps, dtype=np.float64), shift)
    out["end"] = end
    return out


def draw(runs: Any, fig: Figure, *, layer: str | None = None, last: float = 0.5) -> Figure:
    """Draw the BatchNorm train/eval gap of ``runs`` into ``fig``.

    Options: ``layer`` (the BatchNorm of panels 2 and 3; default the deepest), ``last``
    (the fraction of the last rows panel 1 averages, default 0.5).
    """
    runs = common.as_runs(runs)
    if not 0 < float(last) <= 1:
        raise ValueError(f"bn-gap: last must be in (0, 1], got {last!r}")
    data = [_read(run, layer, float(last)) for run in runs]
    looks = common.run_looks(runs)
    common.fit_rows(fig, 3)
    ax_d, ax_t, ax_s = fig.subplots(3, 1)
    # Runs of one length keep their steps; otherwise each is drawn over its fraction of training.
    same_length = len({d["end"] for d in data}) == 1
    order = common.depth_order([d["layers"] for d in data])
    names = sorted(order, key=order.__getitem__)
    any_eval = False
    for run, d, look in zip(runs, data, looks):
        scale = 1.0 if same_length else d["end"]
        x_depth = [order[n] for n in d["layers"]]
        for series, style, _ in SOURCES:
            if series not in d["depth"]:
                continue
            tag = f"{run.label}:{series or 'train'}"
            ax_d.plot(x_depth, d["depth"][series], color=look.color, linestyle=style, marker=look.marker,
                      gid=f"{STAT}_depth:{tag}")
            steps, values = d["over"][series]
            common.line(ax_t, steps / scale, values, color=look.color, linestyle=style, gid=f"{STAT}:{tag}")
            if series is not None:
                any_eval = True
                steps, shift = d["shift"][series]
                ax_s.plot(steps / scale, shift, color=look.color, linestyle=style, marker=".",
                          gid=f"output_shift:{tag}")
    ax_d.set_ylabel("|Δμ| / σ")
    common.depth_ticks(ax_d, names, 12)
    focus = data[0]["layer"] if len({d["layer"] for d in data}) == 1 else "the deepest BatchNorm"
    ax_t.set_ylabel("|Δμ| / σ")
    for ax in (ax_d, ax_t):
        if common.positive(common.drawn_values(ax)):
            ax.set_yscale("log")
    titles = [(ax_d, f"batch vs reference statistics per BatchNorm, mean of the last {float(last):.0%} of rows", ""),
              (ax_t, f"{focus} over training", "")]
    if any_eval:
        titles.append((ax_s, f"{focus}: eval-mode output vs training-mode output", ""))
        ax_s.set_ylabel("|μ_eval − μ_train| / σ_train")
        if common.wants_log(common.drawn_values(ax_s), ratio=10.0):
            ax_s.set_yscale("log")
    else:
        common.no_data(ax_s, "no eval passes recorded: mark them with Recorder.evaluating()\n"
                             "(script mode: forwards of the model in eval mode)")
    for ax in (ax_t, ax_s):
        if same_length:
            common.step_axis(ax)
        else:
            ax.set_xlabel("fraction of training")
    handles, labels = ([], []) if len(runs) == 1 else common.look_handles(looks)
    for series, style, text in SOURCES:
        if any(series in d["depth"] for d in data):
            handles.append(Line2D([], [], color="0.3", linestyle=style))
            labels.append(text)
    common.figure_legend(fig, handles, labels, title=common.legend_title(runs) if len(runs) > 1 else None)
    common.figure_title(fig, "BatchNorm train/eval gap", runs)
    common.wrap_titles_to_panels(fig, titles)
    return fig
