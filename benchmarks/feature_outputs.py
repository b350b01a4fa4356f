"""Backbones that return features (timm, ``num_classes=0``): does each family slim its features
and pad them back, stay exact at full width, and export the padded width faithfully?

    python -m benchmarks.feature_outputs [--write]

Per model: the features per switch of the padded output (or "fixed" and why not padded), the
full-width error relative to max |y|, the width-0.5 MAC ratio (torch.utils.flop_counter) and
the largest difference between the exported width 0.5 and the slimmable one.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import slimify
from benchmarks.results import machine, write_section
from slimify.store.sources import create

MODELS = ("resnet18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_100", "regnety_002", "densenet121",
          "swin_tiny_patch4_window7_224", "deit_tiny_distilled_patch16_224", "levit_128s", "coatnet_nano_rw_224",
          "fastvit_t8", "mixer_s16_224")
HEADING = "Feature outputs (num_classes=0)"


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def measure(name: str) -> str:
    model = create(name, num_classes=0).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        slimify.convert(model, example_input=x)
        full = float((model(x) - expected).abs().max() / expected.abs().max())
        with slimify.width(model, 0.5):
            narrow = model(x)
            ratio = _macs(model, x)
        ratio /= _macs(model, x)
        exported = float((slimify.export(model, 0.5).eval()(x) - narrow).abs().max())
    report = slimify.report(model)
    if report.padded_output is not None:
        padded = " / ".join(map(str, report.padded_output))
    else:
        padded = "fixed: " + next((g.reason for g in report.fixed if g.reason.startswith("model output")), "-")
    return (f"| {name} | {tuple(expected.shape)} | {padded} | {full:.1e} | {narrow.shape == expected.shape} "
            f"| {ratio:.3f} | {exported:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for name in MODELS:
        rows.append(measure(name))
        print(rows[-1], flush=True)
    body = "\n".join([
        "Command: `python -m benchmarks.feature_outputs --write`  ",
        f"Machine: {machine()}; {time.perf_counter() - start:.0f} s. Random init, 224 px, switches (0.25, 0.5, "
        "0.75, 1.0), divisor 8. The output's features per switch when narrow switches pad it back with zeros "
        "(`docs/design.md`, *Model outputs*), else why it keeps its size.", "",
        "| model | output | features per switch | full width rel. error | w=0.5 keeps the shape | w=0.5 MACs "
        "| export w=0.5 max abs diff |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    if args.write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
