"""Tensor operations a recorded training step adds, per model: the GPU proxy (each is a kernel
launch on CUDA), counted on CPU.

    python benchmarks/op_counts.py                       # every model of overhead.py
    python benchmarks/op_counts.py --models resnet8-bn transformer-ln

Each model of ``benchmarks/overhead.py`` trains a few steps bare, then with ``Recorder(every=1)``
and with ``Recorder(every=10)``; one step of each (the third: after the file's one-time
creation at step 0, and after step 1, where what a recorder caches from step to step is
built once) runs under a ``TorchDispatchMode`` that counts every ATen operation dispatched
below autograd — forward, backward, optimizer and ``rec.step()``, the ops a GPU would launch
kernels for. Views (``is_view``) launch nothing and are counted apart. The budget from the
fused-statistics issue: at most 3 extra ops per recorded site + 20 per step.

``--device-path`` counts the ops a GPU run chooses (``normviz.record.reductions.device_kernels``:
one ``aminmax`` instead of ``amin`` + ``amax``, ``_foreach_norm`` instead of per-tensor
reductions), which on a CPU are slower than the ones it picks there.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py, beside this script
import overhead  # noqa: E402

import normviz  # noqa: E402
from normviz.record import reductions  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts ATen operations by name; views apart (they launch no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "is_view", False):
            self.views += 1
        else:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_step(spec: overhead.ModelSpec, every: int | None, folder: Path,
               statistics: Sequence[str] = ()) -> tuple[Counter[str], int, int]:
    """(ops by name, views, recorded sites) of one training step after two warm-up steps;
    ``every`` None: bare. With ``every=10`` the counted step is one that is not recorded.
    ``statistics``: opt-in statistics to record too."""
    torch.manual_seed(0)
    model, opt = spec.build()
    x, y = spec.data(torch.Generator().manual_seed(0))
    rec = None if every is None else normviz.Recorder(model, folder / f"{spec.name}-{every}.h5", every=every,
                                                       statistics=list(statistics))

    def step(after: Callable[[torch.Tensor], None]) -> None:
        opt.zero_grad(set_to_none=True)
        loss = spec.loss(model(x), y)
        loss.backward()
        opt.step()
        after(loss)

    after: Callable[[torch.Tensor], None] = (lambda loss: None) if rec is None else (lambda loss: rec.step(loss=loss))
    step(after)  # step 0: recorded in both recorder variants; creates the file
    step(after)  # step 1: what is kept from step to step is built
    if rec is not None:
        rec.flush()
    counter = OpCounter()
    with counter:
        step(after)  # step 2: recorded with every=1, not with every=10
    sites = 0
    if rec is not None:
        rec.close()
        with normviz.open(folder / f"{spec.name}-{every}.h5") as run:
            sites = len(run.sites)
    return counter.ops, counter.views, sites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(overhead.MODELS), choices=list(overhead.MODELS))
    ap.add_argument("--top", type=int, default=6, help="the most frequent extra ops listed per model")
    ap.add_argument("--stat", action="append", default=[], metavar="NAME",
                    help="an opt-in statistic to record too (repeatable), to measure its cost")
    ap.add_argument("--device-path", action="store_true",
                    help="count the ops a GPU run chooses (see the module's docstring)")
    args = ap.parse_args()
    reductions.FORCE_DEVICE_PATH = args.device_path
    torch.set_num_threads(2)
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = overhead.MODELS[name]
            bare, bare_views, _ = count_step(spec, None, Path(tmp))
            rec1, views1, sites = count_step(spec, 1, Path(tmp), args.stat)
            rec10, _, _ = count_step(spec, 10, Path(tmp), args.stat)
            extra = sum(rec1.values()) - sum(bare.values())
            top = (rec1 - bare).most_common(args.top)
            rows.append((name, sum(bare.values()), sum(rec1.values()), extra, sites, 3 * sites + 20,
                         sum(rec10.values()) - sum(bare.values()), views1 - bare_views, top))
    print("# Extra tensor operations per training step (the GPU proxy)\n")
    print(f"- command: python benchmarks/op_counts.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- python {platform.python_version()}, torch {torch.__version__}; {time.time() - t0:.0f} s\n")
    print("| model | bare ops | recorded step | extra | sites | budget 3/site + 20 | extra, unrecorded step "
          "(every=10) | extra views |")
    print("|---|---|---|---|---|---|---|---|")
    for name, b, r, extra, sites, budget, unrec, views, _ in rows:
        mark = "" if extra <= budget else " (over)"
        print(f"| {name} | {b} | {r} | {extra}{mark} | {sites} | {budget} | {unrec} | {views} |")
    print("\nMost frequent extra ops of a recorded step:\n")
    for name, *_, top in rows:
        print(f"- {name}: " + ", ".join(f"{op} +{n}" for op, n in top))


if __name__ == "__main__":
    main()
