"""The F-Encoder on the CPU: the op's implementation for non-CUDA tensors, forward and backward
(docs/design.md#cpu-implementation).

The math is the rank-one form of :mod:`.rank_one` with its hand-derived backward; this module
computes it the way a CPU is fast at it (each choice measured, see the design doc):

* **Attention at head size 1.** The score of band f against band g in head h is
  ``s_f x_g`` (:mod:`.rank_one`), so each head is a scaled-dot-product attention with
  queries ``s``, keys = values = the frame's band values, head size 1 and scale 1. ATen's
  fused CPU flash-attention kernel (``_scaled_dot_product_flash_attention_for_cpu`` and its
  backward) runs it blocked in the cache and multithreaded: no ``(frames, heads, F, F)``
  tensor (210 MB at B = 32) is ever written. The keys are centred on the frame's mean
  (softmax does not see a shift of the keys), which keeps the exponent's range, and the
  variance the backward forms, to the spread of one frame's bands.
* **Planar layout.** Every activation is ``(frames, channels, bands)``, bands innermost: the
  LayerNorms reduce over 8 planes of contiguous bands (vectorised, where ATen's
  ``layer_norm`` over a last dimension of 8 is not), and the conv FFN runs as two oneDNN
  ``conv1d`` calls (and ``convolution_backward``) with no im2col.
* **Recompute, save nothing.** Like the Triton kernels, the backward receives only the op's
  inputs and recomputes the forward's activations.

Everything is computed in float32 (float64 for float64 inputs) and returned in x's dtype,
like the Triton kernels; every step is one ATen call over the whole batch, so it scales with
torch's intra-op threads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dispatch
from .. import native as native_core
from . import native
from .rank_one import Derived, compute_dtype

_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_sdpa_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_conv_backward = torch.ops.aten.convolution_backward
_CL = torch.channels_last


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, F, T)`` -> ``(B*T, F)`` in the compute dtype, contiguous."""
    return x[:, 0].transpose(1, 2).to(compute_dtype(x)).reshape(-1, x.shape[2]).contiguous()


def _attention_inputs(xf: torch.Tensor, a_head: torch.Tensor, b_head: torch.Tensor):
    """Queries ``s (N, h, F, 1)``, centred keys ``(N, h, F, 1)`` and the centres ``(N, 1)``."""
    n, n_f = xf.shape
    h = a_head.shape[0]
    center = xf.mean(-1, keepdim=True)
    keys = (xf - center)[:, None, :, None].expand(n, h, n_f, 1).contiguous()
    s = torch.addcmul(b_head[None, :, None], xf[:, None, :], a_head[None, :, None])
    return s[..., None], keys, center


def _convs(p: Derived, k: int, c: int):
    """The FFN's conv weights from the im2col layout of :class:`.rank_one.Derived`, as
    ``conv2d`` weights over a height of 1 (channels last): ``W1 (P, c, 1, k)``,
    ``W2 (c, P, 1, k)``."""
    n_p = p.w1col.shape[1]
    w1 = p.w1col.reshape(k, c, n_p).permute(2, 1, 0)[:, :, None]
    w2 = p.w2col.reshape(k, n_p, c).permute(2, 1, 0)[:, :, None]
    return w1.contiguous(memory_format=_CL), w2.contiguous(memory_format=_CL)


def _channel_norm(r: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out=None):
    """LayerNorm over the channels of a planar ``(N, C, F)`` tensor: ``(y, n, rstd)`` with
    ``n`` the normalised input; ``y`` is written into ``out`` (any layout) if given."""
    # two passes, as torch's layer_norm: (var_mean over a non-inner dimension of 8 was 9x
    # slower than both passes together, measured at B = 32)
    d = r - r.mean(1, keepdim=True)
    rstd = (d * d).mean(1, keepdim=True).add_(eps).rsqrt_()
    n = d.mul_(rstd)
    if out is None:
        return torch.addcmul(bias[None, :, None], n, weight[None, :, None]), n, rstd
    return torch.addcmul(bias[None, :, None], n, weight[None, :, None], out=out), n, rstd


def _channel_norm_backward(dy: torch.Tensor, n: torch.Tensor, rstd: torch.Tensor, weight):
    """``(d r, d weight, d bias)`` of :func:`_channel_norm`."""
    w = weight[None, :, None]
    dyn = dy * n
    d_weight = dyn.sum((0, 2))
    d_bias = dy.sum((0, 2))
    dn = dy * w
    # d r = rstd (dn - mean_c(dn) - n mean_c(dn n)), with dn n = (dy n) w
    dr = dn.sub_(dn.mean(1, keepdim=True)).sub_(n * dyn.mul_(w).mean(1, keepdim=True))
    return dr.mul_(rstd), d_weight, d_bias


def _lift(p: Derived) -> torch.Tensor:
    """``(c, 1 + h)``: the token is ``r = L @ [x, m_1 .. m_h] + e`` per band."""
    return torch.cat([p.w_lift[:, None], p.u_head.t()], 1)


def _encode(xf: torch.Tensor, p: Derived, eps: float, keep: bool):
    """The forward to LayerNorm2's output ``(N, c, F)``; with ``keep``, what the backward
    needs."""
    c = p.w_lift.shape[0]
    k = p.w1col.shape[0] // c
    pad = k // 2
    w1, w2 = _convs(p, k, c)
    s, keys, center = _attention_inputs(xf, p.a_head, p.b_head)
    m, lse = _sdpa(s, keys, keys, 0.0, False, scale=1.0)  # (N, h, F, 1): centred mean
    feats = torch.cat([xf[:, None], m[..., 0] + center[:, None]], 1)  # (N, 1 + h, F)
    # (N, c, F); a broadcast matmul: 7x faster than the same product as a 1x1 conv1d
    r = torch.matmul(_lift(p), feats).add_(p.e_bias[:, None])
    # LayerNorm1 writes straight into the convs' layout: (N, C, 1, F) channels last
    y1_cl = torch.empty_like(r[:, :, None], memory_format=_CL)
    y1, n1, rstd1 = _channel_norm(r, p.norm1_weight, p.norm1_bias, eps, out=y1_cl[:, :, 0])
    a1 = F.conv2d(y1_cl, w1, p.ffn1_bias, padding=(0, pad)).relu_()
    f2 = F.conv2d(a1, w2, p.ffn2_bias, padding=(0, pad))[:, :, 0]
    r2 = torch.add(y1, f2, out=torch.empty_like(r))  # back to planar for the LayerNorm
    y2, n2, rstd2 = _channel_norm(r2, p.norm2_weight, p.norm2_bias, eps)
    if not keep:
        return y2, None
    return y2, (s, keys, m, lse, feats, n1, rstd1, y1_cl, a1, n2, rstd2, w1, w2)


def _time_scale(time_weights: torch.Tensor, dtype, n_f: int) -> torch.Tensor:
    """``(B, F, T)`` -> ``(B*T, 1, F)`` weights in the compute dtype."""
    return time_weights.to(dtype).transpose(1, 2).reshape(-1, 1, n_f)


def _to_output(y: torch.Tensor, b: int, t: int, dtype) -> torch.Tensor:
    """Planar ``(B*T, c, F)`` -> the op's ``(B, T, F, c)``."""
    n, c, n_f = y.shape
    out = torch.empty((b, t, n_f, c), dtype=dtype)
    out.view(n, n_f, c).copy_(y.transpose(1, 2))
    return out


def use_native(x: torch.Tensor, p: Derived) -> bool:
    """Whether this call takes the native core (:mod:`.native`): under every backend but
    ``aten``, where it is built and runs these sizes and this dtype. Where it is not built,
    says so once (:func:`..native.warn_missing`)."""
    if dispatch.get_backend() == "aten" or not native.traceless(x):
        return False
    if native.unsupported(x, p) is None:
        return True
    native_core.warn_missing()
    return False


def forward(x: torch.Tensor, time_weights: torch.Tensor | None, p: Derived, eps: float):
    """``x' (B, 1, F, T)`` -> ``(B, T, F, c)``, times ``1 + w_t`` with ``time_weights``
    ``(B, F, T)``: the same function as :func:`.rank_one.forward`."""
    if use_native(x, p):
        return native.forward(x, time_weights, p, eps)[0]
    b, _, n_f, t = x.shape
    xf = _frames(x)
    y2, _ = _encode(xf, p, eps, keep=False)
    if time_weights is not None:
        y2 = y2.addcmul_(y2, _time_scale(time_weights, y2.dtype, n_f))
    return _to_output(y2, b, t, x.dtype)


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    p: Derived,
    eps: float,
):
    """Gradients of :func:`forward`: ``(dx, d time_weights or None, Derived of grads)``,
    the same as :func:`.rank_one.backward` (the forward's activations recomputed)."""
    if use_native(x, p):
        return native.backward(grad_out, x, time_weights, p, eps)
    xf = _frames(x)
    y2, saved = _encode(xf, p, eps, keep=True)
    return _backward(grad_out, x.shape, x.dtype, xf, y2, saved, time_weights, p)


def _backward(grad_out, shape, dtype, xf, y2, saved, time_weights, p: Derived):
    """:func:`backward` from the forward's activations (``_encode(..., keep=True)``)."""
    b, _, n_f, t = shape
    c = p.w_lift.shape[0]
    k = p.w1col.shape[0] // c
    pad = k // 2
    n_all = xf.shape[0]
    s, keys, m, lse, feats, n1, rstd1, y1, a1, n2, rstd2, w1, w2 = saved

    dout = grad_out.reshape(n_all, n_f, c).transpose(1, 2).to(xf.dtype, copy=True)
    d_time = None
    if time_weights is not None:
        d_time = (dout * y2).sum(1).reshape(b, t, n_f).transpose(1, 2).to(time_weights.dtype)
        dout.addcmul_(dout, _time_scale(time_weights, xf.dtype, n_f))
    dr2, dgamma2, dbeta2 = _channel_norm_backward(dout, n2, rstd2, p.norm2_weight)
    conv = dict(stride=[1, 1], padding=[0, pad], dilation=[1, 1], transposed=False)
    conv.update(output_padding=[0, 0], groups=1, output_mask=[True] * 3)
    dr2_cl = dr2[:, :, None].contiguous(memory_format=_CL)
    da1, dw2, db2 = _conv_backward(dr2_cl, a1, w2, [c], **conv)
    dh1 = torch.ops.aten.threshold_backward(da1, a1, 0)  # ReLU: a1 > 0 where h1 > 0
    dy1, dw1, db1 = _conv_backward(dh1, y1, w1, [w1.shape[0]], **conv)
    dy1 = torch.add(dr2, dy1[:, :, 0], out=torch.empty_like(dr2))  # planar
    dr, dgamma1, dbeta1 = _channel_norm_backward(dy1, n1, rstd1, p.norm1_weight)
    # r = L @ [x, m_1 .. m_h] + e, per band
    d_feats = torch.matmul(_lift(p).t(), dr)  # (N, 1 + h, F)
    d_lift = torch.tensordot(dr, feats, dims=([0, 2], [0, 2]))  # (c, 1 + h)
    de = dr.sum((0, 2))
    dm = d_feats[:, 1:, :, None].contiguous()  # (N, h, F, 1); also d centre = sum_f dm
    ds, dk, dv = _sdpa_backward(dm, s, keys, keys, m, lse, 0.0, False, scale=1.0)
    dkeys = (dk + dv)[..., 0].sum(1)  # (N, F): the centred keys, both roles, every head
    ds = ds[..., 0]  # (N, h, F)
    da = (ds * xf[:, None, :]).sum((0, 2))
    dbh = ds.sum((0, 2))
    dx = d_feats[:, 0] + torch.einsum("nhf,h->nf", ds, p.a_head)
    # the centring: keys = x - mean(x), m = m_centred + mean(x)
    d_center = dm[..., 0].sum((1, 2)) - dkeys.sum(-1)
    dx += dkeys + (d_center / n_f)[:, None]
    dx = dx.reshape(b, t, n_f).transpose(1, 2).unsqueeze(1).to(dtype)
    grads = Derived(
        d_lift[:, 0],
        de,
        da,
        dbh,
        d_lift[:, 1:].t(),
        dgamma1,
        dbeta1,
        dw1[:, :, 0].permute(2, 1, 0).reshape(k * c, -1),
        db1,
        dw2[:, :, 0].permute(2, 1, 0).reshape(-1, c),
        db2,
        dgamma2,
        dbeta2,
    )
    grads = Derived(*(g.to(q.dtype) for g, q in zip(grads, p, strict=True)))
    return dx, d_time, grads


class FreqEncoderFunction(torch.autograd.Function):
    """The CPU implementation with autograd, for eager calls: the forward keeps the
    activations the backward needs (about 20 floats per band and frame at the default
    size: 90 MB for a batch of 32 segments) instead of recomputing them, which the custom
    op (that saves only its inputs, like the Triton kernels) must do. Same values as the
    op's CPU branch, bit for bit."""

    @staticmethod
    def forward(ctx, x, time_weights, num_heads: int, eps: float, *params):
        from .rank_one import derive

        b, _, n_f, t = x.shape
        with torch.autocast("cpu", enabled=False):
            p = derive(*(q.detach() for q in params), num_heads=num_heads)
            if use_native(x, p):  # keeps the attention's softmax statistics only
                out, stats = native.forward(x, time_weights, p, eps, keep_stats=True)
                ctx.state = ("native", stats, p, num_heads, eps)
                ctx.save_for_backward(time_weights, x, *params)
                return out
            xf = _frames(x)
            y2, saved = _encode(xf, p, eps, keep=True)
            out = y2
            if time_weights is not None:
                out = y2.addcmul(y2, _time_scale(time_weights, y2.dtype, n_f))
            out = _to_output(out, b, t, x.dtype)
        ctx.state = (x.shape, x.dtype, xf, y2, saved, p, num_heads)
        ctx.save_for_backward(time_weights, None, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from .rank_one import derive_vjp

        time_weights, x, *params = ctx.saved_tensors
        state, ctx.state = ctx.state, None
        with torch.autocast("cpu", enabled=False):
            if state[0] == "native":
                _, stats, p, num_heads, eps = state
                dx, d_time, grads = native.backward(grad_out, x, time_weights, p, eps, stats)
                d_params = derive_vjp(grads, *params, num_heads=num_heads)
                return dx, d_time, None, None, *d_params
            shape, dtype, xf, y2, saved, p, num_heads = state
            dx, d_time, grads = _backward(grad_out, shape, dtype, xf, y2, saved, time_weights, p)
            d_params = derive_vjp(grads, *params, num_heads=num_heads)
        return dx, d_time, None, None, *d_params


def freq_encoder(x, *params, num_heads: int, eps: float, time_weights=None):
    """The F-Encoder of CPU tensors in eager mode, the signature of
    :func:`.reference.freq_encoder`: with autograd (:class:`FreqEncoderFunction`) when a
    gradient is wanted, else :func:`forward` (nothing kept)."""
    tensors = (x, time_weights, *params)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return FreqEncoderFunction.apply(x, time_weights, num_heads, eps, *params)
    with torch.autocast("cpu", enabled=False):
        from .rank_one import derive

        return forward(x, time_weights, derive(*params, num_heads=num_heads), eps)
