"""Band attention on the CPU: the op's implementation for non-CUDA tensors, forward and
backward (float32 math, results in the input dtypes)."""

from __future__ import annotations

import torch

from .. import dispatch
from .. import native as native_core
from . import native, reference


def use_native(source, weight, target) -> bool:
    """Whether this call takes the native core (:mod:`.native`): under every backend but
    ``aten``, for real (untraced) tensors of a size and dtype it runs."""
    if dispatch.get_backend() == "aten" or not native.traceless(source):
        return False
    if native.unsupported(source, weight, target) is None:
        return True
    native_core.warn_missing()
    return False


def band_attention_cpu(source, weight, bias, target, time_axis):
    """The forward: the op's implementation for non-CUDA tensors (the native core, or the
    reference's ATen ops)."""
    if use_native(source, weight, target):
        out, wmap, _ = native.forward(source, weight, bias, target)
        return out, wmap
    axis = "time" if time_axis else "freq"
    out, wmap = reference.band_attention(source, weight, bias, target, axis=axis)
    return out.contiguous(), wmap.contiguous()


def band_attention_backward_cpu(
    grad_out, grad_map, source, weight, bias, target, time_axis, saved_a=None
):
    """The backward formulas in plain torch (float32 math, results in the input dtypes).
    ``saved_a``: the forward's float32 window activations ``sigmoid(conv)`` (B, C, n1, n2),
    kept by :class:`BandAttentionFunction`; None: recomputed (the custom op saves only its
    inputs)."""
    if use_native(source, weight, target):
        return native.backward(grad_out, grad_map, source, weight, bias, target, saved_a)
    kf, kt = weight.shape[-2:]
    group = kt if time_axis else kf
    src, w32, b32 = source.float(), weight.float(), bias.float()
    a = reference.window_activations(src, w32, b32) if saved_a is None else saved_a
    w_full = reference.spread(a, w32, "time" if time_axis else "freq")
    if grad_out is None:  # the output was not used
        grad_out = torch.zeros_like(source if target is None else target)
    g = grad_out.float()
    if target is None:
        dtgt = g * (1 + w_full[:, None])
        dpos = (g * src).sum(dim=1)
    else:
        dtgt = g * (1 + w_full.transpose(1, 2)[..., None])
        dpos = (g * target.float()).sum(dim=-1).transpose(1, 2)
    if grad_map is not None:
        dpos = dpos + grad_map.float()
    b, f, t = dpos.shape
    if time_axis:
        dwin = dpos.reshape(b, f, t // group, group).sum(dim=3)
    else:
        dwin = dpos.reshape(b, f // group, group, t).sum(dim=2)
    dz = dwin[:, None] / a.shape[1] * a * (1 - a)
    # the three gradients of the strided conv in one call, as autograd does
    dsrc, dweight, dbias = torch.ops.aten.convolution_backward(
        dz, src, w32, [w32.shape[0]], (kf, kt), (0, 0), (1, 1), False, (0, 0), 1, (True,) * 3
    )
    if target is None:
        dsrc = dsrc + dtgt
        dtgt_out = torch.empty(0, dtype=source.dtype, device=source.device)
    else:
        dtgt_out = dtgt.to(target.dtype)
    return dsrc.to(source.dtype), dtgt_out, dweight.to(weight.dtype), dbias.to(bias.dtype)


class BandAttentionFunction(torch.autograd.Function):
    """The CPU implementation with autograd, for eager calls: the forward is the reference's
    own functions (the same values, bit for bit) and keeps the window
    activations ``sigmoid(conv)`` (one float per window and output channel: 1/5 and 1/8 of
    the spectrogram's size at the default kernels), which the custom op's backward must
    recompute; the backward is :func:`band_attention_backward_cpu`, whose sums over the
    window groups replace the autograd of ``repeat_interleave``."""

    @staticmethod
    def forward(ctx, source, weight, bias, target, time_axis: bool):
        ctx.set_materialize_grads(False)
        ctx.time_axis = time_axis
        if use_native(source, weight, target):
            out, w, a = native.forward(source, weight, bias, target, keep=True)
            ctx.save_for_backward(source, weight, bias, target, a)
            return out, w
        a = reference.window_activations(source, weight, bias)
        w = reference.spread(a, weight, "time" if time_axis else "freq")
        out = reference.reweight(source, w, target)
        ctx.set_materialize_grads(False)
        ctx.time_axis = time_axis
        keep = a if a.dtype == torch.float32 and source.dtype == torch.float32 else None
        ctx.save_for_backward(source, weight, bias, target, keep)
        return out, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_map):
        source, weight, bias, target, keep = ctx.saved_tensors
        if grad_out is None and grad_map is None:
            return None, None, None, None, None
        dsrc, dtgt, dweight, dbias = band_attention_backward_cpu(
            grad_out, grad_map, source, weight, bias, target, ctx.time_axis, keep
        )
        return dsrc, dweight, dbias, (None if target is None else dtgt), None


def band_attention(source, weight, bias, target, time_axis: bool):
    """Band attention of CPU tensors in eager mode: with autograd
    (:class:`BandAttentionFunction`) when a gradient is wanted, else the plain forward
    (nothing kept)."""
    tensors = (source, weight, bias, target)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return BandAttentionFunction.apply(source, weight, bias, target, time_axis)
    return band_attention_cpu(source, weight, bias, target, time_axis)
