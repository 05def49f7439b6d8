"""Attention logits and entropy: recomputed from queries and keys, against explicit softmax(q kᵀ)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.experiments.language import TinyGPT
from normviz.record.attention import logit_stats

STATS = ["attention_max_logit", "attention_entropy"]


def explicit(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool,
             mask: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64, the whole matrix at once."""
    z = (q.double() @ k.double().transpose(-2, -1)) * scale
    if mask is not None:
        z = z + mask.double()
    if causal:
        t, s = z.shape[-2:]
        z = z.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(s - t + 1), -math.inf)
    p = z.softmax(-1)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return z.amax(dim=(0, 2, 3)).numpy(), ent.mean(dim=(0, 2)).numpy()


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_logit_stats_match_the_whole_matrix(causal):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 300, 8, generator=gen) * 2, torch.randn(2, 3, 300, 8, generator=gen)
    top, ent = logit_stats(q, k, 8 ** -0.5, causal, None, chunk=64)  # 5 blocks of queries
    want_top, want_ent = explicit(q, k, 8 ** -0.5, causal)
    np.testing.assert_allclose(top.numpy(), want_top, rtol=1e-5)
    np.testing.assert_allclose(ent.numpy(), want_ent, rtol=1e-4)


def test_known_entropies():
    # one-hot rows: entropy 0; equal logits over i + 1 causal keys: log(i + 1)
    q = torch.zeros(1, 1, 4, 2)
    top, ent = logit_stats(q, torch.zeros(1, 1, 4, 2), 1.0, True, None)
    assert float(ent) == pytest.approx(np.mean(np.log(np.arange(1, 5))), rel=1e-6) and float(top) == 0.0
    q = torch.tensor([[[[100.0, 0.0]] * 4]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]])
    top, ent = logit_stats(q, k, 1.0, False, None)
    assert float(top) == 100.0 and float(ent) < 1e-30


def record(model: nn.Module, path, batch: tuple, **call: object):
    with normviz.Recorder(model, path, statistics=STATS) as rec:
        out = model(*batch, **call)
        out = getattr(out, "logits", out)  # a Hugging Face model's output
        (out[0] if isinstance(out, tuple) else out).float().square().mean().backward()
        rec.step()
    return normviz.open(path)


def test_multihead_attention_with_a_mask(tmp_path):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(3, 10, 16)
    mask = torch.ones(10, 10, dtype=torch.bool).triu(1)
    with normviz.open(record(mha, tmp_path / "mha.h5", (x, x, x), attn_mask=mask).path) as run:
        got_top, got_ent = run.stat("attention_max_logit", "")[0], run.stat("attention_entropy", "")[0]
    w_q, w_k = mha.in_proj_weight[:16], mha.in_proj_weight[16:32]
    b_q, b_k = mha.in_proj_bias[:16], mha.in_proj_bias[16:32]
    with torch.no_grad():
        q = (x @ w_q.T + b_q).view(3, 10, 4, 4).transpose(1, 2)
        k = (x @ w_k.T + b_k).view(3, 10, 4, 4).transpose(1, 2)
    want_top, want_ent = explicit(q, k, 0.5, True)
    np.testing.assert_allclose(got_top, want_top, rtol=1e-5)
    np.testing.assert_allclose(got_ent, want_ent, rtol=1e-4)
    # the model's own attention weights (averaged over heads) agree with the recomputed rows
    _, weights = mha(x, x, x, attn_mask=mask, average_attn_weights=False)
    ent = -(weights.double() * weights.double().clamp_min(1e-300).log()).sum(-1).mean(dim=(0, 2))
    np.testing.assert_allclose(got_ent, ent.detach().numpy(), rtol=1e-4)


def test_tiny_gpt_with_and_without_qk_norm(tmp_path):
    torch.manual_seed(0)
    for qk in (False, True):
        model = TinyGPT("layer", layers=2, qk_norm=qk)
        idx = torch.randint(0, 64, (2, 64))
        seen = {}
        attn = model.blocks[1].attn
        attn.register_forward_hook(lambda m, a, o, seen=seen: seen.__setitem__("qk", m.normviz_queries_keys(a[0])))
        with normviz.open(record(model, tmp_path / f"gpt-{qk}.h5", (idx,)).path) as run:
            top = run.stat("attention_max_logit", "blocks.1.attn")[0]
            ent = run.stat("attention_entropy", "blocks.1.attn")[0]
            assert run.sites[[s.layer for s in run.sites].index("blocks.1.attn")].module_type == "Attention"
        q, k, scale, causal, _ = seen["qk"]
        want_top, want_ent = explicit(q.detach(), k.detach(), scale, causal)
        np.testing.assert_allclose(top, want_top, rtol=1e-5)
        np.testing.assert_allclose(ent, want_ent, rtol=1e-4)


def test_not_recorded_unless_asked(tmp_path):
    model = TinyGPT("layer", layers=1)
    with normviz.Recorder(model, tmp_path / "plain.h5") as rec:
        model(torch.randint(0, 64, (2, 16))).sum().backward()
        rec.step()
    with normviz.open(tmp_path / "plain.h5") as run:
        assert "blocks.0.attn" not in {s.layer for s in run.sites}


def test_hugging_face_gpt2_and_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_implementation="eager"))  # no dropout: comparable
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=64,
        vocab_size=100, attn_implementation="eager"))
    idx = torch.randint(0, 100, (2, 12))
    for name, model, layer in (("gpt2", gpt2, "transformer.h.1.attn"), ("llama", llama, "model.layers.1.self_attn")):
        with torch.no_grad():
            probs = model(idx, output_attentions=True).attentions[1].double()  # (B, H, T, T), eager softmax
        want_ent = -(probs * probs.clamp_min(1e-300).log()).sum(-1).mean(dim=(0, 2)).numpy()
        with normviz.open(record(model, tmp_path / f"{name}.h5", (idx,)).path) as run:
            ent = run.stat("attention_entropy", layer)[0]
            top = run.stat("attention_max_logit", layer)[0]
        np.testing.assert_allclose(ent, want_ent, rtol=1e-4, err_msg=name)
        assert np.isfinite(top).all() and (top > 0).all()
