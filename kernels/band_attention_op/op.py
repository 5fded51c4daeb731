"""The public entry of band attention: each call is routed by :mod:`..dispatch` to the custom op
``atfnn::band_attention`` (Triton on CUDA, :mod:`.cpu` on the CPU) or to the plain-torch
:mod:`.reference`."""

from __future__ import annotations

import torch

from ..dispatch import TRITON_IMPLS, select
from . import reference

try:  # triton ships with torch's Linux wheels; elsewhere the op runs in plain torch
    from . import custom_op
except ImportError:  # pragma: no cover
    custom_op = None
else:
    TRITON_IMPLS["band_attention"] = custom_op.band_attention


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
