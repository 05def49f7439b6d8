"""Covariate-shift drift of a layer's input distribution, and BatchNorm's batch-vs-running mismatch.

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

:func:`bn_mismatch` compares what BatchNorm normalizes with in training (the batch's
statistics) and in eval mode (its running statistics).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from normviz.errors import MissingDataError

__all__ = ["DriftSite", "bn_mismatch", "channel_drift", "drift_sites", "gaussian_symmetric_kl"]


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
