"""Rotational equilibrium (Kosson et al. 2024): the angle by which each optimizer step turns a
scale-invariant weight, against the equilibrium the optimizer's hyperparameters predict.

A weight whose output a norm layer normalizes is scale-invariant: weight decay shrinks it,
the (orthogonal) gradient steps grow it, and the two settle where each step turns it by
a fixed angle — for torch's SGD with momentum α and L2 weight decay λ at learning rate η,
sqrt(2ηλ / (1 + α)); for AdamW (decoupled decay), sqrt(2ηλ (1 − β₁) / (1 + β₁)). Other
optimizers have no prediction here. NumPy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["equilibrium_angle", "layer_hyperparameters", "predicted_angles", "rotation_findings",
           "scale_invariant_layers"]


def equilibrium_angle(optimizer: str, lr: float, weight_decay: float, *, momentum: float = 0.0,
                      beta1: float = 0.9) -> float:
    """The predicted angular update per step (radians) of a scale-invariant weight, or NaN."""
    if not (lr > 0 and weight_decay > 0):
        return math.nan
    if optimizer == "SGD":
        return math.sqrt(2 * lr * weight_decay / (1 + momentum))
    if optimizer == "AdamW":
        return math.sqrt(2 * lr * weight_decay * (1 - beta1) / (1 + beta1))
    return math.nan


def scale_invariant_layers(run: Any) -> list[str]:
    """The recorded layers whose output a norm layer normalizes (their weights are scale-invariant)."""
    return list((run.meta.get("feeds_norm") or {}).keys())


def layer_hyperparameters(run: Any, layer: str) -> tuple[str, int, dict[str, Any]] | None:
    """(optimizer class, group index, that group's hyperparameters) of the group stepping ``layer``."""
    opt = run.meta.get("optimizer") or {}
    for g, group in enumerate(opt.get("groups", [])):
        if layer in group.get("layers", []):
            return opt.get("class", ""), g, group
    return None


def predicted_angles(run: Any, layer: str, rows: slice | None = None) -> np.ndarray:
    """The predicted equilibrium angle of ``layer`` at each recorded step (the group's learning rate
    at that step, the other hyperparameters as they were at the first recorded step)."""
    steps = np.asarray(run.steps if rows is None else run.steps[rows])
    found = layer_hyperparameters(run, layer)
    if found is None:
        return np.full(len(steps), np.nan)
    kind, g, group = found
    name = "lr" if g == 0 else f"lr/{g}"
    if name in run.scalar_names:
        at = {int(s): v for s, v in zip(run.scalar_steps, run.scalar(name))}
        lrs = np.array([at.get(int(s), np.nan) for s in steps], dtype=np.float64)
    else:
        lrs = np.full(len(steps), float(group.get("lr", np.nan)))
    betas = group.get("betas") or [0.9, 0.999]
    return np.array([equilibrium_angle(kind, float(lr), float(group.get("weight_decay", 0.0)),
                                       momentum=float(group.get("momentum", 0.0)), beta1=float(betas[0]))
                     for lr in lrs])


def _window(steps: np.ndarray, values: np.ndarray, lo: float, hi: float) -> float:
    keep = (steps >= lo) & (steps < hi) & np.isfinite(values)
    return float(values[keep].mean()) if keep.any() else math.nan


def rotation_findings(run: Any, *, window: int = 100, early: int = 500) -> dict[str, dict[str, float]]:
    """Per scale-invariant layer: the measured angle over the first and the last ``window``
    training steps and at ``early`` (window means), and their ratios to the prediction."""
    names, angle = run.grad("update_angle")
    steps = np.asarray(run.steps, dtype=np.float64)
    last = float(steps[-1]) + 1
    out = {}
    for layer in scale_invariant_layers(run):
        if layer not in names:
            continue
        measured = np.asarray(angle[:, names.index(layer)], dtype=np.float64)
        predicted = predicted_angles(run, layer)
        out[layer] = {
            "first": _window(steps, measured, 0, window),
            "early": _window(steps, measured, early, early + window),
            "last": _window(steps, measured, last - window, last),
            "predicted_last": _window(steps, predicted, last - window, last),
            "predicted_first": _window(steps, predicted, 0, window),
        }
        entry = out[layer]
        entry["ratio_last"] = entry["last"] / entry["predicted_last"]
        entry["ratio_first"] = entry["first"] / entry["predicted_first"]
    return out
