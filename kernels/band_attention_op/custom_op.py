"""Fused band attention (F-Attention and T-Attention): ``atfnn::band_attention``.

One pass over the data per direction. A *window* is one conv window of the attention: a
group of ``G`` bands at one frame (F-Attention, ``axis="freq"``) or of ``G`` frames at one
band (T-Attention, ``axis="time"``). Per window the forward kernel

1. loads the ``C_in x G`` source values and computes the ``C`` conv outputs (bias included)
   with plain FMAs (``C_in * G`` <= a few hundred: no ``tl.dot``, so no 16-wide minimum),
2. takes the mean over the ``C`` channels of their sigmoid: the window's weight ``w``,
3. writes ``out = target + w * target`` for the ``G`` positions of the window (all ``W``
   channels of an encoding target) and ``w`` into the ``(B, F, T)`` weight map.

The backward kernel recomputes ``w`` from the source (nothing but the inputs is saved), then
``d target = d out * (1 + w)``, ``dw = sum(d out * target) + sum(d map)`` per window,
``dz_c = dw / C * a_c (1 - a_c)``, ``d source = sum_c dz_c W_c`` and per-program partial sums
of ``dz_c * source`` and ``dz_c`` for the weight and bias gradients. A second kernel
(:func:`_band_param_grad_kernel`) sums the partials (float32 tiles of 64 rows, accumulated in
float64) over a fixed program order
(deterministic, run to run) and writes the gradients in the parameters' dtypes: two launches
per backward, no fill (an unused output's gradient is never materialised: ``HAS_GOUT``).

Everything is computed in float32 whatever the input dtype (fp32, bf16, fp16); outputs take
the target's dtype, the weight map the source's. Any strides are accepted (non-contiguous
inputs are read in place). Offsets are 32-bit: each tensor must hold < 2**31 elements.

The op (``torch.library.triton_op``) has a Triton implementation for CUDA tensors (CPU
tensors too with ``TRITON_INTERPRET=1`` and ``ATFNN_BACKEND=triton``), a plain-torch
implementation for the CPU (:func:`band_attention_cpu`), a fake implementation (its host
code, traceable), and an autograd formula that calls ``atfnn::band_attention_backward``
(Triton on CUDA, :func:`band_attention_backward_cpu` on the CPU). The device choice is made
inside the op body, so torch.compile and torch.export trace the same branch as eager.
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op

from ..launch import MAX_OFFSET, launch, max_offset, plain_torch
from ..tuning import band_attention_settings
from . import cpu, reference
from .backward import _band_bwd_kernel, _band_param_grad_kernel
from .cpu import band_attention_backward_cpu, band_attention_cpu
from .forward import _band_fwd_kernel

PARAM_GRAD_ROWS = 64
PARAM_GRAD_BLOCK = 64


def _src_strides(t: torch.Tensor, group: int, time_axis: bool) -> tuple[int, ...]:
    """(b, i, j, k, c) strides of a (B, C, F, T) tensor; window grid (i, j) is
    (F/G, T) for F-Attention and (T/G, F) for T-Attention (band fastest)."""
    sb, sc, sf, st = t.stride()
    if time_axis:
        return sb, group * st, sf, st, sc
    return sb, group * sf, st, sf, sc


def _enc_strides(t: torch.Tensor, group: int) -> tuple[int, ...]:
    """(b, i, j, k, c) strides of a (B, T, F, W) encoding for the T-Attention grid."""
    eb, et, ef, ec = t.stride()
    return eb, group * et, ef, et, ec


def _map_strides(t: torch.Tensor, group: int, time_axis: bool) -> tuple[int, ...]:
    mb, mf, mt = t.stride()
    if time_axis:
        return mb, group * mt, mf, mt
    return mb, group * mf, mt, mf


def _named(prefix: str, strides: tuple[int, ...]) -> dict[str, int]:
    """``(b, i, j, k[, c])`` strides as the kernels' keyword arguments ``prefix_b`` ..."""
    return {f"{prefix}_{axis}": v for axis, v in zip("bijkc", strides, strict=False)}


def _geometry(source: torch.Tensor, weight: torch.Tensor, target, time_axis: bool, backward: bool):
    b, c_in, f, t = source.shape
    c, _, kf, kt = weight.shape
    group = kt if time_axis else kf
    n_i, n_j = (t // group, f) if time_axis else (f // group, t)
    width = 1 if target is None else target.shape[-1]
    kp = triton.next_power_of_2(c_in * group)
    gwp = triton.next_power_of_2(group * width)
    settings = band_attention_settings(kp, gwp, backward)
    consts = dict(
        C=c,
        CIN=c_in,
        G=group,
        W=width,
        KP=kp,
        GWP=gwp,
        GP=triton.next_power_of_2(group),
        BLOCK=settings.block,
        num_warps=settings.num_warps,
        **({"num_stages": settings.num_stages} if settings.num_stages is not None else {}),
    )
    return b * n_i * n_j, n_i, n_j, consts


def _check(source, weight, bias, target, time_axis: bool) -> None:
    if source.dim() != 4 or weight.dim() != 4 or bias.dim() != 1:
        raise ValueError(
            f"band_attention: expected source (B, C_in, F, T), weight (C, C_in, kf, kt), "
            f"bias (C,); got {tuple(source.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    b, c_in, f, t = source.shape
    c, w_in, kf, kt = weight.shape
    if w_in != c_in or bias.shape[0] != c or (kf, kt)[1 - time_axis] != 1:
        raise ValueError(
            f"band_attention: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not "
            f"fit source {tuple(source.shape)} ({'time' if time_axis else 'freq'} axis)"
        )
    group = kt if time_axis else kf
    if (t if time_axis else f) % group:
        raise ValueError(f"band_attention: {'T' if time_axis else 'F'} not a multiple of {group}")
    if target is None:
        if c_in != 1:
            raise ValueError("band_attention: without a target the source must have 1 channel")
    elif not time_axis or target.dim() != 4 or tuple(target.shape[:3]) != (b, t, f):
        raise ValueError(
            f"band_attention: target must be (B, T, F, W) = ({b}, {t}, {f}, W) with "
            f"axis='time', got {tuple(target.shape)}"
        )
    for name, tensor in (("source", source), ("target", target)):
        if tensor is not None and max_offset(tensor) > MAX_OFFSET:
            raise ValueError(
                f"band_attention: {name} spans more than 2**31 - 1 elements (32-bit offsets)"
            )


# -------------------------------------------------------------------------- forward op
@triton_op("atfnn::band_attention", mutates_args=())
def band_attention_op(
    source: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: torch.Tensor | None,
    time_axis: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, w)``: see the module docstring; ``target=None`` re-weights the source."""
    _check(source, weight, bias, target, time_axis)
    if plain_torch(source, _band_fwd_kernel):
        return band_attention_cpu(source, weight, bias, target, time_axis)
    n_windows, n_i, n_j, consts = _geometry(source, weight, target, time_axis, False)
    b, _, f, t = source.shape
    tgt = source if target is None else target
    out = torch.empty(tgt.shape, dtype=tgt.dtype, device=tgt.device)
    wmap = torch.empty((b, f, t), dtype=source.dtype, device=source.device)
    group = consts["G"]
    src_s = _src_strides(source, group, time_axis)
    if target is None:
        tgt_s, out_s = src_s, _src_strides(out, group, time_axis)
    else:
        tgt_s, out_s = _enc_strides(target, group), _enc_strides(out, group)
    grid = (triton.cdiv(n_windows, consts["BLOCK"]),)
    launch(
        _band_fwd_kernel,
        grid,
        src_ptr=source,
        w_ptr=weight,
        b_ptr=bias,
        tgt_ptr=tgt,
        out_ptr=out,
        map_ptr=wmap,
        n_windows=n_windows,
        n_i=n_i,
        n_j=n_j,
        **_named("s", src_s),
        **_named("t", tgt_s),
        **_named("o", out_s),
        **_named("m", _map_strides(wmap, group, time_axis)),
        **consts,
    )
    return out, wmap


@triton_op("atfnn::band_attention_backward", mutates_args=())
def band_attention_backward_op(
    grad_out: torch.Tensor | None,
    grad_map: torch.Tensor | None,
    source: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: torch.Tensor | None,
    time_axis: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d source, d target, d weight, d bias)``; ``d target`` is empty without a target
    (its gradient is then part of ``d source``). ``grad_out`` / ``grad_map`` None: that
    output was not used (a zero gradient, never materialised)."""
    if plain_torch(source, _band_fwd_kernel):
        return band_attention_backward_cpu(
            grad_out, grad_map, source, weight, bias, target, time_axis
        )
    n_windows, n_i, n_j, consts = _geometry(source, weight, target, time_axis, True)
    group, c, kp = consts["G"], consts["C"], consts["KP"]
    tgt = source if target is None else target
    dsrc = torch.empty(source.shape, dtype=source.dtype, device=source.device)
    # without a target its gradient is part of d source; an empty tensor is returned and
    # d source stands in as the (never written) kernel argument: no null pointer reaches it
    dtgt = (
        torch.empty(target.shape, dtype=target.dtype, device=target.device)
        if target is not None
        else torch.empty(0, dtype=source.dtype, device=source.device)
    )
    dtgt_arg = dtgt if target is not None else dsrc
    n_prog = triton.cdiv(n_windows, consts["BLOCK"])
    dw_part = torch.empty((n_prog, c, kp), dtype=torch.float32, device=source.device)
    db_part = torch.empty((n_prog, c), dtype=torch.float32, device=source.device)
    src_s = _src_strides(source, group, time_axis)
    has_gout = grad_out is not None
    gout = grad_out if has_gout else tgt  # stand-in pointer, never read
    if target is None:
        tgt_s = src_s
        gout_s = _src_strides(gout, group, time_axis)
        dtgt_s = (0, 0, 0, 0, 0)
    else:
        tgt_s, gout_s = _enc_strides(target, group), _enc_strides(gout, group)
        dtgt_s = _enc_strides(dtgt, group)
    gmap = grad_map if grad_map is not None else source  # stand-in pointer, never read
    map_s = _map_strides(grad_map, group, time_axis) if grad_map is not None else (0, 0, 0, 0)
    cp = triton.next_power_of_2(c)
    launch(
        _band_bwd_kernel,
        (n_prog,),
        src_ptr=source,
        w_ptr=weight,
        b_ptr=bias,
        tgt_ptr=tgt,
        gout_ptr=gout,
        gmap_ptr=gmap,
        dsrc_ptr=dsrc,
        dtgt_ptr=dtgt_arg,
        dw_part_ptr=dw_part,
        db_part_ptr=db_part,
        n_windows=n_windows,
        n_i=n_i,
        n_j=n_j,
        **_named("s", src_s),
        **_named("t", tgt_s),
        **_named("g", gout_s),
        **_named("m", map_s),
        **_named("ds", _src_strides(dsrc, group, time_axis)),
        **_named("dt", dtgt_s),
        HAS_GOUT=has_gout,
        HAS_GMAP=grad_map is not None,
        FUSED_TARGET=target is None,
        CP=cp,
        **consts,
    )
    # the per-program partials summed in a fixed order (deterministic), float32 tiles of
    # PARAM_GRAD_ROWS rows accumulated in float64
    dweight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    dbias = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)
    launch(
        _band_param_grad_kernel,
        (triton.cdiv(c * kp, PARAM_GRAD_BLOCK) + 1,),
        dw_part_ptr=dw_part,
        db_part_ptr=db_part,
        dw_ptr=dweight,
        db_ptr=dbias,
        n_prog=n_prog,
        C=c,
        KQ=consts["CIN"] * group,
        KP=kp,
        CP=cp,
        RB=PARAM_GRAD_ROWS,
        BLOCK=PARAM_GRAD_BLOCK,
        num_warps=4,
    )
    return dsrc, dtgt, dweight, dbias


# ------------------------------------------------------------------------------ autograd
def _setup_context(ctx, inputs, output):
    source, weight, bias, target, time_axis = inputs
    ctx.save_for_backward(source, weight, bias, target)
    ctx.time_axis = time_axis
    ctx.set_materialize_grads(False)  # an unused weight map stays None: no extra read


def _backward(ctx, grad_out, grad_map):
    source, weight, bias, target = ctx.saved_tensors
    if grad_out is None and grad_map is None:
        return None, None, None, None, None
    dsrc, dtgt, dweight, dbias = torch.ops.atfnn.band_attention_backward(
        grad_out, grad_map, source, weight, bias, target, ctx.time_axis
    )
    return dsrc, dweight, dbias, (dtgt if target is not None else None), None


band_attention_op.register_autograd(_backward, setup_context=_setup_context)


def band_attention(source, weight, bias, target=None, *, axis: str):
    """Entry point with the :func:`atfnn_fast.kernels.reference.band_attention` signature.
    CPU tensors in eager mode take :func:`.cpu.band_attention` (autograd that keeps the
    window activations, without the op's dispatch); the op itself serves torch.compile,
    export and the interpreter."""
    if axis not in reference.AXES:
        raise ValueError(f"axis must be one of {reference.AXES}, got {axis!r}")
    if (
        source.device.type == "cpu"
        and plain_torch(source, _band_fwd_kernel)
        and not torch.compiler.is_compiling()
    ):
        _check(source, weight, bias, target, axis == "time")
        return cpu.band_attention(source, weight, bias, target, axis == "time")
    return torch.ops.atfnn.band_attention(source, weight, bias, target, axis == "time")
