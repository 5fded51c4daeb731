"""F-Encoder parameters on the device: one launch each way (docs/design.md#launches-per-call).

* :func:`_fenc_derive_kernel` (forward): the module parameters -> the packed derived
  (rank-one) parameters of :mod:`.fenc_common`, the math of
  :func:`.freq_encoder_math.derive`, in one program (a few hundred FMAs and a copy of the
  FFN weights into their im2col layout).
* :func:`_fenc_param_grad_kernel` (backward): sums the per-program partial rows the
  backward kernels wrote (each field over the rows its writer kernel has, in a fixed order:
  deterministic; float64 sums) and applies the vector-Jacobian product of ``derive``
  (:func:`.freq_encoder_math.derive_vjp`), writing the module parameters' gradients in their
  dtypes. Program 0 does the small fields and the product (through a float64 scratch of
  their sums); the other programs each sum a block of the FFN weight fields, whose
  product is a permutation.

The module parameters must be contiguous (the host code passes ``.contiguous()``: a no-op
for ``nn.Parameter``). Sizes: ``C, H, K, P`` as in :mod:`.fenc_common`; ``CK`` / ``HP`` /
``PK`` padded.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _offsets

# frames of partial rows summed per step, and FFN-weight columns per program
ROWS_PER_STEP = 8
WEIGHT_BLOCK = 256


@triton.jit
def _rank_one_vectors(
    lw_ptr,
    lb_ptr,
    ipw_ptr,
    ipb_ptr,
    C: tl.constexpr,
    CK: tl.constexpr,
):
    """``w, b`` (along axis 1, index j) and, along axis 0 (index i), ``a_q, a_k, a_v, b_q,
    b_v``; plus the ``W_q, W_k, W_v`` tiles ``[i, j]`` (float32, zero padded)."""
    ii = tl.arange(0, CK)[:, None]
    jj = tl.arange(0, CK)[None, :]
    m2 = (ii < C) & (jj < C)
    jv = tl.arange(0, CK)
    w = tl.load(lw_ptr + jv, mask=jv < C, other=0.0).to(tl.float32)
    b = tl.load(lb_ptr + jv, mask=jv < C, other=0.0).to(tl.float32)
    wq = tl.load(ipw_ptr + ii * C + jj, mask=m2, other=0.0).to(tl.float32)
    wk = tl.load(ipw_ptr + (C + ii) * C + jj, mask=m2, other=0.0).to(tl.float32)
    wv = tl.load(ipw_ptr + (2 * C + ii) * C + jj, mask=m2, other=0.0).to(tl.float32)
    iv = tl.arange(0, CK)
    bq = tl.load(ipb_ptr + iv, mask=iv < C, other=0.0).to(tl.float32)
    bv = tl.load(ipb_ptr + 2 * C + iv, mask=iv < C, other=0.0).to(tl.float32)
    a_q = tl.sum(wq * w[None, :], axis=1)
    a_k = tl.sum(wk * w[None, :], axis=1)
    a_v = tl.sum(wv * w[None, :], axis=1)
    b_q = tl.sum(wq * b[None, :], axis=1) + bq
    b_v = tl.sum(wv * b[None, :], axis=1) + bv
    return w, b, wq, wk, wv, a_q, a_k, a_v, b_q, b_v


@triton.jit
def _copy_vec(src_ptr, dst_ptr, n: tl.constexpr, NP: tl.constexpr):
    """``dst[:n] = src[:n]`` (converted to dst's dtype through float32: a direct float64 ->
    bf16/fp16 conversion takes a stack frame on sm_80)."""
    k = tl.arange(0, NP)
    v = tl.load(src_ptr + k, mask=k < n, other=0.0)
    tl.store(dst_ptr + k, v.to(tl.float32).to(dst_ptr.dtype.element_ty), mask=k < n)


@triton.jit
def _fenc_derive_kernel(
    lift_w_ptr,
    lift_b_ptr,
    in_w_ptr,
    in_b_ptr,
    out_w_ptr,
    out_b_ptr,
    norm1_w_ptr,
    norm1_b_ptr,
    ffn1_w_ptr,
    ffn1_b_ptr,
    ffn2_w_ptr,
    ffn2_b_ptr,
    norm2_w_ptr,
    norm2_b_ptr,
    prm_ptr,  # out: the packed derived parameters, float32 (fenc_common.param_layout)
    scale,  # 1 / sqrt(head dim)
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    HP: tl.constexpr,
    PK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    o_a, o_bh, o_u, o_b1, o_w1, o_w2 = _offsets(C, H, K, P)
    D: tl.constexpr = C // H
    w, b, _, _, _, a_q, a_k, a_v, b_q, b_v = _rank_one_vectors(
        lift_w_ptr, lift_b_ptr, in_w_ptr, in_b_ptr, C, CK
    )
    ii = tl.arange(0, CK)[:, None]  # row i of W_o^T (input of out_proj)
    oo = tl.arange(0, CK)[None, :]  # output channel o
    wo_t = tl.load(out_w_ptr + oo * C + ii, mask=(ii < C) & (oo < C), other=0.0).to(tl.float32)
    cv = tl.arange(0, CK)
    cmask = cv < C
    bo = tl.load(out_b_ptr + cv, mask=cmask, other=0.0).to(tl.float32)
    # e = b + W_o b_v + bias_o (along axis 1, index o = cv)
    e = b + tl.sum(wo_t * b_v[:, None], axis=0) + bo
    tl.store(prm_ptr + cv, w, mask=cmask)
    tl.store(prm_ptr + C + cv, e, mask=cmask)
    _copy_vec(norm1_w_ptr, prm_ptr + 2 * C, C, CK)
    _copy_vec(norm1_b_ptr, prm_ptr + 3 * C, C, CK)
    _copy_vec(ffn2_b_ptr, prm_ptr + 4 * C, C, CK)
    _copy_vec(norm2_w_ptr, prm_ptr + 5 * C, C, CK)
    _copy_vec(norm2_b_ptr, prm_ptr + 6 * C, C, CK)
    _copy_vec(ffn1_b_ptr, prm_ptr + o_b1, P, PK)
    # heads: A_h = s sum_{i in h} a_q a_k, B_h = s sum b_q a_k, U_h[o] = sum W_o[o, i] a_v[i]
    head = tl.arange(0, CK) // D  # head of row i
    hh = tl.arange(0, HP)
    sel = (head[:, None] == hh[None, :]) & (tl.arange(0, CK) < C)[:, None]
    a_head = tl.sum(tl.where(sel, (a_q * a_k)[:, None], 0.0), axis=0) * scale
    b_head = tl.sum(tl.where(sel, (b_q * a_k)[:, None], 0.0), axis=0) * scale
    tl.store(prm_ptr + o_a + hh, a_head, mask=hh < H)
    tl.store(prm_ptr + o_bh + hh, b_head, mask=hh < H)
    for h in tl.static_range(H):
        in_h = (tl.arange(0, CK) // D == h)[:, None]
        u_h = tl.sum(tl.where(in_h, wo_t * a_v[:, None], 0.0), axis=0)
        tl.store(prm_ptr + o_u + h * C + cv, u_h, mask=cmask)
    # FFN weights into the im2col layouts: w1col[(k C + ch) P + o] = ffn1.weight[o, ch, k],
    # w2col[(k P + o) C + ch] = ffn2.weight[ch, o, k]
    for q0 in range(0, K * C * P, BLOCK):
        q = q0 + tl.arange(0, BLOCK)
        qm = q < K * C * P
        kk = q // (C * P)
        ch = (q // P) % C
        o = q % P
        v1 = tl.load(ffn1_w_ptr + (o * C + ch) * K + kk, mask=qm, other=0.0)
        tl.store(prm_ptr + o_w1 + q, v1.to(tl.float32), mask=qm)
        o2 = (q // C) % P
        ch2 = q % C
        v2 = tl.load(ffn2_w_ptr + (ch2 * P + o2) * K + kk, mask=qm, other=0.0)
        tl.store(prm_ptr + o_w2 + q, v2.to(tl.float32), mask=qm)


@triton.jit
def _field_rows(
    col,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    rows_norm1,
    rows_ffn,
    rows_dh1,
):
    """Rows of partials written for packed column ``col`` of the small fields: LayerNorm1
    and attention fields by the norm1 backward, ``ffn2_bias`` / ``ffn1_bias`` by the FFN
    backward's d h1 kernel, LayerNorm2 fields by the GRAD FFN sweep."""
    _, _, _, o_b1, _, _ = _offsets(C, H, K, P)
    rows = tl.where(col < 4 * C, rows_norm1, rows_norm1)
    rows = tl.where((col >= 4 * C) & (col < 5 * C), rows_dh1, rows)
    rows = tl.where((col >= 5 * C) & (col < 7 * C), rows_ffn, rows)
    rows = tl.where(col >= o_b1, rows_dh1, rows)
    return rows


@triton.jit
def _fenc_param_grad_kernel(
    part_ptr,  # (rows, total) float32: per-program partials in the packed layout
    sums_ptr,  # scratch: (o_w1,) float64, the sums of the small fields
    lift_w_ptr,
    lift_b_ptr,
    in_w_ptr,
    in_b_ptr,
    out_w_ptr,
    d_lift_w_ptr,  # out: the 14 gradients, in the order of FrequencyEncoder.op_params
    d_lift_b_ptr,
    d_in_w_ptr,
    d_in_b_ptr,
    d_out_w_ptr,
    d_out_b_ptr,
    d_norm1_w_ptr,
    d_norm1_b_ptr,
    d_ffn1_w_ptr,
    d_ffn1_b_ptr,
    d_ffn2_w_ptr,
    d_ffn2_b_ptr,
    d_norm2_w_ptr,
    d_norm2_b_ptr,
    total,
    rows_norm1,  # rows each backward kernel wrote (its programs)
    rows_ffn,
    rows_dh1,
    rows_small,  # the most of rows_norm1, rows_ffn, rows_dh1
    scale,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    HP: tl.constexpr,
    SP: tl.constexpr,  # next_pow2 of the small fields' size (o_w1)
    RB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    o_a, o_bh, o_u, o_b1, o_w1, _ = _offsets(C, H, K, P)
    if pid > 0:
        # the FFN weight fields: a block of columns, summed, permuted to (o, ch, k) / (ch, o, k)
        q = (pid - 1) * BLOCK + tl.arange(0, BLOCK)
        n_w: tl.constexpr = 2 * K * C * P
        qm = q < n_w
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        r0 = 0
        while r0 < rows_dh1:  # (a while loop: the interpreter's range needs constants)
            r = r0 + tl.arange(0, RB)
            tile = tl.load(
                part_ptr + r[:, None] * total + o_w1 + q[None, :],
                mask=(r < rows_dh1)[:, None] & qm[None, :],
                other=0.0,
            )
            acc += tl.sum(tile.to(tl.float64), axis=0)
            r0 += RB
        is1 = q < K * C * P
        q1 = tl.where(is1, q, 0)
        kk = q1 // (C * P)
        dst1 = ((q1 % P) * C + (q1 // P) % C) * K + kk
        tl.store(
            d_ffn1_w_ptr + dst1, acc.to(tl.float32).to(d_ffn1_w_ptr.dtype.element_ty), mask=qm & is1
        )
        q2 = tl.where(is1, 0, q - K * C * P)
        kk2 = q2 // (P * C)
        dst2 = ((q2 % C) * P + (q2 // C) % P) * K + kk2
        tl.store(
            d_ffn2_w_ptr + dst2,
            acc.to(tl.float32).to(d_ffn2_w_ptr.dtype.element_ty),
            mask=qm & ~is1,
        )
    else:
        # ---- phase 1: the small fields' sums into the float64 scratch
        col = tl.arange(0, SP)
        cm = col < o_w1
        n_rows = _field_rows(col, C, H, K, P, rows_norm1, rows_ffn, rows_dh1)
        acc_s = tl.zeros([SP], dtype=tl.float64)
        r0_s = 0
        while r0_s < rows_small:
            r_s = r0_s + tl.arange(0, RB)
            tile_s = tl.load(
                part_ptr + r_s[:, None] * total + col[None, :],
                mask=(r_s[:, None] < n_rows[None, :]) & cm[None, :],
                other=0.0,
            )
            acc_s += tl.sum(tile_s.to(tl.float64), axis=0)
            r0_s += RB
        tl.store(sums_ptr + col, acc_s, mask=cm)
        tl.debug_barrier()  # the block's sums are visible to all of its threads
        # ---- phase 2: the vector-Jacobian product of derive (freq_encoder_math.derive_vjp)
        D: tl.constexpr = C // H
        w, b, wq, wk, wv, a_q, a_k, a_v, b_q, b_v = _rank_one_vectors(
            lift_w_ptr, lift_b_ptr, in_w_ptr, in_b_ptr, C, CK
        )
        iv = tl.arange(0, CK)  # row i (axis 0)
        jv = tl.arange(0, CK)  # column j / output channel o (axis 1)
        im = iv < C
        jm = jv < C
        ii = iv[:, None]
        oo = jv[None, :]
        m2 = im[:, None] & jm[None, :]
        wo_t = tl.load(out_w_ptr + oo * C + ii, mask=m2, other=0.0).to(tl.float32)
        head = iv // D
        g_a = tl.load(sums_ptr + o_a + head, mask=im, other=0.0).to(tl.float32)
        g_b = tl.load(sums_ptr + o_bh + head, mask=im, other=0.0).to(tl.float32)
        g_u = tl.load(sums_ptr + o_u + head[:, None] * C + oo, mask=m2, other=0.0).to(tl.float32)
        g_e = tl.load(sums_ptr + C + jv, mask=jm, other=0.0).to(tl.float32)
        g_wl = tl.load(sums_ptr + jv, mask=jm, other=0.0).to(tl.float32)
        g_aq = scale * g_a * a_k
        g_ak = scale * (g_a * a_q + g_b * b_q)
        g_bq = scale * g_b * a_k
        g_av = tl.sum(g_u * wo_t, axis=1)
        g_bv = tl.sum(wo_t * g_e[None, :], axis=1)
        g_wo_t = g_u * a_v[:, None] + g_e[None, :] * b_v[:, None]  # [i, o]
        tl.store(d_out_w_ptr + oo * C + ii, g_wo_t.to(d_out_w_ptr.dtype.element_ty), mask=m2)
        tl.store(d_out_b_ptr + jv, g_e.to(d_out_b_ptr.dtype.element_ty), mask=jm)
        jj = jv[None, :]
        g_wq = g_aq[:, None] * w[None, :] + g_bq[:, None] * b[None, :]
        g_wk = g_ak[:, None] * w[None, :]
        g_wv = g_av[:, None] * w[None, :] + g_bv[:, None] * b[None, :]
        dty = d_in_w_ptr.dtype.element_ty
        tl.store(d_in_w_ptr + ii * C + jj, g_wq.to(dty), mask=m2)
        tl.store(d_in_w_ptr + (C + ii) * C + jj, g_wk.to(dty), mask=m2)
        tl.store(d_in_w_ptr + (2 * C + ii) * C + jj, g_wv.to(dty), mask=m2)
        bty = d_in_b_ptr.dtype.element_ty
        tl.store(d_in_b_ptr + iv, g_bq.to(bty), mask=im)
        tl.store(d_in_b_ptr + C + iv, tl.zeros([CK], dtype=tl.float32).to(bty), mask=im)
        tl.store(d_in_b_ptr + 2 * C + iv, g_bv.to(bty), mask=im)
        g_w = g_wl + tl.sum(wq * g_aq[:, None] + wk * g_ak[:, None] + wv * g_av[:, None], axis=0)
        g_lb = g_e + tl.sum(wq * g_bq[:, None] + wv * g_bv[:, None], axis=0)
        tl.store(d_lift_w_ptr + jv, g_w.to(d_lift_w_ptr.dtype.element_ty), mask=jm)
        tl.store(d_lift_b_ptr + jv, g_lb.to(d_lift_b_ptr.dtype.element_ty), mask=jm)
        _copy_vec(sums_ptr + 2 * C, d_norm1_w_ptr, C, CK)
        _copy_vec(sums_ptr + 3 * C, d_norm1_b_ptr, C, CK)
        _copy_vec(sums_ptr + 4 * C, d_ffn2_b_ptr, C, CK)
        _copy_vec(sums_ptr + 5 * C, d_norm2_w_ptr, C, CK)
        _copy_vec(sums_ptr + 6 * C, d_norm2_b_ptr, C, CK)
        _copy_vec(sums_ptr + o_b1, d_ffn1_b_ptr, P, SP)
