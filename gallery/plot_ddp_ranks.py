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

from _gallery import draw_run_files, quick

HERE = Path(__file__).resolve().parent
NPROC = 2


def torchrun(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``train_ddp.py`` under torchrun with ``NPROC`` processes on CPU."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           str(HERE / "train_ddp.py"), "--out", str(folder), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def main() -> Path:
    steps = "8" if quick() else "40"
    batches = [8] if quick() else [4, 32]  # global batch: 2 ranks x 2 or 2 x 16 (x 4 in quick mode)
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
        return draw_run_files(__file__, sorted(folder.glob("*.h5")), "ranks", style="paper-wide")


if __name__ == "__main__":
    main()
