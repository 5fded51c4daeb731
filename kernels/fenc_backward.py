"""F-Encoder backward (Triton): the kernels after ``_fenc_norm1_kernel`` and the ``GRAD``
``_fenc_ffn_kernel`` of :mod:`.fenc_forward`.

The backward of band ``f``'s attention needs ``d y1`` of ``f``, which needs the FFN
gradients of the bands up to ``f+4``, which need the forward of the bands up to ``f+8``; and
the gradient reaching ``x_g`` through the softmax sums over *every* band ``f``. So the
backward runs as separate launches that hand each other float32 band tensors
``(B, F, T, ·)``, each written once:

1. ``_fenc_norm1_kernel`` (forward module): ``y1``.
2. ``_fenc_ffn_kernel`` with ``GRAD``: ``d w_t``, LayerNorm2 backward -> ``d r2``.
3. :func:`_fenc_bwd_ffn_kernel` with ``DY1``: per band ``f`` it loads the ``y1`` and
   ``d r2`` tiles of ``f-2 .. f+2`` (shifted loads), recomputes ``h1``, forms ``d h1`` and
   pushes ``d h1 @ W1_j^T`` into a 5-tile ring; ``d y1 = d r2 + ring`` is stored when a
   band is complete; ``d b1``, ``d b2``.
4. the same kernel with ``WGRAD``: the same recompute, then ``d W1_j += y1[f+j]^T d h1``
   and ``d W2_j += relu(h1)^T d r2[f-j]`` (ten register accumulators). Split from 3
   because together they need 188 registers a thread; apart, 128 and 74.
5. :func:`_fenc_bwd_norm1_kernel`: per band, the attention recomputed with its variance
   (one pass, shifted around the row-maximum value), LayerNorm1 recomputed, its backward,
   and the *direct* attention gradients (``d lift``, ``d e``, ``d U``, ``d A``, ``d B``
   partials, ``d x`` but the softmax term); it writes ``beta = (dm/den)(1 - s m)`` and
   ``gamma = (dm/den) s`` per head.
6. :func:`_fenc_bwd_softmax_kernel`: the softmax term, a transposed attention
   ``d x_g += sum_h sum_f exp(s_f x_g - M_f) (beta_f + gamma_f x_g)`` streamed over band
   chunks like the forward.

Parameter gradients: every kernel adds its own fields to its program's row of one partials
buffer (the packed layout of :mod:`.fenc_common`); ``_fenc_param_grad_kernel``
(:mod:`.fenc_params`) sums the rows in a fixed order, so the result is deterministic run to
run, and turns them into the module parameters' gradients.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .fenc_common import (
    _band_softmax,
    _band_tile,
    _channel_vec,
    _frame_range,
    _head_col,
    _head_params,
    _head_row,
    _layer_norm,
    _layer_norm_bwd,
    _offsets,
    _token,
    _w1_tile,
    _w2_tile,
)


@triton.jit
def _store_w_grad(
    part,
    acc,
    j: tl.constexpr,
    which: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
):
    """Store a [CK, PK] d W1_j (which=1) or [PK, CK] d W2_j (which=2) partial."""
    _, _, _, _, o_w1, o_w2 = _offsets(C, H, K, P)
    if which == 1:
        ch = tl.arange(0, CK)[:, None]
        o = tl.arange(0, PK)[None, :]
        dst = part + o_w1 + ((j + K // 2) * C + ch) * P + o
    else:
        o = tl.arange(0, PK)[:, None]
        ch = tl.arange(0, CK)[None, :]
        dst = part + o_w2 + ((j + K // 2) * P + o) * C + ch
    tl.store(dst, acc, mask=(ch < C) & (o < P))


@triton.jit
def _fenc_bwd_ffn_kernel(
    prm_ptr,  # packed derived parameters, float32
    y1_ptr,  # (B, F, T, C) float32: y1 (from the GRAD sweep)
    df2_ptr,  # (B, F, T, C) float32: d r2 (from the GRAD sweep)
    dy1_ptr,  # out: (B, F, T, C) float32: d y1
    part_ptr,  # per-program gradient partials (programs, packed size) float32
    n_t,
    n_tb,
    total,
    NF: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    BT: tl.constexpr,
    PREC: tl.constexpr,
    DY1: tl.constexpr,
    WGRAD: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    cc = tl.arange(0, CK)
    cmask = cc < C
    pp = tl.arange(0, PK)
    _, _, _, o_b1, _, _ = _offsets(C, H, K, P)
    b1 = tl.load(prm_ptr + o_b1 + pp, mask=pp < P, other=0.0)
    HALF: tl.constexpr = K // 2
    zero_w1 = tl.zeros([CK, PK], dtype=tl.float32)
    zero_w2 = tl.zeros([PK, CK], dtype=tl.float32)
    w1_0 = _w1_tile(prm_ptr, 0, C, H, K, P, CK, PK, False)
    w2t_0 = _w2_tile(prm_ptr, 0, C, H, K, P, CK, PK, True)
    dw1_0 = zero_w1
    dw2_0 = zero_w2
    if HALF >= 1:
        w1_m1 = _w1_tile(prm_ptr, -1, C, H, K, P, CK, PK, False)
        w1_p1 = _w1_tile(prm_ptr, 1, C, H, K, P, CK, PK, False)
        w2t_m1 = _w2_tile(prm_ptr, -1, C, H, K, P, CK, PK, True)
        w2t_p1 = _w2_tile(prm_ptr, 1, C, H, K, P, CK, PK, True)
        dw1_m1 = zero_w1
        dw1_p1 = zero_w1
        dw2_m1 = zero_w2
        dw2_p1 = zero_w2
    if HALF >= 2:
        w1_m2 = _w1_tile(prm_ptr, -2, C, H, K, P, CK, PK, False)
        w1_p2 = _w1_tile(prm_ptr, 2, C, H, K, P, CK, PK, False)
        w2t_m2 = _w2_tile(prm_ptr, -2, C, H, K, P, CK, PK, True)
        w2t_p2 = _w2_tile(prm_ptr, 2, C, H, K, P, CK, PK, True)
        dw1_m2 = zero_w1
        dw1_p2 = zero_w1
        dw2_m2 = zero_w2
        dw2_p2 = zero_w2
    acc_b1 = tl.zeros([PK], dtype=tl.float32)
    acc_b2 = tl.zeros([CK], dtype=tl.float32)
    zero_c = tl.zeros([BT, CK], dtype=tl.float32)
    d_m2 = zero_c  # d y1 ring: bands f-2 .. f+2
    d_m1 = zero_c
    d_0 = zero_c
    d_p1 = zero_c
    d_p2 = zero_c

    for f in range(0, NF + 2):
        # y1[f + j] and d r2[f - j]: the FFN1 inputs and the FFN2 output grads of band f
        y_0 = _band_tile(y1_ptr, b, f, NF, n_t, tt, tmask, cc, C)
        g_0 = _band_tile(df2_ptr, b, f, NF, n_t, tt, tmask, cc, C)
        h1 = tl.dot(y_0, w1_0, input_precision=PREC) + b1[None, :]
        da1 = tl.dot(g_0, w2t_0, input_precision=PREC)
        if HALF >= 1:
            y_m1 = _band_tile(y1_ptr, b, f - 1, NF, n_t, tt, tmask, cc, C)
            y_p1 = _band_tile(y1_ptr, b, f + 1, NF, n_t, tt, tmask, cc, C)
            g_m1 = _band_tile(df2_ptr, b, f + 1, NF, n_t, tt, tmask, cc, C)  # j = -1
            g_p1 = _band_tile(df2_ptr, b, f - 1, NF, n_t, tt, tmask, cc, C)  # j = +1
            h1 += tl.dot(y_m1, w1_m1, input_precision=PREC)
            h1 += tl.dot(y_p1, w1_p1, input_precision=PREC)
            da1 += tl.dot(g_m1, w2t_m1, input_precision=PREC)
            da1 += tl.dot(g_p1, w2t_p1, input_precision=PREC)
        if HALF >= 2:
            y_m2 = _band_tile(y1_ptr, b, f - 2, NF, n_t, tt, tmask, cc, C)
            y_p2 = _band_tile(y1_ptr, b, f + 2, NF, n_t, tt, tmask, cc, C)
            g_m2 = _band_tile(df2_ptr, b, f + 2, NF, n_t, tt, tmask, cc, C)
            g_p2 = _band_tile(df2_ptr, b, f - 2, NF, n_t, tt, tmask, cc, C)
            h1 += tl.dot(y_m2, w1_m2, input_precision=PREC)
            h1 += tl.dot(y_p2, w1_p2, input_precision=PREC)
            da1 += tl.dot(g_m2, w2t_m2, input_precision=PREC)
            da1 += tl.dot(g_p2, w2t_p2, input_precision=PREC)
        live = (f < NF) & tmask[:, None] & (pp < P)[None, :]
        a1 = tl.where(live, tl.maximum(h1, 0.0), 0.0)
        dh1 = tl.where(live & (h1 > 0), da1, 0.0)
        acc_b1 += tl.sum(dh1, axis=0)
        acc_b2 += tl.sum(g_0, axis=0)
        if WGRAD:
            a1t = tl.trans(a1)
            dw1_0 += tl.dot(tl.trans(y_0), dh1, input_precision=PREC)
            dw2_0 += tl.dot(a1t, g_0, input_precision=PREC)
            if HALF >= 1:
                dw1_m1 += tl.dot(tl.trans(y_m1), dh1, input_precision=PREC)
                dw1_p1 += tl.dot(tl.trans(y_p1), dh1, input_precision=PREC)
                dw2_m1 += tl.dot(a1t, g_m1, input_precision=PREC)
                dw2_p1 += tl.dot(a1t, g_p1, input_precision=PREC)
            if HALF >= 2:
                dw1_m2 += tl.dot(tl.trans(y_m2), dh1, input_precision=PREC)
                dw1_p2 += tl.dot(tl.trans(y_p2), dh1, input_precision=PREC)
                dw2_m2 += tl.dot(a1t, g_m2, input_precision=PREC)
                dw2_p2 += tl.dot(a1t, g_p2, input_precision=PREC)
        if DY1:
            d_0 += tl.dot(dh1, tl.trans(w1_0), input_precision=PREC)
            if HALF >= 1:
                d_m1 += tl.dot(dh1, tl.trans(w1_m1), input_precision=PREC)
                d_p1 += tl.dot(dh1, tl.trans(w1_p1), input_precision=PREC)
            if HALF >= 2:
                d_m2 += tl.dot(dh1, tl.trans(w1_m2), input_precision=PREC)
                d_p2 += tl.dot(dh1, tl.trans(w1_p2), input_precision=PREC)

        # band f-2 has all its contributions: d y1 = d r2 (residual) + the FFN1 path
        o = f - 2
        if (o >= 0) and DY1:
            dy1 = d_m2 + _band_tile(df2_ptr, b, o, NF, n_t, tt, tmask, cc, C)
            off = ((b * NF + o) * n_t + tt[:, None]) * C + cc[None, :]
            tl.store(dy1_ptr + off, dy1, mask=tmask[:, None] & cmask[None, :])
        d_m2 = d_m1
        d_m1 = d_0
        d_0 = d_p1
        d_p1 = d_p2
        d_p2 = zero_c

    part = part_ptr + pid * total
    if DY1:
        tl.store(part + o_b1 + pp, acc_b1, mask=pp < P)
        tl.store(part + 4 * C + cc, acc_b2, mask=cmask)  # ffn2_bias
    if WGRAD:
        _store_w_grad(part, dw1_0, 0, 1, C, H, K, P, CK, PK)
        _store_w_grad(part, dw2_0, 0, 2, C, H, K, P, CK, PK)
        if HALF >= 1:
            _store_w_grad(part, dw1_m1, -1, 1, C, H, K, P, CK, PK)
            _store_w_grad(part, dw1_p1, 1, 1, C, H, K, P, CK, PK)
            _store_w_grad(part, dw2_m1, -1, 2, C, H, K, P, CK, PK)
            _store_w_grad(part, dw2_p1, 1, 2, C, H, K, P, CK, PK)
        if HALF >= 2:
            _store_w_grad(part, dw1_m2, -2, 1, C, H, K, P, CK, PK)
            _store_w_grad(part, dw1_p2, 2, 1, C, H, K, P, CK, PK)
            _store_w_grad(part, dw2_m2, -2, 2, C, H, K, P, CK, PK)
            _store_w_grad(part, dw2_p2, 2, 2, C, H, K, P, CK, PK)


@triton.jit
def _fenc_bwd_norm1_kernel(
    x_ptr,  # x' (B, 1, F, T), any strides
    prm_ptr,  # packed derived parameters, float32
    dy1_ptr,  # (B, F, T, C) float32: d y1
    dxd_ptr,  # out: (B, F, T) float32: d x without the softmax term
    bg_ptr,  # out: (B, F, T, 2, HP) float32: beta, gamma per head
    part_ptr,  # per-program gradient partials (programs, packed size) float32
    n_t,
    n_tb,
    eps,
    total,
    x_sb,
    x_sf,
    x_st,
    NF: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    HP: tl.constexpr,
    BT: tl.constexpr,
    GB: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    cc = tl.arange(0, CK)
    cmask = cc < C
    hh = tl.arange(0, HP)
    row_off = b * x_sb + tt * x_st
    wl = _channel_vec(prm_ptr, 0, C, CK)
    eb = _channel_vec(prm_ptr, 1, C, CK)
    g1 = _channel_vec(prm_ptr, 2, C, CK)
    a, bh, u = _head_params(prm_ptr, C, H, K, P, CK, HP)
    xmax, xmin = _frame_range(x_ptr, row_off, tmask, NF, x_sf, BT, GB)
    acc_wl = tl.zeros([CK], dtype=tl.float32)
    acc_e = tl.zeros([CK], dtype=tl.float32)
    acc_g1 = tl.zeros([CK], dtype=tl.float32)
    acc_bn1 = tl.zeros([CK], dtype=tl.float32)
    acc_a = tl.zeros([HP], dtype=tl.float32)
    acc_bh = tl.zeros([HP], dtype=tl.float32)
    acc_u = tl.zeros([HP, CK], dtype=tl.float32)

    for f in range(0, NF):
        xf = tl.load(x_ptr + row_off + f * x_sf, mask=tmask, other=0.0).to(tl.float32)
        s, _, den, m, var = _band_softmax(
            x_ptr, row_off, tmask, NF, x_sf, xf, xmax, xmin, a, bh, BT, HP, GB, True
        )
        n1, rstd1 = _layer_norm(_token(xf, m, wl, eb, u, H, HP), cmask, C, eps)
        off = ((b * NF + f) * n_t + tt[:, None]) * C + cc[None, :]
        dy1 = tl.load(dy1_ptr + off, mask=tmask[:, None] & cmask[None, :], other=0.0)
        acc_g1 += tl.sum(dy1 * n1, axis=0)
        acc_bn1 += tl.sum(dy1, axis=0)
        dr = _layer_norm_bwd(dy1, n1, rstd1, g1, cmask, C)
        acc_wl += tl.sum(dr * xf[:, None], axis=0)
        acc_e += tl.sum(dr, axis=0)
        dm = tl.zeros([BT, HP], dtype=tl.float32)
        for h in tl.static_range(H):
            u_h = _head_row(u, h, HP)
            acc_u += tl.where(
                hh[:, None] == h, tl.sum(_head_col(m, h, HP)[:, None] * dr, axis=0)[None, :], 0.0
            )
            dm += tl.where(hh[None, :] == h, tl.sum(dr * u_h[None, :], axis=1)[:, None], 0.0)
        ds = dm * var
        acc_a += tl.sum(ds * xf[:, None], axis=0)
        acc_bh += tl.sum(ds, axis=0)
        dxd = tl.sum(dr * wl[None, :], axis=1) + tl.sum(ds * a[None, :], axis=1)
        tl.store(dxd_ptr + (b * NF + f) * n_t + tt, dxd, mask=tmask)
        alpha = dm / den
        bg_off = ((b * NF + f) * n_t + tt[:, None]) * 2 * HP + hh[None, :]
        tl.store(bg_ptr + bg_off, alpha * (1.0 - s * m), mask=tmask[:, None])
        tl.store(bg_ptr + bg_off + HP, alpha * s, mask=tmask[:, None])

    o_a, o_bh, o_u, _, _, _ = _offsets(C, H, K, P)
    part = part_ptr + pid * total
    tl.store(part + cc, acc_wl, mask=cmask)  # w_lift
    tl.store(part + C + cc, acc_e, mask=cmask)  # e_bias
    tl.store(part + 2 * C + cc, acc_g1, mask=cmask)  # norm1_weight
    tl.store(part + 3 * C + cc, acc_bn1, mask=cmask)  # norm1_bias
    tl.store(part + o_a + hh, acc_a, mask=hh < H)
    tl.store(part + o_bh + hh, acc_bh, mask=hh < H)
    tl.store(
        part + o_u + hh[:, None] * C + cc[None, :],
        acc_u,
        mask=(hh < H)[:, None] & cmask[None, :],
    )


@triton.jit
def _fenc_bwd_softmax_kernel(
    x_ptr,  # x' (B, 1, F, T), any strides
    prm_ptr,  # packed derived parameters, float32
    dxd_ptr,  # (B, F, T) float32: d x without the softmax term
    bg_ptr,  # (B, F, T, 2, HP) float32: beta, gamma per head
    dx_ptr,  # out: d x' (B, 1, F, T), any strides, x's dtype
    n_t,
    n_tb,
    x_sb,
    x_sf,
    x_st,
    d_sb,
    d_sf,
    d_st,
    NF: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    HP: tl.constexpr,
    BT: tl.constexpr,
    GB: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    hh = tl.arange(0, HP)
    row_off = b * x_sb + tt * x_st
    a, bh, _ = _head_params(prm_ptr, C, H, K, P, CK, HP)
    xmax, xmin = _frame_range(x_ptr, row_off, tmask, NF, x_sf, BT, GB)

    for g in range(0, NF):
        xg = tl.load(x_ptr + row_off + g * x_sf, mask=tmask, other=0.0).to(tl.float32)
        acc = tl.zeros([BT, HP, GB], dtype=tl.float32)
        for f0 in range(0, NF, GB):
            f = f0 + tl.arange(0, GB)
            fmask = f < NF
            lmask = tmask[:, None] & fmask[None, :]
            xf = tl.load(x_ptr + row_off[:, None] + f[None, :] * x_sf, mask=lmask, other=0.0).to(
                tl.float32
            )
            s = xf[:, None, :] * a[None, :, None] + bh[None, :, None]  # [BT, HP, GB]
            xref = tl.where(s >= 0, xmax[:, None, None], xmin[:, None, None])
            e = tl.exp(s * (xg[:, None, None] - xref))  # exp(s_f x_g - M_f)
            bg_off = ((b * NF + f[None, None, :]) * n_t + tt[:, None, None]) * 2 * HP + hh[
                None, :, None
            ]
            m3 = lmask[:, None, :]
            beta = tl.load(bg_ptr + bg_off, mask=m3, other=0.0)
            gamma = tl.load(bg_ptr + bg_off + HP, mask=m3, other=0.0)
            acc += tl.where(m3, e * (beta + gamma * xg[:, None, None]), 0.0)
        dx = tl.load(dxd_ptr + (b * NF + g) * n_t + tt, mask=tmask, other=0.0)
        dx += tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(
            dx_ptr + b * d_sb + g * d_sf + tt * d_st,
            dx.to(dx_ptr.dtype.element_ty),
            mask=tmask,
        )
