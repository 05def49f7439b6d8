"""The classic normalization results and the seed's simulations as named built-in experiments.

Each experiment is small and quick on a CPU by default and grows with its options
(:func:`paper_experiment`); each trains on synthetic data with fixed seeds, and the
``*_findings`` functions of :mod:`normviz.analysis.findings` (NumPy only, re-exported
here) measure the paper's finding **from the recorded run** (``normviz.open(path)``), so
the tests, ``benchmarks/papers_report.py`` and the gallery read the same numbers a
user's ``normviz record --experiment NAME`` file holds. One module per paper builds its
experiment: :mod:`.label_smoothing`, :mod:`.ioffe`, :mod:`.xiong`, :mod:`.wu_he`,
:mod:`.santurkar`, :mod:`.he`, :mod:`.kosson`, :mod:`.wortsman`, :mod:`.wu_johnson`; ``seed-bn-ln`` is the seed's MLP
(:func:`normviz.experiments.seeds.build_seed_mlp`).

==================  ==================  ======================================================
experiment          kinds               what one run holds
==================  ==================  ======================================================
label-smoothing     none                three copies of one classifier (same init, same
                                        batches): plain CE (``copies.ce.*``), the seed's
                                        smoothing ε/(K−1) (``copies.seed.*``),
                                        ``nn.CrossEntropyLoss(label_smoothing=ε)``, ε/K
                                        (``copies.torch.*``); scalars ``loss_<copy>``,
                                        ``test_acc_<copy>``
seed-bn-ln          batch, layer, none  the seed's MLP, its data and its training (SGD 1e-3)
ioffe-fig1          batch, none         3×100 sigmoid MLP, binary MNIST-like data; per-unit
                                        percentiles of ``norm3``'s output (the last sigmoid's
                                        input); scalar ``test_acc``. Turns on
                                        ``torch.set_flush_denormal(True)`` for the process
xiong-ln            layer               Pre-LN (``pre.*``) and Post-LN (``post.*``)
                                        transformers with the same weights, at
                                        initialization (lr 0); scalars ``loss_pre``,
                                        ``loss_post``
wu-he-batch         none, batch, group  VGG-style CNN (``net.*``); every forward also runs
                                        probe batches of 16/8/4/2 (calls 1–4 of each layer;
                                        no gradient, running statistics untouched) beside
                                        the training batch of 32 (call 0); ``test_acc``
santurkar-ics       batch, none         25×10 deep linear network; scalars ``ics_l2/<layer>``,
                                        ``ics_rel/<layer>``, ``ics_cos/<layer>`` every 100 steps
santurkar-ics-vgg   batch, none         VGG-style CNN; the same ICS scalars every 25 steps
kosson-rotation     batch, layer        MLP 64-256-256-10, hidden Linears (``fc1``, ``fc2``)
                                        each feeding a norm; weight decay on them only
wortsman-qk         layer               tiny GPT (below) at lr 0.1, warm-up and cosine decay;
                                        ``qk_norm=True`` adds QK-norm; the attention
                                        statistics of every attention layer
wu-johnson-bn       batch               small CNN (``norm1``–``norm3``) at batch ``batch``, lr
                                        0.05·B/32, ``schedule`` constant or cosine; eval
                                        series ``eval`` (EMA), ``precise`` (PreciseBN),
                                        ``batch`` (own statistics); scalars ``test_acc_ema``,
                                        ``test_acc_precise``, ``test_acc_batch``
he-outliers         layer, none         tiny GPT on a synthetic language (:mod:`normviz.
                                        experiments.language`); ``none``: He et al.'s
                                        outlier-protected block (no norms, QK-norm, branch
                                        gain 0.2, no final norm); ``massive_activations``
                                        on the residual stream's norm slots
==================  ==================  ======================================================

Variants that share a norm kind (the three losses, Pre- vs Post-LN) are trained side by
side in one model, under one run: the loss that is minimised is their sum, which leaves
each copy's gradients exactly what they would be alone. Their layers are told apart by
the prefix, their own losses are scalars (``loss_ce``, ``loss_pre``, …).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from normviz.analysis.correlation import spearman
from normviz.analysis.findings import (
    attention_findings,
    final_loss,
    he_outlier_findings,
    ioffe_findings,
    label_smoothing_findings,
    massive_findings,
    santurkar_findings,
    wu_he_batch_findings,
    wu_he_fig6_findings,
    xiong_findings,
)
from normviz.experiments.base import Experiment, Setup
from normviz.experiments.papers.he import build_he_outliers
from normviz.experiments.papers.ioffe import build_ioffe
from normviz.experiments.papers.kosson import build_kosson
from normviz.experiments.papers.label_smoothing import SMOOTHING_VARIANTS, SeedLabelSmoothingCE, build_label_smoothing
from normviz.experiments.papers.santurkar import build_santurkar_dln, build_santurkar_vgg
from normviz.experiments.papers.wortsman import build_wortsman
from normviz.experiments.papers.wu_he import build_wu_he
from normviz.experiments.papers.wu_johnson import build_wu_johnson
from normviz.experiments.papers.xiong import build_xiong
from normviz.experiments.seeds import build_seed_mlp

__all__ = [
    "attention_findings",
    "PAPER_EXPERIMENTS",
    "SMOOTHING_VARIANTS",
    "SeedLabelSmoothingCE",
    "final_loss",
    "he_outlier_findings",
    "massive_findings",
    "ioffe_findings",
    "label_smoothing_findings",
    "paper_experiment",
    "santurkar_findings",
    "spearman",
    "wu_he_batch_findings",
    "wu_he_fig6_findings",
    "xiong_findings",
]

#: name -> (description, norm kinds, default steps, builder, recorder statistics).
_BUILDERS: dict[str, tuple[str, tuple[str, ...], int, Callable[..., Setup], dict[str, list[str]]]] = {
    "label-smoothing": (
        "plain CE vs the seed's label smoothing (eps/(K-1)) vs nn.CrossEntropyLoss(label_smoothing) (eps/K), "
        "one classifier",
        ("none",), 300, build_label_smoothing, {},
    ),
    "seed-bn-ln": (
        "the seed's MLP with and without BatchNorm / LayerNorm (full-batch SGD 1e-3, 100 steps)",
        ("batch", "layer", "none"), 100, build_seed_mlp, {},
    ),
    "ioffe-fig1": (
        "Ioffe & Szegedy 2015 Fig. 1: 3x100 sigmoid MLP +- BN, per-unit percentiles of the last sigmoid input "
        "(try --every 10)",
        ("batch", "none"), 2000, build_ioffe, {"channel_percentiles": ["norm3"]},
    ),
    "xiong-ln": (
        "Xiong et al. 2020: Pre-LN vs Post-LN transformer at init, FFN gradient norm vs depth (lr 0)",
        ("layer",), 3, build_xiong, {},
    ),
    "wu-he-batch": (
        "Wu & He 2018: BN batch-stat noise vs batch size (probes 16/8/4/2), GN batch-independent; Fig. 6 percentiles",
        ("none", "batch", "group"), 300, build_wu_he, {},
    ),
    "santurkar-ics": (
        "Santurkar et al. 2018: gradient-based ICS of a 25x10 deep linear network +- BN (try --every 10)",
        ("batch", "none"), 1000, build_santurkar_dln, {},
    ),
    "santurkar-ics-vgg": (
        "Santurkar et al. 2018: gradient-based ICS of a VGG-style CNN, with and without BN",
        ("batch", "none"), 300, build_santurkar_vgg, {},
    ),
    "kosson-rotation": (
        "Kosson et al. 2024: weights feeding a norm settle at the predicted angle per step (MLP, SGD with "
        "momentum; try optimizer='adamw', weight_decay=0; --every 10)",
        ("batch", "layer"), 3000, build_kosson, {},
    ),
    "wortsman-qk": (
        "Wortsman/Dehghani/Zhai et al. 2023: at lr 0.1 a tiny GPT's attention logits explode and its entropy "
        "collapses without QK-norm (try qk_norm=True: bounded)",
        ("layer",), 300, build_wortsman, {"attention_max_logit": ["*"], "attention_entropy": ["*"]},
    ),
    "he-outliers": (
        "He et al. 2024: outlier features (kurtosis of channel RMS) grow in a pre-LN tiny GPT, not in the "
        "outlier-protected block without norms (lr 3e-3; try lr=1e-3; --every 50)",
        ("layer", "none"), 1000, build_he_outliers,
        {"massive_activations": ["blocks.*.norm1", "blocks.*.norm2", "norm_f"]},
    ),
    "wu-johnson-bn": (
        "Wu & Johnson 2021: BatchNorm's batch vs population statistics shrink as 1/sqrt(B); at a large batch and "
        "constant lr the running averages (EMA) lag, PreciseBN fixes it (try batch=2/128, schedule='cosine')",
        ("batch",), 384, build_wu_johnson, {"bn_running_gap": ["*"]},
    ),
}


def paper_experiment(name: str, *, steps: int | None = None, **options: Any) -> Experiment:
    """The built-in experiment ``name`` with builder options changed (sizes, learning rate, …).

    ``options`` are keyword arguments of the experiment's builder (e.g. ``layers=6`` for
    ``xiong-ln``, ``flip=0.1`` for ``ioffe-fig1``, ``ics_every=50``); ``steps`` replaces the
    default number of training steps. ``paper_experiment(name)`` is ``EXPERIMENTS[name]``.
    """
    try:
        description, kinds, default_steps, build, statistics = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown paper experiment {name!r}; known: {', '.join(_BUILDERS)}") from None
    exp = Experiment(name, description, kinds, default_steps, partial(build, **options) if options else build,
                     {k: list(v) for k, v in statistics.items()})
    return replace(exp, steps=steps) if steps is not None else exp


PAPER_EXPERIMENTS: dict[str, Experiment] = {name: paper_experiment(name) for name in _BUILDERS}
