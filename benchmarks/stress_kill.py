"""Stress test: SIGKILL many recording processes at random moments; every file must survive.

    python benchmarks/stress_kill.py --kills 100

Prints one line per kill and the count of kills survived, with the steps recovered
against the last step each process had flushed before its kill.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normviz.crashtest import kill_recorder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=1.5, help="seconds after the first flush")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    survived = 0
    recovered = flushed = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.kills):
            every = rng.choice([1, 2, 3])
            r = kill_recorder(Path(tmp), f"k{i}", rng.uniform(0, args.max_delay), every=every)
            survived += r.ok
            recovered += r.last_step
            flushed += r.flushed_step
            status = "ok" if r.ok else f"FAILED: {r.problem}"
            print(f"kill {i:3d} every={every}: recovered {r.recovered_steps} rows up to step {r.last_step}, "
                  f"flushed before kill {r.flushed_step}: {status}", flush=True)
    print(f"\n{survived}/{args.kills} kills survived; steps recovered (sum of last steps) {recovered} "
          f">= flushed before the kill {flushed}; {time.monotonic() - t0:.0f} s")
    return 0 if survived == args.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
