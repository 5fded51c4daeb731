"""ATFNN: the fast model. Same parameters and state_dict as ATFNNReference; its front-end
runs through the fused ops of :mod:`atfnn_fast.kernels` (Triton on CUDA once the kernel
issues land, plain torch on the CPU, reference ops during ONNX export; ``ATFNN_BACKEND``
overrides the choice) and the Bi-LSTM runs on cuDNN with flattened weights.
"""

from __future__ import annotations

import torch

from . import kernels
from .reference import ATFNNBase


class ATFNN(ATFNNBase):
    """Drop-in ATFNN for training and inference: ``ATFNN(config)`` or ``ATFNN(**overrides)``.

    ``model(x)`` -> logits ``(B, num_classes)``; ``model(x, return_attention=True)`` ->
    ``(logits, AttentionMaps(freq, time))`` with both maps ``(B, F, T)``.
    """

    def _f_attention(self, x: torch.Tensor):
        conv = self.f_attention.conv
        return kernels.band_attention(x, conv.weight, conv.bias, axis="freq")

    def _f_encoder(self, x1: torch.Tensor) -> torch.Tensor:
        enc = self.f_encoder
        return kernels.freq_encoder(x1, *enc.op_params(), num_heads=enc.num_heads, eps=enc.eps)

    def _t_attention(self, source: torch.Tensor, enc: torch.Tensor):
        conv = self.t_attention.conv
        return kernels.band_attention(source, conv.weight, conv.bias, enc, axis="time")

    def embed(self, encoding: torch.Tensor) -> torch.Tensor:
        if self.t_encoder is not None and encoding.is_cuda:
            self.t_encoder.flatten_parameters()  # one contiguous cuDNN weight buffer
        return super().embed(encoding)
