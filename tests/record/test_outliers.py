"""rms_kurtosis (He et al. 2024's outlier features): known answers, float64, the fused path,
and how rank files merge it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.default_plugins.statistics import BUILTIN_STATISTICS
from normviz.record import stats as S

KURTOSIS = next(s for s in BUILTIN_STATISTICS if s.name == "rms_kurtosis")


def reference(x: np.ndarray) -> float:
    """Kurt over the last axis' channels of their RMS over every other axis, float64."""
    s2 = (x.astype(np.float64) ** 2).reshape(-1, x.shape[-1]).mean(0)
    return float((s2**2).mean() / s2.mean() ** 2)


def site_kurtosis(x: torch.Tensor, channel_dim: int = -1) -> float:
    class _Site:
        pass

    site = _Site()
    site.channel_dim = channel_dim  # type: ignore[attr-defined]
    ctx = S.SiteTensor(x, site, None, torch.Generator().manual_seed(0))
    return float(KURTOSIS.compute(ctx))


def test_known_answers():
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64, 32), generator=gen).float() * 2 - 1
    assert site_kurtosis(signs) == pytest.approx(1.0, abs=1e-6)  # every channel RMS 1
    one = torch.zeros(64, 32)
    one[:, 5] = torch.randn(64, generator=gen)
    assert site_kurtosis(one) == pytest.approx(32.0, rel=1e-6)  # one channel carries everything
    x = torch.randn(16, 8, 32, generator=gen)
    assert site_kurtosis(x * 1000.0) == pytest.approx(site_kurtosis(x), rel=1e-5)  # scale-invariant


def test_matches_float64_and_the_authors_convention():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, 48, generator=gen) + 0.3
    x[..., 7] *= 12.0  # a planted outlier channel
    kurt = site_kurtosis(x)
    assert kurt == pytest.approx(reference(x.numpy()), rel=1e-5)
    # The authors log var_unbiased(s² / mean s²): Kurt − 1 up to the factor d / (d − 1).
    s2 = (x.double() ** 2).reshape(-1, 48).mean(0)
    logged = float((s2 / s2.mean()).var())
    assert 1 + logged * 47 / 48 == pytest.approx(kurt, rel=1e-5)


def test_channels_first_layout():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, 5, 5, generator=gen)
    x[:, 2] *= 7.0
    assert site_kurtosis(x, 1) == pytest.approx(reference(x.movedim(1, -1).numpy()), rel=1e-5)


class Planted(nn.Module):
    """A block whose residual output has one channel ``gain`` times the others."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x) * torch.linspace(1.0, self.gain, 16)
        return self.head(self.norm(h))


def test_recorded_value_of_every_site_is_the_float64_one(tmp_path):
    torch.manual_seed(0)
    model = Planted(20.0)
    seen: dict[str, np.ndarray] = {}
    model.norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("norm|input", args[0].detach().numpy()))
    model.norm.register_forward_hook(lambda m, a, out: seen.__setitem__("norm|output", out.detach().numpy()))
    model.fc.register_forward_hook(lambda m, a, out: seen.__setitem__("fc|output", out.detach().numpy()))
    x = torch.randn(32, 10, 16)
    with normviz.Recorder(model, tmp_path / "k.h5") as rec:
        model(x).square().mean().backward()
        rec.step()
    with normviz.open(tmp_path / "k.h5") as run:
        for key, value in seen.items():
            layer, role = key.split("|")
            assert run.stat("rms_kurtosis", layer, role)[0] == pytest.approx(reference(value), rel=1e-5), key
        assert run.layout.stat("act", "rms_kurtosis").attrs["merge"] == "mean"
        # LayerNorm scales each token as a whole: the planted channels stay outliers after it.
        assert run.stat("rms_kurtosis", "norm", "output")[0] > 1.3


def test_merge_rules_follow_the_declaration(tmp_path, monkeypatch):
    """Two rank files of the same model: the kurtosis is merged as declared (an approximate
    mean, said in the notes), a statistic declared not mergeable is refused."""
    from normviz.merge import merge_ranks

    paths = []
    for rank in (0, 1):
        torch.manual_seed(rank)
        model = Planted(5.0 + rank)
        path = tmp_path / f"run.rank{rank}.h5"
        monkeypatch.setenv("RANK", str(rank))  # two rank files of one run, written by one process
        monkeypatch.setenv("WORLD_SIZE", "2")
        with normviz.Recorder(model, path, statistics=["sample"]) as rec:
            model(torch.randn(8, 4, 16)).square().mean().backward()
            rec.step()
        paths.append(path)
    runs = [normviz.open(p) for p in paths]
    try:
        assert [r.rank for r in runs] == [0, 1]
        (merged,) = merge_ranks(runs)
        per_rank = np.array([r.stat("rms_kurtosis", "norm", "input")[0] for r in runs])
        assert merged.stat("rms_kurtosis", "norm", "input")[0] == pytest.approx(per_rank.mean(), rel=1e-6)
        assert any("rms_kurtosis: approximate" in n for n in merged.notes)
        with pytest.raises(normviz.errors.MissingDataError, match="not mergeable"):
            merged.stat("sample", "norm", "input")
    finally:
        for r in runs:
            r.close()
