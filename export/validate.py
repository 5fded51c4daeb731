"""``validate_onnx``: the exported graph in ONNX Runtime against eager PyTorch.

Fresh random inputs (standard normal: normalised log-Mel segments have zero mean and unit
variance per band) at each batch size; the error measure is the relative error
``max |onnx - eager| / max |eager|`` over the logits. float32 files must stay within
``rtol=1e-4``, float16 files within ``rtol=1e-2`` and are only run where a CUDA execution
provider exists (ONNX Runtime's CPU provider has no float16 LSTM). Contract and choices:
docs/design.md#onnx-export, docs/design.md#choices-the-paper-leaves-open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from atfnn_fast._deps import require

from .onnx_export import INPUT_NAME, OnnxError, load_model, read_metadata

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}


class OnnxValidationError(AssertionError):
    """ONNX Runtime and eager PyTorch disagree beyond the tolerance."""


@dataclass
class BatchResult:
    batch: int
    max_abs: float
    max_rel: float


@dataclass
class ValidationReport:
    path: str
    providers: list[str]
    dtype: str
    tolerance: float
    results: list[BatchResult] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and all(r.max_rel <= self.tolerance for r in self.results)

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.path}: not validated: {self.skipped}"
        lines = [f"{self.path} ({self.dtype}) on {', '.join(self.providers)}:"]
        lines += [
            f"  batch {r.batch:>4}: max abs {r.max_abs:.3e}, max rel {r.max_rel:.3e}"
            for r in self.results
        ]
        lines.append(
            f"  {'PASS' if self.passed else 'FAIL'} (relative tolerance {self.tolerance:g})"
        )
        return "\n".join(lines)


def session(path: str | os.PathLike, providers: list[str] | None = None, threads: int = 0):
    """An ONNX Runtime session (CUDA provider first where available); errors name the file."""
    onnx = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")

    proto = load_model(path)  # a clear error for missing / non-ONNX files
    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    half = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in proto.graph.input)
    if half and "CUDAExecutionProvider" not in providers:
        # ONNX Runtime 1.32's CPU provider crashes (segfault) building this float16 graph
        raise OnnxError(
            f"{path}: a float16 graph needs ONNX Runtime's CUDA execution provider "
            f"(onnxruntime-gpu); available here: {available}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:
        raise OnnxError(f"{path}: ONNX Runtime cannot load it ({err})") from None


def validate_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    *,
    providers: list[str] | None = None,
    seed: int | None = None,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Run ``path`` in ONNX Runtime and ``model`` in eager PyTorch on the same fresh random
    inputs; return a :class:`ValidationReport`. A failure raises OnnxValidationError (unless
    ``raise_on_failure=False``)."""
    meta = read_metadata(path)
    cfg, dtype = meta["config"], meta["dtype"]
    if getattr(model, "config", None) != cfg:
        raise ValueError(f"{path}: the model's config differs from the one in the file")
    if dtype == "float16":
        ort = require("onnxruntime", extra="export")

        if "CUDAExecutionProvider" not in (providers or ort.get_available_providers()):
            report = ValidationReport(str(path), [], dtype, TOLERANCE[dtype])
            report.skipped = "float16 graphs need ONNX Runtime's CUDA execution provider"
            return report
    sess = session(path, providers)
    report = ValidationReport(str(path), sess.get_providers(), dtype, TOLERANCE[dtype])
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    )
    was_training = model.training
    model.eval()
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, generator=gen)
            with torch.no_grad():
                param = next(model.parameters())
                want = model(x.to(param.device, param.dtype)).float().cpu().numpy()
            feed = {INPUT_NAME: x.numpy().astype(np.float16 if dtype == "float16" else np.float32)}
            got = sess.run(None, feed)[0].astype(np.float32)
            diff = float(np.abs(got - want).max())
            scale = max(float(np.abs(want).max()), 1e-12)
            report.results.append(BatchResult(batch, diff, diff / scale))
    finally:
        model.train(was_training)
    if raise_on_failure and not report.passed:
        raise OnnxValidationError(str(report))
    return report
