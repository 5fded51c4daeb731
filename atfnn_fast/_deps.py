"""Optional dependencies: import one, or say which extra installs it.

The core (``atfnn_fast`` models, features, checkpoints, kernels) needs torch, numpy,
soundfile and safetensors only. ONNX export and deployment need the ``export`` extra
(onnx, onnxscript, onnxruntime), the command-line application's plots and progress bars the
``app`` extra (matplotlib, tqdm); see docs/design.md#dependencies.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``; if it (or its top-level package) is not installed, raise an
    ImportError that names the extra of atfnn-fast to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is None or err.name.split(".")[0] != top:
            raise  # the module exists but one of *its* imports is missing
        hint = f'pip install "atfnn-fast[{extra}]"'
        if top == "onnxruntime":
            hint += ' (or "atfnn-fast[gpu]" for onnxruntime-gpu on NVIDIA GPUs)'
        raise ImportError(
            f"{module} is not installed; it comes with the '{extra}' extra: {hint}"
        ) from err
