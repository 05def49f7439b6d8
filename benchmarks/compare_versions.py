"""Recording overhead of two versions of normviz, interleaved: did a change make recording slower?

    python benchmarks/compare_versions.py --base ../normviz-before --rounds 6

Runs ``benchmarks/overhead.py`` (this tree's) one round at a time, alternately with the
``normviz`` package of ``--base`` (a checkout of the version to compare against) and of
this tree, in the order A B B A A B ... so that a machine that slows down or speeds up
over the run weighs on both alike. Every round measures each model bare and recorded in
the same process, so the ratios of one round are comparable across versions; the table
gives each version's median ratio over the rounds and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS = HERE.parent


def one_round(root: Path, models: list[str], variants: list[str], steps: int, out: Path) -> list[dict]:
    """One round of overhead.py with the normviz package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(HERE / "overhead.py"), "--rounds", "1", "--steps", str(steps), "--json", str(out),
           "--models", *models, "--variants", *variants]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"overhead.py failed with {root}:\n{proc.stderr[-2000:]}")
    report = json.loads(out.read_text())
    # An installed or editable normviz earlier on sys.path would time one version twice.
    imported = Path(report["environment"]["normviz_package"])
    if imported != root / "normviz":
        raise SystemExit(f"overhead.py imported normviz from {imported}, not from {root}")
    return report["results"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="a checkout of the version to compare against")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per version (default 6)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per session (default 20)")
    ap.add_argument("--models", nargs="+", default=["seed-mlp-bn", "resnet8-bn", "resnet8-gn", "transformer-ln"])
    ap.add_argument("--variants", nargs="+", default=["bare", "normviz-every1", "normviz-every10"])
    args = ap.parse_args(argv)
    versions = {"base": args.base.resolve(), "this": THIS}
    ratios: dict[tuple[str, str, str], list[float]] = {}
    order = [("base", "this") if r % 2 == 0 else ("this", "base") for r in range(args.rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        for r, pair in enumerate(order):
            for name in pair:
                rows = one_round(versions[name], args.models, args.variants, args.steps, Path(tmp) / "round.json")
                for row in rows:
                    if "ratio_median" in row and row["variant"] != "bare":
                        ratios.setdefault((row["model"], row["variant"], name), []).append(row["ratio_median"])
                print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)
    print(f"# recording overhead, interleaved: base = {versions['base']}, this = {versions['this']}\n")
    print(f"{args.rounds} rounds per version, {args.steps} timed steps per session; ratio = recorded / bare, "
          "median over rounds (min-max)\n")
    print("| model | variant | base | this | this - base |")
    print("|---|---|---|---|---|")
    for model in args.models:
        for variant in args.variants:
            if variant == "bare":
                continue
            base = ratios.get((model, variant, "base"), [])
            this = ratios.get((model, variant, "this"), [])
            if not base or not this:
                continue
            mb, mt = statistics.median(base), statistics.median(this)
            print(f"| {model} | {variant} | {mb:.3f} ({min(base):.2f}-{max(base):.2f}) "
                  f"| {mt:.3f} ({min(this):.2f}-{max(this):.2f}) | {mt - mb:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
