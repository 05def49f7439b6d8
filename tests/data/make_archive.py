"""Write the small run files archived in tests/data/schema-<version>/ (see README.md there).

Run it with the normviz release whose schema is being archived, e.g. from a checkout of
that commit: ``PYTHONPATH=<checkout> python tests/data/make_archive.py tests/data/schema-1.0``.
The files are never rewritten by later versions: each stays as that version wrote it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import normviz


def model() -> nn.Module:
    """Every kind of site: BatchNorm, GroupNorm and LayerNorm layers, plain layers, a thinned layer."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.LayerNorm(5), nn.Linear(5, 2),
    )


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    with normviz.Recorder(net, folder / "cnn-mixed.h5", every=2, max_channels=4, label="archive",
                          experiment="archive", meta={"purpose": "schema archive"}) as rec:
        for _ in range(5):
            opt.zero_grad()
            loss = net(torch.randn(4, 3, 5, 5, generator=gen)).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss, note=1.5)
            if hasattr(rec, "evaluating"):  # schema 1.4: an eval series beside the run
                net.eval()
                with torch.no_grad(), rec.evaluating():
                    net(torch.randn(4, 3, 5, 5, generator=gen))
                net.train()
    write_expected(folder)


def write_expected(folder: Path) -> None:
    """What this version's reader reads from the files, for later readers to read the same."""
    import json

    import numpy as np

    def listed(a: object) -> object:
        return np.where(np.isnan(a), None, a).tolist() if isinstance(a, np.ndarray) else a

    with normviz.open(folder / "cnn-mixed.h5") as run:
        names, grad_norm = run.grad("grad_norm")
        expected = {
            "schema_version": run.schema_version,
            "layers": [[l.name, l.kind, l.module_type, l.channels, l.calls] for l in run.layers],
            "steps": listed(run.steps),
            "scalar_steps": listed(run.scalar_steps),
            "loss": listed(run.scalar("loss")),
            "note": listed(run.scalar("note")),
            "channel_index_1_input": [int(i) for i in run.channel_index("1", "input")],
            "channel_mean_1_input": listed(run.stat("channel_mean", "1", "input")),
            "percentiles_4_output": listed(run.stat("percentiles", "4", "output")),
            "hist_9_input": listed(run.stat("hist", "9", "input")),
            "group_scale_4_input": listed(run.stat("group_scale", "4", "input")),
            "running_var_1": listed(run.module_stat("running_var", "1")),
            "grad_names": names,
            "grad_norm": listed(grad_norm),
            "update_ratio": listed(run.grad("update_ratio")[1]),
            "meta_user": run.meta.get("user"),
        }
        if hasattr(run, "eval_series") and run.eval_series():
            ev = run.eval()
            expected["eval_steps"] = listed(ev.steps)
            expected["eval_channel_mean_1_output"] = listed(ev.stat("channel_mean", "1", "output"))
            expected["eval_meta_series"] = [ev.meta.get("series"), ev.meta.get("series_of")]
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
