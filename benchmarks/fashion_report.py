"""Tables and the Pareto plot of the Fashion-MNIST benchmark, from its cached cells: mean ± std over
seeds, the time of every cell, each goal of the issue checked and the gap stated where it is missed.
Cells not run yet show as "–" and are counted, so a partial run is never mistaken for a full one."""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.fashion_cells import ANY_WIDTHS, SWITCHES, SWITCHES8, Cell, Setting, budgets

__all__ = ["report", "values", "mean_std", "cell_time"]

ROWS: list[tuple[str, str, str]] = [  # (row, variant, label) of the per-switch table, in print order
    ("individual", "*", "a. individual (each width trained alone)"),
    ("slimmable", "distill", "b. slimmable from scratch (in-place distillation)"),
    ("retrofit", "none-{}", "c. retrofit, no reordering, {} ep"),
    ("retrofit", "bn-{}", "c. retrofit, BN-reordered, {} ep"),
    ("retrofit", "none-0", "d. zero-shot (BN calibrated), no reordering"),
    ("retrofit", "bn-0", "d. zero-shot (BN calibrated), BN-reordered"),
    ("retrofit", "l1-0", "d. zero-shot (BN calibrated), L1-reordered"),
    ("slimmable", "labels", "d. slimmable, labels instead of distillation"),
    ("slimmable", "shared-bn", "d. slimmable, one shared BN"),
    ("incremental", "joint-epochs", "d. incremental (narrowest first, then frozen)"),
    ("slimmable", "sandwich", "e. sandwich over [0.25, 1] + BN calibration"),
]


def values(done: dict[str, dict[str, Any]], row: str, variant: str, net: str, seeds: int, key: str) -> list[float]:
    """The finished seeds' values of ``key`` in one (row, variant, net)."""
    out = []
    for seed in range(seeds):
        entry = done.get(Cell(row, variant, net, seed).key)
        if entry is not None and key in entry["result"]:
            out.append(float(entry["result"][key]))
    return out


def mean_std(xs: list[float], digits: int = 1) -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"  # one seed so far: no spread to show
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def _seconds(done: dict[str, dict[str, Any]], keys: Iterable[str]) -> str:
    times = [done[k]["seconds"] for k in keys if k in done]
    return f"{statistics.mean(times):.0f}" if times else "–"


def cell_time(finished: list[Cell], done: dict[str, dict[str, Any]]) -> str:
    """The cells' summed time, and what it is: wall time beside other work; a cell resumed from a
    checkpoint after a stop counts only the part after the stop."""
    hours = sum(done[c.key]["seconds"] for c in finished) / 3600
    resumed = sum(1 for c in finished if done[c.key].get("resumed"))
    return (f"{hours:.1f} h of cell time (the seconds per cell are wall time of processes run niced beside other "
            "work: upper bounds" + (f", except {resumed} cell(s) resumed from a checkpoint after a stop, whose "
                                    "seconds count only the part after it" if resumed else "") + ").")


def _wkey(w: float) -> str:
    return str(float(w))


def _individual(done: dict, net: str, s: Setting, w: float) -> list[float]:
    return values(done, "individual", f"{w:g}", net, s.seeds, _wkey(w))


def _switch_table(s: Setting, done: dict, net: str, budgets: list[int]) -> list[str]:
    head = "| row | epochs | " + " | ".join(f"w={w:g}" for w in SWITCHES) + " | s per cell |"
    lines = [head, "|---|---:|" + "---:|" * len(SWITCHES) + "---:|"]
    for row, variant, label in ROWS:
        for budget in (budgets if "{}" in variant else [None]):
            v = variant.format(budget) if budget is not None else variant
            epochs = budget if budget is not None else (0 if v.endswith("-0") else s.epochs)
            if row == "individual":
                cells = [mean_std(_individual(done, net, s, w)) for w in SWITCHES]
                keys = [Cell(row, f"{w:g}", net, seed).key for w in SWITCHES for seed in range(s.seeds)]
            else:
                cells = [mean_std(values(done, row, v, net, s.seeds, _wkey(w))) for w in SWITCHES]
                keys = [Cell(row, v, net, seed).key for seed in range(s.seeds)]
            stages = " ×4 stages" if row == "incremental" else ""
            lines.append(f"| {label.format(budget)} | {epochs}{stages} | " + " | ".join(cells)
                         + f" | {_seconds(done, keys)} |")
    return lines


def _gap(done: dict, net: str, s: Setting, row: str, variant: str, widths: Iterable[float]) -> float | None:
    """Worst (individual - row) over ``widths``, in points; None until both sides have a value."""
    gaps = []
    for w in widths:
        a, b = _individual(done, net, s, w), values(done, row, variant, net, s.seeds, _wkey(w))
        if not a or not b:
            return None
        gaps.append(statistics.mean(a) - statistics.mean(b))
    return max(gaps)


def _goals(s: Setting, done: dict, net: str, budgets: list[int]) -> list[str]:
    quarter = [b for b in budgets if b <= s.epochs * 0.25]
    out = []
    for reorder in ("none", "bn"):
        gaps = {b: _gap(done, net, s, "retrofit", f"{reorder}-{b}", SWITCHES) for b in quarter}
        known = {b: g for b, g in gaps.items() if g is not None}
        if known:
            best = min(known.values())
            verdict = "met" if best <= 1.0 else f"missed by {best - 1.0:.1f} points"
            out.append(f"- retrofit ({reorder}) within 1 point of individual at every width using ≤ 25 % of b's "
                       f"epochs: worst-width gap {', '.join(f'{g:.1f} at {b} ep' for b, g in known.items())} → {verdict}")
    gap = _gap(done, net, s, "slimmable", "sandwich", ANY_WIDTHS)
    if gap is not None:
        out.append(f"- any width within 1 point of individual at {', '.join(map(str, ANY_WIDTHS))}: worst gap "
                   f"{gap:.1f} → {'met' if gap <= 1.0 else f'missed by {gap - 1.0:.1f} points'}")
    for budget in ("0.3x", "0.5x"):
        searched = values(done, "search", budget, net, s.seeds, "searched")
        uniform = values(done, "search", budget, net, s.seeds, "uniform")
        diffs = [a - b for a, b in zip(searched, uniform)]
        if diffs:
            mean = statistics.mean(diffs)
            out.append(f"- search at {budget} FLOPs ≥ uniform + 0.5 point: searched − uniform {mean_std(diffs)} → "
                       + ("met" if mean >= 0.5 else f"missed by {0.5 - mean:.1f} points"))
    return out


def _any_width_table(s: Setting, done: dict, net: str) -> list[str]:
    lines = ["| any width | " + " | ".join(f"w={w:g}" for w in ANY_WIDTHS) + " |",
             "|---|" + "---:|" * len(ANY_WIDTHS)]
    lines.append("| a. individual at this width | " + " | ".join(mean_std(_individual(done, net, s, w))
                                                            for w in ANY_WIDTHS) + " |")
    lines.append("| e. sandwich + BN calibration | " + " | ".join(
        mean_std(values(done, "slimmable", "sandwich", net, s.seeds, _wkey(w))) for w in ANY_WIDTHS) + " |")
    return lines


def _eight_table(s: Setting, done: dict, net: str) -> list[str]:
    lines = ["| 8 switches | " + " | ".join(f"w={w:.3g}" for w in SWITCHES8) + " |",
             "|---|" + "---:|" * len(SWITCHES8)]
    lines.append("| d. slimmable, 8 switches | " + " | ".join(
        mean_std(values(done, "slimmable", "8-switches", net, s.seeds, _wkey(w))) for w in SWITCHES8) + " |")
    return lines


def _search_table(s: Setting, done: dict, net: str) -> list[str]:
    lines = ["| FLOPs budget | searched: top-1 (MAC share) | uniform: top-1 (width, MAC share) | searched − uniform |",
             "|---|---:|---:|---:|"]
    for budget in ("0.3x", "0.5x"):
        def get(key: str, budget: str = budget) -> list[float]:
            return values(done, "search", budget, net, s.seeds, key)

        diffs = [a - b for a, b in zip(get("searched"), get("uniform"))]
        lines.append(f"| {budget} | {mean_std(get('searched'))} ({mean_std(get('searched_macs'), 2)}) | "
                     f"{mean_std(get('uniform'))} (w {mean_std(get('uniform_width'), 2)}, "
                     f"{mean_std(get('uniform_macs'), 2)}) | {mean_std(diffs)} |")
    return lines


def _plot(s: Setting, done: dict, costs: dict[str, dict[float, float]], path: Path) -> None:
    """Accuracy vs MACs per network: individual, slimmable (4 and 8 switches), sandwich, retrofit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quarter = max([b for b in _budget_list(s) if b <= s.epochs * 0.25] or [min(_budget_list(s))])
    series = [("individual", "*", "individual", "o-"), ("slimmable", "distill", "slimmable (4)", "s-"),
              ("slimmable", "8-switches", "slimmable (8)", "^-"), ("slimmable", "sandwich", "sandwich + BN cal.", "d-"),
              ("retrofit", f"bn-{quarter}", f"retrofit, {quarter} ep", "x-")]
    fig, axes = plt.subplots(1, len(s.nets), figsize=(5.5 * len(s.nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], s.nets):
        for row, variant, label, style in series:
            widths = sorted(costs[net])
            points = []
            for w in widths:
                xs = (_individual(done, net, s, w) if row == "individual"
                      else values(done, row, variant, net, s.seeds, _wkey(w)))
                if xs:
                    points.append((costs[net][w] / 1e6, statistics.mean(xs)))
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=4)
        ax.set_title(f"{net} on Fashion-MNIST (test)")
        ax.set_xlabel("MMACs per image")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing finished yet for this network: no legend
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _budget_list(s: Setting) -> list[int]:
    return budgets(s.epochs)


def report(s: Setting, all_cells: list[Cell], done: dict[str, dict[str, Any]], costs: dict[str, dict[float, float]],
           command: str, machine: str, plot: Path) -> str:
    """The RESULTS.md section: settings, per-network tables, goals, the plot."""
    finished = [c for c in all_cells if c.key in done]
    lines = [f"Command: `{command}` (cells cached in `benchmarks/fashion-{s.name}.jsonl`; "
             f"`--write` redraws this from the cache)  ",
             f"Machine: {machine}; {len(finished)} of {len(all_cells)} cells finished, {cell_time(finished, done)}", "",
             f"Setting `{s.name}`: Fashion-MNIST (Debian's dataset-fashion-mnist), {s.train_images:,} training images "
             f"(same number per class; a fifth held out as validation for search), tested on "
             f"{s.test_images or 10000:,} test images; 28x28 px; {s.epochs} epochs from scratch (SGD Nesterov, lr 0.1, "
             f"batch 128, cosine, 1 warm-up epoch, weight decay 5e-4); retrofit: lr 0.02, in-place distillation, "
             f"{s.calibrate_batches} BN-calibration batches. Top-1 % on the test images, mean ± std over {s.seeds} "
             "seeds (a value without ± has one seed so far). " + (
                 "Sized for an estimated 3 hours on 2 idle cores (two processes): one thread trains the full-width "
                 "ResNet at ~1,260 and the MobileNet at ~520 images/s." if s.name == "full" else
                 "A small setting: it checks the plumbing and each row's direction; the table is the full setting's."),
             ""]
    for net in s.nets:
        mac = costs[net]
        lines += [f"### {net}", "", "MMACs per width: " + ", ".join(f"{w:g}: {mac[w] / 1e6:.2f}" for w in SWITCHES), ""]
        budgets = _budget_list(s)
        lines += _switch_table(s, done, net, budgets) + [""]
        lines += _any_width_table(s, done, net) + [""] + _eight_table(s, done, net) + [""]
        lines += _search_table(s, done, net) + [""]
        lines += _goals(s, done, net, budgets) + [""]
    _plot(s, done, costs, plot)
    lines += [f"![accuracy vs MACs]({plot.name})", ""]
    return "\n".join(lines)
