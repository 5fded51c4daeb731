"""Band attention's shared Triton piece: the conv-sigmoid-mean weight of a block of windows
(used by the forward and the backward kernel)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _window_weights(
    src_ptr,
    w_ptr,
    b_ptr,
    n_windows,
    n_i,
    n_j,
    s_b,
    s_i,
    s_j,
    s_k,
    s_c,
    C: tl.constexpr,
    CIN: tl.constexpr,
    G: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """This program's BLOCK windows: their (b, i, j) grid coordinates, the source tile
    [BLOCK, KP] (column q is input channel q // G, position q % G) and the weights w."""
    win = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    wmask = win < n_windows
    j = win % n_j
    rest = win // n_j
    i = rest % n_i
    b = rest // n_i
    q = tl.arange(0, KP)
    qmask = q < CIN * G
    src = tl.load(
        src_ptr
        + (b * s_b + i * s_i + j * s_j)[:, None]
        + (q // G)[None, :] * s_c
        + (q % G)[None, :] * s_k,
        mask=wmask[:, None] & qmask[None, :],
        other=0.0,
    ).to(tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in tl.static_range(C):
        w_row = tl.load(w_ptr + c * CIN * G + q, mask=qmask, other=0.0).to(tl.float32)
        z = tl.sum(src * w_row[None, :], axis=1) + tl.load(b_ptr + c).to(tl.float32)
        acc += tl.sigmoid(z)
    return b, i, j, wmask, q, qmask, src, acc / C
