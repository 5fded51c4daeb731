"""``export_onnx``: ATFNN / ATFNNReference -> a self-describing ONNX file
(docs/design.md#onnx-export).

What is exported is :class:`~atfnn_fast.export.graph.DeployGraph`: the reference math
(:class:`atfnn_fast.ATFNNReference` carrying the model's weights) in a formulation that ONNX
Runtime's CPU provider runs fast (time-major frames, planar F-Encoder with the rank-one
attention, the conv FFN as one 2-D convolution; see that module). Standard ONNX ops only,
one ``LSTM`` node per layer (bidirectional, ``layout=0``, zero initial states left implicit),
weights as initializers. Choices (docs/design.md#choices-the-paper-leaves-open):

* **exporter: TorchScript** (``torch.onnx.export(..., dynamo=False)``), chosen by
  measurement on the 2-core development machine: ``export_onnx`` of the default model
  takes 0.3-0.5 s in a warm process (2-7 s for a process's first export), and
  ``atfnn-fast export`` 3.0-3.2 s end to end (mostly imports; 6.4 s on a busier
  machine), against 33-36 s for the torch.export-based exporter (``dynamo=True``) on the
  same module, and 29 s in-process (60-69 s through the CLI) for the previous
  ``dynamo=True`` export of the nn.Module reference. Both exporters' graphs of this module
  run equally fast in ONNX Runtime. The TorchScript path is deprecated upstream, but
  ``torch`` is pinned (2.11); should it go, ``dynamo=True`` on the same module still
  works, only slower.
* input ``spectrogram`` ``(batch, 1, n_mels, frames)``, output ``logits``
  ``(batch, num_classes)``; the batch axis is dynamic unless ``dynamic_batch=False`` (then
  batch = 1: one segment per call), the time axis is fixed at ``config.frames`` (segments
  are cut to that length by the feature pipeline anyway); feature extraction stays outside
  the graph;
* the model-level ``metadata_props`` carry what a deployment needs: ``atfnn.config``,
  ``atfnn.labels``, ``atfnn.norm_stats``, ``atfnn.features`` (JSON), ``atfnn.dtype``,
  ``atfnn.quantization`` (``none`` or ``int8-dynamic``) and ``atfnn.format`` /
  ``atfnn.version``;
* ``quantize="int8"`` quantises the float32 graph dynamically with ONNX Runtime's tools
  (:func:`onnxruntime.quantization.quantize_dynamic`): 8-bit weights for the LSTMs and the
  MatMul/Gemm nodes with constant weights, one scale per output channel (per gate row of
  the LSTMs), activations quantised at run time per tensor. Per-channel scales halved the
  largest probability difference to the float32 model on the demo corpus (0.062 -> 0.027,
  top-1 agreement 100% of 997 segments either way). The F-Encoder's matrix products keep
  float32: their weight is the first operand (ONNX Runtime quantises constant second
  operands only) or there is none (the attention).
  **Format U8U8** (uint8 activations and uint8 weights, :data:`INT8_WEIGHT_TYPE`): ONNX
  Runtime's U8S8 kernels (int8 weights, its default) saturate on x86 CPUs without VNNI
  (AVX2 only: ``vpmaddubsw`` adds two u8 x s8 products into int16), which cost the
  default graph 17% of its top-1 agreement on an AVX2 AMD EPYC (issue 30), while the same
  file agreed 100% on an AVX-512 VNNI machine. U8U8 computes in 16/32 bits on every x86
  and ARM CPU, so a file exported anywhere runs alike everywhere. ``quantize_dynamic``
  writes the LSTMs' weights as symmetric int8 whatever ``weight_type`` says; they are
  re-stored losslessly as uint8 with zero point 128 (:func:`_lstm_weights_to_uint8`).
  ``reduce_range`` (7-bit int8 weights, the other remedy ONNX Runtime documents) was
  measured and not kept: it dropped the export test's agreement to 94% (16 of 17
  segments; largest probability difference 0.152 against 0.096 for U8U8). The speed
  cost of U8U8 against U8S8: ``python scripts/int8_formats.py`` (docs/design.md,
  "int8 format").
  The result uses ONNX Runtime's ``com.microsoft`` ops (``DynamicQuantizeLSTM``), so it is a
  file for ONNX Runtime's CPU provider, not for TensorRT;
* the file is written atomically (temporary file, then rename) after ``onnx.checker``'s full
  check has passed on the in-memory model.

Measured on the 2-core development machine (ONNX Runtime 1.32, CPU provider, 2 intra-op
threads, default model) and not kept:

* an offline-optimised copy next to the file (``SessionOptions.optimized_model_filepath``,
  loaded with optimisations off): run time unchanged, session creation 60-100 ms either
  way; ``ORT_ENABLE_ALL`` (the default) is used at load;
* ``LSTM`` with ``layout=1``: ONNX Runtime's CPU provider rejects it ("Batchwise recurrent
  operations (layout == 1) are not supported"), and the time-major front-end needs no
  Transpose before the LSTM anyway;
* the Bi-LSTMs split into forward and reverse ``LSTM`` nodes, alone or with the parallel
  executor: no faster;
* the attention computed in chunks of frames (Split/Concat) to stay in cache: slower
  (52 -> 62..85 ms at batch 32), as were a K=1 MatMul for the scores' outer product, an
  ``Exp`` with the analytic row maximum followed by a MatMul with ``[x, 1]``, and the
  conv FFN as im2col MatMuls on ``(N, F, c)`` tokens (Pad/Slice/Concat copies dominate);
* the attention as ONNX Runtime's ``com.microsoft`` ``MultiHeadAttention`` or ``Attention``
  (graph forms ``contrib-mha`` / ``contrib-attention``): slower than the standard
  ``Attention`` (``scripts/ort_attention.py``; figures in docs/design.md#cpu-implementation).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atfnn_fast._deps import require
from atfnn_fast.checkpoint import _unwrap, check_deployment_info, model_labels
from atfnn_fast.config import ATFNNConfig
from atfnn_fast.features import FeatureConfig, NormStats
from atfnn_fast.inference import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE
from atfnn_fast.reference import ATFNNReference

from .graph import STAGED_DOMAIN, DeployGraph

INPUT_NAME = "spectrogram"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
# export targets -> the form of the F-Encoder's attention (graph.ATTENTION_FORMS); the
# default is the fastest in ONNX Runtime, "tensorrt" is what TensorRT's parser takes
TARGETS = {"onnxruntime": "standard", "tensorrt": "materialized"}
DEFAULT_TARGET = "onnxruntime"
ATTENTION_OPSET = 23  # the first opset with the standard Attention op
try:  # the newest opset torch's TorchScript exporter writes (20 in torch 2.8 to 2.11)
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - a torch that moved it
    MAX_OPSET = 20
MAX_BATCH = MAX_BATCH_SIZE
DEFAULT_SEGMENT_BATCH = DEFAULT_BATCH_SIZE  # segments per step of a waveform graph's Loop
FOLD_LIMIT = 1 << 26  # elements: constant folding may build any weight of the model
FORMAT = "atfnn-fast-onnx"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16}
QUANTIZATIONS = {None: "none", "int8": "int8-dynamic"}
# the int8 graph's weight type (format U8U8: no saturation on x86 without VNNI; module doc)
INT8_WEIGHT_TYPE = "QUInt8"
# the exporter's notes that do not apply here: the legacy-exporter deprecation (a choice,
# see above; two warnings) and LSTM batch sizes (the initial states, the one batch-sized
# part, are dropped below, and the graph is validated at several batch sizes)
_EXPORT_NOTES = (
    ".*legacy TorchScript-based ONNX export",
    ".*feature will be removed. Please remove usage",
    ".*batch_size other than 1, with a variable length with LSTM",
)


# The graph kinds besides "spectrogram" (a graph that takes normalised log-Mel segments): kind ->
# the module that builds, describes and validates them, registered by that module when the
# package is imported (export/__init__.py imports export/waveform.py, which registers
# "waveform"), so that this module and validate.py need not import it (no import circle).
INPUT_KIND_MODULES: dict[str, Any] = {}


class OnnxError(ValueError):
    """An ONNX file that cannot be used; the message names the file."""


def reference_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> ATFNNReference:
    """An eval-mode ATFNNReference on the CPU holding ``model``'s weights (``model`` also
    inside ``torch.compile`` or DistributedDataParallel, unwrapped as ``save_checkpoint``
    does)."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if not isinstance(config, ATFNNConfig):
        raise TypeError(
            f"model must be an ATFNN or ATFNNReference (with an ATFNNConfig), "
            f"got {type(model).__name__}"
        )
    ref = ATFNNReference(config, check_finite=False)
    ref.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return ref.to(dtype).eval()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dtype: str = "float32",
    quantize: str | None = None,
    labels: list[str] | None = None,
    norm_stats: NormStats | None = None,
    features: FeatureConfig | None = None,
    target: str = DEFAULT_TARGET,
    input: str = "spectrogram",
    segment_batch: int = DEFAULT_SEGMENT_BATCH,
) -> Path:
    """Export ``model`` (ATFNN or ATFNNReference, any variant) to ``path``; returns the path.

    ``dtype="float16"`` writes a half-precision graph (weights, input and output in fp16);
    ``quantize="int8"`` a dynamically quantised float32 graph (ONNX Runtime, CPU).
    ``target`` (:data:`TARGETS`): ``"onnxruntime"`` writes the F-Encoder's attention as the
    standard ``Attention`` op (the graph's opset becomes :data:`ATTENTION_OPSET`; the
    fastest in ONNX Runtime, no score tensor); ``"tensorrt"`` as ``Mul`` + ``Softmax`` +
    ``MatMul`` at ``opset``, which every TensorRT 8.6+ ONNX parser takes
    (docs/design.md#onnx-export).

    ``input`` (:data:`INPUT_KINDS`): ``"spectrogram"`` takes normalised log-Mel segments;
    ``"waveform"`` wraps that graph in the feature pipeline (:mod:`.waveform`): 16 kHz mono
    samples of any length in, per-segment and file scores out, the segments run
    ``segment_batch`` at a time (1 with ``dynamic_batch=False``); float32 or int8 only.
    """
    onnx = require("onnx", extra="export")
    kinds = ("spectrogram", *INPUT_KIND_MODULES)
    if input not in kinds:
        raise ValueError(f"input must be one of {kinds}, got {input!r}")
    if input == "waveform":
        if dtype != "float32":
            raise ValueError(
                f"input='waveform' writes a float32 graph (or int8 with quantize='int8'), got "
                f"dtype={dtype!r}; export input='spectrogram' for float16"
            )
        if (
            isinstance(segment_batch, bool)
            or not isinstance(segment_batch, int)
            or not 1 <= segment_batch <= MAX_BATCH
        ):
            raise ValueError(
                f"segment_batch must be an int in 1..{MAX_BATCH}, got {segment_batch!r}"
            )
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")

    opset = DEFAULT_OPSET if opset is None else opset
    if (
        not isinstance(opset, int)
        or isinstance(opset, bool)
        or not DEFAULT_OPSET <= opset <= MAX_OPSET
    ):
        raise ValueError(f"opset must be an int in {DEFAULT_OPSET}..{MAX_OPSET}, got {opset!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and dtype != "float32":
        raise ValueError(f"quantize='int8' quantises a float32 graph, got dtype={dtype!r}")
    ref = reference_copy(model)
    cfg = ref.config
    labels = check_deployment_info(cfg, labels, norm_stats)
    graph = DeployGraph(ref, DTYPES[dtype], attention=TARGETS[target])
    example = torch.randn(2 if dynamic_batch else 1, 1, cfg.n_mels, cfg.frames)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        for note in _EXPORT_NOTES:
            warnings.filterwarnings("ignore", message=note)
        # nn.LSTM's shape checks, traced as constants: right for the fixed sizes exported
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example.to(DTYPES[dtype]),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _unstage(proto)
    _drop_zero_initial_states(proto)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    features = features or FeatureConfig()
    _set_metadata(proto, cfg, labels, norm_stats, features, dtype, None)
    onnx.checker.check_model(proto, full_check=True)
    if quantize:
        proto = _quantize_int8(proto)
        _set_metadata(proto, cfg, labels, norm_stats, features, dtype, quantize)
    if input == "waveform":
        chunk = segment_batch if dynamic_batch else 1
        waveform = INPUT_KIND_MODULES["waveform"]
        proto = waveform.waveform_proto(proto, cfg, features, norm_stats, chunk)
        _set_metadata(proto, cfg, labels, norm_stats, features, dtype, quantize)
        waveform.set_metadata(proto, cfg, features, chunk, quantized=bool(quantize))
    return _atomic_save(proto, Path(path))


def _unstage(proto) -> None:
    """Nodes the exporter wrote in :data:`graph.STAGED_DOMAIN` (the ``Attention`` op, which
    the TorchScript exporter cannot write: it stops at opset 20) move to the default domain,
    and the graph's opset becomes :data:`ATTENTION_OPSET` (every other op of the graph means
    the same there; ``onnx.checker``'s full check runs on the result)."""
    staged = [n for n in proto.graph.node if n.domain == STAGED_DOMAIN]
    if not staged:
        return
    for node in staged:
        node.domain = ""
    imports = [o for o in proto.opset_import if o.domain != STAGED_DOMAIN]
    for entry in imports:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, ATTENTION_OPSET)
    del proto.opset_import[:]
    proto.opset_import.extend(imports)


def _drop_zero_initial_states(proto) -> None:
    """LSTM initial states that are slices of an all-zero ConstantOfShape (how the exporter
    writes nn.LSTM's default zero state, sized from the batch at run time) become omitted
    inputs, which ONNX defines as zeros; the nodes that built them are removed."""
    import onnx
    from onnx import numpy_helper

    nodes = proto.graph.node
    producer = {o: n for n in nodes for o in n.output}

    def is_zero(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return value is None or not numpy_helper.to_array(value).any()
        return node.op_type in ("Slice", "Expand", "Reshape", "Identity") and is_zero(
            node.input[0], depth + 1
        )

    for node in nodes:
        if node.op_type == "LSTM":
            for index in (5, 6):  # initial_h, initial_c
                if index < len(node.input) and node.input[index] and is_zero(node.input[index]):
                    node.input[index] = ""
            while node.input and not node.input[-1]:
                del node.input[-1]
    # prune what no longer reaches an output
    needed = {o.name for o in proto.graph.output}
    keep = []
    for node in reversed(list(nodes)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    kept = [onnx.NodeProto.FromString(n.SerializeToString()) for n in reversed(keep)]
    del nodes[:]
    nodes.extend(kept)
    used = {i for n in keep for i in n.input}
    inits = [t.SerializeToString() for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(onnx.TensorProto.FromString(t) for t in inits)
    onnx.checker.check_model(proto)


def _quantize_int8(proto, weight_type: str = INT8_WEIGHT_TYPE, reduce_range: bool = False):
    """Dynamic quantisation of the LSTM and MatMul/Gemm weights, format U8U8 (see the
    module doc; ``weight_type="QInt8"`` / ``reduce_range`` give the formats it was measured
    against, ``scripts/int8_formats.py``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # quantize_dynamic logs a suggestion to pre-process (shape inference, fusions) on the
    # root logger; the graph is shape-inferred already and ONNX Runtime fuses at load
    root.setLevel(logging.ERROR)
    tmp = None
    try:
        with tempfile.TemporaryDirectory(prefix="atfnn-int8-") as tmp:
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                proto,
                out,
                op_types_to_quantize=["LSTM", "MatMul", "Gemm"],
                weight_type=QuantType[weight_type],
                per_channel=True,
                reduce_range=reduce_range,
            )
            quantized = onnx.load(str(out))
    except OSError as err:  # a full TMPDIR is not a full output disk: say which folder
        if err.filename is not None:
            raise
        where = tmp if tmp is not None else tempfile.gettempdir()
        raise type(err)(
            err.errno, err.strerror, f"{where} (temporary folder of the int8 quantisation; TMPDIR)"
        ) from None
    finally:
        root.setLevel(level)
    if weight_type == "QUInt8":
        _lstm_weights_to_uint8(quantized)
    onnx.checker.check_model(quantized)
    return quantized


def _lstm_weights_to_uint8(proto) -> None:
    """``DynamicQuantizeLSTM``'s symmetric int8 weights ``w`` (zero point 0) re-stored as
    uint8 ``w + 128`` with zero point 128: the same values (``(q - zp) * scale``), read by
    ONNX Runtime's U8U8 kernels."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        for i in (1, 2, 9, 11):  # W, R and their zero points
            tensor = inits[node.input[i]]
            q = numpy_helper.to_array(tensor)
            if q.dtype == np.uint8:
                continue
            shifted = (q.astype(np.int16) + 128).astype(np.uint8)
            tensor.CopyFrom(numpy_helper.from_array(shifted, tensor.name))


# ONNX Runtime's integer products and the input index of their constant weight(s)
_INTEGER_WEIGHTS = {
    "MatMulInteger": (1,),
    "DynamicQuantizeMatMul": (1,),
    "DynamicQuantizeLSTM": (1, 2),
}
# U8S8 without VNNI adds two u8 x s8 products in int16: 255 * 2 * 64 <= 32767 < 255 * 2 * 65
U8S8_SAFE_WEIGHT = 64


def int8_saturation_risks(proto) -> list[str]:
    """The integer-product weights of a quantised graph that ONNX Runtime's U8S8 kernels
    can saturate on x86 without VNNI: int8 weights with ``|q - zero point|`` above
    :data:`U8S8_SAFE_WEIGHT` (uint8 weights take the U8U8 kernels, which cannot). One line
    per weight; empty for the files ``export_onnx(..., quantize="int8")`` writes."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    risks = []
    for node in proto.graph.node:
        for i in _INTEGER_WEIGHTS.get(node.op_type, ()):
            if node.input[i] not in inits:
                continue
            q = numpy_helper.to_array(inits[node.input[i]])
            if q.dtype != np.int8:
                continue
            zp_index = 3 if node.op_type != "DynamicQuantizeLSTM" else 9 + 2 * (i - 1)
            zp = inits.get(node.input[zp_index]) if len(node.input) > zp_index else None
            center = np.zeros((), np.int16) if zp is None else numpy_helper.to_array(zp)
            if center.ndim == 2:  # LSTM per channel: (directions, 4 * hidden) of (dirs, in, 4h)
                center = center[:, None, :]
            worst = int(np.abs(q.astype(np.int16) - center.astype(np.int16)).max())
            if worst > U8S8_SAFE_WEIGHT:
                risks.append(
                    f"{node.op_type} {node.name or node.output[0]}: int8 weight {node.input[i]} "
                    f"reaches {worst} > {U8S8_SAFE_WEIGHT} (U8S8 may saturate without VNNI)"
                )
    return risks


def _set_metadata(proto, cfg, labels, norm_stats, features, dtype, quantize) -> None:
    from atfnn_fast import __version__

    meta = {
        "atfnn.format": FORMAT,
        "atfnn.format_version": str(FORMAT_VERSION),
        "atfnn.version": __version__,
        "atfnn.config": cfg.to_json(),
        "atfnn.labels": json.dumps(labels),
        "atfnn.norm_stats": json.dumps(norm_stats.to_dict() if norm_stats else None),
        "atfnn.features": json.dumps(features.to_dict()),
        "atfnn.dtype": dtype,
        "atfnn.quantization": QUANTIZATIONS[quantize],
        "atfnn.input": "spectrogram",  # waveform graphs: waveform.set_metadata
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "atfnn-fast"
    quantised = " (weights dynamically quantised to int8)" if quantize else ""
    proto.doc_string = (
        f"ATFNN speech emotion recognition ({cfg.variant}){quantised}: input {INPUT_NAME} "
        f"(batch, 1, {cfg.n_mels}, {cfg.frames}) normalised log-Mel segments, output "
        f"{OUTPUT_NAME} (batch, {cfg.num_classes})"
    )


def _atomic_save(proto, path: Path) -> Path:
    """Written atomically under a private temporary name, mode from the umask
    (:func:`atfnn_fast.files.write_atomic`)."""
    from atfnn_fast.files import named, write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise named(err, path.parent) from None
    return write_atomic(path, proto.SerializeToString())


# protobuf refuses messages of 2 GiB or more, so no ONNX file without external data is larger
MAX_FILE_BYTES = (1 << 31) - 1


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an ONNX file, read once through one open descriptor after its size is
    checked: a file over :data:`MAX_FILE_BYTES` (a sparse file, say) is refused
    before anything is read. Whatever replaces the file afterwards (a redeploy, an
    ``export`` renaming a new graph over it) cannot reach what these bytes become:
    metadata, checks and session are all made from them (docs/design.md#onnx-export)."""
    from atfnn_fast.files import read_checked

    def check_size(size: int) -> None:
        if size > MAX_FILE_BYTES:
            raise OnnxError(
                f"{path}: {size:,} bytes, more than an ONNX file can hold "
                f"({MAX_FILE_BYTES:,}, protobuf's limit); not read"
            )

    try:
        return read_checked(path, check_size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ONNX file not found") from None
    except IsADirectoryError:
        from atfnn_fast.errors import UsageError

        raise UsageError(f"{path}: is a directory, not an ONNX file") from None


class ModelBytes:
    """A model file's bytes (:func:`read_model_bytes`) held for ONNX Runtime: on Linux in an
    anonymous in-memory file (``memfd_create``) that ONNX Runtime opens by its
    ``/proc/self/fd`` path, elsewhere as the bytes themselves. Either way ONNX Runtime sees
    exactly the bytes that were checked, whatever happens to the file meanwhile; the memory
    file is what keeps the load's peak low: ONNX Runtime reading a file costs about 1.3x
    its size, bytes passed through its Python binding about 3x (measured with a 244 MiB
    graph; ``scripts/onnx_load_memory.py``). :meth:`close` releases it."""

    def __init__(self, data: bytes) -> None:
        self._fd: int | None = None
        self._data: bytes | None = data
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            try:
                fd = os.memfd_create("atfnn-model.onnx", os.MFD_CLOEXEC)
            except OSError:  # no memfd in this kernel or sandbox: keep the bytes
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                os.close(fd)
                return
            self._fd, self._data = fd, None

    @property
    def source(self) -> str | bytes:
        """What ``onnxruntime.InferenceSession`` takes: a path or the bytes."""
        return f"/proc/self/fd/{self._fd}" if self._fd is not None else self._data

    def close(self) -> None:
        """Release the memory file (or the bytes); safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._data = None

    __del__ = close


def read_checked_model(path: str | os.PathLike) -> tuple[dict[str, Any], ModelBytes]:
    """:func:`read_metadata` and a :class:`ModelBytes` of one read of the file: what a
    session built from the second runs is what the first describes. Only one copy of the
    bytes and the parsed model exist at once (the parsed model is dropped first)."""
    data = read_model_bytes(path)
    proto = parse_model(path, data)
    meta = read_metadata(path, proto)
    if meta["quantization"] != "none":
        risks = int8_saturation_risks(proto)
        if risks:  # an int8 file of an older export: ONNX Runtime's U8S8 format
            import warnings

            warnings.warn(
                f"{path}: int8 weights in ONNX Runtime's U8S8 format ({len(risks)} weight "
                "tensors), whose products saturate on x86 CPUs without VNNI (the labels "
                "drift there); export it again (format U8U8, docs/design.md#onnx-export)",
                stacklevel=3,
            )
    del proto
    return meta, ModelBytes(data)


def parse_model(path: str | os.PathLike, data: bytes):
    """The ONNX model in ``data`` (:func:`read_model_bytes` of ``path``), with an
    :class:`OnnxError` naming the file for anything unreadable. A tensor whose data lives
    outside the file (ONNX external data) is refused: ``export`` never writes any, and
    its declared sizes and offsets would otherwise be trusted before they are checked."""
    onnx = require("onnx", extra="export")

    try:
        proto = onnx.load_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        from atfnn_fast.text import one_line

        # onnx's own reason (external data outside the folder...), cut to one short line
        reason = one_line(err)
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise OnnxError(
            f"{path}: not a readable ONNX model ({type(err).__name__}: {reason})"
        ) from None
    external = next(_external_tensors(proto.graph), None)
    if external is not None:
        raise OnnxError(
            f"{path}: tensor {external!r} keeps its data in another file (ONNX external "
            "data); atfnn-fast exports never do, and predict refuses them"
        )
    return proto


def _external_tensors(graph):
    """Names of the tensors of ``graph`` (initializers, sparse initializers, constants in
    node attributes, subgraphs included) whose data is external; iterative, so a deep
    nesting of subgraphs cannot exhaust the stack."""
    from onnx import AttributeProto, TensorProto

    external = TensorProto.EXTERNAL
    pending = [graph]
    while pending:
        g = pending.pop()
        tensors = list(g.initializer)
        for sparse in g.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in g.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == AttributeProto.TENSORS:
                    tensors += list(attr.tensors)
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    tensors += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
                elif attr.type == AttributeProto.GRAPH:
                    pending.append(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    pending += list(attr.graphs)
        for tensor in tensors:
            if tensor.data_location == external or len(tensor.external_data):
                yield tensor.name or "(unnamed)"


def load_model(path: str | os.PathLike):
    """The ONNX model of the file ``path``: :func:`parse_model` of :func:`read_model_bytes`."""
    require("onnx", extra="export")
    return parse_model(path, read_model_bytes(path))


_ELEM_TYPES = {"float32": 1, "float16": 10}  # onnx.TensorProto.FLOAT / FLOAT16
_MISSING = object()


def _dims(value_info) -> list[int | str | None]:
    """A graph input's / output's declared dims: an int, a symbolic name, or None."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param or None)
    return dims


def read_metadata(path: str | os.PathLike, proto=None) -> dict[str, Any]:
    """The deployment metadata of an exported file: config, labels, norm_stats, features,
    dtype, version, ``input`` (the graph's kind, :data:`.waveform.INPUT_KINDS`) and ``batch`` (the graph's fixed batch size, or None when dynamic).

    The file is untrusted: the metadata's own fields are checked (format version, dtype,
    sizes within :data:`atfnn_fast.config.SIZE_LIMITS`, label count and types, the
    statistics' band count) and so is the graph against them (one input ``spectrogram``
    ``(batch, 1, n_mels, frames)`` of the declared dtype, one output ``logits``
    ``(batch, num_classes)``; a waveform graph, ``input`` ``"waveform"``: see
    :func:`.waveform.read_metadata`, which adds ``sample_rate`` and ``segment_batch``). A
    mismatch raises :class:`OnnxError` naming the file, the
    field and both values."""
    proto = load_model(path) if proto is None else proto
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("atfnn.format") != FORMAT:
        raise OnnxError(f"{path}: not exported by atfnn-fast (no atfnn.format metadata)")
    version = props.get("atfnn.format_version")
    if version != str(FORMAT_VERSION):
        raise OnnxError(
            f"{path}: metadata atfnn.format_version is {version!r}, this atfnn-fast reads "
            f"{str(FORMAT_VERSION)!r}"
        )

    def field(key: str, parse, default: Any = _MISSING):
        """Metadata ``key`` parsed by ``parse``; errors name the file and the key."""
        if key not in props:
            if default is not _MISSING:
                return default
            raise OnnxError(f"{path}: metadata {key} is missing")
        try:
            return parse(props[key])
        except RecursionError:
            raise OnnxError(f"{path}: metadata {key}: JSON nested too deeply to parse") from None
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise OnnxError(f"{path}: metadata {key}: {err}") from None

    def stats_or_none(text: str):
        data = json.loads(text)
        return NormStats.from_dict(data) if data is not None else None

    meta = {
        "config": field("atfnn.config", ATFNNConfig.from_json),
        "labels": field("atfnn.labels", json.loads),
        "norm_stats": field("atfnn.norm_stats", stats_or_none),
        "features": field("atfnn.features", lambda t: FeatureConfig.from_dict(json.loads(t))),
        "dtype": props.get("atfnn.dtype", "float32"),
        "quantization": props.get("atfnn.quantization", "none"),
        "version": props.get("atfnn.version"),
    }
    cfg = meta["config"]
    try:
        cfg.check_size_limits("metadata atfnn.config")
    except ValueError as err:
        raise OnnxError(f"{path}: {err}") from None
    if meta["dtype"] not in DTYPES:
        raise OnnxError(
            f"{path}: metadata atfnn.dtype is {meta['dtype']!r}, expected one of {sorted(DTYPES)}"
        )
    if meta["labels"] is not None:  # the one label rule (atfnn_fast.labels)
        meta["labels"] = field(
            "atfnn.labels", lambda t: model_labels(json.loads(t), cfg.num_classes)
        )
    if meta["norm_stats"] is not None and meta["norm_stats"].n_mels != cfg.n_mels:
        raise OnnxError(
            f"{path}: metadata atfnn.norm_stats has {meta['norm_stats'].n_mels} bands, "
            f"atfnn.config n_mels is {cfg.n_mels}"
        )
    meta["input"] = props.get("atfnn.input", "spectrogram")  # files before the key: spectrogram
    if meta["input"] in INPUT_KIND_MODULES:  # "waveform"
        meta.update(INPUT_KIND_MODULES[meta["input"]].read_metadata(path, proto, props, meta))
    elif meta["input"] == "spectrogram":
        meta["batch"] = _check_graph(path, proto, cfg, meta["dtype"])
    else:
        raise OnnxError(
            f"{path}: metadata atfnn.input is {meta['input']!r}, expected 'spectrogram' or "
            "'waveform'"
        )
    return meta


def _check_graph(path, proto, cfg: ATFNNConfig, dtype: str) -> int | None:
    """Compare the graph's input and output with the metadata; returns the fixed batch size
    (None: dynamic)."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise OnnxError(
            f"{path}: graph inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in graph.output]}, expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
    (inp,), (out,) = inputs, graph.output
    elem = inp.type.tensor_type.elem_type
    if elem != _ELEM_TYPES[dtype]:
        raise OnnxError(
            f"{path}: metadata atfnn.dtype is {dtype!r}, the graph input {INPUT_NAME!r} has "
            f"element type {elem} (ONNX TensorProto; float32 is 1, float16 is 10)"
        )
    in_dims, out_dims = _dims(inp), _dims(out)
    if len(in_dims) != 4:
        raise OnnxError(
            f"{path}: graph input {INPUT_NAME!r} has {len(in_dims)} dims {in_dims}, "
            "expected 4 (batch, 1, n_mels, frames)"
        )
    if len(out_dims) != 2:
        raise OnnxError(
            f"{path}: graph output {OUTPUT_NAME!r} has {len(out_dims)} dims {out_dims}, "
            "expected 2 (batch, num_classes)"
        )
    checks = [
        ("the channel count (always)", 1, in_dims[1], f"graph input {INPUT_NAME!r} dim 1"),
        (
            "metadata atfnn.config n_mels",
            cfg.n_mels,
            in_dims[2],
            f"graph input {INPUT_NAME!r} dim 2",
        ),
        (
            "metadata atfnn.config frames",
            cfg.frames,
            in_dims[3],
            f"graph input {INPUT_NAME!r} dim 3",
        ),
        (
            "metadata atfnn.config num_classes",
            cfg.num_classes,
            out_dims[1],
            f"graph output {OUTPUT_NAME!r} dim 1",
        ),
    ]
    for field_name, want, got, where in checks:
        if got != want:
            raise OnnxError(
                f"{path}: {field_name} is {want}, {where} is "
                f"{got if got is not None else 'unknown'}"
            )
    batch = in_dims[0]
    if isinstance(batch, int) and not 1 <= batch <= MAX_BATCH:
        raise OnnxError(f"{path}: graph input {INPUT_NAME!r} has a batch of {batch}")
    if isinstance(batch, int) and out_dims[0] != batch:
        raise OnnxError(
            f"{path}: graph input {INPUT_NAME!r} batch is {batch}, graph output "
            f"{OUTPUT_NAME!r} batch is {out_dims[0]}"
        )
    return batch if isinstance(batch, int) else None
