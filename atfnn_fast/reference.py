"""ATFNNReference: the eager PyTorch model, docs/design.md#model-math in code.

Blocks are ordinary nn.Modules (nn.Conv2d, nn.MultiheadAttention, nn.LayerNorm, nn.Conv1d,
nn.LSTM) whose names give the public state_dict keys. :class:`ATFNNBase` holds everything
both models share (parameters, input checks, T-Encoder, classifier); its front-end hooks are
the reference math, which :class:`atfnn_fast.model.ATFNN` replaces by the fused ops.

Choices where the paper is silent (docs/design.md#choices-the-paper-leaves-open):
* ``x' = x + w_f * x`` and ``x'' = x + w_t * x`` are computed literally as written.
* Inputs whose dtype differs from the parameters' are cast to the parameter dtype, unless
  autocast is active on the input's device (then autocast decides).
* ``return_attention=True`` returns :class:`AttentionMaps`; a map whose attention block is
  disabled is ``None``.
* Under CPU autocast the Bi-LSTM runs in float32 when oneDNN has no LSTM for the autocast
  dtype on this CPU (bf16 without native bf16, e.g. AVX2-only x86; :func:`lstm_in_float32`);
  elsewhere autocast decides.
* The NaN/Inf check (``check_finite``) of the reference is synchronous: a ValueError with
  the NaN and Inf counts, one device-to-host sync per call on CUDA (``ATFNN`` checks
  without a sync: :meth:`atfnn_fast.model.ATFNN.assert_finite`). It is skipped while
  tracing, compiling or exporting, and can be turned off with ``check_finite=False``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ATFNNConfig

# check_finite: True (the model's default check), "sync" (synchronous, a ValueError with
# counts), False (off); the reference checks synchronously for True and "sync" alike
CHECK_FINITE = (True, False, "sync")


class AttentionMaps(NamedTuple):
    """Attention weights of one forward pass, each ``(B, F, T)`` (None if disabled)."""

    freq: torch.Tensor | None
    time: torch.Tensor | None


class BandAttention(nn.Module):
    """F- or T-Attention: ``a = sigmoid(Conv2d(x))`` with window = stride = one band group
    (``axis="freq"``, kernel ``(group, 1)``) or frame group (``axis="time"``, kernel
    ``(1, group)``); the weight ``w`` is the mean of ``a`` over the output channels, repeated
    over the group."""

    def __init__(self, in_channels: int, channels: int, group: int, axis: str) -> None:
        super().__init__()
        if axis not in ("freq", "time"):
            raise ValueError(f"axis must be 'freq' or 'time', got {axis!r}")
        self.axis = axis
        self.group = group
        kernel = (group, 1) if axis == "freq" else (1, group)
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=kernel, stride=kernel)

    def weights(self, source: torch.Tensor) -> torch.Tensor:
        """``source (B, C_in, F, T)`` -> weight map ``(B, F, T)``."""
        a = torch.sigmoid(self.conv(source))  # (B, c, F/g, T) or (B, c, F, T/g)
        w = a.mean(dim=1)
        b, n1, n2 = w.shape
        if self.axis == "freq":
            return w[:, :, None, :].expand(b, n1, self.group, n2).reshape(b, n1 * self.group, n2)
        return w[:, :, :, None].expand(b, n1, n2, self.group).reshape(b, n1, n2 * self.group)


class FrequencyEncoder(nn.Module):
    """Transformer-style encoder over the F bands of each frame (docs/design.md#f-encoder)."""

    def __init__(self, cfg: ATFNNConfig) -> None:
        super().__init__()
        c = cfg.channels
        pad = cfg.ffn_kernel // 2
        self.num_heads = cfg.num_heads
        self.eps = cfg.layer_norm_eps
        self.lift = nn.Linear(1, c)
        self.attn = nn.MultiheadAttention(c, cfg.num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.ffn1 = nn.Conv1d(c, cfg.ffn_channels, cfg.ffn_kernel, padding=pad)
        self.ffn2 = nn.Conv1d(cfg.ffn_channels, c, cfg.ffn_kernel, padding=pad)
        self.norm2 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)

    def op_params(self) -> tuple[torch.Tensor, ...]:
        """Parameters in the order of :func:`atfnn_fast.kernels.freq_encoder`."""
        return (
            self.lift.weight,
            self.lift.bias,
            self.attn.in_proj_weight,
            self.attn.in_proj_bias,
            self.attn.out_proj.weight,
            self.attn.out_proj.bias,
            self.norm1.weight,
            self.norm1.bias,
            self.ffn1.weight,
            self.ffn1.bias,
            self.ffn2.weight,
            self.ffn2.bias,
            self.norm2.weight,
            self.norm2.bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x' (B, 1, F, T)`` -> ``x̂ (B, T, F, c)``."""
        b, _, f, t = x.shape
        z = self.lift(x.permute(0, 3, 2, 1))  # (B, T, F, 1) -> (B, T, F, c)
        z = z.reshape(b * t, f, -1)  # one sequence of F tokens per frame
        a, _ = self.attn(z, z, z, need_weights=False)
        z = self.norm1(z + a)
        h = self.ffn2(F.relu(self.ffn1(z.transpose(1, 2)))).transpose(1, 2)
        z = self.norm2(z + h)
        return z.reshape(b, t, f, -1)


class ATFNNBase(nn.Module):
    """Parameters, input checks and the head shared by ATFNNReference and ATFNN."""

    def __init__(
        self, config: ATFNNConfig | None = None, *, check_finite: bool = True, **overrides: Any
    ) -> None:
        super().__init__()
        cfg = config if config is not None else ATFNNConfig()
        if not isinstance(cfg, ATFNNConfig):
            raise TypeError(f"config must be an ATFNNConfig, got {type(cfg).__name__}")
        if overrides:
            cfg = cfg.replace(**overrides)
        self.config = cfg
        if check_finite not in CHECK_FINITE:
            raise ValueError(f"check_finite must be one of {CHECK_FINITE}, got {check_finite!r}")
        self.check_finite = check_finite
        c = cfg.channels
        self.f_attention = BandAttention(1, c, cfg.f_group, "freq") if cfg.f_attention else None
        self.t_attention = (
            BandAttention(cfg.t_attention_in_channels, c, cfg.t_group, "time")
            if cfg.t_attention
            else None
        )
        self.f_encoder = FrequencyEncoder(cfg) if cfg.f_encoder else None
        self.t_encoder = (
            nn.LSTM(
                cfg.lstm_input_size,
                cfg.lstm_hidden,
                cfg.lstm_layers,
                batch_first=True,
                bidirectional=True,
                dropout=cfg.lstm_dropout if cfg.lstm_layers > 1 else 0.0,
            )
            if cfg.t_encoder
            else None
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.embedding_size, cfg.num_classes)

    # ----------------------------------------------------------------- public boundary
    def prepare_input(self, x: Any) -> torch.Tensor:
        """Check ``x`` once and return it as ``(B, 1, F, T)`` in the compute dtype.

        Raises TypeError / ValueError naming the argument, the expected and the actual.
        """
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"x must be a torch.Tensor of shape (B, 1, F, T) or (B, F, T), "
                f"got {type(x).__name__}"
            )
        shape = tuple(x.shape)
        if x.dim() not in (3, 4):
            raise ValueError(
                f"x must have 4 dims (B, 1, F, T) or 3 dims (B, F, T), "
                f"got {x.dim()} dims with shape {shape}"
            )
        if x.dim() == 4 and shape[1] != 1:
            raise ValueError(
                f"x must have 1 channel at dim 1 (B, 1, F, T), got {shape[1]} (shape {shape})"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point tensor (float32, bfloat16, float16 or float64), "
                f"got {x.dtype}"
            )
        if shape[0] == 0:
            raise ValueError(f"x is an empty batch: expected B >= 1, got shape {shape}")
        if shape[-2] != cfg.n_mels:
            raise ValueError(
                f"x must have F = n_mels = {cfg.n_mels} Mel bands at dim -2, "
                f"got {shape[-2]} (shape {shape})"
            )
        if shape[-1] == 0 or shape[-1] % cfg.t_group:
            raise ValueError(
                f"x must have T (dim -1) a positive multiple of t_group = {cfg.t_group}, "
                f"got {shape[-1]} (shape {shape})"
            )
        param = self.classifier.weight
        if x.device != param.device and x.device.type != "meta":
            raise ValueError(
                f"x is on {x.device} but the model is on {param.device}; move one of them"
            )
        if self.check_finite and not _tracing() and x.device.type != "meta":
            self.assert_finite(x)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(param.dtype)
        return x

    def assert_finite(self, x: torch.Tensor) -> None:
        """The NaN/Inf check of :meth:`prepare_input`: synchronous (one device-to-host sync
        on CUDA), a ValueError with the NaN and Inf counts."""
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            raise non_finite_error(x)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """``x (B, 1, F, T)`` or ``(B, F, T)`` -> logits ``(B, num_classes)``; with
        ``return_attention=True`` also :class:`AttentionMaps` ``(w_f, w_t)``."""
        x = self.prepare_input(x)
        encoding, maps = self.front_end(x)
        logits = self.classifier(self.dropout(self.embed(encoding)))
        return (logits, maps) if return_attention else logits

    # ---------------------------------------------------------------- model structure
    def front_end(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps]:
        """F-Attention, F-Encoder, T-Attention: ``(B, 1, F, T)`` -> ``x̂'' (B, T, F, W)``."""
        w_f = w_t = None
        if self.f_attention is not None:
            x1, w_f = self._f_attention(x)
        else:
            x1 = x
        if self.f_encoder is not None:
            enc = self._f_encoder(x1)
        else:
            enc = x1.permute(0, 3, 2, 1)  # (B, T, F, 1): the LSTM reads x' directly
        if self.t_attention is not None:
            if self.config.t_attention_source == "input":
                source = x
            else:
                source = enc.permute(0, 3, 2, 1)  # (B, W, F, T)
            enc, w_t = self._t_attention(source, enc)
        return enc, AttentionMaps(w_f, w_t)

    def embed(self, encoding: torch.Tensor) -> torch.Tensor:
        """``(B, T, F, W)`` -> utterance embedding: Bi-LSTM over frames whose vector is
        flattened row-major over (F, W) (feature index ``f*W + ch``), last layer's final
        forward and backward states; without the T-Encoder, the mean over T."""
        b, t, f, w = encoding.shape
        seq = encoding.reshape(b, t, f * w)
        if self.t_encoder is None:
            return seq.mean(dim=1)
        if lstm_in_float32(seq):
            with torch.autocast("cpu", enabled=False):
                _, (h_n, _) = self.t_encoder(seq.float())
        else:
            _, (h_n, _) = self.t_encoder(seq)
        return torch.cat((h_n[-2], h_n[-1]), dim=-1)

    # ------------------------------------------------- front-end hooks (reference math)
    def _f_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.f_attention.weights(x)
        return x + w.unsqueeze(1) * x, w

    def _f_encoder(self, x1: torch.Tensor) -> torch.Tensor:
        return self.f_encoder(x1)

    def _t_attention(self, source: torch.Tensor, enc: torch.Tensor):
        w = self.t_attention.weights(source)
        return enc + w.transpose(1, 2).unsqueeze(-1) * enc, w

    def extra_repr(self) -> str:
        return f"variant={self.config.variant}"


def non_finite_error(x: torch.Tensor) -> ValueError:
    """The error of a failed NaN/Inf check, with the counts (synchronises on CUDA)."""
    nan = int(torch.isnan(x).sum())
    inf = int((~torch.isfinite(x)).sum()) - nan
    return ValueError(
        f"x must be finite: got {nan} NaN and {inf} Inf values (shape {tuple(x.shape)})"
    )


def lstm_in_float32(x: torch.Tensor) -> bool:
    """Whether the Bi-LSTM must leave CPU autocast and run in float32 for input ``x``:
    autocast is on for the CPU and oneDNN has no LSTM primitive for its dtype on this CPU
    (bf16 needs native bf16, AVX-512 BF16 or AMX; fp16 native fp16). oneDNN's answer
    follows ``ONEDNN_MAX_CPU_ISA``, so ``ONEDNN_MAX_CPU_ISA=AVX2`` shows an AVX2-only
    CPU's path on any x86 machine."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    dtype = torch.get_autocast_dtype("cpu")
    probe = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }.get(dtype)
    if probe is None:
        return False
    try:
        return not bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: play safe
        return True


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class ATFNNReference(ATFNNBase):
    """Plain eager PyTorch ATFNN: the specification in code
    (docs/design.md#model-math).

    ``ATFNNReference(config)`` or ``ATFNNReference(num_classes=6, ...)`` (keyword overrides
    of the default config). Its state_dict is the public checkpoint format, identical to
    :class:`atfnn_fast.ATFNN`'s.
    """
