"""The run report: its JSON form, its Markdown rendering and the trade-off plots.

Markdown and plots are rendered from the JSON form alone, so a report can be re-rendered from
``report.json`` without the models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimkit._io import _json_default, atomic_path


@dataclass
class Stage:
    """One point of the run: the baseline (index 0) or the model after step ``index``.

    Attributes:
        name: ``"baseline"`` or the step name.
        index: 0 for the baseline, then the step's position from 1.
        config: The step's validated config (``None`` for the baseline).
        seconds: Wall-clock time of the step (0 for the baseline).
        profile: ``ProfileReport.to_dict()`` of the model after the step.
        info: What the step reported (training history, ...).
        vs_baseline: ``Comparison.ratios()`` against the baseline model, timed interleaved with it
            in the same measurement (``None`` for the baseline itself).
        runtime: The runner that was measured (``torch-eager`` unless the step produced an
            artifact for another runtime).
        speedup_against: What ``vs_baseline`` compares with: ``baseline`` (the original model
            in PyTorch), or a description of the step's own reference on the same runtime.
    """

    name: str
    index: int
    config: dict[str, Any] | None
    seconds: float
    profile: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    vs_baseline: dict[str, Any] | None = None
    runtime: str = "torch-eager"
    speedup_against: str = "baseline"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    """``obj`` as strict JSON data: what JSON cannot hold becomes its ``repr``, NaN becomes null.

    Example:
        >>> jsonable({"path": Path("a"), "loss": float("nan"), "n": (1, 2)})
        {'path': 'a', 'loss': None, 'n': [1, 2]}
    """

    def default(value: Any) -> Any:
        try:
            return _json_default(value)
        except (TypeError, ValueError, RuntimeError):  # e.g. a tensor of many elements
            return repr(value)

    return _finite(json.loads(json.dumps(obj, default=default)))


def _finite(obj: Any) -> Any:
    # Python writes NaN and Infinity, which strict JSON readers (browsers, jq) reject.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def build_report(
    recipe: dict[str, Any],
    stages: Sequence[Stage],
    env: Mapping[str, Any],
    status: str,
    error: str | None = None,
) -> dict[str, Any]:
    """The report as JSON-ready data: the recipe, one entry per stage and the environment."""
    report: dict[str, Any] = {"recipe": recipe, "status": status}
    if error is not None:
        report["error"] = error
    report["stages"] = [stage.to_dict() for stage in stages]
    report["env"] = env_summary(env)
    return report


def env_summary(env: Mapping[str, Any]) -> dict[str, Any]:
    """The few facts of :func:`slimkit.env.collect_env` that a reader of a report needs."""
    cpu = env.get("cpu", {})
    return {
        "slimkit": env.get("slimkit"),
        "python": env.get("python"),
        "torch": env.get("torch"),
        "os": env.get("os"),
        "cpu": cpu.get("model"),
        "cpu_flags": [flag for flag, present in cpu.get("flags", {}).items() if present],
        "logical_cores": cpu.get("logical_cores"),
        "torch_threads": env.get("torch_threads"),
    }


# ---------------------------------------------------------------------------------------------
# Markdown


@dataclass(frozen=True)
class _Plot:
    """Accuracy (y) against one measure (x) of every stage."""

    measure: str
    unit: str
    x_of: Callable[[Mapping[str, Any]], float | None]


PLOTS = {
    "accuracy_vs_latency.png": _Plot("p50 latency", "ms", lambda p: lookup(p, "latency", "p50_ms")),
    "accuracy_vs_size.png": _Plot("size", "MB", lambda p: _scaled(lookup(p, "size_bytes"), 1e-6)),
}
"""Plot file name -> what its x axis shows."""


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: title, status, recipe, stage table, step details, plots, env."""
    recipe = report["recipe"]
    parts = [f"# slimkit report: {recipe.get('name') or 'recipe'}", _status_line(report)]
    parts += ["## Recipe", "```yaml\n" + yaml.safe_dump(recipe, sort_keys=False).rstrip() + "\n```"]
    parts += ["## Results", _measured_how(report["stages"]), _stage_table(report["stages"])]
    parts += _step_details(report["stages"])
    parts += [
        "## Trade-offs",
        *(f"![accuracy vs {p.measure}]({name})" for name, p in PLOTS.items()),
    ]
    parts += ["## Environment", _env_list(report["env"])]
    return "\n\n".join(p for p in parts if p) + "\n"


def _status_line(report: Mapping[str, Any]) -> str:
    status, done = report["status"], len(report["stages"]) - 1
    total = len(report["recipe"].get("steps", []))
    line = f"Status: **{status}**, {max(done, 0)} of {total} step(s) done."
    if report.get("error"):
        line += f"\n\nError: `{report['error']}`"
    return line


def _measured_how(stages: Sequence[Mapping[str, Any]]) -> str:
    if not stages:
        return ""
    p = stages[0]["profile"]
    return (
        f"Measured with the {p.get('runner')} runner on {p.get('threads')} thread(s): latency at "
        f"batch {p.get('latency_batch')}, throughput at batch {p.get('throughput_batch')}. "
        "Ratios are against the baseline; the speed-up (above 1 is faster) comes from timing each "
        "stage interleaved with the baseline in one measurement."
    ) + "".join(
        f" Step {s['index']} ({s['name']}) was measured on {s.get('runtime')}, its speed-up "
        f"against {s.get('speedup_against')} in the same run."
        for s in stages[1:]
        if s.get("runtime", "torch-eager") != "torch-eager"
    )


_COLUMNS = (
    "#", "stage", "time", "params", "MACs", "size", "p50 latency", "throughput", "accuracy",
    "params ×", "MACs ×", "size ×", "speed-up", "Δ accuracy",
)  # fmt: skip


def _stage_table(stages: Sequence[Mapping[str, Any]]) -> str:
    if not stages:
        return "No stage was measured."
    base = stages[0]["profile"]
    rows = [_COLUMNS, ("---",) * len(_COLUMNS)]
    rows += [_stage_row(stage, base) for stage in stages]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _stage_row(stage: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[str, ...]:
    p = stage["profile"]
    p50, base_p50 = lookup(p, "latency", "p50_ms"), lookup(base, "latency", "p50_ms")
    acc, base_acc = lookup(p, "accuracy"), lookup(base, "accuracy")
    return (
        str(stage["index"]),
        stage["name"],
        f"{stage['seconds']:.1f} s",
        _si(lookup(p, "params")),
        _si(lookup(p, "macs")),
        _megabytes(lookup(p, "size_bytes")),
        "—" if p50 is None else f"{p50:.3g} ms",
        "—" if lookup(p, "throughput") is None else f"{lookup(p, 'throughput'):,.0f}/s",
        "—" if acc is None else f"{acc * 100:.2f} %",
        _ratio(lookup(p, "params"), lookup(base, "params")),
        _ratio(lookup(p, "macs"), lookup(base, "macs")),
        _ratio(lookup(p, "size_bytes"), lookup(base, "size_bytes")),
        _speedup(stage, base_p50, p50),
        "—" if acc is None or base_acc is None else f"{(acc - base_acc) * 100:+.2f} pp",
    )


def _step_details(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    parts: list[str] = []
    for stage in stages[1:]:
        parts.append(f"### Step {stage['index']}: {stage['name']}")
        config = stage["config"] or {}
        parts.append("Config: " + ", ".join(f"`{k}={_cell(v)}`" for k, v in config.items()))
        if stage.get("runtime", "torch-eager") != "torch-eager":
            parts.append(
                f"Measured on **{stage['runtime']}**; speed-up against "
                f"{stage.get('speedup_against')}."
            )
        info = stage["info"]
        # Numbers and text first, as one list; then tables and structures, each under its name.
        simple = {k: v for k, v in info.items() if not isinstance(v, dict | list)}
        if simple:
            parts.append("\n".join(f"- {key}: {_cell(value)}" for key, value in simple.items()))
        parts += [_info_block(k, v) for k, v in info.items() if isinstance(v, dict | list)]
    return parts


def _info_block(key: str, value: dict[str, Any] | list[Any]) -> str:
    """A structured entry of a step's info: a table for a list of records, else JSON."""
    if _is_records(value):
        columns = list(value[0])
        rows = [columns, ["---"] * len(columns)]
        rows += [[_cell(record.get(c)) for c in columns] for record in value]
        return f"**{key}**\n\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    return f"**{key}**\n\n```json\n{json.dumps(value, indent=2)}\n```"


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _env_list(env: Mapping[str, Any]) -> str:
    return "\n".join(f"- {key}: {_cell(value)}" for key, value in env.items())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "—" if value is None else str(value)


def lookup(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    """A nested value, or ``None`` where any level is missing (a profile may omit a measure)."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _si(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _megabytes(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.3g} MB"


def _speedup(stage: Mapping[str, Any], base_p50: float | None, p50: float | None) -> str:
    # Prefer the interleaved comparison: separately timed p50s on a shared machine can differ
    # by 2x for identical models.
    interleaved = (stage.get("vs_baseline") or {}).get("latency_speedup")
    if interleaved is not None:
        return f"{interleaved:.2f}×"
    return _ratio(base_p50, p50)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}×"


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """Write one accuracy trade-off plot per entry of :data:`PLOTS`, atomically."""
    return [_plot(report["stages"], plot, folder / name) for name, plot in PLOTS.items()]


def _plot(stages: Sequence[Mapping[str, Any]], plot: _Plot, path: Path) -> Path:
    # The object API on an Agg canvas, not pyplot: the caller's backend and figures stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [
        (plot.x_of(s["profile"]), s["profile"]["accuracy"] * 100, f"{s['index']}: {s['name']}")
        for s in stages
        if plot.x_of(s["profile"]) is not None and lookup(s["profile"], "accuracy") is not None
    ]
    if points:
        xs, ys, _ = zip(*points, strict=True)
        ax.plot(xs, ys, color="0.75", linewidth=1, zorder=1)  # the path through the steps, in order
        ax.scatter(xs, ys, c=range(len(xs)), cmap="viridis", zorder=2)
        for i, (x, y, label) in enumerate(points):
            # Alternate label heights: stages of equal size or speed would print on each other.
            offset = (5, 5 if i % 2 == 0 else -12)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        ax.margins(x=0.2, y=0.15)
    else:
        ax.text(0.5, 0.5, "nothing measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{plot.measure} ({plot.unit})")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs {plot.measure}")
    ax.grid(True, alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
