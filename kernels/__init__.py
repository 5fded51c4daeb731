"""Fused ATFNN front-end ops and the backend dispatch (installed as ``atfnn_fast.kernels``).

docs/design.md#kernels. Each op has a plain-torch implementation (``torch_ops``, used for CPU tensors
and as the ground truth of the kernel tests) and, where written, a Triton implementation for
CUDA tensors registered as a ``torch.library`` op in the ``atfnn`` namespace:

* ``atfnn::band_attention`` (+ ``atfnn::band_attention_backward``): F- and T-Attention,
  :mod:`.triton_band_attention`;
* ``atfnn::freq_encoder`` (+ ``atfnn::freq_encoder_backward``): the whole F-Encoder and the
  T-Attention multiply, in the rank-one form of :mod:`.freq_encoder_math`,
  :mod:`.triton_freq_encoder`;
* :func:`assert_finite`: ATFNN's NaN/Inf input check without a host sync (a device-side
  assert on CUDA, :mod:`.checks`).

Which implementation runs is decided per call by :func:`atfnn_fast.kernels.dispatch.select`:

* during ONNX export: the reference (plain torch) math, always;
* ``ATFNN_BACKEND=auto`` (default): Triton for CUDA tensors where the op has a Triton
  implementation, plain torch otherwise;
* ``ATFNN_BACKEND=torch``: plain torch everywhere;
* ``ATFNN_BACKEND=triton``: Triton, or an error naming the op if it has none. CPU tensors
  then need ``TRITON_INTERPRET=1`` (set before this package is imported).
"""

import torch

from .band_attention_op import band_attention
from .dispatch import BACKENDS, get_backend, set_backend, use_backend
from .freq_encoder_op import freq_encoder

try:  # triton ships with torch's Linux wheels; elsewhere the check is torch._assert_async
    from . import checks
except ImportError:  # pragma: no cover
    checks = None

__all__ = [
    "BACKENDS",
    "assert_finite",
    "band_attention",
    "freq_encoder",
    "get_backend",
    "set_backend",
    "use_backend",
]


def assert_finite(x: torch.Tensor) -> None:
    """NaN/Inf check of a model input without a host sync (:mod:`.checks`): a device-side
    assert on CUDA; ``torch._assert_async`` (a RuntimeError at once) on the CPU."""
    if torch.onnx.is_in_onnx_export():
        return
    if checks is not None:
        checks.assert_finite(x)
    else:  # pragma: no cover
        torch._assert_async(torch.isfinite(x).all(), "x must be finite: NaN or Inf values")
