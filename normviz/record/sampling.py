"""The bounded random value sample of every site, its indices drawn for the whole step.

Each recorded site keeps :data:`~normviz.record.sizes.SAMPLE_SIZE` values drawn uniformly
with replacement (percentiles and histograms are computed from them). Drawing 4096 fresh
random indices per site and step costs a ``randint`` per site, and the random numbers
themselves: ~15 µs per site on a CPU, whose generator is sequential, about 0.5 ms per
step for a ResNet-8. Here the indices are counter-based instead: once per layout, each
site (in the order the previous recorded step sampled them) gets its 4096 base positions
drawn uniformly; each step adds one fresh random offset per site, and takes the sum modulo
the site's size. Each index is uniform on every step, the steps' samples differ, and the
cost is three ops for all sites together plus one gather per site. A site whose size
differs from the previous step's (a smaller last batch, a new site) draws its own indices.

The random numbers come from the recorder's own seeded generators (one per device), never
from the global RNGs, so recording leaves the training's random stream untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from normviz.record.deferred import to_device
from normviz.record.reductions import dense_flat
from normviz.record.sizes import SAMPLE_SIZE

#: Base positions and offsets are drawn in [0, 2**62) (their sum stays below 2**63) and
#: reduced modulo each site's size: the modulo's bias is below size / 2**62.
_RANGE = 1 << 62


class _DeviceDraws:
    """One device's draws: the sizes sampled this step, in order; the previous step's, with
    their base positions; and this step's indices."""

    __slots__ = ("sizes", "expected", "expected_t", "base", "indices")

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.expected: list[int] = []
        self.expected_t: torch.Tensor | None = None
        self.base: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None


class Sampler:
    """Draws the value samples of one recorder's sites. ``gen(device)``: the seeded generator of a device."""

    def __init__(self, gen: Callable[[torch.device], torch.Generator], size: int = SAMPLE_SIZE) -> None:
        self.gen = gen
        self.size = size
        self._draws: dict[torch.device, _DeviceDraws] = {}

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        """``size`` values of ``x`` (any layout) as float32."""
        # A uniform sample of positions is one in any order of them: a dense tensor is read
        # in memory order (``torch.take`` of a channels-last tensor copies it first, 10x slower),
        # through ``index_select`` on its flat view (2-2.5x faster than ``take`` on CPU).
        flat = dense_flat(x)
        x = flat if flat is not None else x
        d = self._draws.get(x.device)
        if d is None:
            d = self._draws[x.device] = _DeviceDraws()
        k, numel = len(d.sizes), x.numel()
        d.sizes.append(numel)
        if k < len(d.expected) and d.expected[k] == numel:
            if d.indices is None:
                d.indices = self._step_indices(d, x.device)
            idx = d.indices[k]
        else:
            idx = torch.randint(0, numel, (self.size,), generator=self.gen(x.device), device=x.device)
        return (x.index_select(0, idx) if flat is not None else torch.take(x, idx)).float()

    def _step_indices(self, d: _DeviceDraws, device: torch.device) -> torch.Tensor:
        """This step's indices of every expected site: (base + a random offset per site) mod size."""
        gen = self.gen(device)
        if d.base is None:
            d.base = torch.randint(0, _RANGE, (len(d.expected), self.size), generator=gen, device=device)
        offsets = torch.randint(0, _RANGE, (len(d.expected), 1), generator=gen, device=device)
        assert d.expected_t is not None
        return (d.base + offsets).remainder_(d.expected_t)

    def end_step(self) -> None:
        """The step's sampling is over: the next recorded step expects the sizes this one drew."""
        for device, d in self._draws.items():
            if d.sizes and d.sizes != d.expected:
                d.expected = d.sizes
                d.expected_t = to_device(torch.tensor(d.sizes, dtype=torch.long).unsqueeze(1), device)
                d.base = None
            d.sizes = []
            d.indices = None
