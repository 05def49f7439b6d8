"""Overhead of recording activation/gradient statistics, against bare training and peers.

    python benchmarks/overhead.py [--quick] [--models M ...] [--variants V ...]
                                  [--steps N] [--rounds R] [--json PATH]

Every (model, variant) pair trains in this one process on fixed synthetic data with
``torch.set_num_threads(2)``.  Each round runs every variant once, in an order rotated
by one per round (A B C, B C A, C A B, ...), each in a fresh session: the model is
rebuilt from the same seed, the variant is attached, warm-up steps run untimed, then
the timed steps run.  A session's time is its mean ms/step (so a variant that records
every 10th step is charged for its recorded steps); the table gives the median over
rounds, the median over rounds of the ratio to the bare session of the same round,
and their min/max.  ``bare (again)`` is bare training timed as a separate variant:
its ratio is the noise floor.  See benchmarks/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
# Run from a checkout without installing it: fall back to this checkout only when no
# normviz is importable, so that PYTHONPATH (compare_versions.py) picks the version timed.
if importlib.util.find_spec("normviz") is None:
    sys.path.append(str(REPO))

from machine import cpu_name  # noqa: E402  (benchmarks/, this script's folder)

import normviz  # noqa: E402
from normviz.experiments import models  # noqa: E402

THREADS = 2
StepHook = Callable[[Tensor], None]
# glibc's malloc returns large freed blocks to the OS and maps them again, so the same
# training step takes 0 to 14,000 page faults (on a 2-vCPU VM: 29 to 53 ms for ResNet-8)
# depending on what else allocated in between. Fixed thresholds keep freed memory for
# reuse, as the caching allocators PyTorch's CPU tuning guide recommends (jemalloc,
# tcmalloc) do: every variant then runs on the same footing. ``--system-malloc`` opts out.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A model, its optimizer, a fixed synthetic batch and its loss."""

    name: str
    description: str
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer]]
    data: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]


def _sgd(model: nn.Module, lr: float = 0.01, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def _with_sgd(model: nn.Module, **kwargs: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, _sgd(model, **kwargs)


def _with_adamw(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, torch.optim.AdamW(model.parameters(), lr=3e-4)


def _lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _images(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    return models.image_classification_data(64, gen, num_classes=10, size=32)


def _channels_last(build: Callable[[], tuple[nn.Module, torch.optim.Optimizer]]) -> Callable[
        [], tuple[nn.Module, torch.optim.Optimizer]]:
    """The model of ``build`` in the channels-last layout (in place: the optimizer's parameters stay)."""
    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        model, opt = build()
        return model.to(memory_format=torch.channels_last), opt
    return make


def _images_channels_last(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x, y = _images(gen)
    return x.contiguous(memory_format=torch.channels_last), y


def _tokens(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    return models.token_data(16, 64, 256, gen)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "seed-mlp-bn",
            "seed MLP 10-64-1 + BatchNorm1d, batch 1000, SGD",
            lambda: _with_sgd(models.seed_mlp("batch"), lr=1e-3, momentum=0.0),
            models.seed_regression_data,
            F.mse_loss,
        ),
        ModelSpec(
            "deep-mlp-bn",
            "MLP 8x[Linear(512,512)+BatchNorm1d+ReLU], batch 256, SGD",
            lambda: _with_sgd(models.deep_mlp("batch")),
            lambda gen: (torch.randn(256, 512, generator=gen), torch.randint(10, (256,), generator=gen)),
            F.cross_entropy,
        ),
        ModelSpec(
            "resnet8-bn",
            "ResNet-8 16/32/64 + BatchNorm2d, batch 64x3x32x32, SGD",
            lambda: _with_sgd(models.resnet8("batch")),
            _images,
            F.cross_entropy,
        ),
        ModelSpec(
            "resnet8-gn",
            "ResNet-8 16/32/64 + GroupNorm(4), batch 64x3x32x32, SGD",
            lambda: _with_sgd(models.resnet8("group")),
            _images,
            F.cross_entropy,
        ),
        ModelSpec(
            "resnet8-bn-cl",
            "ResNet-8 16/32/64 + BatchNorm2d, channels-last model and batch, batch 64x3x32x32, SGD",
            _channels_last(lambda: _with_sgd(models.resnet8("batch"))),
            _images_channels_last,
            F.cross_entropy,
        ),
        ModelSpec(
            "resnet8-gn-cl",
            "ResNet-8 16/32/64 + GroupNorm(4), channels-last model and batch, batch 64x3x32x32, SGD",
            _channels_last(lambda: _with_sgd(models.resnet8("group"))),
            _images_channels_last,
            F.cross_entropy,
        ),
        ModelSpec(
            "transformer-ln",
            "pre-LN transformer d256 h4 L4 + LayerNorm, batch 16x64 tokens, AdamW",
            lambda: _with_adamw(models.transformer("layer")),
            _tokens,
            _lm_loss,
        ),
        ModelSpec(
            "transformer-rms",
            "pre-LN transformer d256 h4 L4 + RMSNorm, batch 16x64 tokens, AdamW",
            lambda: _with_adamw(models.transformer("rms")),
            _tokens,
            _lm_loss,
        ),
    ]
}


# --------------------------------------------------------------------------- variants


class Unavailable(Exception):
    """A variant cannot run here; the message says why."""


@dataclass
class Session:
    """What a variant needs to attach, and what it reports back."""

    model_name: str
    round: int
    workdir: Path
    total_steps: int = 0
    bytes_written: int | None = None
    recorded_steps: int | None = None


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules with parameters: the layers the peers hook (fastai's choice)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False))
    ]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _forward_hooks(model: nn.Module, hook: Callable[[str, Tensor], None]) -> Iterator[None]:
    def make(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                hook(name, output)

        return fn

    handles = [module.register_forward_hook(make(name)) for name, module in _layers(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Variant:
    """One way of training: bare, or with a recorder attached."""

    name = ""
    label = ""
    period = 1  # timed steps are whole multiples of this

    def check(self) -> None:
        """Raise :class:`Unavailable` if this variant cannot run here."""

    def version(self) -> str | None:
        return None

    def attach(self, model: nn.Module, session: Session) -> contextlib.AbstractContextManager[StepHook]:
        raise NotImplementedError


class Bare(Variant):
    name, label = "bare", "bare"

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        yield lambda loss: None


class BareAgain(Bare):
    name, label = "bare-again", "bare (again: noise floor)"


class NormvizVariant(Variant):
    def __init__(self, every: int, compiled: bool = False) -> None:
        self.every = every
        self.period = every
        self.compiled = compiled  # Recorder(compile=True): the one-pass compiled site reductions
        self.name = f"normviz-every{every}" + ("-compiled" if compiled else "")
        self.label = f"normviz every={every}" + (", compile=True" if compiled else "")

    def check(self) -> None:
        try:
            normviz = importlib.import_module("normviz")
        except Exception as exc:  # the recorder may not exist yet or may be broken
            raise Unavailable(f"unavailable: import normviz failed: {_one_line(exc)}") from exc
        if not hasattr(normviz, "Recorder"):
            raise Unavailable("unavailable: normviz.Recorder not found")

    def version(self) -> str | None:
        return _dist_version("normviz")

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        import normviz

        path = session.workdir / f"{session.model_name}-{self.name}-r{session.round}.h5"
        options = {"compile": True} if self.compiled else {}
        with normviz.Recorder(model, path, every=self.every, **options) as rec:

            def on_step(loss: Tensor) -> None:
                rec.step(loss=loss)

            # After warm-up: the file's one-time creation (~10 ms on the writer's thread,
            # triggered by the first recorded step) is setup, not a per-step cost.
            on_step.settle = rec.flush  # type: ignore[attr-defined]
            yield on_step
        session.bytes_written = _size(path)
        session.recorded_steps = math.ceil(session.total_steps / self.every)
        path.unlink(missing_ok=True)


class TensorBoardVariant(Variant):
    name, label = "tensorboard", "TensorBoard add_histogram (acts + grads)"

    def check(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except Exception as exc:
            raise Unavailable("unavailable (not installed)") from exc

    def version(self) -> str | None:
        return _dist_version("tensorboard")

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        from torch.utils.tensorboard import SummaryWriter

        logdir = session.workdir / f"tb-{session.model_name}-r{session.round}"
        writer = SummaryWriter(log_dir=str(logdir))
        step = [0]
        params = list(model.named_parameters())

        def on_output(name: str, output: Tensor) -> None:
            writer.add_histogram(f"activations/{name}", output, step[0])

        def on_step(loss: Tensor) -> None:
            for name, param in params:
                if param.grad is not None:
                    writer.add_histogram(f"gradients/{name}", param.grad, step[0])
            writer.add_scalar("loss", loss, step[0])
            step[0] += 1

        on_step.settle = writer.flush  # type: ignore[attr-defined]  # as for normviz: setup done

        try:
            with _forward_hooks(model, on_output):
                yield on_step
        finally:
            writer.close()
        session.bytes_written = _size(logdir)
        session.recorded_steps = session.total_steps
        shutil.rmtree(logdir, ignore_errors=True)


class FastaiVariant(Variant):
    """fastai's ActivationStats(with_hist=True); re-implemented if fastai is absent."""

    name = "fastai"

    def __init__(self) -> None:
        try:
            importlib.import_module("fastai.callback.hook")
            self.real = True
        except Exception:
            self.real = False
        self.label = "fastai ActivationStats(with_hist=True)" if self.real else "fastai-style (re-implemented)"

    def version(self) -> str | None:
        return _dist_version("fastai") if self.real else None

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        if self.real:
            with self._real(model) as step:
                yield step
            return
        stats: list[list[dict[str, Any]]] = []
        stored: list[dict[str, Any]] = []

        def hook(name: str, output: Tensor) -> None:
            # As fastai's HookCallback(detach=True, cpu=True) + ActivationStats.hook.
            o = output.detach().cpu().float()
            res: dict[str, Any] = {
                "mean": o.mean().item(),
                "std": o.std().item(),
                "near_zero": (o <= 0.05).long().sum().item() / o.numel(),
                "hist": o.histc(40, 0, 10),
            }
            stored.append(res)

        def on_step(loss: Tensor) -> None:
            stats.append(list(stored))
            stored.clear()

        with _forward_hooks(model, hook):
            yield on_step

    @contextlib.contextmanager
    def _real(self, model: nn.Module) -> Iterator[StepHook]:
        from fastai.callback.hook import ActivationStats, Hooks, has_params  # type: ignore[import-not-found]
        from fastai.torch_core import flatten_model  # type: ignore[import-not-found]

        cb = ActivationStats(with_hist=True)
        hooks = Hooks([m for m in flatten_model(model) if has_params(m)], cb.hook, detach=True, cpu=True)
        stats: list[Any] = []
        try:
            yield lambda loss: stats.append(hooks.stored)
        finally:
            hooks.remove()


class WandbVariant(Variant):
    name, label = "wandb", 'wandb.watch(log="all", log_freq=1), offline'

    def check(self) -> None:
        try:
            importlib.import_module("wandb")
        except Exception as exc:
            raise Unavailable("unavailable (not installed)") from exc

    def version(self) -> str | None:
        return _dist_version("wandb")

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        import wandb

        rundir = session.workdir / f"wandb-{session.model_name}-r{session.round}"
        rundir.mkdir()
        run = wandb.init(
            project="normviz-overhead",
            dir=str(rundir),
            mode="offline",
            settings=wandb.Settings(console="off", silent=True),
        )
        try:
            watch = getattr(run, "watch", None) or wandb.watch
            watch(model, log="all", log_freq=1)
            yield lambda loss: run.log({"loss": loss.item()})
        finally:
            with contextlib.suppress(Exception):
                (getattr(run, "unwatch", None) or wandb.unwatch)(model)
            run.finish()
        session.bytes_written = _size(rundir)
        session.recorded_steps = session.total_steps
        shutil.rmtree(rundir, ignore_errors=True)


class ItemHooks(Variant):
    name, label = "item-hooks", "plain hooks: mean/std .item() per layer"

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        values: list[tuple[str, float, float]] = []

        def hook(name: str, output: Tensor) -> None:
            o = output.detach()
            values.append((name, o.mean().item(), o.std().item()))

        with _forward_hooks(model, hook):
            yield lambda loss: None


class FloorReads(Variant):
    """Not a tool: a lower bound for any exact recorder. One read of every tensor normviz reads
    at a recorded step, by the cheapest full reduction there is (``sum``), and nothing else:
    each distinct activation of a layer normviz records (a norm layer's input and output, another
    layer's output; not a training BatchNorm's or a GroupNorm's output, which normviz derives), each
    such layer's output gradient and each parameter's gradient. No second pass for the moments or
    extrema, no sample, no gradient or update statistics, no row, no writer."""

    name, label = "floor-reads", "floor: one read of each recorded tensor (not a tool)"

    @contextlib.contextmanager
    def attach(self, model: nn.Module, session: Session) -> Iterator[StepHook]:
        from normviz.plugins import get_plugin_host

        host = get_plugin_host()
        derived = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)
        read: dict[int, Tensor] = {}  # this step's tensors by id, each read once (kept: ids stay unique)

        def read_once(t: Tensor | None) -> None:
            if t is not None and t.is_floating_point() and read.get(id(t)) is not t:
                read[id(t)] = t
                t.sum()

        def read_grad(g: Tensor) -> None:
            g.sum()

        def make(norm: bool) -> Callable[[nn.Module, Any, Any], None]:
            def hook(mod: nn.Module, args: Any, output: Any) -> None:
                if not isinstance(output, Tensor):
                    return
                with torch.no_grad():
                    if norm and args and isinstance(args[0], Tensor):
                        read_once(args[0])
                    if not (mod.training and isinstance(mod, derived)):
                        read_once(output)
                if output.requires_grad:
                    output.register_hook(read_grad)

            return hook

        handles = []
        for name, module in model.named_modules():
            norm = host.classify(name, module) is not None
            if norm or any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_hook(make(norm)))
        params = [p for p in model.parameters() if p.requires_grad]

        def on_step(loss: Tensor) -> None:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.sum()
            read.clear()

        try:
            yield on_step
        finally:
            for handle in handles:
                handle.remove()


def make_variants() -> dict[str, Variant]:
    variants: list[Variant] = [
        Bare(),
        BareAgain(),
        NormvizVariant(1),
        NormvizVariant(10),
        NormvizVariant(1, compiled=True),
        NormvizVariant(10, compiled=True),
        TensorBoardVariant(),
        FastaiVariant(),
        WandbVariant(),
        ItemHooks(),
        FloorReads(),
    ]
    return {v.name: v for v in variants}


# --------------------------------------------------------------------------- measuring


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_kib(field_name: str) -> int:
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _can_reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _proc_kib("VmHWM")
        return True
    except (OSError, KeyError, ValueError):
        return False


class PeakMemory:
    """Peak resident memory during a session, relative to its start.

    On Linux the kernel's high-water mark (VmHWM) is reset before each session
    (``/proc/self/clear_refs``), so each session's own peak is measured.  Elsewhere
    ``resource.getrusage`` gives the process's lifetime peak, so a session shows a
    delta only where it exceeds every earlier peak (a lower bound).
    """

    def __init__(self) -> None:
        self.exact = _can_reset_peak()
        self.method = (
            "peak RSS (VmHWM, reset per session via /proc/self/clear_refs) minus RSS at session start"
            if self.exact
            else "growth of the process's lifetime peak RSS (resource.getrusage; a lower bound)"
        )
        self._libc: Any = None
        with contextlib.suppress(OSError):
            self._libc = ctypes.CDLL("libc.so.6")

    def start(self) -> int:
        gc.collect()
        if self._libc is not None:  # hand freed heap back so RSS starts low
            with contextlib.suppress(AttributeError):
                self._libc.malloc_trim(0)
        if self.exact:
            _CLEAR_REFS.write_text("5")
            return _proc_kib("VmRSS")
        return self._maxrss_kib()

    def delta_mib(self, start_kib: int) -> float:
        peak = _proc_kib("VmHWM") if self.exact else self._maxrss_kib()
        return max(0, peak - start_kib) / 1024

    @staticmethod
    def _maxrss_kib() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if sys.platform == "darwin" else rss


@dataclass
class Settings:
    steps: int
    rounds: int
    warmup: int
    budget_s: float


@dataclass
class Sample:
    """One timed session."""

    round: int
    position: int
    ms_per_step: float
    timed_steps: int
    close_ms: float
    peak_rss_mib: float
    bytes_written: int | None
    recorded_steps: int | None


@dataclass
class Cell:
    """All sessions of one (model, variant) pair."""

    model: str
    variant: str
    label: str
    status: str = "ok"  # ok | unavailable: ... | error: ...
    samples: list[Sample] = field(default_factory=list)


def run_session(
    spec: ModelSpec,
    data: tuple[Tensor, Tensor],
    variant: Variant,
    session: Session,
    settings: Settings,
    memory: PeakMemory,
) -> Sample:
    """Build the model afresh, attach the variant, warm up, time, detach."""
    torch.manual_seed(0)
    model, optimizer = spec.build()
    model.train()
    x, y = data

    def train_step(hook: StepHook) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = spec.loss(model(x), y)
        loss.backward()
        optimizer.step()
        hook(loss)

    period = variant.period
    target = max(period, math.ceil(settings.steps / period) * period)
    mem_start = memory.start()
    with variant.attach(model, session) as hook:
        begin = time.perf_counter()
        for _ in range(settings.warmup):
            train_step(hook)
            session.total_steps += 1
            if time.perf_counter() - begin > settings.budget_s:  # at least one step
                break
        settle = getattr(hook, "settle", None)  # a tool's one-time setup finishes before timing
        if settle is not None:
            settle()
        timed = 0
        begin = time.perf_counter()
        while timed < target:
            train_step(hook)
            timed += 1
            if timed % period == 0 and time.perf_counter() - begin > settings.budget_s:
                break
        elapsed = time.perf_counter() - begin
        session.total_steps += timed
        closing = time.perf_counter()
    close_ms = (time.perf_counter() - closing) * 1e3
    return Sample(
        round=session.round,
        position=0,
        ms_per_step=elapsed / timed * 1e3,
        timed_steps=timed,
        close_ms=close_ms,
        peak_rss_mib=memory.delta_mib(mem_start),
        bytes_written=session.bytes_written,
        recorded_steps=session.recorded_steps,
    )


def benchmark_model(
    spec: ModelSpec,
    variants: list[Variant],
    unavailable: dict[str, str],
    settings: Settings,
    workdir: Path,
    memory: PeakMemory,
    log: Callable[[str], None],
    time_share_s: float = math.inf,
) -> tuple[list[Cell], int]:
    """Run the rounds for one model; stop starting rounds after ``time_share_s``.

    Returns the cells and the number of rounds run (at least one).
    """
    started = time.perf_counter()
    cells = {v.name: Cell(spec.name, v.name, v.label) for v in variants}
    for name, reason in unavailable.items():
        cells[name].status = reason
    data = spec.data(torch.Generator().manual_seed(1234))
    runnable = [v for v in variants if v.name not in unavailable]
    # One untimed bare session first, so that no variant pays for a cold start.
    run_session(spec, data, Bare(), Session(spec.name, -1, workdir), replace(settings, steps=2), memory)
    rounds_run = 0
    for r in range(settings.rounds):
        if r > 0 and time.perf_counter() - started > time_share_s:
            log(f"  {spec.name}: time limit reached after {r} of {settings.rounds} rounds")
            break
        rounds_run += 1
        shift = r % len(runnable) if runnable else 0
        order = runnable[shift:] + runnable[:shift]
        for position, variant in enumerate(order):
            cell = cells[variant.name]
            if cell.status != "ok":
                continue
            session = Session(spec.name, r, workdir)
            try:
                sample = run_session(spec, data, variant, session, settings, memory)
            except Exception as exc:  # report it and go on with the others
                cell.status = f"error: {_one_line(exc)}"
                log(f"  {spec.name} / {variant.name}: {cell.status}")
                continue
            sample.position = position
            cell.samples.append(sample)
            log(
                f"  {spec.name} round {r + 1}/{settings.rounds} {variant.name}: "
                f"{sample.ms_per_step:.2f} ms/step ({sample.timed_steps} steps)"
            )
    return [cells[v.name] for v in variants], rounds_run


# --------------------------------------------------------------------------- reporting


# A bare-vs-bare median further than NOISY_MEDIAN from 1, or more than a quarter
# of its rounds further than NOISY_ROUND, flags a model whose rounds were disturbed
# (a busy machine). A single outlying round does not move the medians.
NOISY_MEDIAN = 0.05
NOISY_ROUND = 0.25


def summarize(cell: Cell, bare: Cell | None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": cell.model, "variant": cell.variant, "label": cell.label, "status": cell.status}
    if not cell.samples:
        return row
    ms = [s.ms_per_step for s in cell.samples]
    row.update(
        rounds=len(ms),
        ms_median=statistics.median(ms),
        ms_min=min(ms),
        ms_max=max(ms),
        timed_steps=sum(s.timed_steps for s in cell.samples),
        peak_rss_mib_median=statistics.median(s.peak_rss_mib for s in cell.samples),
        close_ms_median=statistics.median(s.close_ms for s in cell.samples),
    )
    if bare is not None and bare.samples:
        bare_ms = {s.round: s.ms_per_step for s in bare.samples}
        ratios = [s.ms_per_step / bare_ms[s.round] for s in cell.samples if s.round in bare_ms]
        if ratios:
            row.update(
                ratio_median=statistics.median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                ratio_outliers=sum(abs(r - 1) > NOISY_ROUND for r in ratios),
            )
    written = [(s.bytes_written, s.recorded_steps) for s in cell.samples if s.bytes_written is not None]
    if written:
        row["bytes_per_recorded_step"] = statistics.median(b / max(1, n or 1) for b, n in written)
        row["recorded_steps_median"] = statistics.median(n or 0 for _, n in written)
    return row


def noise_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per model whose bare-vs-bare spread says the machine was busy."""
    warnings = []
    for row in rows:
        if row["variant"] != "bare-again" or "ratio_min" not in row:
            continue
        if abs(row["ratio_median"] - 1) > NOISY_MEDIAN or row["ratio_outliers"] > row["rounds"] / 4:
            warnings.append(
                f"{row['model']}: bare vs bare {row['ratio_median']:.2f}× "
                f"({row['ratio_min']:.2f}–{row['ratio_max']:.2f}); something else was probably "
                "using the CPU, so this model's ratios are unreliable: rerun it on a quiet "
                "machine, or with more --rounds"
            )
    return warnings


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MiB"  # pragma: no cover


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | variant | ms/step median (min–max) | × bare median (min–max) "
        "| peak RSS Δ MiB | bytes / recorded step | note |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        if "ms_median" in row:
            ms = f"{row['ms_median']:.2f} ({row['ms_min']:.2f}–{row['ms_max']:.2f})"
            ratio = (
                f"{row['ratio_median']:.2f}× ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
                if "ratio_median" in row
                else "—"
            )
            mem = f"{row['peak_rss_mib_median']:.1f}"
            size = "—"
            if "bytes_per_recorded_step" in row:
                size = f"{_fmt_bytes(row['bytes_per_recorded_step'])} ({row['recorded_steps_median']:.0f} rec.)"
            note = f"{row['rounds']} round{'s' * (row['rounds'] != 1)}, {row['timed_steps']} timed steps"
            if row["status"] != "ok":  # failed after some rounds had run
                note = f"{row['status']} (after {note})"
        else:
            ms = ratio = mem = size = "—"
            note = row["status"]
        note = note.replace("|", "\\|")
        lines.append(f"| {row['model']} | {row['label']} | {ms} | {ratio} | {mem} | {size} | {note} |")
    return "\n".join(lines)


def environment(variants: list[Variant], memory: PeakMemory, argv: list[str]) -> dict[str, Any]:
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _dist_version("numpy"),
        "h5py": _dist_version("h5py"),
    }
    for variant in variants:
        key = "normviz" if variant.name.startswith("normviz-every") else variant.name
        if key in ("bare", "bare-again", "item-hooks", "floor-reads"):  # no package of their own
            continue
        versions[key] = variant.version() or versions.get(key) or "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(["python", "benchmarks/overhead.py", *argv]),
        "machine": f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} logical CPUs",
        "torch_threads": torch.get_num_threads(),
        "malloc": (
            "glibc with " + ", ".join(f"{k}={v}" for k, v in STEADY_MALLOC.items())
            if all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items())
            else "system default"
        ),
        "versions": versions,
        "normviz_package": str(Path(normviz.__file__).resolve().parent),
        "memory_method": memory.method,
    }


# --------------------------------------------------------------------------- command line


def _names(values: list[str] | None, known: list[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    if not values:
        return known
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        parser.error(f"unknown {what} {', '.join(bad)}; choose from {', '.join(known)}")
    return [n for n in known if n in names]


def main(argv: list[str] | None = None) -> int:
    variants_all = make_variants()
    parser = argparse.ArgumentParser(
        description="Time normviz's recorder against bare training and peer tools (CPU, 2 threads).",
    )
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (< 3 min); a smoke test")
    parser.add_argument("--models", nargs="+", metavar="M", help=f"subset of: {', '.join(MODELS)}")
    parser.add_argument("--variants", nargs="+", metavar="V", help=f"subset of: {', '.join(variants_all)}")
    parser.add_argument("--steps", type=int, help="timed steps per session (default 30; quick 10)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per session (default 2; quick 1)")
    parser.add_argument(
        "--budget",
        type=float,
        help="stop a session's timing early once it has run this many seconds (default 1.5; quick 0.35)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        help="stop starting new rounds once a model has used its share of S seconds (what is left, "
        "shared by the models still to run) "
        "(default 840; quick 150); every model still gets one round",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--list", action="store_true", help="list models and variants, then exit")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep the C library's default allocator settings (by default the script restarts itself "
        "with fixed glibc malloc thresholds; see STEADY_MALLOC)",
    )
    args = parser.parse_args(argv)

    if args.list:
        for spec in MODELS.values():
            print(f"model    {spec.name:18} {spec.description}")
        for variant in variants_all.values():
            print(f"variant  {variant.name:18} {variant.label}")
        return 0

    settings = Settings(
        steps=args.steps or (10 if args.quick else 30),
        rounds=args.rounds or (3 if args.quick else 7),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        budget_s=args.budget or (0.35 if args.quick else 1.5),
    )
    if settings.steps < 1 or settings.rounds < 1 or settings.warmup < 0 or settings.budget_s <= 0:
        parser.error("--steps and --rounds must be ≥ 1, --warmup ≥ 0, --budget > 0")
    model_names = _names(args.models, list(MODELS), "model", parser)
    variant_names = _names(args.variants, list(variants_all), "variant", parser)
    if "bare" not in variant_names:
        variant_names.insert(0, "bare")  # every ratio needs it
    variants = [variants_all[n] for n in variant_names]

    torch.set_num_threads(THREADS)
    os.environ["WANDB_MODE"] = "offline"  # never talk to a server
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    memory = PeakMemory()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    unavailable: dict[str, str] = {}
    for variant in variants:
        try:
            variant.check()
        except Unavailable as exc:
            unavailable[variant.name] = str(exc)
            log(f"{variant.name}: {exc}")

    time_limit = args.time_limit or (150.0 if args.quick else 840.0)
    short: list[str] = []
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="normviz-overhead-") as tmp:
        for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            os.environ.setdefault(key, str(Path(tmp) / "wandb-home"))
        for index, name in enumerate(model_names):
            spec = MODELS[name]
            log(f"{name}: {spec.description}")
            # What is left of the limit, shared by the models still to run.
            time_share = max(0.0, time_limit - (time.perf_counter() - started)) / (len(model_names) - index)
            try:
                cells, rounds_run = benchmark_model(
                    spec, variants, unavailable, settings, Path(tmp), memory, log, time_share
                )
                if rounds_run < settings.rounds:
                    short.append(f"{name} ({rounds_run} of {settings.rounds})")
            except Exception as exc:  # e.g. the model itself failed to build
                log(f"  {name}: error: {_one_line(exc)}")
                cells = [Cell(name, v.name, v.label, status=f"error: {_one_line(exc)}") for v in variants]
            bare = next((c for c in cells if c.variant == "bare"), None)
            for cell in cells:
                rows.append(summarize(cell, bare))
                raw.append({"model": cell.model, "variant": cell.variant, "samples": [asdict(s) for s in cell.samples]})
        if "wandb" in sys.modules:  # stop wandb's service process before its folder goes
            with contextlib.suppress(Exception):
                sys.modules["wandb"].teardown()
    runtime = time.perf_counter() - started

    env = environment(variants, memory, sys.argv[1:] if argv is None else argv)
    env["settings"] = asdict(settings)
    env["runtime_s"] = round(runtime, 1)
    print(f"# normviz overhead benchmark ({'quick' if args.quick else 'full'})\n")
    print(f"- date: {env['date']}")
    print(f"- command: `{env['command']}`")
    print(f"- machine: {env['machine']}; torch threads: {env['torch_threads']}; malloc: {env['malloc']}")
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(
        f"- settings: {settings.rounds} rounds, up to {settings.steps} timed steps per session "
        f"(cut after {settings.budget_s:g} s), {settings.warmup} warm-up steps; runtime {runtime:.0f} s"
    )
    print(f"- memory: {memory.method}")
    if short:
        print(f"- time limit ({time_limit:g} s) cut the rounds of: {', '.join(short)}")
    env["rounds_cut"] = short
    print()
    for name in model_names:
        print(f"- {name}: {MODELS[name].description}")
    print()
    print(markdown_table(rows))
    warnings = noise_warnings(rows)
    if warnings:
        print()
        for line in warnings:
            print(f"**Noisy:** {line}")
    env["noise_warnings"] = warnings
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows, "samples": raw}, indent=2) + "\n")
    return 0


def _restart_with_steady_malloc(argv: list[str]) -> None:
    """Run this script again with STEADY_MALLOC set (glibc reads it at process start)."""
    if "--system-malloc" in argv or platform.system() != "Linux":
        return
    if all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items()):
        return
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], {**os.environ, **STEADY_MALLOC})


if __name__ == "__main__":
    _restart_with_steady_malloc(sys.argv[1:])
    sys.exit(main())
