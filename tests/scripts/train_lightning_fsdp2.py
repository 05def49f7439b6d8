"""A LightningModule trained with Lightning's ModelParallelStrategy (FSDP2) on CPU processes, or on
one device, with normviz's Lightning callback: a fixture of tests/integrations/test_lightning.py.

    python train_lightning_fsdp2.py --out DIR --devices 2 --batch 4    # FSDP2, 2 processes
    python train_lightning_fsdp2.py --out DIR --devices 1 --batch 8    # one device, the global batch

Rank r of W trains on the samples r, r + W, … (its own loader, Lightning's sampler off), so two
devices with batches of 4 train on the same samples per step as one device with batches of 8.
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from normviz.integrations.lightning import NormvizCallback


class Net(L.LightningModule):
    def __init__(self, shard: bool, batch: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))
        self.shard = shard
        self.batch = batch

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g))
        mine = torch.utils.data.Subset(data, range(self.global_rank, 32, self.trainer.world_size))
        return torch.utils.data.DataLoader(mine, batch_size=self.batch)

    def configure_model(self) -> None:
        if self.shard:
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, index):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    strategy: object = "auto"
    if args.devices > 1:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=3, logger=False, use_distributed_sampler=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NormvizCallback(f"{args.out}/run-{args.devices}.h5")])
    trainer.fit(Net(shard=args.devices > 1, batch=args.batch))


if __name__ == "__main__":
    main()
