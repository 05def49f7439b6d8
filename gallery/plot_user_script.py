"""Recording your own training loop: the MLP of train_mlp.py with normviz.Recorder.

``train_mlp.py`` is a plain PyTorch script with nothing of normviz in it. This
is the same model, data and loop with recording added through the Python API:
the loop runs inside ``with normviz.Recorder(model, path) as rec:`` and calls
``rec.step(loss=loss)`` after each ``optimizer.step()``; nothing else changes
(with the same seeds the losses are bit-for-bit those of the unrecorded
script). ``normviz.plot`` then draws the run. (Without any code change,
``normviz record gallery/train_mlp.py -- --epochs 5`` records the script itself.)

The ``channels`` renderer shows the model's first BatchNorm layer (``"1"`` in
the ``nn.Sequential``): the mean ± std of every other channel before and after the norm at the first, middle and
last step (after it, every channel sits at its β with spread |γ|), the
normalization groups (one per channel, over the batch) at the last step, and
the batch statistics of three channels against the running statistics that
eval mode, and so the test accuracy, relies on.

    python gallery/plot_user_script.py   # writes gallery/images/plot_user_script.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from train_mlp import accuracy, make_data, make_model  # the user's script, unchanged

import normviz
from normviz.plot.save import save_figure
from normviz.plot.style import style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 150


def main() -> Path:
    # A tiny model trains fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    epochs, samples, seed = (1, 256, 0) if QUICK else (5, 2048, 0)

    # As in train_mlp.py's main(), with its default options.
    torch.manual_seed(seed)
    train_set, test_set = make_data(samples, seed)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model = make_model(hidden=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_mlp.h5"
        model.train()
        with normviz.Recorder(model, path, label="train_mlp.py") as rec:  # added
            for epoch in range(epochs):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                    rec.step(loss=loss)  # added: after optimizer.step()
                print(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(model, test_set):.3f}")

        with normviz.open(path) as run:
            fig = normviz.plot(run, "channels", style=STYLE, layers="1", max_channels=32)
            with style_context(STYLE):
                out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
    print(out)
    return out


if __name__ == "__main__":
    main()
