"""Time ``normviz plot`` of one torchrun run of 8, 64 and 256 rank files (not part of CI).

    python benchmarks/merge_at_scale.py                 # 8, 64, 256 ranks, in $TMPDIR/normviz-merge-at-scale
    python benchmarks/merge_at_scale.py --ranks 8 64 --dir /scratch/mscale
    python benchmarks/merge_at_scale.py --ranks 8 --profile prof/              # and a cProfile of each plot
    python benchmarks/merge_at_scale.py --ranks 64 --per-renderer              # and each `normviz plot -r NAME`

One rank file of 100 layers (50 × [Linear(64, 64) + BatchNorm1d(64)]) × 2,000 recorded
steps is written by ``benchmarks/make_large_run.py`` (the layout a real Recorder wrote,
synthetic rows through normviz's own RunWriter: its chunking, compression, checksums).
For world size W it is copied to ``DIR/ranks<W>/merge.rank<R>.h5`` (R = 0 … W-1, the
names :func:`normviz.distributed.rank_path` gives), and each copy's root ``meta`` gets
the ``rank``, ``world_size`` and label (``merge.rank<R>``, the Recorder's default) that a
torchrun rank file has. The patch is an h5py ``r+`` rewrite of that one attribute; the
file's checksums (fletcher32) cover dataset chunks, not attributes, so they still pass,
and the first and last copies are opened with ``normviz.open`` and read back to check.
Every rank holds the same rows, so the histogram edges agree and ``hist`` is summed.

Each measurement runs ``normviz plot DIR/ranks<W> --out OUT -q`` (default renderers and
formats) in a fresh child under a small wrapper process, so that the wrapper's
``RUSAGE_CHILDREN`` ``ru_maxrss`` is that plot's peak resident memory. Targets (from the
issue): time and memory grow no faster than linearly in the ranks; 64 ranks in at most
2 minutes and 2 GB.

World sizes run smallest first. One whose copies would pass ``--max-disk-gb`` (or the
free space) is skipped, as is every one after a plot that took longer than
``--stop-after`` seconds (at the defaults, 256 ranks need 33 GB of files: skipped). A
``ranks<W>`` folder is removed once measured, the template at the end (``--keep`` keeps
both, ``--keep-template`` the template, which a later run with the same ``--steps`` and
``--blocks`` reuses). The table goes to stdout, progress to stderr. To time a fixed
normviz while the checkout is being edited, put a copy first on ``PYTHONPATH`` (e.g.
``git archive HEAD normviz | tar -x -C SNAP``): the header names the package imported.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))  # make_large_run, also when imported from elsewhere

import make_large_run  # noqa: E402
from machine import cpu_name  # noqa: E402

TARGET_RANKS = 64
TARGET_SECONDS = 120.0
TARGET_BYTES = 2 * 10**9
RUN_NAME = "merge"
# Wrapper process: runs the command, then prints its exit code and the peak RSS (KiB on
# Linux) of its only child, so every measurement starts from a fresh RUSAGE_CHILDREN.
WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "try:\n"
    "    rc = p.wait(timeout=None if sys.argv[1] == 'none' else float(sys.argv[1]))\n"
    "except subprocess.TimeoutExpired:\n"
    "    p.kill(); p.wait(); rc = 124\n"
    "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
)


@dataclass
class Measurement:
    """One ``normviz plot`` of one world size."""

    ranks: int
    files_bytes: int = 0
    renderer: str | None = None  # None: every default renderer
    seconds: float = float("nan")
    peak_bytes: int = 0
    rc: int | None = None
    figures: list[str] = field(default_factory=list)
    stderr: str = ""
    skipped: str | None = None


# --------------------------------------------------------------------------- environment


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _normviz_package() -> str:
    """Where the children import normviz from (they inherit PYTHONPATH) and its git state."""
    probe = subprocess.run([sys.executable, "-c", "import normviz; print(normviz.__file__)"],
                           capture_output=True, text=True, check=True)
    package = Path(probe.stdout.strip()).parent
    state = "not this checkout"
    if package == REPO / "normviz":
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "normviz"],
                               capture_output=True, text=True)
        state = f"checkout at {head.stdout.strip()}" + (", normviz/ modified" if dirty.stdout.strip() else "")
    return f"{package} ({state})"


def header(args: argparse.Namespace) -> list[str]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    versions = {
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "h5py": f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
        "numpy": _dist_version("numpy"),
        "matplotlib": _dist_version("matplotlib"),
        "normviz": _dist_version("normviz"),
    }
    return [
        "# normviz plot of one multi-rank run\n",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"- command: python benchmarks/merge_at_scale.py {' '.join(sys.argv[1:])}".rstrip(),
        f"- machine: {platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"{mem / 2**30:.1f} GiB memory; niceness {os.nice(0)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- normviz imported from: {_normviz_package()}",
        f"- run: {2 * args.blocks} layers × {args.steps:,} recorded steps per rank; "
        f"targets: {TARGET_RANKS} ranks ≤ {TARGET_SECONDS:.0f} s and ≤ {TARGET_BYTES / 1e9:.0f} GB, "
        "growth no faster than linear in ranks",
    ]


# --------------------------------------------------------------------------- files


def template_file(folder: Path, steps: int, blocks: int) -> Path:
    """The one rank file every copy starts from, written by make_large_run (reused when it matches)."""
    path = folder / f"template-{blocks}x{steps}.h5"
    if path.exists():
        with contextlib.suppress(OSError, KeyError, ValueError):
            with h5py.File(path, "r") as f:
                if json.loads(f.attrs["meta"]).get("user", {}).get("steps") == steps and "status" in f:
                    return path
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.h5")
    partial.unlink(missing_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        rc = make_large_run.main([str(partial), "--steps", str(steps), "--blocks", str(blocks)])
    if rc != 0:
        raise SystemExit(f"make_large_run.py failed ({rc})")
    partial.rename(path)
    return path


def set_rank(path: Path, rank: int, world_size: int) -> None:
    """Give a copy the root ``meta`` of a torchrun rank file (the Recorder's ``run_meta`` keys)."""
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["meta"])
        meta.update(rank=rank, world_size=world_size, label=f"{RUN_NAME}.rank{rank}")
        f.attrs["meta"] = json.dumps(meta, sort_keys=True)  # as RunWriter stores it


def rank_files(template: Path, folder: Path, world_size: int) -> list[Path]:
    """``folder/merge.rank<R>.h5`` for every rank: copies of ``template`` with their rank set."""
    from normviz.distributed import rank_path

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for rank in range(world_size):
        path = rank_path(folder / f"{RUN_NAME}.h5", rank, world_size)
        shutil.copyfile(template, path)
        set_rank(path, rank, world_size)
        paths.append(path)
    return paths


def check_copies(paths: list[Path], world_size: int) -> None:
    """The first and last copies open as normviz runs of their rank, and their data reads back
    (every chunk of two datasets, so their fletcher32 checksums are verified)."""
    import normviz

    for path in {paths[0], paths[-1]}:
        with normviz.open(path) as run:
            expected = (int(path.name.split(".rank")[1].split(".")[0]), world_size)
            if (run.rank, run.world_size) != expected:
                raise SystemExit(f"{path}: rank/world size {run.rank}/{run.world_size}, expected {expected}")
            site = run.sites[0]
            run.stat("channel_mean", site.layer, site.role, call=site.call)
        with h5py.File(path, "r") as f:
            f["act/hist"][()]
            f["act/channel_var"][()]


# --------------------------------------------------------------------------- measuring


def plot_command(folder: Path, out: Path, formats: str | None, renderer: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "normviz", "plot", str(folder), "--out", str(out), "-q"]
    return cmd + (["--format", formats] if formats else []) + (["-r", renderer] if renderer else [])


def renderer_names() -> list[str]:
    """Every renderer ``normviz plot`` draws by default (built-ins and installed plugins)."""
    from normviz.plugins import get_plugin_host

    return sorted(get_plugin_host().renderers())


def measure(m: Measurement, folder: Path, out: Path, formats: str | None, timeout: float | None,
            renderer: str | None = None) -> None:
    """Wall time, peak RSS, exit code and figures of one ``normviz plot`` in a fresh child."""
    if out.exists():
        shutil.rmtree(out)
    cmd = plot_command(folder, out, formats, renderer)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, "none" if timeout is None else str(timeout), *cmd],
                          capture_output=True, text=True)
    m.seconds = time.perf_counter() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "[1, 0]"
    rc, maxrss = json.loads(last)
    m.rc = int(rc)
    m.peak_bytes = int(maxrss) * (1 if sys.platform == "darwin" else 1024)
    m.stderr = proc.stderr.strip()
    m.figures = sorted(p.name for p in out.iterdir()) if out.exists() else []
    shutil.rmtree(out, ignore_errors=True)


def profile(folder: Path, out: Path, formats: str | None, dest: Path, world_size: int) -> Path:
    """One more plot under cProfile; returns the stats file."""
    dest.mkdir(parents=True, exist_ok=True)
    stats = dest / f"plot-{world_size}ranks.prof"
    cmd = plot_command(folder, out, formats)
    cmd[1:3] = ["-m", "cProfile", "-o", str(stats), "-m", "normviz"]
    subprocess.run(cmd, check=False, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    return stats


def print_profile(stats: Path, limit: int) -> None:
    """normviz's functions by cumulative time, then every function by its own time."""
    print(f"\n## cProfile of `normviz plot` ({stats}): normviz's top {limit} by cumulative time, "
          f"then the top {limit} by own time\n\n```", flush=True)
    st = pstats.Stats(str(stats), stream=sys.stdout)
    st.sort_stats("cumulative").print_stats(r"normviz/", limit)
    st.sort_stats("tottime").print_stats(limit)
    print("```", flush=True)


# --------------------------------------------------------------------------- report


def _size(n: int) -> str:
    return "-" if not n else (f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB")


def table(rows: list[Measurement]) -> list[str]:
    per_renderer = any(m.renderer for m in rows)
    lines = [
        "| ranks |" + (" renderer |" if per_renderer else "")
        + " files' total size | plot seconds | peak memory MB | seconds per rank | figures |",
        "|---:|" + ("---|" if per_renderer else "") + "---:|---:|---:|---:|---|",
    ]
    for m in rows:
        first = f"| {m.ranks} |" + (f" {m.renderer or 'all (default)'} |" if per_renderer else "")
        size = _size(m.files_bytes)
        if m.skipped is not None:
            lines.append(f"{first} {size} | skipped: {m.skipped} | | | |")
            continue
        status = f"{len(m.figures)}" + ("" if m.rc == 0 else f" (exit {m.rc}{', timed out' if m.rc == 124 else ''})")
        lines.append(f"{first} {size} | {m.seconds:.1f} | {m.peak_bytes / 1e6:.0f} | "
                     f"{m.seconds / m.ranks:.2f} | {status} |")
    return lines


def verdict(rows: list[Measurement]) -> list[str]:
    done = [m for m in rows if m.skipped is None and m.rc == 0 and m.renderer is None]
    out = []
    for m in done:
        if m.ranks == TARGET_RANKS:
            ok = m.seconds <= TARGET_SECONDS and m.peak_bytes <= TARGET_BYTES
            out.append(f"- {TARGET_RANKS} ranks: {m.seconds:.0f} s, {m.peak_bytes / 1e9:.2f} GB -> "
                       f"{'meets' if ok else 'MISSES'} the target (≤ {TARGET_SECONDS:.0f} s, ≤ 2 GB)")
    for a, b in zip(done, done[1:]):
        k = b.ranks / a.ranks
        out.append(f"- {a.ranks} -> {b.ranks} ranks (×{k:g}): time ×{b.seconds / a.seconds:.2f}, "
                   f"memory ×{b.peak_bytes / a.peak_bytes:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256], help="world sizes (default 8 64 256)")
    ap.add_argument("--steps", type=int, default=2000, help="recorded steps per rank (default 2000)")
    ap.add_argument("--blocks", type=int, default=50, help="Linear+BatchNorm blocks: 2 layers each (default 50)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "normviz-merge-at-scale",
                    help="where the files go (default $TMPDIR/normviz-merge-at-scale)")
    ap.add_argument("--format", dest="formats", help="passed to `normviz plot --format` (default: its default)")
    ap.add_argument("--per-renderer", action="store_true",
                    help="also time each default renderer alone (`normviz plot -r NAME`)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per world size (default 1)")
    ap.add_argument("--timeout", type=float, default=None, help="stop a plot after this many seconds (exit 124)")
    ap.add_argument("--stop-after", type=float, default=180.0,
                    help="skip larger world sizes once a plot took longer than this (default 180 s)")
    ap.add_argument("--max-disk-gb", type=float, default=15.0, help="most GB of rank files at once (default 15)")
    ap.add_argument("--keep", action="store_true", help="keep the rank files (and the template) afterwards")
    ap.add_argument("--keep-template", action="store_true", help="keep the template file for the next run")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="also run each plot once under cProfile, stats to DIR/plot-<W>ranks.prof")
    ap.add_argument("--profile-lines", type=int, default=40, help="functions printed per profile (default 40)")
    args = ap.parse_args(argv)
    if min(args.ranks) < 2:
        ap.error("--ranks: a multi-rank run has at least 2 ranks")

    print("\n".join(header(args)), flush=True)
    t_start = time.perf_counter()
    template = template_file(args.dir, args.steps, args.blocks)
    size = template.stat().st_size
    print(f"template rank file: {template} ({size / 2**20:.0f} MiB), {time.perf_counter() - t_start:.0f} s",
          file=sys.stderr)
    rows: list[Measurement] = []
    stop: str | None = None
    profiles: list[Path] = []
    for world_size in sorted(set(args.ranks)):
        need = world_size * size
        if stop is not None:
            rows.append(Measurement(world_size, need, skipped=stop))
            continue
        free = shutil.disk_usage(args.dir).free
        if need > args.max_disk_gb * 1e9 or need > free - 2**30:
            rows.append(Measurement(world_size, need, skipped=f"needs {need / 1e9:.1f} GB of files "
                                    f"(--max-disk-gb {args.max_disk_gb:g}, {free / 1e9:.0f} GB free)"))
            continue
        folder = args.dir / f"ranks{world_size}"
        t0 = time.perf_counter()
        paths = rank_files(template, folder, world_size)
        check_copies(paths, world_size)
        total = sum(p.stat().st_size for p in paths)
        print(f"{world_size} ranks: {_size(total)} of rank files in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        try:
            for i in range(args.repeat):
                m = Measurement(world_size, total)
                measure(m, folder, args.dir / f"out{world_size}", args.formats, args.timeout)
                rows.append(m)
                print(f"{world_size} ranks, try {i + 1}: {m.seconds:.1f} s, peak RSS {m.peak_bytes / 1e6:.0f} MB, "
                      f"exit {m.rc}, {len(m.figures)} files", file=sys.stderr)
                if m.stderr:
                    print("  stderr: " + m.stderr[-2000:].replace("\n", "\n  "), file=sys.stderr)
            for name in renderer_names() if args.per_renderer else []:
                m = Measurement(world_size, total, renderer=name)
                measure(m, folder, args.dir / f"out{world_size}", args.formats, args.timeout, name)
                rows.append(m)
                print(f"{world_size} ranks, -r {name}: {m.seconds:.1f} s, peak RSS {m.peak_bytes / 1e6:.0f} MB, "
                      f"exit {m.rc}", file=sys.stderr)
            if args.profile is not None:
                profiles.append(profile(folder, args.dir / f"out{world_size}", args.formats, args.profile, world_size))
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        slowest = max(m.seconds for m in rows if m.ranks == world_size and m.renderer is None)
        if slowest > args.stop_after:
            stop = f"{world_size} ranks took {slowest:.0f} s > --stop-after {args.stop_after:g} s"
    if not (args.keep or args.keep_template):
        template.unlink(missing_ok=True)

    print("\n" + "\n".join(table(rows)))
    figures = sorted({f for m in rows for f in m.figures})
    if figures:
        print(f"\nfigures: {', '.join(figures)}")
    lines = verdict(rows)
    if lines:
        print("\n" + "\n".join(lines))
    for stats in profiles:
        print_profile(stats, args.profile_lines)
    failed = any(m.skipped is None and m.rc != 0 and m.renderer is None for m in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
