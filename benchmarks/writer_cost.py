"""What the writer's thread costs a recorded training step: its CPU time per row, and the step
time with the writer flushing as usual against the same steps with every flush deferred to the end.

    python benchmarks/writer_cost.py                      # every model of overhead.py, about 1 min
    python benchmarks/writer_cost.py --models resnet8-bn --steps 40

The writer sorts each row's value samples (percentiles, histograms) and writes HDF5 on its own
thread. On a machine whose cores the training threads already use (2 torch threads on 2 cores,
as in RESULTS.md) that work competes with training, GIL or not; the deferred column shows what
the step costs without it while it is timed. Every step is recorded (``every=1``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

import normviz  # noqa: E402
from normviz.record import finish  # noqa: E402
from normviz.store import writer  # noqa: E402


class WriterClock:
    """CPU time of the writer's thread in its flushes, and the part of it spent finishing rows."""

    def __init__(self) -> None:
        self.flush = self.finish = 0.0
        self.rows = 0
        flush, call = writer.RunWriter._flush, finish.RowFinisher.__call__
        clock = self

        def timed_flush(self: Any, *, clean: bool) -> None:
            t, n = time.thread_time(), len(self._rows)
            flush(self, clean=clean)
            clock.flush += time.thread_time() - t
            clock.rows += n

        def timed_finish(self: Any, rows: Any) -> Any:
            t = time.thread_time()
            out = call(self, rows)
            clock.finish += time.thread_time() - t
            return out

        writer.RunWriter._flush = timed_flush  # type: ignore[method-assign]
        finish.RowFinisher.__call__ = timed_finish  # type: ignore[method-assign]


def step_ms(spec: overhead.ModelSpec, steps: int, folder: Path, **options: Any) -> float:
    """Mean ms per recorded step over ``steps`` steps after 5 warm-up steps (the file's creation excluded)."""
    torch.manual_seed(0)
    model, opt = spec.build()
    x, y = spec.data(torch.Generator().manual_seed(0))
    with normviz.Recorder(model, folder / f"{spec.name}-{len(list(folder.iterdir()))}.h5", **options) as rec:
        def step() -> None:
            opt.zero_grad()
            loss = spec.loss(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss=loss)

        for _ in range(5):
            step()
        rec.flush()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(overhead.MODELS), choices=list(overhead.MODELS))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: by model)")
    args = ap.parse_args()
    torch.set_num_threads(overhead.THREADS)
    print("| model | writer CPU per row | of which sorting (finish) | step, flushing | step, flushes deferred | "
          "difference |")
    print("|---|---|---|---|---|---|")
    clock = WriterClock()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            spec = overhead.MODELS[name]
            steps = args.steps or max(20, min(300, int(3000 / max(spec_ms(spec), 0.1))))
            clock.flush = clock.finish = 0.0
            clock.rows = 0
            flushing = step_ms(spec, steps, folder)
            per_row, sorting = clock.flush / max(clock.rows, 1) * 1e3, clock.finish / max(clock.rows, 1) * 1e3
            deferred = step_ms(spec, steps, folder, flush_every=10**9, flush_secs=1e9)
            print(f"| {name} | {per_row:.2f} ms | {sorting:.2f} ms | {flushing:.2f} ms | {deferred:.2f} ms | "
                  f"{flushing - deferred:+.2f} ms |", flush=True)


def spec_ms(spec: overhead.ModelSpec) -> float:
    """A rough bare step time, to size the timed loop."""
    model, opt = spec.build()
    x, y = spec.data(torch.Generator().manual_seed(0))
    t = time.perf_counter()
    for _ in range(3):
        opt.zero_grad()
        spec.loss(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t) / 3 * 1e3


if __name__ == "__main__":
    main()
