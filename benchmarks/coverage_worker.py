"""One model of the coverage sweep: build it with random init, convert it with ``convert``'s
default arguments, check the invariants. ``coverage.py`` runs :func:`measure` in a forked process
per model (a crash or a hang costs one model); run alone it prints one JSON line:

    python -m benchmarks.coverage_worker timm vit_tiny_patch16_224 [--skip-export] [--ladder]

``--ladder``: the protocol before the automatic divisor (divisor 8, then 4, 2, 1 for a model that
misses the MAC bound with no group fixed), kept to compare the two.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

__all__ = ["SWITCHES", "FULL_TOL", "EXPORT_TOL", "MAC_LIMIT", "DIVISORS", "build", "wake_silent_weights", "input_size", "measure",
           "measure_ladder", "main"]

SWITCHES = (0.25, 0.5, 0.75, 1.0)
FULL_TOL = 1e-5  # full width: max |Δ| ≤ FULL_TOL · max |y|
EXPORT_TOL = 1e-4  # exported width 0.5 vs slimmable width 0.5
MAC_LIMIT = 0.35  # width 0.5 must keep at most this fraction of the MACs to count as slimmed
DIVISORS = (8, 4, 2, 1)  # ``--ladder`` only: 8, smaller only for models too narrow to halve in steps of 8
SIZE_CAP = 224  # inputs are the model's own size, capped here unless the size is fixed


def build(lib: str, name: str) -> nn.Module:
    """The model with random init (no download), in eval mode."""
    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision
        kwargs: dict[str, Any] = {}
        if name in ("googlenet", "inception_v3"):  # skip scipy's slow truncated-normal init
            kwargs = {"aux_logits": False, "init_weights": False}
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()
    import timm
    return timm.create_model(name, pretrained=False).eval()


def wake_silent_weights(model: nn.Module) -> None:
    """Zero-initialised weights (ViT heads, last BN of a residual branch, skip-init gains)
    make whole branches output zeros, so "width 1.0 equals the original" would hold whatever
    the branch computed: give them small random values (biases stay as they are)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.numel() and not p.any():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif not name.endswith("bias"):
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """The pretrained-cfg input size capped at 224, or the model's own when it is fixed."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    if cfg.get("fixed_input_size", False):
        return c, h, w
    return c, min(h, SIZE_CAP), min(w, SIZE_CAP)


def _original_output(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of the unconverted model. Some models (HaloNet, BAT) only run at their
    own size, which their config does not mark fixed: they fall back to it."""
    torch.manual_seed(0)
    size = input_size(model)
    x = torch.randn(1, *size)
    try:
        with torch.no_grad():
            return x, model(x)
    except Exception:  # noqa: BLE001 - retried at the model's own size; a second failure propagates
        own = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", size))
        if own == size:
            raise
    x = torch.randn(1, *own)
    with torch.no_grad():
        return x, model(x)


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's count plus recurrent layers, whose fused CPU kernel (``mkldnn_rnn``) it
    does not see: counted from the sizes each layer runs at."""
    from torch.utils.flop_counter import FlopCounterMode
    rnn = [0]
    handles = [m.register_forward_hook(lambda m, args, out: rnn.__setitem__(0, rnn[0] + _rnn_macs(m, args[0])))
               for m in model.modules() if isinstance(m, nn.RNNBase)]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2 + rnn[0]


def _rnn_macs(m: nn.RNNBase, x: torch.Tensor) -> int:
    """Matrix products of an LSTM/GRU/RNN: per step and direction, gates × hidden × (input + hidden)."""
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    steps, directions, hidden = x.numel() // x.shape[-1], 2 if m.bidirectional else 1, m.hidden_size
    inputs = [m.input_size] + [directions * hidden] * (m.num_layers - 1)
    return sum(steps * directions * gates * hidden * (i + hidden) for i in inputs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _export_check(model: nn.Module, x: torch.Tensor, result: dict[str, Any]) -> None:
    """Exported width 0.5 == slimmable width 0.5 (``slimify.export`` is a lazy name of the package,
    no module: a module lookup would skip this check)."""
    import slimify
    if not hasattr(slimify, "export"):
        result["export_ok"] = None
        return
    try:
        with slimify.width(model, 0.5), torch.no_grad():
            expected = model(x)
        exported = slimify.export(model, 0.5)
        plain = exported if isinstance(exported, nn.Module) else exported.module()
        with torch.no_grad():
            got = plain(x)
    except Exception as e:  # noqa: BLE001 - recorded, the model counts as not covered
        result["export_ok"], result["export_error"] = False, _first_line(e)
        return
    err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    result["export_rel_err"] = err
    result["export_ok"] = got.shape == expected.shape and err <= EXPORT_TOL


def _group_stats(model: nn.Module, result: dict[str, Any]) -> None:
    import slimify
    rep = slimify.report(model)
    result["groups"] = len(rep.groups)
    fixed = [g for g in rep.fixed if g.reason != "model input channels" and not g.reason.startswith("model output")]
    result["fixed_groups"] = len(fixed)  # beyond the model's inputs and outputs, fixed by definition
    result["fixed_channels"] = sum(g.size for g in fixed)
    result["channels"] = sum(g.size for g in rep.groups if g.reason != "model input channels")
    reasons = Counter(g.reason for g in fixed)
    result["fixed_reasons"] = [[r, n] for r, n in reasons.most_common(8)]
    result["output_group"] = max((g.size for g in rep.fixed if g.reason.startswith("model output")), default=0)
    result["num_classes"] = getattr(model, "num_classes", None)  # 0: timm returns features, no classifier
    result["padded_output"] = rep.padded_output is not None  # features slim, zero-padded back to full size
    result["analysis_s"] = rep.seconds
    result["group_divisors"] = dict(sorted(Counter(g.divisor for g in rep.slimmable).items()))  # divisor → groups


def measure(lib: str, name: str, export: bool = True) -> dict[str, Any]:
    """Every invariant of one model converted with ``convert``'s defaults (``divisor=None``: 8, or
    a smaller power of two per narrow group); ``stage`` names where it stopped when it failed."""
    torch.set_num_threads(1)
    return _measure_at(lib, name, None, export)


def measure_ladder(lib: str, name: str, export: bool = True) -> dict[str, Any]:
    """The protocol before the automatic divisor: divisor 8 first; a model whose layers are too
    narrow to halve in steps of 8 (width 0.5 misses the MAC bound although no group is fixed) is
    measured again at divisors 4, 2, 1; the divisor that counted is recorded."""
    torch.set_num_threads(1)
    result = _measure_at(lib, name, DIVISORS[0], export)
    for divisor in DIVISORS[1:]:
        if not _only_rounding(result):
            break
        result = {**_measure_at(lib, name, divisor, export), "mac_ratio_at_8": result.get("mac_ratio_at_8",
                                                                                        result["mac_ratio"])}
    return result


def _only_rounding(r: dict[str, Any]) -> bool:
    return (r["stage"] == "done" and bool(r.get("full_ok")) and bool(r.get("switches_ok"))
            and r.get("mac_ratio", 0.0) > MAC_LIMIT and r.get("fixed_groups", 1) == 0 and not _feature_output(r))


def _feature_output(r: dict[str, Any]) -> bool:
    """No classifier: the model returns its features, and they could not slim (not padded)."""
    return r.get("num_classes") == 0 and not r.get("padded_output")


def _measure_at(lib: str, name: str, divisor: int | None, export: bool) -> dict[str, Any]:
    import slimify
    result: dict[str, Any] = {"lib": lib, "name": name, "stage": "build", "covered": False, "divisor": divisor,
                              "load": os.getloadavg()[0]}  # the machine is shared: timings need their context
    try:
        model = build(lib, name).requires_grad_(False)  # FlopCounterMode trips over parameters passed to modules
        wake_silent_weights(model)
        x, expected = _original_output(model)
        result["input"] = list(x.shape[1:])
        result["stage"] = "convert"
        start = time.perf_counter()
        slimify.convert(model, SWITCHES, divisor=divisor, example_input=x)
        result["convert_s"] = time.perf_counter() - start
        _group_stats(model, result)
        result["stage"] = "full width"
        with torch.no_grad():
            got = model(x)
        err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
        result["full_rel_err"] = err
        result["full_ok"] = got.shape == expected.shape and err <= FULL_TOL
        result["stage"] = "switches"
        result["switches_ok"] = _switches_run(model, x, expected)
        result["stage"] = "macs"
        full = _macs(model, x)
        with slimify.width(model, 0.5):
            half = _macs(model, x)
        result["mac_ratio"] = half / max(full, 1)
        if export:
            _export_check(model, x, result)
        result["stage"] = "done"
    except Exception as e:  # one line for the table, the tail of the traceback for debugging
        result["error"] = _first_line(e)
        result["trace"] = traceback.format_exc().splitlines()[-6:]
    result["covered"] = _covered(result)
    result["why"] = _why(result)
    return result


def _switches_run(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> bool:
    import slimify
    for w in SWITCHES:
        with slimify.width(model, w), torch.no_grad():
            out = model(x)
        if out.shape != expected.shape or not torch.isfinite(out).all():
            return False
    return True


def _covered(r: dict[str, Any]) -> bool:
    return (r["stage"] == "done" and bool(r.get("full_ok")) and bool(r.get("switches_ok"))
            and r.get("mac_ratio", 1.0) <= MAC_LIMIT and r.get("export_ok") is not False)


def _why(r: dict[str, Any]) -> str:
    """The first invariant that failed, in words ("" when covered)."""
    if r["covered"]:
        return ""
    if "error" in r:
        return f"{r['stage']}: {r['error']}"
    if not r.get("full_ok"):
        return f"full width differs (rel {r.get('full_rel_err', float('nan')):.2e})"
    if not r.get("switches_ok"):
        return "a switch changes the output shape or gives non-finite values"
    if r.get("mac_ratio", 1.0) > MAC_LIMIT:
        if _feature_output(r):
            return (f"width 0.5 keeps {r['mac_ratio']:.2f} of the MACs: the model returns its features (no "
                    f"classifier, num_classes=0), which keep their size here")
        top = r.get("fixed_reasons") or [["(no fixed group)", 0]]
        return f"width 0.5 keeps {r['mac_ratio']:.2f} of the MACs; fixed: {top[0][0]}"
    return f"export at width 0.5: {r.get('export_error') or 'differs from the slimmable model'}"


def main(argv: list[str]) -> int:
    lib, name = argv[:2]
    run = measure_ladder if "--ladder" in argv else measure
    print(json.dumps(run(lib, name, export="--skip-export" not in argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
