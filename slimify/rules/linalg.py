"""Rules for contractions and functional layers: matmul/einsum, attention, F.linear/F.conv2d,
F.layer_norm. A contraction ties the contracted channels of its operands; a batch dim that
carries channels (attention heads) makes each head one unit of width."""
from __future__ import annotations

import string

import numpy as np
import torch.fx as fx

from slimify.analysis.space import Count
from slimify.analysis.unique import unique
from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.elementwise import elementwise, passthrough
from slimify.rules.literal_sizes import follow_literal
from slimify.rules.registry import rule

__all__ = ["contract", "matmul", "einsum", "linear_fn", "conv_fn", "layer_norm_fn", "sdpa", "with_shape"]


def _joint(t: TensorVal, letters: str, order: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Label and real shape of ``t`` laid out along the joint letters ``order``."""
    perm = [letters.index(c) for c in order if c in letters]
    label = np.transpose(t.label, perm)
    real = tuple(t.shape[i] for i in perm)
    shape_l, shape_r, k = [], [], 0
    for c in order:
        if c in letters:
            shape_l.append(label.shape[k]); shape_r.append(real[k]); k += 1
        else:
            shape_l.append(1); shape_r.append(1)
    return label.reshape(shape_l), tuple(shape_r)


def contract(ctx: RuleContext, operands: list[tuple[TensorVal, str]], out: str, out_shape: tuple[int, ...]) -> TensorVal:
    order = "".join(dict.fromkeys("".join(l for _, l in operands) + out))
    joint = [_joint(t, l, order) for t, l in operands]
    rigid = {order.index(l[d]) for t, l in operands for d in t.rigid}
    shared = ctx.shared_across([lab for lab, _ in joint], [real for _, real in joint], rigid)
    taking = []
    for (lab, real), is_shared in zip(joint, shared):
        if is_shared:  # a single-channel attention map, a relative-position table used by every head
            ctx.space.fix(lab, f"broadcast across channels at {ctx.space.context}")
            continue
        taking.append((lab, real))
    if len(taking) == 2 and not rigid:
        taking = _outer_product(ctx, taking)
    for lab, _ in taking[1:]:
        ctx.space.union(taking[0][0], lab)
    summed = [i for i, c in enumerate(order) if c not in out]
    carriers = [lab for lab, _ in taking if any(lab.shape[order.index(c)] > 1 for c in out)]
    if not carriers:
        return ctx.fixed(out_shape)
    for lab in carriers:  # an output element depends on all it sums over: one unit
        if summed and any(lab.shape[i] > 1 for i in summed):
            moved = np.moveaxis(lab, summed, list(range(-len(summed), 0)))
            flat = moved.reshape(moved.shape[: lab.ndim - len(summed)] + (-1,))
            ctx.space.union(flat[..., :1], flat)
    label = np.broadcast_to(carriers[0], np.broadcast_shapes(*(c.shape for c in carriers)))
    label = label[tuple(0 if i in summed else slice(None) for i in range(len(order)))]
    kept = [c for c in order if c in out]
    label = np.transpose(label, [kept.index(c) for c in out])
    rigid_letters = {l[d] for t, l in operands for d in t.rigid}  # head_dim stays a fixed-size dim
    return TensorVal(np.ascontiguousarray(label), tuple(out_shape),
                     frozenset(i for i, c in enumerate(out) if c in rigid_letters))


def _outer_product(ctx: RuleContext, taking: list) -> list:
    """Two operands whose channels run along different dims (EfficientViM's ``x @ (a·b)ᵀ``:
    channels × state dims) pair every channel of one with every channel of the other, which one
    id per element cannot express: tying them makes both one unit. Instead one side keeps its
    size and the other slims: a side whose channels meet a dim the other holds at a constant size
    must keep it (its size there cannot change), else the side with fewer channels."""
    (a, real_a), (b, real_b) = taking
    carried_a = {d for d in range(a.ndim) if a.shape[d] > 1}
    carried_b = {d for d in range(b.ndim) if b.shape[d] > 1}
    if not carried_a or not carried_b or carried_a & carried_b:
        return taking
    keep = [any(real_b[d] > 1 for d in carried_a), any(real_a[d] > 1 for d in carried_b)]
    if not any(keep):
        keep = [False, True] if unique(a).size >= unique(b).size else [True, False]
    for (lab, _), k in zip(taking, keep):
        if k:
            ctx.space.fix(lab, f"channels meeting another operand's channels along other dims (an outer "
                               f"product) keep their size at {ctx.space.context}")
    return [t for t, k in zip(taking, keep) if not k]


@rule("matmul", "bmm")
def matmul(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    by_parameter = _parameter_matmul(ctx, args[0], args[1])
    if by_parameter is not None:
        return by_parameter
    a, b = ctx.tensor(args[0]), ctx.tensor(args[1])
    if a.ndim < 2 or b.ndim < 2:
        ctx.fix_all([a, b], f"matmul with a vector at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    nb = max(a.ndim, b.ndim) - 2
    batch = string.ascii_lowercase[:nb]
    la, lb = batch[nb - (a.ndim - 2):] + "xy", batch[nb - (b.ndim - 2):] + "yz"
    return contract(ctx, [(a, la), (b, lb)], batch + "xz", tuple(ctx.out_shape))


def _name(p: ParamVal) -> str:
    return f"{p.module}.{p.name}" if p.module else p.name


def _parameter_matmul(ctx: RuleContext, a: object, b: object) -> TensorVal | None:
    """``x @ self.proj`` (open_clip's towers) or ``self.proj @ x`` with a 2-D parameter is a linear
    layer: its input channels are the tensor's contracted dim, its output channels new ones, and
    the parameter is served narrow along both (as ``F.linear``). Contracting them like two
    activations would make every input channel one unit and keep the stream at full width."""
    if isinstance(b, ParamVal) and isinstance(a, TensorVal) and b.tensor.ndim == 2 and a.ndim >= 1:
        in_ids = ctx.channel_ids(a, a.ndim - 1)
        out_ids = ctx.space.new_var(b.tensor.shape[1], f"{_name(b)} (x @ parameter output)")
        ctx.space.param(b.module, b.name, {0: in_ids, 1: out_ids})
        return TensorVal(out_ids.reshape([1] * (a.ndim - 1) + [-1]), tuple(ctx.out_shape))
    if isinstance(a, ParamVal) and isinstance(b, TensorVal) and a.tensor.ndim == 2 and b.ndim >= 2:
        in_ids = ctx.channel_ids(b, b.ndim - 2)
        out_ids = ctx.space.new_var(a.tensor.shape[0], f"{_name(a)} (parameter @ x output)")
        ctx.space.param(a.module, a.name, {0: out_ids, 1: in_ids})
        return ctx.with_dim(b, b.ndim - 2, out_ids, tuple(ctx.out_shape))
    return None


@rule("einsum")
def einsum(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    equation = args[0].replace(" ", "")
    tensors = [ctx.tensor(t) for t in (args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])]
    if "..." in equation or "->" not in equation:
        ctx.fix_all(tensors, f"einsum '{equation}' with ellipsis or implicit output at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    ins, out = equation.split("->")
    return contract(ctx, list(zip(tensors, ins.split(","))), out, tuple(ctx.out_shape))


def _bias(ctx: RuleContext, bias: object, ids: np.ndarray) -> None:
    if isinstance(bias, ParamVal):
        ctx.space.param(bias.module, bias.name, {0: ids})
    elif isinstance(bias, TensorVal):
        ctx.space.union(bias.label.reshape(-1), ids) if bias.label.size == len(ids) else ctx.space.union(bias.label, ids[:1])


@rule("linear")
def linear_fn(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.linear(x, self.qkv.weight, bias)`` in forward code: the parameter's owner serves it narrow."""
    x, w = ctx.tensor(args[0]), args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(w, ParamVal):
        ctx.fix_all([x, w, bias], f"F.linear with a computed weight at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    in_ids = ctx.channel_ids(x, x.ndim - 1)
    out_ids = ctx.space.new_var(w.tensor.shape[0], f"{w.module}.{w.name} (F.linear output)")
    ctx.space.param(w.module, w.name, {0: out_ids, 1: in_ids})
    _bias(ctx, bias, out_ids)
    return TensorVal(out_ids.reshape([1] * (x.ndim - 1) + [-1]), tuple(ctx.out_shape))


@rule("conv1d", "conv2d", "conv3d")
def conv_fn(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.conv2d(x, self.weight…)``: a dense conv's parameter is served narrow; a depthwise one
    (BlurPool's fixed filter, ``groups=channels``) passes every channel through on its own."""
    x, w = ctx.tensor(args[0]), args[1] if len(args) > 1 else kwargs["weight"]
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    w_shape = tuple(w.tensor.shape) if isinstance(w, ParamVal) else tuple(w.shape) if isinstance(w, TensorVal) else ()
    if isinstance(groups, int) and groups > 1 and groups == x.shape[1] == w_shape[0] and w_shape[1] == 1:
        return _depthwise_fn(ctx, x, w, bias, groups)
    if not isinstance(w, ParamVal) or groups != 1:
        ctx.fix_all([x, w, bias], f"functional conv (groups={groups}) at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    in_ids = ctx.channel_ids(x, 1)
    out_ids = ctx.space.new_var(w.tensor.shape[0], f"{w.module}.{w.name} (functional conv output)")
    ctx.space.param(w.module, w.name, {0: out_ids, 1: in_ids})
    _bias(ctx, bias, out_ids)
    return ctx.with_dim(x, 1, out_ids, tuple(ctx.out_shape))


def _depthwise_fn(ctx: RuleContext, x: TensorVal, w: object, bias: object, groups: int) -> TensorVal:
    ids = ctx.channel_ids(x, 1)
    if isinstance(w, ParamVal):
        ctx.space.param(w.module, w.name, {0: ids})
    elif isinstance(w, TensorVal) and w.label.shape[0] > 1:
        ctx.space.union(ctx.channel_ids(w, 0), ids)
    elif isinstance(w, TensorVal):  # one filter expanded to every channel
        ctx.space.fix(w.label, f"a filter shared by all channels at {ctx.space.context}")
    _bias(ctx, bias, ids)
    node_groups = ctx.node.args[6] if len(ctx.node.args) > 6 else ctx.node.kwargs.get("groups")
    if not isinstance(node_groups, fx.Node) and not follow_literal(ctx, groups, Count(ids)):
        ctx.space.fix(ids, f"depthwise conv with groups={groups} baked in code at {ctx.space.context}")
    return ctx.with_dim(x, 1, ids, tuple(ctx.out_shape))


@rule("layer_norm", "rms_norm")  # rms_norm: (x, shape, weight, eps)
def layer_norm_fn(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.layer_norm``/``F.rms_norm`` over the channels: the weight (and bias) follow them."""
    x = ctx.tensor(args[0])
    shape_arg = ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs["normalized_shape"]
    n = len(args[1]) if isinstance(args[1], (list, tuple)) else 1
    if n != 1:
        ctx.fix_all([x], f"layer_norm over {n} dims at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    if x.ndim - 1 in x.rigid:  # over each head's channels: shared by the heads
        return passthrough(ctx, [x], {})
    ids = ctx.channel_ids(x, x.ndim - 1)
    for i, name in ((2, "weight"), (3, "bias")):
        p = args[i] if len(args) > i else kwargs.get(name)
        if isinstance(p, ParamVal):
            ctx.space.param(p.module, p.name, {0: ids})
        elif isinstance(p, TensorVal):
            ctx.space.union(p.label, ids)
    if not isinstance(shape_arg, fx.Node) and ctx.tensor(x).label.shape[-1] > 1:
        literal = list(shape_arg) if isinstance(shape_arg, (list, tuple)) else shape_arg
        if not (isinstance(literal, list) and isinstance(literal[0], fx.Node)):
            if not follow_literal(ctx, tuple(literal) if isinstance(literal, list) else literal, [Count(ids)]):
                ctx.space.fix(ids, f"layer_norm shape {literal} baked in code at {ctx.space.context}")
    return passthrough(ctx, [x], {})


@rule("scaled_dot_product_attention")
def sdpa(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.scaled_dot_product_attention``: softmax(q kᵀ + mask) v with heads as units."""
    q, k, v = (ctx.tensor(args[i] if len(args) > i else kwargs[name]) for i, name in enumerate(("query", "key", "value")))
    batch = string.ascii_lowercase[: q.ndim - 2]
    scores_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    scores = contract(ctx, [(q, batch + "xd"), (k, batch + "yd")], batch + "xy", scores_shape)
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if isinstance(mask, (TensorVal, ParamVal)):
        scores = with_shape(ctx, scores_shape, lambda: elementwise(ctx, [scores, mask], {}))
    return contract(ctx, [(scores, batch + "xy"), (v, batch + "ye")], batch + "xe", tuple(ctx.out_shape))


def with_shape(ctx: RuleContext, shape: tuple[int, ...], fn):
    """Run ``fn`` with the node's recorded shape set to ``shape`` (a rule reusing another op's rule)."""
    from slimify.analysis.shape_pass import SHAPE_KEY
    saved = ctx.node.meta.get(SHAPE_KEY)
    ctx.node.meta[SHAPE_KEY] = shape
    try:
        return fn()
    finally:
        ctx.node.meta[SHAPE_KEY] = saved
