"""Pieces shared by the F-Encoder kernels: the packed parameter buffer and the per-band math.

Packed parameters. The rank-one parameters of :class:`.freq_encoder_math.Derived` travel to
every kernel as *one* float32 buffer, in the order of :data:`PACK_ORDER` (one pointer, no
offsets to pass: each kernel computes them from the constexpr sizes ``C, H, K, P`` with
:func:`_offsets`, the jit twin of :func:`param_layout`). Parameter gradients come back in the
same layout, as per-program partial rows that one kernel (:mod:`.fenc_params`) sums and
maps back to the module parameters' gradients.

Tiles. A program owns ``BT`` consecutive frames of one utterance; frames are the rows (the M
dimension of every ``tl.dot``). Channel tiles are ``[BT, CK]`` with ``CK = max(16,
next_pow2(C))`` and FFN tiles ``[BT, PK]``, because ``tl.dot`` needs every dim >= 16 (the
padding columns hold zeros). Heads are a tensor dimension of ``HP`` (padded heads have zero
parameters and add nothing).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import rank_one as fm

# (field of freq_encoder_math.Derived, size in units of (C, H, K*C*P, P, H*C))
PACK_ORDER = (
    "w_lift",
    "e_bias",
    "norm1_weight",
    "norm1_bias",
    "ffn2_bias",
    "norm2_weight",
    "norm2_bias",
    "a_head",
    "b_head",
    "u_head",
    "ffn1_bias",
    "w1col",
    "w2col",
)
MAX_FFN_KERNEL = 5  # the band sweeps keep the +-2 neighbouring bands (see fenc_forward)


def param_layout(c: int, h: int, k: int, p: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{field: (offset, shape)}`` of the packed buffer (mirrored by :func:`_offsets`)."""
    shapes = {
        "w_lift": (c,),
        "e_bias": (c,),
        "norm1_weight": (c,),
        "norm1_bias": (c,),
        "ffn2_bias": (c,),
        "norm2_weight": (c,),
        "norm2_bias": (c,),
        "a_head": (h,),
        "b_head": (h,),
        "u_head": (h, c),
        "ffn1_bias": (p,),
        "w1col": (k * c, p),
        "w2col": (k * p, c),
    }
    layout, offset = {}, 0
    for name in PACK_ORDER:
        layout[name] = (offset, shapes[name])
        offset += int(torch.Size(shapes[name]).numel())
    return layout


def dims(derived: fm.Derived) -> tuple[int, int, int, int]:
    """``(C, H, K, P)`` of a set of derived parameters."""
    c = derived.w_lift.shape[0]
    return c, derived.a_head.shape[0], derived.w1col.shape[0] // c, derived.ffn1_bias.shape[0]


def pack(derived: fm.Derived) -> torch.Tensor:
    """Derived parameters -> one flat buffer (differentiable: ``torch.cat``)."""
    return torch.cat([getattr(derived, name).reshape(-1) for name in PACK_ORDER])


def unpack(buf: torch.Tensor, c: int, h: int, k: int, p: int) -> fm.Derived:
    """The inverse of :func:`pack` (views into ``buf``)."""
    fields = {
        name: buf[off : off + int(torch.Size(shape).numel())].reshape(shape)
        for name, (off, shape) in param_layout(c, h, k, p).items()
    }
    return fm.Derived(**fields)


def packed_size(c: int, h: int, k: int, p: int) -> int:
    off, shape = param_layout(c, h, k, p)[PACK_ORDER[-1]]
    return off + int(torch.Size(shape).numel())


# --------------------------------------------------------------------------- jit helpers
@triton.jit
def _offsets(C: tl.constexpr, H: tl.constexpr, K: tl.constexpr, P: tl.constexpr):
    """Offsets of the packed buffer's fields, in PACK_ORDER (see param_layout)."""
    o_a = 7 * C
    o_bh = o_a + H
    o_u = o_bh + H
    o_b1 = o_u + H * C
    o_w1 = o_b1 + P
    o_w2 = o_w1 + K * C * P
    return o_a, o_bh, o_u, o_b1, o_w1, o_w2


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation on the matrix units. ``PREC``: "bf16" or
    "fp16" round the (float32) operands to 16 bits (bf16/fp16 inputs); "tf32" or "ieee"
    multiply float32 operands as ``tl.dot``'s ``input_precision`` (see the host's
    ``_precision``)."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PREC == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _channel_vec(prm_ptr, slot: tl.constexpr, C: tl.constexpr, CK: tl.constexpr):
    """Field ``slot`` (0..6: w_lift, e_bias, norm1 w/b, ffn2_bias, norm2 w/b) as [CK]."""
    cc = tl.arange(0, CK)
    return tl.load(prm_ptr + slot * C + cc, mask=cc < C, other=0.0)


@triton.jit
def _head_params(
    prm_ptr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    HP: tl.constexpr,
):
    """A [HP], B [HP] and U [HP, CK] (zero for padded heads and channels)."""
    o_a, o_bh, o_u, _, _, _ = _offsets(C, H, K, P)
    hh = tl.arange(0, HP)
    cc = tl.arange(0, CK)
    a = tl.load(prm_ptr + o_a + hh, mask=hh < H, other=0.0)
    bh = tl.load(prm_ptr + o_bh + hh, mask=hh < H, other=0.0)
    u = tl.load(
        prm_ptr + o_u + hh[:, None] * C + cc[None, :],
        mask=(hh < H)[:, None] & (cc < C)[None, :],
        other=0.0,
    )
    return a, bh, u


@triton.jit
def _w1_tile(
    prm_ptr,
    j: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    TRANS: tl.constexpr,
):
    """FFN1 weights of band shift ``j`` (-K//2..K//2): ``[CK, PK]`` with
    ``[ch, o] = ffn1.weight[o, ch, j + K//2]``, or its transpose ``[PK, CK]``."""
    _, _, _, _, o_w1, _ = _offsets(C, H, K, P)
    base = prm_ptr + o_w1 + (j + K // 2) * C * P
    if TRANS:
        o = tl.arange(0, PK)[:, None]
        ch = tl.arange(0, CK)[None, :]
    else:
        ch = tl.arange(0, CK)[:, None]
        o = tl.arange(0, PK)[None, :]
    return tl.load(base + ch * P + o, mask=(ch < C) & (o < P), other=0.0)


@triton.jit
def _w2_tile(
    prm_ptr,
    j: tl.constexpr,
    C: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    CK: tl.constexpr,
    PK: tl.constexpr,
    TRANS: tl.constexpr,
):
    """FFN2 weights of band shift ``j``: ``[PK, CK]`` with ``[o, ch] = ffn2.weight[ch, o,
    j + K//2]``, or its transpose ``[CK, PK]``."""
    _, _, _, _, _, o_w2 = _offsets(C, H, K, P)
    base = prm_ptr + o_w2 + (j + K // 2) * P * C
    if TRANS:
        ch = tl.arange(0, CK)[:, None]
        o = tl.arange(0, PK)[None, :]
    else:
        o = tl.arange(0, PK)[:, None]
        ch = tl.arange(0, CK)[None, :]
    return tl.load(base + o * C + ch, mask=(ch < C) & (o < P), other=0.0)


@triton.jit
def _band_tile(ptr, b, band, NF: tl.constexpr, n_t, tt, tmask, cc, C: tl.constexpr):
    """[BT, CK] tile of a (B, F, T, C) float32 scratch at ``band`` (zero outside)."""
    ok = (band >= 0) & (band < NF)
    off = ((b * NF + band) * n_t + tt[:, None]) * C + cc[None, :]
    return tl.load(ptr + off, mask=ok & tmask[:, None] & (cc < C)[None, :], other=0.0)


@triton.jit
def _frame_range(x_ptr, row_off, tmask, NF: tl.constexpr, x_sf, BT: tl.constexpr, GB: tl.constexpr):
    """Per frame, the largest and smallest band value ([BT] each): with them the softmax
    row maximum of every band is known without a pass (freq_encoder_math)."""
    xmax = tl.full([BT], -float("inf"), tl.float32)
    xmin = tl.full([BT], float("inf"), tl.float32)
    for g0 in range(0, NF, GB):
        g = g0 + tl.arange(0, GB)
        gmask = g < NF
        xg = tl.load(
            x_ptr + row_off[:, None] + g[None, :] * x_sf,
            mask=tmask[:, None] & gmask[None, :],
            other=0.0,
        ).to(tl.float32)
        xmax = tl.maximum(xmax, tl.max(tl.where(gmask[None, :], xg, -float("inf")), axis=1))
        xmin = tl.minimum(xmin, tl.min(tl.where(gmask[None, :], xg, float("inf")), axis=1))
    return xmax, xmin


@triton.jit
def _band_softmax(
    x_ptr,
    row_off,
    tmask,
    NF: tl.constexpr,
    x_sf,
    xf,
    xmax,
    xmin,
    a,
    bh,
    BT: tl.constexpr,
    HP: tl.constexpr,
    GB: tl.constexpr,
    WITH_VAR: tl.constexpr,
):
    """The rank-one attention of one band ``f`` (value ``xf`` [BT]) over all bands ``g``,
    every head at once, streamed over band chunks of GB (no [F, F] tile):
    ``s = xf A + B`` [BT, HP]; ``p_g = exp(s x_g - M) / den`` with the analytic row maximum
    ``M = s * xref``, ``xref = max(x)`` if ``s >= 0`` else ``min(x)``.

    Returns ``(s, xref, den, m, var)``: ``m = sum_g p_g x_g`` and, with WITH_VAR,
    ``var = sum_g p_g (x_g - m)^2``, accumulated around ``xref`` (the value the
    probability mass concentrates on, so the shifted sums do not cancel); else 0."""
    s = xf[:, None] * a[None, :] + bh[None, :]
    xref = tl.where(s >= 0, xmax[:, None], xmin[:, None])
    den = tl.zeros([BT, HP], dtype=tl.float32)
    num = tl.zeros([BT, HP], dtype=tl.float32)
    sq = tl.zeros([BT, HP], dtype=tl.float32)
    for g0 in range(0, NF, GB):
        g = g0 + tl.arange(0, GB)
        gmask = g < NF
        xg = tl.load(
            x_ptr + row_off[:, None] + g[None, :] * x_sf,
            mask=tmask[:, None] & gmask[None, :],
            other=0.0,
        ).to(tl.float32)
        d = xg[:, None, :] - xref[:, :, None]  # [BT, HP, GB], <= 0 where s >= 0
        e = tl.exp(s[:, :, None] * d)  # = exp(s x_g - M): the shift is exact
        e = tl.where(gmask[None, None, :], e, 0.0)
        den += tl.sum(e, axis=2)
        num += tl.sum(e * d, axis=2)
        if WITH_VAR:
            sq += tl.sum(e * d * d, axis=2)
    mean_d = num / den
    m = xref + mean_d
    var = tl.zeros([BT, HP], dtype=tl.float32)
    if WITH_VAR:
        var = tl.maximum(sq / den - mean_d * mean_d, 0.0)
    return s, xref, den, m, var


@triton.jit
def _head_col(t, h: tl.constexpr, HP: tl.constexpr):
    """Column ``h`` of a [BT, HP] tile as [BT] (a select and an in-thread sum; an explicit
    loop keeps the compiler from turning the head contractions into a tf32 tl.dot)."""
    return tl.sum(tl.where(tl.arange(0, HP)[None, :] == h, t, 0.0), axis=1)


@triton.jit
def _head_row(u, h: tl.constexpr, HP: tl.constexpr):
    """Row ``h`` of a [HP, CK] tile as [CK]."""
    return tl.sum(tl.where(tl.arange(0, HP)[:, None] == h, u, 0.0), axis=0)


@triton.jit
def _token(xf, m, wl, eb, u, H: tl.constexpr, HP: tl.constexpr):
    """Pre-norm token ``r = x w + sum_h m_h U_h + e`` [BT, CK]."""
    r = xf[:, None] * wl[None, :] + eb[None, :]
    for h in tl.static_range(H):
        r += _head_col(m, h, HP)[:, None] * _head_row(u, h, HP)[None, :]
    return r


@triton.jit
def _layer_norm(r, cmask, C: tl.constexpr, eps):
    """LayerNorm statistics over the C valid channels: (normalised [BT, CK], rstd [BT])."""
    mean = tl.sum(tl.where(cmask[None, :], r, 0.0), axis=1) / C
    diff = tl.where(cmask[None, :], r - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    return diff * rstd[:, None], rstd


@triton.jit
def _layer_norm_bwd(dy, n, rstd, gamma, cmask, C: tl.constexpr):
    """d(pre-norm input) of ``y = n * gamma + beta`` given dy (zero in padded channels)."""
    dn = dy * gamma[None, :]
    dr = rstd[:, None] * (
        dn - (tl.sum(dn, axis=1) / C)[:, None] - n * (tl.sum(dn * n, axis=1) / C)[:, None]
    )
    return tl.where(cmask[None, :], dr, 0.0)
