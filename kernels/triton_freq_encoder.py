"""Fused frequency encoder: ``atfnn::freq_encoder`` (+ ``atfnn::freq_encoder_backward``).

One program loops over frames (a persistent grid); per frame it computes the whole F-Encoder
of SPEC section 2 in registers, in the rank-one form of :mod:`.freq_encoder_math`:

1. the frame's F band values ``x`` (one strided column of ``x' (B, 1, F, T)``);
2. per head, ``s = x A_h + B_h``, the probabilities ``exp(s_f x_g - max_g) / den`` as one
   ``[F, F]`` tile (the row max is analytic: ``s_f max(x)`` or ``s_f min(x)``), and
   ``m_f = sum_g p_fg x_g``; the token is ``x w + sum_h m^h U_h + e``;
3. LayerNorm over the c channels;
4. the conv FFN as two ``tl.dot``: the im2col of the k shifted copies is gathered from a
   small per-program scratch buffer (global memory, L1/L2 resident), so the dots are
   ``[F, k*c] x [k*c, 32]`` and ``[F, k*32] x [k*32, c]`` with every dim padded to >= 16;
5. add & LayerNorm, times ``1 + w_t`` (T-Attention weights, when given), stored straight into
   the ``(B, T, F, c)`` = ``(B, T, F*c)`` LSTM input, feature index ``f*c + ch``.

No ``[B*T, heads, F, F]`` tensor exists in global memory, forward or backward. The backward
kernel recomputes the frame's forward, then runs the hand-derived gradients of
:func:`.freq_encoder_math.backward`; parameter gradients accumulate in registers per program
and are written as per-program partials that the host reduces with ``torch.sum`` (fixed
order: deterministic). The gradients are those of the derived (rank-one) parameters;
autograd carries them to the module's parameters through :func:`.freq_encoder_math.derive`.

Precision: all math in float32. ``tl.dot`` uses ``input_precision="ieee"`` for float32
inputs (exact parity with the reference) and tf32 for bf16/fp16 inputs. The output takes
x's dtype. Offsets are 32-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from . import freq_encoder_math as fm
from ._triton_utils import MAX_OFFSET, launcher, max_offset, plain_torch

NUM_WARPS = 8


@triton.jit
def _frame_heads_and_norm1(
    xv, fmask, cc, cmask, wl, e, g1, bn1, a_ptr, bh_ptr, u_ptr, eps,
    C: tl.constexpr, H: tl.constexpr,
):  # fmt: skip
    """Token pre-norm ``r`` -> LayerNorm1: returns (y1, n1, rstd1)."""
    xmax = tl.max(tl.where(fmask, xv, -float("inf")), axis=0)
    xmin = tl.min(tl.where(fmask, xv, float("inf")), axis=0)
    r = xv[:, None] * wl[None, :] + e[None, :]
    for hh in tl.static_range(H):
        a_h = tl.load(a_ptr + hh)
        b_h = tl.load(bh_ptr + hh)
        s = xv * a_h + b_h
        mx = tl.where(s >= 0, s * xmax, s * xmin)
        ex = tl.exp(s[:, None] * xv[None, :] - mx[:, None])
        ex = tl.where(fmask[None, :], ex, 0.0)
        m = tl.sum(ex * xv[None, :], axis=1) / tl.sum(ex, axis=1)
        u = tl.load(u_ptr + hh * C + cc, mask=cmask, other=0.0)
        r += m[:, None] * u[None, :]
    mean = tl.sum(tl.where(cmask[None, :], r, 0.0), axis=1) / C
    diff = tl.where(cmask[None, :], r - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    n1 = diff * rstd[:, None]
    return n1 * g1[None, :] + bn1[None, :], n1, rstd


@triton.jit
def _gather_shifted(
    base_ptr, fr, n_f, ROW: tl.constexpr, CH: tl.constexpr, K: tl.constexpr,
    JP: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """im2col from a scratch tile with row stride ROW: column j = (shift j // CH, channel
    j % CH) holds ``tile[f + shift - K//2]`` (``f - shift + K//2`` with REVERSE), zero
    outside [0, n_f) and for j >= K*CH."""
    j = tl.arange(0, JP)
    shift = j // CH
    if REVERSE:
        src = fr[:, None] - shift[None, :] + K // 2
    else:
        src = fr[:, None] + shift[None, :] - K // 2
    ok = (src >= 0) & (src < n_f) & (j < K * CH)[None, :]
    return tl.load(base_ptr + src * ROW + (j % CH)[None, :], mask=ok, other=0.0)


@triton.jit
def _load_weights(
    w1_ptr, w2_ptr, C: tl.constexpr, K: tl.constexpr, P: tl.constexpr, CP: tl.constexpr,
    PP: tl.constexpr, CKP: tl.constexpr, PKP: tl.constexpr,
):  # fmt: skip
    """The two im2col weight tiles, zero-padded: W1col [CKP, PP] and W2col [PKP, CP]."""
    j1 = tl.arange(0, CKP)
    po = tl.arange(0, PP)
    w1 = tl.load(
        w1_ptr + j1[:, None] * P + po[None, :],
        mask=(j1 < C * K)[:, None] & (po < P)[None, :], other=0.0,
    )  # fmt: skip
    j2 = tl.arange(0, PKP)
    cc = tl.arange(0, CP)
    w2 = tl.load(
        w2_ptr + j2[:, None] * C + cc[None, :],
        mask=(j2 < P * K)[:, None] & (cc < C)[None, :], other=0.0,
    )  # fmt: skip
    return w1, w2


@triton.jit
def _frame_forward(
    xv, fmask, n_f, cc, cmask, po, wl, e, g1, bn1, b1, b2, w1, w2, a_ptr, bh_ptr, u_ptr,
    y1_buf, a1_buf, eps, C: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
    P: tl.constexpr, FP: tl.constexpr, CP: tl.constexpr, PP: tl.constexpr,
    CKP: tl.constexpr, PKP: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One frame up to LayerNorm2's normalised values; returns what the backward reuses:
    (y1col, h1, a1col, n1, rstd1, n2, rstd2)."""
    y1, n1, rstd1 = _frame_heads_and_norm1(
        xv, fmask, cc, cmask, wl, e, g1, bn1, a_ptr, bh_ptr, u_ptr, eps, C, H
    )
    fr = tl.arange(0, FP)
    tl.store(y1_buf + fr[:, None] * CP + cc[None, :], y1)
    tl.debug_barrier()
    y1col = _gather_shifted(y1_buf, fr, n_f, CP, C, K, CKP, False)
    h1 = tl.dot(y1col, w1, input_precision=PREC) + b1[None, :]
    tl.store(a1_buf + fr[:, None] * PP + po[None, :], tl.maximum(h1, 0.0))
    tl.debug_barrier()
    a1col = _gather_shifted(a1_buf, fr, n_f, PP, P, K, PKP, False)
    r2 = y1 + tl.dot(a1col, w2, input_precision=PREC) + b2[None, :]
    mean2 = tl.sum(tl.where(cmask[None, :], r2, 0.0), axis=1) / C
    diff2 = tl.where(cmask[None, :], r2 - mean2[:, None], 0.0)
    rstd2 = 1.0 / tl.sqrt(tl.sum(diff2 * diff2, axis=1) / C + eps)
    return y1col, h1, a1col, n1, rstd1, diff2 * rstd2[:, None], rstd2


@triton.jit
def _fenc_fwd_kernel(
    x_ptr, wt_ptr, out_ptr, scratch_ptr,
    wl_ptr, e_ptr, a_ptr, bh_ptr, u_ptr, g1_ptr, bn1_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    g2_ptr, bn2_ptr,
    n_frames, n_t, n_f, eps,
    x_sb, x_sf, x_st, w_sb, w_sf, w_st, o_sb, o_st, o_sf, o_sc,
    C: tl.constexpr, H: tl.constexpr, K: tl.constexpr, P: tl.constexpr,
    FP: tl.constexpr, CP: tl.constexpr, PP: tl.constexpr, CKP: tl.constexpr,
    PKP: tl.constexpr, HAS_WT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    fr = tl.arange(0, FP)
    fmask = fr < n_f
    cc = tl.arange(0, CP)
    cmask = cc < C
    po = tl.arange(0, PP)
    pmask = po < P
    wl = tl.load(wl_ptr + cc, mask=cmask, other=0.0)
    e = tl.load(e_ptr + cc, mask=cmask, other=0.0)
    g1 = tl.load(g1_ptr + cc, mask=cmask, other=0.0)
    bn1 = tl.load(bn1_ptr + cc, mask=cmask, other=0.0)
    g2 = tl.load(g2_ptr + cc, mask=cmask, other=0.0)
    bn2 = tl.load(bn2_ptr + cc, mask=cmask, other=0.0)
    b1 = tl.load(b1_ptr + po, mask=pmask, other=0.0)
    b2 = tl.load(b2_ptr + cc, mask=cmask, other=0.0)
    w1, w2 = _load_weights(w1_ptr, w2_ptr, C, K, P, CP, PP, CKP, PKP)
    y1_buf = scratch_ptr + pid * (FP * CP + FP * PP)
    a1_buf = y1_buf + FP * CP
    omask = fmask[:, None] & cmask[None, :]

    n = pid
    while n < n_frames:  # frames pid, pid + nprog, ...
        bi = n // n_t
        ti = n % n_t
        xv = tl.load(x_ptr + bi * x_sb + fr * x_sf + ti * x_st, mask=fmask, other=0.0)
        _, _, _, _, _, n2, _ = _frame_forward(
            xv.to(tl.float32), fmask, n_f, cc, cmask, po, wl, e, g1, bn1, b1, b2, w1, w2,
            a_ptr, bh_ptr, u_ptr, y1_buf, a1_buf, eps, C, H, K, P, FP, CP, PP, CKP, PKP, PREC,
        )  # fmt: skip
        y2 = n2 * g2[None, :] + bn2[None, :]
        if HAS_WT:
            wv = tl.load(wt_ptr + bi * w_sb + fr * w_sf + ti * w_st, mask=fmask, other=0.0)
            y2 = y2 * (1.0 + wv.to(tl.float32)[:, None])
        tl.store(
            out_ptr + bi * o_sb + ti * o_st + fr[:, None] * o_sf + cc[None, :] * o_sc,
            y2.to(out_ptr.dtype.element_ty), mask=omask,
        )  # fmt: skip
        tl.debug_barrier()  # the scratch is rewritten by the next frame
        n += nprog


@triton.jit
def _fenc_bwd_kernel(
    gout_ptr, x_ptr, wt_ptr, dx_ptr, dwt_ptr, scratch_ptr, part_ptr,
    wl_ptr, e_ptr, a_ptr, bh_ptr, u_ptr, g1_ptr, bn1_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    g2_ptr, bn2_ptr, w1t_ptr, w2t_ptr,
    n_frames, n_t, n_f, eps,
    x_sb, x_sf, x_st, w_sb, w_sf, w_st, g_sb, g_st, g_sf, g_sc,
    dx_sb, dx_sf, dx_st, dw_sb, dw_sf, dw_st,
    C: tl.constexpr, H: tl.constexpr, K: tl.constexpr, P: tl.constexpr,
    FP: tl.constexpr, CP: tl.constexpr, PP: tl.constexpr, CKP: tl.constexpr,
    PKP: tl.constexpr, HP: tl.constexpr, HAS_WT: tl.constexpr, PREC: tl.constexpr,
    TOTAL: tl.constexpr, O_WL: tl.constexpr, O_E: tl.constexpr, O_A: tl.constexpr,
    O_B: tl.constexpr, O_U: tl.constexpr, O_G1: tl.constexpr, O_BN1: tl.constexpr,
    O_W1: tl.constexpr, O_B1: tl.constexpr, O_W2: tl.constexpr, O_B2: tl.constexpr,
    O_G2: tl.constexpr, O_BN2: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    fr = tl.arange(0, FP)
    fmask = fr < n_f
    cc = tl.arange(0, CP)
    cmask = cc < C
    po = tl.arange(0, PP)
    pmask = po < P
    hv = tl.arange(0, HP)
    wl = tl.load(wl_ptr + cc, mask=cmask, other=0.0)
    e = tl.load(e_ptr + cc, mask=cmask, other=0.0)
    g1 = tl.load(g1_ptr + cc, mask=cmask, other=0.0)
    bn1 = tl.load(bn1_ptr + cc, mask=cmask, other=0.0)
    g2 = tl.load(g2_ptr + cc, mask=cmask, other=0.0)
    bn2 = tl.load(bn2_ptr + cc, mask=cmask, other=0.0)
    b1 = tl.load(b1_ptr + po, mask=pmask, other=0.0)
    b2 = tl.load(b2_ptr + cc, mask=cmask, other=0.0)
    w1, w2 = _load_weights(w1_ptr, w2_ptr, C, K, P, CP, PP, CKP, PKP)
    # W2T has W1col's shape and W1T has W2col's: the same loader serves
    w2t, w1t = _load_weights(w2t_ptr, w1t_ptr, C, K, P, CP, PP, CKP, PKP)
    j1 = tl.arange(0, CKP)
    j2 = tl.arange(0, PKP)

    y1_buf = scratch_ptr + pid * 2 * (FP * CP + FP * PP)
    a1_buf = y1_buf + FP * CP
    df2_buf = a1_buf + FP * PP
    dh1_buf = df2_buf + FP * CP
    omask = fmask[:, None] & cmask[None, :]

    acc_wl = tl.zeros([CP], dtype=tl.float32)
    acc_e = tl.zeros([CP], dtype=tl.float32)
    acc_a = tl.zeros([HP], dtype=tl.float32)
    acc_b = tl.zeros([HP], dtype=tl.float32)
    acc_u = tl.zeros([HP, CP], dtype=tl.float32)
    acc_g1 = tl.zeros([CP], dtype=tl.float32)
    acc_bn1 = tl.zeros([CP], dtype=tl.float32)
    acc_w1 = tl.zeros([CKP, PP], dtype=tl.float32)
    acc_b1 = tl.zeros([PP], dtype=tl.float32)
    acc_w2 = tl.zeros([PKP, CP], dtype=tl.float32)
    acc_b2 = tl.zeros([CP], dtype=tl.float32)
    acc_g2 = tl.zeros([CP], dtype=tl.float32)
    acc_bn2 = tl.zeros([CP], dtype=tl.float32)

    n = pid
    while n < n_frames:  # frames pid, pid + nprog, ...
        bi = n // n_t
        ti = n % n_t
        # ---- recompute the frame's forward
        xv = tl.load(x_ptr + bi * x_sb + fr * x_sf + ti * x_st, mask=fmask, other=0.0)
        xv = xv.to(tl.float32)
        y1col, h1, a1col, n1, rstd1, n2, rstd2 = _frame_forward(
            xv, fmask, n_f, cc, cmask, po, wl, e, g1, bn1, b1, b2, w1, w2,
            a_ptr, bh_ptr, u_ptr, y1_buf, a1_buf, eps, C, H, K, P, FP, CP, PP, CKP, PKP, PREC,
        )  # fmt: skip

        # ---- T-Attention multiply and LayerNorm2
        dout = tl.load(
            gout_ptr + bi * g_sb + ti * g_st + fr[:, None] * g_sf + cc[None, :] * g_sc,
            mask=omask, other=0.0,
        ).to(tl.float32)  # fmt: skip
        if HAS_WT:
            wv = tl.load(wt_ptr + bi * w_sb + fr * w_sf + ti * w_st, mask=fmask, other=0.0)
            y2 = n2 * g2[None, :] + bn2[None, :]
            dwt = tl.sum(dout * y2, axis=1)
            tl.store(
                dwt_ptr + bi * dw_sb + fr * dw_sf + ti * dw_st,
                dwt.to(dwt_ptr.dtype.element_ty), mask=fmask,
            )  # fmt: skip
            dout = dout * (1.0 + wv.to(tl.float32)[:, None])
        acc_g2 += tl.sum(dout * n2, axis=0)
        acc_bn2 += tl.sum(dout, axis=0)
        dn2 = dout * g2[None, :]
        df2 = rstd2[:, None] * (
            dn2 - (tl.sum(dn2, axis=1) / C)[:, None] - n2 * (tl.sum(dn2 * n2, axis=1) / C)[:, None]
        )
        df2 = tl.where(omask, df2, 0.0)

        # ---- conv FFN backward
        acc_b2 += tl.sum(df2, axis=0)
        acc_w2 += tl.dot(tl.trans(a1col), df2, input_precision=PREC)
        tl.store(df2_buf + fr[:, None] * CP + cc[None, :], df2)
        tl.debug_barrier()
        df2col = _gather_shifted(df2_buf, fr, n_f, CP, C, K, CKP, True)
        da1 = tl.dot(df2col, w2t, input_precision=PREC)
        dh1 = tl.where((h1 > 0) & fmask[:, None] & pmask[None, :], da1, 0.0)
        acc_b1 += tl.sum(dh1, axis=0)
        acc_w1 += tl.dot(tl.trans(y1col), dh1, input_precision=PREC)
        tl.store(dh1_buf + fr[:, None] * PP + po[None, :], dh1)
        tl.debug_barrier()
        dh1col = _gather_shifted(dh1_buf, fr, n_f, PP, P, K, PKP, True)
        dy1 = df2 + tl.dot(dh1col, w1t, input_precision=PREC)
        dy1 = tl.where(omask, dy1, 0.0)

        # ---- LayerNorm1 and the rank-one attention
        acc_g1 += tl.sum(dy1 * n1, axis=0)
        acc_bn1 += tl.sum(dy1, axis=0)
        dn1 = dy1 * g1[None, :]
        dr = rstd1[:, None] * (
            dn1 - (tl.sum(dn1, axis=1) / C)[:, None] - n1 * (tl.sum(dn1 * n1, axis=1) / C)[:, None]
        )
        dr = tl.where(omask, dr, 0.0)
        dx = tl.sum(dr * wl[None, :], axis=1)
        acc_wl += tl.sum(dr * xv[:, None], axis=0)
        acc_e += tl.sum(dr, axis=0)
        xmax = tl.max(tl.where(fmask, xv, -float("inf")), axis=0)
        xmin = tl.min(tl.where(fmask, xv, float("inf")), axis=0)
        for hh in tl.static_range(H):
            a_h = tl.load(a_ptr + hh)
            b_h = tl.load(bh_ptr + hh)
            s = xv * a_h + b_h
            mx = tl.where(s >= 0, s * xmax, s * xmin)
            ex = tl.exp(s[:, None] * xv[None, :] - mx[:, None])
            ex = tl.where(fmask[None, :], ex, 0.0)
            prob = ex / tl.sum(ex, axis=1)[:, None]
            m = tl.sum(prob * xv[None, :], axis=1)
            u = tl.load(u_ptr + hh * C + cc, mask=cmask, other=0.0)
            acc_u += tl.where(hv[:, None] == hh, tl.sum(dr * m[:, None], axis=0)[None, :], 0.0)
            dm = tl.sum(dr * u[None, :], axis=1)
            centred = xv[None, :] - m[:, None]
            ds = dm * tl.sum(prob * centred * centred, axis=1)
            acc_a += tl.where(hv == hh, tl.sum(ds * xv, axis=0), 0.0)
            acc_b += tl.where(hv == hh, tl.sum(ds, axis=0), 0.0)
            dx += ds * a_h
            coef = dm[:, None] * prob * (1.0 + s[:, None] * centred)
            dx += tl.sum(coef, axis=0)
        tl.store(
            dx_ptr + bi * dx_sb + fr * dx_sf + ti * dx_st,
            dx.to(dx_ptr.dtype.element_ty), mask=fmask,
        )  # fmt: skip
        tl.debug_barrier()  # the scratch is rewritten by the next frame
        n += nprog

    part = part_ptr + pid * TOTAL
    tl.store(part + O_WL + cc, acc_wl)
    tl.store(part + O_E + cc, acc_e)
    tl.store(part + O_A + hv, acc_a)
    tl.store(part + O_B + hv, acc_b)
    tl.store(part + O_U + hv[:, None] * CP + cc[None, :], acc_u)
    tl.store(part + O_G1 + cc, acc_g1)
    tl.store(part + O_BN1 + cc, acc_bn1)
    tl.store(part + O_W1 + j1[:, None] * PP + po[None, :], acc_w1)
    tl.store(part + O_B1 + po, acc_b1)
    tl.store(part + O_W2 + j2[:, None] * CP + cc[None, :], acc_w2)
    tl.store(part + O_B2 + cc, acc_b2)
    tl.store(part + O_G2 + cc, acc_g2)
    tl.store(part + O_BN2 + cc, acc_bn2)


# ------------------------------------------------------------------------ host helpers
def _p2(n: int, floor: int = 16) -> int:
    """Padded tile size: a power of two, at least ``floor`` (tl.dot needs dims >= 16)."""
    return max(floor, triton.next_power_of_2(n))


def _sizes(x: torch.Tensor, derived: fm.Derived) -> dict:
    c = derived.w_lift.shape[0]
    h = derived.a_head.shape[0]
    p = derived.ffn1_bias.shape[0]
    k = derived.w1col.shape[0] // c
    return dict(
        C=c, H=h, K=k, P=p, FP=_p2(x.shape[2]), CP=_p2(c), PP=_p2(p),
        CKP=_p2(c * k), PKP=_p2(p * k),
    )  # fmt: skip


def _partial_layout(sz: dict) -> dict:
    """Offsets of each parameter's gradient in one program's row of the partials buffer,
    with the padded shape stored there and the true shape it is sliced to."""
    cp, pp, hp = sz["CP"], sz["PP"], max(2, triton.next_power_of_2(sz["H"]))
    c, p, h, k = sz["C"], sz["P"], sz["H"], sz["K"]
    entries = [
        ("O_WL", (cp,), (c,)), ("O_E", (cp,), (c,)), ("O_A", (hp,), (h,)),
        ("O_B", (hp,), (h,)), ("O_U", (hp, cp), (h, c)), ("O_G1", (cp,), (c,)),
        ("O_BN1", (cp,), (c,)), ("O_W1", (sz["CKP"], pp), (c * k, p)), ("O_B1", (pp,), (p,)),
        ("O_W2", (sz["PKP"], cp), (p * k, c)), ("O_B2", (cp,), (c,)), ("O_G2", (cp,), (c,)),
        ("O_BN2", (cp,), (c,)),
    ]  # fmt: skip
    layout, offset = {}, 0
    for name, padded, true in entries:
        layout[name] = (offset, padded, true)
        offset += int(torch.Size(padded).numel())
    return {"HP": hp, "TOTAL": offset, "entries": layout}


def _programs(x: torch.Tensor, n_frames: int) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(n_frames, 4 * sms))
    return max(1, min(n_frames, 4))  # the interpreter runs programs one after another


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _check(x: torch.Tensor, time_weights, derived: fm.Derived) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"freq_encoder: x must be (B, 1, F, T), got {tuple(x.shape)}")
    b, _, f, t = x.shape
    if time_weights is not None and tuple(time_weights.shape) != (b, f, t):
        raise ValueError(
            f"freq_encoder: time_weights must be (B, F, T) = ({b}, {f}, {t}), "
            f"got {tuple(time_weights.shape)}"
        )
    c = derived.w_lift.shape[0]
    if derived.w1col.shape[0] % c or derived.w1col.shape[0] // c % 2 == 0:
        raise ValueError(f"freq_encoder: w1col {tuple(derived.w1col.shape)} is not (k*c, P)")
    if max_offset(x) > MAX_OFFSET or b * t * f * c > MAX_OFFSET:
        raise ValueError("freq_encoder: tensors beyond 2**31 - 1 elements (32-bit offsets)")


def _xs(t: torch.Tensor) -> tuple[int, int, int]:
    """(b, f, t) strides of a (B, 1, F, T) or (B, F, T) tensor."""
    return (t.stride(0), t.stride(-2), t.stride(-1))


# -------------------------------------------------------------------------------- ops
@triton_op("atfnn::freq_encoder", mutates_args=())
def freq_encoder_op(
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    w_lift: torch.Tensor,
    e_bias: torch.Tensor,
    a_head: torch.Tensor,
    b_head: torch.Tensor,
    u_head: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    w1col: torch.Tensor,
    ffn1_bias: torch.Tensor,
    w2col: torch.Tensor,
    ffn2_bias: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``x' (B, 1, F, T)`` -> ``(B, T, F, c)`` (times ``1 + w_t`` with ``time_weights``)."""
    derived = fm.Derived(
        w_lift, e_bias, a_head, b_head, u_head, norm1_weight, norm1_bias, w1col, ffn1_bias,
        w2col, ffn2_bias, norm2_weight, norm2_bias,
    )  # fmt: skip
    _check(x, time_weights, derived)
    if plain_torch(x, _fenc_fwd_kernel):
        return fm.forward(x, time_weights, derived, eps)
    b, _, f, t = x.shape
    sz = _sizes(x, derived)
    out = torch.empty((b, t, f, sz["C"]), dtype=x.dtype, device=x.device)
    n_frames = b * t
    n_prog = _programs(x, n_frames)
    scratch = torch.empty(
        n_prog * (sz["FP"] * sz["CP"] + sz["FP"] * sz["PP"]), dtype=torch.float32, device=x.device
    )
    wt = time_weights if time_weights is not None else x
    launcher(_fenc_fwd_kernel)[(n_prog,)](
        x, wt, out, scratch, *[p_.contiguous() for p_ in derived],
        n_frames, t, f, eps, *_xs(x), *_xs(wt), *out.stride(),
        HAS_WT=time_weights is not None, PREC=_precision(x), num_warps=NUM_WARPS, **sz,
    )  # fmt: skip
    return out


@triton_op("atfnn::freq_encoder_backward", mutates_args=())
def freq_encoder_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    w_lift: torch.Tensor,
    e_bias: torch.Tensor,
    a_head: torch.Tensor,
    b_head: torch.Tensor,
    u_head: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    w1col: torch.Tensor,
    ffn1_bias: torch.Tensor,
    w2col: torch.Tensor,
    ffn2_bias: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    eps: float,
) -> list[torch.Tensor]:
    """``[dx, d time_weights (empty without them), d w_lift, ..., d norm2_bias]``."""
    derived = fm.Derived(
        w_lift, e_bias, a_head, b_head, u_head, norm1_weight, norm1_bias, w1col, ffn1_bias,
        w2col, ffn2_bias, norm2_weight, norm2_bias,
    )  # fmt: skip
    if plain_torch(x, _fenc_fwd_kernel):
        dx, d_time, grads = fm.backward(grad_out, x, time_weights, derived, eps)
        if d_time is None:
            d_time = torch.empty(0, dtype=x.dtype, device=x.device)
        return [dx, d_time, *grads]
    b, _, f, t = x.shape
    sz = _sizes(x, derived)
    lay = _partial_layout(sz)
    n_frames = b * t
    n_prog = _programs(x, n_frames)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    has_wt = time_weights is not None
    d_time = (
        torch.empty(time_weights.shape, dtype=time_weights.dtype, device=x.device)
        if has_wt
        else torch.empty(0, dtype=x.dtype, device=x.device)
    )
    wt, dwt = (time_weights, d_time) if has_wt else (x, dx)  # stand-ins, never touched
    scratch = torch.empty(
        n_prog * 2 * (sz["FP"] * sz["CP"] + sz["FP"] * sz["PP"]),
        dtype=torch.float32, device=x.device,
    )  # fmt: skip
    part = torch.empty((n_prog, lay["TOTAL"]), dtype=torch.float32, device=x.device)
    w1t, w2t = fm.transposed_cols(derived.w1col, derived.w2col, sz["K"])
    offsets = {name: off for name, (off, _, _) in lay["entries"].items()}
    launcher(_fenc_bwd_kernel)[(n_prog,)](
        grad_out, x, wt, dx, dwt, scratch, part, *[p_.contiguous() for p_ in derived], w1t, w2t,
        n_frames, t, f, eps, *_xs(x), *_xs(wt),
        *grad_out.stride(), *_xs(dx), *_xs(dwt),
        HP=lay["HP"], HAS_WT=has_wt, PREC=_precision(x), TOTAL=lay["TOTAL"],
        num_warps=NUM_WARPS, **offsets, **sz,
    )  # fmt: skip
    total = part.sum(dim=0)
    grads = []
    for off, padded, true in lay["entries"].values():
        block = total[off : off + int(torch.Size(padded).numel())].reshape(padded)
        grads.append(block[tuple(slice(0, n) for n in true)].clone())
    return [dx, d_time, *grads]


def _setup_context(ctx, inputs, output):
    x, time_weights, *derived, eps = inputs
    ctx.save_for_backward(x, time_weights, *derived)
    ctx.eps = eps


def _backward(ctx, grad_out):
    x, time_weights, *derived = ctx.saved_tensors
    dx, d_time, *grads = torch.ops.atfnn.freq_encoder_backward(
        grad_out, x, time_weights, *derived, ctx.eps
    )
    return (dx, d_time if time_weights is not None else None, *grads, None)


freq_encoder_op.register_autograd(_backward, setup_context=_setup_context)


def freq_encoder(x, *params, num_heads: int, eps: float, time_weights=None):
    """Entry point with the :func:`atfnn_fast.kernels.torch_ops.freq_encoder` signature:
    module parameters in, derived (rank-one) parameters to the op."""
    with torch.autocast(x.device.type, enabled=False):  # derived parameters stay float32
        derived = fm.derive(*params, num_heads=num_heads)
    return torch.ops.atfnn.freq_encoder(x, time_weights, *derived, eps)
