"""The sizes and levels of the recorded statistics: they fix the width of a run's rows.

Plain constants (no torch), so the statistics' descriptors can be built where torch is
not loaded (a plotting process registers them too).
"""

from __future__ import annotations

#: Percentile levels of each site's value sample (Ioffe & Szegedy's 15/50/85, Wu & He's 1/20/80/99).
PERCENTILE_LEVELS: tuple[float, ...] = (1.0, 5.0, 15.0, 20.0, 50.0, 80.0, 85.0, 95.0, 99.0)
#: Percentile levels of the normalization groups' means and scales.
GROUP_LEVELS: tuple[float, ...] = (0.0, 5.0, 25.0, 50.0, 75.0, 95.0, 100.0)
#: Values drawn (with replacement, own generator) per site and recorded step.
SAMPLE_SIZE = 4096
#: Histogram bins between the fixed edges (plus one underflow and one overflow bin).
HIST_BINS = 64
#: At most this many normalization groups enter the group summary (a random subset beyond).
MAX_GROUPS = 65536
