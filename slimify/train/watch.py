"""Watching a run besides the JSONL log: one CSV row per switch for every logged step and every
evaluation (``log.csv``, opened by any spreadsheet or pandas), TensorBoard scalars when the
optional ``tensorboard`` package is installed and the recipe asks, and plain progress lines for
logs that are not a terminal (batch jobs, ``nohup``, CI), where a progress bar shows nothing."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from slimify.errors import SlimifyError

__all__ = ["MetricsLog", "progress_line", "CSV_NAME", "CSV_FIELDS", "TENSORBOARD_DIR"]

CSV_NAME = "log.csv"  # per-switch metrics in a run directory
TENSORBOARD_DIR = "tensorboard"  # event files, under the run directory
CSV_FIELDS = ("event", "epoch", "step", "width", "lr", "loss", "top1", "top5", "img_per_s")


class MetricsLog:
    """Appends per-switch rows to ``log.csv`` (and TensorBoard scalars); ``run_dir`` None: nothing."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False):
        self.path = run_dir / CSV_NAME if run_dir is not None else None
        self.writer: Any = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SlimifyError("recipe key 'tensorboard' needs the tensorboard package (pip install tensorboard), "
                                   "or set it to false; log.csv and log.jsonl are written anyway") from None
            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

    def _rows(self, rows: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                out.writeheader()
            out.writerows(rows)

    def train(self, epoch: int, step: int, lr: float, losses: dict[float, float], img_per_s: float) -> None:
        self._rows([{"event": "train", "epoch": epoch, "step": step, "width": w, "lr": lr, "loss": loss,
                     "img_per_s": round(img_per_s, 1)} for w, loss in losses.items()])
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, step)
            for w, loss in losses.items():
                self.writer.add_scalar(f"train_loss/{_label(w)}", loss, step)

    def eval(self, event: str, epoch: int, step: int, rows: list[dict[str, Any]]) -> None:
        """``rows``: ``EvalResult.to_dict()``; ``event``: eval, eval_ema, baseline …"""
        self._rows([{"event": event, "epoch": epoch, "step": step, "width": r["width"], "loss": r["loss"],
                     "top1": r["top1"], "top5": r["top5"]} for r in rows])
        if self.writer is not None:
            for r in rows:
                self.writer.add_scalar(f"{event}_top1/{_label(r['width'])}", r["top1"], step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _label(w: Any) -> str:
    """A width as logged: a number, or a configuration name / the sandwich's ``random`` key."""
    return f"{w:g}" if isinstance(w, (int, float)) else str(w)


def progress_line(epoch: int, epochs: int, batch: int, batches: int, step: int, lr: float,
                  losses: dict[float, float], img_per_s: float) -> str:
    """One line a log file can show: where the run is, the learning rate, each switch's loss."""
    loss = " ".join(f"{_label(w)}:{v:.4f}" for w, v in losses.items())
    return (f"epoch {epoch + 1}/{epochs} batch {batch}/{batches} step {step} lr {lr:.3g} loss {loss} "
            f"{img_per_s:.0f} img/s")
