"""The F-Encoder on the native CPU core (``native.cpp`` beside this file; the loader, ISA
choice and threads are :mod:`..native`): the same functions as :mod:`.cpu`'s ATen path,
computed one frame at a time in cache (docs/design.md#native-cpu-core).

The derived parameters (:class:`.rank_one.Derived`) travel packed in the core's order; the
core returns the gradients of the derived parameters, and :func:`.rank_one.derive_vjp` takes
them to the module's parameters, as on every other path. float32 inside; bf16/fp16 inputs are
computed in float32 and returned in their dtype; float64 inputs stay on the ATen path, which
computes in float64 (the exactness tests' oracle).
"""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .rank_one import Derived

MAX_KERNEL = 17  # the core's zero halo holds 8 bands on each side
BACKWARD_FRAMES = 64  # frames of one backward range (a multiple of the core's flush of 8)
_STAT_ROWS = 3  # per head and band: m, 1/Z, the variance of the softmax


def traceless(x: torch.Tensor) -> bool:
    """Whether this call computes real values: a plain tensor, no tracing or dispatch mode
    (fake tensors, make_fx, torch.export, functionalization, compile) is active. The core
    reads raw data pointers, which a tracer can neither see nor record: those calls take the
    ATen path, whose ops they trace."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if type(x) not in (torch.Tensor, torch.nn.Parameter) or torch.compiler.is_compiling():
        return False
    return _get_current_dispatch_mode() is None


def unsupported(x: torch.Tensor, p: Derived) -> str | None:
    """Why the native core cannot run this call (None where it can)."""
    if not native.available():
        return native.missing_reason()
    if x.dtype == torch.float64:
        return "float64 inputs take the ATen path (computed in float64)"
    if x.device.type != "cpu":
        return f"{x.device.type} tensors"
    k = p.w1col.shape[0] // p.w_lift.shape[0]
    if k > MAX_KERNEL:
        return f"ffn_kernel {k} > {MAX_KERNEL}"
    return None


def _field_shapes(p: Derived) -> list[torch.Tensor]:
    """The derived parameters in the core's order and layout (W1 as [P][c][k], W2 as
    [c][P][k])."""
    c = p.w_lift.shape[0]
    n_p = p.ffn1_bias.shape[0]
    k = p.w1col.shape[0] // c
    w1 = p.w1col.reshape(k, c, n_p).permute(2, 1, 0)  # [P][c][k]
    w2 = p.w2col.reshape(k, n_p, c).permute(2, 1, 0)  # [c][P][k]
    return [
        p.w_lift,
        p.e_bias,
        p.a_head,
        p.b_head,
        p.u_head,
        p.norm1_weight,
        p.norm1_bias,
        w1,
        p.ffn1_bias,
        w2,
        p.ffn2_bias,
        p.norm2_weight,
        p.norm2_bias,
    ]


def pack(p: Derived) -> torch.Tensor:
    """Derived parameters -> the core's flat float32 buffer."""
    return torch.cat([t.detach().float().reshape(-1) for t in _field_shapes(p)])


def unpack_grads(flat: torch.Tensor, p: Derived) -> Derived:
    """The core's flat gradient buffer -> :class:`Derived` in ``p``'s layouts and dtypes."""
    c = p.w_lift.shape[0]
    n_p = p.ffn1_bias.shape[0]
    k = p.w1col.shape[0] // c
    parts, off = [], 0
    for t in _field_shapes(p):
        n = t.numel()
        parts.append(flat[off : off + n].reshape(t.shape))
        off += n
    w1 = parts[7].permute(2, 1, 0).reshape(k * c, n_p)
    w2 = parts[9].permute(2, 1, 0).reshape(k * n_p, c)
    fields = [*parts[:7], w1, parts[8], w2, *parts[10:]]
    # separate tensors (slices of one buffer would alias each other in the op's outputs)
    return Derived(*(g.to(q.dtype, copy=True).contiguous() for g, q in zip(fields, p, strict=True)))


def _dims_array(x, time_weights, out, dx=None, d_time=None, gout=None, c=0, h=0, n_p=0, k=0):
    b, _, n_f, t = x.shape
    zero3 = [0, 0, 0]
    xs = [x.stride(0), x.stride(2), x.stride(3)]
    ws = zero3 if time_weights is None else list(time_weights.stride())
    os_ = [0, 0, 0, 0] if out is None else list(out.stride())
    gs = [0, 0, 0, 0] if gout is None else list(gout.stride())
    ds = zero3 if dx is None else [dx.stride(0), dx.stride(2), dx.stride(3)]
    dws = zero3 if d_time is None else list(d_time.stride())
    vals = [b, n_f, t, c, h, n_p, k, int(time_weights is not None), *xs, *ws, *os_, *gs, *ds, *dws]
    return (ctypes.c_long * len(vals))(*vals)


def _sizes(p: Derived) -> tuple[int, int, int, int]:
    c = p.w_lift.shape[0]
    return c, p.a_head.shape[0], p.ffn1_bias.shape[0], p.w1col.shape[0] // c


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def forward(
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    p: Derived,
    eps: float,
    keep_stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x' (B, 1, F, T)`` -> ``(out (B, T, F, c), stats or None)``: the function of
    :func:`.cpu.forward`; ``stats`` (``(B*T, h, 3, F)`` float32) spares the backward the
    attention's exponentials."""
    lib = native.library()
    code = native.isa_code()
    c, h, n_p, k = _sizes(p)
    b, _, n_f, t = x.shape
    xf, wt = _f32(x), _f32(time_weights)
    prm = pack(p)
    out = torch.empty((b, t, n_f, c), dtype=torch.float32)
    stats = torch.empty((b * t, h, _STAT_ROWS, n_f)) if keep_stats else None
    dims = _dims_array(xf, wt, out, c=c, h=h, n_p=n_p, k=k)
    args = (_ptr(xf), _ptr(wt), _ptr(prm), _ptr(out), _ptr(stats))

    def call(_q, n0, n1):
        return lib.atfnn_fenc_forward(code, dims, eps, *args, n0, n1)

    with torch.profiler.record_function("atfnn::native_freq_encoder_forward"):
        native.run_chunks(call, native.chunks(b * t))
    return out.to(x.dtype), stats


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    time_weights: torch.Tensor | None,
    p: Derived,
    eps: float,
    stats: torch.Tensor | None = None,
):
    """Gradients of :func:`forward`: ``(dx, d time_weights or None, Derived of grads)``, as
    :func:`.cpu.backward`; recomputes the forward one frame at a time (and the attention's
    exponentials too where ``stats`` is None)."""
    lib = native.library()
    code = native.isa_code()
    c, h, n_p, k = _sizes(p)
    b, _, n_f, t = x.shape
    xf, wt, gout = _f32(x), _f32(time_weights), _f32(grad_out)
    prm = pack(p)
    dx = torch.empty((b, 1, n_f, t), dtype=torch.float32)
    d_time = None if wt is None else torch.empty_like(wt)
    # fixed ranges of frames (not one per thread): the parameter gradients' per-range sums,
    # added in order, are the same bits on any number of threads
    ranges = native.blocks(b * t, BACKWARD_FRAMES)
    dprm = torch.empty((len(ranges), prm.numel()), dtype=torch.float32)
    dims = _dims_array(xf, wt, None, dx, d_time, gout, c=c, h=h, n_p=n_p, k=k)
    st = None if stats is None else stats.contiguous()
    args = (_ptr(xf), _ptr(wt), _ptr(prm), _ptr(st), _ptr(gout), _ptr(dx), _ptr(d_time))

    def call(q, n0, n1):
        return lib.atfnn_fenc_backward(code, dims, eps, *args, _ptr(dprm[q]), n0, n1)

    with torch.profiler.record_function("atfnn::native_freq_encoder_backward"):
        native.run_chunks(call, ranges)
    grads = unpack_grads(native.ordered_sum(dprm), p)
    if d_time is not None:
        d_time = d_time.to(time_weights.dtype)
    return dx.to(x.dtype), d_time, grads
