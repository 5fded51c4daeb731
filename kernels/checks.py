"""The NaN/Inf input check of :class:`atfnn_fast.ATFNN`, without a host sync
(docs/design.md#choices-the-paper-leaves-open).

:func:`assert_finite` never copies a device value to the host:

* CUDA tensors (and CPU tensors while a launch recorder is installed, so that
  ``benchmarks.resources`` compiles it): one Triton launch, :func:`_assert_finite_kernel`,
  a device-side assert whose message names ``x`` and says NaN/Inf. It fires
  asynchronously: the message is printed by the device, and the next synchronising CUDA
  call raises ``CUDA error: device-side assert triggered``. A device-side assert leaves the
  CUDA context unusable (the process must restart), the price of not synchronising;
  ``check_finite="sync"`` gives a ``ValueError`` with counts instead, at one sync per call.
* other tensors: ``torch._assert_async``; on the CPU it checks at once (there is no device
  to wait for) and raises a ``RuntimeError``, which :class:`atfnn_fast.ATFNN` turns into
  the ``ValueError`` with NaN and Inf counts of the synchronous check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch as _launch

BLOCK = 1024


@triton.jit(debug=True)  # debug: device_assert is compiled in only for debug kernels
def _assert_finite_kernel(
    x_ptr,  # (B, F, T) view of the input, any strides
    n_elements,
    n_f,
    n_t,
    x_sb,
    x_sf,
    x_st,
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elements
    idx = tl.where(mask, idx, 0)  # masked lanes must not overflow the offsets (debug=True checks)
    t = idx % n_t
    rest = idx // n_t
    off = (rest // n_f) * x_sb + (rest % n_f) * x_sf + t * x_st
    v = tl.load(x_ptr + off, mask=mask, other=0.0)
    finite = tl.abs(v) < float("inf")  # False for +-Inf and NaN
    tl.device_assert(
        finite | ~mask, "x must be finite: the input contains NaN or Inf values (check_finite)"
    )


def assert_finite(x: torch.Tensor) -> None:
    """Check ``x`` (``(B, 1, F, T)`` or ``(B, F, T)``) for NaN/Inf without a host sync (see
    the module docstring)."""
    recording = _launch._recorder is not None
    if (x.is_cuda or recording) and x.numel() + BLOCK <= _launch.MAX_OFFSET:
        launch_assert_finite(x)
        return
    torch._assert_async(torch.isfinite(x).all(), "x must be finite: NaN or Inf values")


def launch_assert_finite(x: torch.Tensor) -> None:
    """One launch of :func:`_assert_finite_kernel` over ``x`` (``(B, 1, F, T)`` or
    ``(B, F, T)``, fewer than 2**31 elements)."""
    v = x if x.dim() == 3 else x[:, 0]
    b, f, t = v.shape
    n = b * f * t
    if max(_launch.max_offset(v), n) > _launch.MAX_OFFSET:
        v = v.contiguous()
    _launch.launch(
        _assert_finite_kernel,
        (triton.cdiv(n, BLOCK),),
        x_ptr=v,
        n_elements=n,
        n_f=f,
        n_t=t,
        x_sb=v.stride(0),
        x_sf=v.stride(1),
        x_st=v.stride(2),
        BLOCK=BLOCK,
        num_warps=4,
    )
