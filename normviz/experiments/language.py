"""A synthetic language and a tiny GPT for the transformer-era reproductions (papers2.md §0).

The language: vocabulary 64, token 0 = BOS, token 1 = "." (the delimiter). A sequence
starts with BOS and continues with sentences of 4–11 tokens, each from a random sparse
Markov chain (3 successors per token) of one of 4 "dialects" chosen per sequence, each
ending with "."; in half the sequences the last third copies an earlier span, so that
attending back pays only sometimes.

The model: a pre-norm GPT with no biases, GELU MLP (4×), a final norm and an untied
head; weights N(0, 1/fan_in), embeddings N(0, 0.02). Attention is computed explicitly
(not fused), so its logits exist. ``norm="none"`` with ``qk_norm=True``,
``branch_gain=0.2`` and ``final_norm=False`` is the "outlier protected" block of He et
al. 2024 (no pre-norms, QK-norm against entropy collapse, down-weighted residual
branches).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models

__all__ = ["LANGUAGE_VOCAB", "Language", "TinyGPT", "lm_loss", "lm_step"]

LANGUAGE_VOCAB = 64
BOS, DOT = 0, 1


class Language:
    """Sampler of the synthetic language; its dialects are drawn from ``gen`` at construction."""

    def __init__(self, gen: torch.Generator, *, vocab: int = LANGUAGE_VOCAB, dialects: int = 4,
                 successors: int = 3) -> None:
        self.vocab = vocab
        words = vocab - 2  # tokens 2.. are words
        # successor[d, w] = the `successors` words that may follow word w in dialect d
        self.successor = torch.randint(0, words, (dialects, words, successors), generator=gen) + 2
        self.dialects = dialects

    def sequences(self, n: int, length: int, gen: torch.Generator) -> Tensor:
        """``n`` sequences of ``length`` tokens, (n, length) int64."""
        out = torch.empty(n, length, dtype=torch.long)
        for i in range(n):
            d = int(torch.randint(0, self.dialects, (1,), generator=gen))
            seq = [BOS]
            while len(seq) < length:
                words = int(torch.randint(4, 12, (1,), generator=gen))
                w = int(torch.randint(2, self.vocab, (1,), generator=gen))
                for _ in range(words - 1):
                    seq.append(w)
                    w = int(self.successor[d, w - 2, int(torch.randint(0, self.successor.shape[2], (1,),
                                                                       generator=gen))])
                seq.append(DOT)
            seq = seq[:length]
            if bool(torch.rand((), generator=gen) < 0.5):  # the last third repeats an earlier span
                span = length // 3
                start = int(torch.randint(1, length - 2 * span + 1, (1,), generator=gen))
                seq[length - span:] = seq[start:start + span]
            out[i] = torch.tensor(seq)
        return out


class HeadNorm(nn.Module):
    """LayerNorm over each head's features (QK-norm), shape (B, H, T, d_h)."""

    def __init__(self, d_head: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_head, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.norm(x)
        return out


class Attention(nn.Module):
    """Causal multi-head attention with explicit logits, optional QK-norm, no biases."""

    def __init__(self, d: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_norm: nn.Module = HeadNorm(d // heads) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = HeadNorm(d // heads) if qk_norm else nn.Identity()

    @property
    def normviz_heads(self) -> int:
        """Heads, for the recorder's attention statistics (``normviz.record.attention``)."""
        return self.heads

    def _split(self, z: Tensor) -> Tensor:
        b, t, d = z.shape
        return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def normviz_queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor, float, bool, None]:
        """This call's normalized (q, k), their scale, causal, no mask (the recorder's attention statistics)."""
        q, k = self.q_norm(self._split(self.q(x))), self.k_norm(self._split(self.k(x)))
        return q, k, q.shape[-1] ** -0.5, True, None

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.q_norm(self._split(self.q(x))), self.k_norm(self._split(self.k(x))), self._split(self.v(x))
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = logits.masked_fill(mask, float("-inf")).softmax(-1)
        out: Tensor = self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))
        return out


class TinyBlock(nn.Module):
    """x + g·attn(norm1(x)), then x + g·mlp(norm2(x)); a "none" norm slot is an Identity."""

    def __init__(self, norm: str, d: int, heads: int, qk_norm: bool, branch_gain: float) -> None:
        super().__init__()
        self.norm1 = models.make_norm(norm, d, dims=1)
        self.attn = Attention(d, heads, qk_norm)
        self.norm2 = models.make_norm(norm, d, dims=1)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * d, d, bias=False)
        self.gain = branch_gain

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.gain * self.attn(self.norm1(x))
        return x + self.gain * self.out(self.act(self.fc(self.norm2(x))))


class TinyGPT(nn.Module):
    """The papers2.md §0 GPT: ``layers`` blocks of width ``d``, ``heads`` heads."""

    def __init__(self, norm: str = "layer", *, d: int = 64, heads: int = 4, layers: int = 4, seq_len: int = 64,
                 vocab: int = LANGUAGE_VOCAB, qk_norm: bool = False, branch_gain: float = 1.0,
                 final_norm: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(TinyBlock(norm, d, heads, qk_norm, branch_gain) for _ in range(layers))
        self.norm_f = models.make_norm(norm, d, dims=1) if final_norm else nn.Identity()
        self.head = nn.Linear(d, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(self.norm_f(x))
        return logits


def lm_loss(logits: Tensor, idx: Tensor) -> Tensor:
    """Next-token cross-entropy of ``logits`` (B, T, V) for the tokens ``idx`` (B, T)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def lm_step(language: Language, gen: torch.Generator, device: torch.device, schedule: Any, *, batch: int,
            seq_len: int) -> Callable[[nn.Module, torch.optim.Optimizer, int], Tensor]:
    """One training step on fresh sequences of ``language``: next-token loss, gradients clipped at
    norm 1, the optimizer's step, then the learning-rate ``schedule``'s."""

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> Tensor:
        idx = language.sequences(batch, seq_len, gen).to(device)
        opt.zero_grad()
        loss = lm_loss(model(idx), idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        return loss

    return step
