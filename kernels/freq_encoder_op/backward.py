"""F-Encoder backward (Triton): the kernels after ``_fenc_norm1_kernel`` and the ``GRAD``
``_fenc_ffn_kernel`` of :mod:`.fenc_forward`.

The backward of band ``f``'s attention needs ``d y1`` of ``f``, which needs the FFN
gradients of the bands up to ``f+4``, which need the forward of the bands up to ``f+8``; and
the gradient reaching ``x_g`` through the softmax sums over *every* band ``f``. So the
backward runs as separate launches that hand each other float32 band tensors
``(B, F, T, ·)``, each written once:

1. ``_fenc_norm1_kernel`` (forward module): ``y1``.
2. ``_fenc_ffn_kernel`` with ``GRAD``: ``d w_t``, LayerNorm2 backward -> ``d r2``.
3. :func:`_fenc_bwd_dh1_kernel`: per band ``f`` one im2col tile of ``y1`` (bands f-2 ..
   f+2) and one of ``d r2`` (f+2 .. f-2), each gathered by one load; ``h1`` (exact float32,
   for the ReLU mask), ``d a1`` and ``d h1`` as single dots with K = ``K * C``; ``d h1`` is
   stored; the weight gradients are two transposed dots into ``[K*C, P]`` accumulators;
   ``d b1``, ``d b2``.
4. :func:`_fenc_bwd_dy1_kernel`: ``d y1 = d r2 + sum_j d h1[f-j] W1_j^T`` (K dots a band,
   gathering the bands whose FFN1 read band ``f``).
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

from .common import (
    _band_softmax,
    _band_tile,
    _channel_vec,
    _dot,
    _frame_range,
    _head_col,
    _head_params,
    _head_row,
    _layer_norm,
    _layer_norm_bwd,
    _offsets,
    _token,
    _w1_tile,
)


@triton.jit
def _band_cols(
    ptr,
    b,
    f,
    NF: tl.constexpr,
    n_t,
    tt,
    tmask,
    C: tl.constexpr,
    K: tl.constexpr,
    KC: tl.constexpr,
    SIGN: tl.constexpr,
):
    """The im2col tile ``[BT, KC]`` of a (B, F, T, C) float32 scratch around band ``f``:
    column ``q = jj * C + ch`` (``jj`` < K) holds channel ``ch`` of band
    ``f + SIGN * (jj - K//2)``; columns past ``K * C`` and bands outside hold zeros."""
    q = tl.arange(0, KC)
    band = f + SIGN * (q // C - K // 2)
    ok = (q < K * C) & (band >= 0) & (band < NF)
    off = ((b * NF + band[None, :]) * n_t + tt[:, None]) * C + (q % C)[None, :]
    return tl.load(ptr + off, mask=tmask[:, None] & ok[None, :], other=0.0)


@triton.jit
def _fenc_bwd_dh1_kernel(
    prm_ptr,  # packed derived parameters, float32
    y1_ptr,  # (B, F, T, C) float32: y1 (from _fenc_norm1_kernel)
    df2_ptr,  # (B, F, T, C) float32: d r2 (from the GRAD FFN sweep)
    dh1_ptr,  # out: (B, F, T, P) d h1, float32 (bf16 / fp16 with 16-bit PREC)
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
    KC: tl.constexpr,
    PK: tl.constexpr,
    BT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per band ``f``, as two im2col dots (rows: frames; K dim: ``KC >= K * C``):
    ``h1 = Y1col @ W1col + b1`` (the recompute) and ``d a1 = dR2col @ W2col'``, then
    ``d h1 = [h1 > 0] d a1`` (stored for :func:`_fenc_bwd_dy1_kernel`), and the weight
    gradients as transposed dots ``d W1col += Y1col^T d h1``, ``d W2col' += dR2col^T
    relu(h1)``, with ``d b1`` and ``d b2`` (the centre columns of ``dR2col``).

    ``h1`` is an exact float32 dot (``ieee``, FMA) in every mode, the other three run
    ``PREC``: a rounded ``h1`` flips the ReLU mask ``h1 > 0`` where ``|h1|`` is near 0 and
    changes which gradient is computed (docs/design.md, F-Encoder kernels, Precision)."""
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    q = tl.arange(0, KC)[:, None]  # im2col row of the weight tiles: jj * C + ch
    o = tl.arange(0, PK)[None, :]
    pp = tl.arange(0, PK)
    wmask = (q < K * C) & (o < P)
    _, _, _, o_b1, o_w1, o_w2 = _offsets(C, H, K, P)
    w1_off = o_w1 + q * P + o  # [q, o] = ffn1.weight[o, ch, jj]
    w2_off = o_w2 + ((q // C) * P + o) * C + q % C  # [q, o] = ffn2.weight[ch, o, jj]
    w1 = tl.load(prm_ptr + w1_off, mask=wmask, other=0.0)
    w2 = tl.load(prm_ptr + w2_off, mask=wmask, other=0.0)
    b1 = tl.load(prm_ptr + o_b1 + pp, mask=pp < P, other=0.0)
    live = tmask[:, None] & (pp < P)[None, :]
    acc_w1 = tl.zeros([KC, PK], dtype=tl.float32)
    acc_w2 = tl.zeros([KC, PK], dtype=tl.float32)
    acc_b1 = tl.zeros([PK], dtype=tl.float32)
    acc_g = tl.zeros([KC], dtype=tl.float32)
    for f in range(0, NF):
        yc = _band_cols(y1_ptr, b, f, NF, n_t, tt, tmask, C, K, KC, 1)
        gc = _band_cols(df2_ptr, b, f, NF, n_t, tt, tmask, C, K, KC, -1)
        # exact h1 (FMA) for the ReLU mask: see the docstring
        h1 = _dot(yc, w1, tl.zeros([BT, PK], dtype=tl.float32), "ieee") + b1[None, :]
        da1 = _dot(gc, w2, tl.zeros([BT, PK], dtype=tl.float32), PREC)
        on = live & (h1 > 0)
        a1 = tl.where(on, h1, 0.0)
        dh1 = tl.where(on, da1, 0.0)
        acc_b1 += tl.sum(dh1, axis=0)
        acc_g += tl.sum(gc, axis=0)
        acc_w1 = _dot(tl.trans(yc), dh1, acc_w1, PREC)
        acc_w2 = _dot(tl.trans(gc), a1, acc_w2, PREC)
        off = ((b * NF + f) * n_t + tt[:, None]) * P + pp[None, :]
        tl.store(dh1_ptr + off, dh1.to(dh1_ptr.dtype.element_ty), mask=live)

    part = part_ptr + pid * total
    tl.store(part + o_b1 + pp, acc_b1, mask=pp < P)
    qq = tl.arange(0, KC)
    centre = (qq // C == K // 2) & (qq < K * C)  # band f itself: sum of d r2 = d b2
    tl.store(part + 4 * C + qq % C, acc_g, mask=centre)  # ffn2_bias
    tl.store(part + w1_off, acc_w1, mask=wmask)
    tl.store(part + w2_off, acc_w2, mask=wmask)


@triton.jit
def _fenc_bwd_dy1_kernel(
    prm_ptr,  # packed derived parameters, float32
    df2_ptr,  # (B, F, T, C) float32: d r2 (the residual's share of d y1)
    dh1_ptr,  # (B, F, T, P) d h1 (from _fenc_bwd_dh1_kernel)
    dy1_ptr,  # out: (B, F, T, C) float32: d y1
    n_t,
    n_tb,
    NF: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    BT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``d y1[f] = d r2[f] + sum_jj d h1[f - jj + K//2] @ W1_jj^T``: per band ``K`` dots
    ``[BT, PK] @ [PK, CK]`` gathering the bands whose FFN1 read band ``f``."""
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    cc = tl.arange(0, CK)
    cmask = cc < C
    pp = tl.arange(0, PK)
    HALF: tl.constexpr = K // 2
    for f in range(0, NF):
        acc = _band_tile(df2_ptr, b, f, NF, n_t, tt, tmask, cc, C)
        for jj in tl.static_range(K):
            band = f + HALF - jj
            ok = (band >= 0) & (band < NF)
            off = ((b * NF + band) * n_t + tt[:, None]) * P + pp[None, :]
            dh = tl.load(dh1_ptr + off, mask=ok & tmask[:, None] & (pp < P)[None, :], other=0.0)
            w1t = _w1_tile(prm_ptr, jj - HALF, C, H, K, P, CK, PK, True)
            acc = _dot(dh.to(tl.float32), w1t, acc, PREC)
        off = ((b * NF + f) * n_t + tt[:, None]) * C + cc[None, :]
        tl.store(dy1_ptr + off, acc, mask=tmask[:, None] & cmask[None, :])


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
