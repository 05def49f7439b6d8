"""Train a ResNet-18 on synthetic 32x32 images: an unmodified user script.

It imports its model from the file next to it and knows nothing of normviz:

    python train_resnet18.py --steps 3
    normviz record train_resnet18.py -- --steps 3
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from resnet18 import resnet18


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = resnet18(num_classes=10, width=args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(args.steps):
        x = torch.randn(args.batch_size, 3, args.size, args.size, generator=gen)
        y = torch.randint(0, 10, (args.batch_size,), generator=gen)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
