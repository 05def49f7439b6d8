"""The end of a recorded step on the device: every site's observation into flat blocks.

The hooks leave one :class:`~normviz.record.core.CoreObs` per site. :class:`CoreAssembler`
first computes what they left pending (variances from inverse stds, BatchNorm output
statistics; :mod:`normviz.record.deferred`), for all sites together, then turns the step
into flat blocks with a handful of batched ops: pooled mean/std, global extrema, the
stored channels, and the samples and group summaries the writer's thread finishes on
the host (:mod:`normviz.record.finish`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from normviz.record import stats as S
from normviz.record.core import CoreObs
from normviz.record.derive import RecipeRunner


@dataclass
class DeviceBlocks:
    """One recorded step of every site, assembled on the device.

    ``stats`` are finished fused statistics (flat, sites side by side). ``host`` is one
    float32 vector for :class:`~normviz.record.finish.RowFinisher`: the samples
    ([n_sites, SAMPLE_SIZE]), a per-site flag "some value is non-finite" (NaN if so, else 0), then each
    norm row's group means and group scales; ``group_sizes`` and ``numel`` (None: the
    site did not run) say how to cut it.
    """

    stats: dict[str, torch.Tensor]
    host: torch.Tensor
    group_sizes: list[int]
    numel: list[int | None]


class CoreAssembler:
    """Turns one step's :class:`CoreObs` of every site into :class:`DeviceBlocks`.

    Built once the layout is fixed: ``channels[i]`` is site i's channel count,
    ``stored[i]`` the indices of its stored channels (None: all), ``norm_rows`` the
    sites with a group summary; ``strict``: what fails raises (``Recorder(on_error="raise")``).
    """

    def __init__(
        self, channels: list[int], stored: list[torch.Tensor | None], norm_rows: list[int], device: torch.device,
        strict: bool = False,
    ) -> None:
        self.n = len(channels)
        self.channels = channels
        self.device = device
        offsets = [0]
        for c in channels:
            offsets.append(offsets[-1] + c)
        gather = []
        for i, idx in enumerate(stored):
            base = offsets[i]
            gather.append((idx.to(device) if idx is not None else torch.arange(channels[i], device=device)) + base)
        self.gather = torch.cat(gather) if gather else torch.zeros(0, dtype=torch.long, device=device)
        self.segment = torch.repeat_interleave(
            torch.arange(self.n, device=device), torch.tensor(channels, device=device)
        ) if self.n else torch.zeros(0, dtype=torch.long, device=device)
        self.counts = torch.tensor(channels, dtype=torch.float32, device=device)
        self.norm_rows = norm_rows
        self._zeros = torch.zeros(self.n, device=device)
        self._nan_obs: dict[int, CoreObs] = {}
        self._recipes = RecipeRunner(strict)  # what the hooks left to the end of the step

    def _missing(self, i: int) -> CoreObs:
        obs = self._nan_obs.get(i)
        if obs is None:
            nan = torch.full((self.channels[i],), math.nan, device=self.device)
            obs = CoreObs(nan, nan, nan, nan, torch.full((S.SAMPLE_SIZE,), math.nan, device=self.device), 0)
            self._nan_obs[i] = obs
        return obs

    def blocks(self, observed: list[CoreObs | None]) -> DeviceBlocks:
        """Every fused statistic of one step: finished ones, and the host's share."""
        obs = [o if o is not None else self._missing(i) for i, o in enumerate(observed)]
        self._recipes.run(obs)
        # Every site's channel vectors in one concatenation: rows mean, var, min, max.
        channels = torch.cat([o.mean_c for o in obs] + [o.var_c for o in obs] + [o.min_c for o in obs]
                             + [o.max_c for o in obs]).view(4, -1)
        mean_all, var_all, min_all, max_all = channels
        # Per site, with one index_add: the sum of the channel means; of the channel mean
        # squares s² = var + mean² and of s⁴ (rms_kurtosis: C·Σs⁴ / (Σs²)², He et al. 2024's
        # outlier features); and of mean·0, NaN exactly when some value of the site is not
        # finite (a channel's shifted sum is finite exactly when all its values are).
        s2 = torch.addcmul(var_all, mean_all, mean_all)
        sums = torch.zeros(4, self.n, device=self.device).index_add_(
            1, self.segment, torch.stack((mean_all, s2, s2 * s2, mean_all * 0.0)))
        mean = sums[0] / self.counts
        dev = mean_all - mean[self.segment]
        spread = self._zeros.index_add(0, self.segment, torch.addcmul(var_all, dev, dev))
        std = (spread / self.counts).clamp_min(0).sqrt()
        kurtosis = self.counts * sums[2] / sums[1].square()
        lo = self._zeros.scatter_reduce(0, self.segment, min_all, "amin", include_self=False)
        hi = self._zeros.scatter_reduce(0, self.segment, max_all, "amax", include_self=False)
        stored = channels[:2].index_select(1, self.gather)
        host = [o.sample for o in obs] + [sums[3]]
        group_sizes: list[int] = []
        for r in self.norm_rows:
            g = obs[r].group
            if g is None:
                group_sizes.append(0)
            else:
                group_sizes.append(int(g[0].numel()))
                host.extend(g)
        return DeviceBlocks(
            stats={
                "channel_mean": stored[0],
                "channel_var": stored[1],
                "mean": mean,
                "std": std,
                "min": lo,
                "max": hi,
                "rms_kurtosis": kurtosis,
            },
            host=torch.cat(host),
            group_sizes=group_sizes,
            numel=[o.numel if o is not None and not o.failed else None for o in observed],
        )
