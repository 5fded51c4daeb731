"""ONNX export and ONNX Runtime deployment of ATFNN (installed as ``atfnn_fast.export``).

docs/design.md#onnx-export: :func:`export_onnx` writes the reference math (in the CPU-friendly layout of
:mod:`.graph`) as a standard-ops ONNX graph with deployment metadata, optionally quantised to
int8; :func:`validate_onnx` checks it against eager PyTorch in ONNX Runtime (int8 graphs: on
real features); :func:`check_tensorrt_ready` lists what TensorRT's ONNX parser would reject;
:class:`OnnxPredictor` predicts labels from spectrograms or audio files on the CPU, CUDA or
TensorRT execution provider.
"""

from .onnx_export import OnnxError, export_onnx, read_metadata
from .predictor import OnnxPredictor
from .tensorrt import check_tensorrt_ready, trtexec_command
from .validate import OnnxValidationError, ValidationReport, validate_onnx
from .waveform import INPUT_KINDS  # registers the waveform-in graphs (onnx_export's registry)

__all__ = [
    "INPUT_KINDS",
    "OnnxError",
    "OnnxPredictor",
    "OnnxValidationError",
    "ValidationReport",
    "check_tensorrt_ready",
    "export_onnx",
    "read_metadata",
    "trtexec_command",
    "validate_onnx",
]
