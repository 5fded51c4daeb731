"""Band attention's forward Triton kernel (:mod:`.custom_op` launches it)."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _window_weights


@triton.jit
def _band_fwd_kernel(
    src_ptr,
    w_ptr,
    b_ptr,
    tgt_ptr,
    out_ptr,
    map_ptr,
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
    o_b,
    o_i,
    o_j,
    o_k,
    o_c,
    m_b,
    m_i,
    m_j,
    m_k,
    C: tl.constexpr,
    CIN: tl.constexpr,
    G: tl.constexpr,
    W: tl.constexpr,
    KP: tl.constexpr,
    GWP: tl.constexpr,
    GP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, i, j, wmask, _q, _qmask, _src, weight = _window_weights(
        src_ptr, w_ptr, b_ptr, n_windows, n_i, n_j, s_b, s_i, s_j, s_k, s_c, C, CIN, G, KP, BLOCK
    )

    # target tile [BLOCK, GWP]: column r is (position r // W, channel r % W)
    r = tl.arange(0, GWP)
    tmask = wmask[:, None] & (r < G * W)[None, :]
    tgt = tl.load(
        tgt_ptr
        + (b * t_b + i * t_i + j * t_j)[:, None]
        + (r // W)[None, :] * t_k
        + (r % W)[None, :] * t_c,
        mask=tmask,
        other=0.0,
    ).to(tl.float32)
    out = tgt + weight[:, None] * tgt
    tl.store(
        out_ptr
        + (b * o_b + i * o_i + j * o_j)[:, None]
        + (r // W)[None, :] * o_k
        + (r % W)[None, :] * o_c,
        out.to(out_ptr.dtype.element_ty),
        mask=tmask,
    )

    k = tl.arange(0, GP)
    wmap = tl.zeros([BLOCK, GP], dtype=tl.float32) + weight[:, None]
    tl.store(
        map_ptr + (b * m_b + i * m_i + j * m_j)[:, None] + k[None, :] * m_k,
        wmap.to(map_ptr.dtype.element_ty),
        mask=wmask[:, None] & (k < G)[None, :],
    )
