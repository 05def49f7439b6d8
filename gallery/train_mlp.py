"""Train a small MLP with BatchNorm on a synthetic classification task.

A plain PyTorch training script with nothing of normviz in it: its own
argparse options, its own loop, ``if __name__ == "__main__":``. It is the
example of an *unmodified* user script, recorded without touching its code:

    python gallery/train_mlp.py --epochs 3                          # train
    normviz record gallery/train_mlp.py -- --epochs 3               # train and record
    normviz plot                                                    # draw the recorded run

``plot_user_script.py`` trains the same model with the same loop and records it
through the Python API instead.

The data are made up on the spot (no download): 20 features with very
different means and scales, so that the BatchNorm layers have something to
normalize, and 4 classes given by a fixed random linear "teacher".
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 20
CLASSES = 4


def make_data(samples: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A train and a test set of ``samples`` and ``samples // 4`` examples."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-0.5, 0.5, FEATURES)  # feature scales from 0.3 to 3
    offset = 3 * torch.randn(FEATURES, generator=gen)
    teacher = torch.randn(FEATURES, CLASSES, generator=gen)

    def split(n: int) -> TensorDataset:
        z = torch.randn(n, FEATURES, generator=gen)
        y = (z @ teacher).argmax(dim=1)
        return TensorDataset(z * scale + offset, y)

    return split(samples), split(samples // 4)


def make_model(hidden: int) -> nn.Module:
    """Linear - BatchNorm - ReLU, twice, then a linear classifier."""
    return nn.Sequential(
        nn.Linear(FEATURES, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Accuracy in eval mode, i.e. with BatchNorm's running statistics."""
    model.eval()
    x, y = data.tensors
    correct = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return correct


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2048, help="training examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_set, test_set = make_data(args.samples, args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model = make_model(args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    model.train()
    for epoch in range(args.epochs):
        total, count = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / count:.4f}, "
              f"test accuracy {accuracy(model, test_set):.3f}")


if __name__ == "__main__":
    main()
