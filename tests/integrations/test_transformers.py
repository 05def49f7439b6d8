"""NormvizCallback for the Hugging Face Trainer, on a tiny model built from a config."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import normviz  # noqa: E402
from normviz.integrations.transformers import NormvizCallback  # noqa: E402

VOCAB, SEQ = 64, 12


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class GradProbe(transformers.TrainerCallback):
    """The gradient norm of one weight where the optimizer takes it: after clipping."""

    def __init__(self, param: str) -> None:
        self.param = param
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        p = dict(model.named_parameters())[self.param]
        self.norms.append(float(p.grad.double().norm()))


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def train(tmp_path, name: str, steps: int = 4, **args_kwargs):
    model = tiny_llama()
    cb = NormvizCallback(tmp_path / f"{name}.h5", every=1)
    probe = GradProbe("model.layers.0.mlp.down_proj.weight")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **args_kwargs,
    )
    evaluating = args_kwargs.get("eval_strategy", "no") != "no"
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[cb, probe],
                                   eval_dataset=TokenDataset(8) if evaluating else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return normviz.open(cb.run_path), probe, trainer


@pytest.mark.parametrize(
    "case,kwargs",
    [("plain", {}), ("accumulate-clip", {"gradient_accumulation_steps": 2, "max_grad_norm": 0.1})],
)
def test_trainer_callback_records(tmp_path, case, kwargs):
    run, probe, trainer = train(tmp_path, case, **kwargs)
    with run:
        assert run.status["clean"] == 1
        assert list(run.steps) == [0, 1, 2, 3]
        kinds = {layer.name: layer.kind for layer in run.layers}
        assert kinds["model.norm"] == "rms"
        assert kinds["model.layers.0.input_layernorm"] == "rms"
        assert run.norm_kind == "rms"
        # loss: the model's own output loss, one per optimizer step, matching the Trainer's log
        loss = run.scalar("loss")
        assert loss.shape == (4,) and np.isfinite(loss).all()
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        np.testing.assert_allclose(loss, logged, rtol=1e-3)
        names, gn = run.grad("grad_norm")
        assert np.isfinite(gn).all()
        # the gradient the optimizer applied (after accumulation and clipping)
        np.testing.assert_allclose(gn[:, names.index("model.layers.0.mlp.down_proj")], probe.norms, rtol=1e-5)
        if "max_grad_norm" in kwargs:
            assert (np.sqrt((gn.astype(np.float64) ** 2).sum(axis=1)) <= 0.1 * 1.001).all()


def test_the_trainers_evaluation_is_the_eval_series(tmp_path):
    run, _, trainer = train(tmp_path, "evaluated", eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    with run:
        assert list(run.steps) == [0, 1, 2, 3]
        ev = run.eval()
        # Evaluated after optimizer steps 2 and 4: the first eval batch of each evaluation.
        assert ev.steps.tolist() == [2, 4]
        assert ev.stat("numel", "model.norm", "input").tolist() == [4 * SEQ * 32] * 2
        # The final evaluation ran on the final weights: its first batch's final-norm output.
        model = trainer.model.eval()
        captured = []
        handle = model.model.norm.register_forward_hook(lambda m, a, out: captured.append(out.detach().double()))
        with torch.no_grad():
            model(input_ids=TokenDataset(8).ids[:4])
        handle.remove()
        want = captured[0].reshape(-1, 32).mean(0).numpy()
        np.testing.assert_allclose(ev.stat("channel_mean", "model.norm", "output")[-1], want, rtol=1e-4, atol=1e-5)
