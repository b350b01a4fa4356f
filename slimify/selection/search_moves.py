"""How the greedy search steps: which counts a move may take off each group, and which of the
scored candidates it keeps.

Two kinds of move keep a search short and still land close to its budget (AutoSlim, Yu & Huang
2019, takes 10 % of a layer per move): far from the budget a *coarse* move takes at least
``fraction`` of a group's current channels, and more when that saves less than ``fraction`` of
the remaining distance to the budget (:func:`widened`: without it a cheap group, e.g. a
classifier's input at 224² MACs, is slimmed in dozens of nearly free moves); once a coarse move
would cross the budget the search turns *fine* (``steps`` grid steps a move) for the rest of the walk.
"""
from __future__ import annotations

from typing import Any

from slimify.rewrite.config_slots import group_grid

__all__ = ["candidate_counts", "widened", "ranking"]


def candidate_counts(groups: list, divisors: int | dict[int, int], channels: dict[int, int], steps: int,
                     fraction: float = 0.0) -> dict[int, int]:
    """group → channels after taking ``steps`` grid steps off it, or more when that removes less
    than ``fraction`` of its channels (AutoSlim's per-move ratio); groups at their minimum are left out."""
    out = {}
    for g in groups:
        grid = group_grid(g, divisors if isinstance(divisors, int) else divisors[g.index])
        at = grid.index(channels[g.index])
        if at > 0:
            below = [i for i in range(at) if grid[i] <= channels[g.index] * (1 - fraction)]
            out[g.index] = grid[max(0, min(at - steps, below[-1] if below else 0))]
    return out


def widened(grid: list[int], count: int, candidate: int, saved: float, min_saving: float) -> int:
    """The count a coarse move of one group takes to save at least ``min_saving``, given that going
    from ``count`` to ``candidate`` channels saves ``saved``: FLOPs and parameters are linear in
    one group's count while the others stay (a layer's MACs are the product of its input and
    output counts), so the channels to remove scale with the saving asked; the largest count on the
    group's ``grid`` at or below that, its smallest at least."""
    if saved <= 0 or saved >= min_saving:
        return candidate
    target = count - (count - candidate) * min_saving / saved
    return max([c for c in grid if c <= target] or [grid[0]])


def ranking(current: Any, candidate: Any, by_flops: bool = False) -> tuple[float, float, float]:
    """Sort key of a candidate move (smaller is better): held-out top-1 lost per unit of cost saved,
    then cross-entropy gained per unit, then the larger saving. A move that loses nothing counts
    as free (a gain on a few held-out batches is noise): among free moves the largest saving wins.
    Dividing a gain by the saving would instead prefer the *smallest* saving (the most negative
    ratio) and walk to the budget in tiny steps on a model whose held-out accuracy is flat.
    ``by_flops``: rank by FLOPs saved (latency is not monotone in channel counts)."""
    saved = (current.flops - candidate.flops) if by_flops else (current.cost - candidate.cost)
    saved = max(saved, 1e-12)
    drop = max(current.top1 - candidate.top1, 0.0)
    rise = max(candidate.loss - current.loss, 0.0)
    return drop / saved, rise / saved, -saved
