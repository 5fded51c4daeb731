"""Fused frequency encoder: ``atfnn::freq_encoder`` (+ ``atfnn::freq_encoder_backward``).

Interface module: the custom ops, their autograd formula and the host code that launches
the kernels. The kernels live beside it:

* :mod:`.fenc_forward`: attention + LayerNorm1, then FFN + LayerNorm2 + T-Attention
  multiply (with ``GRAD``: the first backward step);
* :mod:`.fenc_backward`: FFN backward (``d y1``; weight gradients), LayerNorm1 + direct
  attention backward, softmax backward;
* :mod:`.fenc_common`: the packed parameter buffer and the per-band math they share;
* :mod:`.freq_encoder_math`: the reference: the same rank-one math in plain torch (the CPU
  implementation of the ops and the kernels' ground truth);
* :mod:`.tuning`: the launch settings (frames per program and warps of each kernel).

Design (the numbers are in docs/design.md#f-encoder-kernels). The earlier kernel held one
frame per program with its whole ``[F, F]`` probability tile, its im2col tiles and both
weight matrices in registers: 152-344 KB of shared memory per block and 12-20 KB of local
memory per thread, so it could not launch on sm_86/sm_89 at all. Now a program owns a block
of frames (the M dimension of every ``tl.dot``) and sweeps the bands: the softmax of a band
is streamed over band chunks with the analytic row maximum of the rank-one identity (one
pass, no running max, no ``[F, F]`` tile), and the conv FFN reads the +-2 neighbouring bands
of ``y1`` from a float32 band tensor. Against the floors of ``benchmarks/cases.py`` the
F-Encoder is compute-bound (about 0.4 MFLOP of FFN and 13 K exponentials per frame, 0.3 KB
read and 2.5 KB written in float32), so the kernels spend bytes (one ``y1`` round trip
forward; four band tensors backward, about 9 KB per frame) to stay within 128 registers a
thread and the shared memory of every arch.

Precision: all math and accumulation in float32; the forward FFN's dots multiply on the
matrix units with bf16 / fp16 operands for bf16 / fp16 inputs and tf32 operands for float32
inputs while ``torch.backends.cudnn.allow_tf32`` (exact float32 otherwise); the backward FFN
stays float32 (:func:`_precision`). The output takes x's dtype. Offsets
are 32-bit. On CUDA the kernels run FFN kernel size 5, up to 16 channels and 32 FFN
channels (:func:`supports`); other sizes take plain torch (the dispatcher warns once, or
refuses under ``ATFNN_BACKEND=triton``). Parameter gradients are reduced in a fixed order:
deterministic. No ``[B*T, heads, F, F]`` tensor exists in global memory, forward or
backward.
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op

from . import fenc_common as fc
from . import freq_encoder_math as fm
from ._triton_utils import MAX_OFFSET, launch, max_offset, plain_torch
from .fenc_backward import (
    _fenc_bwd_ffn_kernel,
    _fenc_bwd_norm1_kernel,
    _fenc_bwd_softmax_kernel,
)
from .fenc_forward import _fenc_ffn_kernel, _fenc_norm1_kernel
from .tuning import freq_encoder_settings


def _p2(n: int, floor: int = 16) -> int:
    """Padded tile size: a power of two, at least ``floor`` (tl.dot needs dims >= 16)."""
    return max(floor, triton.next_power_of_2(n))


def _launch_consts(x: torch.Tensor, dim: list[int]):
    c, h, k, p = dim
    s = freq_encoder_settings(x.shape[2], c, p)
    consts = dict(
        NF=x.shape[2],
        C=c,
        H=h,
        K=k,
        P=p,
        CK=_p2(c),
        HP=max(2, triton.next_power_of_2(h)),
    )
    return s, consts


def _grid(x: torch.Tensor, kl) -> tuple[tuple[int], int, dict]:
    """Grid, blocks per utterance and launch kwargs of one kernel's KernelLaunch."""
    n_tb = triton.cdiv(x.shape[3], kl.block_t)
    return (x.shape[0] * n_tb,), n_tb, dict(BT=kl.block_t, num_warps=kl.num_warps)


def _precision(x: torch.Tensor) -> str:
    """Operand precision of the FFN dots (the ``PREC`` constexpr), chosen per call: bf16 /
    fp16 inputs multiply 16-bit operands ("bf16" / "fp16"); float32 inputs take tf32 while
    ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default, the flag under which
    the reference's ``nn.Conv1d`` FFN runs tf32 on cuDNN), else exact float32 ("ieee").
    Accumulation is float32 in every mode. The interpreter multiplies float32 whatever the
    mode. The backward's forward recompute (the GRAD FFN kernel) takes "ieee" where the
    forward takes "tf32" (with tf32 operands its registers overflow on sm_86 at c = 16), and
    the backward FFN kernels run float32 FMA dots in every mode (docs/design.md, F-Encoder
    kernels, Precision)."""
    if x.dtype == torch.bfloat16:
        return "bf16"
    if x.dtype == torch.float16:
        return "fp16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def _no_hp(consts: dict) -> dict:
    return {k: v for k, v in consts.items() if k != "HP"}


def _norm1(x, prm, eps, s, consts) -> torch.Tensor:
    """Attention + LayerNorm1 of every band: y1 as (B, F, T, C) float32."""
    b, _, f, t = x.shape
    y1 = torch.empty((b, f, t, consts["C"]), dtype=torch.float32, device=x.device)
    grid, n_tb, kw = _grid(x, s.norm1)
    launch(
        _fenc_norm1_kernel,
        grid,
        x,
        prm,
        y1,
        t,
        n_tb,
        eps,
        *_xs(x),
        GB=s.band_chunk,
        **kw,
        **consts,
    )
    return y1


# FFN kernel sizes run on CUDA: 5 (the paper's) is the size checked on a GPU (H100). 1 and 3
# pass the interpreter tests but ffn_kernel=1 failed the fp32 parity test on the H100
# (2026-11-26, cause not found without a GPU), so CUDA runs them in plain torch for now.
CUDA_FFN_KERNELS = (5,)
# widest tiles the launch settings are checked for (benchmarks.resources): wider FFNs would
# need their own settings (the forward FFN block outgrows 99 KB of shared memory)
MAX_CHANNELS = 16
MAX_FFN_CHANNELS = 32


def supports(dim: list[int] | tuple[int, ...], device_type: str = "cuda") -> str | None:
    """Why the kernels cannot run this F-Encoder size on ``device_type``, or None."""
    c, _, k, p = dim
    if c > MAX_CHANNELS or p > MAX_FFN_CHANNELS:
        return (
            f"channels {c} / ffn_channels {p} above the {MAX_CHANNELS} / {MAX_FFN_CHANNELS} "
            "the kernels' tiles are sized for"
        )
    if k > fc.MAX_FFN_KERNEL:
        return f"ffn_kernel {k} > {fc.MAX_FFN_KERNEL} (the band sweep keeps +-2 bands)"
    if device_type == "cuda" and k not in CUDA_FFN_KERNELS:
        return f"ffn_kernel {k} is not verified on a GPU yet (CUDA runs {CUDA_FFN_KERNELS})"
    return None


def _check(x: torch.Tensor, time_weights, params: torch.Tensor, dim) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"freq_encoder: x must be (B, 1, F, T), got {tuple(x.shape)}")
    b, _, f, t = x.shape
    if time_weights is not None and tuple(time_weights.shape) != (b, f, t):
        raise ValueError(
            f"freq_encoder: time_weights must be (B, F, T) = ({b}, {f}, {t}), "
            f"got {tuple(time_weights.shape)}"
        )
    if len(dim) != 4 or min(dim) <= 0 or dim[2] % 2 == 0:
        raise ValueError(f"freq_encoder: dims must be (C, H, K, P) with K odd, got {list(dim)}")
    size = fc.packed_size(*dim)
    if params.dim() != 1 or params.shape[0] != size:
        raise ValueError(
            f"freq_encoder: params must be the packed buffer of {size} values for "
            f"(C, H, K, P) = {tuple(dim)}, got shape {tuple(params.shape)}"
        )
    hp = max(2, triton.next_power_of_2(dim[1]))
    if max_offset(x) > MAX_OFFSET or b * t * f * max(dim[0], 2 * hp) > MAX_OFFSET:
        raise ValueError("freq_encoder: tensors beyond 2**31 - 1 elements (32-bit offsets)")


def _xs(t: torch.Tensor) -> tuple[int, int, int]:
    """(b, f, t) strides of a (B, 1, F, T) or (B, F, T) tensor."""
    return (t.stride(0), t.stride(-2), t.stride(-1))


# -------------------------------------------------------------------------------- ops
@triton_op("atfnn::freq_encoder", mutates_args=())
def freq_encoder_op(
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    params: torch.Tensor,
    dim: list[int],
    eps: float,
) -> torch.Tensor:
    """``x' (B, 1, F, T)`` -> ``(B, T, F, C)`` (times ``1 + w_t`` with ``time_weights``).
    ``params``: the packed derived parameters (:func:`.fenc_common.pack`); ``dim``:
    ``(C, H, K, P)``."""
    _check(x, time_weights, params, dim)
    if plain_torch(x, _fenc_norm1_kernel):
        return fm.forward(x, time_weights, fc.unpack(params, *dim), eps)
    s, consts = _launch_consts(x, dim)
    b, _, f, t = x.shape
    out = torch.empty((b, t, f, dim[0]), dtype=x.dtype, device=x.device)
    wt = time_weights if time_weights is not None else x  # stand-in, never read
    prm = params.float().contiguous()
    y1 = _norm1(x, prm, eps, s, consts)
    grid, n_tb, kw = _grid(x, s.ffn)
    launch(
        _fenc_ffn_kernel,
        grid,
        y1,
        wt,
        prm,
        out,
        out,
        out,
        y1,
        prm,
        t,
        n_tb,
        eps,
        0,
        0,
        *_xs(wt),
        *out.stride(),
        0,
        0,
        0,
        PK=_p2(dim[3]),
        HAS_WT=time_weights is not None,
        GRAD=False,
        PREC=_precision(x),
        **kw,
        **_no_hp(consts),
    )
    return out


@triton_op("atfnn::freq_encoder_backward", mutates_args=())
def freq_encoder_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    params: torch.Tensor,
    dim: list[int],
    eps: float,
) -> list[torch.Tensor]:
    """``[dx, d time_weights (empty without them), d params (packed)]``."""
    if plain_torch(x, _fenc_norm1_kernel):
        dx, d_time, grads = fm.backward(grad_out, x, time_weights, fc.unpack(params, *dim), eps)
        if d_time is None:
            d_time = torch.empty(0, dtype=x.dtype, device=x.device)
        return [dx, d_time, fc.pack(grads).to(params.dtype)]
    s, consts = _launch_consts(x, dim)
    b, _, f, t = x.shape
    c, hp = dim[0], consts["HP"]
    total = fc.packed_size(*dim)
    dev = x.device
    prm = params.float().contiguous()
    has_wt = time_weights is not None
    dx = torch.empty(x.shape, dtype=x.dtype, device=dev)
    d_time = (
        torch.empty(time_weights.shape, dtype=time_weights.dtype, device=dev)
        if has_wt
        else torch.empty(0, dtype=x.dtype, device=dev)
    )
    wt, dwt = (time_weights, d_time) if has_wt else (x, dx)  # stand-ins, never touched
    df2 = torch.empty((b, f, t, c), dtype=torch.float32, device=dev)
    dy1 = torch.empty_like(df2)
    dxd = torch.empty((b, f, t), dtype=torch.float32, device=dev)
    bg = torch.empty((b, f, t, 2, hp), dtype=torch.float32, device=dev)
    # one row of parameter-gradient partials per program of the widest grid; each kernel
    # writes its own fields of its programs' rows
    n_rows = max(_grid(x, kl)[0][0] for kl in (s.ffn, s.ffn_bwd_dy1, s.ffn_bwd_wgrad, s.norm1_bwd))
    part = torch.zeros((n_rows, total), dtype=torch.float32, device=dev)
    pk, prec, no_hp = _p2(dim[3]), _precision(x), _no_hp(consts)

    y1 = _norm1(x, prm, eps, s, consts)
    grid, n_tb, kw = _grid(x, s.ffn)
    launch(
        _fenc_ffn_kernel,
        grid,
        y1,
        wt,
        prm,
        grad_out,
        grad_out,
        dwt,
        df2,
        part,
        t,
        n_tb,
        eps,
        total,
        0,
        *_xs(wt),
        *grad_out.stride(),
        *_xs(dwt),
        PK=pk,
        HAS_WT=has_wt,
        GRAD=True,
        PREC="ieee" if prec == "tf32" else prec,  # see _precision
        **kw,
        **no_hp,
    )
    for kl, dy1_part in ((s.ffn_bwd_dy1, True), (s.ffn_bwd_wgrad, False)):
        grid, n_tb, kw = _grid(x, kl)
        launch(
            _fenc_bwd_ffn_kernel,
            grid,
            prm,
            y1,
            df2,
            dy1,
            part,
            t,
            n_tb,
            total,
            PK=pk,
            PREC="ieee",  # float32 FMA dots: see docs/design.md, F-Encoder kernels, Precision
            DY1=dy1_part,
            WGRAD=not dy1_part,
            **kw,
            **no_hp,
        )
    grid, n_tb, kw = _grid(x, s.norm1_bwd)
    launch(
        _fenc_bwd_norm1_kernel,
        grid,
        x,
        prm,
        dy1,
        dxd,
        bg,
        part,
        t,
        n_tb,
        eps,
        total,
        *_xs(x),
        GB=s.band_chunk,
        **kw,
        **consts,
    )
    grid, n_tb, kw = _grid(x, s.softmax_bwd)
    launch(
        _fenc_bwd_softmax_kernel,
        grid,
        x,
        prm,
        dxd,
        bg,
        dx,
        t,
        n_tb,
        *_xs(x),
        *_xs(dx),
        GB=s.band_chunk,
        **kw,
        **consts,
    )
    # partial rows summed in float64, in a fixed order: deterministic and one rounding
    return [dx, d_time, part.double().sum(dim=0).to(params.dtype)]


def _setup_context(ctx, inputs, output):
    x, time_weights, params, dim, eps = inputs
    ctx.save_for_backward(x, time_weights, params)
    ctx.dim = dim
    ctx.eps = eps


def _backward(ctx, grad_out):
    x, time_weights, params = ctx.saved_tensors
    dx, d_time, d_params = torch.ops.atfnn.freq_encoder_backward(
        grad_out, x, time_weights, params, ctx.dim, ctx.eps
    )
    return dx, (d_time if time_weights is not None else None), d_params, None, None


freq_encoder_op.register_autograd(_backward, setup_context=_setup_context)


def freq_encoder(x, *params, num_heads: int, eps: float, time_weights=None):
    """Entry point with the :func:`atfnn_fast.kernels.torch_ops.freq_encoder` signature:
    module parameters in, the packed derived (rank-one) parameters to the op."""
    with torch.autocast(x.device.type, enabled=False):  # derived parameters stay float32
        derived = fm.derive(*params, num_heads=num_heads)
        packed = fc.pack(derived)
    return torch.ops.atfnn.freq_encoder(x, time_weights, packed, list(fc.dims(derived)), eps)
