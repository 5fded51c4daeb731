"""ATFNN: the fast model. Same parameters and state_dict as ATFNNReference; its front-end
runs through the fused ops of :mod:`atfnn_fast.kernels` (Triton on CUDA, plain torch on the
CPU, reference ops during ONNX export; ``ATFNN_BACKEND`` overrides the choice) and the
Bi-LSTM runs on cuDNN with flattened weights.

Front-end on the fused path (F-Encoder on, T-Attention reading the input): band attention
(F) -> T-Attention weights from x -> one frequency-encoder op that also applies ``1 + w_t``
and writes the ``(B, T, F*c)`` LSTM input. With ``t_attention_source="encoding"`` the
T-Attention needs the whole encoding first, so it runs as a second band-attention op.
"""

from __future__ import annotations

import torch

from . import kernels
from .reference import ATFNNBase, AttentionMaps, non_finite_error


class ATFNN(ATFNNBase):
    """Drop-in ATFNN for training and inference: ``ATFNN(config)`` or ``ATFNN(**overrides)``.

    ``model(x)`` -> logits ``(B, num_classes)``; ``model(x, return_attention=True)`` ->
    ``(logits, AttentionMaps(freq, time))`` with both maps ``(B, F, T)``.
    """

    def assert_finite(self, x: torch.Tensor) -> None:
        """The NaN/Inf check without a host sync (docs/design.md#choices-the-paper-leaves-open):
        on CUDA one kernel with a device-side assert naming ``x`` (asynchronous: it surfaces
        as ``CUDA error: device-side assert triggered`` at the next sync, and the CUDA
        context is lost); on the CPU a ValueError with the counts at once.
        ``check_finite="sync"`` takes the synchronous check of the reference everywhere."""
        if self.check_finite == "sync":
            return super().assert_finite(x)
        try:
            kernels.assert_finite(x)
        except RuntimeError:  # raised at once only where there is no device to wait for
            if x.is_cuda or bool(torch.isfinite(x).all()):
                raise  # not the NaN/Inf check's error
            raise non_finite_error(x) from None
        return None

    def _f_attention(self, x: torch.Tensor):
        conv = self.f_attention.conv
        return kernels.band_attention(x, conv.weight, conv.bias, axis="freq")

    def front_end(self, x: torch.Tensor):
        fused_t = (
            self.t_attention is not None
            and self.f_encoder is not None
            and self.config.t_attention_source == "input"
        )
        if not fused_t:
            return super().front_end(x)
        x1, w_f = self._f_attention(x) if self.f_attention is not None else (x, None)
        conv = self.t_attention.conv
        _, w_t = kernels.band_attention(x, conv.weight, conv.bias, axis="time")
        return self._f_encoder(x1, time_weights=w_t), AttentionMaps(w_f, w_t)

    def _f_encoder(self, x1: torch.Tensor, time_weights: torch.Tensor | None = None):
        enc = self.f_encoder
        return kernels.freq_encoder(
            x1, *enc.op_params(), num_heads=enc.num_heads, eps=enc.eps, time_weights=time_weights
        )

    def _t_attention(self, source: torch.Tensor, enc: torch.Tensor):
        conv = self.t_attention.conv
        return kernels.band_attention(source, conv.weight, conv.bias, enc, axis="time")

    def embed(self, encoding: torch.Tensor) -> torch.Tensor:
        if self.t_encoder is not None and encoding.is_cuda:
            self.t_encoder.flatten_parameters()  # one contiguous cuDNN weight buffer
        return super().embed(encoding)
