"""The waveform-in graph (``export_onnx(..., input="waveform")``, ``atfnn-fast export
--input waveform``): one ONNX file that takes 16 kHz mono samples and returns the scores,
with the feature pipeline of :mod:`atfnn_fast.features` inside it
(docs/design.md#the-waveform-in-graph).

Graph contract:

* input ``waveform (samples,)`` float32, mono, at the metadata's ``atfnn.sample_rate``
  (the feature config's rate, 16 kHz by default), any length. Resampling stays outside
  (:class:`~atfnn_fast.export.OnnxPredictor` resamples with libsoxr first, as ``predict``
  does).
* outputs ``segment_scores (segments, num_classes)``: each segment's softmax
  probabilities, and ``scores (num_classes,)``: their mean, the file's scores as
  ``predict`` computes them.

Inside, exactly what the Python pipeline does for ``predict``
(:func:`~atfnn_fast.features.iter_segment_batches`):

* log-Mel: reflect padding of ``n_fft // 2`` at both ends (``center=True``), ``STFT``
  (opset 17) with the periodic Hamming window of ``win_length`` zero-padded to ``n_fft``
  in its centre (as ``torch.stft`` places a shorter window), ``hop_length``; power
  ``re**2 + im**2``; ``MatMul`` with the HTK Mel filters without normalisation (an
  initializer, :func:`atfnn_fast.features._mel_filters`); ``Log(mel + log_offset)``. N
  samples give ``1 + N // hop`` frames. These four run in float64, then float32: in
  float32, ONNX Runtime's STFT and ``torch.stft`` are each up to 1.7e-4 from the exact
  log-Mel of the bundled speech (near-silent bands, where ``log`` magnifies the FFT's
  rounding) and 2.4e-4 from each other; in float64 the graph is exact to 1e-12, and its
  difference to the pipeline is the pipeline's own rounding.
* segmentation: non-overlapping segments of ``frames`` frames; the last, partial one is
  padded with the silence value ``log(log_offset)`` and kept when it holds at least
  :func:`~atfnn_fast.features.min_tail_frames` real frames or is the only segment.
* the checkpoint's normalisation ``(x - mean) / std`` per band (none when the file has no
  statistics), after the padding, as :meth:`NormStats.apply` runs on padded segments.
* the model: the spectrogram graph of :func:`export_onnx` (float32 or int8), run by a
  ``Loop`` over chunks of at most ``segment_batch`` segments; each step computes the STFT
  of its own stretch of samples only, so the graph's working memory is one chunk's
  whatever the length (the samples themselves and the scores grow with it).
* the file's scores: ``Softmax`` per segment, then ``ReduceMean`` over the segments (in
  float32; ``predict`` sums in float64).

A waveform of ``n_fft // 2`` samples or fewer (16 ms), which the Python pipeline refuses
(reflect padding needs more), is zero-padded at its end to ``n_fft // 2 + 1`` samples
first, so the graph returns scores for any length, 0 samples included;
:class:`OnnxPredictor` refuses such files as ``predict --checkpoint`` does.

Metadata beside :func:`export_onnx`'s: ``atfnn.input = "waveform"`` (``"spectrogram"`` for
the other kind; a file without the key is a spectrogram graph), ``atfnn.sample_rate`` and
``atfnn.segment_batch``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from atfnn_fast.config import ATFNNConfig
from atfnn_fast.features import FeatureConfig, NormStats, _mel_filters, min_tail_frames

INPUT_KINDS = ("spectrogram", "waveform")
WAVEFORM_INPUT = "waveform"
SEGMENT_SCORES = "segment_scores"
FILE_SCORES = "scores"
FEATURES_OUTPUT = "features"  # only in the copy validate_waveform runs (expose_features)
PREFIX = "wav/"  # every name this module adds (the model's names never start with it)
LOOP_NAME = PREFIX + "segments"
_MODEL_INPUT = "spectrogram"  # the model's input, fed inside the loop body
_LOGITS = "logits"  # the model's output
_PAD_ROWS = PREFIX + "pad_rows"  # rows padding a short last chunk up to segment_batch
_COUNT = PREFIX + "count"  # (1,) int64: the file's segments
TOLERANCE = 1e-4  # features and probabilities, against the Python pipeline


def waveform_proto(
    model_proto,
    config: ATFNNConfig,
    features: FeatureConfig,
    norm_stats: NormStats | None,
    segment_batch: int,
):
    """The waveform-in model around ``model_proto`` (a spectrogram graph of
    :func:`export_onnx`: input ``spectrogram (b, 1, n_mels, frames)``, output ``logits``);
    metadata is left to the caller."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f, t, hop, n_fft = config.n_mels, config.frames, features.hop_length, features.n_fft
    pad = n_fft // 2
    b_max = segment_batch
    model_graph = model_proto.graph
    inits = []

    def const(name: str, value, dtype=np.int64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), PREFIX + name))
        return PREFIX + name

    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    window = torch.zeros(n_fft, dtype=torch.float64)
    left = (n_fft - features.win_length) // 2  # torch.stft centres a shorter window
    window[left : left + features.win_length] = torch.hamming_window(
        features.win_length, dtype=torch.float64
    )
    # the log-Mel in float64 (see the module doc), then float32 like the pipeline's
    c_window = const("window", window.numpy(), np.float64)
    c_filters = const("mel_filters", _mel_filters(f, features).double().numpy(), np.float64)
    c_offset = const("log_offset", features.log_offset, np.float64)
    c_silence = const("silence", features.silence_value, np.float32)
    c_hop_s = const("hop_scalar", hop)
    one, zero = const("one", [1]), const("zero", [0])
    c_hop, c_frames, c_batch = const("hop", [hop]), const("frames", [t]), const("batch", [b_max])
    c_fft = const("n_fft", [n_fft])

    def v(name: str) -> str:
        return PREFIX + name

    # ------------------------------------------------------------------ outer graph, part 1
    outer = [
        node("Shape", [WAVEFORM_INPUT], v("n")),
        node("Max", [v("n"), const("min_samples", [pad + 1])], v("n_padded")),
        node("Sub", [v("n_padded"), v("n")], v("short_by")),
        node("Concat", [zero, v("short_by")], v("short_pads"), axis=0),
        node("Pad", [WAVEFORM_INPUT, v("short_pads")], v("wave")),  # zeros: only if very short
        node("Pad", [v("wave"), const("reflect_pads", [pad, pad])], v("signal"), mode="reflect"),
        # frames N = 1 + n // hop; segments: whole ones, plus the tail if it counts
        node("Div", [v("n_padded"), c_hop], v("n_hops")),
        node("Add", [v("n_hops"), one], v("n_frames")),
        node("Div", [v("n_frames"), c_frames], v("whole")),
        node("Mul", [v("whole"), c_frames], v("whole_frames")),
        node("Sub", [v("n_frames"), v("whole_frames")], v("tail")),
        node("Greater", [v("tail"), zero], v("has_tail")),
        node(
            "GreaterOrEqual", [v("tail"), const("min_tail", [min_tail_frames(t)])], v("long_tail")
        ),
        node("Equal", [v("whole"), zero], v("only_tail")),
        node("Or", [v("long_tail"), v("only_tail")], v("tail_counts")),
        node("And", [v("has_tail"), v("tail_counts")], v("keep_tail")),
        node("Cast", [v("keep_tail")], v("keep_tail_int"), to=TensorProto.INT64),
        node("Add", [v("whole"), v("keep_tail_int")], _COUNT),
        node("Add", [_COUNT, const("batch_minus_one", [b_max - 1])], v("count_up")),
        node("Div", [v("count_up"), c_batch], v("steps")),
        node("Squeeze", [v("steps"), zero], v("trip_count")),
    ]

    # ------------------------------------------------------------------------ loop body
    body = [
        node("Unsqueeze", [v("step"), zero], v("step_1")),
        node("Mul", [v("step_1"), c_batch], v("first")),
        node("Sub", [_COUNT, v("first")], v("remaining")),
        node("Min", [v("remaining"), c_batch], v("b")),
        node("Mul", [v("first"), c_frames], v("frame0")),
        node("Mul", [v("b"), c_frames], v("frames_here")),
        node("Mul", [v("frame0"), c_hop], v("sample0")),
        node("Sub", [v("frames_here"), one], v("frames_minus_one")),
        node("Mul", [v("frames_minus_one"), c_hop], v("span")),
        node("Add", [v("span"), c_fft], v("length")),
        node("Add", [v("sample0"), v("length")], v("sample1")),
        node("Slice", [v("signal"), v("sample0"), v("sample1"), zero], v("piece")),
        node("Shape", [v("piece")], v("piece_len")),
        node("Sub", [v("length"), v("piece_len")], v("piece_short")),
        node("Concat", [zero, v("piece_short")], v("piece_pads"), axis=0),
        node("Pad", [v("piece"), v("piece_pads")], v("piece_full")),  # frames past N: masked
        node("Cast", [v("piece_full")], v("piece_double"), to=TensorProto.DOUBLE),
        node("Reshape", [v("piece_double"), const("signal_shape", [1, -1, 1])], v("piece_3d")),
        node("STFT", [v("piece_3d"), c_hop_s, c_window], v("stft"), onesided=1),
        node("ReduceSumSquare", [v("stft"), const("last_axis", [-1])], v("power"), keepdims=0),
        node("Squeeze", [v("power"), zero], v("power_2d")),  # (frames_here, n_fft // 2 + 1)
        node("MatMul", [v("power_2d"), c_filters], v("mel")),
        node("Add", [v("mel"), c_offset], v("mel_offset")),
        node("Log", [v("mel_offset")], v("log_mel_double")),
        node("Cast", [v("log_mel_double")], v("log_mel"), to=TensorProto.FLOAT),
        # frames at or past N (the padded tail of the last segment) are silence
        node("Squeeze", [v("frames_here"), zero], v("frames_here_s")),
        node("Range", [const("zero_s", 0), v("frames_here_s"), const("one_s", 1)], v("j0")),
        node("Add", [v("j0"), v("frame0")], v("j")),
        node("Less", [v("j"), v("n_frames")], v("real")),
        node("Unsqueeze", [v("real"), one], v("real_2d")),
        node("Where", [v("real_2d"), v("log_mel"), c_silence], v("padded_mel")),
    ]
    frames_major = v("padded_mel")
    if norm_stats is not None:
        mean = const("norm_mean", norm_stats.mean, np.float32)
        std = const("norm_std", norm_stats.std, np.float32)
        body += [
            node("Sub", [frames_major, mean], v("centred")),
            node("Div", [v("centred"), std], v("normalised")),
        ]
        frames_major = v("normalised")
    body += [
        node("Reshape", [frames_major, const("segments_shape", [-1, t, f])], v("segments_tf")),
        node("Transpose", [v("segments_tf")], v("segments_ft"), perm=[0, 2, 1]),
        node("Unsqueeze", [v("segments_ft"), one], _MODEL_INPUT),
    ]
    body += list(model_graph.node)
    body += [
        node("Sub", [c_batch, v("b")], _PAD_ROWS),
        node("Concat", [const("zeros_2", [0, 0]), _PAD_ROWS, zero], v("logit_pads"), axis=0),
        node("Pad", [_LOGITS, v("logit_pads")], v("logits_rows")),
        node("Identity", [v("cond")], v("cond_out")),
    ]
    body_graph = helper.make_graph(
        body,
        PREFIX + "body",
        [
            helper.make_tensor_value_info(v("step"), TensorProto.INT64, []),
            helper.make_tensor_value_info(v("cond"), TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info(v("cond_out"), TensorProto.BOOL, []),
            helper.make_tensor_value_info(
                v("logits_rows"), TensorProto.FLOAT, [b_max, config.num_classes]
            ),
        ],
    )

    # ------------------------------------------------------------------ outer graph, part 2
    outer += [
        helper.make_node(
            "Loop",
            [v("trip_count"), const("true", True, np.bool_)],
            [v("logits_steps")],
            name=LOOP_NAME,
            body=body_graph,
        ),
        node(
            "Reshape", [v("logits_steps"), const("rows_shape", [-1, config.num_classes])], v("all")
        ),
        node("Slice", [v("all"), zero, _COUNT, zero], v("logits")),
        node("Softmax", [v("logits")], SEGMENT_SCORES, axis=-1),
        node("ReduceMean", [SEGMENT_SCORES, zero], FILE_SCORES, keepdims=0),
    ]
    graph = helper.make_graph(
        outer,
        "atfnn_waveform",
        [helper.make_tensor_value_info(WAVEFORM_INPUT, TensorProto.FLOAT, ["samples"])],
        [
            helper.make_tensor_value_info(
                SEGMENT_SCORES, TensorProto.FLOAT, ["segments", config.num_classes]
            ),
            helper.make_tensor_value_info(FILE_SCORES, TensorProto.FLOAT, [config.num_classes]),
        ],
        [*inits, *model_graph.initializer],
    )
    proto = helper.make_model(graph, opset_imports=list(model_proto.opset_import))
    proto.ir_version = model_proto.ir_version
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ---------------------------------------------------------------------------- metadata
def set_metadata(
    proto, config: ATFNNConfig, features: FeatureConfig, segment_batch: int, quantized: bool
) -> None:
    """Mark ``proto`` (metadata already set by ``export_onnx``) as a waveform-in graph."""
    extra = {
        "atfnn.input": "waveform",
        "atfnn.sample_rate": str(features.sample_rate),
        "atfnn.segment_batch": str(segment_batch),
    }
    for entry in proto.metadata_props:
        if entry.key in extra:
            entry.value = extra.pop(entry.key)
    for key, value in extra.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    quantised = " (weights dynamically quantised to int8)" if quantized else ""
    proto.doc_string = (
        f"ATFNN speech emotion recognition ({config.variant}){quantised}: input "
        f"{WAVEFORM_INPUT} (samples,) float32 mono at {features.sample_rate} Hz, any length; "
        f"outputs {SEGMENT_SCORES} (segments, {config.num_classes}) softmax probabilities of "
        f"the {config.frames}-frame segments and {FILE_SCORES} ({config.num_classes},) their "
        "mean. Log-Mel, segmentation and normalisation are inside the graph."
    )


def read_metadata(path, proto, props: dict[str, str], meta: dict) -> dict:
    """The waveform graph's own metadata (``sample_rate``, ``segment_batch``) and the graph
    checked against it; for :func:`~atfnn_fast.export.read_metadata`."""
    from .onnx_export import MAX_BATCH, OnnxError

    features: FeatureConfig = meta["features"]

    def integer(key: str, low: int, high: int) -> int:
        text = props.get(key)
        if text is None:
            raise OnnxError(f"{path}: metadata {key} is missing")
        try:
            value = int(text)
        except ValueError:
            raise OnnxError(f"{path}: metadata {key} is {text!r}, expected an integer") from None
        if not low <= value <= high:
            raise OnnxError(f"{path}: metadata {key} is {value}, expected {low}..{high}")
        return value

    rate = integer("atfnn.sample_rate", 1, 10**6)
    if rate != features.sample_rate:
        raise OnnxError(
            f"{path}: metadata atfnn.sample_rate is {rate}, atfnn.features sample_rate is "
            f"{features.sample_rate}"
        )
    if meta["dtype"] != "float32":
        raise OnnxError(
            f"{path}: metadata atfnn.dtype is {meta['dtype']!r}, a waveform graph is float32"
        )
    segment_batch = integer("atfnn.segment_batch", 1, MAX_BATCH)
    _check_graph(path, proto, meta["config"])
    return {"sample_rate": rate, "segment_batch": segment_batch, "batch": None}


def _check_graph(path, proto, config: ATFNNConfig) -> None:
    from .onnx_export import _ELEM_TYPES, OnnxError, _dims

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    if [i.name for i in inputs] != [WAVEFORM_INPUT] or outputs != [SEGMENT_SCORES, FILE_SCORES]:
        raise OnnxError(
            f"{path}: graph inputs {[i.name for i in inputs]} and outputs {outputs}, expected "
            f"[{WAVEFORM_INPUT!r}] and [{SEGMENT_SCORES!r}, {FILE_SCORES!r}] (metadata "
            "atfnn.input is 'waveform')"
        )
    (inp,) = inputs
    elem = inp.type.tensor_type.elem_type
    if elem != _ELEM_TYPES["float32"] or len(_dims(inp)) != 1:
        raise OnnxError(
            f"{path}: graph input {WAVEFORM_INPUT!r} has element type {elem} and dims "
            f"{_dims(inp)}, expected float32 (1) and one dim (samples,)"
        )
    seg, whole = (_dims(o) for o in graph.output)
    if len(seg) != 2 or seg[1] != config.num_classes or whole != [config.num_classes]:
        raise OnnxError(
            f"{path}: graph outputs {SEGMENT_SCORES!r} {seg} and {FILE_SCORES!r} {whole}, "
            f"expected (segments, {config.num_classes}) and ({config.num_classes},) from "
            "metadata atfnn.config num_classes"
        )


def expose_features(proto):
    """A copy of a waveform graph with one more output, ``features (segments, 1, n_mels,
    frames)``: the normalised segments the model reads (for :func:`validate_waveform`)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    loop = next(n for n in proto.graph.node if n.name == LOOP_NAME)
    body = next(a for a in loop.attribute if a.name == "body").g
    rows = PREFIX + "feature_pads"
    body.node.extend(
        [
            helper.make_node(
                "Concat",
                [PREFIX + "zeros_4", _PAD_ROWS, PREFIX + "zeros_3"],
                [rows],
                name=rows,
                axis=0,
            ),
            helper.make_node("Pad", [_MODEL_INPUT, rows], [PREFIX + "feature_rows"], name="f_rows"),
        ]
    )
    body.output.append(
        helper.make_tensor_value_info(PREFIX + "feature_rows", TensorProto.FLOAT, None)
    )
    loop.output.append(PREFIX + "feature_steps")
    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = ATFNNConfig.from_json(meta["atfnn.config"])
    proto.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.zeros(4, np.int64), PREFIX + "zeros_4"),
            onnx.numpy_helper.from_array(np.zeros(3, np.int64), PREFIX + "zeros_3"),
            onnx.numpy_helper.from_array(
                np.array([-1, 1, cfg.n_mels, cfg.frames], np.int64), PREFIX + "features_shape"
            ),
        ]
    )
    proto.graph.node.extend(
        [
            helper.make_node(
                "Reshape",
                [PREFIX + "feature_steps", PREFIX + "features_shape"],
                [PREFIX + "all_features"],
            ),
            helper.make_node(
                "Slice",
                [PREFIX + "all_features", PREFIX + "zero", _COUNT, PREFIX + "zero"],
                [FEATURES_OUTPUT],
            ),
        ]
    )
    proto.graph.output.append(
        helper.make_tensor_value_info(
            FEATURES_OUTPUT, TensorProto.FLOAT, ["segments", 1, cfg.n_mels, cfg.frames]
        )
    )
    return proto


# -------------------------------------------------------------------------- prediction
def run(session, wave) -> tuple[np.ndarray, np.ndarray]:
    """A waveform graph's ``(segment_scores (S, C), scores (C,))`` for ``wave`` (1-D, or
    ``(1, samples)``), as float64."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise ValueError(
            f"wave must be mono samples (samples,) or (1, samples), got shape {wave.shape}"
        )
    if not np.isfinite(wave).all():
        raise ValueError("wave contains NaN or Inf samples")
    segments, scores = session.run([SEGMENT_SCORES, FILE_SCORES], {WAVEFORM_INPUT: wave})
    return segments.astype(np.float64), scores.astype(np.float64)


def check_length(path, wave: torch.Tensor, n_mels: int, features: FeatureConfig) -> None:
    """Refuse a file too short for one frame as the Python pipeline does (its message)."""
    from atfnn_fast.features import AudioError, log_mel

    if wave.shape[-1] <= features.n_fft // 2:
        try:
            log_mel(wave, n_mels, features)  # raises the pipeline's own error
        except ValueError as err:
            raise AudioError(path, str(err)) from None


# -------------------------------------------------------------------------- validation
@dataclass
class Recording:
    """One recording: the graph against the Python pipeline."""

    name: str
    seconds: float
    segments: int  # the Python pipeline's
    graph_segments: int
    feature_diff: float  # max |graph - python| over the normalised segments
    feature_scale: float  # max |python| over them
    prob_diff: float  # max |graph - python| over the segments' probabilities
    file_diff: float  # the same over the file's scores
    top1: float  # share of segments with the same arg-max
    same_label: bool  # the file's label

    @property
    def feature_rel(self) -> float:
        return self.feature_diff / max(self.feature_scale, 1e-12)

    def problems(self, tolerance: float, quantized: bool = False) -> list[str]:
        if self.graph_segments != self.segments:
            return [f"{self.graph_segments} segments, the Python pipeline cuts {self.segments}"]
        out = []
        if self.feature_rel > tolerance:
            out.append(f"features differ by {self.feature_rel:.2e} (relative) > {tolerance:g}")
        if not quantized and max(self.prob_diff, self.file_diff) > tolerance:
            diff = max(self.prob_diff, self.file_diff)
            out.append(f"probabilities differ by {diff:.2e} > {tolerance:g}")
        if not self.same_label:
            out.append("the file's label differs")
        return out


def _int8_agreement() -> float:
    from .validate import INT8_AGREEMENT

    return INT8_AGREEMENT


@dataclass
class WaveformReport:
    """:func:`validate_waveform`'s result; prints like :class:`ValidationReport`."""

    path: str
    providers: list[str]
    quantization: str = "none"
    tolerance: float = TOLERANCE
    recordings: list[Recording] = field(default_factory=list)
    skipped: str | None = None

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    @property
    def failure(self) -> str | None:
        """The first problem, on one line (None: passed)."""
        for r in self.recordings:
            problems = r.problems(self.tolerance, self.quantized)
            if problems:
                return f"{r.name}: {'; '.join(problems)}"
        if not self.recordings:
            return "no recordings were compared"
        if self.quantized and self.top1 < _int8_agreement():
            return f"top-1 agreement {self.top1:.2%} of the segments < {_int8_agreement():.0%}"
        return None

    @property
    def top1(self) -> float:
        """Share of all segments with the same arg-max."""
        total = sum(r.segments for r in self.recordings)
        return sum(r.top1 * r.segments for r in self.recordings) / max(total, 1)

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.failure is None

    def __str__(self) -> str:
        kind = "waveform in, float32" + (f", {self.quantization}" if self.quantized else "")
        model = "its own int8 model in ONNX Runtime" if self.quantized else "eager PyTorch"
        lines = [
            f"{self.path} ({kind}) on {', '.join(self.providers)}, against the Python "
            f"pipeline (atfnn_fast.features + {model}):"
        ]
        for r in self.recordings:
            lines.append(
                f"  {r.name} ({r.seconds:.2f} s, {r.segments} segments): features "
                f"{r.feature_rel:.1e} relative ({r.feature_diff:.1e} absolute), "
                f"probabilities {r.prob_diff:.1e} (file {r.file_diff:.1e}), top-1 "
                f"{r.top1:.0%} of segments, file label " + ("same" if r.same_label else "DIFFERENT")
            )
        if self.quantized:  # dynamic int8 rounds tiny input differences to other steps
            rule = (
                f"features <= {self.tolerance:g} relative, top-1 agreement >= "
                f"{_int8_agreement():.0%} of the segments (here {self.top1:.2%}), same file "
                "labels"
            )
        else:
            rule = (
                f"features <= {self.tolerance:g} relative, probabilities <= "
                f"{self.tolerance:g}, same file labels"
            )
        failure = self.failure
        lines.append(f"  PASS ({rule})" if failure is None else f"  FAIL ({rule}): {failure}")
        return "\n".join(lines)


def validation_recordings(
    folder: Path, features: FeatureConfig, frames: int, long_seconds: float = 600.0
) -> list[Path]:
    """Recordings synthesised from the bundled speech (float WAV at the graph's rate, so the
    graph and the pipeline read the same samples): shorter than one segment, an exact
    multiple of the hop, and ``long_seconds`` long (the speech repeated, each repetition
    with another gain and every other one reversed)."""
    import soundfile as sf

    from atfnn_fast.features import load_audio, speech_sample

    rate, hop = features.sample_rate, features.hop_length
    speech = load_audio(speech_sample(), rate).numpy()
    short = speech[: max(features.n_fft // 2 + 1, (frames // 2) * hop)]
    multiple = speech[: len(speech) // hop * hop]
    n_long = round(long_seconds * rate)
    gains = (1.0, 0.5, 0.8, 0.25, 1.2, 0.1)
    reps = math.ceil(n_long / len(speech))
    long = np.concatenate(
        [speech[:: -1 if i % 2 else 1] * gains[i % len(gains)] for i in range(reps)]
    )[:n_long]
    long = np.clip(long, -1.0, 1.0)
    out = []
    for name, wave in (
        ("shorter-than-a-segment", short),
        ("multiple-of-the-hop", multiple),
        (f"{long_seconds / 60:g}-minutes", long),
    ):
        path = folder / f"{name}.wav"
        sf.write(str(path), wave.astype(np.float32), rate, subtype="FLOAT")
        out.append(path)
    return out


def model_part(proto):
    """The spectrogram model inside a waveform graph's loop, as a model of its own (input
    ``spectrogram``, output ``logits``): the nodes :func:`waveform_proto` took from it."""
    import onnx
    from onnx import TensorProto, helper

    loop = next(n for n in proto.graph.node if n.name == LOOP_NAME)
    body = next(a for a in loop.attribute if a.name == "body").g
    nodes = [
        n for n in body.node if not any(o.startswith(PREFIX) or o == _MODEL_INPUT for o in n.output)
    ]
    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = ATFNNConfig.from_json(meta["atfnn.config"])
    graph = helper.make_graph(
        nodes,
        "atfnn_model",
        [
            helper.make_tensor_value_info(
                _MODEL_INPUT, TensorProto.FLOAT, ["b", 1, cfg.n_mels, cfg.frames]
            )
        ],
        [helper.make_tensor_value_info(_LOGITS, TensorProto.FLOAT, ["b", cfg.num_classes])],
        [t for t in proto.graph.initializer if not t.name.startswith(PREFIX)],
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    onnx.checker.check_model(model)
    return model


def validate_waveform(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    providers: list[str] | None = None,
    audio=None,
    raise_on_failure: bool = True,
    long_seconds: float = 600.0,
) -> WaveformReport:
    """The waveform graph at ``path`` against the Python pipeline (``predict``'s:
    :func:`~atfnn_fast.features.iter_segment_batches`, then ``model`` in eager PyTorch;
    for an int8 graph its own int8 model, :func:`model_part`, in ONNX Runtime on the same
    batches of ``segment_batch`` segments, since dynamic quantisation depends on the
    batch) on :func:`validation_recordings`, the bundled speech and any ``audio`` (files,
    folders, manifest CSVs; both resample them to the graph's rate with libsoxr).

    Per recording: the segment count; the features (the normalised segments, which the
    graph returns through :func:`expose_features`) as the relative error
    ``max |graph - python| / max |python|`` (the measure :func:`validate_onnx` uses), since
    the pipeline's float32 ``torch.stft`` is itself up to 3.8e-4 (raw log-Mel; 1.1e-4 after
    normalisation) from the exact log-Mel in near-silent bands of loud audio, while the
    graph's float64 log-Mel is exact to 1e-12 (docs/design.md#the-waveform-in-graph); the
    probabilities per segment and the file's scores as the absolute difference; the file's
    label. Passes when all stay within :data:`TOLERANCE` and the labels agree; an int8
    graph's probabilities move by up to 1e-2 when its input moves by 1e-5 (the run-time
    quantisation steps), so it passes on the features, the labels and a top-1 agreement of
    :data:`~atfnn_fast.export.validate.INT8_AGREEMENT` of the segments instead."""
    import tempfile

    from atfnn_fast.features import iter_segment_batches, load_audio, speech_sample
    from atfnn_fast.inference import softmax

    from .onnx_export import load_model, read_metadata
    from .validate import OnnxValidationError, _eager, audio_files, session

    meta = read_metadata(path)
    cfg, features, stats = meta["config"], meta["features"], meta["norm_stats"]
    chunk = meta["segment_batch"]
    if getattr(model, "config", None) != cfg:
        raise ValueError(f"{path}: the model's config differs from the one in the file")
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="atfnn-waveform-") as tmp:
            proto = load_model(path)
            exposed = Path(tmp) / "with-features.onnx"
            exposed.write_bytes(expose_features(proto).SerializeToString())
            sess = session(exposed, providers)
            report = WaveformReport(str(path), sess.get_providers(), meta["quantization"])
            if report.quantized:
                inner = Path(tmp) / "model.onnx"
                inner.write_bytes(model_part(proto).SerializeToString())
                inner_sess = session(inner, providers)

                def logits(x: torch.Tensor) -> np.ndarray:
                    return inner_sess.run(None, {_MODEL_INPUT: x.numpy()})[0]
            else:

                def logits(x: torch.Tensor) -> np.ndarray:
                    return _eager(model, x)

            files = [
                *validation_recordings(Path(tmp), features, cfg.frames, long_seconds),
                speech_sample(),
                *audio_files(audio or ()),
            ]
            for file in files:
                batches = iter_segment_batches(
                    file,
                    n_mels=cfg.n_mels,
                    frames=cfg.frames,
                    stats=stats,
                    features=features,
                    batch_size=chunk,
                )
                xs, probs = [], []
                for x in batches:
                    xs.append(x)
                    probs.append(softmax(logits(x).astype(np.float64)))
                x, want = torch.cat(xs).numpy(), np.concatenate(probs)
                wave = load_audio(file, features.sample_rate).numpy()
                seg, scores, got_x = sess.run(
                    [SEGMENT_SCORES, FILE_SCORES, FEATURES_OUTPUT], {WAVEFORM_INPUT: wave}
                )
                same = seg.shape == want.shape and got_x.shape == x.shape
                file_want = want.mean(0)
                report.recordings.append(
                    Recording(
                        name=file.name,
                        seconds=len(wave) / features.sample_rate,
                        segments=len(want),
                        graph_segments=len(seg),
                        feature_diff=float(np.abs(got_x - x).max()) if same else math.inf,
                        feature_scale=float(np.abs(x).max()),
                        prob_diff=float(np.abs(seg - want).max()) if same else math.inf,
                        file_diff=float(np.abs(scores - file_want).max()),
                        top1=float((seg.argmax(1) == want.argmax(1)).mean()) if same else 0.0,
                        same_label=int(scores.argmax()) == int(file_want.argmax()),
                    )
                )
    finally:
        model.train(was_training)
    if raise_on_failure and not report.passed:
        raise OnnxValidationError(str(report))
    return report


def _register() -> None:
    """Make this module the implementation of ``input="waveform"`` graphs for
    :mod:`.onnx_export` and :mod:`.validate` (which do not import it)."""
    import sys

    from .onnx_export import INPUT_KIND_MODULES

    INPUT_KIND_MODULES["waveform"] = sys.modules[__name__]


_register()
