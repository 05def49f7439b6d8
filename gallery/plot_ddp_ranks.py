"""Per-rank BatchNorm statistics under torchrun, and what SyncBatchNorm changes.

Trains ``train_ddp.py`` with ``torchrun --nproc_per_node=2`` (gloo, CPU) with
BatchNorm and with SyncBatchNorm, at two per-rank batch sizes, each rank
recording its own file (``<run>.rank<R>.h5``), then draws the ``ranks`` figure
from the folder: ``normviz plot`` merges the rank files of each run.

    python gallery/plot_ddp_ranks.py

Writes ``gallery/images/plot_ddp_ranks.png`` (or into ``$NORMVIZ_GALLERY_OUT``);
``NORMVIZ_GALLERY_QUICK=1`` trains one batch size for a few steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import normviz
from normviz.plot.save import save_all
from normviz.plot.style import style_context

HERE = Path(__file__).resolve().parent
QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or HERE / "images")
NPROC = 2


def torchrun(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``train_ddp.py`` under torchrun with ``NPROC`` processes on CPU."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           str(HERE / "train_ddp.py"), "--out", str(folder), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def main() -> Path:
    steps = "8" if QUICK else "40"
    batches = [8] if QUICK else [4, 32]  # global batch: 2 ranks x 2 or 2 x 16 (x 4 in quick mode)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = []
        for batch in batches:
            for sync in (False, True):
                name = f"{'syncbn' if sync else 'bn'}-b{batch}"
                args = ["--name", name, "--steps", steps, "--global-batch", str(batch)]
                jobs.append(torchrun(folder, *args, *(["--sync-bn"] if sync else [])))
            for job in jobs:  # two at a time: each is NPROC processes
                out, _ = job.communicate()
                if job.returncode:
                    raise SystemExit(f"torchrun failed ({job.returncode}):\n{out.decode(errors='replace')[-3000:]}")
            jobs.clear()
        runs = [normviz.open(p) for p in sorted(folder.glob("*.h5"))]
        try:
            OUT.mkdir(parents=True, exist_ok=True)
            with style_context("paper-wide"):
                fig = normviz.plot(runs, "ranks", style="paper-wide")
                written = save_all(fig, OUT / "plot_ddp_ranks", ("png",))
        finally:
            for run in runs:
                run.close()
    print(*written, sep="\n")
    return written[0]


if __name__ == "__main__":
    main()
