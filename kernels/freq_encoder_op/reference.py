"""The F-Encoder in plain torch, through ``scaled_dot_product_attention``: the specification the
rank-one forms (:mod:`.rank_one`, :mod:`.cpu`, the Triton kernels) are tested against
(docs/design.md#f-encoder).

Written independently of the nn.Module blocks of :mod:`atfnn_fast.reference`, so that the two
check each other. Layouts: the spectrogram is ``(B, 1, F, T)``; the encoding ``(B, T, F, c)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
