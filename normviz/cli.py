"""The ``normviz`` command line: thin click commands over the library.

Exit codes: 0 done; 1 the work failed (a plugin raised, a training crashed; the rest
still ran); 2 bad usage or bad input. Errors are one line on stderr, with no
traceback unless ``--debug``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from normviz import __version__
from normviz.distributed import current_rank, rank_path, split_rank
from normviz.errors import NormvizError
from normviz.folders import FIGURES_DIR, RUNS_DIR, collect_runs, new_run_folder, run_args, writable


class _Failed(Exception):
    """The work ran but part of it failed: exit 1 after everything else was done."""


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _say(text: str, quiet: bool, *, err: bool = False) -> None:
    """An informational line (the files written, where they went); ``--quiet`` silences it."""
    if not quiet:
        click.echo(text, err=err)


def _progress(total: int | None, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet or None, leave=False, file=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="normviz")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """See what normalization does inside a neural network: record, then plot."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("script", required=False, type=click.Path(dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--experiment", "-e", "experiments", help="Built-in experiments, comma-separated (see --list).")
@click.option("--list", "list_", is_flag=True, help="List the built-in experiments and exit.")
@click.option("--norm", help="Norm kinds to run, comma-separated (default: every kind that applies).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Training steps per run; with SCRIPT, stop the script after N optimizer steps.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Record every N-th step.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(),
              help="Output folder (built-in experiments); FILE.h5 or an existing folder (SCRIPT).")
@click.option("--overwrite", is_flag=True, help="Replace run files that already exist in --out.")
@click.option("--stat", "stats", help="Opt-in statistics, comma-separated, on every layer (see `normviz plugins`).")
@click.option("--compile", "compile_", is_flag=True,
              help="Compiled one-pass site statistics (Recorder(compile=True)): fewer kernels, seconds to compile.")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings and errors (no progress bar, no file list).")
def record(
    script: str | None,
    script_args: Sequence[str],
    experiments: str | None,
    list_: bool,
    norm: str | None,
    steps: int | None,
    every: int,
    device: str,
    seed: int,
    out: str | None,
    overwrite: bool,
    stats: str | None,
    compile_: bool,
    quiet: bool,
) -> None:
    """Record runs: the built-in experiments (default: the seed's MLP and CNN) or SCRIPT.

    \b
    normviz record                                  the seed's MLP and CNN, every norm kind
    normviz record -e resnet8 --norm batch,none     named experiments (see --list)
    normviz record train.py -- --epochs 3           an unmodified script; its own arguments after --

    A SCRIPT runs as `python SCRIPT ARGS` would, with its model found at its first
    training forward and a step counted at each optimizer.step() (or
    normviz.mark_step()); see docs/recording.md, "Script mode". Its run goes to a new
    folder in ./normviz-runs unless --out names a FILE.h5 or an existing folder.
    """
    from normviz.experiments import (
        DEFAULT_EXPERIMENTS,
        EXPERIMENTS,
        iter_runs,
        run_experiment,
    )

    if list_:
        width = max(len(name) for name in EXPERIMENTS) + 2
        for exp in EXPERIMENTS.values():
            default = " (default)" if exp.name in DEFAULT_EXPERIMENTS else ""
            click.echo(f"{exp.name:<{width}}{','.join(exp.kinds):<40} {exp.description}{default}")
        return
    extra = _opt_in(stats)
    recorder_options: dict[str, Any] = {"compile": True} if compile_ else {}
    if script is not None:
        _record_script(Path(script), list(script_args), out, every=every, steps=steps, seed=seed, overwrite=overwrite,
                       quiet=quiet, options={**recorder_options, **({"statistics": extra} if extra else {})})
        return
    names = _split(experiments) or list(DEFAULT_EXPERIMENTS)
    for name in names:
        if name not in EXPERIMENTS:
            raise NormvizError(f"unknown experiment {name!r} (--experiment); known: {', '.join(EXPERIMENTS)}")
    kinds = _split(norm)
    known_kinds = {k for n in names for k in EXPERIMENTS[n].kinds}
    for kind in kinds or []:
        if kind not in known_kinds:
            raise NormvizError(f"unknown norm kind {kind!r} (--norm) for {', '.join(names)}; "
                               f"known: {', '.join(sorted(known_kinds))}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NormvizError("--device cuda: no CUDA device is available")
    plan = list(iter_runs(names, kinds))
    if not plan:
        raise NormvizError("nothing to run: no experiment has the requested norm kinds (--norm)")
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise NormvizError(f"{folder}: --out must be a folder for built-in experiments")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = new_run_folder(RUNS_DIR)
    if not overwrite:
        for exp, kind in plan:
            if (folder / f"{exp.name}-{kind}.h5").exists():
                raise NormvizError(f"{folder / f'{exp.name}-{kind}.h5'}: file exists; normviz never overwrites a run "
                                   "(use --overwrite)")
    total = sum(steps or exp.steps for exp, _ in plan)
    failed = []
    with _progress(total, "recording", quiet) as bar:
        for exp, kind in plan:
            path = folder / f"{exp.name}-{kind}.h5"
            bar.set_postfix_str(path.name)
            try:
                options: dict[str, Any] = {"overwrite": overwrite, **recorder_options}
                if extra:  # the experiment's own opt-ins, and every layer for those asked for
                    own = exp.statistics if isinstance(exp.statistics, dict) else {s: ["*"] for s in exp.statistics}
                    options["statistics"] = {**own, **{s: ["*"] for s in extra}}
                losses = run_experiment(
                    exp, kind, path, steps=steps, every=every, seed=seed, device=device, progress=bar.update,
                    recorder_options=options,
                )
            except NormvizError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing run must not stop the others
                failed.append(f"{path.name}: {type(exc).__name__}: {exc}")
                continue
            last = f"{losses[-1]:.4g}" if losses else "n/a"
            _say(f"{path}\tfinal loss {last}", quiet)
    _say(f"runs written to {folder}", quiet, err=True)
    if failed:
        raise _Failed("; ".join(failed))


def _opt_in(stats: str | None) -> list[str]:
    """``--stat``'s statistics, each a registered one (else one clear line)."""
    names = _split(stats) or []
    if names:
        from normviz.plugins import get_plugin_host

        known = get_plugin_host().statistics()
        for name in names:
            if name not in known:
                raise NormvizError(f"unknown statistic {name!r} (--stat); known: {', '.join(sorted(known))}")
    return names


def _record_script(
    script: Path, argv: list[str], out: str | None, *, every: int, steps: int | None, seed: int, overwrite: bool,
    quiet: bool, options: dict[str, Any],
) -> None:
    """``normviz record SCRIPT -- ARGS``: run an unmodified script with recording attached."""
    from normviz.record.script import ScriptRecorder

    if not script.is_file():
        raise NormvizError(f"{script}: no such script")
    if argv and argv[0] == "--":
        argv = argv[1:]
    created = None
    _, world_size = current_rank()
    if out is not None and Path(out).suffix == ".h5":
        path = Path(out)
    elif out is not None and Path(out).is_dir():
        path = Path(out) / f"{script.stem}.h5"
    elif out is not None:
        raise NormvizError(f"--out {out}: for a script, name a FILE.h5 or an existing folder")
    elif world_size > 1:
        # Under torchrun every rank runs this command: they share one folder, named by the run.
        run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT") or "run"
        created = RUNS_DIR / f"torchrun-{run_id}"
        created.mkdir(parents=True, exist_ok=True)
        path = created / f"{script.stem}.h5"
    else:
        created = new_run_folder(RUNS_DIR)
        path = created / f"{script.stem}.h5"
    if split_rank(path)[1] is None:  # a path that names its rank already is kept as given
        path = rank_path(path)  # <script>.rank<R>.h5 under torchrun, unchanged in one process
    if path.exists() and not overwrite:
        raise NormvizError(f"{path}: file exists; normviz never overwrites a run (use --overwrite)")
    recorder = ScriptRecorder(path, every=every, max_steps=steps, overwrite=overwrite, seed=seed, label=script.stem,
                              **options)

    def kept() -> str:
        return f"the {recorder.steps} steps recorded before are in {path}" if recorder.steps else "nothing was recorded"

    try:
        status = recorder.run(script, argv)
    except (Exception, KeyboardInterrupt) as exc:
        if created is not None and not any(created.iterdir()):
            created.rmdir()  # a new run folder that holds nothing is not left behind
        if isinstance(exc, NormvizError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            click.echo(f"normviz: interrupted; {kept()}", err=True)
            raise SystemExit(130) from None
        raise _Failed(f"{script} raised {type(exc).__name__}: {exc}; {kept()}") from exc
    if recorder.steps:
        _say(str(path), quiet)
    elif created is not None and not any(created.iterdir()):
        created.rmdir()
    if status != 0:
        raise _Failed(f"{script} exited with status {status}; {kept()}")


@cli.command()
@click.argument("runs", nargs=-1, type=click.Path())
@click.option("--renderer", "-r", "renderers", help="Renderers, comma-separated (default: every one).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="png, pdf, svg, pgf; comma-separated.")
@click.option("--style", default="paper", show_default=True, help="paper, paper-wide, slides or notebook.")
@click.option("--layers", help="Only layers whose name matches this glob.")
@click.option("--steps", "steps_range", help="Training steps START:STOP.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--follow", is_flag=True, help="Redraw as new steps arrive, until Ctrl-C or every run is closed.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between redraws with --follow.")
def plot(
    runs: Sequence[str],
    renderers: str | None,
    out: str | None,
    formats: str,
    style: str,
    layers: str | None,
    steps_range: str | None,
    quiet: bool,
    follow: bool,
    interval: float,
) -> None:
    """Draw figures of RUNS (files or folders; default: the newest folder in ./normviz-runs)."""
    from normviz.plot.api import render_to_files
    from normviz.plot.follow import follow_runs
    from normviz.plugins import get_plugin_host
    from normviz.store.reader import open_run

    # Formats, style, renderers and steps are checked by render_to_files (UsageError: exit 2).
    runs = run_args(runs)  # resolved once: --follow rescans the same folders
    paths, name = collect_runs(runs)
    host = get_plugin_host()
    out_dir = Path(out) if out else FIGURES_DIR / name
    existed = out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormvizError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from exc
    if not writable(out_dir):
        raise NormvizError(f"{out_dir}: output folder is not writable")
    opened = []
    try:
        for p in paths:
            opened.append(open_run(p))

        def draw() -> Any:
            with _progress(None, "plotting", quiet) as bar:
                return render_to_files(
                    opened, out_dir, renderers=_split(renderers), formats=formats, style=style, layers=layers,
                    steps=steps_range or None, host=host, progress=bar.update, on_total=bar.reset,
                )

        report = draw()
        if follow:
            report = follow_runs(opened, draw, report, interval=interval, rescan=lambda: collect_runs(runs)[0],
                                 say=lambda text: click.echo(text, err=True))
    finally:
        for run in opened:
            run.close()
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # made for this drawing, which wrote nothing
    for path in report.written:
        _say(str(path), quiet)
    # Every renderer that drew nothing says why, asked for by name or not.
    for renderer, message in report.skipped.items():
        click.echo(f"normviz: skipped renderer {renderer!r}: {message}", err=True)
    for message in report.failures.values():
        click.echo(f"normviz: {message}", err=True)
    if report.failures:
        n = len(report.failures)
        rest = "the other figures were written" if report.written else "no figure was written"
        raise _Failed(f"{n} renderer{'s' if n > 1 else ''} failed ({', '.join(report.failures)}); {rest}")
    if not report.written:
        raise NormvizError("nothing drawn: every renderer lacked the data it needs (see above)")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable keys).")
def info(run: str, as_json: bool) -> None:
    """What a run file holds: layers, norm kinds, statistics, steps, metadata."""
    from normviz.store.reader import open_run
    from normviz.store.summary import info_dict, info_lines

    with open_run(run) as r:
        if as_json:
            click.echo(json.dumps(info_dict(r), indent=2, sort_keys=True))
            return
        for line in info_lines(r):
            click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Every renderer, statistic and norm kind known, and which distribution provides it."""
    from normviz.plugins import get_plugin_host

    host = get_plugin_host()
    data = host.listing()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    kinds = host.norm_kinds()
    for item in data["norm_kinds"]:
        kind = kinds[item["name"]]
        item["description"] = f"{kind.label}: {kind.groups}" if kind.groups else kind.label
    for section in ("renderers", "statistics", "norm_kinds"):
        click.echo(f"{section.replace('_', ' ')}:")
        for item in data[section]:
            click.echo(f"  {item['name']:<22} {item['provider']:<24} {item['description']}")
    for name, message in host.failures.items():
        click.echo(f"plugin {name!r} failed to load: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: map errors to exit codes and one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="normviz", standalone_mode=False)
        sys.exit(0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("normviz: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 or isinstance(exc, click.UsageError) else exc.exit_code)
    except NormvizError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"normviz: error: {exc}", err=True)
        sys.exit(2)
    except _Failed as exc:
        click.echo(f"normviz: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("normviz: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug: one line, traceback only with --debug
        if debug:
            traceback.print_exc()
        click.echo(f"normviz: failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
