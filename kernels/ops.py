"""Public entry points of the fused ops; each call is routed by :mod:`.dispatch`.

``TRITON_IMPLS`` maps an op's name to its Triton-backed entry point (a torch.library custom
op in the ``atfnn`` namespace); an op without one runs its plain-torch implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import torch_ops
from .dispatch import select

TRITON_IMPLS: dict[str, Callable] = {}

try:  # triton ships with torch's Linux wheels; elsewhere the ops run in plain torch
    from . import checks, triton_band_attention, triton_freq_encoder
except ImportError:  # pragma: no cover
    checks = None
else:
    TRITON_IMPLS["band_attention"] = triton_band_attention.band_attention
    TRITON_IMPLS["freq_encoder"] = triton_freq_encoder.freq_encoder


def band_attention(
    source: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    axis: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F- or T-Attention; see :func:`.torch_ops.band_attention` for the contract."""
    impl = select(
        "band_attention", source, torch_ops.band_attention, TRITON_IMPLS.get("band_attention")
    )
    return impl(source, weight, bias, target, axis=axis)


def freq_encoder(
    x: torch.Tensor,
    *params: torch.Tensor,
    num_heads: int,
    eps: float,
    time_weights: torch.Tensor | None = None,
):
    """The F-Encoder (times ``1 + w_t`` with ``time_weights``); see
    :func:`.torch_ops.freq_encoder` for the contract."""
    unsupported = None
    if "freq_encoder" in TRITON_IMPLS:
        k = params[8].shape[-1]  # ffn1.weight (P, c, k)
        dims = [params[0].shape[0], num_heads, k, params[8].shape[0]]
        unsupported = triton_freq_encoder.supports(dims, x.device.type)
    impl = select(
        "freq_encoder", x, torch_ops.freq_encoder, TRITON_IMPLS.get("freq_encoder"), unsupported
    )
    return impl(x, *params, num_heads=num_heads, eps=eps, time_weights=time_weights)


def assert_finite(x: torch.Tensor) -> None:
    """NaN/Inf check of a model input without a host sync (:mod:`.checks`): a device-side
    assert on CUDA; ``torch._assert_async`` (a RuntimeError at once) on the CPU."""
    if torch.onnx.is_in_onnx_export():
        return
    if checks is not None:
        checks.assert_finite(x)
    else:  # pragma: no cover
        torch._assert_async(torch.isfinite(x).all(), "x must be finite: NaN or Inf values")
