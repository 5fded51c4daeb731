"""Band attention on the native CPU core (``native.cpp`` beside this file; the loader, ISA
choice and threads are :mod:`..native`): the same functions as :mod:`.cpu`'s ATen path, one
batch item at a time with no intermediate maps (docs/design.md#native-cpu-core).

float32 inside; other floating dtypes are computed in float32 and returned in their dtype,
except float64, which stays on the ATen path (computed in float64).
"""

from __future__ import annotations

import ctypes

import torch

from .. import native
from ..freq_encoder_op.native import traceless

__all__ = ["backward", "forward", "traceless", "unsupported"]


def unsupported(source: torch.Tensor, weight: torch.Tensor, target) -> str | None:
    """Why the native core cannot run this call (None where it can)."""
    if not native.available():
        return native.missing_reason()
    if source.dtype == torch.float64 or weight.dtype == torch.float64:
        return "float64 inputs take the ATen path (computed in float64)"
    if source.device.type != "cpu":
        return f"{source.device.type} tensors"
    kf, kt = weight.shape[-2:]
    if source.shape[2] % kf or source.shape[3] % kt:
        return "the bands or frames are not a whole number of windows"
    return None


def _dims(source, weight, target):
    b, c_in, n_f, t = source.shape
    wd = 0 if target is None else target.shape[-1]
    vals = [b, c_in, n_f, t, weight.shape[0], weight.shape[2], weight.shape[3], wd]
    return (ctypes.c_long * len(vals))(*vals)


def _f32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def forward(source, weight, bias, target, keep: bool = False, want_out: bool = True):
    """``(out or None, weight map (B, F, T), window activations or None)``: the function of
    :func:`.reference.band_attention`; ``keep`` returns the activations ``sigmoid(conv)``
    ``(B, C, F/kf, T/kt)`` for the backward; ``want_out=False`` skips the re-weighting
    (ATFNN uses only the T-Attention's map on its fused path)."""
    lib, code = native.library(), native.isa_code()
    src, w, bb, tg = _f32(source), _f32(weight), _f32(bias), _f32(target)
    b, _, n_f, t = src.shape
    kf, kt = w.shape[-2:]
    wmap = torch.empty((b, n_f, t))
    out = None
    if want_out:
        out = torch.empty(src.shape if tg is None else tg.shape)
    act = torch.empty((b, w.shape[0], n_f // kf, t // kt)) if keep else None
    dims = _dims(src, w, tg)
    args = (_ptr(src), _ptr(w), _ptr(bb), _ptr(tg), _ptr(out), _ptr(wmap), _ptr(act))
    with torch.profiler.record_function("atfnn::native_band_attention_forward"):
        native.run_chunks(
            lambda _q, b0, b1: lib.atfnn_ba_forward(code, dims, *args, b0, b1),
            native.chunks(b, per_item=t),
        )
    dtype = source.dtype if target is None else target.dtype
    return (None if out is None else out.to(dtype)), wmap.to(source.dtype), act


def backward(grad_out, grad_map, source, weight, bias, target, act=None):
    """``(d source, d target or an empty tensor, d weight, d bias)``, as
    :func:`.cpu.band_attention_backward_cpu`; ``act``: the forward's kept activations
    (recomputed where None)."""
    lib, code = native.library(), native.isa_code()
    src, w, bb, tg = _f32(source), _f32(weight), _f32(bias), _f32(target)
    g, gm = _f32(grad_out), _f32(grad_map)
    b = src.shape[0]
    ranges = native.blocks(b, 1)  # one batch item a range: the same sums on any threads
    dsrc = torch.empty_like(src)
    dtgt = None if tg is None else torch.empty_like(tg)
    dw = torch.empty((len(ranges), w.numel()))
    db = torch.empty((len(ranges), w.shape[0]))
    dims = _dims(src, w, tg)
    args = (_ptr(src), _ptr(w), _ptr(bb), _ptr(tg), _ptr(act), _ptr(g), _ptr(gm))
    args += (_ptr(dsrc), _ptr(dtgt))
    with torch.profiler.record_function("atfnn::native_band_attention_backward"):
        native.run_chunks(
            lambda q, b0, b1: lib.atfnn_ba_backward(
                code, dims, *args, _ptr(dw[q]), _ptr(db[q]), b0, b1
            ),
            ranges,
        )
    if dtgt is None:
        dtgt = torch.empty(0, dtype=source.dtype)
    else:
        dtgt = dtgt.to(target.dtype)
    return (
        dsrc.to(source.dtype),
        dtgt,
        native.ordered_sum(dw).reshape(weight.shape).to(weight.dtype),
        native.ordered_sum(db).to(bias.dtype),
    )
