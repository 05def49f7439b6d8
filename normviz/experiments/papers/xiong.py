"""Xiong et al. 2020: Pre-LN vs Post-LN transformers at initialization.

Both stacks share their weights and never move (lr 0); the recorded gradient norms of
their FFN weights against depth are what :func:`normviz.analysis.findings.xiong_findings` reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models
from normviz.experiments.base import Setup, StepResult

__all__ = ["PrePost", "build_xiong"]


class PrePost(nn.Module):
    """A Pre-LN and a Post-LN transformer with the same weights; ``forward`` returns both logits."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.pre = models.transformer("layer", pre_ln=True, **options)
        self.post = models.transformer("layer", pre_ln=False, **options)
        for m in self.pre.modules():  # Xiong et al.'s analysis: Xavier weights, zero biases, N(0,1) embeddings
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        state = {k: v for k, v in self.pre.state_dict().items() if not k.startswith("norm_f.")}
        self.post.load_state_dict(state)

    def forward(self, idx: Tensor) -> dict[str, Tensor]:
        """Next-token logits of both stacks."""
        return {"pre": self.pre(idx), "post": self.post(idx)}


def build_xiong(
    kind: str, gen: torch.Generator, device: torch.device, *, layers: int = 12, d_model: int = 64,
    micro: int = 8, batch: int = 16, seq_len: int = 32, vocab: int = 200,
) -> Setup:
    """:class:`PrePost` with ``layers`` blocks at initialization (lr 0) on random tokens and targets;
    each step accumulates ``micro`` batches of ``batch`` sequences.
    """
    model = PrePost(d_model=d_model, n_heads=4, n_layers=layers, seq_len=seq_len, vocab=vocab).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # at initialization: the weights never move

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        # One step accumulates `micro` batches: the recorded gradient is their sum, i.e. micro x
        # the mini-batch-averaged gradient whose norm Xiong et al. plot (||E_batch[grad W]||_F).
        opt.zero_grad()
        sums = {"pre": torch.zeros((), device=device), "post": torch.zeros((), device=device)}
        for _ in range(micro):
            idx = torch.randint(vocab, (batch, seq_len), generator=gen).to(device)
            target = torch.randint(vocab, (batch, seq_len), generator=gen).to(device)
            out = model(idx)
            parts = {k: F.cross_entropy(v.reshape(-1, vocab), target.reshape(-1)) for k, v in out.items()}
            (parts["pre"] + parts["post"]).backward()
            sums = {k: total + parts[k].detach() / micro for k, total in sums.items()}
        opt.step()
        return sums["pre"] + sums["post"], {"loss_pre": sums["pre"], "loss_post": sums["post"]}

    return Setup(model, opt, step, {})

