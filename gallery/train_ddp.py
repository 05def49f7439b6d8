"""Train a small CNN with BatchNorm under torchrun / DDP, each rank recording its own file.

    python -m torch.distributed.run --standalone --nproc_per_node=2 gallery/train_ddp.py --out runs
    python -m torch.distributed.run --standalone --nproc_per_node=2 gallery/train_ddp.py --out runs --sync-bn
    python gallery/train_ddp.py --out runs --name full-batch          # one process, the whole batch

Every step draws one *global* batch of ``--global-batch`` synthetic images
(the same on every rank, from a generator seeded by the step); rank ``r`` of
``W`` trains on the ``r``-th of ``W`` equal slices. Run with one process, the
script trains on the whole global batch: with ``--sync-bn`` the DDP run is the
same training as that one (SyncBatchNorm normalizes with the statistics of the
global batch and DDP averages the gradients), which is how the tests check that
merging the rank files gives the full-batch statistics.

Recording: ``normviz.Recorder(model, rank_path(out / f"{name}.h5"))`` on the
*unwrapped* model, before wrapping it in DDP, so that the layer names are the
model's own (``features.1``), not ``module.features.1``; the hooks fire all the
same when DDP calls the model. ``rank_path`` gives ``<name>.rank<R>.h5``.

``--sync-bn`` converts the BatchNorm layers with
``nn.SyncBatchNorm.convert_sync_batchnorm``. PyTorch's SyncBatchNorm runs on
GPUs only (DDP refuses it on CPU); on CPU (the gloo backend) the converted
layers become :class:`GlooSyncBatchNorm`, which all-reduces the per-channel
sums instead (differentiably, so the backward pass is the global one too).
normviz treats a layer whose class name contains ``SyncBatchNorm`` as one that
normalizes with the statistics of all ranks.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import normviz
from normviz.distributed import rank_path

CLASSES = 10
SIZE = 12


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU tensors (gloo): all-reduces the per-channel sums in
    float64 with a differentiable all-reduce. Outside a process group (or in eval
    mode) it is a plain BatchNorm. Not a subclass of ``nn.SyncBatchNorm``, which
    DDP refuses on CPU."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        count = torch.full((1,), float(x.numel() // c), dtype=torch.float64)
        total = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.float())
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).float())
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def make_model(width: int = 8) -> nn.Module:
    """Conv - BN - ReLU, twice, then global pooling and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, CLASSES),
    )


def global_batch(step: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: images with per-channel offsets, labels from a fixed 'teacher'."""
    teacher = torch.randn(3 * SIZE * SIZE, CLASSES, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed * 100_003 + step + 1)
    x = torch.randn(size, 3, SIZE, SIZE, generator=gen)
    # Like photographs: each image has its own brightness and contrast per colour channel.
    x = x * torch.exp(0.3 * torch.randn(size, 3, 1, 1, generator=gen)) + torch.randn(size, 3, 1, 1, generator=gen)
    x = x * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    return x, y


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the run files")
    parser.add_argument("--name", help="run name (default: ddp-bn or ddp-syncbn)")
    parser.add_argument("--experiment", default="ddp-cnn", help="experiment name stored in the runs")
    parser.add_argument("--sync-bn", action="store_true", help="convert BatchNorm layers to SyncBatchNorm")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=16, help="samples per step over all ranks")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flush-every", type=int, default=10)
    args = parser.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by the world size {world}")
    local = args.global_batch // world
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)

    model = make_model(args.width)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if not torch.cuda.is_available():  # PyTorch's SyncBatchNorm needs GPUs
            for m in model.modules():
                if type(m) is nn.SyncBatchNorm:
                    m.__class__ = GlooSyncBatchNorm
    name = args.name or ("ddp-syncbn" if args.sync_bn else "ddp-bn")
    label = "SyncBatchNorm" if args.sync_bn else "BatchNorm"
    path = rank_path(args.out / f"{name}.h5")
    # Record the unwrapped model: its layer names are the model's own.
    rec = normviz.Recorder(model, path, every=args.every, label=f"{label} ({world} x {local})" if distributed
                           else f"{label} (1 x {local})", experiment=args.experiment,
                           flush_every=args.flush_every, meta={"global_batch": args.global_batch,
                                                               "local_batch": local, "sync_bn": args.sync_bn})
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    net.train()
    with rec:
        for step in range(args.steps):
            x, y = global_batch(step, args.global_batch, args.seed)
            x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            rec.step(loss=loss.detach())
    if rank == 0:
        print(f"{name}: {world} rank(s) x {local} samples, final loss {loss.item():.4f}, wrote {path}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
