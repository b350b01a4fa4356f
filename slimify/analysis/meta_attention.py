"""Attention on the meta device: ``scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
answered from their shapes (with the real ops' size checks), for :class:`metarun.FastMeta`. Their
meta decompositions cost ~2 ms and ~5 ms a call."""
from __future__ import annotations

from typing import Any

import torch

from slimify.analysis.meta_layout import bound, broadcast_shapes, empty, empty_contiguous, is_meta_float, sized

__all__ = ["attention", "multi_head_attention"]


_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``scaled_dot_product_attention`` (a ViT block's: ~2 ms as a meta decomposition): query
    ``(*B, L, E)``, key ``(*B, S, E)``, value ``(*B, S, Ev)`` → ``(*B, L, Ev)``; the mask must
    broadcast to ``(*B, L, S)``. Grouped-query attention and batch dims that differ between
    query, key and value take the ordinary path."""
    q, k, v, mask, _, _, _, gqa = bound(_SDPA_NAMES, args, kwargs)
    if gqa or not all(is_meta_float(t) for t in (q, k, v)) or len({(t.ndim, t.dtype) for t in (q, k, v)}) != 1:
        return None
    if q.ndim < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        return None
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise RuntimeError(f"scaled_dot_product_attention: query {list(q.shape)}, key {list(k.shape)} and value "
                           f"{list(v.shape)} do not fit (query and key need the same last size, key and value the "
                           "same length)")
    if mask is not None:
        if not (isinstance(mask, torch.Tensor) and mask.is_meta):
            return None
        scores = (*q.shape[:-1], k.shape[-2])
        if broadcast_shapes(mask.shape, scores) != torch.Size(scores):
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape {list(mask.shape)} does not "
                               f"broadcast to {list(scores)}")
    return empty((*q.shape[:-1], v.shape[-1]), q)  # the CPU kernel writes in the layout of the query


_MHA_NAMES = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
              "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
              "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
              "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def multi_head_attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any] | None:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention`` on meta: ~5 ms a call, its body
    running plain meta kernels) for batched (L, N, E) inputs with one packed input projection and
    no extra key/value biases: its size checks, then (L, N, E_out) and the attention weights."""
    (q, k, v, embed_dim, heads, in_w, in_b, bias_k, bias_v, zero_attn, _, out_w, out_b, _, padding, need_weights,
     mask, separate, *_, static_k, static_v, average, _) = bound(_MHA_NAMES, args, kwargs)
    tensors = (q, k, v, in_w, out_w)
    if not all(is_meta_float(t) for t in tensors) or q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or any(
            t is not None for t in (bias_k, bias_v, static_k, static_v, padding, mask)) or zero_attn or separate:
        return None
    if not isinstance(embed_dim, int) or not isinstance(heads, int) or heads <= 0:
        return None
    if q.shape[2] != embed_dim:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim}, but got {q.shape[2]}")
    if embed_dim % heads:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {heads}")
    if k.shape != v.shape or k.shape[1] != q.shape[1] or k.shape[2] != embed_dim:
        raise AssertionError(f"key shape {tuple(k.shape)} does not match value shape {tuple(v.shape)}")
    if tuple(in_w.shape) != (3 * embed_dim, embed_dim) or out_w.ndim != 2 or out_w.shape[1] != embed_dim:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied (in_proj_weight {list(in_w.shape)}, "
                           f"out_proj_weight {list(out_w.shape)}, embed_dim {embed_dim})")
    sized("in_proj_bias", in_b, 3 * embed_dim)
    sized("out_proj_bias", out_b, out_w.shape[0])
    out = empty_contiguous((q.shape[0], q.shape[1], out_w.shape[0]), q)
    if not need_weights:
        return out, None
    weights = (q.shape[1], q.shape[0], k.shape[0]) if average or average is None else (q.shape[1], heads, q.shape[0], k.shape[0])
    return out, empty_contiguous(weights, q)
