"""F-Encoder forward (Triton): ``_fenc_norm1_kernel`` then ``_fenc_ffn_kernel``.

A program owns ``BT`` frames of one utterance (the rows, the M dimension of every dot).

1. ``_fenc_norm1_kernel`` sweeps the bands: per band the rank-one attention of every head,
   streamed over band chunks of ``GB`` with the analytic row maximum (one pass, no
   ``[F, F]`` tile: :func:`.fenc_common._band_softmax`), the token and LayerNorm1; it
   writes ``y1`` of every band to a float32 ``(B, F, T, C)`` tensor.
2. ``_fenc_ffn_kernel`` sweeps the bands again: FFN1 of band ``f`` pulls the ``y1`` tiles
   of ``f-2 .. f+2`` (shifted loads, zero outside the bands) into ``K`` dots
   ``[BT, CK] x [CK, PK]``; FFN2 is *pushed*: ``relu(h1[f]) @ W2_j`` goes into the output
   accumulator of band ``f-j`` (a ring of five ``[BT, CK]`` tiles); band ``f-2`` is then
   complete: ``+ y1 + b2``, LayerNorm2, ``* (1 + w_t)``, stored into the
   ``(B, T, F*C)`` LSTM input.

Why two kernels and not one sweep: the first design kept the five neighbouring ``y1`` tiles
in registers, where Triton keeps them as dot operands (a 16 x 16 float32 operand tile costs
32 registers a thread in the FMA layout): 192-246 registers, 8 warps per SM. Split, the
attention kernel needs 80 registers and the FFN kernel fits one 16-warp block of 64 frames
per SM on every arch (docs/design.md#kernel-resources). The price is one float32 ``y1``
round trip, 32 bytes per band and frame written and read (about 5 KB per frame), against
about 0.4 MFLOP of FFN work per frame: the F-Encoder stays compute-bound.

Dots (``fenc_common._dot``): ``PREC`` "bf16" / "fp16" / "tf32" multiply on the matrix units
(HMMA; HGMMA on sm_90), "ieee" with float32 FMAs; accumulation is float32 in every mode.
The tensor-core modes run the band loop unpipelined (``num_stages=1``): Triton 3.6's
pipeliner fails on the tf32 wgmma dots on sm_90, and the bf16/fp16 variant spills on
sm_86/sm_89 with 3 stages; unpipelined they need 4-10 KB of shared memory instead of 85-89 KB.

With ``GRAD`` the FFN kernel is the backward's first step: instead of storing the output it
reads ``d out``, writes ``d w_t``, runs the T-Attention multiply and LayerNorm2 backward,
writes ``d r2`` (the gradient of the FFN2 output) for :mod:`.fenc_backward`, and adds
LayerNorm2's parameter gradients to its partials row.
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
    _head_params,
    _layer_norm,
    _layer_norm_bwd,
    _offsets,
    _token,
    _w1_tile,
    _w2_tile,
)


@triton.jit
def _band_y1(
    x_ptr,
    row_off,
    tmask,
    cmask,
    band,
    NF: tl.constexpr,
    x_sf,
    xmax,
    xmin,
    a,
    bh,
    u,
    wl,
    eb,
    g1,
    bn1,
    eps,
    C: tl.constexpr,
    H: tl.constexpr,
    BT: tl.constexpr,
    HP: tl.constexpr,
    GB: tl.constexpr,
):
    """``y1`` (after attention and LayerNorm1) of ``band`` as [BT, CK]; zero outside the
    bands (the FFN's zero padding)."""
    inside = band < NF
    safe = tl.minimum(band, NF - 1)
    xf = tl.load(x_ptr + row_off + safe * x_sf, mask=tmask, other=0.0).to(tl.float32)
    _, _, _, m, _ = _band_softmax(
        x_ptr, row_off, tmask, NF, x_sf, xf, xmax, xmin, a, bh, BT, HP, GB, False
    )
    n1, _ = _layer_norm(_token(xf, m, wl, eb, u, H, HP), cmask, C, eps)
    y1 = n1 * g1[None, :] + bn1[None, :]
    return tl.where(cmask[None, :] & inside, y1, 0.0)


@triton.jit
def _fenc_norm1_kernel(
    x_ptr,  # x' (B, 1, F, T), any strides
    prm_ptr,  # packed derived parameters, float32 (fenc_common.param_layout)
    y1_ptr,  # out: (B, F, T, C) float32, contiguous: y1 of every band
    n_t,
    n_tb,
    eps,
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
    row_off = b * x_sb + tt * x_st  # x element (b, 0, band, t) = row_off + band * x_sf
    wl = _channel_vec(prm_ptr, 0, C, CK)
    eb = _channel_vec(prm_ptr, 1, C, CK)
    g1 = _channel_vec(prm_ptr, 2, C, CK)
    bn1 = _channel_vec(prm_ptr, 3, C, CK)
    a, bh, u = _head_params(prm_ptr, C, H, K, P, CK, HP)
    xmax, xmin = _frame_range(x_ptr, row_off, tmask, NF, x_sf, BT, GB)
    for f in range(0, NF):
        y1 = _band_y1(
            x_ptr,
            row_off,
            tmask,
            cmask,
            f,
            NF,
            x_sf,
            xmax,
            xmin,
            a,
            bh,
            u,
            wl,
            eb,
            g1,
            bn1,
            eps,
            C,
            H,
            BT,
            HP,
            GB,
        )
        off = ((b * NF + f) * n_t + tt[:, None]) * C + cc[None, :]
        tl.store(y1_ptr + off, y1, mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _push_rest(
    a1,
    prm_f,
    acc_m1,
    acc_0,
    acc_p1,
    acc_p2,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    PREC: tl.constexpr,
):
    """FFN2 pushes of ``a1[f]`` into the accumulators of bands f-1 .. f+2 (the push into
    band f-2 is the caller's)."""
    HALF: tl.constexpr = K // 2
    acc_0 = _dot(a1, _w2_tile(prm_f, 0, C, H, K, P, CK, PK, False), acc_0, PREC)
    if HALF >= 1:
        acc_p1 = _dot(a1, _w2_tile(prm_f, -1, C, H, K, P, CK, PK, False), acc_p1, PREC)
        acc_m1 = _dot(a1, _w2_tile(prm_f, 1, C, H, K, P, CK, PK, False), acc_m1, PREC)
    if HALF >= 2:
        acc_p2 = _dot(a1, _w2_tile(prm_f, -2, C, H, K, P, CK, PK, False), acc_p2, PREC)
    return acc_m1, acc_0, acc_p1, acc_p2


@triton.jit
def _fenc_ffn_kernel(
    y1_ptr,  # (B, F, T, C) float32, contiguous: y1 (from _fenc_norm1_kernel)
    wt_ptr,  # T-Attention weights (B, F, T) if HAS_WT (else a stand-in, never read)
    prm_ptr,  # packed derived parameters, float32 (fenc_common.param_layout)
    out_ptr,  # forward: the output (B, T, F, C), any strides (the LSTM input)
    gout_ptr,  # GRAD: d out (B, T, F, C), any strides
    dwt_ptr,  # GRAD and HAS_WT: d w_t (B, F, T), any strides
    df2_ptr,  # GRAD: out: (B, F, T, C) float32, contiguous: d (FFN2 output)
    part_ptr,  # GRAD: per-program gradient partials (programs, packed size) float32
    n_t,
    n_tb,
    eps,
    total,
    n_zero,  # always 0: the weight loads depend on it, so they stay inside the band loop
    w_sb,
    w_sf,
    w_st,
    o_sb,
    o_st,
    o_sf,
    o_sc,
    dw_sb,
    dw_sf,
    dw_st,
    NF: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    BT: tl.constexpr,
    HAS_WT: tl.constexpr,
    GRAD: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tb
    tt = (pid % n_tb) * BT + tl.arange(0, BT)
    tmask = tt < n_t
    cc = tl.arange(0, CK)
    cmask = cc < C
    pp = tl.arange(0, PK)
    omask = tmask[:, None] & cmask[None, :]
    b2 = _channel_vec(prm_ptr, 4, C, CK)
    g2 = _channel_vec(prm_ptr, 5, C, CK)
    bn2 = _channel_vec(prm_ptr, 6, C, CK)
    _, _, _, o_b1, _, _ = _offsets(C, H, K, P)
    b1 = tl.load(prm_ptr + o_b1 + pp, mask=pp < P, other=0.0)
    HALF: tl.constexpr = K // 2
    zero_c = tl.zeros([BT, CK], dtype=tl.float32)
    acc_m2 = zero_c  # FFN2 output accumulators of bands f-2 .. f+2 during step f
    acc_m1 = zero_c
    acc_0 = zero_c
    acc_p1 = zero_c
    acc_p2 = zero_c
    acc_g2 = tl.zeros([CK], dtype=tl.float32)
    acc_bn2 = tl.zeros([CK], dtype=tl.float32)

    zero_p = tl.zeros([BT, PK], dtype=tl.float32)
    # matrix-unit modes: no software pipelining (module docstring); "ieee" keeps Triton's 3
    STAGES: tl.constexpr = 3 if PREC == "ieee" else 1
    for f in tl.range(0, NF + 2, num_stages=STAGES):
        # ---- FFN1 of band f from the y1 tiles of f-2 .. f+2 (zero outside the bands)
        prm_f = prm_ptr + f * n_zero
        y_0 = _band_tile(y1_ptr, b, f, NF, n_t, tt, tmask, cc, C)
        h1 = _dot(y_0, _w1_tile(prm_f, 0, C, H, K, P, CK, PK, False), zero_p, PREC)
        if HALF >= 1:
            y_m1 = _band_tile(y1_ptr, b, f - 1, NF, n_t, tt, tmask, cc, C)
            h1 = _dot(y_m1, _w1_tile(prm_f, -1, C, H, K, P, CK, PK, False), h1, PREC)
            y_p1 = _band_tile(y1_ptr, b, f + 1, NF, n_t, tt, tmask, cc, C)
            h1 = _dot(y_p1, _w1_tile(prm_f, 1, C, H, K, P, CK, PK, False), h1, PREC)
        if HALF >= 2:
            y_m2 = _band_tile(y1_ptr, b, f - 2, NF, n_t, tt, tmask, cc, C)
            h1 = _dot(y_m2, _w1_tile(prm_f, -2, C, H, K, P, CK, PK, False), h1, PREC)
            y_p2 = _band_tile(y1_ptr, b, f + 2, NF, n_t, tt, tmask, cc, C)
            h1 = _dot(y_p2, _w1_tile(prm_f, 2, C, H, K, P, CK, PK, False), h1, PREC)
        a1 = tl.where(f < NF, tl.maximum(h1 + b1[None, :], 0.0), 0.0)
        # ---- pushed through FFN2: a1[f] reaches the output of band f-j with weights W2_j.
        # On the matrix units band f-2 goes first, so its epilogue runs before the other
        # pushes (fewer live registers there); the FMA dots ("ieee") fit better all first.
        EARLY: tl.constexpr = PREC != "ieee"
        if not EARLY:
            acc_m1, acc_0, acc_p1, acc_p2 = _push_rest(
                a1, prm_f, acc_m1, acc_0, acc_p1, acc_p2, C, H, K, P, CK, PK, PREC
            )
        if HALF >= 2:
            acc_m2 = _dot(a1, _w2_tile(prm_f, 2, C, H, K, P, CK, PK, False), acc_m2, PREC)
        # ---- band f-2 is complete: residual, LayerNorm2, T-Attention multiply
        o = f - 2
        if o >= 0:
            y_res = _band_tile(y1_ptr, b, o, NF, n_t, tt, tmask, cc, C)
            n2, rstd2 = _layer_norm(y_res + acc_m2 + b2[None, :], cmask, C, eps)
            y2 = n2 * g2[None, :] + bn2[None, :]
            if HAS_WT:
                wv = tl.load(wt_ptr + b * w_sb + o * w_sf + tt * w_st, mask=tmask, other=0.0)
                scale = 1.0 + wv.to(tl.float32)
            o_off = b * o_sb + tt[:, None] * o_st + o * o_sf + cc[None, :] * o_sc
            if GRAD:
                dout = tl.load(gout_ptr + o_off, mask=omask, other=0.0).to(tl.float32)
                if HAS_WT:
                    dwt = tl.sum(dout * y2, axis=1)
                    tl.store(
                        dwt_ptr + b * dw_sb + o * dw_sf + tt * dw_st,
                        dwt.to(dwt_ptr.dtype.element_ty),
                        mask=tmask,
                    )
                    dout = dout * scale[:, None]
                acc_g2 += tl.sum(dout * n2, axis=0)
                acc_bn2 += tl.sum(dout, axis=0)
                df2 = _layer_norm_bwd(dout, n2, rstd2, g2, cmask, C)
                s_off = ((b * NF + o) * n_t + tt[:, None]) * C + cc[None, :]
                tl.store(df2_ptr + s_off, df2, mask=omask)
            else:
                if HAS_WT:
                    y2 = y2 * scale[:, None]
                tl.store(out_ptr + o_off, y2.to(out_ptr.dtype.element_ty), mask=omask)
        if EARLY:
            acc_m1, acc_0, acc_p1, acc_p2 = _push_rest(
                a1, prm_f, acc_m1, acc_0, acc_p1, acc_p2, C, H, K, P, CK, PK, PREC
            )
        acc_m2 = acc_m1
        acc_m1 = acc_0
        acc_0 = acc_p1
        acc_p1 = acc_p2
        acc_p2 = zero_c

    if GRAD:
        part = part_ptr + pid * total
        tl.store(part + 5 * C + cc, acc_g2, mask=cmask)  # norm2_weight
        tl.store(part + 6 * C + cc, acc_bn2, mask=cmask)  # norm2_bias
