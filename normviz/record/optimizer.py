"""What the file is told about the optimizer: its class, and per parameter group the layers it
steps and the hyperparameters the rotational-equilibrium prediction needs (read on the host
from ``param_groups``; no tensor is read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Hyperparameters kept per group (when the group has them as numbers).
KEPT = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "betas", "eps")


def _plain(value: Any) -> Any:
    """A JSON-able copy of a hyperparameter, or None (tensors and others are not read)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


def describe_optimizer(optimizer: torch.optim.Optimizer, layer_of: Mapping[int, str]) -> dict[str, Any]:
    """``{"class": name, "groups": [{"layers": [...], hyperparameters...}, ...]}``; ``layer_of``
    maps ``id(parameter)`` to its recorded layer (parameters of other layers are left out)."""
    groups = []
    for group in optimizer.param_groups:
        layers: dict[str, None] = {}
        for p in group["params"]:
            name = layer_of.get(id(p))
            if name is not None:
                layers[name] = None
        entry: dict[str, Any] = {"layers": list(layers)}
        for key in KEPT:
            value = _plain(group.get(key))
            if value is not None:
                entry[key] = value
        groups.append(entry)
    return {"class": type(optimizer).__name__, "groups": groups}


def group_lrs(optimizer: torch.optim.Optimizer) -> list[Any]:
    """Each parameter group's current learning rate (a number, or a tensor left unread)."""
    return [group.get("lr") for group in optimizer.param_groups]
