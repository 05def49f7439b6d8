"""BatchNorm's train/eval gap (Wu & Johnson 2021) from a run and its eval series.

A BatchNorm trains with each batch's statistics and evaluates with running averages (EMA).
``bn_running_gap`` measures the distance between the two at each BatchNorm input: in the
training run against the running statistics before each update, in an eval series
(:meth:`normviz.Recorder.evaluating`) against the statistics that series normalizes with —
the EMA (``eval``), population statistics (``precise``, :func:`normviz.precise_bn`). The
sampling part shrinks as 1/√B; what stays at a large batch is the EMA lagging moving
weights. :func:`output_shift` compares the eval-mode output distribution with the training
one. NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from normviz.analysis.findings import last_finite
from normviz.errors import MissingDataError

__all__ = ["STAT", "bn_gap_findings", "bn_layers", "gap", "mean_gaps", "output_shift", "series_names",
           "wu_johnson_findings"]

STAT = "bn_running_gap"


def bn_layers(run: Any) -> list[str]:
    """The layers whose input has ``bn_running_gap`` recorded (the BatchNorms), in model order."""
    entry = run.layout.stat("act", STAT)
    if entry is None:
        return []
    return list(dict.fromkeys(run.sites[r].layer for r in entry.rows))


def series_names(run: Any) -> list[str]:
    """The eval series of ``run`` (none for a run read without them, e.g. merged rank files)."""
    names = getattr(run, "eval_series", None)
    return list(names()) if callable(names) else []


def gap(run: Any, layer: str, series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, [rows, 2] gaps: mean |Δμ|/σ and mean |Δ log σ²|) of ``layer`` in the training run,
    or in its eval series ``series``."""
    source = run if series is None else run.eval(series)
    return source.steps, np.asarray(source.stat(STAT, layer, "input"), dtype=np.float64)


def output_shift(run: Any, layer: str, series: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """(steps of the eval series, mean over stored channels of |μ_eval − μ_train| / σ_train) of
    ``layer``'s output: the eval pass's output distribution against the training forward's at the
    last recorded training step at or before it (NaN before the first)."""
    ev = run.eval(series)
    steps = ev.steps
    mean_e = np.asarray(ev.stat("channel_mean", layer, "output"), dtype=np.float64)
    mean_t = np.asarray(run.stat("channel_mean", layer, "output"), dtype=np.float64)
    std_t = np.sqrt(np.asarray(run.stat("channel_var", layer, "output"), dtype=np.float64))
    at = np.searchsorted(run.steps, steps, side="right") - 1
    out = np.full(len(steps), math.nan)
    ok = at >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.abs(mean_e[ok] - mean_t[at[ok]]) / std_t[at[ok]]
    out[ok] = np.nanmean(np.where(np.isfinite(shift), shift, np.nan), axis=1) if ok.any() else []
    return steps, out


def mean_gaps(run: Any, series: str | None = None, *, last: float = 1.0) -> dict[str, float]:
    """Per BatchNorm layer, the mean gap |Δμ|/σ over the last ``last`` fraction of the rows of the
    training run, or of its eval series ``series`` (NaN for a layer with no finite value there)."""
    out = {}
    for layer in bn_layers(run):
        _, values = gap(run, layer, series)
        keep = values[-max(1, int(round(len(values) * last))):, 0]
        out[layer] = float(np.nanmean(keep)) if np.isfinite(keep).any() else math.nan
    return out


def bn_gap_findings(run: Any, *, last: float = 1.0) -> dict[str, Any]:
    """Per BatchNorm layer, the mean gap |Δμ|/σ over the last ``last`` fraction of rows of the
    training run (``train``) and of each eval series; the last value of each ``test_acc_*`` scalar."""
    layers = bn_layers(run)
    sources: dict[str, Any] = {"train": None, **{name: name for name in series_names(run)}}
    found: dict[str, Any] = {"layers": layers, "gap": {}, "acc": {}}
    for label, series in sources.items():
        try:
            found["gap"][label] = mean_gaps(run, series, last=last)
        except MissingDataError:  # a series recorded without the statistic
            found["gap"][label] = {}
    for name in run.scalar_names:
        if name.startswith("test_acc_"):
            found["acc"][name[len("test_acc_"):]] = last_finite(run.scalar(name))
    return found


def wu_johnson_findings(runs: Sequence[Any]) -> dict[str, Any]:
    """The T13 numbers from ``wu-johnson-bn`` runs (batch size and schedule from their meta), per
    schedule: the first BatchNorm's batch-vs-population gap at the smallest batch over the
    largest (1/√B predicts √(B_max/B_min)), and per batch size the final accuracies with the EMA,
    PreciseBN and each batch's own statistics, and the last BatchNorm's EMA and population gaps."""
    out: dict[str, Any] = {}
    for run in runs:
        user = run.meta.get("user", {})
        batch, schedule = int(user["batch"]), str(user["schedule"])
        f = bn_gap_findings(run)
        first, deepest = f["layers"][0], f["layers"][-1]
        entry = out.setdefault(schedule, {"batches": {}})
        entry["batches"][batch] = {
            "acc_ema": f["acc"].get("ema", math.nan), "acc_precise": f["acc"].get("precise", math.nan),
            "acc_batch": f["acc"].get("batch", math.nan),
            "gap_first": f["gap"].get("precise", {}).get(first, math.nan),
            "gap_deepest_ema": f["gap"].get("eval", {}).get(deepest, math.nan),
            "gap_deepest_precise": f["gap"].get("precise", {}).get(deepest, math.nan),
        }
    for entry in out.values():
        sizes = sorted(entry["batches"])
        lo, hi = entry["batches"][sizes[0]], entry["batches"][sizes[-1]]
        entry["gap_ratio"] = lo["gap_first"] / hi["gap_first"]
        entry["predicted_ratio"] = math.sqrt(sizes[-1] / sizes[0])
    return out
