"""What a run file holds, as ``normviz info`` shows it: a stable JSON document and its lines of text."""

from __future__ import annotations

from typing import Any

from normviz.errors import NormvizError


def info_dict(run: Any) -> dict[str, Any]:
    """The stable ``normviz info --json`` document of a run."""
    status = run.status
    steps = run.steps
    return {
        "path": str(run.path),
        "schema": "normviz.run",
        "schema_version": run.schema_version,
        "label": run.label,
        "experiment": run.experiment,
        "norm_kind": run.norm_kind,
        "steps": int(len(steps)),
        "first_step": int(steps[0]) if len(steps) else None,
        "last_step": int(steps[-1]) if len(steps) else None,
        "steps_seen": status["steps_seen"],
        "clean": bool(status["clean"]),
        "rank": run.rank,
        "world_size": run.world_size,
        "scalars": run.scalar_names,
        "statistics": run.statistics,
        "layers": [
            {"name": layer.name, "kind": layer.kind, "module_type": layer.module_type, "channels": layer.channels,
             "calls": layer.calls}
            for layer in run.layers
        ],
        "meta": {k: v for k, v in run.meta.items() if k != "model"},
        "eval_series": run.eval_series() if hasattr(run, "eval_series") else [],
    }


def info_lines(run: Any) -> list[str]:
    """``normviz info``'s text: the document above for people, and BatchNorm's running statistics."""
    data = info_dict(run)
    span = f" (training steps {data['first_step']}..{data['last_step']})" if data["steps"] else ""
    lines = [
        f"{run.path}: normviz run, schema {run.schema_version}",
        f"  label {data['label']!r}, experiment {data['experiment']}, norm kind {data['norm_kind']}",
        f"  rank {data['rank']} of {data['world_size']}; {data['steps']} recorded steps{span}, "
        f"{data['steps_seen']} steps seen, "
        f"{'closed cleanly' if data['clean'] else 'not closed (still being written, or killed)'}",
        f"  scalars: {', '.join(data['scalars']) or '-'}",
    ]
    if data["eval_series"]:
        lines.append(f"  eval series: {', '.join(data['eval_series'])} (Run.eval(name); files beside this one)")
    lines.append("  layers:")
    for layer in data["layers"]:
        kind = layer["kind"] or "-"
        lines.append(f"    {layer['name'] or '<root>':<28} {kind:<9} {layer['module_type']:<20} "
                     f"channels {layer['channels']}  calls {layer['calls']}")
    for group, names in run.statistics.items():
        lines.append(f"  {group} statistics: {', '.join(names) or '-'}")
    for layer in run.layers:
        if layer.kind == "batch" and len(run.steps):
            try:
                rm = run.module_stat("running_mean", layer.name)[-1]
                rv = run.module_stat("running_var", layer.name)[-1]
            except NormvizError:
                continue
            lines.append(f"  BatchNorm {layer.name!r} at the last recorded step:")
            lines.append(f"    running_mean {_fmt(rm, layer.channels)}")
            lines.append(f"    running_var  {_fmt(rv, layer.channels)}")
    return lines


def _fmt(values: Any, channels: int | None, n: int = 6) -> str:
    """The first values of a stored per-channel series, and how many of the layer's channels it keeps."""
    shown = ", ".join(f"{v:.4f}" for v in values[:n])
    kept = len(values)
    of = f"{kept} of {channels} channels kept" if channels and channels > kept else f"{kept} channels"
    return f"[{shown}{', ...' if kept > n else ''}] ({of})"
