"""The F-Encoder in its rank-one form (docs/design.md#f-encoder), in plain torch: forward and backward.

This is the math the fused Triton kernels implement, written once in torch so that it can be
checked against nn.MultiheadAttention semantics and against autograd, and so that the
``atfnn::freq_encoder`` op has a CPU implementation.

The identity. The lifted input is rank one, ``z_f = x_f w + b`` (x_f the band's scalar), so
with ``a_q = W_q w``, ``b_q = W_q b + bias_q`` (same for k, v) the score of token f against g
in head h is ``q_f . k_g / sqrt(d) = x_g s_f + (terms constant in g)`` with
``s_f = x_f A_h + B_h``, ``A_h = a_q.a_k / sqrt(d)``, ``B_h = b_q.a_k / sqrt(d)`` (dot products
over the head's d channels). Softmax ignores the constant terms, so the head's output is
``a_v m_f + b_v`` with ``m_f = sum_g softmax_g(s_f x_g) x_g``, and after the output
projection the attention adds ``sum_h m_f^h U_h + e`` to the token (``U_h = W_o[:, h] a_v[h]``,
``e = W_o b_v + bias_o``). The row maximum is known without a pass: ``max_g s_f x_g`` is
``s_f max(x)`` if ``s_f >= 0`` else ``s_f min(x)``. No d-wide matmul and no score tensor.

The derived parameters (:func:`derive`) are computed from the module's parameters (by
plain torch here, by one kernel on the Triton path), and the op returns the module
parameters' gradients itself: :func:`derive_vjp` is the vector-Jacobian product of
:func:`derive`, which the gradient kernel of :mod:`.fenc_params` also computes. The conv FFN is written as two matmuls
over an im2col of the k shifted copies of the tokens (``col[f, k*C + ch] = y[f + k - k//2,
ch]``, zero outside the bands); ``W1col[k*c + ch, o] = ffn1.weight[o, ch, k]`` and
``W2col[k*P + o, ch] = ffn2.weight[ch, o, k]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for exactness tests); everything else computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class Derived(NamedTuple):
    """Parameters of the rank-one form (float32, or float64 from float64 parameters)."""

    w_lift: torch.Tensor  # (c,)
    e_bias: torch.Tensor  # (c,): lift bias + W_o b_v + out_proj bias
    a_head: torch.Tensor  # (h,)
    b_head: torch.Tensor  # (h,)
    u_head: torch.Tensor  # (h, c)
    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    w1col: torch.Tensor  # (k*c, P)
    ffn1_bias: torch.Tensor
    w2col: torch.Tensor  # (k*P, c)
    ffn2_bias: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor


def derive(
    lift_weight,
    lift_bias,
    in_proj_weight,
    in_proj_bias,
    out_proj_weight,
    out_proj_bias,
    norm1_weight,
    norm1_bias,
    ffn1_weight,
    ffn1_bias,
    ffn2_weight,
    ffn2_bias,
    norm2_weight,
    norm2_bias,
    *,
    num_heads: int,
) -> Derived:
    """Module parameters (the order of ``FrequencyEncoder.op_params``) -> :class:`Derived`."""
    c = lift_weight.shape[0]
    d = c // num_heads
    dt = compute_dtype(in_proj_weight)
    w = lift_weight[:, 0].to(dt)
    b = lift_bias.to(dt)
    wq, wk, wv = in_proj_weight.to(dt).chunk(3)
    bq, _, bv = in_proj_bias.to(dt).chunk(3)
    a_q, a_k, a_v = wq @ w, wk @ w, wv @ w
    b_q, b_v = wq @ b + bq, wv @ b + bv
    scale = 1.0 / math.sqrt(d)
    a_head = (a_q * a_k).reshape(num_heads, d).sum(-1) * scale
    b_head = (b_q * a_k).reshape(num_heads, d).sum(-1) * scale
    w_o = out_proj_weight.to(dt)
    # U_h = W_o[:, h*d:(h+1)*d] @ a_v[h*d:(h+1)*d]
    u_head = (w_o.reshape(c, num_heads, d) * a_v.reshape(1, num_heads, d)).sum(-1).t()
    e_bias = b + w_o @ b_v + out_proj_bias.to(dt)
    k = ffn1_weight.shape[-1]
    w1col = ffn1_weight.to(dt).permute(2, 1, 0).reshape(k * c, -1)
    w2col = ffn2_weight.to(dt).permute(2, 1, 0).reshape(-1, c)
    return Derived(
        w,
        e_bias,
        a_head,
        b_head,
        u_head.contiguous(),
        norm1_weight.to(dt),
        norm1_bias.to(dt),
        w1col.contiguous(),
        ffn1_bias.to(dt),
        w2col.contiguous(),
        ffn2_bias.to(dt),
        norm2_weight.to(dt),
        norm2_bias.to(dt),
    )


def derive_vjp(grads: Derived, *params: torch.Tensor, num_heads: int) -> list[torch.Tensor]:
    """The vector-Jacobian product of :func:`derive`: gradients of the derived parameters
    -> gradients of the module parameters (the order of ``FrequencyEncoder.op_params``),
    each in its parameter's dtype. :mod:`.fenc_params` computes the same in one kernel.

    With ``i`` an output row of ``W_q`` (head ``h(i)``), ``s = 1/sqrt(d)``:
    ``g a_q = s gA_h a_k``, ``g a_k = s (gA_h a_q + gB_h b_q)``, ``g b_q = s gB_h a_k``,
    ``g a_v = W_o^T gU_h``, ``g W_o[o, i] = gU_h[o] a_v[i] + g e[o] b_v[i]``,
    ``g b_v = W_o^T g e``; then ``g W_q = g a_q w^T + g b_q b^T``, ``g W_k = g a_k w^T``,
    ``g W_v = g a_v w^T + g b_v b^T``, ``g w = g w_lift + W_q^T g a_q + W_k^T g a_k +
    W_v^T g a_v`` and ``g b = g e + W_q^T g b_q + W_v^T g b_v``."""
    lw, lb, ipw, ipb, opw = params[:5]
    f1w = params[8]
    c = lw.shape[0]
    d = c // num_heads
    dt = grads.w_lift.dtype
    w, b = lw[:, 0].to(dt), lb.to(dt)
    wq, wk, wv = ipw.to(dt).chunk(3)
    bq, _, bv = ipb.to(dt).chunk(3)
    w_o = opw.to(dt)
    a_q, a_k, a_v = wq @ w, wk @ w, wv @ w
    b_q, b_v = wq @ b + bq, wv @ b + bv
    scale = 1.0 / math.sqrt(d)
    g_a = grads.a_head.repeat_interleave(d)  # per row i: the gradient of its head
    g_b = grads.b_head.repeat_interleave(d)
    g_u = grads.u_head.repeat_interleave(d, dim=0)  # (c rows i, c outputs o)
    g_aq = scale * g_a * a_k
    g_ak = scale * (g_a * a_q + g_b * b_q)
    g_bq = scale * g_b * a_k
    g_av = (g_u * w_o.t()).sum(-1)
    g_e = grads.e_bias
    g_wo = g_u.t() * a_v[None, :] + g_e[:, None] * b_v[None, :]
    g_bv = w_o.t() @ g_e
    g_in_w = torch.cat(
        [
            torch.outer(g_aq, w) + torch.outer(g_bq, b),
            torch.outer(g_ak, w),
            torch.outer(g_av, w) + torch.outer(g_bv, b),
        ]
    )
    g_in_b = torch.cat([g_bq, torch.zeros_like(g_bq), g_bv])
    g_w = grads.w_lift + wq.t() @ g_aq + wk.t() @ g_ak + wv.t() @ g_av
    g_lb = g_e + wq.t() @ g_bq + wv.t() @ g_bv
    k = f1w.shape[-1]
    g_f1w = grads.w1col.reshape(k, c, -1).permute(2, 1, 0)  # [o, ch, k]
    g_f2w = grads.w2col.reshape(k, -1, c).permute(2, 1, 0)  # [ch, o, k]
    out = (
        g_w[:, None],
        g_lb,
        g_in_w,
        g_in_b,
        g_wo,
        g_e,
        grads.norm1_weight,
        grads.norm1_bias,
        g_f1w,
        grads.ffn1_bias,
        g_f2w,
        grads.ffn2_bias,
        grads.norm2_weight,
        grads.norm2_bias,
    )
    return [g.to(p.dtype).contiguous() for g, p in zip(out, params, strict=True)]


def transposed_cols(w1col: torch.Tensor, w2col: torch.Tensor, k: int):
    """The weights of the two transposed convolutions of the backward:
    ``W1T[k*P + o, ch] = W1[o, ch, k]`` and ``W2T[k*c + ch, o] = W2[ch, o, k]``."""
    c, p = w1col.shape[0] // k, w1col.shape[1]
    w1t = w1col.reshape(k, c, p).permute(0, 2, 1).reshape(k * p, c)
    w2t = w2col.reshape(k, p, c).permute(0, 2, 1).reshape(k * c, p)
    return w1t.contiguous(), w2t.contiguous()


def im2col(y: torch.Tensor, k: int, reverse: bool = False) -> torch.Tensor:
    """``y (N, F, C)`` -> ``(N, F, k*C)`` with ``[f, j*C + ch] = y[f + j - k//2, ch]``
    (``f - j + k//2`` with ``reverse``, the transposed convolution), zero outside."""
    pad = k // 2
    yp = F.pad(y, (0, 0, pad, pad))
    n_f = y.shape[1]
    shifts = range(k) if not reverse else range(k - 1, -1, -1)
    return torch.cat([yp[:, s : s + n_f] for s in shifts], dim=-1)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, F, T)`` -> ``(B*T, F)`` in the compute dtype."""
    return x[:, 0].to(compute_dtype(x)).transpose(1, 2).reshape(-1, x.shape[2])


def _heads(xf: torch.Tensor, a_head, b_head):
    """Per head: s (N, h, F), probabilities (N, h, F, G) and m (N, h, F).

    The softmax is written as the kernel computes it, with the analytic row maximum. (This
    also sidesteps a torch 2.11 inductor CPU crash, "double free or corruption", that
    ``torch.softmax`` of this product on a transposed input triggers under torch.compile.)
    """
    s = xf[:, None, :] * a_head[None, :, None] + b_head[None, :, None]
    xmax = xf.amax(-1)[:, None, None]
    xmin = xf.amin(-1)[:, None, None]
    row_max = torch.where(s >= 0, s * xmax, s * xmin)
    e = torch.exp(s[..., None] * xf[:, None, None, :] - row_max[..., None])
    prob = e / e.sum(-1, keepdim=True)
    m = (prob * xf[:, None, None, :]).sum(-1)
    return s, prob, m


def _layer_norm_stats(r: torch.Tensor, eps: float):
    mean = r.mean(-1, keepdim=True)
    rstd = torch.rsqrt(((r - mean) ** 2).mean(-1, keepdim=True) + eps)
    return (r - mean) * rstd, rstd


def _layer_norm_backward(dy, n, rstd, gamma):
    dn = dy * gamma
    return rstd * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))


def forward(x: torch.Tensor, time_weights: torch.Tensor | None, p: Derived, eps: float):
    """``x' (B, 1, F, T)`` -> ``(B, T, F, c)``, times ``1 + w_t`` if ``time_weights``
    ``(B, F, T)`` is given. Computed in float32, returned in x's dtype."""
    b, _, n_f, t = x.shape
    c = p.w_lift.shape[0]
    k = p.w1col.shape[0] // c
    xf = _frames(x)
    _, _, m = _heads(xf, p.a_head, p.b_head)
    r = xf[..., None] * p.w_lift + torch.einsum("nhf,hc->nfc", m, p.u_head) + p.e_bias
    n1, _ = _layer_norm_stats(r, eps)
    y1 = n1 * p.norm1_weight + p.norm1_bias
    a1 = torch.relu(im2col(y1, k) @ p.w1col + p.ffn1_bias)
    f2 = im2col(a1, k) @ p.w2col + p.ffn2_bias
    n2, _ = _layer_norm_stats(y1 + f2, eps)
    y2 = n2 * p.norm2_weight + p.norm2_bias
    if time_weights is not None:
        y2 = y2 * (1 + time_weights.to(y2.dtype).transpose(1, 2).reshape(-1, n_f, 1))
    return y2.reshape(b, t, n_f, c).to(x.dtype)


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    p: Derived,
    eps: float,
    rnd=None,
    recompute_rnd=None,
):
    """Gradients of :func:`forward`: ``(dx, d time_weights or None, Derived of grads)``,
    by the hand-derived formulas the Triton backward kernel uses. Parameter gradients are
    returned in the parameters' dtype.

    ``rnd`` (a function of a tensor, default none) rounds the operands of the four products
    the backward FFN kernels run in the dots' precision (``d a1``, ``d W1``, ``d W2``,
    ``d y1``; ``h1`` and its ReLU mask stay exact): the tests emulate tf32 / bf16 / fp16
    with it. ``recompute_rnd`` rounds the operands of the forward recompute's two products
    (``h1 = y1col W1col``, ``a1col W2col``: the ``GRAD`` FFN kernel's dots), so ``h1``, the
    ReLU mask and LayerNorm2's statistics are those of a rounded recompute, as the forward
    computed them in the same mode."""
    rd = rnd or (lambda t: t)
    rr = recompute_rnd or (lambda t: t)
    b, _, n_f, t = x.shape
    c = p.w_lift.shape[0]
    k = p.w1col.shape[0] // c
    w1t, w2t = transposed_cols(p.w1col, p.w2col, k)
    xf = _frames(x)
    s, prob, m = _heads(xf, p.a_head, p.b_head)
    r = xf[..., None] * p.w_lift + torch.einsum("nhf,hc->nfc", m, p.u_head) + p.e_bias
    n1, rstd1 = _layer_norm_stats(r, eps)
    y1 = n1 * p.norm1_weight + p.norm1_bias
    y1col = im2col(y1, k)
    h1 = rr(y1col) @ rr(p.w1col) + p.ffn1_bias
    a1 = torch.relu(h1)
    a1col = im2col(a1, k)
    n2, rstd2 = _layer_norm_stats(y1 + rr(a1col) @ rr(p.w2col) + p.ffn2_bias, eps)
    y2 = n2 * p.norm2_weight + p.norm2_bias

    dout = grad_out.to(xf.dtype).reshape(-1, n_f, c)
    d_time = None
    if time_weights is not None:
        wt = time_weights.to(xf.dtype).transpose(1, 2).reshape(-1, n_f, 1)
        d_time = (dout * y2).sum(-1).reshape(b, t, n_f).transpose(1, 2).to(time_weights.dtype)
        dout = dout * (1 + wt)
    dgamma2, dbeta2 = (dout * n2).sum((0, 1)), dout.sum((0, 1))
    df2 = _layer_norm_backward(dout, n2, rstd2, p.norm2_weight)  # = d r2
    dw2col = torch.einsum("nfj,nfc->jc", rd(a1col), rd(df2))
    db2 = df2.sum((0, 1))
    dh1 = (rd(im2col(df2, k, reverse=True)) @ rd(w2t)) * (h1 > 0)
    dw1col = torch.einsum("nfj,nfo->jo", rd(y1col), rd(dh1))
    db1 = dh1.sum((0, 1))
    dy1 = df2 + rd(im2col(dh1, k, reverse=True)) @ rd(w1t)
    dgamma1, dbeta1 = (dy1 * n1).sum((0, 1)), dy1.sum((0, 1))
    dr = _layer_norm_backward(dy1, n1, rstd1, p.norm1_weight)

    dx = (dr * p.w_lift).sum(-1)
    dw_lift = (dr * xf[..., None]).sum((0, 1))
    de = dr.sum((0, 1))
    du = torch.einsum("nfc,nhf->hc", dr, m)
    dm = torch.einsum("nfc,hc->nhf", dr, p.u_head)
    var = (prob * (xf[:, None, None, :] - m[..., None]) ** 2).sum(-1)
    ds = dm * var
    da = (ds * xf[:, None, :]).sum((0, 2))
    dbh = ds.sum((0, 2))
    dx = dx + (ds * p.a_head[None, :, None]).sum(1)
    coef = dm[..., None] * prob * (1 + s[..., None] * (xf[:, None, None, :] - m[..., None]))
    dx = dx + coef.sum((1, 2))
    dx = dx.reshape(b, t, n_f).transpose(1, 2).unsqueeze(1).to(x.dtype)
    grads = Derived(
        dw_lift, de, da, dbh, du, dgamma1, dbeta1, dw1col, db1, dw2col, db2, dgamma2, dbeta2
    )
    grads = Derived(*(g.to(q.dtype) for g, q in zip(grads, p, strict=True)))
    return dx, d_time, grads
