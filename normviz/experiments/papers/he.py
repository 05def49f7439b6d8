"""He et al. 2024, outlier features: a pre-norm transformer grows them, a block without norms does not.

The tiny GPT of :mod:`normviz.experiments.language` on its synthetic language, trained
with AdamW (β 0.9/0.95, no weight decay, gradient clipping at 1, linear warm-up then a
constant learning rate). Kind ``layer`` (or ``rms``) is the pre-norm block; kind
``none`` is He et al.'s "outlier protected" block: no pre-norms (empty slots, recorded as
norm sites of kind none), QK-norm, residual branches scaled by 0.2, no final norm. The
recorder's ``rms_kurtosis`` of the norm slots' inputs (the residual stream) is what
:func:`normviz.analysis.findings.he_outlier_findings` reads.
"""

from __future__ import annotations

import torch

from normviz.experiments.base import Setup, identity_slots
from normviz.experiments.language import Language, TinyGPT, lm_step

__all__ = ["build_he_outliers"]


def build_he_outliers(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 3e-3, warmup: int = 50,
    batch: int = 16, seq_len: int = 64, layers: int = 4, d: int = 64, adam_eps: float = 1e-8,
) -> Setup:
    """The pre-norm (``layer``, ``rms``) or outlier-protected (``none``) tiny GPT and its training."""
    if kind not in ("layer", "rms", "none"):
        raise ValueError(f"he-outliers: kind must be layer, rms or none, not {kind!r}")
    language = Language(gen)
    protected = kind == "none"
    model = TinyGPT(kind, d=d, layers=layers, seq_len=seq_len, qk_norm=protected,
                    branch_gain=0.2 if protected else 1.0, final_norm=not protected).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=adam_eps, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    step = lm_step(language, gen, device, schedule, batch=batch, seq_len=seq_len)
    return Setup(model, opt, step, identity_slots(model, -1) if protected else {})
