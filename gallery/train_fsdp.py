"""A small RMSNorm transformer trained with FSDP2 under torchrun, or in one process, recorded by normviz.

    python -m torch.distributed.run --standalone --nproc_per_node=2 gallery/train_fsdp.py --out runs --checkpoint
    python gallery/train_fsdp.py --out runs --name single        # the single-process twin

Under torchrun every block and the whole model are ``fully_shard``ed (FSDP2, gloo on CPU)
and each rank trains on its slice of the global batch, recording into
``<name>.rank<R>.h5``; with one process the same model trains on the whole global batch.
``--checkpoint`` recomputes each block in backward (non-reentrant activation checkpointing).
Same seed, same global batches: the merged rank files and the single-process file hold the
same statistics (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import normviz
from normviz.distributed import rank_path
from normviz.experiments.models import transformer

VOCAB, SEQ = 64, 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="fsdp")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--checkpoint", action="store_true", help="checkpoint every block (non-reentrant)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sharded = "RANK" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    torch.manual_seed(0)
    model = transformer("rms", d_model=32, n_heads=4, n_layers=3, seq_len=SEQ, vocab=VOCAB)
    if args.checkpoint:
        for block in model.blocks:
            block.forward = lambda x, f=block.forward: checkpoint(f, x, use_reentrant=False)
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    per = args.global_batch // world
    args.out.mkdir(parents=True, exist_ok=True)
    label = args.name + (" (checkpointed)" if args.checkpoint else "")
    with normviz.Recorder(model, rank_path(args.out / f"{args.name}.h5"), label=label) as rec:
        for step in range(args.steps):
            g = torch.Generator().manual_seed(step)
            idx = torch.randint(0, VOCAB, (args.global_batch, SEQ + 1), generator=g)[rank * per:(rank + 1) * per]
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss.detach())
    if sharded:
        # torch 2.13 + gloo: a sharded model still alive when the process group is destroyed
        # (kept by reference cycles until the final garbage collection) can abort the process
        # at exit: free it first.
        del model, opt, logits, loss
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
