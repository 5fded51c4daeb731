"""``DeployGraph``: the module :func:`export_onnx` traces; the reference math laid out for a
graph that ONNX Runtime's CPU provider runs fast.

Same function as :class:`atfnn_fast.ATFNNReference` (same weights, same outputs within
float32 rounding), in a formulation chosen by profiling the exported graph in ONNX Runtime
(see ``export_onnx``'s docstring for the measurements):

* **time-major frames**: the spectrogram becomes frames ``(T, B, F)`` once (a small
  Transpose); every later activation keeps that order, so the Bi-LSTM reads ``(T, B, F*W)``
  (``layout=0``) after a single Transpose of the encoding.
* **planar F-Encoder**: activations are ``(c, T*B, F)`` planes. Then the conv FFN is one 2-D
  convolution over a single ``(T*B) x F`` image with a ``(1, k)`` kernel (large GEMMs that
  ONNX Runtime runs in its blocked NCHWc layout), where the token-major form needs a
  convolution per frame and two Transposes. The LayerNorms over the c channels are written
  out (ReduceMean over the plane axis): ``LayerNormalization`` only normalises trailing
  axes, and on rows of c = 8 values it is slower than the written-out form anyway.
* **rank-one attention** (:mod:`atfnn_fast.kernels.freq_encoder_op.rank_one`): the lifted tokens are
  rank one, so head h's scores are the outer product ``s_f x_g`` with ``s = x A_h + B_h``;
  no query, key or value projection is computed, and the head outputs fold into
  ``m_h U_h``, a ``(c, 1 + h)`` matrix product with ``[x; m]``. ``attention="standard"``
  (the default, for ONNX Runtime) writes it as ONNX's ``Attention`` op at head size 1
  (queries ``s``, keys = values = the bands, scale 1, the keys shared by the heads), so no
  ``(heads, frames, F, F)`` score tensor is materialised; ``"materialized"`` (for TensorRT
  before 10.14) as ``Mul`` + ``Softmax`` + ``MatMul``. ``"contrib-mha"`` and
  ``"contrib-attention"`` (ONNX Runtime's ``com.microsoft`` ``MultiHeadAttention`` and
  ``Attention``) are candidates that ``scripts/ort_attention.py`` measures; slower, so no
  export target writes them (docs/design.md#cpu-implementation).
* **band attention by broadcasting**: the pooled weights multiply the input viewed as
  ``(.., F/g, g, ..)`` groups; the weight map is never repeated (no Expand).
* the derived parameters are computed once, in float64, from the model's parameters.

The time axis is fixed at ``config.frames`` (the exported graph's is too); the batch is the
one dynamic axis.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from atfnn_fast.kernels.freq_encoder_op import rank_one as fem
from atfnn_fast.reference import ATFNNReference


class DeployGraph(nn.Module):
    """``spectrogram (B, 1, F, T)`` -> ``logits (B, num_classes)``, the export formulation
    of ``reference`` (an :class:`ATFNNReference`, left unchanged); tensors in ``dtype``."""

    def __init__(
        self,
        reference: ATFNNReference,
        dtype: torch.dtype = torch.float32,
        attention: str = "standard",
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
        self.attention = attention
        cfg = self.config = reference.config
        ref = copy.deepcopy(reference).double()
        self.f_attention = _band(ref.f_attention)
        self.t_attention = _band(ref.t_attention)
        if ref.f_encoder is not None:
            enc = ref.f_encoder
            p = fem.derive(*enc.op_params(), num_heads=enc.num_heads)
            c = cfg.channels
            self.eps = enc.eps
            self.register_buffer("a_head", p.a_head.reshape(-1, 1, 1))  # (h, 1, 1)
            self.register_buffer("b_head", p.b_head.reshape(-1, 1, 1))
            if attention == "contrib-attention":
                ones = torch.ones_like(p.a_head)
                self.register_buffer("qkv_weight", torch.cat([p.a_head, ones, ones]).unsqueeze(0))
                self.register_buffer("qkv_bias", torch.cat([p.b_head, 0 * ones, 0 * ones]))
            # r = [w_lift | U^T] @ [x; m_1 .. m_h] + e: (c, 1 + h)
            self.register_buffer("w_mix", torch.cat([p.w_lift.reshape(c, 1), p.u_head.t()], 1))
            self.register_buffer("e_bias", p.e_bias.reshape(c, 1))
            self.register_buffer("norm1_weight", p.norm1_weight.reshape(c, 1))
            self.register_buffer("norm1_bias", p.norm1_bias.reshape(c, 1))
            self.register_buffer("ffn1_weight", enc.ffn1.weight.unsqueeze(2))  # (P, c, 1, k)
            self.register_buffer("ffn1_bias", enc.ffn1.bias)
            self.register_buffer("ffn2_weight", enc.ffn2.weight.unsqueeze(2))  # (c, P, 1, k)
            self.register_buffer("ffn2_bias", enc.ffn2.bias)
            self.register_buffer("norm2_weight", p.norm2_weight.reshape(c, 1))
            self.register_buffer("norm2_bias", p.norm2_bias.reshape(c, 1))
        self.lstm = None
        if ref.t_encoder is not None:
            lstm = ref.t_encoder
            self.lstm = nn.LSTM(
                lstm.input_size, lstm.hidden_size, lstm.num_layers, bidirectional=True
            )
            self.lstm.load_state_dict(lstm.state_dict())
        self.classifier = nn.Linear(cfg.embedding_size, cfg.num_classes)
        self.classifier.load_state_dict(ref.classifier.state_dict())
        self.to(dtype).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n_f, t, b, w = cfg.n_mels, cfg.frames, -1, cfg.encoding_width
        spec = x.reshape(b, n_f, t)
        if self.f_attention is not None:
            g = cfg.f_group
            w_f = _weights(self.f_attention, x).unsqueeze(2)  # (B, F/g, 1, T)
            spec = (spec.reshape(b, n_f // g, g, t) * (1 + w_f)).reshape(b, n_f, t)
        frames = spec.permute(2, 0, 1)  # (T, B, F)
        if cfg.f_encoder:
            enc = self._encoder(frames.reshape(b, n_f)).reshape(w, t, b, n_f)
        else:
            enc = frames.unsqueeze(0)  # (1, T, B, F)
        if self.t_attention is not None:
            g = cfg.t_group
            source = x if cfg.t_attention_source == "input" else enc.permute(2, 0, 3, 1)
            w_t = _weights(self.t_attention, source)  # (B, F, T/g)
            scale = 1 + w_t.permute(2, 0, 1).reshape(1, t // g, 1, b, n_f)
            enc = (enc.reshape(w, t // g, g, b, n_f) * scale).reshape(w, t, b, n_f)
        # (W, T, B, F) -> (T, B, F*W), row-major over (F, W): the LSTM input
        seq = enc.permute(1, 2, 3, 0).reshape(t, b, n_f * w)
        if self.lstm is None:
            emb = seq.mean(0)
        else:
            _, (h_n, _) = self.lstm(seq)
            emb = torch.cat((h_n[-2], h_n[-1]), dim=-1)
        return self.classifier(emb)

    def _encoder(self, xf: torch.Tensor) -> torch.Tensor:
        """Frames ``(N, F)`` -> F-Encoder output planes ``(c, N, F)`` (rank-one form)."""
        cfg = self.config
        c, n_f, k = cfg.channels, cfg.n_mels, cfg.ffn_kernel
        h = cfg.num_heads
        if self.attention == "standard":
            # queries s (N, h, F, 1), keys = values = the bands (N, 1, F, 1): head size 1
            s = xf.unsqueeze(1) * self.a_head.reshape(1, -1, 1) + self.b_head.reshape(1, -1, 1)
            keys = xf.reshape(-1, 1, n_f, 1)
            m = _StandardAttention.apply(s.unsqueeze(-1), keys)  # (N, h, F, 1)
            m = m.reshape(-1, h, n_f).transpose(0, 1)  # (h, N, F)
        elif self.attention == "contrib-mha":
            # com.microsoft MultiHeadAttention, (batch, sequence, heads * head size 1):
            # queries s (N, F, h), keys = values = the bands repeated over the heads
            s = xf.unsqueeze(-1) * self.a_head.reshape(-1) + self.b_head.reshape(-1)
            keys = xf.unsqueeze(-1).expand(-1, -1, h)
            m = _ContribMultiHeadAttention.apply(s, keys, h).permute(2, 0, 1)  # (h, N, F)
        elif self.attention == "contrib-attention":
            # com.microsoft Attention: the projection is part of the node, from the bands
            # (N, F, 1) with weights (1, 3h) = [A | 1 | 1] and bias [B | 0 | 0]
            m = _ContribAttention.apply(xf.unsqueeze(-1), self.qkv_weight, self.qkv_bias, h)
            m = m.permute(2, 0, 1)  # (h, N, F)
        else:
            s = xf * self.a_head + self.b_head  # (h, N, F)
            prob = torch.softmax(s.unsqueeze(-1) * xf.unsqueeze(1), dim=-1)  # (h, N, F, G)
            m = torch.matmul(prob, xf.unsqueeze(-1))  # (h, N, F, 1): sum_g p_fg x_g
        v = torch.cat([xf.reshape(1, -1), m.reshape(h, -1)], 0)  # (1 + h, N*F)
        r = torch.matmul(self.w_mix, v) + self.e_bias  # (c, N*F)
        y1 = _layer_norm0(r, self.norm1_weight, self.norm1_bias, self.eps)
        y1 = y1.reshape(1, c, -1, n_f)  # one image, N rows of F bands
        pad = (0, k // 2)
        a1 = F.relu(F.conv2d(y1, self.ffn1_weight, self.ffn1_bias, padding=pad))
        z = F.conv2d(a1, self.ffn2_weight, self.ffn2_bias, padding=pad) + y1
        y2 = _layer_norm0(z.reshape(c, -1), self.norm2_weight, self.norm2_bias, self.eps)
        return y2.reshape(c, -1, n_f)


# the forms of the F-Encoder's attention (export_onnx's targets choose one):
# "standard": ONNX's Attention op (opset 23) at head size 1, no (heads, frames, F, F) tensor;
# "materialized": Mul (the score tensor) + Softmax + MatMul, opset 18, what TensorRT < 10.14
# parses;
# "contrib-mha": ONNX Runtime's com.microsoft MultiHeadAttention (head size 1, the keys
# repeated over the heads), "contrib-attention": com.microsoft Attention with the rank-one
# projection inside the node; both ONNX Runtime only, opset 18 otherwise
ATTENTION_FORMS = ("standard", "materialized", "contrib-mha", "contrib-attention")
CONTRIB_DOMAIN = "com.microsoft"
# the domain the exporter writes the Attention node in; onnx_export moves it to the default
# domain at opset 23 (the TorchScript exporter writes opsets up to 20 only)
STAGED_DOMAIN = "atfnn.staged"


class _StandardAttention(torch.autograd.Function):
    """``softmax(q k^T) v`` with ``v = k`` and scale 1 (head size 1): eager values for the
    trace, one ONNX ``Attention`` node in the exported graph."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k.expand_as(q), k.expand_as(q), scale=1.0)

    @staticmethod
    def symbolic(g, q, k):
        out = g.op(f"{STAGED_DOMAIN}::Attention", q, k, k, scale_f=1.0)
        out.setType(q.type())
        return out


def _heads_first(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(N, F, h)`` -> ``(N, h, F, 1)``, the layout of SDPA at head size 1."""
    return x.transpose(1, 2).unsqueeze(-1)


class _ContribMultiHeadAttention(torch.autograd.Function):
    """``softmax(q k^T) v`` per head, ``v = k``, head size 1, scale 1, on ``(N, F, h)``
    tensors: eager values for the trace, one ``com.microsoft`` ``MultiHeadAttention`` node."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
        q4, k4 = _heads_first(q, heads), _heads_first(k, heads)
        return F.scaled_dot_product_attention(q4, k4, k4, scale=1.0)[..., 0].transpose(1, 2)

    @staticmethod
    def symbolic(g, q, k, heads):
        out = g.op(f"{CONTRIB_DOMAIN}::MultiHeadAttention", q, k, k, num_heads_i=heads, scale_f=1.0)
        out.setType(q.type())
        return out


class _ContribAttention(torch.autograd.Function):
    """The rank-one attention from the bands ``x (N, F, 1)``: queries ``x A + B``, keys =
    values = ``x`` per head, as one ``com.microsoft`` ``Attention`` node (projection
    ``weight (1, 3h)``, ``bias (3h,)``; head size 1, scale 1); output ``(N, F, h)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, heads: int) -> torch.Tensor:
        qkv = x * weight + bias  # (N, F, 3h)
        q, k, v = qkv.chunk(3, dim=-1)
        q4, k4, v4 = (_heads_first(t, heads) for t in (q, k, v))
        return F.scaled_dot_product_attention(q4, k4, v4, scale=1.0)[..., 0].transpose(1, 2)

    @staticmethod
    def symbolic(g, x, weight, bias, heads):
        out = g.op(f"{CONTRIB_DOMAIN}::Attention", x, weight, bias, num_heads_i=heads, scale_f=1.0)
        out.setType(x.type().with_sizes([None, None, heads]))
        return out


def _layer_norm0(z: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """LayerNorm over axis 0 of ``(C, M)`` (two-pass variance, as torch computes it)."""
    d = z - z.mean(0, keepdim=True)
    return d * torch.rsqrt((d * d).mean(0, keepdim=True) + eps) * weight + bias


def _band(att) -> nn.Conv2d | None:
    if att is None:
        return None
    conv = att.conv
    copy_ = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
    copy_.load_state_dict(conv.state_dict())
    return copy_


def _weights(conv: nn.Conv2d, source: torch.Tensor) -> torch.Tensor:
    """Pooled band-attention weights ``(B, F/g, T)`` or ``(B, F, T/g)`` (not repeated)."""
    return torch.sigmoid(conv(source)).mean(dim=1)
