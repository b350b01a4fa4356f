"""``slimify demo``: the whole retrofit path on embedded data in under a minute on a laptop CPU —
train (or load) a plain CNN, convert it, fine-tune all switches, calibrate BN, print accuracy."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import slimify
from slimify.errors import SlimifyError
from slimify.store.digits_net import DigitsNet
from slimify.train.calibrate import calibrate_bn
from slimify.train.data import digits
from slimify.train.evaluate import EvalResult, evaluate
from slimify.train.resolve import convert_spec
from slimify.train.run import finetune

__all__ = ["run_demo", "DemoResult", "DEMO_SPEC"]

# how the demo model is built and converted (stored in checkpoints so `slimify eval` can rebuild it)
DEMO_SPEC: dict[str, Any] = {"name": "slimify:digitsnet", "num_classes": 10, "switches": [0.25, 0.5, 0.75, 1.0],
                             "divisor": 4, "input_size": [3, 32, 32], "reorder": "l1"}


@dataclass
class DemoResult:
    """Accuracy before and after slimmable fine-tuning, and where the outputs went."""

    plain: EvalResult  # the plain pretrained model (one row, width 1.0)
    converted: EvalResult  # after slimify.convert (channels reordered) and BN calibration, no training
    finetuned: EvalResult  # after fine-tuning all switches and calibrating BN
    out_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    def table(self) -> str:
        head = f"{'width':>6} {'converted':>10} {'fine-tuned':>11}"  # top-1 both (top-5 is ~100% on 10 classes)
        lines = [head, "-" * len(head)]
        for row in self.finetuned.rows:
            before = self.converted[row.width].top1
            lines.append(f"{row.width:>6.2f} {before:>9.2f}% {row.top1:>10.2f}%")
        lines.append(f"top-1 accuracy; plain pretrained model (width 1.00): {self.plain.rows[0].top1:.2f}%; "
                     "'converted' = reordered + BN-calibrated, before any training")
        return "\n".join(lines)


def _pretrained(cache: Path, epochs: int, seed: int, progress: bool, echo: Callable[[str], None]) -> DigitsNet:
    """The plain full-width model: loaded from ``cache`` when it was made with the same settings."""
    from safetensors.torch import load_file, safe_open, save_file

    meta = {"epochs": str(epochs), "seed": str(seed), "model": "DigitsNet"}
    model = DigitsNet(num_classes=10)
    if cache.is_file():
        with safe_open(str(cache), framework="pt") as f:
            if f.metadata() == meta:
                model.load_state_dict(load_file(str(cache)))
                echo(f"loaded the plain pretrained model from {cache}")
                return model
    echo(f"training a plain DigitsNet for {epochs} epochs (the 'pretrained checkpoint')...")
    torch.manual_seed(seed)
    model = DigitsNet(num_classes=10)
    finetune(model, digits("train"), "demo", epochs=epochs, lr=0.1, calibrate_batches=0, seed=seed,
             progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(cache), metadata=meta)
    return model


def run_demo(out_dir: str | Path = "slimify-demo", epochs: int = 6, pretrain_epochs: int = 8, seed: int = 0,
             switches: tuple[float, ...] | None = None, progress: bool | None = None,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; outputs: ``pretrained.safetensors`` (cache), ``run/`` (checkpoint + log),
    ``results.json``. ``epochs`` is the slimmable fine-tuning budget."""
    if epochs < 1 or pretrain_epochs < 1:
        raise SlimifyError("epochs and pretrain_epochs must be >= 1")
    out, times = Path(out_dir), {}
    spec = dict(DEMO_SPEC, switches=sorted(switches or DEMO_SPEC["switches"]))
    train, val = digits("train"), digits("val")
    start = time.perf_counter()
    model = _pretrained(out / "pretrained.safetensors", pretrain_epochs, seed, bool(progress), echo)
    plain = evaluate(model, val)
    times["pretrain"] = time.perf_counter() - start
    model = convert_spec(model, spec, reorder=spec["reorder"])
    calibrate_bn(model, train, batches=10)
    converted = evaluate(model, val)
    echo(f"converted to switches {spec['switches']}; fine-tuning all of them for {epochs} epochs...")
    start = time.perf_counter()
    result = finetune(model, train, "demo", val_data=val, out_dir=out / "run", epochs=epochs, seed=seed,
                      progress=progress, model_spec=spec)
    times["finetune"] = time.perf_counter() - start
    assert result.eval is not None
    demo = DemoResult(plain, converted, result.eval, out, times)
    slimify.save(model, out / "digitsnet.slim", overwrite=True, source="slimify:digitsnet")
    (out / "results.json").write_text(json.dumps({
        "plain": plain.to_dict(), "converted": converted.to_dict(), "finetuned": result.eval.to_dict(),
        "seconds": times, "spec": spec, "checkpoint": str(result.checkpoint)}, indent=2))
    return demo
