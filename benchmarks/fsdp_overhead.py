"""Recording overhead under FSDP2 (torchrun, 2 processes, gloo on CPU) against bare FSDP2, beside the
single-process overhead of the same model.

    python benchmarks/fsdp_overhead.py                 # transformer, 5 rounds of 20 steps
    python benchmarks/fsdp_overhead.py --rounds 3 --steps 10

Runs the same worker twice, one after the other: under ``torchrun --nproc_per_node=2`` with every
block and the model ``fully_shard``ed, and in one process without FSDP on one rank's batch. Each
rank uses one thread (two ranks fill the two cores). In each round the worker times ``--steps``
training steps bare, recorded with ``every=1`` and with ``every=10``, in a rotating order, on
the same model in the same process (a recorder is attached for its session and closed after,
which removes its hooks); a session starts after 3 untimed steps and a barrier. The ratio of
a round is recorded / bare of that round; the table gives the median over rounds (min–max).
Target: the FSDP2 ratios no larger than the single-process ones.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("bare", "every1", "every10")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    if importlib.util.find_spec("normviz") is None:  # run from a checkout without installing it
        sys.path.append(str(Path(__file__).resolve().parents[1]))
    import normviz
    from normviz.distributed import rank_path
    from normviz.experiments.models import transformer

    torch.set_num_threads(1)
    sharded = "RANK" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if sharded else 0
    torch.manual_seed(0)
    vocab, seq = 256, 64
    model = transformer("layer", d_model=128, n_heads=4, n_layers=4, seq_len=seq, vocab=vocab)
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    batch = torch.randint(0, vocab, (8, seq + 1), generator=g)

    def step(rec: normviz.Recorder | None) -> None:
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss.detach())

    out = Path(args.out)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for variant in order:
            rec = None
            if variant != "bare":
                every = 1 if variant == "every1" else 10
                rec = normviz.Recorder(model, rank_path(out / f"{variant}-{r}.h5"), every=every, overwrite=True)
            for _ in range(3):
                step(rec)
            if sharded:
                dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(rec)
            if sharded:
                dist.barrier()
            times[variant].append((time.perf_counter() - t0) / args.steps)
            if rec is not None:
                rec.close()
    if rank == 0:
        (out / "times.json").write_text(json.dumps(times))
    if sharded:
        # torch 2.13 + gloo: FSDP2 state still alive when the process group is destroyed (kept by
        # reference cycles until the final garbage collection) can abort the process at exit.
        del step, model, opt
        gc.collect()
        dist.destroy_process_group()


def launch(cmd: list[str], out: Path) -> dict[str, list[float]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads((out / "times.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    here = str(Path(__file__).resolve())
    common = ["--worker", "--rounds", str(args.rounds), "--steps", str(args.steps)]
    results = {}
    t0 = time.time()
    for name, prefix in (("FSDP2, 2 processes", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node=2"]),
                         ("one process, no FSDP", [sys.executable])):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = launch([*prefix, here, *common, "--out", tmp], Path(tmp))
    print("# Recording overhead under FSDP2\n")
    print(f"- command: python benchmarks/fsdp_overhead.py --rounds {args.rounds} --steps {args.steps}")
    print(f"- machine: {platform.system()} {platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"python {platform.python_version()}, torch {torch.__version__}; {time.time() - t0:.0f} s")
    print("- model: transformer (LayerNorm), d_model 128, 4 layers, sequence 64, batch 8 per rank, AdamW\n")
    print("| setting | bare ms/step | every=1 | every=10 |")
    print("|---|---|---|---|")
    for name, times in results.items():
        cells = []
        for variant in ("every1", "every10"):
            ratios = [t / b for t, b in zip(times[variant], times["bare"])]
            cells.append(f"{statistics.median(ratios):.3f}× ({min(ratios):.2f}–{max(ratios):.2f})")
        print(f"| {name} | {1000 * statistics.median(times['bare']):.1f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
