"""Plain-torch implementations of the fused ops: the CPU path and the kernels' ground truth.

They take the blocks' parameters as tensors (the form a custom op and a Triton kernel take)
and compute exactly the math of docs/design.md#model-math, written independently of the nn.Module
blocks of :mod:`atfnn_fast.reference` so that the two check each other.

Layouts: the spectrogram is ``(B, 1, F, T)``; an encoding is ``(B, T, F, W)`` (W = channels
after the F-Encoder); attention weight maps are ``(B, F, T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AXES = ("freq", "time")


def band_weights(source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, axis: str):
    """Weight map ``(B, F, T)``: grouped conv (window = stride) + sigmoid + mean over the
    output channels, repeated over the window so every band/frame gets its group's weight."""
    kf, kt = weight.shape[-2:]
    a = torch.sigmoid(F.conv2d(source, weight, bias, stride=(kf, kt)))
    w = a.mean(dim=1)
    return w.repeat_interleave(kf, dim=1) if axis == "freq" else w.repeat_interleave(kt, dim=2)


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
    if target is None:
        return source + w.unsqueeze(1) * source, w
    scale = w.transpose(1, 2).unsqueeze(-1)
    return target + scale * target, w


def freq_encoder(
    x: torch.Tensor,
    lift_weight: torch.Tensor,
    lift_bias: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    ffn1_weight: torch.Tensor,
    ffn1_bias: torch.Tensor,
    ffn2_weight: torch.Tensor,
    ffn2_bias: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    *,
    num_heads: int,
    eps: float,
    time_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """F-Encoder of every frame: ``(B, 1, F, T)`` -> ``(B, T, F, c)``.

    Tokens are the F bands of one frame: lift ``Linear(1 -> c)``, multi-head self-attention
    (nn.MultiheadAttention semantics, scaled dot product per head), add & LayerNorm, conv
    FFN along F (k, ReLU, k), add & LayerNorm. With ``time_weights`` ``(B, F, T)`` (the
    T-Attention map) the result is multiplied by ``1 + w_t``, as the fused kernel does.
    """
    b, _, f, t = x.shape
    c = lift_weight.shape[0]
    d = c // num_heads
    z = F.linear(x[:, 0].transpose(1, 2).reshape(b * t, f, 1), lift_weight, lift_bias)
    q, k, v = F.linear(z, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    q, k, v = (u.reshape(b * t, f, num_heads, d).transpose(1, 2) for u in (q, k, v))
    heads = F.scaled_dot_product_attention(q, k, v)
    attn = F.linear(heads.transpose(1, 2).reshape(b * t, f, c), out_proj_weight, out_proj_bias)
    z = F.layer_norm(z + attn, (c,), norm1_weight, norm1_bias, eps)
    pad = ffn1_weight.shape[-1] // 2
    h = F.relu(F.conv1d(z.transpose(1, 2), ffn1_weight, ffn1_bias, padding=pad))
    h = F.conv1d(h, ffn2_weight, ffn2_bias, padding=pad).transpose(1, 2)
    z = F.layer_norm(z + h, (c,), norm2_weight, norm2_bias, eps).reshape(b, t, f, c)
    if time_weights is not None:
        z = z + time_weights.transpose(1, 2).unsqueeze(-1) * z
    return z
