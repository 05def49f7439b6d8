"""Real architectures: Hugging Face models built from tiny configs (no weights, no
downloads) record a training step, and their own norm classes get the right kind —
including T5's ``T5LayerNorm``, named LayerNorm but computing an RMS norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import normviz  # noqa: E402

VOCAB, SEQ, BATCH = 64, 8, 2
SMALL = {"vocab_size": VOCAB}


def _ids(g):
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=SEQ))


def mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        **SMALL, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=SEQ))


def gemma():
    return transformers.GemmaForCausalLM(transformers.GemmaConfig(
        **SMALL, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=SEQ))


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, n_embd=32, n_layer=2, n_head=4, n_positions=SEQ))


def bert():
    return transformers.BertForMaskedLM(transformers.BertConfig(
        **SMALL, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=SEQ))


def t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        **SMALL, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0))


def convnext():
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, image_size=32))


def text_batch(g):
    ids = _ids(g)
    return {"input_ids": ids, "labels": ids}


def image_batch(g):
    return {"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=g), "labels": torch.randint(0, 3, (BATCH,), generator=g)}


# model builder, batch builder, {norm module class: expected kind}
CASES = {
    "llama": (llama, text_batch, {"LlamaRMSNorm": "rms"}),
    "mistral": (mistral, text_batch, {"MistralRMSNorm": "rms"}),
    "gemma": (gemma, text_batch, {"GemmaRMSNorm": "rms"}),  # weight stored as (1 + w)
    "gpt2": (gpt2, text_batch, {"LayerNorm": "layer"}),
    "bert": (bert, text_batch, {"LayerNorm": "layer"}),
    "t5": (t5, text_batch, {"T5LayerNorm": "rms"}),  # called LayerNorm, computes RMS
    "convnext": (convnext, image_batch, {"ConvNextLayerNorm": "layer", "LayerNorm": "layer"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hf_model_records_and_detects_norm_kinds(tmp_path, name):
    build, make_batch, expected = CASES[name]
    torch.manual_seed(0)
    try:
        model = build()
    except (AttributeError, ImportError) as exc:  # a model this transformers version lacks
        pytest.skip(f"{name}: {exc}")
    model.train()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    path = tmp_path / f"{name}.h5"
    with normviz.Recorder(model, path) as rec:
        for _ in range(2):
            out = model(**make_batch(g))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=out.loss.detach())
    with normviz.open(path) as run:
        assert list(run.steps) == [0, 1]
        found: dict[str, set] = {}
        for layer in run.layers:
            found.setdefault(layer.module_type, set()).add(layer.kind)
        present = {cls for cls in expected if cls in found}
        assert present, f"{name}: none of {sorted(expected)} in {sorted(found)}"
        for cls in present:
            assert found[cls] == {expected[cls]}, f"{name}: {cls} classified as {found[cls]}"
        # every norm layer ran and its output statistics are finite
        norm_layers = run.norm_layers
        assert norm_layers and all(layer.calls >= 1 for layer in norm_layers)
        for layer in norm_layers:
            std = run.stat("std", layer.name, "output")
            assert np.isfinite(std).all()
        names, gn = run.grad("grad_norm")
        assert np.isfinite(gn[:, [names.index(layer.name) for layer in norm_layers if layer.name in names]]).all()
