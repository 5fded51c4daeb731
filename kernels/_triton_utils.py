"""Helpers shared by the Triton ops: launching through wrap_triton and the device choice."""

from __future__ import annotations

import torch
from torch.library import wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from .dispatch import get_backend

MAX_OFFSET = 2**31 - 1


def launcher(kernel):
    """``wrap_triton(kernel)`` (visible to torch.compile / export), or the kernel itself when
    the Triton interpreter built it (wrap_triton accepts compiled kernels only)."""
    return kernel if isinstance(kernel, InterpretedFunction) else wrap_triton(kernel)


def plain_torch(t: torch.Tensor, kernel) -> bool:
    """Non-CUDA tensors take an op's plain-torch implementation, unless ATFNN_BACKEND=triton
    and the kernels were built by the Triton interpreter (TRITON_INTERPRET=1 at import).
    Decided inside the op, so eager, torch.compile and export all see the same choice."""
    interpreted = isinstance(kernel, InterpretedFunction)
    return t.device.type != "cuda" and not (interpreted and get_backend() == "triton")


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset a tensor's view reaches (32-bit kernel offsets must hold it)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
