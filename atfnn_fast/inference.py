"""Utterance predictions: label and per-class scores, the scores being the mean of the
segments' softmax probabilities (docs/design.md#choices-the-paper-leaves-open).
:class:`CheckpointPredictor` runs a PyTorch checkpoint; its ONNX twin
:class:`atfnn_fast.export.OnnxPredictor` takes the same path (features ->
segments -> :func:`mean_probabilities` -> :func:`make_prediction`) from this module.

Memory stays flat in the file's length: the audio is read and turned into features in
blocks (:func:`atfnn_fast.features.iter_segment_batches`) and the segments go through the
model ``batch_size`` at a time (default :data:`DEFAULT_BATCH_SIZE`); the probabilities are
summed in float64 as the batches finish.

The same path gives a file's timeline (:meth:`CheckpointPredictor.timeline`,
:func:`timeline_rows`): one :class:`TimelineRow` per segment, in order, as the batches
finish; the file's scores are the mean of the rows' (unsmoothed) scores.

A NaN never passes as a result: probabilities that are not finite (a model whose weights
are finite but whose outputs overflow) raise :class:`NonFiniteOutput`, which ``predict``
reports as that file's error.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .errors import resolve_device
from .features import FeatureConfig, audio_seconds, iter_segment_batches

DEFAULT_BATCH_SIZE = 64  # segments per forward pass of `predict` (our choice)
MAX_BATCH_SIZE = 4096  # also the dynamic batch range of exported ONNX graphs
DEFAULT_DEVICE = "cpu"  # of CheckpointPredictor (`atfnn-fast predict --device`: auto)
MAX_SMOOTH = 999  # the widest smoothing window of a timeline, in segments (our choice)


def segment_batches(predictor, path: str | os.PathLike):
    """A file's normalised segments in batches, as ``predictor`` (a checkpoint or ONNX
    predictor: its ``config``, ``norm_stats``, ``features`` and ``batch_size``) scores them:
    :func:`atfnn_fast.features.iter_segment_batches`."""
    return iter_segment_batches(
        path,
        n_mels=predictor.config.n_mels,
        frames=predictor.config.frames,
        stats=predictor.norm_stats,
        features=predictor.features,
        batch_size=predictor.batch_size,
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of numpy logits (the ONNX predictor's and the validation's)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Prediction:
    file: str
    label: str
    scores: dict[str, float]

    def to_dict(self) -> dict:
        """``path`` (the key error entries use too), ``label``, ``scores``."""
        return {"path": self.file, "label": self.label, "scores": self.scores}

    def __str__(self) -> str:
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        return f"{self.file}: {self.label} (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")"


class NonFiniteOutput(ValueError):
    """The model's outputs for an input are NaN or Inf."""


def check_finite_scores(scores) -> None:
    """Refuse model outputs ``(b, C)`` (logits or probabilities, numpy or torch) that are not
    all finite with a :class:`NonFiniteOutput` counting the segments."""
    scores = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores
    finite = np.isfinite(np.asarray(scores))
    if not finite.all():
        bad = int((~finite).reshape(finite.shape[0], -1).any(axis=-1).sum())
        raise NonFiniteOutput(
            f"the model's scores are not finite (NaN or Inf) for {bad} of "
            f"{finite.shape[0]} segments; the model is broken (diverged training?)"
        )


def softmax_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax of model logits ``(b, C)`` as float64 numpy, after :func:`check_finite_scores`
    of the logits themselves (a -inf logit would otherwise pass as a probability of 0)."""
    check_finite_scores(logits)
    return logits.double().softmax(-1).cpu().numpy()


def make_prediction(path, labels: list[str], probs) -> Prediction:
    """Mean segment probabilities ``probs (C,)`` -> :class:`Prediction`."""
    probs = [float(p) for p in probs]
    best = max(range(len(probs)), key=probs.__getitem__)
    return Prediction(str(path), labels[best], dict(zip(labels, probs, strict=True)))


@dataclass
class TimelineRow:
    """One segment of a file's timeline: its index, where it lies in the file (seconds),
    its top label and each class's score (the segment's softmax probabilities, or their
    moving average when the timeline is smoothed)."""

    file: str
    segment: int
    start: float
    end: float
    label: str
    scores: dict[str, float]

    def to_dict(self) -> dict:
        """``path``, ``segment``, ``start``, ``end`` (seconds), ``label``, ``scores``."""
        return {
            "path": self.file,
            "segment": self.segment,
            "start": self.start,
            "end": self.end,
            "label": self.label,
            "scores": self.scores,
        }

    def __str__(self) -> str:
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        scores = ", ".join(f"{k} {v:.3f}" for k, v in ranked)
        return f"{self.file} [{self.start:.2f}-{self.end:.2f} s]: {self.label} ({scores})"


def segment_seconds(config, features: FeatureConfig | None) -> float:
    """Seconds of audio in one scoring segment: ``frames * hop_length / sample_rate``
    (1.28 s for the paper's 128 frames of 10 ms)."""
    features = features or FeatureConfig()
    return config.frames * features.hop_length / features.sample_rate


def check_smooth(smooth: int) -> int:
    """A timeline's smoothing window: an odd int in 1..:data:`MAX_SMOOTH` segments (1: off),
    centred on the segment it belongs to."""
    if (
        isinstance(smooth, bool)
        or not isinstance(smooth, int)
        or not 1 <= smooth <= MAX_SMOOTH
        or smooth % 2 == 0
    ):
        raise ValueError(
            f"smooth must be an odd int in 1..{MAX_SMOOTH} (segments; 1 = off), got {smooth!r}"
        )
    return smooth


def smooth_probabilities(rows: Iterable[np.ndarray], window: int = 1) -> Iterator[np.ndarray]:
    """The centred moving average of ``window`` (odd) consecutive probability rows ``(C,)``,
    streamed: row i is the mean of rows ``i - h .. i + h`` (``h = window // 2``) that
    exist, so the first and last ``h`` rows average fewer. Holds at most ``window`` rows."""
    window = check_smooth(window)
    if window == 1:
        yield from rows
        return
    half = window // 2
    held: deque[np.ndarray] = deque()  # the rows from index `first` on
    first = given = 0

    def average(i: int) -> np.ndarray:
        nonlocal first
        while first < i - half:
            held.popleft()
            first += 1
        return np.mean(np.stack([held[k] for k in range(min(len(held), i + half + 1 - first))]), 0)

    count = 0
    for row in rows:
        held.append(np.asarray(row, dtype=np.float64))
        count += 1
        if count - 1 - half >= 0:  # row count-1-h has its h rows after it
            yield average(given)
            given += 1
    while given < count:  # the last h rows: fewer rows after them
        yield average(given)
        given += 1


def timeline_rows(
    path,
    labels: list[str],
    batches: Iterable[torch.Tensor],
    probabilities: Callable[[torch.Tensor], np.ndarray],
    seconds: float,
    smooth: int = 1,
) -> Iterator[TimelineRow]:
    """The timeline of the file ``path`` whose segments come in ``batches``: a
    :class:`TimelineRow` per segment, yielded as its batch finishes (smoothing waits for
    ``smooth // 2`` more segments). Segment i covers ``[i * seconds, (i + 1) * seconds)``,
    the last one ending with the audio (its length from the file's header,
    :func:`atfnn_fast.features.audio_seconds`). Scores that are not finite raise
    :class:`NonFiniteOutput` when their batch is reached (the rows before it were given)."""
    smooth = check_smooth(smooth)

    def raw():
        for batch in batches:
            probs = np.asarray(probabilities(batch), dtype=np.float64)
            check_finite_scores(probs)
            yield from probs

    rows = smooth_probabilities(raw(), smooth)
    duration = None
    for i, probs in enumerate(rows):
        if duration is None:  # after the first batch: the file was opened and checked
            duration = audio_seconds(path)
        best = int(np.argmax(probs))
        yield TimelineRow(
            str(path),
            i,
            round(i * seconds, 6),
            round(min((i + 1) * seconds, max(duration, i * seconds)), 6),
            labels[best],
            dict(zip(labels, (float(p) for p in probs), strict=True)),
        )


def check_batch_size(batch_size: int) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise ValueError(f"batch_size must be an int in 1..{MAX_BATCH_SIZE}, got {batch_size!r}")
    return batch_size


def mean_probabilities(
    batches: Iterable[torch.Tensor], probabilities: Callable[[torch.Tensor], np.ndarray]
) -> np.ndarray:
    """Mean over all segments of ``probabilities(batch)`` (``(b, C)`` per batch), summed in
    float64 batch by batch so no more than one batch is held. Scores that are not finite
    raise :class:`NonFiniteOutput`."""
    total, count = None, 0
    for batch in batches:
        probs = np.asarray(probabilities(batch), dtype=np.float64)
        check_finite_scores(probs)
        total = probs.sum(0) if total is None else total + probs.sum(0)
        count += probs.shape[0]
    if not count:
        raise ValueError("no segments to predict from")
    return total / count


def available_memory(device: torch.device) -> int | None:
    """Bytes free for one batch on ``device``: CUDA's free memory, or the CPU's
    ``MemAvailable`` (Linux); None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def segment_bytes(config) -> int:
    """An estimate of the memory one segment takes in a forward pass of ``config``'s model:
    the F-Encoder's attention scores (``frames * heads * n_mels**2``), its token and FFN
    activations (``frames * n_mels * (2 * channels + ffn_channels)``) and the LSTM's
    (``frames * (n_mels * channels + 8 * lstm_hidden)``), in float32. It is above what was
    measured on the CPU (paper size: 8.9 MiB estimated, 6 MiB measured peak per segment)."""
    t, f, c = config.frames, config.n_mels, config.channels
    elements = t * config.num_heads * f * f + t * f * (2 * c + config.ffn_channels)
    elements += t * (f * c + 8 * config.lstm_hidden)
    return 4 * elements


def check_batch_memory(batch_size: int, config, device: torch.device) -> None:
    """Refuse a batch whose estimated memory (:func:`segment_bytes`) is over half of what
    ``device`` has available, in one line that says the largest batch that fits."""
    free = available_memory(device)
    if free is None:
        return
    per = segment_bytes(config)
    limit = max(1, free // 2 // per)
    if batch_size > limit:
        from .errors import UsageError

        raise UsageError(
            f"--batch-size {batch_size}: one batch would need about "
            f"{batch_size * per / 2**30:.1f} GiB ({per / 2**20:.1f} MiB per segment of this "
            f"model), over half of the {free / 2**30:.1f} GiB available on {device}; use "
            f"--batch-size {limit} or less"
        )


class CheckpointPredictor:
    """``CheckpointPredictor("ckpt/").predict_file("a.wav")`` -> :class:`Prediction`."""

    def __init__(
        self,
        directory: str | os.PathLike,
        device: str = DEFAULT_DEVICE,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = check_batch_size(batch_size)
        self.directory = str(directory)
        ckpt = load_checkpoint(directory, map_location=self.device)
        self.model = ckpt.model.eval()
        self.config = ckpt.config
        self.labels = ckpt.labels or [f"class_{i}" for i in range(ckpt.config.num_classes)]
        self.norm_stats = ckpt.norm_stats
        self.features = ckpt.features
        check_batch_memory(self.batch_size, self.config, self.device)

    def _probabilities(self, segs: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return softmax_probabilities(self.model(segs.to(self.device)).float())

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        batches = segment_batches(self, path)
        return make_prediction(path, self.labels, mean_probabilities(batches, self._probabilities))

    def timeline(self, path: str | os.PathLike, smooth: int = 1) -> Iterator[TimelineRow]:
        """The file's :class:`TimelineRow` per segment, streamed in bounded memory
        (:func:`timeline_rows`); ``smooth`` (odd) averages each row with its neighbours.
        The mean of the unsmoothed rows' scores is :meth:`predict_file`'s."""
        smooth = check_smooth(smooth)
        batches = segment_batches(self, path)
        seconds = segment_seconds(self.config, self.features)
        return timeline_rows(path, self.labels, batches, self._probabilities, seconds, smooth)
