"""``validate_onnx``: the exported graph in ONNX Runtime against eager PyTorch.

Fresh random inputs (standard normal: normalised log-Mel segments have zero mean and unit
variance per band) at each batch size; the error measure is the relative error
``max |onnx - eager| / max |eager|`` over the logits. float32 files must stay within
``rtol=1e-4``, float16 files within ``rtol=1e-2`` and are only run where a CUDA execution
provider exists (ONNX Runtime's CPU provider has no float16 LSTM). Contract and choices:
docs/design.md#onnx-export, docs/design.md#choices-the-paper-leaves-open.

int8 files (``export_onnx(..., quantize="int8")``) cannot match to 1e-4; they are judged on
real features instead (docs/design.md#choices-the-paper-leaves-open): the segments (hop ``frames // 4``, normalised with the file's
statistics) of the bundled recording and of any ``audio`` given (files, folders of audio
files, or manifest CSVs), against the float32 eager model. The report gives the top-1
agreement per segment and per file (mean of the segment probabilities, as ``predict``
computes it) and the largest probability difference; the file passes with a per-segment
agreement of at least :data:`INT8_AGREEMENT`. The random-input errors are reported too,
without a tolerance.

The speed ratio (measured for int8 files, or with ``speed=True``): eager
:class:`~atfnn_fast.ATFNNReference` (float32, CPU, torch's thread count) against the ONNX
Runtime session at batch ``speed_batch``, both timed back to back in this process: three
blocks each of a 50 ms pause, one warm-up and three timed calls, alternating; the median
of the nine calls (blocks, not single calls, alternate, and the pause lets the other's
worker threads go idle: see :func:`median_ms`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atfnn_fast._deps import require
from atfnn_fast.errors import UsageError
from atfnn_fast.features import AUDIO_SUFFIXES

from .onnx_export import (
    INPUT_KIND_MODULES,
    INPUT_NAME,
    ModelBytes,
    OnnxError,
    parse_model,
    read_checked_model,
    read_model_bytes,
    reference_copy,
)

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
# ONNX Runtime session options that stop its worker threads spinning between calls
SPIN_OPTIONS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
INT8_AGREEMENT = 0.99
# --provider names -> ONNX Runtime execution providers, in order of preference
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_GPU_HINT = {
    "CUDAExecutionProvider": (
        "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && "
        'pip install "atfnn-fast[gpu]"), with the CUDA 12 and cuDNN 9 libraries it needs'
    ),
    "TensorrtExecutionProvider": (
        "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && "
        'pip install "atfnn-fast[gpu]") and TensorRT 10 (pip install tensorrt)'
    ),
}


class OnnxValidationError(AssertionError):
    """ONNX Runtime and eager PyTorch disagree beyond the tolerance."""


@dataclass
class BatchResult:
    batch: int
    max_abs: float
    max_rel: float


@dataclass
class Agreement:
    """int8 (or any) graph against the float32 eager model on real features."""

    segments: int
    files: int
    top1: float  # fraction of segments with the same arg-max
    top1_files: float  # the same per file (mean segment probabilities)
    max_prob_diff: float  # largest |p_onnx - p_eager| over segments and classes


@dataclass
class Speed:
    batch: int
    eager_ms: float
    onnx_ms: float

    @property
    def ratio(self) -> float:
        return self.eager_ms / self.onnx_ms


@dataclass
class ValidationReport:
    path: str
    providers: list[str]
    dtype: str
    tolerance: float
    results: list[BatchResult] = field(default_factory=list)
    skipped: str | None = None
    quantization: str = "none"
    agreement: Agreement | None = None
    speed: Speed | None = None

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    @property
    def passed(self) -> bool:
        if self.skipped is not None:
            return False
        if self.quantized:
            return self.agreement is not None and self.agreement.top1 >= INT8_AGREEMENT
        return all(r.max_rel <= self.tolerance for r in self.results)

    @property
    def failure(self) -> str | None:
        """What failed, on the criterion that decides :attr:`passed` (int8: the agreement
        on real features; else the relative error): None when passed or skipped."""
        if self.passed or self.skipped is not None:
            return None
        if self.quantized:
            a = self.agreement
            if a is None:
                return "no real-feature agreement measured"
            return (
                f"top-1 agreement {a.top1:.2%} of {a.segments} segments < "
                f"{INT8_AGREEMENT:.0%} on real features"
            )
        worst = max(r.max_rel for r in self.results)
        return f"max relative error {worst:.2e} > {self.tolerance:g}"

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.path}: not validated: {self.skipped}"
        kind = self.dtype + (f", {self.quantization}" if self.quantized else "")
        lines = [f"{self.path} ({kind}) on {', '.join(self.providers)}:"]
        lines += [
            f"  batch {r.batch:>4}: max abs {r.max_abs:.3e}, max rel {r.max_rel:.3e}"
            for r in self.results
        ]
        a = self.agreement
        if a is not None:
            lines.append(
                f"  real features: top-1 agreement {a.top1:.2%} of {a.segments} segments, "
                f"{a.top1_files:.2%} of {a.files} files; largest probability difference "
                f"{a.max_prob_diff:.4f}"
            )
        if self.speed is not None:
            s = self.speed
            lines.append(
                f"  speed at batch {s.batch}: eager {s.eager_ms:.1f} ms, ONNX Runtime "
                f"{s.onnx_ms:.1f} ms ({s.ratio:.2f}x)"
            )
        if not self.passed:
            lines.append(f"  FAIL: {self.failure}")
        elif self.quantized:
            lines.append(f"  PASS (top-1 agreement >= {INT8_AGREEMENT:.0%} on real features)")
        else:
            lines.append(f"  PASS (relative tolerance {self.tolerance:g})")
        return "\n".join(lines)


class ProviderUnavailable(OnnxError, UsageError):
    """An execution provider this onnxruntime cannot run (or a float16 graph without the
    CUDA provider): the message says what to install. The command line treats it as bad
    usage of this installation (exit code 2)."""


def providers_for(provider: str | None) -> list[str] | None:
    """``"cpu" | "cuda" | "tensorrt"`` -> ONNX Runtime provider list (None: automatic)."""
    if provider is None or provider == "auto":
        return None
    if provider not in PROVIDERS:
        raise ValueError(
            f"provider must be one of {sorted(PROVIDERS)} (or 'auto'), got {provider!r}"
        )
    return list(PROVIDERS[provider])


def session(
    path: str | os.PathLike,
    providers: list[str] | None = None,
    threads: int = 0,
    *,
    provider: str | None = None,
):
    """An ONNX Runtime session of the file ``path``; errors name the file.

    ``provider`` (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or an explicit ``providers`` list;
    neither: the CUDA provider first where available, else the CPU. A GPU provider that
    this onnxruntime lacks, or that fails to load, is an :class:`OnnxError` saying what to
    install; so is a float16 graph without the CUDA provider. The file is read once
    (:func:`~atfnn_fast.export.onnx_export.read_model_bytes`).
    """
    onnx = require("onnx", extra="export")

    data = read_model_bytes(path)
    proto = parse_model(path, data)  # a clear error for non-ONNX files
    half = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in proto.graph.input)
    del proto  # not held while ONNX Runtime builds its own copy
    model = ModelBytes(data)
    del data
    return session_from_bytes(path, model, half, providers, threads, provider=provider)


def session_from_bytes(
    path: str | os.PathLike,
    model: ModelBytes,
    half: bool,
    providers: list[str] | None = None,
    threads: int = 0,
    *,
    provider: str | None = None,
):
    """:func:`session` of a file's bytes already read and checked (``half``: its input is
    float16), so that the metadata, the checks and the session come from one read; closes
    ``model``."""
    try:
        return _session(path, model, half, providers, threads, provider=provider)
    finally:
        model.close()


def _session(path, model: ModelBytes, half: bool, providers, threads, *, provider):
    ort = require("onnxruntime", extra="export")

    if provider is not None and providers is not None:
        raise ValueError("give provider or providers, not both")
    available = ort.get_available_providers()
    requested = providers_for(provider) if provider is not None else providers
    if requested is None:
        requested = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    wanted = requested[0]
    if wanted in _GPU_HINT and wanted not in available:
        raise ProviderUnavailable(
            f"{path}: {wanted} is not available in this onnxruntime "
            f"({ort.__version__}, providers {available}); {_GPU_HINT[wanted]}"
        )
    if half and "CUDAExecutionProvider" not in requested:
        # ONNX Runtime 1.32's CPU provider crashes (segfault) building this float16 graph
        raise ProviderUnavailable(
            f"{path}: a float16 graph needs ONNX Runtime's CUDA execution provider "
            f"(provider 'cuda'; {_GPU_HINT['CUDAExecutionProvider']}); "
            f"available here: {available}"
        )
    options = ort.SessionOptions()
    # threads=0: ONNX Runtime's default, one intra-op thread per physical core. Measured on
    # the 2-core machine (float32 graph): 1 thread is a little faster at batch 1 (7.4 vs
    # 8.7 ms) and 1.7x slower at batch 32 (227 vs 135 ms), so the default stays.
    options.intra_op_num_threads = threads
    # FATAL only: ONNX Runtime's own coloured multi-line log of a failed run would come
    # before the one-line error that names the file (ERROR, level 3, still prints it)
    options.log_severity_level = 4
    # No spinning: ONNX Runtime's worker threads otherwise busy-wait after each call, on the
    # cores where torch computes the next file's features (a folder of short clips ran 3x
    # slower per file; docs/design.md#onnx-export)
    for key in SPIN_OPTIONS:
        options.add_session_config_entry(key, "0")
    try:
        sess = ort.InferenceSession(model.source, options, providers=requested)
    except Exception as err:
        raise OnnxError(f"{path}: ONNX Runtime cannot load it ({err})") from None
    if wanted in _GPU_HINT and wanted not in sess.get_providers():
        # onnxruntime-gpu falls back to the CPU, with a log line, when the provider's
        # libraries (CUDA, cuDNN, TensorRT) cannot be loaded
        raise ProviderUnavailable(
            f"{path}: ONNX Runtime could not start {wanted} (running on "
            f"{sess.get_providers()}); {_GPU_HINT[wanted]}"
        )
    return sess


def validate_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    *,
    providers: list[str] | None = None,
    seed: int | None = None,
    raise_on_failure: bool = True,
    audio: Iterable[str | os.PathLike] | None = None,
    speed: bool | None = None,
    speed_batch: int = 32,
) -> ValidationReport | Any:  # a waveform graph: .waveform.WaveformReport
    """Run ``path`` in ONNX Runtime and ``model`` in eager PyTorch on the same fresh random
    inputs (and, for int8 files or with ``audio``, on real features); return a
    :class:`ValidationReport`. A waveform-in graph is compared with the Python pipeline on
    recordings instead (:func:`.waveform.validate_waveform`, a ``WaveformReport``). A
    failure raises OnnxValidationError (unless
    ``raise_on_failure=False``)."""
    meta, model_bytes = read_checked_model(path)  # one read: the metadata and the session agree
    if meta["input"] in INPUT_KIND_MODULES:  # against the Python pipeline on recordings
        model_bytes.close()
        return INPUT_KIND_MODULES[meta["input"]].validate_waveform(
            path, model, providers=providers, audio=audio, raise_on_failure=raise_on_failure
        )
    try:
        sess = _validation_session(path, model, meta, model_bytes, providers)
    finally:
        model_bytes.close()
    if isinstance(sess, ValidationReport):  # skipped
        return sess
    cfg, dtype = meta["config"], meta["dtype"]
    quantization = meta["quantization"]
    report = ValidationReport(str(path), sess.get_providers(), dtype, TOLERANCE[dtype])
    report.quantization = quantization
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    )
    np_dtype = np.float16 if dtype == "float16" else np.float32
    was_training = model.training
    model.eval()
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, generator=gen)
            want = _eager(model, x)
            got = sess.run(None, {INPUT_NAME: x.numpy().astype(np_dtype)})[0].astype(np.float32)
            diff = float(np.abs(got - want).max())
            scale = max(float(np.abs(want).max()), 1e-12)
            report.results.append(BatchResult(batch, diff, diff / scale))
        if audio is not None or report.quantized:
            report.agreement = _agreement(sess, model, meta, audio or (), np_dtype)
        if speed or (speed is None and report.quantized):
            report.speed = _speed(sess, model, cfg, speed_batch, np_dtype)
    finally:
        model.train(was_training)
    if raise_on_failure and not report.passed:
        raise OnnxValidationError(str(report))
    return report


def _validation_session(path, model: nn.Module, meta: dict, model_bytes, providers):
    """The session :func:`validate_onnx` runs, or the report of a skipped validation."""
    cfg, dtype = meta["config"], meta["dtype"]
    if getattr(model, "config", None) != cfg:
        raise ValueError(f"{path}: the model's config differs from the one in the file")
    if dtype == "float16":
        ort = require("onnxruntime", extra="export")

        if "CUDAExecutionProvider" not in (providers or ort.get_available_providers()):
            report = ValidationReport(str(path), [], dtype, TOLERANCE[dtype])
            report.skipped = "float16 graphs need ONNX Runtime's CUDA execution provider"
            return report
    return session_from_bytes(path, model_bytes, dtype == "float16", providers)


def _eager(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    param = next(model.parameters())
    with torch.no_grad():
        return model(x.to(param.device, param.dtype)).float().cpu().numpy()


def audio_files(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Audio files from files, folders (all levels, links followed, each folder once:
    :func:`atfnn_fast.walk.find_files`; a folder not walked is a warning) and manifest
    CSVs."""
    from atfnn_fast.walk import find_files, warn_skipped

    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found, skipped = find_files(source, AUDIO_SUFFIXES)
            warn_skipped(skipped)
            if not found:
                raise FileNotFoundError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
            files += found
        elif source.suffix.lower() == ".csv":
            from atfnn_fast.manifest import read_manifest

            files += [Path(item.path) for item in read_manifest(source)]
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source}: audio file or folder not found")
    return files


def _agreement(sess, model, meta, audio, np_dtype) -> Agreement:
    from atfnn_fast.features import file_segments, speech_sample
    from atfnn_fast.inference import softmax

    cfg = meta["config"]
    hop = max(1, cfg.frames // 4)
    files = [speech_sample(), *audio_files(audio)]
    agree = segments = file_agree = 0
    max_diff = 0.0
    for file in files:
        x = file_segments(
            file,
            n_mels=cfg.n_mels,
            frames=cfg.frames,
            hop=hop,
            stats=meta["norm_stats"],
            features=meta["features"],
        )
        p_eager = softmax(_eager(model, x).astype(np.float64))
        p_onnx = softmax(
            sess.run(None, {INPUT_NAME: x.numpy().astype(np_dtype)})[0].astype(np.float64)
        )
        agree += int((p_eager.argmax(1) == p_onnx.argmax(1)).sum())
        segments += len(x)
        file_agree += int(p_eager.mean(0).argmax() == p_onnx.mean(0).argmax())
        max_diff = max(max_diff, float(np.abs(p_eager - p_onnx).max()))
    return Agreement(segments, len(files), agree / segments, file_agree / len(files), max_diff)


def _speed(sess, model, cfg, batch: int, np_dtype) -> Speed:
    eager = reference_copy(model)
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames)
    feed = {INPUT_NAME: x.numpy().astype(np_dtype)}

    def run_eager():
        with torch.inference_mode():
            eager(x)

    times = median_ms({"eager": run_eager, "onnx": lambda: sess.run(None, feed)})
    return Speed(batch, times["eager"], times["onnx"])


def median_ms(fns: dict, runs: int = 3, blocks: int = 3, pause: float = 0.05) -> dict[str, float]:
    """Median milliseconds per call of each function: ``blocks`` rounds in which every
    function gets a ``pause`` (seconds), one warm-up and ``runs`` timed calls in a row.

    The pause lets the previous function's worker threads go idle: ONNX Runtime's keep
    spinning for a while after a call, and on a 2-core machine they slowed whatever ran next
    (two ONNX Runtime sessions alternating at batch 1: 9.0 and 7.8 ms per call instead of
    4.9 and 3.7 ms alone)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            time.sleep(pause)
            fn()
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}
