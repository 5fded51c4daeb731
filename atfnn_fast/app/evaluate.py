"""Scoring a model on labelled utterances: WAR, UAR, per-class recall and the confusion
matrix (:mod:`atfnn_fast.app.metrics`). Each utterance is labelled as
:class:`atfnn_fast.inference.CheckpointPredictor` labels a file: the mean of its
non-overlapping segments' softmax probabilities (docs/design.md#choices-the-paper-leaves-open).
``atfnn-fast evaluate`` runs :func:`evaluate`; training scores its validation and test
utterances with :func:`evaluate_items`.

Which utterances :func:`evaluate` scores: a checkpoint written by ``train`` records its fold,
protocol and the speakers of its train / validation / test splits (its ``extra``), and is
scored on that held-out fold of the manifest by default; ``fold`` names another speaker
(loso) or session, or ``"all"`` the whole manifest. A checkpoint without that record is
scored on the whole manifest. Scoring utterances of speakers the checkpoint was trained or
validated on raises an :class:`EvaluationWarning` (the number would overstate accuracy on
new speakers).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from atfnn_fast.app.datasets import FeatureCache, cache_folder
from atfnn_fast.app.metrics import plot_confusion, summarize
from atfnn_fast.app.plotting import check_plotting
from atfnn_fast.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint
from atfnn_fast.config import ATFNNConfig
from atfnn_fast.errors import RunError, UsageError, resolve_device
from atfnn_fast.features import FeatureConfig, NormStats, min_tail_frames, segment
from atfnn_fast.files import check_output, write_atomic
from atfnn_fast.inference import (
    DEFAULT_BATCH_SIZE,
    NonFiniteOutput,
    check_batch_size,
    mean_probabilities,
    softmax_probabilities,
)
from atfnn_fast.manifest import Item, missing_files, read_manifest

# the speaker protocols of a run (train.py splits by them; a run record names its own)
PROTOCOLS = ("loso", "session")


@torch.no_grad()
def item_probabilities(
    model,
    items: list[Item],
    mels: dict,
    stats: NormStats,
    cfg: ATFNNConfig,
    feats: FeatureConfig,
    device: torch.device,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[np.ndarray]:
    """The mean segment probabilities ``(C,)`` of each utterance (its log-Mel matrix in
    ``mels``), computed ``batch_size`` segments per forward pass as ``predict`` does, so
    memory is bounded by the batch, not by the recording; scores that are not finite raise
    :class:`~atfnn_fast.inference.NonFiniteOutput` naming the utterance."""
    check_batch_size(batch_size)
    model.eval()

    def probabilities(segs: torch.Tensor):
        return softmax_probabilities(model(segs.to(device)).float())

    out = []
    for item in items:
        segs = segment(
            mels[item.path],
            cfg.frames,
            cfg.frames,
            feats.silence_value,
            min_tail=min_tail_frames(cfg.frames),
        )
        batches = (
            stats.apply(segs[start : start + batch_size]).unsqueeze(1)
            for start in range(0, segs.shape[0], batch_size)
        )
        try:
            out.append(mean_probabilities(batches, probabilities))
        except NonFiniteOutput as err:
            raise NonFiniteOutput(f"{item.path}: {err}") from None
    return out


def predict_items(
    model, items, mels, stats, cfg, feats, device, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[int]:
    """The predicted class index of each utterance (:func:`item_probabilities`)."""
    probs = item_probabilities(model, items, mels, stats, cfg, feats, device, batch_size)
    return [int(p.argmax()) for p in probs]


def evaluate_items(
    model, items, mels, stats, cfg, feats, labels, device, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict:
    """:func:`atfnn_fast.app.metrics.summarize` of the predictions of ``items``."""
    index = {label: k for k, label in enumerate(labels)}
    pred = predict_items(model, items, mels, stats, cfg, feats, device, batch_size)
    return summarize([index[i.label] for i in items], pred, labels)


def check_run_record(checkpoint, extra: dict) -> dict:
    """``extra`` (a checkpoint's record of its run, written by ``train``), whose fields
    :func:`evaluate` uses, checked: ``fold`` a name, ``protocol`` one of ``train``'s, and
    ``speakers`` an object of name lists. A field of another type is a one-line
    :class:`~atfnn_fast.checkpoint.CheckpointError` naming the file and the field."""

    def refuse(name: str, expected: str, value) -> CheckpointError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return CheckpointError(
            f"{Path(checkpoint) / CONFIG_FILE}: field 'extra.{name}': expected {expected}, "
            f"got {shown}"
        )

    fold = extra.get("fold")
    if fold is not None and not (isinstance(fold, str) and fold):
        raise refuse("fold", "a speaker or session name", fold)
    if extra.get("protocol", "loso") not in PROTOCOLS:
        raise refuse("protocol", f"one of {list(PROTOCOLS)}", extra.get("protocol"))
    speakers = extra.get("speakers")
    if speakers is not None and not (
        isinstance(speakers, dict)
        and all(
            isinstance(names, list) and all(isinstance(n, str) for n in names)
            for names in speakers.values()
        )
    ):
        raise refuse("speakers", "lists of speaker names by split", speakers)
    return extra


class EvaluationWarning(UserWarning):
    """Utterances of speakers the checkpoint was trained or validated on are being scored."""


def select_fold(ckpt_extra: dict, items: list[Item], fold: str | None, manifest) -> tuple:
    """(fold name or ``"all"``, the items to score) for :func:`evaluate`'s ``fold``."""
    protocol = ckpt_extra.get("protocol", "loso")
    if fold is None:
        fold = ckpt_extra.get("fold") or "all"
    if fold == "all":
        return fold, items
    key = (lambda i: i.speaker) if protocol != "session" else (lambda i: i.session)
    chosen = [i for i in items if key(i) == fold]
    if not chosen:
        names = sorted({key(i) for i in items})
        unit = "session" if protocol == "session" else "speaker"
        raise UsageError(
            f"{manifest}: no utterances of {unit} {fold!r} (the manifest has {names}); "
            "give --fold with one of them or all"
        )
    return fold, chosen


def seen_speakers(ckpt_extra: dict, items: list[Item]) -> tuple[set[str], bool]:
    """(the speakers a checkpoint was trained or validated on, whether that is recorded in
    the checkpoint rather than inferred from its fold and this manifest)."""
    speakers = ckpt_extra.get("speakers")
    if isinstance(speakers, dict):
        return set(speakers.get("train", [])) | set(speakers.get("validation", [])), True
    fold = ckpt_extra.get("fold")
    if not fold:
        return set(), False
    key = (
        (lambda i: i.session) if ckpt_extra.get("protocol") == "session" else (lambda i: i.speaker)
    )
    return {i.speaker for i in items if key(i) != fold}, False


def evaluate(
    checkpoint,
    manifest,
    out=None,
    device: str = "auto",
    cache=None,
    fold: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Metrics of a checkpoint on a manifest: its held-out fold by default, ``fold`` (a
    speaker or session, or ``"all"``) otherwise; with ``out``, also ``out/metrics.json`` and
    ``out/confusion.png``. The metrics add ``fold`` and ``seen_utterances`` (how many of the
    scored utterances come from speakers the checkpoint trained or validated on). Each
    utterance's segments go through the model ``batch_size`` at a time."""
    check_batch_size(batch_size)
    device = resolve_device(device)
    if out is not None:  # before any work: the metrics are not computed only to be lost
        check_plotting()
        out = check_output(out, inputs=(checkpoint,), option="--out", directory=True)
        for name in ("metrics.json", "confusion.png"):
            check_output(out / name, inputs=(checkpoint,), option="--out")
    ckpt = load_checkpoint(checkpoint, map_location=device)
    check_run_record(checkpoint, ckpt.extra)
    if ckpt.norm_stats is None:
        raise ValueError(f"{checkpoint}: has no normalisation statistics")
    all_items = read_manifest(manifest)
    fold, items = select_fold(ckpt.extra, all_items, fold, manifest)
    problem = missing_files(items)  # all of them, before any feature is computed
    if problem:
        raise RunError(f"{manifest}: {problem}")
    labels = ckpt.labels or [f"class_{i}" for i in range(ckpt.config.num_classes)]
    unknown = sorted({i.label for i in items} - set(labels))
    if unknown:
        raise ValueError(f"{manifest}: labels {unknown} are not among the model's {labels}")
    seen, recorded = seen_speakers(ckpt.extra, all_items)
    overlap = [i for i in items if i.speaker in seen]
    if overlap:
        names = sorted({i.speaker for i in overlap})
        held_out = ckpt.extra.get("fold")
        warnings.warn(
            f"{manifest}: {len(overlap)} of {len(items)} utterances are from speakers "
            f"{checkpoint} was trained or validated on ({', '.join(names[:6])}"
            f"{', ...' if len(names) > 6 else ''}{'' if recorded else ', inferred from its fold'}"
            f"); their scores overstate accuracy on new speakers"
            + (f" (its held-out fold: --fold {held_out})" if held_out else ""),
            EvaluationWarning,
            stacklevel=2,
        )
    cache = FeatureCache(cache_folder(manifest, cache), ckpt.config.n_mels, ckpt.features)
    mels = cache.warm(items)
    try:
        metrics = evaluate_items(
            ckpt.model,
            items,
            mels,
            ckpt.norm_stats,
            ckpt.config,
            ckpt.features,
            labels,
            device,
            batch_size,
        )
    except NonFiniteOutput as err:
        raise NonFiniteOutput(f"{checkpoint}: {err}") from None
    metrics.update(fold=fold, seen_utterances=len(overlap))
    if out is not None:
        write_atomic(
            out / "metrics.json", (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode()
        )
        plot_confusion(metrics, out / "confusion.png")
    return metrics
