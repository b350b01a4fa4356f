"""Where the batch-1 gap of a slimmable forward goes (issue 25, item 2): the same converted model
timed as served, *frozen* (the served tensors written into plain ``_parameters``, the original
classes back) and *prop-sub* (the generated subclass kept, each property returning a tensor
resolved once), each against the exported model, in one process, random order per round.

    OMP_NUM_THREADS=1 taskset -c 1 python -m benchmarks.serve_ablation convnext_tiny --width 0.25 --size 224 --rounds 80

If *frozen* matches the exported model and *slim* does not, the gap is serving's Python work; if
*prop-sub* matches too, it is the getters' work per read, not the class swap.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import slimify
from slimify.deploy.extract import export
from slimify.rewrite.serve import slim_data
from slimify.store.sources import create


def _served_values(module: nn.Module) -> tuple[type, dict[str, Any]]:
    cls = type(module)
    return cls.__dict__["__slimify_base__"], {k: getattr(module, k) for k, v in cls.__dict__.items()
                                              if isinstance(v, property)}


def frozen(model: nn.Module, w: float, keep_class: bool) -> nn.Module:
    """A copy of ``model`` fixed at ``w``: served values resolved once; plain classes, or
    (``keep_class``) subclasses whose properties return them from the instance dict."""
    net = copy.deepcopy(model)
    slimify.set_width(net, w)
    made: dict[Any, type] = {}
    with torch.inference_mode():
        for m in net.modules():
            if slim_data(m) is None:
                continue
            base, values = _served_values(m)
            m.__class__ = base
            if keep_class:
                m.__dict__["_served"] = values
                key = (base, frozenset(values))
                if key not in made:
                    made[key] = type(base.__name__, (base,), {
                        k: property(lambda self, n=k: self.__dict__["_served"][n]) for k in values})
                m.__class__ = made[key]
                continue
            for k, v in values.items():
                if k in m._parameters:
                    m._parameters[k] = v
                elif k in m._buffers:
                    m._buffers[k] = v
                else:
                    m.__dict__[k] = v
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create(args.model).eval()
    slimify.convert(model, example_input=torch.randn(1, 3, 224, 224))
    w = args.width
    x = torch.randn(1, 3, args.size, args.size)
    nets = {"export": export(model, w).eval(), "frozen": frozen(model, w, False), "prop-sub": frozen(model, w, True)}

    def call(net: nn.Module | None) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                if net is None:
                    with slimify.width(model, w):
                        return model(x)
                return net(x)
        return run

    calls = {"slim": call(None), **{k: call(n) for k, n in nets.items()}}
    want = calls["export"]()
    for key, run in calls.items():
        torch.testing.assert_close(run(), want, rtol=1e-4, atol=1e-4, msg=key)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.rounds):
        for key, run in random.sample(list(calls.items()), len(calls)):
            start = time.process_time()
            run()
            times[key].append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} w={w:g} {args.size}px batch 1, medians of {args.rounds}: " +
          ", ".join(f"{k} {v * 1e3:.2f} ms ({v / med['export']:.3f})" for k, v in med.items()))


if __name__ == "__main__":
    main()
