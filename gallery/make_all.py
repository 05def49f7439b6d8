"""Regenerate the gallery: run every ``gallery/plot_*.py`` and write its figure.

    python gallery/make_all.py                  # full settings, into gallery/images/
    python gallery/make_all.py --quick --out /tmp/gallery    # a few steps each (what CI runs)
    python gallery/make_all.py plot_histograms  # only the scripts named (stem or file name)

Each script records small CPU runs into a temporary folder and writes
``<script stem>.png``. The scripts run one after another in this process (so
torch and matplotlib are imported once), each as ``__main__``, exactly as
``python gallery/<script>.py`` would run it; one that fails is reported and the
others still run. ``--quick`` and ``--out`` set the environment variables the
scripts read, ``NORMVIZ_GALLERY_QUICK=1`` and ``NORMVIZ_GALLERY_OUT``. Exit
status: 0 when every script wrote its figure, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

GALLERY = Path(__file__).resolve().parent


def scripts(names: list[str] | None = None) -> list[Path]:
    """The gallery's ``plot_*.py`` scripts, sorted; only those named, if names are given."""
    found = sorted(GALLERY.glob("plot_*.py"))
    if not names:
        return found
    by_stem = {p.stem: p for p in found}
    chosen = []
    for name in names:
        stem = Path(name).stem
        if stem not in by_stem:
            raise SystemExit(f"make_all.py: no gallery script {name!r}; scripts: {', '.join(by_stem)}")
        chosen.append(by_stem[stem])
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="scripts to run (default: every plot_*.py)")
    parser.add_argument("--quick", action="store_true", help="a few training steps per run (NORMVIZ_GALLERY_QUICK=1)")
    parser.add_argument("--out", type=Path, help="output folder (NORMVIZ_GALLERY_OUT; default gallery/images/)")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["NORMVIZ_GALLERY_QUICK"] = "1"
    if args.out is not None:
        os.environ["NORMVIZ_GALLERY_OUT"] = str(args.out.resolve())
    out = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or GALLERY / "images")
    out.mkdir(parents=True, exist_ok=True)
    # As when a script is run directly: its folder comes first on sys.path (plot_user_script
    # imports train_mlp from beside it).
    sys.path.insert(0, str(GALLERY))

    failed = []
    todo = scripts(args.names)
    for i, script in enumerate(todo, 1):
        start = time.perf_counter()
        print(f"[{i}/{len(todo)}] {script.name}", flush=True)
        try:
            runpy.run_path(str(script), run_name="__main__")
        except Exception:  # noqa: BLE001 - report it and go on with the other scripts
            traceback.print_exc()
            failed.append(script.name)
            continue
        figure = out / f"{script.stem}.png"
        if not figure.is_file() or figure.stat().st_size == 0:
            print(f"{script.name}: no figure written at {figure}", file=sys.stderr)
            failed.append(script.name)
            continue
        print(f"    {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"make_all.py: {len(failed)} of {len(todo)} scripts failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(todo)} figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
