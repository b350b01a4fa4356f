"""Foreign-model benchmark: models nobody tuned slimify on (transformers vision models built from
their configs, torchvision detectors / video / segmentation / optical flow, hand-written models;
``benchmarks/foreign_models.py``). Same pass rule and columns as the coverage benchmark, one
subprocess per model, results as JSONL, a table in the ``## Foreign models`` section of RESULTS.md.

    python -m benchmarks.foreign                      # the whole list (default arguments of convert)
    python -m benchmarks.foreign --only unet --rerun  # some models again
    python -m benchmarks.foreign --summary-only       # rewrite RESULTS.md from the JSONL
    python -m benchmarks.foreign --list library       # the library list (``benchmarks/foreign_libraries.py``):
                                                      # its own JSONL and RESULTS.md section
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.coverage import _count, _median, add_sweep_arguments, load_results, recorder, row_cells, run_all, select
from benchmarks.coverage_worker import (
    EXPORT_TOL,
    FULL_TOL,
    MAC_LIMIT,
    SWITCHES,
    _first_line,
    _group_stats,
    wake_silent_weights,
)
from benchmarks.coverage_worker import _why as coverage_why
from benchmarks.foreign_libraries import LIBRARY_SPECS
from benchmarks.foreign_models import SPECS, Spec
from benchmarks.results import machine, write_section

try:  # imported once here, inherited by every forked worker
    import transformers  # noqa: F401
except ImportError:  # the bench extra is missing: those models fail at build with the reason
    pass

__all__ = ["EXPLAINED", "measure", "flatten", "summary", "main"]

HERE = Path(__file__).resolve().parent
JSONL = HERE / "foreign.jsonl"
BASELINE = HERE / "foreign_baseline.jsonl"  # the same list measured at commit 6d6b825, before the concrete tracer
HEADING = "Foreign models"
LIBRARY_JSONL = HERE / "foreign_libraries.jsonl"
LIBRARY_HEADING = "Foreign models: library list"
ALL_SPECS: dict[str, dict[str, Spec]] = {**SPECS, **LIBRARY_SPECS}  # lib → model name → how to build and call it

# model → why it stays uncovered (shown next to what was measured), as measured after task A's rules
# (tensor_split, shape slices, split into a submodule's size and the rest, paired width attributes)
EXPLAINED: dict[str, str] = {
    "ssdlite320_mobilenet_v3_large": "only outputs are fixed (class scores and box codes keep their size, like "
                                     "logits): the heads' output convs on six feature maps (6 anchors × 91 classes, "
                                     "a third of the MACs) can only halve with their input, and the depthwise convs "
                                     "and the stem (input fixed) halve too; even with `divisor=1` (every group at "
                                     "exactly half) width 0.5 keeps 0.354, so 0.35 is out of reach while class "
                                     "scores keep their size",
}


def flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a model output with its path: tensors, and the structure (dict keys, list
    lengths, dataclass fields) in the paths, so two outputs of one structure list equal paths."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in flatten(v, f"{path}.{k}")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in flatten(getattr(value, f.name), f"{path}.{f.name}")]
    if isinstance(value, (list, tuple)):
        return [(f"{path}[{len(value)}]", None)] + [leaf for i, v in enumerate(value) for leaf in flatten(v, f"{path}[{i}]")]
    return [(path, type(value).__name__)]


def _same_form(a: list[tuple[str, Any]], b: list[tuple[str, Any]], varying: bool) -> bool:
    """Same paths, tensors of the same dtype and shape (dim 0 free where ``varying``), finite."""
    if [p for p, _ in a] != [p for p, _ in b]:
        return False
    for (_, x), (_, y) in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            continue
        shape_x, shape_y = (x.shape[1:], y.shape[1:]) if varying else (x.shape, y.shape)
        if x.dtype != y.dtype or x.ndim != y.ndim or shape_x != shape_y:
            return False
        if y.is_floating_point() and not torch.isfinite(y).all():
            return False
    return True


def _rel_err(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> float:
    """Largest max|Δ| / max|y| over the output tensors (inf where shapes differ)."""
    worst = 0.0
    for (_, x), (_, y) in zip(a, b):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf")
        if x.numel() == 0:
            continue
        x, y = x.double(), y.double()
        worst = max(worst, float((y - x).abs().max() / x.abs().max().clamp_min(1e-30)))
    return worst


def _call(model: nn.Module, spec_args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with torch.no_grad():
        return model(*spec_args, **kwargs)


def _macs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops() // 2


def _convert_args(args: tuple[Any, ...], kwargs: dict[str, Any], divisor: int | None) -> dict[str, Any]:
    """``convert``'s keywords for these inputs: one input as is, several as a tuple, keyword
    inputs as ``example_kwargs`` (only when there are any); the default divisor unless given."""
    out: dict[str, Any] = {"example_input": args[0] if len(args) == 1 else tuple(args)}
    if kwargs:
        out["example_kwargs"] = kwargs
    if divisor is not None:
        out["divisor"] = divisor
    return out


def measure(lib: str, name: str, export: bool = True, divisor: int | None = None) -> dict[str, Any]:
    """Every invariant of one model; ``stage`` names where it stopped when it failed."""
    import slimify
    from slimify.state import get_state
    torch.set_num_threads(1)
    spec: Spec = ALL_SPECS[lib][name]
    result: dict[str, Any] = {"lib": lib, "name": name, "stage": "build", "covered": False, "load": os.getloadavg()[0]}
    try:
        model = spec.build().requires_grad_(False)
        wake_silent_weights(model)
        args, kwargs = spec.args(), spec.kwargs()
        result["input"] = [list(t.shape) for _, t in flatten((args, kwargs)) if isinstance(t, torch.Tensor)]
        expected = flatten(_call(model, args, kwargs))
        result["stage"] = "convert"
        start = time.perf_counter()
        slimify.convert(model, SWITCHES, **_convert_args(args, kwargs, divisor))
        result["convert_s"] = time.perf_counter() - start
        _group_stats(model, result)
        result["divisor"] = get_state(model).record.divisor
        result["unaccounted"] = _unaccounted(slimify.report(model))
        result["stage"] = "full width"
        got = flatten(_call(model, args, kwargs))
        result["full_rel_err"] = _rel_err(expected, got)
        result["full_ok"] = _same_form(expected, got, False) and result["full_rel_err"] <= FULL_TOL
        result["stage"] = "switches"
        result["switches_ok"] = True
        for w in SWITCHES:
            with slimify.width(model, w):
                if not _same_form(expected, flatten(_call(model, args, kwargs)), spec.varying):
                    result["switches_ok"], result["bad_switch"] = False, w
                    break
        result["stage"] = "macs"
        full = _macs(model, args, kwargs)
        with slimify.width(model, 0.5):
            half = _macs(model, args, kwargs)
        result["mac_ratio"] = half / max(full, 1)
        if export:
            _export_check(model, args, kwargs, spec.varying, result)
        result["stage"] = "done"
    except Exception as e:  # one line for the table, the tail of the traceback for debugging
        result["error"] = _first_line(e)
        result["trace"] = traceback.format_exc().splitlines()[-8:]
    result["covered"] = (result["stage"] == "done" and bool(result.get("full_ok")) and bool(result.get("switches_ok"))
                         and result.get("mac_ratio", 1.0) <= MAC_LIMIT and result.get("export_ok") is not False
                         and not result.get("unaccounted"))
    result["why"] = _why(result)
    return result


def _unaccounted(report: Any) -> int:
    """Channels the report leaves unexplained: kept at full size at width 0.5, yet neither fixed nor
    given a reason (the report invariant of issue 24; must be 0)."""
    at = min(range(len(report.switches)), key=lambda i: abs(report.switches[i] - 0.5))
    return sum(g.size for g in report.groups if g.channels[at] >= g.size and not (g in report.fixed and g.reason))


def _export_check(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], varying: bool,
                  result: dict[str, Any]) -> None:
    """The exported width 0.5 computes what the slimmable width 0.5 computes."""
    import slimify
    result["stage"] = "export"
    with slimify.width(model, 0.5):
        expected = flatten(_call(model, args, kwargs))
    plain = slimify.export(model, 0.5)
    got = flatten(_call(plain, args, kwargs))
    err = _rel_err(expected, got)
    result["export_rel_err"] = err
    result["export_ok"] = _same_form(expected, got, False) and err <= EXPORT_TOL


def _why(r: dict[str, Any]) -> str:
    """The first invariant that failed, in words ("" when covered): the coverage benchmark's, naming
    the switch that changed the output's form."""
    if not r["covered"] and "error" not in r and r.get("full_ok") and not r.get("switches_ok"):
        return f"switch {r.get('bad_switch')} changes the output structure or shapes, or gives non-finite values"
    if not r["covered"] and r.get("unaccounted"):
        return f"the report leaves {r['unaccounted']} channels kept at full width at width 0.5 without a reason"
    return coverage_why(r)


def _intro(command: str) -> str:
    return (f"The models of `benchmarks/foreign_models.py` (transformers {_version('transformers')} built from their "
           f"config classes with depths shrunk, torchvision with `weights=None`, hand-written models), random init, "
           f"batch 1, switches (0.25, 0.5, 0.75, 1.0), `convert`'s default arguments, 1 thread per model "
           f"({machine()}; `{command}`). Same pass rule as *Coverage*: a model is **covered** when it converts, "
           f"width 1.0 equals the original on every output tensor (max |Δ| ≤ 1e-5·max |y|), every switch runs with "
           f"the original output structure and shapes (detectors: box counts may differ), width 0.5 keeps ≤ 0.35 of "
           f"the MACs (torch.utils.flop_counter, whole model) and `export(model, 0.5)` equals the slimmable width 0.5 "
           f"(≤ 1e-4), and the report gives a reason for every channel kept at full width at width 0.5. "
           f"Faster R-CNN and SSDLite run with score threshold 0, so every candidate box is compared; "
           f"RetinaNet keeps its default (at 0 its concrete trace took 256 s and 13 GB).")


def _library_intro(command: str) -> str:
    versions = ", ".join(f"{p} {_version(p)}" for p in ("diffusers", "monai", "segmentation-models-pytorch",
                                                        "ultralytics", "open-clip-torch", "timm"))
    return (f"The models of `benchmarks/foreign_libraries.py`, built by the libraries themselves ({versions}; "
            f"random init, offline, no download), batch 1, switches (0.25, 0.5, 0.75, 1.0), `convert`'s default "
            f"arguments, 1 thread per model ({machine()}; `{command}`). Same pass rule as *Foreign models*; "
            f"Mask R-CNN runs with score threshold 0 and 10 detections per image.")


def summary(results: dict[tuple[str, str], dict[str, Any]], models: dict[str, list[str]], command: str,
            library: bool = False) -> str:
    """The markdown of the ``## Foreign models`` section (``library``: of the library list's)."""
    out = [_library_intro(command) if library else _intro(command), "",
           "| library | models run | converts | full width exact | switches run | MACs ≤ 0.35 | covered "
           "| median convert s |", "|---|---|---|---|---|---|---|---|"]
    total = [0, 0]
    for lib, names in models.items():
        rows = [results[(lib, n)] for n in names if (lib, n) in results]
        covered = _count(rows, "covered")
        total[0], total[1] = total[0] + covered, total[1] + len(rows)
        out.append(f"| {lib} | {len(rows)}/{len(names)} | {_count(rows, 'convert_s', lambda v: True)} "
                   f"| {_count(rows, 'full_ok')} | {_count(rows, 'switches_ok')} "
                   f"| {_count(rows, 'mac_ratio', lambda v: v <= MAC_LIMIT)} | **{covered}** "
                   f"| {_median([r['convert_s'] for r in rows if 'convert_s' in r])} |")
    loads = [r["load"] for r in results.values() if "load" in r]
    before = {} if library else load_results(BASELINE)
    was = sum(1 for key, r in before.items() if r["covered"] and key in results)
    then = "" if library else (f" (before the concrete tracer, at commit 6d6b825: {was}/{len(before)}, "
                               f"`benchmarks/foreign_baseline.jsonl`)")
    out += ["", f"**{total[0]}/{total[1]} covered**{then}. Convert times are wall seconds on one thread of a shared "
                f"machine (median load average {_median(loads)} on {os.cpu_count()} cores): compare with care.", "",
            "### Failures", ""]
    failed = [results[(lib, n)] for lib, names in models.items() for n in names
              if (lib, n) in results and not results[(lib, n)]["covered"]]
    for r in failed:
        why = EXPLAINED.get(r["name"])
        out.append(f"- {r['lib']} `{r['name']}`: {r.get('why', '')}" + (f". **Why:** {why}" if why else ""))
    if not failed:
        out.append("None.")
    out += ["", "### Per model", "", "| library | model | covered | full-width rel. err | MACs at 0.5 | divisor "
            "| convert s | groups | fixed | main fixed reason |", "|---|---|---|---|---|---|---|---|---|---|"]
    for lib, names in models.items():
        for n in names:
            if (r := results.get((lib, n))) is None:
                continue
            reason, err, mac, conv = row_cells(r)
            out.append(f"| {lib} | {n} | {'yes' if r['covered'] else 'no'} | {err} | {mac} | {r.get('divisor') or '-'} "
                       f"| {conv} | {r.get('groups', '-')} | {r.get('fixed_groups', '-')} | {reason} |")
    return "\n".join(out) + "\n"


def _version(package: str) -> str:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - not installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_arguments(parser, JSONL, HERE / "RESULTS.md", jobs=1)
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every model's timeout")
    parser.add_argument("--list", choices=("original", "library"), default="original",
                        help="which list: the original (transformers, torchvision, hand-written) or the library list")
    args = parser.parse_args(argv)
    library = args.list == "library"
    if library and args.out == JSONL:
        args.out = LIBRARY_JSONL
    models = {lib: list(specs) for lib, specs in (LIBRARY_SPECS if library else SPECS).items()}
    results = load_results(args.out)
    todo = [] if args.summary_only else [m for m in select(models, args.only) if args.rerun or m not in results]
    torch.set_num_threads(1)
    record = recorder(results, args.out, len(todo))
    run_all(todo, max(1, args.jobs), lambda lib, name: ALL_SPECS[lib][name].timeout * args.timeout_scale,
            True, record, measure_fn=measure)
    if not args.no_write:
        command = "python -m benchmarks.foreign" + (" --list library" if library else "")
        write_section(LIBRARY_HEADING if library else HEADING, summary(results, models, command, library), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
