"""Deploy every width as ONE ONNX file whose weights are stored once: a second input ``width``
selects the switch per call, as a slimmable network is meant to be used on a device whose budget
changes at run time.

    >>> to_onnx_all_widths(model, "model.onnx")   # inputs: input (N, C, H, W), width (float scalar)

How: each switch is exported as a plain model (:func:`slimify.deploy.extract.export`, the same graph a
single-width export has), then the graphs become the branches of a chain of ONNX ``If`` nodes
(``|width - w| < 1e-3``). Every tensor a branch serves is the full tensor, stored once as an
initializer of the outer graph, cut by ``Slice``/``Gather`` with constant bounds, so that
onnxruntime folds the cut once when the session is created and each branch then runs like that
width's own export. Private BatchNorm statistics of a switch are stored once, in its branch. A
width that is no switch runs the last ``else`` branch, which fails with a node whose name says so.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.deploy.export_batch import input_names, onnx_file
from slimify.deploy.extract import export, served_names
from slimify.errors import SlimifyError
from slimify.rewrite.batchnorm import BN_TENSORS
from slimify.rewrite.output_pad import find_output_pad
from slimify.rewrite.serve import slim_data
from slimify.rewrite.slicing import cut
from slimify.state import get_state, switches
from slimify.state import width as at_width
from slimify.store.atomic import atomic_path
from slimify.store.slimfile import example_call

__all__ = ["to_onnx_all_widths", "check_onnx_all_widths", "AllWidthsInfo", "WIDTH_TOLERANCE", "unknown_width_node",
           "key_prefix", "tensor_sources"]

WIDTH_TOLERANCE = 1e-3  # |width - switch| below this selects the switch (float32 inputs)
_ONNX_LIMIT = 2 ** 31 - 1  # protobuf's limit on one ModelProto


@dataclass
class AllWidthsInfo:
    """What an all-widths file holds (bytes of tensor data)."""

    path: Path
    widths: tuple[float, ...]
    shared_bytes: int  # full tensors, stored once, cut per branch
    private_bytes: int  # tensors only one branch uses (a switch's BatchNorm, constants)
    max_diff: float | None = None  # largest |onnxruntime − PyTorch| over the switches (check=True)


def unknown_width_node(widths: tuple[float, ...]) -> str:
    """The name of the node that fails for a width that is no switch (onnxruntime quotes it)."""
    return f"slimify: width is not a switch of this model; use one of {', '.join(f'{w:g}' for w in widths)}"


def tensor_sources(model: nn.Module, index: int, prefix: str) -> dict[str, tuple[str, dict[int, Any]]]:
    """Plain state-dict key at switch ``index`` → (full state-dict key, how it is cut), following
    what :mod:`slimify.rewrite.serve` serves; tensors of plain modules map to themselves, uncut."""
    full_keys = dict(model.state_dict(keep_vars=True))
    out: dict[str, tuple[str, dict[int, Any]]] = {}
    for path, module in model.named_modules():
        data = slim_data(module)
        if data is None:
            continue
        dot = f"{path}." if path else ""
        for name in served_names(module, data):
            slot = data.bn_slots[index] if data.bn_slots is not None and name in BN_TENSORS else None
            if slot is not None:
                out[prefix + dot + name] = (f"{dot}slim_bn.{slot}.{name}", {})
            else:
                out[prefix + dot + name] = (dot + name, data.params.get(name, [{}] * (index + 1))[index])
    for key in full_keys:
        out.setdefault(prefix + key, (key, {}))
    return out


def key_prefix(model: nn.Module, w: float) -> str:
    """How :func:`slimify.deploy.extract.export` prefixes state-dict keys at ``w``: ``"0."`` where the
    plain model is wrapped as ``nn.Sequential(model, ZeroPad1d)`` (a padded feature output)."""
    with at_width(model, w):
        pad = find_output_pad(model)
        return "0." if pad is not None and pad.plain() is not None else ""


def _plain_onnx(model: nn.Module, w: float, x: ExampleCall, opset: int) -> tuple[Any, str]:
    """Switch ``w`` exported like :func:`slimify.deploy.extract.to_onnx`, but without folding BatchNorm
    into the convolutions (the folded weights would no longer be cuts of the shared tensors;
    onnxruntime fuses them again when the session is created). Returns (ModelProto, key prefix)."""
    import onnx

    prefix = ("model." if x.kwargs else "") + key_prefix(model, w)  # keywords: the Positional wrapper's name
    plain = export(model, w).eval()
    buffer = io.BytesIO()
    try:  # onnx_file hides the exporter's output
        onnx_file(plain, x, buffer, opset, dynamic=True, do_constant_folding=False,
                  training=torch.onnx.TrainingMode.PRESERVE)
    except Exception as e:
        raise SlimifyError(f"ONNX export failed for {type(plain).__name__} at width {w:g}: "
                           f"{str(e).splitlines()[0]}") from e
    return onnx.load_from_string(buffer.getvalue()), prefix


def _cut_nodes(source: str, dims: dict[int, Any], out: str, tag: str) -> tuple[list[Any], list[Any]]:
    """Nodes (and their constant initializers) computing ``out`` = ``source`` cut by ``dims``."""
    from onnx import helper, numpy_helper

    nodes, consts = [], []
    current = source
    for k, (dim, index) in enumerate(sorted(dims.items())):
        target = out if k == len(dims) - 1 else f"{out}#{k}"
        if isinstance(index, slice):
            names = [f"{target}#{p}" for p in ("starts", "ends", "axes")]
            for name, value in zip(names, (index.start, index.stop, dim)):
                consts.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
            nodes.append(helper.make_node("Slice", [current, *names], [target], name=f"{tag}/slice:{target}"))
        else:
            name = f"{target}#indices"
            consts.append(numpy_helper.from_array(np.asarray(index, dtype=np.int64), name))
            nodes.append(helper.make_node("Gather", [current, name], [target], axis=dim, name=f"{tag}/gather:{target}"))
        current = target
    return nodes, consts


def _rename_graph(graph: Any, rename: dict[str, str], tag: str) -> None:
    """Prefix every value and node name in ``graph`` (subgraphs included) except ``rename``'s."""
    def name(value: str) -> str:
        return value if value == "" else rename.get(value, f"{tag}/{value}")

    for node in graph.node:
        node.input[:] = [name(v) for v in node.input]
        node.output[:] = [name(v) for v in node.output]
        node.name = f"{tag}/{node.name or node.op_type}"
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _rename_graph(sub, rename, tag)
    for collection in (graph.initializer, graph.value_info, graph.output, graph.input):
        for item in collection:
            item.name = name(item.name)


def _branch(model: nn.Module, w: float, index: int, x: ExampleCall, opset: int,
            shared: dict[str, np.ndarray]) -> tuple[Any, Any, int, Any]:
    """Switch ``w`` as a subgraph reading the inputs and the shared tensors from the outer graph;
    adds the full tensors it cuts to ``shared``. Returns (GraphProto, its output's type, private
    bytes, the plain ModelProto)."""
    from onnx import helper, numpy_helper

    proto, prefix = _plain_onnx(model, w, x, opset)
    graph, tag = proto.graph, f"w{index}"
    sources = tensor_sources(model, index, prefix)
    full_state = model.state_dict()
    keep, cuts, private = [], [], 0
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        source = sources.get(init.name)
        full = full_state.get(source[0]) if source is not None else None
        if full is not None and full.is_floating_point() == np.issubdtype(value.dtype, np.floating):
            served = cut(full.detach(), source[1]).cpu().numpy()
            if served.shape == value.shape and served.dtype == value.dtype and np.array_equal(served, value):
                shared.setdefault(source[0], full.detach().cpu().numpy())
                nodes, consts = _cut_nodes(source[0], source[1], f"{tag}/{init.name}", tag)
                cuts.append((init.name, nodes, consts))
                continue
        keep.append(init)
        private += value.nbytes
    rename = {name: name for name in input_names(model, x)}
    for init_name, nodes, _ in cuts:
        if not nodes:  # served uncut: the branch reads the outer tensor itself
            rename[init_name] = sources[init_name][0]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)
    _rename_graph(graph, rename, tag)
    for _, _nodes, consts in cuts:
        graph.initializer.extend(consts)
    cut_nodes = [n for _, nodes, _ in cuts for n in nodes]
    body = helper.make_graph(cut_nodes + list(graph.node), f"width_{w:g}", [], list(graph.output),
                             list(graph.initializer), value_info=list(graph.value_info))
    if len(graph.output) != 1:
        raise SlimifyError(f"width {w:g} has {len(graph.output)} outputs; an all-widths export needs exactly one")
    return body, graph.output[0].type, private, proto


def _width_check(widths: tuple[float, ...]) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``width#checked`` (= ``width``) and ``is#i`` (width is switch i); a width
    that is no switch makes a ``Gather`` index run past its 1-element table, so onnxruntime fails
    before any branch runs, quoting this node's name (:func:`unknown_width_node`)."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(widths, dtype=np.float32), "switches"),
             numpy_helper.from_array(np.array(WIDTH_TOLERANCE, dtype=np.float32), "width#tolerance"),
             numpy_helper.from_array(np.array([0.0], dtype=np.float32), "width#zero"),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "width#ok"),
             numpy_helper.from_array(np.array(1, dtype=np.int64), "width#bad")]
    nodes = [helper.make_node("Sub", ["width", "switches"], ["width#diff"]),
             helper.make_node("Abs", ["width#diff"], ["width#absdiff"]),
             helper.make_node("Less", ["width#absdiff", "width#tolerance"], ["width#is"]),
             helper.make_node("Cast", ["width#is"], ["width#is_int"], to=TensorProto_INT64),
             helper.make_node("ReduceMax", ["width#is_int"], ["width#any"], keepdims=0),
             helper.make_node("Equal", ["width#any", "width#ok"], ["width#none"]),
             helper.make_node("Where", ["width#none", "width#bad", "width#ok"], ["width#index"]),
             helper.make_node("Gather", ["width#zero", "width#index"], ["width#offset"],
                              name=unknown_width_node(widths)),
             helper.make_node("Add", ["width", "width#offset"], ["width#checked"]),
             helper.make_node("Sub", ["width#checked", "switches"], ["width#checked_diff"]),
             helper.make_node("Abs", ["width#checked_diff"], ["width#checked_absdiff"]),
             helper.make_node("Less", ["width#checked_absdiff", "width#tolerance"], ["width#checked_is"])]
    for i in range(len(widths)):
        inits.append(numpy_helper.from_array(np.array(i, dtype=np.int64), f"switch#{i}"))
        nodes.append(helper.make_node("Gather", ["width#checked_is", f"switch#{i}"], [f"is#{i}"], axis=0))
    return nodes, inits


TensorProto_INT64 = 7  # onnx.TensorProto.INT64, without importing onnx at module load


def _same_signature(types: list[Any], widths: tuple[float, ...]) -> None:
    """Every switch must return the same element type and rank with the same non-batch sizes."""
    def sig(t: Any) -> tuple:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
        return t.tensor_type.elem_type, len(dims), tuple(dims[1:])

    def same(a: tuple, b: tuple) -> bool:  # a size the exporter could not infer (None) matches any
        return a[:2] == b[:2] and all(x is None or y is None or x == y for x, y in zip(a[2], b[2]))

    first = sig(types[0])
    for w, t in zip(widths[1:], types[1:]):
        if not same(sig(t), first):
            raise SlimifyError(f"the switches cannot share one graph: width {widths[0]:g} returns "
                               f"{list(first[2])} per sample, width {w:g} returns {list(sig(t)[2])}")


def build_all_widths(model: nn.Module, x: ExampleCall, opset: int = 17) -> tuple[Any, int, int]:
    """The all-widths ModelProto of a converted ``model`` (see the module docstring), with the
    bytes of shared and private tensor data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    widths = switches(model)
    if len(widths) < 2:
        raise SlimifyError(f"the model has one switch ({widths[0]:g}): export it with --width instead")
    shared: dict[str, np.ndarray] = {}
    branches, types, private, protos = [], [], 0, []
    for i, w in enumerate(widths):
        body, out_type, nbytes, proto = _branch(model, w, i, x, opset, shared)
        branches.append(body)
        types.append(out_type)
        protos.append(proto)
        private += nbytes
    _same_signature(types, widths)
    nodes, inits = [], [numpy_helper.from_array(v, k) for k, v in shared.items()]
    check_nodes, check_inits = _width_check(widths)
    nodes += check_nodes
    inits += check_inits
    otherwise = branches[-1]  # the width check ran first: no need to test the last switch
    for i in reversed(range(len(widths) - 1)):
        out = "output" if i == 0 else f"w{i - 1}/else"
        node = helper.make_node("If", [f"is#{i}"], [out], name=f"width == {widths[i]:g}",
                                then_branch=branches[i], else_branch=otherwise)
        if i == 0:
            nodes.append(node)
        else:
            otherwise = helper.make_graph([node], f"not_{widths[i - 1]:g}", [],
                                          [helper.make_value_info(out, types[-1])])
    first = protos[0].graph
    names = input_names(model, x)
    inputs = [v for v in first.input if v.name in names]
    width_input = helper.make_tensor_value_info("width", TensorProto.FLOAT, [])
    output = helper.make_value_info("output", types[-1])  # full width: every size known
    graph = helper.make_graph(nodes, "slimify_all_widths", [*inputs, width_input], [output], inits)
    model_proto = helper.make_model(graph, opset_imports=list(protos[0].opset_import),
                                    producer_name="slimify", doc_string="every width of a slimmable model; "
                                    f"input 'width' is one of {', '.join(f'{w:g}' for w in widths)}")
    model_proto.ir_version = protos[0].ir_version
    shared_bytes = sum(v.nbytes for v in shared.values())
    try:
        onnx.checker.check_model(model_proto) if model_proto.ByteSize() < _ONNX_LIMIT else None
    except onnx.checker.ValidationError as e:
        raise SlimifyError(f"the all-widths graph is not valid ONNX: {str(e).splitlines()[0]}") from e
    return model_proto, shared_bytes, private


def to_onnx_all_widths(model: nn.Module, path: str | Path, example: Any = None,
                       overwrite: bool = False, opset: int = 17, check: bool = True) -> AllWidthsInfo:
    """Write every switch of the converted ``model`` to one ONNX file at ``path`` (inputs ``input``
    with a dynamic batch — or, for several, named after ``forward``'s parameters — and ``width``, a
    float scalar; output ``output``); with ``check``, run it in onnxruntime at every switch and raise
    if it differs from the slimmable model by more than 1e-4 × max|y|, or if a width that is no
    switch does not fail. ``example``: one input, a tuple of inputs or an ``ExampleCall`` (default:
    the form the model was converted on). Nothing is written on error."""
    get_state(model)
    x = example_call(model) if example is None else ExampleCall.of(example)
    was_training = model.training
    model.eval()
    try:
        proto, shared, private = build_all_widths(model, x, opset)
    finally:
        model.train(was_training)
    if proto.ByteSize() >= _ONNX_LIMIT:
        raise SlimifyError(f"the all-widths model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB limit "
                           "for one file; export the widths one by one")
    info = AllWidthsInfo(Path(path), switches(model), shared, private)
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_bytes(proto.SerializeToString())
        if check:
            info.max_diff = check_onnx_all_widths(tmp, model, x)
    return info


def check_onnx_all_widths(path: str | Path, model: nn.Module, x: Any, rtol: float = 1e-4) -> float:
    """Run the all-widths file at every switch of ``model`` and compare with the slimmable model
    (raise beyond ``rtol`` × max|y|); check that a width that is no switch fails. Returns the
    largest difference."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the unknown-width probe below fails on purpose: no error log
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = ExampleCall.of(x)
    feed = {n: t.detach().cpu().numpy() for n, t in zip(input_names(model, x), x.tensors())}
    worst = 0.0
    was_training = model.training
    model.eval()
    try:
        for w in switches(model):
            got = session.run(None, {**feed, "width": np.array(w, dtype=np.float32)})[0]
            with at_width(model, w), torch.no_grad():
                want = x.run(model).detach().cpu().numpy()
            diff = float(np.abs(got - want).max())
            if got.shape != want.shape or diff > rtol * max(float(np.abs(want).max()), 1e-6):
                raise SlimifyError(f"the all-widths ONNX file differs from the slimmable model at width {w:g} "
                                   f"by {diff:.3g} (max |y| {np.abs(want).max():.3g})")
            worst = max(worst, diff)
    finally:
        model.train(was_training)
    bogus = min(switches(model)) / 2
    try:
        session.run(None, {**feed, "width": np.array(bogus, dtype=np.float32)})
    except Exception as e:  # onnxruntime raises its own exception types
        if unknown_width_node(switches(model)) not in str(e):
            raise SlimifyError(f"width {bogus:g} failed in the all-widths file, but not with the message "
                               f"expected: {str(e).splitlines()[0]}") from e
    else:
        raise SlimifyError(f"the all-widths file accepted width {bogus:g}, which is no switch")
    return worst
