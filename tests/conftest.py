"""Shared fixtures: headless matplotlib, small models and a trained run."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def train(model, path, *, steps=5, every=1, batch=None, lr=1e-2, make_batch=None, **kwargs):
    """Train *model* for *steps* SGD steps under a Recorder; returns the losses."""
    import normviz

    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with normviz.Recorder(model, path, every=every, **kwargs) as rec:
        for _ in range(steps):
            x = make_batch(gen) if make_batch else batch
            opt.zero_grad()
            loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(loss.item())
    return losses


@pytest.fixture
def run_path(tmp_path):
    return tmp_path / "run.h5"


SCRIPTS = __import__("pathlib").Path(__file__).resolve().parent / "scripts"


class RealRuns:
    """Run files of real models' training scripts, recorded by ``normviz record SCRIPT``.

    ``resnet18``: ResNet-18 in torchvision's layout (41 layers, 20 BatchNorms, a
    512-channel stage), its module imported by the script from the file beside it;
    ``gpt2``: a Hugging Face GPT-2 from a small ``GPT2Config`` (9 LayerNorms);
    ``ranks``: the ResNet-18 script run as two torchrun ranks (``RANK``/``WORLD_SIZE``);
    ``seed_cnn``: the built-in seed CNN with every norm kind.
    """

    RESNET18_ARGS = ("--steps", "3", "--size", "16")
    GPT2_ARGS = ("--steps", "3")

    def __init__(self, folder):
        import subprocess
        import sys

        self.folder = folder
        env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "2"}

        def record(*args, extra_env=None):
            proc = subprocess.run([sys.executable, "-m", "normviz", "record", *args], cwd=folder,
                                  env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            return proc

        self.resnet18 = folder / "resnet18" / "train_resnet18.h5"
        self.gpt2 = folder / "gpt2" / "train_gpt2.h5"
        self.ranks = [folder / "ranks" / f"train_resnet18.rank{r}.h5" for r in range(2)]
        self.seed_cnn = folder / "seed-cnn"
        self.resnet18_stdout = record(str(SCRIPTS / "train_resnet18.py"), "--out", str(self.resnet18), "--",
                                      *self.RESNET18_ARGS).stdout
        self.gpt2_stdout = record(str(SCRIPTS / "train_gpt2.py"), "--out", str(self.gpt2), "--", *self.GPT2_ARGS).stdout
        for rank, path in enumerate(self.ranks):
            record(str(SCRIPTS / "train_resnet18.py"), "--out", str(path), "--", "--steps", "2", "--size", "8",
                   "--batch-size", str(4 + 2 * rank), extra_env={"RANK": str(rank), "WORLD_SIZE": "2"})
        record("--experiment", "seed-cnn", "--steps", "3", "--out", str(self.seed_cnn), "-q")


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory):
    """:class:`RealRuns`, recorded once per test session (about half a minute)."""
    return RealRuns(tmp_path_factory.mktemp("real-runs"))
