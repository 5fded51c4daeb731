"""``export_onnx``: ATFNN / ATFNNReference -> a self-describing ONNX file
(docs/design.md#onnx-export).

What is exported is the reference math (:class:`atfnn_fast.ATFNNReference` carrying the
model's weights), through ``torch.onnx.export(..., dynamo=True)``: standard ONNX ops only,
one ``LSTM`` node per layer (bidirectional, ``layout=0``), ``LayerNormalization`` with its Y
output only, weights as initializers. Choices (docs/design.md#choices-the-paper-leaves-open):

* input ``spectrogram`` ``(batch, 1, n_mels, frames)``, output ``logits``
  ``(batch, num_classes)``; the batch axis is dynamic (1 .. 4096) unless
  ``dynamic_batch=False`` (then batch = 1: one segment per call), the time axis is fixed at ``config.frames`` (segments are cut to
  that length by the feature pipeline anyway); feature extraction stays outside the graph;
* the node-level debugging metadata the exporter attaches (stack traces, FX names) and its
  intermediate shape annotations (one of which contradicts ONNX shape inference) are
  removed and the shapes inferred again; the model-level ``metadata_props`` carry what a deployment needs:
  ``atfnn.config``, ``atfnn.labels``, ``atfnn.norm_stats``, ``atfnn.features`` (JSON) and
  ``atfnn.format`` / ``atfnn.version``;
* the file is written atomically (temporary file, then rename) after ``onnx.checker``'s full
  check has passed on the in-memory model.
"""

from __future__ import annotations

import contextlib
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
from atfnn_fast.checkpoint import check_deployment_info
from atfnn_fast.config import ATFNNConfig
from atfnn_fast.features import FeatureConfig, NormStats
from atfnn_fast.predict import MAX_BATCH_SIZE
from atfnn_fast.reference import ATFNNReference

INPUT_NAME = "spectrogram"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MAX_BATCH = MAX_BATCH_SIZE
FOLD_LIMIT = 1 << 26  # elements: constant folding may build any weight of the model
FORMAT = "atfnn-fast-onnx"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class OnnxError(ValueError):
    """An ONNX file that cannot be used; the message names the file."""


class _Logits(nn.Module):
    """The exported graph: spectrogram -> logits, through the reference math."""

    def __init__(self, reference: ATFNNReference) -> None:
        super().__init__()
        self.model = reference

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.model(spectrogram)


def reference_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> ATFNNReference:
    """An eval-mode ATFNNReference on the CPU holding ``model``'s weights."""
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
    labels: list[str] | None = None,
    norm_stats: NormStats | None = None,
    features: FeatureConfig | None = None,
) -> Path:
    """Export ``model`` (ATFNN or ATFNNReference, any variant) to ``path``; returns the path.

    ``dtype="float16"`` writes a half-precision graph (weights, input and output in fp16).
    """
    onnx = require("onnx", extra="export")
    onnxscript_optimizer = require("onnxscript.optimizer", extra="export")

    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be an int >= {DEFAULT_OPSET}, got {opset!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ref = reference_copy(model, DTYPES[dtype])
    cfg = ref.config
    labels = check_deployment_info(cfg, labels, norm_stats)
    # a dynamic batch is traced at 2 (torch.export specialises sizes 0 and 1); a static
    # graph takes one segment per call (docs/design.md#onnx-export)
    example = torch.randn(2 if dynamic_batch else 1, 1, cfg.n_mels, cfg.frames, dtype=DTYPES[dtype])
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
    # torch's exporter logs a warning per torchvision op it cannot register (no torchvision)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the exporter's progress lines, and its note that nn.LSTM re-assigns its flat
        # weight list while being traced (harmless: the weights are exported as they are)
        warnings.filterwarnings("ignore", message=".*_flat_weights.*were assigned during export")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
        program = torch.onnx.export(
            _Logits(ref).eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            optimize=True,
            verbose=False,
        )
    # Fold every constant subgraph, however large: the exporter assembles each LSTM's W and
    # R from the gate slices at run time, and TensorRT wants them as initializers.
    proto = onnxscript_optimizer.optimize(
        program.model_proto, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT
    )
    for node in proto.graph.node:
        del node.metadata_props[:]
    # torch 2.11's exporter gives the LSTM's h_n an extra leading dim in its shape
    # annotations (the computation is right): intermediate values and the logits output
    # are declared one rank too high, which the full check rejects and ONNX Runtime reports
    # as a shape-merge warning on load. Drop the annotations, declare the output as it is,
    # and let ONNX infer the rest.
    del proto.graph.value_info[:]
    out_dims = proto.graph.output[0].type.tensor_type.shape
    del out_dims.dim[:]
    batch_dim = out_dims.dim.add()
    if dynamic_batch:
        batch_dim.dim_param = "batch"
    else:
        batch_dim.dim_value = 1
    out_dims.dim.add().dim_value = cfg.num_classes
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    _set_metadata(proto, cfg, labels, norm_stats, features or FeatureConfig(), dtype)
    onnx.checker.check_model(proto, full_check=True)
    return _atomic_save(proto, Path(path))


def _set_metadata(proto, cfg, labels, norm_stats, features, dtype) -> None:
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
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "atfnn-fast"
    proto.doc_string = (
        f"ATFNN speech emotion recognition ({cfg.variant}): input {INPUT_NAME} "
        f"(batch, 1, {cfg.n_mels}, {cfg.frames}) normalised log-Mel segments, output "
        f"{OUTPUT_NAME} (batch, {cfg.num_classes})"
    )


def _atomic_save(proto, path: Path) -> Path:
    onnx = require("onnx", extra="export")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike):
    """``onnx.load`` with an :class:`OnnxError` naming the file for anything unreadable."""
    onnx = require("onnx", extra="export")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and friends
        raise OnnxError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None


_ELEM_TYPES = {"float32": 1, "float16": 10}  # onnx.TensorProto.FLOAT / FLOAT16


def _dims(value_info) -> list[int | str | None]:
    """A graph input's / output's declared dims: an int, a symbolic name, or None."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param or None)
    return dims


def read_metadata(path: str | os.PathLike, proto=None) -> dict[str, Any]:
    """The deployment metadata of an exported file: config, labels, norm_stats, features,
    dtype, version and ``batch`` (the graph's fixed batch size, or None when dynamic).

    The file is untrusted: the metadata's own fields are checked (format version, dtype,
    sizes within :data:`atfnn_fast.config.SIZE_LIMITS`, label count and types, the
    statistics' band count) and so is the graph against them (one input ``spectrogram``
    ``(batch, 1, n_mels, frames)`` of the declared dtype, one output ``logits``
    ``(batch, num_classes)``). A mismatch raises :class:`OnnxError` naming the file, the
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
    try:
        stats = json.loads(props["atfnn.norm_stats"])
        meta = {
            "config": ATFNNConfig.from_json(props["atfnn.config"]),
            "labels": json.loads(props["atfnn.labels"]),
            "norm_stats": NormStats.from_dict(stats) if stats is not None else None,
            "features": FeatureConfig.from_dict(json.loads(props["atfnn.features"])),
            "dtype": props.get("atfnn.dtype", "float32"),
            "version": props.get("atfnn.version"),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise OnnxError(f"{path}: invalid atfnn metadata ({err})") from None
    cfg = meta["config"]
    try:
        cfg.check_size_limits("metadata atfnn.config")
    except ValueError as err:
        raise OnnxError(f"{path}: {err}") from None
    if meta["dtype"] not in DTYPES:
        raise OnnxError(
            f"{path}: metadata atfnn.dtype is {meta['dtype']!r}, expected one of {sorted(DTYPES)}"
        )
    labels = meta["labels"]
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise OnnxError(
                f"{path}: metadata atfnn.labels must be a list of names, got {labels!r}"
            )
        if len(labels) != cfg.num_classes:
            raise OnnxError(
                f"{path}: metadata atfnn.labels has {len(labels)} names, atfnn.config "
                f"num_classes is {cfg.num_classes}"
            )
    if meta["norm_stats"] is not None and meta["norm_stats"].n_mels != cfg.n_mels:
        raise OnnxError(
            f"{path}: metadata atfnn.norm_stats has {meta['norm_stats'].n_mels} bands, "
            f"atfnn.config n_mels is {cfg.n_mels}"
        )
    meta["batch"] = _check_graph(path, proto, cfg, meta["dtype"])
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
        ("metadata atfnn.config n_mels", cfg.n_mels, in_dims[2], f"graph input {INPUT_NAME!r} dim 2"),
        ("metadata atfnn.config frames", cfg.frames, in_dims[3], f"graph input {INPUT_NAME!r} dim 3"),
        ("metadata atfnn.config num_classes", cfg.num_classes, out_dims[1],
         f"graph output {OUTPUT_NAME!r} dim 1"),
    ]  # fmt: skip
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
