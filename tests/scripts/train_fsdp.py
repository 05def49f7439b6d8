"""A plain FSDP2 training script (no normviz in it), for ``normviz record`` under torchrun.

    torchrun --nproc_per_node=2 train_fsdp.py --steps 3
"""

import argparse
import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

dist.init_process_group("gloo")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for layer in (model[0], model[3]):
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(dist.get_rank())
for _ in range(args.steps):
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
    loss = F.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
# torch 2.13 + gloo: a sharded model still alive when the process group is destroyed (kept by
# reference cycles until the final garbage collection) can abort the process at exit: free it first.
del model, opt, loss
gc.collect()
dist.destroy_process_group()
