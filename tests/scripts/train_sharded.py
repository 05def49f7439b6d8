"""A tiny model trained sharded (FSDP2, HSDP, tensor parallel) or in one process, with and without
activation checkpointing, recorded by normviz: the fixture of tests/test_sharded.py.

    torchrun --nproc_per_node=2 train_sharded.py --out DIR --mode fsdp
    torchrun --nproc_per_node=4 train_sharded.py --out DIR --mode hsdp
    torchrun --nproc_per_node=2 train_sharded.py --out DIR --mode tp
    python train_sharded.py --out DIR --mode single          # the reference: one process, global batch

Every variant trains the same model from the same initial weights on the same global
batch with SGD for ``--steps`` steps. Each launch writes, for each of its variants, the
recorded run (``<variant>.h5``, per rank under torchrun) and the final weights
(``<variant>.weights.pt``, gathered to full tensors) so that a test can check that the
recorder left training bit-for-bit unchanged.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import normviz
from normviz.distributed import rank_path

WIDTH, HIDDEN, OUT, TOKENS = 16, 32, 4, 4
GLOBAL_BATCH = 8


class Block(nn.Module):
    """Residual block: Linear → LayerNorm → ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.norm(self.fc1(x))))


class Net(nn.Module):
    """A stem, two residual blocks and a head; ``checkpointing``: None, "reentrant" or "nonreentrant"
    (of the blocks; the stem makes their input require grad, as reentrant checkpointing needs)."""

    def __init__(self, checkpointing: str | None = None) -> None:
        super().__init__()
        self.stem = nn.Linear(WIDTH, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(WIDTH, OUT)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            if self.checkpointing is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.checkpointing == "reentrant")
        return self.head(x)


class TPNet(nn.Module):
    """Tokens through a LayerNorm (sequence parallel) and an MLP (column- then row-parallel)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.norm(x))))


def data(step: int, tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    shape = (GLOBAL_BATCH, TOKENS, WIDTH) if tokens else (GLOBAL_BATCH, WIDTH)
    return torch.randn(*shape, generator=g), torch.randn(*shape[:-1], OUT, generator=g)


def build(mode: str, checkpointing: str | None, before: Callable[[nn.Module], None]) -> tuple[nn.Module, slice]:
    """The model, placed as ``mode`` says, and the slice of the global batch this rank trains on;
    ``before(model)`` runs before the model is sharded."""
    torch.manual_seed(0)
    model: nn.Module = TPNet() if mode in ("tp", "single-tp") else Net(checkpointing)
    before(model)
    if mode in ("single", "single-tp"):
        return model, slice(None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world, rank = dist.get_world_size(), dist.get_rank()
    if mode == "tp":
        from torch.distributed.tensor import Shard
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            SequenceParallel,
            parallelize_module,
        )

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
        parallelize_module(model, mesh, {
            "norm": SequenceParallel(),
            "fc1": ColwiseParallel(input_layouts=Shard(1)),
            "fc2": RowwiseParallel(output_layouts=Shard(1)),
        })
        return model, slice(None)  # every tensor-parallel rank sees the whole batch
    if mode == "hsdp":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    per = GLOBAL_BATCH // world
    return model, slice(rank * per, (rank + 1) * per)


def train(args: argparse.Namespace, variant: str, checkpointing: str | None = None, *, record: bool = True,
          attach: str = "after", max_channels: int = 32) -> None:
    """Train one variant; ``attach``: the recorder is made "before" or "after" the model is sharded."""
    recorders: list[normviz.Recorder] = []

    def make(model: nn.Module) -> None:
        path = rank_path(args.out / f"{variant}.h5")
        recorders.append(normviz.Recorder(model, path, label=variant, max_channels=max_channels))

    model, part = build(args.mode, checkpointing, make if record and attach == "before" else lambda m: None)
    if record and attach == "after":
        make(model)
    rec = recorders[0] if recorders else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tokens = args.mode in ("tp", "single-tp")
    for step in range(args.steps):
        x, y = data(step, tokens)
        x, y = x[part], y[part]
        if tokens and args.mode == "tp":
            from torch.distributed.tensor import DTensor, Shard

            mesh = model.norm.weight.device_mesh  # type: ignore[union-attr]
            x = DTensor.from_local(x.chunk(dist.get_world_size(), dim=1)[dist.get_rank()], mesh, [Shard(1)])
            out = model(x)
            # the output is this rank's tokens: the global mean loss is the mean of the ranks' means
            loss = F.mse_loss(out, y.chunk(dist.get_world_size(), dim=1)[dist.get_rank()])
            loss = loss / dist.get_world_size()
        else:
            loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss.detach())
    if rec is not None:
        rec.close()
    weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
               for k, v in model.state_dict().items()}
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(weights, args.out / f"{variant}.weights.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", choices=["single", "single-tp", "fsdp", "hsdp", "tp"], required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.mode
    train(args, name)
    if args.mode in ("single", "fsdp"):
        train(args, f"{name}-ckpt", "nonreentrant")
        train(args, f"{name}-ckpt-reentrant", "reentrant")
    if args.mode in ("fsdp", "tp"):
        train(args, f"{name}-early", attach="before")
    if args.mode in ("single-tp", "tp"):
        train(args, f"{name}-thin", max_channels=8)  # kept channels chosen across the slices
    train(args, f"{name}-bare", record=False)
    if dist.is_initialized():
    # torch 2.13 + gloo: FSDP2 state still alive when the process group is destroyed (kept by
    # reference cycles until the final garbage collection) aborts the process at exit, in about
    # one run in four: free it first.
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
