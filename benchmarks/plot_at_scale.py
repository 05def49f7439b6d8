"""Time ``normviz plot`` of the full default figure set on a large run (not part of CI).

    python benchmarks/make_large_run.py large.h5      # 100 layers × 20,000 recorded steps
    python benchmarks/plot_at_scale.py large.h5       # wall time and peak memory of `normviz plot`
    python benchmarks/plot_at_scale.py large.h5 --per-renderer   # also one `normviz plot -r NAME` each

Each measurement runs ``normviz plot FILE --format png -q --out TMP`` in a fresh
subprocess and reports its wall time and peak resident memory (the child's
``ru_maxrss``), against the targets: at most 60 s and 2 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 60.0
TARGET_BYTES = 2 * 10**9


def _normviz() -> list[str]:
    exe = shutil.which("normviz")
    return [exe] if exe else [sys.executable, "-m", "normviz"]


def measure(run: Path, extra: list[str], timeout: float | None = None) -> tuple[float, int, int, list[str]]:
    """Wall seconds, peak RSS bytes, exit code and files written by one ``normviz plot``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [*_normviz(), "plot", str(run), "--format", "png", "-q", "--out", out, *extra]
        # A fresh child per measurement, via a small wrapper process, so that
        # RUSAGE_CHILDREN holds this one command alone.
        wrapper = (
            "import resource, subprocess, sys, json\n"
            "p = subprocess.Popen(sys.argv[2:]);\n"
            "try: rc = p.wait(timeout=float(sys.argv[1]) if sys.argv[1] != 'none' else None)\n"
            "except subprocess.TimeoutExpired: p.kill(); p.wait(); rc = 124\n"
            "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
        )
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", wrapper, "none" if timeout is None else str(timeout), *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        import json

        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "[1, 0]"
        rc, maxrss_kib = json.loads(last)
        if rc != 0:
            sys.stderr.write(proc.stderr[-2000:])
        files = sorted(p.name for p in Path(out).iterdir())
    return wall, int(maxrss_kib) * 1024, int(rc), files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run file (benchmarks/make_large_run.py makes one)")
    ap.add_argument("--repeat", type=int, default=2, help="measurements of the full set (default 2)")
    ap.add_argument("--per-renderer", action="store_true", help="also time each renderer alone")
    ap.add_argument("--timeout", type=float, default=None, help="stop a measurement after this many seconds (exit 124)")
    args = ap.parse_args(argv)
    if not args.run.exists():
        ap.error(f"{args.run}: no such file")
    size = args.run.stat().st_size
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"run file: {args.run} ({size / 2**20:.0f} MiB); machine: {os.cpu_count()} CPUs, "
          f"{mem / 2**30:.1f} GiB memory")
    print(f"targets: <= {TARGET_SECONDS:.0f} s, <= {TARGET_BYTES / 1e9:.0f} GB peak RSS")
    ok = True
    for i in range(args.repeat):
        wall, rss, rc, files = measure(args.run, [], args.timeout)
        good = rc == 0 and wall <= TARGET_SECONDS and rss <= TARGET_BYTES
        ok &= good
        print(f"full set, try {i + 1}: {wall:6.1f} s, peak RSS {rss / 1e9:.2f} GB, exit {rc}, "
              f"{len(files)} figures ({', '.join(files)}) -> {'meets' if good else 'MISSES'} the targets")
    if args.per_renderer:
        from normviz.plugins import get_plugin_host

        for name in sorted(get_plugin_host().renderers()):
            wall, rss, rc, _ = measure(args.run, ["-r", name], args.timeout)
            print(f"  -r {name:<16} {wall:6.1f} s, peak RSS {rss / 1e9:.2f} GB, exit {rc}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
