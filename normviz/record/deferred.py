"""Channel-vector arithmetic left to the end of a recorded step, done for every site at once.

A hook's job is the passes over a whole activation; what follows them is arithmetic on
channel vectors (a variance from a normalization kernel's 1/std, a BatchNorm's output
statistics from its input's), a dozen small ops per site. Each is one kernel launch on a
GPU and a few microseconds of dispatch on a CPU, whatever the vector's length. Kept as
recipes here, they are computed at the end of the step for every site together
(:func:`settle`): the same arithmetic on concatenated vectors, a fixed handful of ops per
step instead of per site. A recipe read before that (by a statistic plugin, or a site
observing the same tensor) is computed alone, with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch


def var_from_invstd(invstd: torch.Tensor, eps: torch.Tensor | float, zero_is_constant: bool = False) -> torch.Tensor:
    """The variance 1/invstd² − eps (≥ 0) behind a normalization kernel's inverse std.

    A constant channel or row (eps = 0) has invstd inf, so variance 0; invstd 0 is a variance
    that overflowed, so inf — except from PyTorch's batch-norm statistics kernel, which reports
    a constant channel as invstd 0 (``zero_is_constant``). NaN stays NaN."""
    var = invstd.pow(-2)
    if zero_is_constant:
        var = torch.nan_to_num(var, nan=math.nan, posinf=0.0)
    if isinstance(eps, torch.Tensor) or eps != 0.0:
        var = (var - eps).clamp_min(0.0)
    return var


class FromInvStd:
    """A variance 1/invstd² − eps, or (``root=True``) the standard deviation, not yet computed;
    given the ``mean`` too, the root mean square sqrt(variance + mean²) (an RMSNorm's scale)."""

    __slots__ = ("invstd", "eps", "root", "mean", "zero_is_constant", "_value")

    def __init__(self, invstd: torch.Tensor, eps: float = 0.0, root: bool = False,
                 mean: torch.Tensor | None = None, zero_is_constant: bool = False) -> None:
        self.invstd = invstd
        self.eps = float(eps)
        self.root = root or mean is not None
        self.mean = mean
        self.zero_is_constant = zero_is_constant  # see var_from_invstd
        self._value: torch.Tensor | None = None

    def value(self) -> torch.Tensor:
        """The tensor (computed alone, if :func:`settle` has not computed it yet)."""
        if self._value is None:
            var = var_from_invstd(self.invstd, self.eps, self.zero_is_constant)
            self._value = _finish(var, self.root, self.mean)
        return self._value


def _finish(var: torch.Tensor, root: bool, mean: torch.Tensor | None) -> torch.Tensor:
    if mean is not None:
        var = torch.addcmul(var, mean, mean)
    return var.sqrt() if root else var


def materialize(v: torch.Tensor | FromInvStd) -> torch.Tensor:
    """``v`` as a tensor."""
    return v.value() if isinstance(v, FromInvStd) else v


class LayoutCache:
    """Device tensors built once per layout (the key) and kept: the sites of a step repeat from
    step to step, and building one costs a host-to-device copy. Bounded, so that sites that
    change every step do not grow it."""

    def __init__(self, limit: int = 16) -> None:
        self._cache: dict[Hashable, Any] = {}
        self._limit = limit

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value of ``key``, from ``make()`` the first time."""
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            value = self._cache[key] = make()
        return value


class EpsVectors:
    """Per-element eps vectors for concatenated sites, built once per sequence of (size, eps)."""

    def __init__(self) -> None:
        self._cache = LayoutCache()

    def get(self, sizes: Sequence[int], eps: Sequence[float], device: torch.device) -> torch.Tensor | float:
        """A float when every eps is the same (a scalar broadcasts: no vector needed)."""
        if len(set(eps)) <= 1:
            return eps[0] if eps else 0.0
        pairs = tuple(zip(sizes, eps))
        return self._cache.get((device, pairs), lambda: to_device(torch.cat([torch.full((n,), e) for n, e in pairs]),
                                                                  device))


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a synchronising copy (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def settle(pending: Iterable[FromInvStd], eps_vectors: EpsVectors) -> None:
    """Compute every pending variance, std and RMS of a step together, per device and kind:
    one concatenation and the same few ops for all."""
    batches: dict[tuple[torch.device, bool, bool], dict[int, FromInvStd]] = {}
    for p in pending:
        if p._value is None:  # (one shared by two sites is computed once)
            batches.setdefault((p.invstd.device, p.mean is not None, p.zero_is_constant), {})[id(p)] = p
    for (device, rms, zero_is_constant), unique in batches.items():
        todo = list(unique.values())
        if len(todo) == 1:
            todo[0].value()
            continue
        sizes = [p.invstd.numel() for p in todo]
        var = var_from_invstd(torch.cat([p.invstd.reshape(-1) for p in todo]),
                              eps_vectors.get(sizes, [p.eps for p in todo], device), zero_is_constant)
        if rms:
            var = _finish(var, True, torch.cat([p.mean.reshape(-1) for p in todo]))  # type: ignore[union-attr]
        root = var.sqrt() if not rms and any(p.root for p in todo) else var
        for p, part_var, part_root in zip(todo, var.split(sizes), root.split(sizes)):
            p._value = (part_root if p.root else part_var).view(p.invstd.shape)
