"""Band attention in plain torch: the specification the kernels and the CPU implementation are
tested against (docs/design.md#model-math, F-Attention and T-Attention).

Written independently of the nn.Module blocks of :mod:`atfnn_fast.reference`, so that the two
check each other. Layouts: the spectrogram is ``(B, 1, F, T)``; an encoding is
``(B, T, F, W)``; attention weight maps are ``(B, F, T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AXES = ("freq", "time")


def window_activations(source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """``sigmoid(conv)`` of each window (window = stride): ``(B, C, n1, n2)``."""
    kf, kt = weight.shape[-2:]
    return torch.sigmoid(F.conv2d(source, weight, bias, stride=(kf, kt)))


def spread(a: torch.Tensor, weight: torch.Tensor, axis: str) -> torch.Tensor:
    """Window activations -> weight map ``(B, F, T)``: the mean over the output channels,
    repeated over the window so every band/frame gets its group's weight."""
    kf, kt = weight.shape[-2:]
    w = a.mean(dim=1)
    return w.repeat_interleave(kf, dim=1) if axis == "freq" else w.repeat_interleave(kt, dim=2)


def reweight(source: torch.Tensor, w: torch.Tensor, target: torch.Tensor | None):
    """``target + w * target`` (the source itself without a target), ``w`` broadcast."""
    if target is None:
        return source + w.unsqueeze(1) * source
    scale = w.transpose(1, 2).unsqueeze(-1)
    return target + scale * target


def band_weights(source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, axis: str):
    """Weight map ``(B, F, T)``: grouped conv (window = stride) + sigmoid + mean over the
    output channels, repeated over the window so every band/frame gets its group's weight."""
    return spread(window_activations(source, weight, bias), weight, axis)


def band_attention(
    source: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    axis: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Band attention ``out = target + w * target`` with ``w = band_weights(source)``.

    ``source`` is ``(B, C_in, F, T)``. Without ``target`` the source itself is re-weighted
    (F-Attention, ``C_in = 1``): ``out`` is ``(B, 1, F, T)``. With an encoding ``target`` of
    shape ``(B, T, F, W)`` (T-Attention), ``w`` is broadcast over the W channels and ``out``
    has the target's shape. Returns ``(out, w)``.
    """
    w = band_weights(source, weight, bias, axis)
    return reweight(source, w, target), w
