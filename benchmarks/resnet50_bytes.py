"""Bytes per recorded step of a ResNet-50-sized model with the default options (CPU).

    python benchmarks/resnet50_bytes.py [--size 64] [--batch 2]

Records the ResNet-50 layout built in ``gpu_overhead.py`` (160 sites) for 11 and for 41
steps and prints the uncompressed size of one step's per-step datasets and the on-disk
growth per recorded step between the two files (so the file's fixed part is excluded).
The image size and batch do not change the row width; they only change the values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import gpu_overhead  # noqa: E402

import normviz  # noqa: E402


def record(steps: int, size: int, batch: int, folder: Path) -> tuple[int, float, int]:
    """(file bytes, uncompressed bytes of one step's rows, sites) of a run of *steps* steps."""
    torch.manual_seed(0)
    model = gpu_overhead.resnet50(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, size, size), torch.randint(10, (batch,))
    path = folder / f"r50-{steps}.h5"
    with normviz.Recorder(model, path) as rec:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rec.step()
    with h5py.File(path) as f:
        per_step = [f[g][n] for g in ("act", "module", "grad") for n in f[g]]
        raw = sum(d.size * d.dtype.itemsize for d in per_step if d.shape and d.shape[0] == steps)
    with normviz.open(path) as run:
        sites = len(run.layout.sites)
    return path.stat().st_size, raw / steps, sites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        short, raw, sites = record(11, args.size, args.batch, Path(tmp))
        long, _, _ = record(41, args.size, args.batch, Path(tmp))
    print(f"ResNet-50 layout, {sites} sites: {raw / 1024:.1f} KiB per recorded step uncompressed, "
          f"{(long - short) / 30 / 1024:.1f} KiB on disk (file growth from 11 to 41 recorded steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
