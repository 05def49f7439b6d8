"""Train a small GPT-2 built from a ``GPT2Config`` (no weights, no download) on random
tokens: an unmodified user script with the Hugging Face model's real layer names
(``transformer.h.0.ln_1``, ``transformer.h.0.attn.c_attn``, ``transformer.ln_f``, ...).

    python train_gpt2.py --steps 3
    normviz record train_gpt2.py -- --steps 3
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = 128
    config = GPT2Config(vocab_size=vocab, n_positions=args.seq, n_embd=args.embd, n_layer=args.layers, n_head=4)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq), generator=gen)
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
