"""NormvizCallback for PyTorch Lightning: steps counted at optimizer steps, gradients
read after clipping (Lightning runs forward/backward/clipping inside optimizer.step(closure))."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

import normviz  # noqa: E402
from normviz.integrations.lightning import NormvizCallback  # noqa: E402


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class GradProbe(L.Callback):
    """Reads layer net.0's gradient norm where the optimizer is about to use it: after
    clipping, i.e. in a post-step hook (Lightning zeroes at the next closure)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self._last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            layer = pl_module.net[0]
            g = torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])
            self.norms.append(float(g.double().norm()))


def loader(n: int = 48, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def fit(tmp_path, name: str, **trainer_kwargs):
    torch.manual_seed(0)
    model = TinyModule()
    cb = NormvizCallback(tmp_path / f"{name}.h5", every=1)
    probe = GradProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        callbacks=[cb, probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(model, loader())
    return normviz.open(cb.run_path), probe, cb


@pytest.mark.parametrize(
    "case,kwargs",
    [
        ("plain", {}),
        ("accumulate", {"accumulate_grad_batches": 2}),
        ("clip", {"gradient_clip_val": 0.05}),
    ],
)
def test_callback_records_optimizer_steps(tmp_path, case, kwargs):
    run, probe, cb = fit(tmp_path, case, **kwargs)
    with run:
        assert run.status["clean"] == 1
        assert list(run.steps) == list(range(6))  # six optimizer steps, whatever the batches
        assert run.scalar("loss").shape == (6,)
        assert np.isfinite(run.scalar("loss")).all()
        kinds = {layer.name: layer.kind for layer in run.layers}
        assert kinds["net.1"] == "batch"
        names, gn = run.grad("grad_norm")
        assert np.isfinite(gn).all()
        # The recorded gradient is the one the optimizer applied (accumulated, clipped),
        # not the previous step's (Lightning runs the closure inside optimizer.step).
        col = names.index("net.0")
        np.testing.assert_allclose(gn[:, col], probe.norms, rtol=1e-5)
        if case == "clip":
            _, total = run.grad("grad_norm")
            assert (np.sqrt((total**2).sum(axis=1)) <= 0.05 * 1.0001).all()
        if case == "accumulate":  # the loss of a step is the mean over its two batches
            torch.manual_seed(0)
            assert run.scalar("loss")[0] == pytest.approx(_first_window_loss(TinyModule()), rel=1e-5)
        _, ratio = run.grad("update_ratio")
        assert np.isfinite(ratio).all() and (ratio > 0).all()


def _first_window_loss(model: TinyModule) -> float:
    model.train()
    batches = list(loader())
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(x), y) for x, y in batches[:2]]
    return float(sum(losses) / 2)


def test_bf16_mixed_stats_are_float32_and_finite(tmp_path):
    run, probe, _ = fit(tmp_path, "bf16", precision="bf16-mixed")
    with run:
        assert list(run.steps) == list(range(6))
        mean = run.stat("mean", "net.1", "input")
        assert mean.dtype == np.float32 and np.isfinite(mean).all()
        std = run.stat("std", "net.0", "output")
        assert std.dtype == np.float32 and np.isfinite(std).all() and (std > 0).all()
        names, gn = run.grad("grad_norm")
        assert gn.dtype == np.float32 and np.isfinite(gn).all()
        np.testing.assert_allclose(gn[:, names.index("net.0")], probe.norms, rtol=1e-4)


def test_exception_closes_the_file(tmp_path):
    class Boom(TinyModule):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = NormvizCallback(tmp_path / "boom.h5")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, callbacks=[cb], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Boom(), loader())
    with normviz.open(cb.run_path) as run:
        assert run.status["clean"] == 1
        assert list(run.steps) == [0, 1, 2]


def test_the_first_validation_batch_is_the_eval_series(tmp_path):
    class Validated(TinyModule):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)  # a submodule, not self(x)

    torch.manual_seed(0)
    model = Validated()
    cb = NormvizCallback(tmp_path / "val.h5")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, val_check_interval=2, callbacks=[cb], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(), loader(24))
    with normviz.open(cb.run_path) as run:
        assert list(run.steps) == list(range(6))
        ev = run.eval()
        # After optimizer steps 2, 4 and 6 (the sanity check before training is not recorded).
        assert ev.steps.tolist() == [2, 4, 6]
        assert ev.stat("numel", "net.0", "output").tolist() == [8 * 16] * 3  # one batch of 8
        # The last pass ran on the final weights: the first validation batch through the
        # BatchNorm in eval mode (its running statistics), against float64.
        x = loader(24).dataset.tensors[0][:8].double()
        net = model.net.double().eval()
        with torch.no_grad():
            want = net[1](net[0](x)).mean(0).numpy()
        np.testing.assert_allclose(ev.stat("channel_mean", "net.1", "output")[-1], want, rtol=1e-4, atol=1e-5)


def test_rank_path():
    from normviz.integrations import rank_path

    assert str(rank_path("out/run.h5", 0, 1)) == "out/run.h5"
    assert str(rank_path("out/run.h5", 1, 2)) == "out/run.rank1.h5"
    assert str(rank_path("out/run", 3, 4)) == "out/run.rank3.h5"


def test_model_parallel_strategy_fsdp2_on_cpu_merges_to_the_one_device_run(tmp_path):
    """Lightning's ModelParallelStrategy (FSDP2) runs on CPU processes; its FSDPStrategy (FSDP1)
    refuses the CPU, so it is not tested here (see docs/integrations.md)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from normviz.merge import MergedRun, merge_ranks

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_lightning_fsdp2.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    for devices, batch in ((2, 4), (1, 8)):
        proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--devices", str(devices),
                               "--batch", str(batch)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sharded,) = merge_ranks([normviz.open(p) for p in sorted(tmp_path.glob("run-2.rank*.h5"))])
    with normviz.open(tmp_path / "run-1.h5") as single:
        try:
            assert isinstance(sharded, MergedRun) and sharded.sharded and list(sharded.steps) == [0, 1, 2]
            for stat in ("grad_norm", "weight_norm", "update_ratio"):
                names, got = sharded.grad(stat)
                assert names == single.grad(stat)[0]
                np.testing.assert_allclose(got, single.grad(stat)[1], rtol=1e-5, err_msg=stat)
            np.testing.assert_allclose(sharded.stat("channel_var", "net.1", "input"),
                                       single.stat("channel_var", "net.1", "input"), rtol=1e-5)
        finally:
            sharded.close()
