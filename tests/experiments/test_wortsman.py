"""Wortsman / Dehghani / Zhai et al. 2023 (``wortsman-qk``): attention-logit growth and entropy
collapse without QK-norm at a high learning rate, checked from the recorded run files.

papers2.md §3.5 (T11, fast): lr 0.1, 300 steps, both variants. Without QK-norm the largest
attention logit over training exceeds 1000 (pilot: ≥ 2.5e4) and the final mean entropy falls
below 0.2 (pilot: ≤ 0.04); with QK-norm the logits stay below 50 (pilot: ≤ 19.4) and the
entropy above 1 (pilot: ≥ 1.75). Control: at lr 3e-3 both stay below 15 (pilot: ≤ 10.2).
"""

from __future__ import annotations

import pytest
from recorded import record_variants

import normviz
from normviz.experiments import papers
from normviz.plugins import get_plugin_host
from normviz.testing import RendererContract

VARIANTS = {"plain": ("layer", {}), "qk": ("layer", {"qk_norm": True}), "plain-low-lr": ("layer", {"lr": 3e-3}),
            "qk-low-lr": ("layer", {"lr": 3e-3, "qk_norm": True})}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    yield from record_variants(tmp_path_factory.mktemp("wortsman"), "wortsman-qk", VARIANTS, every=10)


def test_logits_explode_and_entropy_collapses_without_qk_norm(runs):
    plain = papers.attention_findings(runs["plain"])
    qk = papers.attention_findings(runs["qk"])
    assert plain["max_logit"] > 1000 and plain["entropy_final"] < 0.2
    assert qk["max_logit"] < 50 and qk["entropy_final"] > 1.0


def test_at_a_low_learning_rate_both_stay_bounded(runs):
    for name in ("plain-low-lr", "qk-low-lr"):
        assert papers.attention_findings(runs[name])["max_logit"] < 15, name


def test_attention_figure_tells_the_runs_apart_by_label(runs):
    fig = normviz.plot([runs["plain"], runs["qk"]], "attention")
    gids = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    for label in ("plain", "qk"):
        assert f"attention_max_logit:{label}:blocks.3.attn" in gids
        assert f"attention_entropy:{label}:blocks.0.attn" in gids
    RendererContract(get_plugin_host().renderers()["attention"], [runs["plain"], runs["qk"]]).check_all()
