"""The public entry of the F-Encoder: each call is routed by :mod:`..dispatch` to the custom op
``atfnn::freq_encoder`` (Triton on CUDA, :mod:`.cpu` on the CPU) or to the plain-torch
:mod:`.reference`."""

from __future__ import annotations

import torch

from ..dispatch import TRITON_IMPLS, register, select
from . import cpu, reference


def _cpu_entry(x, *params, num_heads: int, eps: float, time_weights=None):
    """The CPU implementation where the custom op is missing (no Triton): eager calls take
    :func:`.cpu.freq_encoder`; while compiling, the reference (for Inductor)."""
    if torch.compiler.is_compiling():
        return reference.freq_encoder(
            x, *params, num_heads=num_heads, eps=eps, time_weights=time_weights
        )
    return cpu.freq_encoder(x, *params, num_heads=num_heads, eps=eps, time_weights=time_weights)


custom_op = register("freq_encoder", __package__ + ".custom_op", _cpu_entry)


def freq_encoder(
    x: torch.Tensor,
    *params: torch.Tensor,
    num_heads: int,
    eps: float,
    time_weights: torch.Tensor | None = None,
):
    """The F-Encoder (times ``1 + w_t`` with ``time_weights``); see
    :func:`.reference.freq_encoder` for the contract."""
    unsupported = None
    if "freq_encoder" in TRITON_IMPLS:
        k = params[8].shape[-1]  # ffn1.weight (P, c, k)
        dims = [params[0].shape[0], num_heads, k, params[8].shape[0]]
        unsupported = custom_op.supports(dims, x.device.type)
    impl = select(
        "freq_encoder",
        x,
        reference.freq_encoder,
        TRITON_IMPLS.get("freq_encoder"),
        unsupported,
    )
    return impl(x, *params, num_heads=num_heads, eps=eps, time_weights=time_weights)
