"""The host's share of a recorded step: what recording adds when the tensors are too small to matter.

    python benchmarks/host_cost.py                       # every model of overhead.py, about 1 min
    python benchmarks/host_cost.py --models resnet8-bn transformer-ln --rounds 5

Each model of ``benchmarks/overhead.py`` trains on a batch of 2 (images cut to 8×8) — the same
layers, parameters and optimizer, but kernels of a few microseconds — bare and with
``Recorder(every=1)``, in interleaved rounds. What recording adds per step is then its host
cost: the hooks' Python, the dispatch of its tensor ops, the row's assembly and the writer
thread's work (sorting the samples, HDF5), which do not shrink with the tensors. On a GPU the
kernels run asynchronously and this is the part the training thread pays in full: a model whose
step is host-bound (many small layers, a fast GPU) slows down by about this much per recorded step. Runs with overhead.py's allocator setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py, beside this script
import overhead  # noqa: E402

import normviz  # noqa: E402


def tiny(data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The model's batch cut to 2 samples (and images to 8×8 pixels)."""
    x, y = data[0][:2], data[1][:2]
    if x.dim() == 4:  # in the batch's memory format (the channels-last models' stays channels-last)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x[:, :, :8, :8].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, y


def session(spec: overhead.ModelSpec, data: tuple[Tensor, Tensor], recorded: bool, steps: int,
            folder: Path) -> tuple[float, int]:
    """Mean ms per step over ``steps`` steps after 5 warm-up steps, and the number of recorded sites."""
    torch.manual_seed(0)
    model, opt = spec.build()
    model.train()
    x, y = data
    path = folder / f"{spec.name}.h5"
    rec = normviz.Recorder(model, path, every=1, overwrite=True) if recorded else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = spec.loss(model(x), y)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss)

    try:
        for _ in range(5):
            step()
        if rec is not None:
            rec.flush()  # the file's one-time creation is setup, not a per-step cost
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        ms = (time.perf_counter() - begin) / steps * 1e3
    finally:
        if rec is not None:
            rec.close()
    if rec is None:
        return ms, 0
    with normviz.open(path) as run:
        return ms, len(run.sites)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(overhead.MODELS), choices=list(overhead.MODELS))
    ap.add_argument("--steps", type=int, default=100, help="timed steps per session")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bare/recorded rounds per model")
    args = ap.parse_args(argv)
    torch.set_num_threads(overhead.THREADS)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = overhead.MODELS[name]
            data = tiny(spec.data(torch.Generator().manual_seed(1234)))
            bare, added, sites = [], [], 0
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                ms = {}
                for recorded in order:
                    ms[recorded], n = session(spec, data, recorded, args.steps, Path(tmp))
                    sites = max(sites, n)
                bare.append(ms[False])
                added.append(ms[True] - ms[False])
            rows.append((name, sites, statistics.median(bare), statistics.median(added), min(added), max(added)))
    print("# Host cost of a recorded step (batch of 2, images 8×8)\n")
    print(f"- command: python benchmarks/host_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"- python {sys.version.split()[0]}, torch {torch.__version__}, {overhead.THREADS} threads; "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| model | sites | bare ms/step | added ms per recorded step, median (min–max) | added µs per site |")
    print("|---|---:|---:|---:|---:|")
    for name, sites, bare_ms, med, lo, hi in rows:
        print(f"| {name} | {sites} | {bare_ms:.2f} | {med:.2f} ({lo:.2f}–{hi:.2f}) | {med / max(sites, 1) * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    # overhead.py's allocator setting (see benchmarks/README.md), which glibc reads at process start.
    if platform.system() == "Linux" and any(os.environ.get(k) != v for k, v in overhead.STEADY_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  {**os.environ, **overhead.STEADY_MALLOC})
    raise SystemExit(main())
