"""Band attention's backward Triton kernels: the data gradients with per-program parameter
partials, then the deterministic reduction of the partials (:mod:`.custom_op` launches them)."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _window_weights


@triton.jit
def _band_bwd_kernel(
    src_ptr,
    w_ptr,
    b_ptr,
    tgt_ptr,
    gout_ptr,
    gmap_ptr,
    dsrc_ptr,
    dtgt_ptr,
    dw_part_ptr,
    db_part_ptr,
    n_windows,
    n_i,
    n_j,
    s_b,
    s_i,
    s_j,
    s_k,
    s_c,
    t_b,
    t_i,
    t_j,
    t_k,
    t_c,
    g_b,
    g_i,
    g_j,
    g_k,
    g_c,
    m_b,
    m_i,
    m_j,
    m_k,
    ds_b,
    ds_i,
    ds_j,
    ds_k,
    ds_c,
    dt_b,
    dt_i,
    dt_j,
    dt_k,
    dt_c,
    C: tl.constexpr,
    CIN: tl.constexpr,
    G: tl.constexpr,
    W: tl.constexpr,
    KP: tl.constexpr,
    GWP: tl.constexpr,
    GP: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_GOUT: tl.constexpr,
    HAS_GMAP: tl.constexpr,
    FUSED_TARGET: tl.constexpr,
    CP: tl.constexpr,
):
    pid = tl.program_id(0)
    b, i, j, wmask, q, qmask, src, weight = _window_weights(
        src_ptr, w_ptr, b_ptr, n_windows, n_i, n_j, s_b, s_i, s_j, s_k, s_c, C, CIN, G, KP, BLOCK
    )
    smask = wmask[:, None] & qmask[None, :]

    r = tl.arange(0, GWP)
    tmask = wmask[:, None] & (r < G * W)[None, :]
    pos = (r // W)[None, :]
    chan = (r % W)[None, :]
    tgt = tl.load(
        tgt_ptr + (b * t_b + i * t_i + j * t_j)[:, None] + pos * t_k + chan * t_c,
        mask=tmask,
        other=0.0,
    ).to(tl.float32)
    if HAS_GOUT:
        gout = tl.load(
            gout_ptr + (b * g_b + i * g_i + j * g_j)[:, None] + pos * g_k + chan * g_c,
            mask=tmask,
            other=0.0,
        ).to(tl.float32)
    else:  # the output was not used: its gradient is zero
        gout = tl.zeros([BLOCK, GWP], dtype=tl.float32)
    dweight = tl.sum(gout * tgt, axis=1)
    if HAS_GMAP:
        k = tl.arange(0, GP)
        gmap = tl.load(
            gmap_ptr + (b * m_b + i * m_i + j * m_j)[:, None] + k[None, :] * m_k,
            mask=wmask[:, None] & (k < G)[None, :],
            other=0.0,
        ).to(tl.float32)
        dweight += tl.sum(gmap, axis=1)
    dweight = tl.where(wmask, dweight, 0.0) / C
    dtgt = gout + weight[:, None] * gout

    dsrc = tl.zeros([BLOCK, KP], dtype=tl.float32)
    crow = tl.arange(0, CP)
    acc_w = tl.zeros([CP, KP], dtype=tl.float32)  # this program's d weight partial
    acc_b = tl.zeros([CP], dtype=tl.float32)
    for c in tl.static_range(C):
        w_row = tl.load(w_ptr + c * CIN * G + q, mask=qmask, other=0.0).to(tl.float32)
        z = tl.sum(src * w_row[None, :], axis=1) + tl.load(b_ptr + c).to(tl.float32)
        a = tl.sigmoid(z)
        dz = dweight * a * (1.0 - a)
        dsrc += dz[:, None] * w_row[None, :]
        acc_w = tl.where(crow[:, None] == c, tl.sum(dz[:, None] * src, axis=0)[None, :], acc_w)
        acc_b = tl.where(crow == c, tl.sum(dz, axis=0), acc_b)
    cmask = crow < C
    tl.store(dw_part_ptr + (pid * C + crow[:, None]) * KP + q[None, :], acc_w, mask=cmask[:, None])
    tl.store(db_part_ptr + pid * C + crow, acc_b, mask=cmask)

    if FUSED_TARGET:
        # F-Attention: source and target are the same tensor (C_in = W = 1, KP = GWP)
        dsrc += dtgt
    else:
        tl.store(
            dtgt_ptr + (b * dt_b + i * dt_i + j * dt_j)[:, None] + pos * dt_k + chan * dt_c,
            dtgt.to(dtgt_ptr.dtype.element_ty),
            mask=tmask,
        )
    tl.store(
        dsrc_ptr
        + (b * ds_b + i * ds_i + j * ds_j)[:, None]
        + (q // G)[None, :] * ds_c
        + (q % G)[None, :] * ds_k,
        dsrc.to(dsrc_ptr.dtype.element_ty),
        mask=smask,
    )


@triton.jit
def _band_param_grad_kernel(
    dw_part_ptr,  # (programs, C, KP) float32: per-program d weight partials
    db_part_ptr,  # (programs, C) float32: per-program d bias partials
    dw_ptr,  # out: d weight (C, C_in, kf, kt), contiguous, the weight's dtype
    db_ptr,  # out: d bias (C,), the bias's dtype
    n_prog,
    C: tl.constexpr,
    KQ: tl.constexpr,  # C_in * G: the weight's values per output channel
    KP: tl.constexpr,
    CP: tl.constexpr,
    RB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The weight and bias gradients: the backward's per-program partial rows summed in a
    fixed order (deterministic): float32 sums of RB rows (a tree of log2(RB) roundings),
    accumulated in float64. (Float64 tile sums made ptxas use a stack frame on sm_80 for
    bf16/fp16 weights.) Programs ``0 .. n-2`` sum ``BLOCK`` columns
    of the weight partials each, the last one the bias partials."""
    pid = tl.program_id(0)
    N_WB: tl.constexpr = (C * KP + BLOCK - 1) // BLOCK
    if pid < N_WB:
        col = pid * BLOCK + tl.arange(0, BLOCK)
        cm = col < C * KP
        acc_w = tl.zeros([BLOCK], dtype=tl.float64)
        r0_w = 0
        while r0_w < n_prog:  # (a while loop: the interpreter's range needs constants)
            r_w = r0_w + tl.arange(0, RB)
            tile_w = tl.load(
                dw_part_ptr + r_w[:, None] * (C * KP) + col[None, :],
                mask=(r_w < n_prog)[:, None] & cm[None, :],
                other=0.0,
            )
            acc_w += tl.sum(tile_w, axis=0).to(tl.float64)
            r0_w += RB
        q = col % KP
        tl.store(
            dw_ptr + (col // KP) * KQ + q,
            acc_w.to(tl.float32).to(dw_ptr.dtype.element_ty),
            mask=cm & (q < KQ),
        )
    else:
        cc = tl.arange(0, CP)
        acc_b = tl.zeros([CP], dtype=tl.float64)
        r0_b = 0
        while r0_b < n_prog:
            r_b = r0_b + tl.arange(0, RB)
            tile_b = tl.load(
                db_part_ptr + r_b[:, None] * C + cc[None, :],
                mask=(r_b < n_prog)[:, None] & (cc < C)[None, :],
                other=0.0,
            )
            acc_b += tl.sum(tile_b, axis=0).to(tl.float64)
            r0_b += RB
        tl.store(db_ptr + cc, acc_b.to(tl.float32).to(db_ptr.dtype.element_ty), mask=cc < C)


# ------------------------------------------------------------------------ host helpers
