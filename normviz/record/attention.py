"""Attention logits and entropy, recomputed from a module's queries and keys on recorded steps.

Fused attention (``scaled_dot_product_attention``, flash kernels) never forms the logits,
so they cannot be read from the forward pass. On a recorded step the recorder's forward
hook of a known attention module recomputes its queries and keys from the module's own
projections and the call's inputs (one extra q/k projection), then the logits
z = q·kᵀ·scale a block of queries at a time (``CHUNK`` queries: the full (T × T) matrix
of all heads is never held), and reduces them per head to

- the maximum logit over batch, queries and the keys each query may attend to, and
- the attention entropy −Σ p log p of each query's softmax row, averaged over batch and
  queries (Zhai et al. 2023's convention; a causal row i has at most log(i + 1)).

How each module's queries and keys are captured (:func:`queries_keys`):

- ``nn.MultiheadAttention``: ``query``/``key`` projected with the ``q``/``k`` slices of
  ``in_proj_weight`` (or ``q_proj_weight``/``k_proj_weight``) and biases; ``attn_mask``
  (bool or additive) and ``key_padding_mask`` applied, ``is_causal`` honoured;
- any module with ``normviz_heads`` and ``normviz_queries_keys(*args, **kwargs)`` returning
  ``(q, k, scale, causal, additive mask or None)``: the protocol normviz's own transformers
  implement (``qkv``; ``q``/``k`` and their QK-norms), and a user's attention can;
- Hugging Face ``GPT2Attention`` (self-attention: ``c_attn``, its ``scaling``) and
  ``LlamaAttention`` (``q_proj``/``k_proj``, the rotary ``position_embeddings`` of the
  call, keys repeated over query groups, its ``scaling``), causal; their padding
  ``attention_mask`` is not applied (rows of padding tokens count too).

Matched by class name for the Hugging Face ones (no import of ``transformers``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Queries per block of recomputed logits.
CHUNK = 128


def heads_of(module: Any) -> int:
    """The number of attention heads of a module whose logits can be recomputed; 0 otherwise."""
    if isinstance(module, nn.MultiheadAttention):
        return int(module.num_heads)
    name = type(module).__name__
    if name == "GPT2Attention" and not getattr(module, "is_cross_attention", False):
        return int(module.num_heads)
    if name == "LlamaAttention":
        return int(module.config.num_attention_heads)
    if callable(getattr(module, "normviz_queries_keys", None)):
        return int(getattr(module, "normviz_heads", 0))
    return 0


def _split(z: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H·d) → (B, H, T, d)."""
    b, t, _ = z.shape
    return z.view(b, t, heads, -1).transpose(1, 2)


def _input(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, i: int = 0) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def queries_keys(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, float, bool, torch.Tensor | None]:
    """``(q, k, scale, causal, additive mask or None)`` of one call, q and k as (B, H, T, d)."""
    if isinstance(module, nn.MultiheadAttention):
        return _mha(module, args, kwargs)
    name = type(module).__name__
    if name in ("GPT2Attention", "LlamaAttention"):
        x = _input(args, kwargs, "hidden_states")
        if name == "GPT2Attention":
            q, k, _ = module.c_attn(x).split(module.split_size, dim=2)
            return _split(q, module.num_heads), _split(k, module.num_heads), float(module.scaling), True, None
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        shape = (*x.shape[:-1], -1, module.head_dim)
        q = module.q_proj(x).view(shape).transpose(1, 2)
        k = module.k_proj(x).view(shape).transpose(1, 2)
        cos, sin = _input(args, kwargs, "position_embeddings", 1)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, repeat_kv(k, module.num_key_value_groups), float(module.scaling), True, None
    own = getattr(module, "normviz_queries_keys", None)
    if callable(own):
        q, k, scale, causal, mask = own(*args, **kwargs)
        return q, k, float(scale), bool(causal), mask
    raise TypeError(f"no attention adapter for {type(module).__name__}")


def _mha(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]
         ) -> tuple[torch.Tensor, torch.Tensor, float, bool, torch.Tensor | None]:
    query, key = _input(args, kwargs, "query", 0), _input(args, kwargs, "key", 1)
    if not module.batch_first and query.dim() == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if query.dim() == 2:  # unbatched
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    e = module.embed_dim
    if module.in_proj_weight is not None:
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    b_q = b_k = None
    if module.in_proj_bias is not None:
        b_q, b_k = module.in_proj_bias[:e], module.in_proj_bias[e:2 * e]
    h = module.num_heads
    q, k = _split(F.linear(query, w_q, b_q), h), _split(F.linear(key, w_k, b_k), h)
    if module.bias_k is not None:  # add_bias_kv: one more key
        k = torch.cat([k, _split(module.bias_k.expand(k.shape[0], 1, e), h)], dim=2)
    mask = None
    attn_mask = _input(args, kwargs, "attn_mask", 5)
    padding = _input(args, kwargs, "key_padding_mask", 3)
    b, t, s = q.shape[0], q.shape[2], k.shape[2]
    if attn_mask is not None:
        m = attn_mask if attn_mask.dim() == 3 else attn_mask.expand(b * h, t, attn_mask.shape[-1])
        m = m.reshape(b, h, t, -1)
        mask = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, -math.inf) \
            if m.dtype == torch.bool else m.to(q.dtype)
    if padding is not None:
        pad = padding.reshape(b, 1, 1, -1)
        pad = torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, -math.inf) \
            if pad.dtype == torch.bool else pad.to(q.dtype)
        mask = pad if mask is None else mask + pad
    causal = bool(_input(args, kwargs, "is_causal", 7)) and attn_mask is None
    if mask is not None and mask.shape[-1] != s:  # add_bias_kv's extra key: never masked
        mask = F.pad(mask, (0, s - mask.shape[-1]))
    return q, k, 1 / math.sqrt(e // h), causal, mask


def logit_stats(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool, mask: torch.Tensor | None,
                chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: the maximum attention logit and the mean entropy of the attention rows, float32.

    ``q`` (B, H, T, d), ``k`` (B, H, S, d); ``mask``: additive, broadcastable to (B, H, T, S);
    ``causal``: query i sees keys up to i + S − T. Computed ``chunk`` queries at a time.
    """
    q, k = q.float(), k.float()
    b, h, t, _ = q.shape
    s = k.shape[2]
    kt = k.transpose(-2, -1)
    top = torch.full((h,), -math.inf, device=q.device)
    entropy = torch.zeros(h, device=q.device)
    keys = torch.arange(s, device=q.device)
    for start in range(0, t, chunk):
        stop = min(t, start + chunk)
        z = (q[:, :, start:stop] @ kt) * scale  # (B, H, c, S)
        if mask is not None:
            z = z + (mask[..., start:stop, :] if mask.shape[-2] == t else mask)
        if causal:
            rows = torch.arange(start, stop, device=q.device) + (s - t)
            z = z.masked_fill(keys > rows[:, None], -math.inf)
        top = torch.maximum(top, z.amax(dim=(0, 2, 3)))
        logp = torch.log_softmax(z, dim=-1)
        ent = -(logp.exp() * logp).nan_to_num(0.0, 0.0, 0.0).sum(-1)  # masked keys: 0·(−inf) → 0
        entropy += ent.sum(dim=(0, 2))
    return top, entropy / (b * t)
