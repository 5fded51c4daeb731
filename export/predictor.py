"""``OnnxPredictor``: labels and class scores from an exported file, in ONNX Runtime.

Features are computed outside the graph with the feature parameters and normalisation
statistics stored in the file's metadata (:mod:`atfnn_fast.features`); an utterance's
scores are the mean of its segments' softmax probabilities (SPEC section 5, (A)).
"""

from __future__ import annotations

import os

import numpy as np

from atfnn_fast.features import file_segments
from atfnn_fast.predict import Prediction, make_prediction

from .onnx_export import INPUT_NAME, read_metadata
from .validate import session


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxPredictor:
    """``OnnxPredictor("model.onnx").predict_file("a.wav")`` -> :class:`Prediction`."""

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        *,
        provider: str | None = None,
    ) -> None:
        meta = read_metadata(path)
        self.path = str(path)
        self.config = meta["config"]
        self.labels = meta["labels"] or [f"class_{i}" for i in range(self.config.num_classes)]
        self.norm_stats = meta["norm_stats"]
        self.features = meta["features"]
        self.dtype = np.float16 if meta["dtype"] == "float16" else np.float32
        # provider: "cpu", "cuda" or "tensorrt" (see export.validate.session)
        self.session = session(path, providers, provider=provider)

    def predict_spectrograms(self, x) -> np.ndarray:
        """Normalised segments ``(S, 1, F, T)`` or ``(S, F, T)`` -> probabilities ``(S, C)``."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[:, None]
        expected = (1, self.config.n_mels, self.config.frames)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"spectrograms must be (S, 1, {expected[1]}, {expected[2]}) or "
                f"(S, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise ValueError("spectrograms contain NaN or Inf values")
        logits = self.session.run(None, {INPUT_NAME: x.astype(self.dtype)})[0]
        return softmax(logits.astype(np.float64))

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """One audio file (any rate, any channels) -> label and per-class scores."""
        segs = file_segments(
            path, n_mels=self.config.n_mels, frames=self.config.frames,
            stats=self.norm_stats, features=self.features,
        )  # fmt: skip
        return make_prediction(path, self.labels, self.predict_spectrograms(segs.numpy()).mean(0))
