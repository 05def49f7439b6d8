"""What each norm holds at mean 0 / scale 1 on the seed CNN.

The seed notebook's CNN, ``Conv(3, 16) - norm - ReLU - Conv(16, 32)`` and a
linear head, trained for 100 SGD steps on 4-class synthetic 8x8 images with
each of the four norms the notebook treats: BatchNorm, LayerNorm (over the
channels, ConvNeXt-style), InstanceNorm and GroupNorm (G=4).

The ``channels`` renderer shows, for the norm layer ``1``:

- per channel, mean ± std of the values entering (left) and leaving (right)
  the norm at the first, middle and last step; behind the output, each
  channel's β ± |γ|. BatchNorm (each channel over the batch) and InstanceNorm
  (each sample's channel) put every channel at β with spread |γ|; LayerNorm
  and GroupNorm, whose groups cut across channels, do not;
- the normalization groups at the last step, the sets one mean and variance
  are computed over: group means and scales of the input (hollow boxes) and
  the output (filled), which each kind holds at mean 0 / scale 1 before γ and β;
- BatchNorm's batch statistics (dots) against its running statistics (lines),
  which eval mode uses.

    python gallery/plot_seed_cnn_channels.py   # writes gallery/images/plot_seed_cnn_channels.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_experiment, quick

STYLE, DPI = "paper-wide", 150
KINDS = ("batch", "layer", "instance", "group")  # the seed's four norms


def main() -> Path:
    return draw_experiment(__file__, "seed-cnn", KINDS, "channels", style=STYLE, dpi=DPI,
                           steps=6 if quick() else None)


if __name__ == "__main__":
    main()
