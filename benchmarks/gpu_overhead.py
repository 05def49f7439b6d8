"""GPU overhead of normviz recording: a ResNet-50-sized CNN and a GPT-2-small-sized transformer.

    python benchmarks/gpu_overhead.py                 # on a CUDA machine, a few minutes
    python benchmarks/gpu_overhead.py --compile       # also the torch.compile'd model (inductor, fullgraph)
    python benchmarks/gpu_overhead.py --device cpu --quick   # the smoke test this script is tested with
    python benchmarks/gpu_overhead.py --device cpu --compile --models resnet8-bn,transformer-ln
                                                      # overhead.py's CPU models, eager and compiled

For each model: bare training vs ``Recorder(every=1)`` vs ``Recorder(every=10)``, bf16
autocast, interleaved rounds (bare, every1, every10, then rotated), warm-up excluded,
median ms/step and the median of per-round ratios to bare. On CUDA every timed step
after a recorder's first recorded step — forward, backward, optimizer step and
``rec.step()`` — runs under ``torch.cuda.set_sync_debug_mode("error")`` (bare steps
too, for the same conditions): a host sync anywhere raises and is reported. Then the
kernels a recorded step adds (CUDA kernels counted with ``torch.profiler``; on CPU the
ATen operations of ``benchmarks/op_counts.py``) against the budget of 3 per recorded
site + 20, and the bytes written per recorded step. With ``--compile`` the same
comparison for ``torch.compile(model, fullgraph=True)``, bare compiled vs recorded
compiled, with the seconds to the first step of each (compilation included). Prints
the card's name, torch and CUDA versions with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # op_counts.py, beside this script

import overhead  # noqa: E402  (beside this script: its CPU models)

import normviz  # noqa: E402


# -- models built in code (no torchvision needed) -------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50's layout: [3, 4, 6, 3] bottlenecks, 25.6 M parameters, 53 BatchNorms."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """GPT-2 small's layout: 12 blocks, d_model 768, 12 heads (124 M parameters with the 50257 vocabulary)."""

    def __init__(self, vocab: int = 50257, d: int = 768, layers: int = 12, heads: int = 12, seq: int = 1024) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# -- timing -----------------------------------------------------------------------------------------
def make_case(name: str, device: torch.device, quick: bool) -> tuple[nn.Module, Callable[..., torch.Tensor],
                                                                    torch.optim.Optimizer]:
    """The model, its loss (of the model, or of ``net``: its compiled version) and its optimizer.
    Besides ``resnet50`` and ``gpt2``, any model of ``benchmarks/overhead.py`` (float32, its
    own batch: the CPU models of RESULTS.md's tables)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    if name in overhead.MODELS:
        spec = overhead.MODELS[name]
        torch.manual_seed(0)
        model, opt = spec.build()
        model.to(device)
        x, y = (t.to(device) for t in spec.data(gen))

        def small_loss(net: Callable[..., torch.Tensor] = model) -> torch.Tensor:
            return spec.loss(net(x), y)

        return model, small_loss, opt
    if name == "resnet50":
        model = resnet50().to(device)
        batch, size = (4, 64) if quick else (128, 224)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def loss_fn(net: Callable[..., torch.Tensor] = model) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return F.cross_entropy(net(x), y)
    else:
        seq, batch, vocab = (64, 2, 1024) if quick else (1024, 8, 50257)
        model = GPT(vocab=vocab, layers=2 if quick else 12, seq=seq).to(device)
        idx = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

        def loss_fn(net: Callable[..., torch.Tensor] = model) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = net(idx[:, :-1])
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
    return model, loss_fn, opt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], n: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        with no_sync_allowed(device):
            step()
    sync(device)
    return (time.perf_counter() - t) / n


class no_sync_allowed:
    """CUDA's sync debug mode set to raise for the block (a no-op elsewhere)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")


def count_kernels(step: Callable[[], None], device: torch.device) -> int:
    """Kernels one call of *step* launches (CUDA, torch.profiler), or ATen operations (CPU)."""
    if device.type != "cuda":
        from op_counts import OpCounter  # beside this script

        counter = OpCounter()
        with counter:
            step()
        return sum(counter.ops.values())
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def bench(name: str, device: torch.device, quick: bool, rounds: int, steps: int, folder: Path,
          compiled: bool = False) -> dict[str, object]:
    model, loss_fn, opt = make_case(name, device, quick)
    state: dict[str, normviz.Recorder | None] = {"rec": None}
    tag = f"{name}-compiled" if compiled else name
    # Compiled once and first called bare, so each recorder attaches to a model compiled
    # already: dynamo must guard on module hooks (off by default) to trace their hooks in
    # (docs/integrations.md). The first steps include compiling.
    if compiled:
        torch._dynamo.config.skip_nnmodule_hook_guards = False
    net = torch.compile(model, fullgraph=True) if compiled else model
    first_step_s: dict[str, float] = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net)
        loss.backward()
        opt.step()
        rec = state["rec"]
        if rec is not None:
            rec.step(loss=loss)

    variants = {"bare": None, "every1": 1, "every10": 10}
    times: dict[str, list[float]] = {v: [] for v in variants}
    sizes: dict[str, tuple[int, int]] = {}
    sites: dict[str, int] = {}  # sites recorded: a compiled graph without the hooks records none
    syncs: list[str] = []
    t0 = time.perf_counter()
    step()  # warm-up (cuDNN autotune, allocator; compiling the bare graph)
    sync(device)
    first_step_s["bare"] = time.perf_counter() - t0
    step()
    order = list(variants)
    for r in range(rounds):
        for v in order[r % 3 :] + order[: r % 3]:
            every = variants[v]
            rec = None
            if every is not None:
                path = folder / f"{tag}-{v}-{r}.h5"
                rec = normviz.Recorder(model, path, every=every, **RECORDER_OPTIONS)
                state["rec"] = rec
                t0 = time.perf_counter()
                step()  # the first recorded step fixes the layout (and compiles its graph): excluded
                sync(device)
                first_step_s.setdefault("recorded", time.perf_counter() - t0)
                if every > 1:
                    step()  # and the first one not recorded (a compiled model's other graph)
            try:
                times[v].append(time_steps(step, steps, device))
            except RuntimeError as exc:  # the sync debug mode found a host sync
                syncs.append(f"{v}: {str(exc).splitlines()[0]}")
                sync(device)
            if rec is not None:
                rec.close()
                state["rec"] = None
                with normviz.open(path) as run:
                    sizes[v] = (path.stat().st_size, len(run.steps))
                    sites[v] = len(run.sites)
    bare = times["bare"]
    out: dict[str, object] = {"model": name, "compiled": compiled,
                              "ms_per_step": {v: 1e3 * statistics.median(t) for v, t in times.items() if t}}
    out["ratio"] = {v: statistics.median(a / b for a, b in zip(t, bare)) for v, t in times.items() if t}
    out["bytes_per_recorded_step"] = {v: s / max(n, 1) for v, (s, n) in sizes.items()}
    out["sites_recorded"] = sites
    out["first_step_s"] = first_step_s
    out["timed_steps_sync"] = "SYNC in " + "; ".join(syncs) if syncs else (
        "ok: no host sync in any timed step" if device.type == "cuda" else "skipped (not CUDA)")
    # On CPU the count is of ATen operations, under a dispatch mode torch.compile does not run with.
    if device.type == "cuda" or not compiled:
        out["kernels"] = kernel_budget(model, step, state, device, folder / f"{tag}-kernels.h5")
    if not compiled:
        out["no_sync_in_hooks"] = check_no_sync(model, loss_fn, opt, device, folder / f"{tag}-sync.h5")
    return out


def kernel_budget(model: nn.Module, step: Callable[[], None], state: dict[str, normviz.Recorder | None],
                  device: torch.device, path: Path) -> dict[str, int]:
    """Kernels (CPU: ATen operations) of a bare step and of a recorded one (after the first),
    and the budget of 3 per recorded site + 20."""
    bare = count_kernels(step, device)
    rec = state["rec"] = normviz.Recorder(model, path, every=1, **RECORDER_OPTIONS)
    step()  # the first recorded step: layout, file
    recorded = count_kernels(step, device)
    rec.close()
    state["rec"] = None
    with normviz.open(path) as run:
        sites = len(run.sites)
    return {"bare": bare, "recorded": recorded, "extra": recorded - bare, "sites": sites, "budget": 3 * sites + 20}


def check_no_sync(model: nn.Module, loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer,
                  device: torch.device, path: Path) -> str:
    """Recorded steps with CUDA's sync debug mode set to raise: around forward, backward and
    the optimizer step (the hooks), then around ``rec.step()`` too (row assembly, scalars)."""
    if device.type != "cuda":
        return "skipped (not CUDA)"
    found = []
    with normviz.Recorder(model, path, **RECORDER_OPTIONS) as rec:
        for i in range(3):
            opt.zero_grad(set_to_none=True)
            torch.cuda.set_sync_debug_mode("error")
            try:
                loss = loss_fn()
                loss.backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            # Step 0 reads the first row's extrema once, to fix the histogram edges: the
            # run's one host read. From step 1 on, rec.step() must not wait for the device.
            if i > 0:
                torch.cuda.set_sync_debug_mode("error")
            try:
                rec.step(loss=loss)
            except RuntimeError as exc:
                found.append(f"rec.step() at step {i}: {str(exc).splitlines()[0]}")
            finally:
                torch.cuda.set_sync_debug_mode("default")
    if found:
        return "SYNC in " + "; ".join(found)
    return "ok: no synchronising call in hooks (forward/backward/optimizer step) or in rec.step() after step 0"


def summary_line(res: dict[str, Any]) -> str:
    ms, ratio, size = res["ms_per_step"], res["ratio"], res["bytes_per_recorded_step"]
    label = res["model"] + (" compiled" if res["compiled"] else "")
    labels = {"bare": "bare", "every1": "every=1", "every10": "every=10"}
    timing = " | ".join(f"{label} {ms[v]:.1f} ms ({ratio[v]:.3f}x)" for v, label in labels.items() if v in ms)
    first = ", ".join(f"{v} {s:.1f} s" for v, s in res["first_step_s"].items())
    k = res.get("kernels")
    kernels = (f"extra kernels per recorded step {k['extra']} (budget {k['budget']}, {k['sites']} sites)" if k
               else "kernels not counted (compiled, CPU)")
    line = (f"{label:18s} {timing} | {size.get('every1', 0) / 1024:.1f} KiB per recorded step | {kernels} | "
            f"first step: {first} | timed steps: {res['timed_steps_sync']}")
    if "no_sync_in_hooks" in res:
        line += f" | sync check: {res['no_sync_in_hooks']}"
    return line


#: Options of every Recorder the benchmark makes (``--compile-stats``: compiled site statistics).
RECORDER_OPTIONS: dict[str, Any] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="resnet50,gpt2")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd model (inductor, fullgraph)")
    parser.add_argument("--compile-stats", action="store_true",
                        help="record with Recorder(compile=True): the compiled one-pass site statistics")
    args = parser.parse_args()
    if args.compile_stats:
        RECORDER_OPTIONS["compile"] = True
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(overhead.THREADS)  # as overhead.py, for comparable CPU figures
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --quick for the smoke test", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 10)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {card}; torch {torch.__version__}; CUDA {torch.version.cuda}; normviz {normviz.__version__}; "
          f"rounds {rounds} x {steps} steps; recorder options {RECORDER_OPTIONS or 'default'}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for compiled in (False, True) if args.compile else (False,):
                res = bench(name, device, args.quick, rounds, steps, Path(tmp), compiled)
                results.append(res)
                print(summary_line(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": card, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
