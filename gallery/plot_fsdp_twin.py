"""An FSDP2 run with checkpointed blocks, merged from its rank files, beside its single-process twin.

Trains ``train_fsdp.py`` (a small RMSNorm transformer) with ``torchrun --nproc_per_node=2``
(FSDP2, gloo on CPU, non-reentrant activation checkpointing of every block) and in one
process on the same global batches, then draws both runs' gradient flow in one figure:
``normviz plot`` merges the rank files, each holding the partial sums of its own shards,
and the merged per-layer gradient norms and update ratios lie on the single process's.

    python gallery/plot_fsdp_twin.py

Writes ``gallery/images/plot_fsdp_twin.png`` (or into ``$NORMVIZ_GALLERY_OUT``);
``NORMVIZ_GALLERY_QUICK=1`` trains a few steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _gallery import draw_run_files, quick

HERE = Path(__file__).resolve().parent


def main() -> Path:
    # Past ~40 AdamW steps the two runs drift apart by float rounding (the ranks sum
    # gradients in another order), not by anything the recorder does.
    steps = "6" if quick() else "30"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    train = str(HERE / "train_fsdp.py")
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--out", tmp, "--steps", steps]
        jobs = [
            subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              train, *common, "--name", "fsdp", "--checkpoint"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
            subprocess.Popen([sys.executable, train, *common, "--name", "single"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        ]
        for job in jobs:
            out, _ = job.communicate()
            if job.returncode:
                raise SystemExit(f"training failed ({job.returncode}):\n{out.decode(errors='replace')[-3000:]}")
        return draw_run_files(__file__, sorted(Path(tmp).glob("*.h5")), "gradient-flow", style="paper-wide")


if __name__ == "__main__":
    main()
