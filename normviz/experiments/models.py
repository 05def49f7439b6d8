"""Model builders with a swappable norm layer, and small synthetic data sets.

Every builder takes a norm *kind* (``"batch"``, ``"layer"``, ``"instance"``,
``"group"``, ``"rms"`` or ``"none"``) and puts the matching module where the
norm goes, so runs of one architecture line up layer by layer.  The seed
notebook's models are reproduced exactly (:func:`seed_mlp`, :func:`seed_cnn`);
the deeper ones are used by the named experiments and the overhead benchmark.

Only ``torch`` is needed; nothing here touches normviz's recorder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments.norms import (
    NORM_KINDS,
    TRANSFORMER_NORM_KINDS,
    ChannelsFirstLayerNorm,
    ChannelsFirstRMSNorm,
    make_norm,
)

__all__ = [
    "NORM_KINDS",
    "ChannelsFirstLayerNorm",
    "ChannelsFirstRMSNorm",
    "deep_mlp",
    "image_classification_data",
    "make_norm",
    "resnet8",
    "seed_cnn",
    "seed_mlp",
    "seed_regression_data",
    "token_data",
    "transformer",
]

# --------------------------------------------------------------------------- seed models


def seed_mlp(norm: str) -> nn.Sequential:
    """The seed notebook's MLP: Linear(10, 64) → norm(64) → ReLU → Linear(64, 1).

    Input (N, 10), output (N, 1).  For ``"none"`` the norm slot is ``nn.Identity``.
    """
    return nn.Sequential(
        nn.Linear(10, 64),
        make_norm(norm, 64, dims=1),
        nn.ReLU(),
        nn.Linear(64, 1),
    )


def seed_cnn(norm: str, num_classes: int = 4) -> nn.Sequential:
    """The seed notebook's CNN with a small classification head.

    Conv2d(3, 16, 3, padding=1) → norm(16) → ReLU → Conv2d(16, 32, 3, padding=1)
    as in the seed, then ReLU → global average pool → Linear(32, num_classes).
    Input (N, 3, H, W), output (N, num_classes).
    """
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        make_norm(norm, 16, dims=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


# --------------------------------------------------------------------------- deeper models


def deep_mlp(
    norm: str,
    width: int = 512,
    depth: int = 8,
    in_features: int = 512,
    num_classes: int = 10,
) -> nn.Sequential:
    """``depth`` × [Linear → norm → ReLU] followed by a Linear head.

    Input (N, in_features), output (N, num_classes).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth!r}")
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth):
        layers += [nn.Linear(features, width), make_norm(norm, width, dims=1), nn.ReLU()]
        features = width
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3×3 convs with norms and a shortcut."""

    def __init__(self, norm: str, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        bias = norm == "none"  # a conv followed by a norm needs no bias
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, out_channels, dims=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, out_channels, dims=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                make_norm(norm, out_channels, dims=2),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape (N, C_in, H, W)."""
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        result: Tensor = self.relu2(out + self.shortcut(x))
        return result


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8: a 3×3 stem, three one-block stages (16/32/64), a head."""

    def __init__(self, norm: str, num_classes: int = 10) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=bias)
        self.norm1 = make_norm(norm, 16, dims=2)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(norm, 16, 16, stride=1)
        self.layer2 = BasicBlock(norm, 16, 32, stride=2)
        self.layer3 = BasicBlock(norm, 32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, 3, H, W) images (32×32 in the benchmark) to (N, num_classes) logits."""
        x = self.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return logits


def resnet8(norm: str, num_classes: int = 10) -> ResNet8:
    """A CIFAR-style ResNet-8 (16/32/64 channels, one basic block per stage).

    ReLU(inplace=True) follows the norms, as in torchvision.  Convolutions
    carry a bias only when there is no norm after them (kind ``"none"``).
    Input (N, 3, 32, 32), output (N, num_classes).
    """
    return ResNet8(norm, num_classes)


# --------------------------------------------------------------------------- transformer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV projection."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    @property
    def normviz_heads(self) -> int:
        """Heads, for the recorder's attention statistics (``normviz.record.attention``)."""
        return self.n_heads

    def normviz_queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor, float, bool, None]:
        """This call's (q, k) as (B, H, T, d), their scale, causal, no mask: what the recorder's
        attention statistics recompute the logits from."""
        b, t, c = x.shape
        q, k, _ = self.qkv(x).split(c, dim=2)
        q, k = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k))
        return q, k, (c // self.n_heads) ** -0.5, True, None

    def forward(self, x: Tensor) -> Tensor:
        """Attend over ``x`` of shape (B, T, C), each token seeing only the past."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: Tensor = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out


class FeedForward(nn.Module):
    """The transformer MLP: Linear(d, 4d) → GELU → Linear(4d, d)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to each token of ``x``."""
        out: Tensor = self.proj(self.act(self.fc(x)))
        return out


class Block(nn.Module):
    """A transformer block with its two norms placed pre-LN or post-LN."""

    def __init__(self, norm: str, d_model: int, n_heads: int, pre_ln: bool) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.norm1 = make_norm(norm, d_model, dims=1)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = make_norm(norm, d_model, dims=1)
        self.mlp = FeedForward(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Pre-LN: x + f(norm(x)); post-LN: norm(x + f(x))."""
        out: Tensor
        if self.pre_ln:
            x = x + self.attn(self.norm1(x))
            out = x + self.mlp(self.norm2(x))
        else:
            x = self.norm1(x + self.attn(x))
            out = self.norm2(x + self.mlp(x))
        return out


class Transformer(nn.Module):
    """A small GPT-style language model: embeddings, blocks, final norm, LM head."""

    def __init__(
        self,
        norm: str,
        *,
        d_model: int,
        n_heads: int,
        n_layers: int,
        seq_len: int,
        vocab: int,
        pre_ln: bool,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(norm, d_model, n_heads, pre_ln) for _ in range(n_layers))
        # Pre-LN needs a norm after the last residual add; in post-LN the last
        # block already ends with one (Xiong et al. 2020), so the slot is empty.
        self.norm_f = make_norm(norm, d_model, dims=1) if pre_ln else nn.Identity()
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        """Map token ids (B, T) with T ≤ seq_len to next-token logits (B, T, vocab)."""
        t = idx.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len {self.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(self.norm_f(x))
        return logits


def transformer(
    norm: str,
    *,
    d_model: int = 256,
    n_heads: int = 4,
    n_layers: int = 4,
    seq_len: int = 64,
    vocab: int = 256,
    pre_ln: bool = True,
) -> Transformer:
    """A small GPT-style causal transformer with a swappable norm.

    Blocks use causal ``scaled_dot_product_attention`` and a 4× GELU MLP;
    ``pre_ln`` chooses where the norms sit.  Only ``"layer"``, ``"rms"`` and
    ``"none"`` apply (others raise ``ValueError``).  Input (B, T) token ids,
    output (B, T, vocab) logits.
    """
    if norm not in TRANSFORMER_NORM_KINDS:
        raise ValueError(
            f"norm kind {norm!r} does not apply to the transformer; "
            f"expected one of {', '.join(TRANSFORMER_NORM_KINDS)}"
        )
    return Transformer(
        norm,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        seq_len=seq_len,
        vocab=vocab,
        pre_ln=pre_ln,
    )


# --------------------------------------------------------------------------- synthetic data


def seed_regression_data(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The seed's regression data: x (1000, 10) ~ N(0, 1), y = x[:, :1] + 0.1·noise."""
    x = torch.randn(1000, 10, generator=gen)
    y = x[:, 0:1] + 0.1 * torch.randn(1000, 1, generator=gen)
    return x, y


def image_classification_data(
    n: int,
    gen: torch.Generator,
    num_classes: int = 4,
    size: int = 8,
) -> tuple[Tensor, Tensor]:
    """A learnable image task: x (n, 3, size, size) float, y (n,) class ids.

    Each class has its own colour and its own stripe pattern (orientation and
    frequency); every image is its class's template plus unit Gaussian noise.
    The templates are drawn from ``gen`` first, so they depend on ``gen``'s
    state but not on ``n``.
    """
    colours = 0.8 * torch.randn(num_classes, 3, 1, 1, generator=gen)
    angles = torch.rand(num_classes, generator=gen) * math.pi
    freqs = 0.5 + 1.5 * torch.rand(num_classes, generator=gen)
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    phase = xx * torch.cos(angles)[:, None, None] + yy * torch.sin(angles)[:, None, None]
    stripes = torch.sin(freqs[:, None, None] * phase).unsqueeze(1)  # (K, 1, size, size)
    templates = colours + stripes
    labels = torch.randint(num_classes, (n,), generator=gen)
    x = templates[labels] + torch.randn(n, 3, size, size, generator=gen)
    return x, labels


def token_data(batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A learnable language task: each row repeats a random motif of 2–8 tokens.

    Returns ``(inputs, targets)``, both (batch, seq_len) int64, with
    ``targets[:, t]`` the token after ``inputs[:, t]``; after one period the next
    token can be copied from the context.
    """
    max_period = min(8, seq_len + 1)
    periods = torch.randint(2, max_period + 1, (batch,), generator=gen)
    motifs = torch.randint(vocab, (batch, max_period), generator=gen)
    positions = torch.arange(seq_len + 1)[None, :] % periods[:, None]
    tokens = torch.gather(motifs, 1, positions)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
