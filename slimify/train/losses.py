"""Per-switch losses and the choice of switches per step, kept apart from the loop so each is testable.

The widest switch always learns from labels. Narrower switches learn from labels (the original
slimmable networks) or from the widest switch's detached soft targets ("in-place distillation",
US-Nets, Yu & Huang 2019).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

__all__ = ["label_loss", "distill_loss", "switch_loss", "step_widths"]


def label_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with the labels (optionally smoothed), or with soft targets (a float
    (batch, classes) tensor from Mixup/CutMix, smoothing already folded in)."""
    if target.is_floating_point():
        return torch.sum(-target.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft-target cross-entropy ``-sum p_teacher log p_student``, scaled by T^2 (Hinton et al.).

    The teacher is detached here as well, so no gradient ever flows into the widest switch from
    a narrower one's loss.
    """
    t = float(temperature)
    teacher = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    log_student = F.log_softmax(logits.float() / t, dim=-1)
    return -(teacher * log_student).sum(dim=-1).mean() * (t * t)


def switch_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    narrow_loss: str = "labels",
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Loss of one switch: labels for the widest (``teacher_logits is None``), else per recipe."""
    if teacher_logits is None or narrow_loss == "labels":
        return label_loss(logits, target, label_smoothing)
    return distill_loss(logits, teacher_logits, temperature)


def step_widths(switches: tuple[float, ...], sandwich: int | None, seed: int, step: int) -> list[float]:
    """Widths to run on one step, widest first.

    ``sandwich=None`` runs every switch. ``sandwich=n`` is the US-Nets sandwich rule: the widest,
    the narrowest and ``n`` distinct random other switches, drawn from ``(seed, step)`` so that
    every process picks the same ones and a resumed run picks what the uninterrupted run picked.
    """
    ordered = sorted(switches, reverse=True)
    if sandwich is None or len(ordered) <= 2:
        return ordered
    middle = ordered[1:-1]
    rng = random.Random(seed * 1_000_003 + step)
    picked = rng.sample(middle, min(sandwich, len(middle)))
    return [ordered[0], *sorted(picked, reverse=True), ordered[-1]]
