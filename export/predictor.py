"""``OnnxPredictor``: labels and class scores from an exported file, in ONNX Runtime.

Features are computed outside the graph with the feature parameters and normalisation
statistics stored in the file's metadata (:mod:`atfnn_fast.features`); an utterance's
scores are the mean of its segments' softmax probabilities (docs/design.md#choices-the-paper-leaves-open),
and :meth:`OnnxPredictor.timeline` gives those segments' scores one row each.

A waveform-in graph (``export --input waveform``, :mod:`.waveform`; told apart by the
metadata's ``atfnn.input``) gets the file's samples, resampled to the graph's rate, in one
call and returns the segment and file scores itself; the samples are in memory whole.

Memory stays flat in the file's length, as with :class:`atfnn_fast.predict.CheckpointPredictor`:
features in blocks, segments through the graph ``batch_size`` at a time (a graph exported
with a static batch gets exactly its batch size per call, the tail padded and dropped).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from atfnn_fast.features import load_audio
from atfnn_fast.inference import (
    DEFAULT_BATCH_SIZE,
    Prediction,
    TimelineRow,
    check_batch_size,
    check_finite_scores,
    check_smooth,
    make_prediction,
    mean_probabilities,
    segment_batches,
    segment_seconds,
    softmax,
    timeline_rows,
)

from . import waveform
from .onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxError,
    read_checked_model,
)
from .validate import session_from_bytes


class OnnxPredictor:
    """``OnnxPredictor("model.onnx").predict_file("a.wav")`` -> :class:`Prediction`."""

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        provider: str | None = None,
        threads: int = 0,
    ) -> None:
        # One read of the file: the metadata, its checks and the session all come from the
        # same bytes, so a file replaced meanwhile cannot pair one model's labels and
        # normalisation with another's graph (docs/design.md#onnx-export)
        check_batch_size(batch_size)
        meta, model_bytes = read_checked_model(path)  # checked against the graph; U8S8 warned
        self.path = str(path)
        self.config = meta["config"]
        self.labels = meta["labels"] or [f"class_{i}" for i in range(self.config.num_classes)]
        self.norm_stats = meta["norm_stats"]
        self.features = meta["features"]
        self.dtype = np.float16 if meta["dtype"] == "float16" else np.float32
        self.fixed_batch = meta["batch"]  # None: dynamic batch axis
        self.batch_size = meta["batch"] or batch_size
        # "spectrogram" or "waveform" (features inside the graph: export.waveform)
        self.input = meta["input"]
        if self.input == "waveform":
            self.batch_size = meta["segment_batch"]  # set in the graph at export
        # provider: "cpu", "cuda" or "tensorrt" (see export.validate.session); threads: ONNX
        # Runtime's intra-op threads (0: its default, one per physical core)
        self.session = session_from_bytes(
            path, model_bytes, meta["dtype"] == "float16", providers, threads, provider=provider
        )
        if self.input != "waveform":
            # the graph's real output, not only its declared one: one call of a batch of
            # zeros (2 segments, or the fixed batch), so a wrong graph fails here, not on
            # every file
            zeros = np.zeros((self.fixed_batch or 2, *self._segment_shape), self.dtype)
            try:
                self._logits(zeros)
            except OnnxError:
                raise
            except Exception as err:  # ONNX Runtime's own failure: one line naming the file
                from atfnn_fast.text import one_line

                raise OnnxError(
                    f"{path}: the graph fails on a batch of zeros ({one_line(err)})"
                ) from None

    @property
    def _segment_shape(self) -> tuple[int, int, int]:
        return (1, self.config.n_mels, self.config.frames)

    def _logits(self, chunk: np.ndarray) -> np.ndarray:
        """The graph's logits of ``chunk``, checked to be ``(len(chunk), num_classes)``."""
        logits = self.session.run(None, {INPUT_NAME: chunk})[0]
        want = (chunk.shape[0], self.config.num_classes)
        if logits.shape != want:  # the declared shape was checked; this is the real one
            raise OnnxError(
                f"{self.path}: graph output {OUTPUT_NAME!r} has shape {logits.shape} for "
                f"a batch of {chunk.shape[0]}, expected {want} (batch, num_classes)"
            )
        return logits

    def predict_spectrograms(self, x) -> np.ndarray:
        """Normalised segments ``(S, 1, F, T)`` or ``(S, F, T)`` -> probabilities ``(S, C)``."""
        if self.input == "waveform":
            raise ValueError(
                f"{self.path} is a waveform-in graph (features inside it): use "
                "predict_waveform or predict_file"
            )
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[:, None]
        expected = self._segment_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"spectrograms must be (S, 1, {expected[1]}, {expected[2]}) or "
                f"(S, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise ValueError("spectrograms contain NaN or Inf values")
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size].astype(self.dtype)
            n = chunk.shape[0]
            if self.fixed_batch is not None and n < self.fixed_batch:
                chunk = np.concatenate(
                    [chunk, np.zeros_like(chunk[:1]).repeat(self.fixed_batch - n, 0)]
                )
            logits = self._logits(chunk)[:n]
            check_finite_scores(logits)
            out.append(softmax(logits.astype(np.float64)))
        return np.concatenate(out) if out else np.zeros((0, self.config.num_classes))

    def predict_waveform(self, wave) -> tuple[np.ndarray, np.ndarray]:
        """A waveform graph on mono samples ``(samples,)`` or ``(1, samples)`` at the graph's
        ``sample_rate`` (features inside the graph) -> ``(segment probabilities (S, C),
        file scores (C,))``."""
        if self.input != "waveform":
            raise ValueError(
                f"{self.path} takes spectrograms: use predict_spectrograms or predict_file"
            )
        segments, scores = waveform.run(self.session, wave)
        check_finite_scores(segments)
        check_finite_scores(scores[None])
        return segments, scores

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """One audio file (any rate, any channels) -> label and per-class scores."""
        if self.input == "waveform":  # resampled here, then the whole file into the graph
            wave = load_audio(path, self.features.sample_rate)
            waveform.check_length(path, wave, self.config.n_mels, self.features)
            return make_prediction(path, self.labels, self.predict_waveform(wave.numpy())[1])
        batches = segment_batches(self, path)
        probs = mean_probabilities(batches, lambda b: self.predict_spectrograms(b.numpy()))
        return make_prediction(path, self.labels, probs)

    def timeline(self, path: str | os.PathLike, smooth: int = 1) -> Iterator[TimelineRow]:
        """The file's :class:`~atfnn_fast.inference.TimelineRow` per segment, streamed in
        bounded memory (:func:`atfnn_fast.inference.timeline_rows`); ``smooth`` (odd)
        averages each row with its neighbours. The mean of the unsmoothed rows' scores is
        :meth:`predict_file`'s."""
        smooth = check_smooth(smooth)
        batches = segment_batches(self, path)
        seconds = segment_seconds(self.config, self.features)
        return timeline_rows(
            path,
            self.labels,
            batches,
            lambda b: self.predict_spectrograms(b.numpy()),
            seconds,
            smooth,
        )
