"""Scoring a model on labelled utterances: WAR, UAR, per-class recall and the confusion
matrix (:mod:`atfnn_fast.app.metrics`). Each utterance is labelled as
:class:`atfnn_fast.inference.CheckpointPredictor` labels a file: the mean of its
non-overlapping segments' softmax probabilities (docs/design.md#choices-the-paper-leaves-open).
``atfnn-fast evaluate`` runs :func:`evaluate`; training scores its validation and test
utterances with :func:`evaluate_items`.
"""

from __future__ import annotations

import json

import torch

from atfnn_fast.app.datasets import FeatureCache, cache_folder
from atfnn_fast.app.metrics import plot_confusion, summarize
from atfnn_fast.checkpoint import load_checkpoint
from atfnn_fast.config import ATFNNConfig
from atfnn_fast.errors import resolve_device
from atfnn_fast.features import FeatureConfig, NormStats, min_tail_frames, segment
from atfnn_fast.files import check_output, write_atomic
from atfnn_fast.inference import NonFiniteOutput, mean_probabilities, softmax_probabilities
from atfnn_fast.manifest import Item, read_manifest


@torch.no_grad()
def predict_items(
    model,
    items: list[Item],
    mels: dict,
    stats: NormStats,
    cfg: ATFNNConfig,
    feats: FeatureConfig,
    device: torch.device,
) -> list[int]:
    """The predicted class index of each utterance (its log-Mel matrix in ``mels``); scores
    that are not finite raise :class:`~atfnn_fast.inference.NonFiniteOutput` naming the
    utterance."""
    model.eval()

    def probabilities(segs: torch.Tensor):
        return softmax_probabilities(model(segs.to(device)).float())

    preds = []
    for item in items:
        segs = segment(
            mels[item.path],
            cfg.frames,
            cfg.frames,
            feats.silence_value,
            min_tail=min_tail_frames(cfg.frames),
        )
        try:
            probs = mean_probabilities([stats.apply(segs).unsqueeze(1)], probabilities)
        except NonFiniteOutput as err:
            raise NonFiniteOutput(f"{item.path}: {err}") from None
        preds.append(int(probs.argmax()))
    return preds


def evaluate_items(model, items, mels, stats, cfg, feats, labels, device) -> dict:
    """:func:`atfnn_fast.app.metrics.summarize` of the predictions of ``items``."""
    index = {label: k for k, label in enumerate(labels)}
    pred = predict_items(model, items, mels, stats, cfg, feats, device)
    return summarize([index[i.label] for i in items], pred, labels)


def evaluate(checkpoint, manifest, out=None, device: str = "cpu", cache=None) -> dict:
    """Metrics of a checkpoint on every utterance of a manifest; with ``out``, also
    ``out/metrics.json`` and ``out/confusion.png``."""
    device = resolve_device(device)
    if out is not None:  # before any work: the metrics are not computed only to be lost
        out = check_output(out, inputs=(checkpoint,), option="--out", directory=True)
        for name in ("metrics.json", "confusion.png"):
            check_output(out / name, inputs=(checkpoint,), option="--out")
    ckpt = load_checkpoint(checkpoint, map_location=device)
    if ckpt.norm_stats is None:
        raise ValueError(f"{checkpoint}: has no normalisation statistics")
    items = read_manifest(manifest)
    labels = ckpt.labels or [f"class_{i}" for i in range(ckpt.config.num_classes)]
    unknown = sorted({i.label for i in items} - set(labels))
    if unknown:
        raise ValueError(f"{manifest}: labels {unknown} are not among the model's {labels}")
    cache = FeatureCache(cache_folder(manifest, cache), ckpt.config.n_mels, ckpt.features)
    mels = cache.warm(items)
    try:
        metrics = evaluate_items(
            ckpt.model, items, mels, ckpt.norm_stats, ckpt.config, ckpt.features, labels, device
        )
    except NonFiniteOutput as err:
        raise NonFiniteOutput(f"{checkpoint}: {err}") from None
    if out is not None:
        write_atomic(
            out / "metrics.json", (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode()
        )
        plot_confusion(metrics, out / "confusion.png")
    return metrics
