"""The last step of the pipeline: before ``convert`` hands a model out, every switch runs once.

Analysis can miss a constraint (a size baked into a computed shape tuple, a split size read from
a tensor that no longer matches, code nobody has thought of), and a model that is exact at full
width but crashes at 0.5 is the worst thing this tool could hand out. So the plan is tried on a
*skeleton* of the model (its module tree copied shallowly: the copy's own dicts, the tensors on
the meta device, or the user's own tensors when meta cannot run the model) and every switch must
run and give the original output's structure and shapes.

A switch that fails names a place (the model's source line, the innermost module). The groups
that touch that module are the suspects; fixing a prefix of them and planning again, a binary
search finds one whose fixing makes the failure go away. It is fixed with a reason naming the op
and the line, and everything runs again. If even fixing every group cannot make the switch run,
one :class:`SlimifyError` names the line. The user's model is never touched: the rewrite runs on
the skeleton, and ``convert`` rewrites the model only after the check passed.
"""
from __future__ import annotations

import copy
import linecache
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.groups import GroupTable
from slimify.analysis.plan import Plan
from slimify.analysis.space import ChannelSpace, Count
from slimify.analysis.stages import Replan
from slimify.analysis.trace import SHAPE_KEY, WHERE_KEY
from slimify.analysis.unique import unique
from slimify.check.output_structure import recorded_structure
from slimify.check.skeleton import Failure, Runner, first_line, source_line
from slimify.errors import SlimifyError

__all__ = ["self_check", "unexpected", "with_line"]

MAX_ROUNDS = 64  # groups the check may fix before it gives up (each is one binary search)


# -- fixing ------------------------------------------------------------------------------------
def _with_fixes(space: ChannelSpace, ids: list[np.ndarray], reason: str) -> ChannelSpace:
    """A copy of ``space`` with ``ids`` fixed (planning may add constraints: the copy takes them)."""
    trial = copy.copy(space)
    trial.fixes = list(space.fixes)
    trial._pairs = list(space._pairs)
    trial.pair_contexts = list(space.pair_contexts)
    trial.cuts = list(space.cuts)
    trial.balances = list(space.balances)
    for group_ids in ids:
        trial.fix(group_ids, reason)
    return trial


def _suspects(space: ChannelSpace, table: GroupTable, module: str) -> list[int]:
    """Slimmable groups whose channels a module (or its children) produces, reads as parameters
    or BatchNorm, or counts in attributes: those of the innermost module that has any, else
    every group."""
    live = [g.index for g in table.groups if not g.fixed]
    path = module
    while path:
        inside = lambda p, path=path: p == path or p.startswith(path + ".")  # noqa: E731
        ids = [s.ids for s in space.batchnorms if inside(s.module)]
        for (owner, _), spec in space.params.items():
            if inside(owner):
                ids += list(spec.dims.values()) + ([spec.elementwise] if spec.elementwise is not None else [])
        ids += [c.ids for (owner, _), spec in space.attrs.items() if inside(owner) for c in _counts(spec.template)]
        ids += [np.arange(v.start, v.start + v.size) for v in space.vars if inside(v.origin.split(" ")[0])]
        if ids:
            groups = set(unique(table.group_of_id[np.concatenate([np.ravel(i) for i in ids])]).tolist())
            found = [g for g in live if g in groups]
            if found:
                return found
        path = path.rpartition(".")[0]
    return live


def _counts(template: Any) -> list[Count]:
    if isinstance(template, Count):
        return [template]
    return [c for t in template for c in _counts(t)] if isinstance(template, (list, tuple)) else []


def _group_ids(table: GroupTable, groups: list[int]) -> list[np.ndarray]:
    return [np.nonzero(table.group_of_id == g)[0] for g in groups]


def self_check(model: nn.Module, inputs: ExampleCall, space: ChannelSpace, table: GroupTable, plan: Plan,
               replan: Replan, output: fx.Node | None = None) -> tuple[GroupTable, Plan]:
    """Run every switch on ``model(*inputs.args, **inputs.kwargs)`` (the call the trace recorded);
    fix the groups a failing one needs and plan again until all run.
    ``output``: the traced graph's output node (its recorded shapes spare a run of the original;
    the line that made the output names an output that changed)."""
    recorded = None if output is None else output.meta.get(SHAPE_KEY)
    runner = Runner(model, inputs, plan, None if recorded is None else recorded_structure(recorded),
                    _output_line(output))
    failure = runner.switches(plan)
    for _ in range(MAX_ROUNDS):
        if failure is None:
            return table, plan
        first = plan.switches.index(failure.width)
        reason = f"self-check: {failure.describe()}"

        def still_fails(groups: list[int], table: GroupTable = table, reason: str = reason, first: int = first,
                        failure: Failure = failure) -> bool:
            _, trial_plan = replan(_with_fixes(space, _group_ids(table, groups), reason))
            found = runner.switches(trial_plan, first)
            return found is not None and found.key == failure.key

        suspects = _suspects(space, table, failure.module)
        if still_fails(suspects):
            suspects = [g.index for g in table.groups if not g.fixed]
            if not suspects or still_fails(suspects):
                raise SlimifyError(_give_up(model, failure))
        low, high = 0, len(suspects)  # fixing suspects[:high] cures this failure, [:low] does not
        while high - low > 1:
            mid = (low + high) // 2
            if still_fails(suspects[:mid]):
                low = mid
            else:
                high = mid
        for ids in _group_ids(table, [suspects[high - 1]]):
            space.fix(ids, reason)
        table, plan = replan(space)
        failure = runner.switches(plan, first)
    raise SlimifyError(_give_up(model, failure))


def _output_line(output: fx.Node | None) -> str:
    """"FILE, line N, in fn: code" of the model code that made the (first) output tensor."""
    made = [n for n in (output.all_input_nodes if output is not None else []) if n.meta.get(WHERE_KEY)]
    if not made:
        return ""
    filename, lineno, function = made[0].meta[WHERE_KEY]
    return f"{filename}, line {lineno}, in {function}: {linecache.getline(filename, lineno).strip()}"


def _give_up(model: nn.Module, failure: Failure) -> str:
    return (f"{type(model).__name__} cannot be converted: {failure.describe()}, and keeping every channel group "
            "at full size does not cure it, so its sizes depend on the data or on randomness, not only on the "
            "widths. Make that code's sizes depend on the input's shape (not its values), or pass a fixed "
            "example_input= that takes the same path every time")


def unexpected(model: nn.Module, error: Exception) -> SlimifyError:
    """Any other exception inside ``convert`` becomes one :class:`SlimifyError` naming the model's
    source line (a bug of slimify's when there is none: then the message says so)."""
    _, line = source_line(error.__traceback__)
    where = f" at {line}" if line else " inside slimify (please report it)"
    return SlimifyError(f"converting {type(model).__name__} failed{where}: {type(error).__name__}: {first_line(error)}")


def with_line(error: SlimifyError) -> SlimifyError:
    """``error`` naming the model's line that raised its cause (a trace that failed inside the
    model's code), when its message names none."""
    cause = error.__cause__
    if cause is None or ", line " in str(error):
        return error
    _, line = source_line(cause.__traceback__)
    return SlimifyError(f"{error} (at {line})") if line else error
