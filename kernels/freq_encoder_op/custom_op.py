"""Fused frequency encoder: ``atfnn::freq_encoder`` (+ ``atfnn::freq_encoder_backward``).

Interface module: the custom ops, their autograd formula and the host code that launches
the kernels. The kernels live beside it:

* :mod:`.fenc_forward`: attention + LayerNorm1, then FFN + LayerNorm2 + T-Attention
  multiply (with ``GRAD``: the first backward step);
* :mod:`.fenc_backward`: FFN backward (``d y1``; weight gradients), LayerNorm1 + direct
  attention backward, softmax backward;
* :mod:`.fenc_common`: the packed parameter buffer and the per-band math they share;
* :mod:`.fenc_params`: the module parameters -> the packed buffer (forward), the partial
  rows -> the module parameters' gradients (backward), one launch each;
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

import functools
import math

import torch
import triton
from torch.library import triton_op

from .. import tuning
from ..launch import MAX_OFFSET, launch, max_offset, plain_torch
from ..tuning import freq_encoder_settings
from . import common as fc
from . import cpu
from . import params as fp
from . import rank_one as fm
from .backward import (
    _fenc_bwd_dh1_kernel,
    _fenc_bwd_dy1_kernel,
    _fenc_bwd_norm1_kernel,
    _fenc_bwd_softmax_kernel,
)
from .forward import _fenc_ffn_kernel, _fenc_norm1_kernel
from .params import _fenc_derive_kernel, _fenc_param_grad_kernel


def _p2(n: int, floor: int = 16) -> int:
    """Padded tile size: a power of two, at least ``floor`` (tl.dot needs dims >= 16)."""
    return max(floor, triton.next_power_of_2(n))


def _launch_consts(x: torch.Tensor, dim: list[int]):
    c, h, k, p = dim
    s = freq_encoder_settings(x.shape[2], c, p, dtype=str(x.dtype).removeprefix("torch."))
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
    return (x.shape[0] * n_tb,), n_tb, kl.launch_kwargs()


def _precision(x: torch.Tensor) -> str:
    """Operand precision of the FFN dots (the ``PREC`` constexpr), chosen per call: bf16 /
    fp16 inputs multiply 16-bit operands ("bf16" / "fp16"); float32 inputs take tf32 while
    ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default, the flag under which
    the reference's ``nn.Conv1d`` FFN runs tf32 on cuDNN), else exact float32 ("ieee").
    Accumulation is float32 in every mode. The interpreter multiplies float32 whatever the
    mode. The backward's forward recompute (the GRAD FFN kernel) takes the mode too, but
    "ieee" for "tf32" where its tf32 variant does not fit the arch
    (:func:`.tuning.grad_recompute_precision`: c = 16 on sm_86 / sm_89); the backward FFN
    kernels take the mode, with the ReLU mask of the recompute (docs/design.md, F-Encoder
    kernels, Precision)."""
    if x.dtype == torch.bfloat16:
        return "bf16"
    if x.dtype == torch.float16:
        return "fp16"
    return tuning.current_precision()


def _no_hp(consts: dict) -> dict:
    return {k: v for k, v in consts.items() if k != "HP"}


def _norm1(x, prm, eps, s, consts) -> torch.Tensor:
    """Attention + LayerNorm1 of every band: y1 as (B, F, T, C) float32."""
    b, _, f, t = x.shape
    y1 = torch.empty((b, f, t, consts["C"]), dtype=torch.float32, device=x.device)
    grid, n_tb, kw = _grid(x, s.norm1)
    x_sb, x_sf, x_st = _xs(x)
    launch(
        _fenc_norm1_kernel,
        grid,
        x_ptr=x,
        prm_ptr=prm,
        y1_ptr=y1,
        n_t=t,
        n_tb=n_tb,
        eps=eps,
        x_sb=x_sb,
        x_sf=x_sf,
        x_st=x_st,
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


def dims_of(params, num_heads: int) -> list[int]:
    """``[C, H, K, P]`` of the F-Encoder module parameters (``FrequencyEncoder.op_params``)."""
    ffn1_weight = params[8]  # (P, C, K)
    return [params[0].shape[0], num_heads, ffn1_weight.shape[-1], ffn1_weight.shape[0]]


# module parameter shapes in the order of FrequencyEncoder.op_params, from (C, P, K)
PARAM_SHAPES = (
    ("lift.weight", lambda c, p, k: (c, 1)),
    ("lift.bias", lambda c, p, k: (c,)),
    ("attn.in_proj_weight", lambda c, p, k: (3 * c, c)),
    ("attn.in_proj_bias", lambda c, p, k: (3 * c,)),
    ("attn.out_proj.weight", lambda c, p, k: (c, c)),
    ("attn.out_proj.bias", lambda c, p, k: (c,)),
    ("norm1.weight", lambda c, p, k: (c,)),
    ("norm1.bias", lambda c, p, k: (c,)),
    ("ffn1.weight", lambda c, p, k: (p, c, k)),
    ("ffn1.bias", lambda c, p, k: (p,)),
    ("ffn2.weight", lambda c, p, k: (c, p, k)),
    ("ffn2.bias", lambda c, p, k: (c,)),
    ("norm2.weight", lambda c, p, k: (c,)),
    ("norm2.bias", lambda c, p, k: (c,)),
)


def _check(x: torch.Tensor, time_weights, params, num_heads: int) -> list[int]:
    """Shapes of the op's inputs; returns ``[C, H, K, P]``."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"freq_encoder: x must be (B, 1, F, T), got {tuple(x.shape)}")
    b, _, f, t = x.shape
    if time_weights is not None and tuple(time_weights.shape) != (b, f, t):
        raise ValueError(
            f"freq_encoder: time_weights must be (B, F, T) = ({b}, {f}, {t}), "
            f"got {tuple(time_weights.shape)}"
        )
    if len(params) != len(PARAM_SHAPES) or params[8].dim() != 3 or params[0].dim() != 2:
        raise ValueError(
            f"freq_encoder: params must be the {len(PARAM_SHAPES)} F-Encoder parameters "
            f"(FrequencyEncoder.op_params), got {len(params)} tensors"
        )
    c, p, k = params[0].shape[0], params[8].shape[0], params[8].shape[-1]
    for (name, shape), param in zip(PARAM_SHAPES, params, strict=True):
        if tuple(param.shape) != shape(c, p, k):
            raise ValueError(
                f"freq_encoder: {name} must be {shape(c, p, k)} for channels {c}, "
                f"ffn_channels {p}, ffn_kernel {k}, got {tuple(param.shape)}"
            )
    dim = [c, num_heads, k, p]
    if num_heads <= 0 or c % num_heads or k % 2 == 0:
        raise ValueError(
            f"freq_encoder: num_heads must divide channels and ffn_kernel be odd, got "
            f"(C, H, K, P) = {tuple(dim)}"
        )
    hp = max(2, triton.next_power_of_2(num_heads))
    # the partial-gradient rows: at most one per frame (block_t >= 1), packed-size wide
    part = b * t * fc.packed_size(c, num_heads, k, p)
    # the (B, F, T, .) band tensors: y1, d r2, d y1 (c), beta/gamma (2 HP), d h1 (p)
    if max_offset(x) > MAX_OFFSET or max(b * t * f * max(c, 2 * hp, p), part) > MAX_OFFSET:
        raise ValueError("freq_encoder: tensors beyond 2**31 - 1 elements (32-bit offsets)")
    return dim


def _xs(t: torch.Tensor) -> tuple[int, int, int]:
    """(b, f, t) strides of a (B, 1, F, T) or (B, F, T) tensor."""
    return (t.stride(0), t.stride(-2), t.stride(-1))


# ------------------------------------------------------------------------ parameters
PARAM_ARGS = (
    "lift_w_ptr",
    "lift_b_ptr",
    "in_w_ptr",
    "in_b_ptr",
    "out_w_ptr",
    "out_b_ptr",
    "norm1_w_ptr",
    "norm1_b_ptr",
    "ffn1_w_ptr",
    "ffn1_b_ptr",
    "ffn2_w_ptr",
    "ffn2_b_ptr",
    "norm2_w_ptr",
    "norm2_b_ptr",
)


def _size_consts(dim) -> dict:
    c, h, k, p = dim
    return dict(C=c, H=h, K=k, P=p, CK=_p2(c), HP=max(2, triton.next_power_of_2(h)))


def _derive(params, dim, device) -> torch.Tensor:
    """The packed derived parameters (float32) from the module parameters: one launch."""
    c, h, _, p = dim
    prm = torch.empty(fc.packed_size(*dim), dtype=torch.float32, device=device)
    launch(
        _fenc_derive_kernel,
        (1,),
        **dict(zip(PARAM_ARGS, params, strict=True)),
        prm_ptr=prm,
        scale=1.0 / math.sqrt(c // h),
        PK=_p2(p),
        BLOCK=fp.WEIGHT_BLOCK,
        num_warps=4,
        **_size_consts(dim),
    )
    return prm


def _param_grads(part, rows: dict, params, dim) -> list[torch.Tensor]:
    """The module parameters' gradients from the backward kernels' partial rows: one
    launch (sums in a fixed order, then the derive's vector-Jacobian product)."""
    c, h, k, p = dim
    dev = part.device
    grads = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in params]
    o_w1 = fc.param_layout(*dim)["w1col"][0]
    sums = torch.empty(o_w1, dtype=torch.float64, device=dev)
    n_w_blocks = triton.cdiv(2 * k * c * p, fp.WEIGHT_BLOCK)
    launch(
        _fenc_param_grad_kernel,
        (1 + n_w_blocks,),
        part_ptr=part,
        sums_ptr=sums,
        **dict(zip(PARAM_ARGS[:5], params[:5], strict=True)),
        **{"d_" + name: g for name, g in zip(PARAM_ARGS, grads, strict=True)},
        total=part.shape[1],
        rows_norm1=rows["norm1"],
        rows_ffn=rows["ffn"],
        rows_dh1=rows["dh1"],
        rows_small=max(rows.values()),
        scale=1.0 / math.sqrt(c // h),
        SP=triton.next_power_of_2(o_w1),
        RB=fp.ROWS_PER_STEP,
        BLOCK=fp.WEIGHT_BLOCK,
        num_warps=4,
        **_size_consts(dim),
    )
    return grads


def _cpu(name: str):
    """The op's CPU implementation of a pass: :mod:`.cpu` (streamed over blocks of frames),
    or, inside a graph being compiled, :mod:`.rank_one`'s whole-batch form, which Inductor
    fuses itself (the block loop would be unrolled into the graph)."""
    return getattr(fm if torch.compiler.is_compiling() else cpu, name)


def _rank1(name: str):
    """The "compile-rank1" implementation of a pass (``tuning.PASS_IMPLS``): ``torch.compile``
    of :mod:`.freq_encoder_math`'s ``forward`` or ``backward``, built once per process.
    Inside a graph being compiled (the op traced by an outer ``torch.compile``) the plain
    function: the outer compile compiles it there."""
    if torch.compiler.is_compiling():
        return getattr(fm, name)
    return _compiled(name)


@functools.cache
def _compiled(name: str):
    return torch.compile(getattr(fm, name))


def _math_forward(forward, x, time_weights, params, num_heads: int, eps: float):
    """The forward in plain torch (``forward``: ``fm.forward`` or its compiled form)."""
    with torch.autocast(x.device.type, enabled=False):  # derived parameters in float32
        derived = fm.derive(*params, num_heads=num_heads)
        return forward(x, time_weights, derived, eps), fc.pack(derived)


def _math_backward(backward, grad_out, x, time_weights, packed, params, num_heads, eps):
    """The backward in plain torch (``backward``: ``fm.backward`` or its compiled form),
    in the op's output format."""
    with torch.autocast(x.device.type, enabled=False):
        derived = fc.unpack(packed, *dims_of(params, num_heads))
        dx, d_time, grads = backward(grad_out, x, time_weights, derived, eps)
        d_params = fm.derive_vjp(grads, *params, num_heads=num_heads)
    if d_time is None:
        d_time = torch.empty(0, dtype=x.dtype, device=x.device)
    return [dx, d_time, *d_params]


# -------------------------------------------------------------------------------- ops
@triton_op("atfnn::freq_encoder", mutates_args=())
def freq_encoder_op(
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    params: list[torch.Tensor],
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x' (B, 1, F, T)`` -> ``(out (B, T, F, C), packed)``: ``out`` times ``1 + w_t``
    with ``time_weights``. ``params``: the module parameters in the order of
    ``FrequencyEncoder.op_params``; ``packed``: the derived (rank-one) parameters
    (:func:`.fenc_common.pack`), an output so that the backward need not derive them again
    (not differentiable)."""
    dim = _check(x, time_weights, params, num_heads)
    if plain_torch(x, _fenc_norm1_kernel):
        return _math_forward(_cpu("forward"), x, time_weights, params, num_heads, eps)
    s, consts = _launch_consts(x, dim)
    if s.forward == "compile-rank1":
        return _math_forward(_rank1("forward"), x, time_weights, params, num_heads, eps)
    params = [t.contiguous() for t in params]
    b, _, f, t = x.shape
    out = torch.empty((b, t, f, dim[0]), dtype=x.dtype, device=x.device)
    prm = _derive(params, dim, x.device)
    y1 = _norm1(x, prm, eps, s, consts)
    grid, n_tb, kw = _grid(x, s.ffn)
    has_wt = time_weights is not None
    wt = time_weights if has_wt else x  # stand-in pointer, never read
    w_sb, w_sf, w_st = _xs(wt)
    o_sb, o_st, o_sf, o_sc = out.stride()
    launch(
        _fenc_ffn_kernel,
        grid,
        y1_ptr=y1,
        wt_ptr=wt,
        prm_ptr=prm,
        out_ptr=out,
        gout_ptr=out,  # GRAD-only pointers and sizes: never touched in the forward
        dwt_ptr=out,
        df2_ptr=y1,
        part_ptr=prm,
        n_t=t,
        n_tb=n_tb,
        eps=eps,
        total=0,
        n_zero=0,
        w_sb=w_sb,
        w_sf=w_sf,
        w_st=w_st,
        o_sb=o_sb,
        o_st=o_st,
        o_sf=o_sf,
        o_sc=o_sc,
        dw_sb=0,
        dw_sf=0,
        dw_st=0,
        PK=_p2(dim[3]),
        HAS_WT=has_wt,
        GRAD=False,
        PREC=_precision(x),
        **kw,
        **_no_hp(consts),
    )
    return out, prm


@triton_op("atfnn::freq_encoder_backward", mutates_args=())
def freq_encoder_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    packed: torch.Tensor,
    params: list[torch.Tensor],
    num_heads: int,
    eps: float,
) -> list[torch.Tensor]:
    """``[dx, d time_weights (empty without them), *d params]``: the gradients of the
    module parameters, in their order and dtypes."""
    dim = dims_of(params, num_heads)
    args = (grad_out, x, time_weights, packed, params, num_heads, eps)
    if plain_torch(x, _fenc_norm1_kernel):
        return _math_backward(_cpu("backward"), *args)
    s, consts = _launch_consts(x, dim)
    if s.backward == "compile-rank1":
        return _math_backward(_rank1("backward"), *args)
    params = [t.contiguous() for t in params]
    b, _, f, t = x.shape
    c, hp = dim[0], consts["HP"]
    total = fc.packed_size(*dim)
    dev = x.device
    prm = packed.float().contiguous()
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
    # d h1 between the two backward FFN kernels, in the dots' operand width
    dh1_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
    dh1 = torch.empty((b, f, t, dim[3]), dtype=dh1_dtype, device=dev)
    dxd = torch.empty((b, f, t), dtype=torch.float32, device=dev)
    bg = torch.empty((b, f, t, 2, hp), dtype=torch.float32, device=dev)
    # one row of parameter-gradient partials per program; each kernel writes its own fields
    # of its programs' rows (every row it has), so no fill is needed: the gradient kernel
    # sums each field over its writer's rows
    rows = {
        "ffn": _grid(x, s.ffn)[0][0],
        "dh1": _grid(x, s.ffn_bwd_dh1)[0][0],
        "norm1": _grid(x, s.norm1_bwd)[0][0],
    }
    part = torch.empty((max(rows.values()), total), dtype=torch.float32, device=dev)
    pk, prec, no_hp = _p2(dim[3]), _precision(x), _no_hp(consts)
    x_sb, x_sf, x_st = _xs(x)

    y1 = _norm1(x, prm, eps, s, consts)
    grid, n_tb, kw = _grid(x, s.ffn)
    w_sb, w_sf, w_st = _xs(wt)
    g_sb, g_st, g_sf, g_sc = grad_out.stride()
    dw_sb, dw_sf, dw_st = _xs(dwt)
    launch(
        _fenc_ffn_kernel,
        grid,
        y1_ptr=y1,
        wt_ptr=wt,
        prm_ptr=prm,
        out_ptr=grad_out,  # forward-only pointer: never touched with GRAD
        gout_ptr=grad_out,
        dwt_ptr=dwt,
        df2_ptr=df2,
        part_ptr=part,
        n_t=t,
        n_tb=n_tb,
        eps=eps,
        total=total,
        n_zero=0,
        w_sb=w_sb,
        w_sf=w_sf,
        w_st=w_st,
        o_sb=g_sb,
        o_st=g_st,
        o_sf=g_sf,
        o_sc=g_sc,
        dw_sb=dw_sb,
        dw_sf=dw_sf,
        dw_st=dw_st,
        PK=pk,
        HAS_WT=has_wt,
        GRAD=True,
        PREC=tuning.grad_recompute_precision(prec, c),  # see _precision
        **kw,
        **no_hp,
    )
    grid, n_tb, kw = _grid(x, s.ffn_bwd_dh1)
    launch(
        _fenc_bwd_dh1_kernel,
        grid,
        prm_ptr=prm,
        y1_ptr=y1,
        df2_ptr=df2,
        dh1_ptr=dh1,
        part_ptr=part,
        n_t=t,
        n_tb=n_tb,
        total=total,
        KC=_p2(dim[2] * c),
        PK=pk,
        PREC=prec,
        **kw,
        **no_hp,
    )
    grid, n_tb, kw = _grid(x, s.ffn_bwd_dy1)
    launch(
        _fenc_bwd_dy1_kernel,
        grid,
        prm_ptr=prm,
        df2_ptr=df2,
        dh1_ptr=dh1,
        dy1_ptr=dy1,
        n_t=t,
        n_tb=n_tb,
        PK=pk,
        PREC=prec,
        **kw,
        **no_hp,
    )
    grid, n_tb, kw = _grid(x, s.norm1_bwd)
    launch(
        _fenc_bwd_norm1_kernel,
        grid,
        x_ptr=x,
        prm_ptr=prm,
        dy1_ptr=dy1,
        dxd_ptr=dxd,
        bg_ptr=bg,
        part_ptr=part,
        n_t=t,
        n_tb=n_tb,
        eps=eps,
        total=total,
        x_sb=x_sb,
        x_sf=x_sf,
        x_st=x_st,
        GB=s.band_chunk,
        **kw,
        **consts,
    )
    grid, n_tb, kw = _grid(x, s.softmax_bwd)
    d_sb, d_sf, d_st = _xs(dx)
    launch(
        _fenc_bwd_softmax_kernel,
        grid,
        x_ptr=x,
        prm_ptr=prm,
        dxd_ptr=dxd,
        bg_ptr=bg,
        dx_ptr=dx,
        n_t=t,
        n_tb=n_tb,
        x_sb=x_sb,
        x_sf=x_sf,
        x_st=x_st,
        d_sb=d_sb,
        d_sf=d_sf,
        d_st=d_st,
        GB=s.band_chunk,
        **kw,
        **consts,
    )
    return [dx, d_time, *_param_grads(part, rows, params, dim)]


def _setup_context(ctx, inputs, output):
    x, time_weights, params, num_heads, eps = inputs
    ctx.save_for_backward(x, time_weights, output[1], *params)
    ctx.num_heads = num_heads
    ctx.eps = eps
    ctx.set_materialize_grads(False)  # the packed output has no gradient: no zeros for it
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, _grad_packed):
    x, time_weights, packed, *params = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    dx, d_time, *d_params = torch.ops.atfnn.freq_encoder_backward(
        grad_out, x, time_weights, packed, params, ctx.num_heads, ctx.eps
    )
    return dx, (d_time if time_weights is not None else None), d_params, None, None


freq_encoder_op.register_autograd(_backward, setup_context=_setup_context)


def freq_encoder(x, *params, num_heads: int, eps: float, time_weights=None):
    """Entry point with the :func:`.reference.freq_encoder` signature: the module parameters
    go to the op as they are (it derives the rank-one parameters on the device and returns
    their gradients directly). CPU tensors in eager mode take :func:`.cpu.freq_encoder`,
    the same computation with autograd that keeps the activations for the backward; the op
    itself (which saves only its inputs) serves torch.compile, export and the interpreter."""
    if plain_torch(x, _fenc_norm1_kernel) and not torch.compiler.is_compiling():
        if x.device.type == "cpu":
            return cpu.freq_encoder(
                x, *params, num_heads=num_heads, eps=eps, time_weights=time_weights
            )
    out, _ = torch.ops.atfnn.freq_encoder(x, time_weights, list(params), num_heads, eps)
    return out
