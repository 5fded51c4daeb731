"""Training and evaluation with speaker- or session-independent folds
(docs/design.md#features-and-data).

``atfnn-fast train`` runs :func:`train_fold` for one fold or all of them. Per fold:

* test = one speaker (``loso``) or one session (``session``); validation = a share of the
  remaining speakers (``val_fraction``, at least one, chosen with the seed);
* normalisation statistics from the training utterances only; training segments of
  ``frames`` frames every ``hop`` frames; validation and test score whole utterances (mean of
  segment probabilities);
* Adam (lr 5e-4, batch 128 as in the paper), cross-entropy; the best epoch by validation
  UAR is kept as ``<out>/<fold>/best`` (a checkpoint directory, written atomically);
* ``log.jsonl`` gets one JSON line per epoch; ``metrics.json`` the test WAR, UAR, per-class
  recall and confusion matrix of the best checkpoint, ``confusion.png`` its plot;
* resuming: after every epoch ``<out>/<fold>/last`` (checkpoint) and ``state.json`` +
  ``optimizer.pt`` (tensors only, loaded with ``weights_only=True``) are written; the data
  order and dropout of epoch e are seeded from (seed, e), so ``resume`` continues exactly
  where the last finished epoch left off (epoch granularity).

The validation split and the epoch granularity of resuming are our choices:
docs/design.md#choices-the-paper-leaves-open.

Multi-GPU (or multi-process CPU) with ``torchrun``: each process takes every
``world_size``-th segment of every batch of the epoch's shuffled order (the global batch stays
``batch_size``), gradients are averaged by DistributedDataParallel, and rank 0 alone
evaluates and writes.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ._deps import require
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ATFNNConfig
from .data import FeatureCache, Item, labels_of, read_manifest
from .features import FeatureConfig, NormStats, segment
from .metrics import plot_confusion, summarize
from .model import ATFNN

PRESETS = {
    "paper": {},
    # small enough to train in seconds on a CPU; same architecture, narrower
    "tiny": dict(
        frames=64,
        channels=4,
        num_heads=2,
        ffn_channels=8,
        lstm_hidden=32,
        lstm_layers=1,
        dropout=0.1,
    ),
}


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-4
    hop: int = 64
    val_fraction: float = 0.2
    seed: int = 0
    preset: str = "paper"
    device: str = "auto"
    amp: str = "off"  # off | bf16 | fp16 (CUDA)
    progress: bool = True


# ------------------------------------------------------------------------------ folds
def folds(items: list[Item], protocol: str) -> list[str]:
    if protocol == "loso":
        return sorted({i.speaker for i in items})
    if protocol == "session":
        sessions = sorted({i.session for i in items})
        if sessions == [""]:
            raise ValueError("protocol 'session' needs a session column in the manifest")
        return sessions
    raise ValueError(f"protocol must be 'loso' or 'session', got {protocol!r}")


def split(items: list[Item], protocol: str, fold: str, val_fraction: float, seed: int):
    """(train, val, test) items of one fold; validation speakers drawn from training ones."""
    key = (lambda i: i.speaker) if protocol == "loso" else (lambda i: i.session)
    test = [i for i in items if key(i) == fold]
    if not test:
        raise ValueError(f"fold {fold!r} has no utterances (folds: {folds(items, protocol)})")
    rest = [i for i in items if key(i) != fold]
    speakers = sorted({i.speaker for i in rest})
    if len(speakers) < 2:
        raise ValueError(f"fold {fold!r}: need >= 2 training speakers for a validation split")
    n_val = max(1, round(val_fraction * len(speakers)))
    val_speakers = set(random.Random(seed).sample(speakers, n_val))
    train = [i for i in rest if i.speaker not in val_speakers]
    val = [i for i in rest if i.speaker in val_speakers]
    return train, val, test


# ------------------------------------------------------------------------ the training
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _segments(lm: torch.Tensor, cfg: ATFNNConfig, hop: int, feats: FeatureConfig):
    return segment(lm, cfg.frames, hop, feats.silence_value)


@torch.no_grad()
def predict_items(model, items, mels, stats, cfg, feats, device) -> list[int]:
    """Utterance-level predictions: mean of segment probabilities (non-overlapping)."""
    model.eval()
    preds = []
    for item in items:
        segs = stats.apply(_segments(mels[item.path], cfg, cfg.frames, feats)).unsqueeze(1)
        probs = model(segs.to(device)).float().softmax(-1).mean(0)
        preds.append(int(probs.argmax()))
    return preds


def evaluate_items(model, items, mels, stats, cfg, feats, labels, device) -> dict:
    index = {label: k for k, label in enumerate(labels)}
    pred = predict_items(model, items, mels, stats, cfg, feats, device)
    return summarize([index[i.label] for i in items], pred, labels)


def _dist():
    """(rank, world_size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _say(rank: int, *args) -> None:
    if rank == 0:
        print(*args, flush=True)


def train_fold(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    fold: str,
    protocol: str = "loso",
    tc: TrainConfig | None = None,
    resume: bool = False,
    cache: str | os.PathLike | None = None,
) -> dict:
    """Train and test one fold; returns its metrics (rank 0) and writes everything under
    ``out/<fold>``."""
    tc = tc or TrainConfig()
    rank, world = _dist()
    items = read_manifest(manifest)
    labels = labels_of(items)
    cfg = ATFNNConfig(num_classes=len(labels), **PRESETS[tc.preset])
    feats = FeatureConfig()
    train, val, test = split(items, protocol, fold, tc.val_fraction, tc.seed)
    folder = Path(out) / fold
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(
        cache or Path(manifest).resolve().parent / ".atfnn-cache", cfg.n_mels, feats
    )
    mels = cache.warm(items, desc=f"features ({len(items)} files)") if rank == 0 else None
    if world > 1:
        torch.distributed.barrier()
        mels = mels or {i.path: cache.get(i.path) for i in items}
    stats = NormStats.fit(mels[i.path] for i in train)
    index = {label: k for k, label in enumerate(labels)}
    segs, ys = [], []
    for item in train:
        s = stats.apply(_segments(mels[item.path], cfg, tc.hop, feats))
        segs.append(s)
        ys += [index[item.label]] * s.shape[0]
    x_train = torch.cat(segs).unsqueeze(1)
    y_train = torch.tensor(ys)

    device = _device(tc.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.manual_seed(tc.seed)
    model = ATFNN(cfg, check_finite=False).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    state = {"epoch": 0, "best_uar": -1.0, "best_epoch": None}
    if resume and (folder / "state.json").exists():
        state = json.loads((folder / "state.json").read_text())
        model.load_state_dict(load_checkpoint(folder / "last").model.state_dict())
        optimizer.load_state_dict(
            torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
        )
        _say(rank, f"resuming {fold} after epoch {state['epoch']}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.amp]
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16 and device.type == "cuda")

    for epoch in range(state["epoch"] + 1, tc.epochs + 1):
        start = time.time()
        net.train()
        gen = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        torch.manual_seed(tc.seed * 100_003 + epoch)  # dropout of this epoch
        order = torch.randperm(len(y_train), generator=gen)
        batches = [order[i : i + tc.batch_size] for i in range(0, len(order), tc.batch_size)]
        # every process takes its share of every batch, so all take the same number of
        # steps (DDP's all-reduce needs that); a last batch smaller than the world is dropped
        batches = [b[rank::world] for b in batches if len(b) >= world]
        total, count = 0.0, 0
        bar = _progress(batches, f"{fold} epoch {epoch}/{tc.epochs}", tc.progress and rank == 0)
        for idx in bar:
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(net(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if rank == 0:
            val_metrics = evaluate_items(model, val, mels, stats, cfg, feats, labels, device)
            record = {
                "epoch": epoch, "train_loss": total / max(1, count), "val_war": val_metrics["war"],
                "val_uar": val_metrics["uar"], "seconds": round(time.time() - start, 3),
            }  # fmt: skip
            with open(folder / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            extra = {"fold": fold, "protocol": protocol, "epoch": epoch, "train": asdict(tc)}
            if val_metrics["uar"] > state["best_uar"]:
                state.update(best_uar=val_metrics["uar"], best_epoch=epoch)
                save_checkpoint(folder / "best", model, labels=labels, norm_stats=stats,
                                features=feats, extra={**extra, "val_uar": val_metrics["uar"]})  # fmt: skip
            save_checkpoint(folder / "last", model, labels=labels, norm_stats=stats,
                            features=feats, extra=extra)  # fmt: skip
            torch.save(optimizer.state_dict(), folder / "optimizer.pt.part")
            os.replace(folder / "optimizer.pt.part", folder / "optimizer.pt")
            state["epoch"] = epoch
            (folder / "state.json.part").write_text(json.dumps(state))
            os.replace(folder / "state.json.part", folder / "state.json")
            print(
                f"{fold} epoch {epoch}: loss {record['train_loss']:.4f}, "
                f"val WAR {record['val_war']:.3f} UAR {record['val_uar']:.3f}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        if world > 1:
            torch.distributed.barrier()

    if rank != 0:
        return {}
    best = load_checkpoint(folder / "best", map_location=device).model
    metrics = evaluate_items(best, test, mels, stats, cfg, feats, labels, device)
    metrics.update(fold=fold, protocol=protocol, best_epoch=state["best_epoch"],
                   val_uar=state["best_uar"], checkpoint=str(folder / "best"))  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion(
        metrics,
        folder / "confusion.png",
        f"{fold}: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%}",
    )
    return metrics


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    tqdm = require("tqdm", extra="app").tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)


def summary_table(results: list[dict]) -> str:
    """Markdown table of the folds and their mean (the paper's Table II style)."""
    lines = ["| fold | utterances | WAR | UAR |", "| --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['fold']} | {r['utterances']} | {r['war']:.2%} | {r['uar']:.2%} |")
    war = sum(r["war"] for r in results) / len(results)
    uar = sum(r["uar"] for r in results) / len(results)
    lines.append(f"| mean | {sum(r['utterances'] for r in results)} | {war:.2%} | {uar:.2%} |")
    return "\n".join(lines)


def train(
    manifest, out, *, fold: str = "all", protocol: str = "loso", tc: TrainConfig | None = None,
    resume: bool = False, cache=None,
) -> Path | None:  # fmt: skip
    """One fold or all; returns the best checkpoint directory (of the fold with the best
    validation UAR when all folds run)."""
    items = read_manifest(manifest)
    names = folds(items, protocol) if fold == "all" else [fold]
    results = [train_fold(manifest, out, name, protocol, tc, resume, cache) for name in names]
    if not results or not results[0]:
        return None  # not rank 0
    if fold == "all":
        table = summary_table(results)
        (Path(out) / "summary.md").write_text(table + "\n")
        (Path(out) / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
        print(table, flush=True)
    best = max(results, key=lambda r: r["val_uar"])
    return Path(best["checkpoint"])


def evaluate(checkpoint, manifest, out=None, device: str = "cpu", cache=None) -> dict:
    """Metrics of a checkpoint on every utterance of a manifest (+ confusion PNG)."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    if ckpt.norm_stats is None:
        raise ValueError(f"{checkpoint}: has no normalisation statistics")
    items = read_manifest(manifest)
    labels = ckpt.labels or [f"class_{i}" for i in range(ckpt.config.num_classes)]
    unknown = sorted({i.label for i in items} - set(labels))
    if unknown:
        raise ValueError(f"{manifest}: labels {unknown} are not among the model's {labels}")
    cache = FeatureCache(cache or Path(manifest).resolve().parent / ".atfnn-cache",
                         ckpt.config.n_mels, ckpt.features)  # fmt: skip
    mels = cache.warm(items)
    metrics = evaluate_items(ckpt.model, items, mels, ckpt.norm_stats, ckpt.config,
                             ckpt.features, labels, torch.device(device))  # fmt: skip
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_confusion(metrics, out / "confusion.png")
    return metrics
