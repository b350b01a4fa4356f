"""Pick the widest width of a slimmable model that meets a latency budget on this machine, export
it to ONNX and run the file with onnxruntime.

    python examples/pick_and_export_onnx.py rn50.slim --latency-ms 20 --out rn50_fit.onnx
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch

import slimify
from slimify.deploy.extract import to_onnx
from slimify.store.slimfile import example_shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a .slim file (slimify convert MODEL -o FILE)")
    parser.add_argument("--latency-ms", type=float, required=True, help="median latency budget per batch")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads while measuring")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="picked.onnx")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    # 1. measure every switch as the plain model it exports to
    model = slimify.load(args.file)
    shape = (args.batch_size, *example_shape(model)[1:])
    result = slimify.profile(model, input_size=shape, runs=args.runs, threads=args.threads)
    print(result.table())

    # 2. the widest switch within the budget (a SlimifyError says so if none fits)
    best = slimify.pick(result, latency_ms=args.latency_ms)
    print(f"\npicked width {best.width:g} ({best.latency_ms:.2f} ms median in PyTorch)")

    # 3. ONNX export (checked against PyTorch inside to_onnx) and a run with onnxruntime
    x = torch.randn(shape)
    to_onnx(model, best.width, args.out, example=x, overwrite=args.force)
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    (logits,) = session.run(None, {"input": x.numpy()})
    ms = (time.perf_counter() - start) * 1e3
    with torch.no_grad(), slimify.width(model, best.width):
        want = model(x).numpy()
    print(f"onnxruntime: output {logits.shape}, {ms:.2f} ms, max |onnx - torch| = {np.abs(logits - want).max():.2e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
