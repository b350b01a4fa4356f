"""Per-switch losses and the switches each step runs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimify.train.losses import distill_loss, step_widths, switch_loss


def test_distill_loss_is_soft_cross_entropy_and_detaches_teacher() -> None:
    torch.manual_seed(0)
    student = torch.randn(8, 10, requires_grad=True)
    teacher = torch.randn(8, 10, requires_grad=True)
    loss = distill_loss(student, teacher)
    expected = -(F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(-1).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    # soft CE is smallest when the student matches the teacher (KL >= 0)
    assert distill_loss(teacher.detach(), teacher) < distill_loss(student.detach(), teacher)


def test_switch_loss_widest_uses_labels_narrow_per_recipe() -> None:
    logits, labels, teacher = torch.randn(4, 10), torch.tensor([1, 2, 3, 4]), torch.randn(4, 10)
    ce = F.cross_entropy(logits, labels)
    assert torch.allclose(switch_loss(logits, labels, None, "distill"), ce)  # widest: labels
    assert torch.allclose(switch_loss(logits, labels, teacher, "labels"), ce)
    assert torch.allclose(switch_loss(logits, labels, teacher, "distill"), distill_loss(logits, teacher))
    smoothed = switch_loss(logits, labels, None, label_smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_step_widths_all_switches_widest_first() -> None:
    assert step_widths((0.25, 0.5, 0.75, 1.0), None, seed=0, step=3) == [1.0, 0.75, 0.5, 0.25]


def test_sandwich_rule() -> None:
    switches = (0.25, 0.35, 0.5, 0.65, 0.75, 0.9, 1.0)
    seen = set()
    for step in range(50):
        widths = step_widths(switches, 2, seed=0, step=step)
        assert widths[0] == 1.0 and widths[-1] == 0.25 and len(widths) == 4
        assert len(set(widths)) == 4 and widths == sorted(widths, reverse=True)
        assert widths == step_widths(switches, 2, seed=0, step=step)  # same on every process / resume
        seen.update(widths[1:-1])
    assert seen == set(switches[1:-1])  # the random middle widths cover the range
    assert step_widths(switches, 0, seed=0, step=0) == [1.0, 0.25]
