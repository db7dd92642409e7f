"""The Pareto plot of a search: every trial, the front, the constraint and a baseline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit._io import atomic_path
from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from slimkit.search._search import SearchResult

_LABELS = {
    "accuracy": "accuracy (validation)",
    "reward": "MnasNet reward",
    "latency_ms": "latency at batch 1 (ms)",
    "params": "parameters",
    "macs": "MACs",
}


def plot_front(result: SearchResult, path: Path, baseline: Mapping[str, Any] | None = None) -> Path:
    """Scatter the trials on the first two front metrics, the front as a step line."""
    # The object API on an Agg canvas, not pyplot: the caller's backend and figures stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = result.front_metrics()
    y_key, x_key = metrics[0], metrics[1] if len(metrics) > 1 else metrics[0]
    if y_key in ("latency_ms", "params", "macs") and x_key in ("accuracy", "reward"):
        x_key, y_key = y_key, x_key  # the trade-off reads better with accuracy upwards
    fig = Figure(figsize=(6.4, 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = [t for t in result.trials if t.state == "COMPLETE"]
    for feasible, style in ((True, {"c": "0.55", "s": 14}), (False, {"c": "tab:red", "s": 14,
                            "marker": "x"})):  # fmt: skip
        pts = [(t.metrics[x_key], t.metrics[y_key]) for t in done if t.feasible == feasible]
        if pts:
            xs, ys = zip(*pts, strict=True)
            label = "candidates" if feasible else "infeasible"
            ax.scatter(xs, ys, alpha=0.6, label=label, zorder=2, **style)
    front = sorted(result.pareto_front(), key=lambda t: t.metrics[x_key])
    if front:
        xs = [t.metrics[x_key] for t in front]
        ys = [t.metrics[y_key] for t in front]
        ax.step(xs, ys, where="post", color="tab:blue", linewidth=1.2, zorder=3)
        ax.scatter(xs, ys, c="tab:blue", s=26, label=f"Pareto front ({len(front)})", zorder=4)
    try:
        best = result.best
        ax.scatter([best.metrics[x_key]], [best.metrics[y_key]], marker="*", s=160,
                   c="tab:orange", label="best", zorder=5)  # fmt: skip
    except ConfigError:  # no feasible trial: nothing to mark
        pass
    if baseline and baseline.get(x_key) is not None:
        name = str(baseline.get("name", "baseline"))
        if baseline.get(y_key) is not None:
            ax.scatter([baseline[x_key]], [baseline[y_key]], marker="D", s=50, c="tab:green",
                       label=name, zorder=5)  # fmt: skip
        else:  # a reference on one axis only (a latency to beat)
            ax.axvline(baseline[x_key], color="tab:green", linestyle=":", label=name)
    limit = {"latency_ms": result.config.max_latency_ms, "params": result.config.max_params,
             "macs": result.config.max_macs}.get(x_key)  # fmt: skip
    if limit is not None:
        ax.axvline(limit, color="tab:red", linestyle="--", linewidth=1, label="constraint")
    ax.set_xlabel(_LABELS.get(x_key, x_key))
    ax.set_ylabel(_LABELS.get(y_key, y_key))
    ax.set_title(f"{result.config.strategy}: {len(done)} candidates")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
