"""Helpers shared by the Triton ops: one launch path, the device choice, 32-bit offsets.

Every kernel launch of the package goes through :func:`launch`. That single path is what
lets :mod:`benchmarks.resources` compile every kernel the ops launch for a named GPU
architecture on a machine without a GPU: it installs a *recorder* (:func:`recording`) that
receives each launch instead of the device, and the ops take their Triton branch for CPU
tensors while it is installed (nothing runs; the recorder only compiles).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.library import wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from . import dispatch
from .dispatch import get_backend

MAX_OFFSET = 2**31 - 1

# launch recorder: f(kernel, grid, args, kwargs); None = launch for real
_recorder: Callable | None = None


@contextlib.contextmanager
def recording(recorder: Callable) -> Iterator[None]:
    """Send every kernel launch to ``recorder(kernel, grid, args, kwargs)`` instead of the
    device, and let CPU tensors take the ops' Triton branch (see the module docstring)."""
    global _recorder
    previous, _recorder = _recorder, recorder
    was, dispatch.recording_launches = dispatch.recording_launches, True
    try:
        yield
    finally:
        _recorder = previous
        dispatch.recording_launches = was


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)``: through ``wrap_triton`` (visible to
    torch.compile / export) for compiled kernels, directly for interpreted ones (wrap_triton
    accepts compiled kernels only), or into the active recorder."""
    if _recorder is not None:
        _recorder(kernel, grid, args, kwargs)
        return
    if isinstance(kernel, InterpretedFunction):
        kernel[grid](*args, **kwargs)
        return
    # Triton launches on the current CUDA device: a tensor on another one (``cuda:1``
    # while device 0 is current) needs that device made current for the launch (looked for
    # only where there is more than one device: no cost on the hot path otherwise)
    device = None
    if torch.cuda.device_count() > 1:
        device = next(
            (
                v.device
                for v in (*kwargs.values(), *args)
                if isinstance(v, torch.Tensor) and v.is_cuda
            ),
            None,
        )
    if device is not None and device.index not in (None, torch.cuda.current_device()):
        with torch.cuda.device(device):
            wrap_triton(kernel)[grid](*args, **kwargs)
        return
    wrap_triton(kernel)[grid](*args, **kwargs)


def plain_torch(t: torch.Tensor, kernel) -> bool:
    """Non-CUDA tensors take an op's plain-torch implementation, unless ATFNN_BACKEND=triton
    and the kernels were built by the Triton interpreter (TRITON_INTERPRET=1 at import), or
    a launch recorder is installed. Decided inside the op, so eager, torch.compile and
    export all see the same choice."""
    if _recorder is not None:
        return False
    interpreted = isinstance(kernel, InterpretedFunction)
    return t.device.type != "cuda" and not (interpreted and get_backend() == "triton")


def interpreted(t: torch.Tensor) -> bool:
    """True when a launch for ``t`` runs through the Triton interpreter (CPU tensors)."""
    return t.device.type != "cuda" and _recorder is None


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset a tensor's view reaches (32-bit kernel offsets must hold it)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
