"""The numbers normviz figures show, computed with NumPy alone.

Renderers draw; this module computes. Everything here takes and returns NumPy
arrays (or reads a :class:`~normviz.store.reader.Run` through its public
methods), imports neither matplotlib nor torch, and can be tested against hand
computations.

Covariate-shift drift
---------------------
Ioffe & Szegedy (2015) call *internal covariate shift* the change, during
training, of the distribution of a layer's inputs. normviz records per-channel
means and variances, so it measures that change as the divergence between
per-channel Gaussians of consecutive recorded steps::

    D_t = 1/C · Σ_c SKL( N(μ_c,t , σ²_c,t) , N(μ_c,t-1 , σ²_c,t-1) )

    SKL(p, q) = KL(p‖q) + KL(q‖p)
              = ½ (σp²/σq² + σq²/σp² − 2) + ½ (μp − μq)² (1/σp² + 1/σq²)

in nats, averaged over the stored channels (all of them unless the run thinned
wide layers). ``D`` is 0 when nothing moved, invariant to rescaling the layer
(a shift of one standard deviation gives 1), and defined for the first recorded
step as NaN. It compares *consecutive recorded rows*: a run recorded every
``k`` steps shows the drift over ``k`` steps.

*Variance floor.* Each channel's variance is floored at ``rel_floor`` (default
0.05) times the layer's pooled variance, averaged over the two steps compared:
the mean over channels of the per-channel variance plus the variance of the
channel means, i.e. the spread of all the layer's activations. Without it a
near-constant channel (or a whole layer whose activations barely vary over the
batch, e.g. collapsed logits) turns a small move of its mean into a drift of
thousands of nats. With it, ``D`` is the divergence between Gaussians at
least ``√rel_floor`` (about 0.22) layer standard deviations wide: a mean shift
of one layer standard deviation contributes at most ``1/rel_floor`` = 20 nats
for that channel. Channels wider than the floor are unaffected.

*Which distribution.* A norm layer's recorded ``input`` site is exactly the
distribution the norm sees. Ordinary layers are recorded at their output only
(their input is the previous layer's output after any parameter-free
activation, which is not recorded), so for them normviz uses their ``output``:
the distribution that enters the next layer, before its activation function.
:func:`drift_sites` lists these sites in model order and leaves out an output
that is recorded twice (a layer's output that is also the next norm layer's
input, e.g. a convolution followed by BatchNorm, is kept once, as the norm's
input).

Decimation
----------
Long series are thinned for plotting by :func:`envelope` (lines: the mean of
each block of consecutive points plus the block's min and max, so spikes stay
visible) and :func:`block_mean` (heatmaps: the mean of each block of rows).
:func:`rows_for_steps` turns a training-step range into the slice of recorded
rows to read, so only those rows leave the file.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normviz.errors import MissingDataError

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


# --------------------------------------------------------------------------- drift


def gaussian_symmetric_kl(
    mean_p: Any, var_p: Any, mean_q: Any, var_q: Any
) -> np.ndarray:
    """Symmetric KL divergence ``KL(p‖q) + KL(q‖p)`` between 1-D Gaussians, in nats.

    Element-wise over broadcastable arrays. Variances must be positive (floor
    them first); the result is ``inf`` where a variance is 0 and NaN where an
    input is NaN.
    """
    mp, vp = np.asarray(mean_p, dtype=np.float64), np.asarray(var_p, dtype=np.float64)
    mq, vq = np.asarray(mean_q, dtype=np.float64), np.asarray(var_q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d2 = (mp - mq) ** 2
        return 0.5 * (vp / vq + vq / vp - 2.0) + 0.5 * d2 * (1.0 / vp + 1.0 / vq)


def channel_drift(
    channel_mean: Any, channel_var: Any, *, rel_floor: float = 0.05
) -> np.ndarray:
    """Drift of a site's distribution between consecutive recorded steps.

    Parameters
    ----------
    channel_mean, channel_var
        ``[S, C]`` per-channel means and (population) variances, first axis the
        recorded step (``run.stat("channel_mean", ...)``).
    rel_floor
        Variances are floored at ``rel_floor`` × the layer's pooled variance
        (mean channel variance plus the variance of the channel means),
        averaged over the two steps compared, and at 1e-30 (see "Variance
        floor" in the module docstring). 0 floors only at 1e-30.

    Returns
    -------
    numpy.ndarray
        ``[S]`` float64: ``D_t`` as defined in the module docstring, NaN at
        ``t = 0`` and wherever a channel's statistics are not finite.
    """
    mean = np.asarray(channel_mean, dtype=np.float64)
    var = np.asarray(channel_var, dtype=np.float64)
    if mean.ndim == 1:
        mean, var = mean[:, None], var[:, None]
    if mean.shape != var.shape or mean.ndim != 2:
        raise ValueError(f"channel_mean {mean.shape} and channel_var {var.shape} must both be [steps, channels]")
    out = np.full(mean.shape[0], np.nan)
    if mean.shape[0] < 2 or mean.shape[1] == 0:
        return out
    var = np.clip(var, 0.0, None)
    vp, vq = var[1:], var[:-1]
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.mean(var, axis=1) + np.var(mean, axis=1)
        scale = 0.5 * (pooled[1:] + pooled[:-1])
    floor = np.maximum(rel_floor * scale, 1e-30)[:, None]
    skl = gaussian_symmetric_kl(mean[1:], np.maximum(vp, floor), mean[:-1], np.maximum(vq, floor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # A non-finite channel makes the step's drift undefined, not silently smaller.
        out[1:] = np.where(np.all(np.isfinite(skl), axis=1), np.mean(skl, axis=1), np.nan)
    return out


@dataclass(frozen=True)
class DriftSite:
    """A site whose distribution :func:`channel_drift` follows."""

    layer: str
    role: str
    kind: str | None
    module_type: str
    #: ``(layer, "output")`` of the ordinary layer whose output this norm input
    #: is (the same tensor, recorded twice), or None.
    same_as: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.layer or '(root)'} ({'in' if self.role == 'input' else 'out'})"

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the tensor across runs of one model: ``same_as`` when set.

        A run with a norm layer (its input is the previous layer's output) and a
        run without it (only that output is recorded) then share the key.
        """
        return self.same_as if self.same_as is not None else (self.layer, self.role)


def drift_sites(run: Any) -> list[DriftSite]:
    """The sites whose drift stands for "the input distribution of each layer".

    Norm layers (``kind`` not None) contribute their ``input`` site; other layers
    their ``output`` site (call 0), in model order. An ordinary layer's output
    whose per-channel mean at the first recorded step equals, bit for bit, that
    of the next norm layer's input is the same tensor and is left out. See the
    module docstring for the reasons.
    """
    sites = {(s.layer, s.role, s.call): s for s in run.sites}
    out: list[DriftSite] = []
    for layer in run.layers:
        role = "input" if layer.kind is not None else "output"
        site = sites.get((layer.name, role, 0))
        if site is None:
            continue
        out.append(DriftSite(layer.name, role, layer.kind, layer.module_type))
    keep: list[DriftSite] = []
    skip = False
    for i, site in enumerate(out):
        if skip:
            skip = False
            continue
        nxt = out[i + 1] if i + 1 < len(out) else None
        if site.role == "output" and nxt is not None and nxt.role == "input" and len(run.steps):
            try:
                a = run.stat("channel_mean", site.layer, "output", steps=slice(0, 1))
                b = run.stat("channel_mean", nxt.layer, "input", steps=slice(0, 1))
            except MissingDataError:
                a = b = None
            if a is not None and a.shape == b.shape and np.array_equal(a, b, equal_nan=True):
                keep.append(DriftSite(nxt.layer, nxt.role, nxt.kind, nxt.module_type, (site.layer, site.role)))
                skip = True
                continue
        keep.append(site)
    return keep


# --------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class Band:
    """Three series of one band: ``lo``, ``mid``, ``hi`` (each ``[S]``) and their levels."""

    lo: np.ndarray
    mid: np.ndarray
    hi: np.ndarray
    levels: tuple[float, float, float]


def level_columns(levels: Sequence[float], wanted: Iterable[float]) -> list[int]:
    """Column of each wanted level in a percentile statistic.

    Raises
    ------
    MissingDataError
        Naming the level that was not recorded and the levels that were.
    """
    have = [float(v) for v in levels]
    cols = []
    for w in wanted:
        matches = [i for i, v in enumerate(have) if math.isclose(v, float(w), abs_tol=1e-9)]
        if not matches:
            raise MissingDataError(f"percentile level {w:g} was not recorded (levels: {have})")
        cols.append(matches[0])
    return cols


def percentile_band(
    values: Any,
    levels: Sequence[float],
    lo: float = 15.0,
    mid: float = 50.0,
    hi: float = 85.0,
) -> Band:
    """Pick the ``lo``/``mid``/``hi`` percentile series out of a ``[S, levels]`` statistic.

    Works for ``percentiles`` (levels ``run.layout.percentile_levels``) and for
    ``group_mean``/``group_scale`` (levels ``run.layout.group_levels``). The
    default 15/50/85 are Ioffe & Szegedy's (2015, Fig. 1).
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(levels):
        raise ValueError(f"expected [steps, {len(levels)}] values, got shape {arr.shape}")
    i, j, k = level_columns(levels, (lo, mid, hi))
    return Band(arr[:, i], arr[:, j], arr[:, k], (float(lo), float(mid), float(hi)))


# --------------------------------------------------------------------------- gradients


def flow_matrix(values: Any) -> np.ndarray:
    """A ``[S, L]`` gradient statistic as a ``[L, S]`` matrix for a log-scaled heatmap.

    Rows are layers (model order), columns recorded steps. Values that cannot be
    shown on a log scale (≤ 0, NaN, ±inf) become NaN.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected [steps, layers], got shape {arr.shape}")
    out = arr.T.copy()
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def log_limits(*arrays: Any, default: tuple[float, float] = (1e-8, 1.0)) -> tuple[float, float]:
    """``(vmin, vmax)`` over the finite positive values of all arrays, for a shared log scale.

    Equal limits are widened by a factor 10 around the value; ``default`` is
    returned when no value is finite and positive.
    """
    lows, highs = [], []
    for a in arrays:
        arr = np.asarray(a, dtype=np.float64)
        good = arr[np.isfinite(arr) & (arr > 0)]
        if good.size:
            lows.append(good.min())
            highs.append(good.max())
    if not lows:
        return default
    vmin, vmax = float(min(lows)), float(max(highs))
    if vmin == vmax:
        vmin, vmax = vmin / np.sqrt(10.0), vmax * np.sqrt(10.0)
    return vmin, vmax


def bn_mismatch(
    batch_mean: Any, batch_var: Any, running_mean: Any, running_var: Any, *, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """How far BatchNorm's batch statistics are from its running statistics.

    All inputs are ``[S, C]`` (the BN input's ``channel_mean``/``channel_var`` and
    the module's ``running_mean``/``running_var``). Returns two ``[S]`` series:
    the mean over channels of ``|μ_B − μ_run| / sqrt(σ²_run + eps)`` (the shift
    eval mode applies wrongly, in running standard deviations) and the mean over
    channels of ``|log(σ²_B + eps) − log(σ²_run + eps)|`` (the scale error, in
    nats). Running variances are unbiased while batch variances are population
    variances; for batches of more than a few values the difference is small.
    """
    bm, bv = np.asarray(batch_mean, np.float64), np.asarray(batch_var, np.float64)
    rm, rv = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    if not (bm.shape == bv.shape == rm.shape == rv.shape):
        raise ValueError(
            f"shapes differ: batch {bm.shape}/{bv.shape}, running {rm.shape}/{rv.shape}"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.abs(bm - rm) / np.sqrt(np.clip(rv, 0, None) + eps)
        scale = np.abs(np.log(np.clip(bv, 0, None) + eps) - np.log(np.clip(rv, 0, None) + eps))
    return shift.mean(axis=-1), scale.mean(axis=-1)


# --------------------------------------------------------------------------- steps and rows


def rows_for_steps(steps: Any, start: int | None = None, stop: int | None = None) -> slice:
    """The recorded rows whose training step lies in ``[start, stop)``.

    ``steps`` is ``run.steps`` (increasing). ``None`` leaves a side open. The
    slice can be passed as ``steps=`` to the reader so only those rows are read.
    """
    arr = np.asarray(steps)
    i0 = 0 if start is None else int(np.searchsorted(arr, start, side="left"))
    i1 = len(arr) if stop is None else int(np.searchsorted(arr, stop, side="left"))
    return slice(i0, max(i0, i1))


def pick_rows(n: int, k: int = 3) -> list[int]:
    """Up to ``k`` distinct row indices spread over ``n`` rows: first, …, last.

    For ``k = 3``: first, middle and last recorded step. Fewer when ``n < k``.
    """
    if n <= 0:
        return []
    if k <= 1:
        return [n - 1]
    picks = np.round(np.linspace(0, n - 1, min(k, n))).astype(int)
    return sorted({int(i) for i in picks})


def forward_row(steps: Any, row: int) -> int:
    """The recorded row holding the parameters the forward pass of ``row`` used.

    Module tensors (γ, β, running statistics) are recorded when the step
    closes, after the optimizer has updated them, while activations are
    recorded during the forward pass. The γ and β that produced the
    activations of training step ``s`` are those recorded at step ``s − 1``:
    that row is returned when step ``s − 1`` was recorded, else ``row``
    itself (off by one update).
    """
    arr = np.asarray(steps)
    if 0 < row < len(arr) and arr[row - 1] == arr[row] - 1:
        return row - 1
    return row


def first_nonfinite(*arrays: Any) -> int | None:
    """First row (axis 0) where any of the arrays holds a non-finite value, or None.

    Arrays with a ``nonfinite`` count (values ≥ 0) are better checked with
    ``count > 0``: pass ``np.where(count > 0, np.nan, 0)``.
    """
    first: int | None = None
    for a in arrays:
        arr = np.asarray(a, dtype=np.float64)
        if arr.size == 0:
            continue
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        idx = np.flatnonzero(bad)
        if idx.size and (first is None or idx[0] < first):
            first = int(idx[0])
    return first


def scalar_divergence(values: Any) -> int | None:
    """Index where a per-step scalar (e.g. the loss) diverged, or None.

    That is the first ``±inf``, or the first NaN of a series that is finite
    before it and non-finite from there to its end. A scalar given only at
    some steps (NaN elsewhere, see ``Run.scalar``) has NaN gaps before its
    last value and is not taken for diverged.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size == 0:
        return None
    candidates = []
    inf = np.flatnonzero(np.isinf(y))
    if inf.size:
        candidates.append(int(inf[0]))
    finite = np.isfinite(y)
    nan = np.flatnonzero(np.isnan(y))
    if nan.size:
        i = int(nan[0])
        if i > 0 and finite[:i].all() and not finite[i:].any():
            candidates.append(i)
    return min(candidates) if candidates else None


def run_divergence(run: Any, rows: slice | None = None) -> int | None:
    """First recorded row (relative to ``rows``) where the run held a non-finite value.

    Looks at the ``nonfinite`` counts of every site and at ``grad_norm``, when
    recorded. Returns None for a run that stayed finite.
    """
    checks = []
    try:
        _, counts = run.stat_all("nonfinite", steps=rows)
        checks.append(np.where(np.asarray(counts) > 0, np.nan, 0.0))
    except MissingDataError:
        pass
    try:
        _, grads = run.grad("grad_norm", steps=rows)
        checks.append(grads)
    except MissingDataError:
        pass
    return first_nonfinite(*checks)


# --------------------------------------------------------------------------- decimation


@dataclass(frozen=True)
class Envelope:
    """A series thinned for plotting: ``x``, ``y`` and the min/max envelope ``lo``/``hi``.

    ``lo`` and ``hi`` are None when the series was short enough to keep whole.
    """

    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None


def _blocks(n: int, max_points: int) -> int:
    return max(1, math.ceil(n / max(1, max_points)))


def _block_reduce(arr: np.ndarray, k: int, how: str) -> np.ndarray:
    n = arr.shape[0]
    m = math.ceil(n / k)
    pad = m * k - n
    if pad:
        arr = np.concatenate([arr, np.full((pad,) + arr.shape[1:], np.nan)], axis=0)
    arr = arr.reshape((m, k) + arr.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        finite = np.where(np.isfinite(arr), arr, np.nan)
        if how == "mean":
            return np.nanmean(finite, axis=1)
        if how == "min":
            return np.nanmin(finite, axis=1)
        return np.nanmax(finite, axis=1)


def envelope(x: Any, y: Any, max_points: int = 1000) -> Envelope:
    """Thin a long series to at most ``max_points`` points, keeping its extremes.

    Consecutive points are grouped in equal blocks; each block gives one point
    at the mean of its ``x``, the mean of its finite ``y``, and its min and max
    (``lo``/``hi``). A series of ``max_points`` or fewer is returned unchanged
    (``lo = hi = None``).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x {xs.shape} and y {ys.shape} must be 1-D and of the same length")
    if len(xs) <= max_points:
        return Envelope(xs, ys, None, None)
    k = _blocks(len(xs), max_points)
    return Envelope(
        _block_reduce(xs, k, "mean"),
        _block_reduce(ys, k, "mean"),
        _block_reduce(ys, k, "min"),
        _block_reduce(ys, k, "max"),
    )


def block_mean(steps: Any, values: Any, max_rows: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Average blocks of consecutive rows so that at most ``max_rows`` remain.

    Returns ``(steps, values)``: each block's mean step and the mean of its
    finite values (per column). Short inputs are returned as float64 copies.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if v.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} steps but {v.shape[0]} rows")
    if len(s) <= max_rows:
        return s.copy(), v.copy()
    k = _blocks(len(s), max_rows)
    return _block_reduce(s, k, "mean"), _block_reduce(v, k, "mean")


def edges_from_centers(centers: Any) -> np.ndarray:
    """Cell edges around increasing cell centres (midpoints; the ends mirrored).

    One centre ``c`` gives ``[c - 0.5, c + 0.5]``.
    """
    c = np.asarray(centers, dtype=np.float64)
    if c.size == 0:
        return np.array([0.0, 1.0])
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


# --------------------------------------------------------------------------- layer choice


def merged_order(sequences: Iterable[Sequence[str]]) -> list[str]:
    """Merge name lists that share an order (e.g. the layers of runs of one model).

    A name missing from the lists seen so far is placed right after the name
    that precedes it in its own list, so ``[a, b, d]`` and ``[a, c, d]`` give
    ``[a, b, c, d]``.
    """
    out: list[str] = []
    for seq in sequences:
        prev: str | None = None
        for name in seq:
            if name not in out:
                at = 0 if prev is None else out.index(prev) + 1
                while at < len(out) and out[at] not in seq:
                    at += 1  # keep names only other lists have before this one
                out.insert(at, name)
            prev = name
    return out


def select_names(
    names: Sequence[str], pattern: str | Sequence[str] | None = None, limit: int | None = None
) -> list[str]:
    """Names matching a glob (or any of several), thinned evenly to ``limit``.

    Matching uses :func:`fnmatch.fnmatchcase` on the qualified layer name;
    ``"*"``-free patterns match exactly. When more than ``limit`` names match,
    an evenly spaced subset is kept that always includes the first (the
    shallowest) and, for ``limit >= 2``, the last (the deepest); ``limit = 1``
    keeps the first. Order is preserved. Every renderer's ``max_layers`` goes
    through here, so they all agree on which layers a small limit keeps.
    """
    if pattern is None:
        chosen = list(names)
    else:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        patterns = [p.strip() for part in patterns for p in part.split(",") if p.strip()]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if limit is not None and limit > 0 and len(chosen) > limit:
        if limit == 1:
            return [chosen[0]]
        idx = np.round(np.linspace(0, len(chosen) - 1, limit)).astype(int)
        chosen = [chosen[i] for i in sorted({int(i) for i in idx})]
    return chosen
