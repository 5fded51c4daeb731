"""Utterance predictions with a PyTorch checkpoint (the ONNX twin is
:class:`atfnn_fast.export.OnnxPredictor`): label and per-class scores, the scores being the
mean of the segments' softmax probabilities
(docs/design.md#choices-the-paper-leaves-open)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .checkpoint import load_checkpoint
from .features import file_segments


@dataclass
class Prediction:
    file: str
    label: str
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return {"file": self.file, "label": self.label, "scores": self.scores}

    def __str__(self) -> str:
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        return f"{self.file}: {self.label} (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")"


def make_prediction(path, labels: list[str], probs) -> Prediction:
    """Mean segment probabilities ``probs (C,)`` -> :class:`Prediction`."""
    probs = [float(p) for p in probs]
    best = max(range(len(probs)), key=probs.__getitem__)
    return Prediction(str(path), labels[best], dict(zip(labels, probs, strict=True)))


class CheckpointPredictor:
    """``CheckpointPredictor("ckpt/").predict_file("a.wav")`` -> :class:`Prediction`."""

    def __init__(self, directory: str | os.PathLike, device: str = "cpu") -> None:
        ckpt = load_checkpoint(directory, map_location=device)
        self.model = ckpt.model.eval()
        self.config = ckpt.config
        self.labels = ckpt.labels or [f"class_{i}" for i in range(ckpt.config.num_classes)]
        self.norm_stats = ckpt.norm_stats
        self.features = ckpt.features
        self.device = device

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        segs = file_segments(
            path, n_mels=self.config.n_mels, frames=self.config.frames,
            stats=self.norm_stats, features=self.features,
        )  # fmt: skip
        with torch.inference_mode():
            probs = self.model(segs.to(self.device)).softmax(-1).mean(0)
        return make_prediction(path, self.labels, probs.cpu())
