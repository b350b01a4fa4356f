"""The profile plot, named for what it shows: with accuracy (for the widths that have one, as in
the table) it is accuracy against cost (measured latency, else FLOPs), one point per switch labelled by its width and the
Pareto-optimal ones joined — the trade-off a user picks from; without accuracy it is cost against
cost (GFLOPs vs latency) and says so, since a "Pareto front" of two costs means nothing."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from slimify.store.atomic import atomic_path

__all__ = ["plot_profile", "profile_figure", "pareto_front"]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats (lower cost ``x`` and higher value ``y``), by cost."""
    return sorted(p for p in points
                  if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points))


def plot_profile(result: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Write the PNG (matplotlib's Agg backend); see the module docstring."""
    import matplotlib.pyplot as plt

    fig = profile_figure(result)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def profile_figure(result: Any) -> Any:
    """The plot as a matplotlib Figure, laid out: the title wrapped to the figure's width, each
    point's label inside the axes, on the side of its point away from the nearer edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = all(r.latency_ms is not None for r in result.rows)
    use_acc = any(r.accuracy is not None for r in result.rows)  # the rows the table shows an accuracy for
    rows = [r for r in result.rows if r.accuracy is not None] if use_acc else result.rows
    if timed:
        xs = [r.latency_ms for r in rows]
        xlabel = f"latency, ms (median; {result.device}, {result.threads} thread(s))"
    else:
        xs = [r.flops / 1e9 for r in rows]
        xlabel = "GFLOPs per batch"
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    if use_acc:
        ys = [float(r.accuracy) for r in rows]
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:blue", alpha=0.6, label="Pareto front")
        ax.set_ylabel("accuracy, %")
        title = f"accuracy vs {'latency' if timed else 'FLOPs'}"
    else:
        ys = [r.flops / 1e9 if timed else r.params / 1e6 for r in rows]
        ax.plot(xs, ys, color="tab:gray", alpha=0.6, label="switches by width")
        ax.set_ylabel("GFLOPs per batch" if timed else "parameters, M")
        title = f"{'GFLOPs vs latency' if timed else 'parameters vs GFLOPs'} (cost only: no accuracy given)"
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    ax.margins(x=0.25, y=0.2)  # room for the labels inside the axes
    mid_x, mid_y = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    for r, x, y in zip(rows, xs, ys):
        right, up = x <= mid_x, y <= mid_y  # away from the nearer edges
        ax.annotate(getattr(r, "config", "") or f"w={r.width:g}", (x, y), textcoords="offset points",
                    xytext=(5 if right else -5, 5 if up else -5), ha="left" if right else "right",
                    va="bottom" if up else "top", fontsize=8)
    ax.set_xlabel(xlabel)
    head = f"{result.model}, input {'x'.join(map(str, result.input_size))}: {title}"
    ax.set_title("\n".join(textwrap.wrap(head, 64)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
