"""Wortsman et al. 2023 / Dehghani et al. 2023 / Zhai et al. 2023: at a high learning rate the
attention logits of a transformer without QK-norm explode and its attention entropy collapses;
with QK-norm they stay bounded.

The tiny GPT of :mod:`normviz.experiments.language` (pre-LN, 4 blocks, d 64, 4 heads) on its
synthetic language, AdamW (β 0.9/0.95, no weight decay, gradient clipping at 1), a linear
warm-up of ``warmup`` steps then a cosine decay to 0 at ``decay_steps``, with or without
``qk_norm`` (a learnable LayerNorm over each head's queries and keys). The recorder's opt-in
``attention_max_logit`` and ``attention_entropy`` of every attention layer are what
:func:`normviz.analysis.findings.attention_findings` reads.
"""

from __future__ import annotations

import math

import torch

from normviz.experiments.base import Setup
from normviz.experiments.language import Language, TinyGPT, lm_step

__all__ = ["build_wortsman"]


def build_wortsman(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 1e-1, qk_norm: bool = False,
    warmup: int = 20, decay_steps: int = 300, batch: int = 16, seq_len: int = 64, layers: int = 4, d: int = 64,
) -> Setup:
    """The pre-norm tiny GPT (``kind`` ``layer`` or ``rms``), with or without QK-norm, and its training."""
    if kind not in ("layer", "rms"):
        raise ValueError(f"wortsman-qk: kind must be layer or rms, not {kind!r}")
    language = Language(gen)
    model = TinyGPT(kind, d=d, layers=layers, seq_len=seq_len, qk_norm=qk_norm).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, decay_steps - warmup))))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    step = lm_step(language, gen, device, schedule, batch=batch, seq_len=seq_len)
    return Setup(model, opt, step, {})
