"""The public entry of band attention: each call is routed by :mod:`..dispatch` to the custom op
``atfnn::band_attention`` (Triton on CUDA, :mod:`.cpu` on the CPU) or to the plain-torch
:mod:`.reference`."""

from __future__ import annotations

import torch

from ..dispatch import TRITON_IMPLS, register, select
from . import cpu, reference


def _cpu_entry(source, weight, bias, target=None, *, axis: str):
    """The CPU implementation where the custom op is missing (no Triton): eager calls take
    :func:`.cpu.band_attention`; while compiling, the reference (for Inductor)."""
    if axis not in reference.AXES:
        raise ValueError(f"axis must be one of {reference.AXES}, got {axis!r}")
    if torch.compiler.is_compiling():
        return reference.band_attention(source, weight, bias, target, axis=axis)
    return cpu.band_attention(source, weight, bias, target, axis == "time")


custom_op = register("band_attention", __package__ + ".custom_op", _cpu_entry)


def band_attention(
    source: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    axis: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F- or T-Attention; see :func:`.reference.band_attention` for the contract."""
    impl = select(
        "band_attention",
        source,
        reference.band_attention,
        TRITON_IMPLS.get("band_attention"),
    )
    return impl(source, weight, bias, target, axis=axis)
