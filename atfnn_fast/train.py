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
* resuming: after every epoch ``<out>/<fold>/last`` is written as one atomic commit: the
  checkpoint plus its resume state, ``last/optimizer.pt`` (tensors only, loaded with
  ``weights_only=True``) and ``last/state.json`` (epoch, best epoch and UAR, the epoch
  log). A crash anywhere leaves the old epoch or the new one, never a mix. ``log.jsonl`` is
  rewritten from that state after the commit. ``best`` is written before ``last``: a crash
  between them redoes the epoch on resume, and the data order and dropout of epoch e are
  seeded from (seed, e), so the redone epoch writes the same ``best`` again and ``resume``
  continues exactly where the last committed epoch left off (epoch granularity).

Checks before anything is written (our choices where the paper is silent,
docs/design.md#choices-the-paper-leaves-open):

* the manifest needs at least two labels, and every label must have training utterances in
  every fold that is run (otherwise a class has no training data and UAR averages over it);
* fold names come from the manifest's speaker / session values, which
  :func:`atfnn_fast.data.read_manifest` refuses when they are not plain names; every path the
  trainer writes is also checked to resolve inside ``out`` (:func:`inside`), so neither a
  fold name nor a symlink planted in the run directory can send a file elsewhere (the
  feature cache is not a run output: it lives next to the manifest, named by hashes);
* a run directory is owned: ``<out>/<fold>/.lock`` holds the PID of the process writing it
  (an advisory ``flock`` the kernel drops when the process dies, so a lock left by a killed
  run is detected as stale and taken over with a warning); a second run into the same fold
  stops with an error naming the PID. A fold directory that already holds a run is refused
  unless ``resume`` (continue it) or ``overwrite`` (delete the trainer's files in it, and
  nothing else, then start again) is given.

The validation split and the epoch granularity of resuming are our choices:
docs/design.md#choices-the-paper-leaves-open.

Multi-GPU (or multi-process CPU) with ``torchrun``: each process takes every
``world_size``-th segment of every batch of the epoch's shuffled order (the global batch stays
``batch_size``), gradients are averaged by DistributedDataParallel, and rank 0 alone
evaluates, locks and writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ._deps import require
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ATFNNConfig
from .data import (
    FeatureCache,
    Item,
    ManifestWarning,
    fold_name_problem,
    labels_of,
    read_manifest,
)
from .errors import RunError, UsageError, resolve_device
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


PROTOCOLS = ("loso", "session")
AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
LOCK_FILE = ".lock"
# what the trainer writes in a fold directory; --overwrite deletes these and nothing else
# (state.json and optimizer.pt at the top are the layout before resume state moved into last/)
RUN_FILES = ("best", "last", "log.jsonl", "metrics.json", "confusion.png", "state.json",
             "optimizer.pt")  # fmt: skip


@dataclass
class TrainConfig:
    """Training options; the command line takes its defaults from here. :meth:`check`
    refuses values that cannot train, naming the field."""

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

    def check(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"TrainConfig.seed must be a non-negative int, got {self.seed!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction < 1):
            raise UsageError(
                f"TrainConfig.val_fraction must be in (0, 1), got {self.val_fraction!r}"
            )
        for name, choices in (("preset", tuple(PRESETS)), ("amp", AMP_MODES)):
            if getattr(self, name) not in choices:
                raise UsageError(
                    f"TrainConfig.{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        frames = PRESETS[self.preset].get("frames", ATFNNConfig().frames)
        if self.hop > frames:
            raise UsageError(
                f"TrainConfig.hop = {self.hop} is longer than a segment ({frames} frames of "
                f"preset {self.preset!r}): frames would be skipped"
            )
        return self


def default(name: str):
    """The default of a :class:`TrainConfig` field (the command line's defaults)."""
    return next(f.default for f in fields(TrainConfig) if f.name == name)


# ------------------------------------------------------------------------------ folds
def folds(items: list[Item], protocol: str) -> list[str]:
    if protocol not in PROTOCOLS:
        raise UsageError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "loso":
        return sorted({i.speaker for i in items})
    if protocol == "session":
        sessions = sorted({i.session for i in items})
        if "" in sessions:
            raise UsageError(
                "protocol 'session' needs a session column in the manifest, with a value on every row"
            )
        return sessions


def split(items: list[Item], protocol: str, fold: str, val_fraction: float, seed: int):
    """(train, val, test) items of one fold; validation speakers drawn from training ones."""
    key = (lambda i: i.speaker) if protocol == "loso" else (lambda i: i.session)
    test = [i for i in items if key(i) == fold]
    if not test:
        raise UsageError(f"fold {fold!r} has no utterances (folds: {folds(items, protocol)})")
    rest = [i for i in items if key(i) != fold]
    speakers = sorted({i.speaker for i in rest})
    if len(speakers) < 2:
        raise ValueError(f"fold {fold!r}: need >= 2 training speakers for a validation split")
    n_val = max(1, round(val_fraction * len(speakers)))
    val_speakers = set(random.Random(seed).sample(speakers, n_val))
    train = [i for i in rest if i.speaker not in val_speakers]
    val = [i for i in rest if i.speaker in val_speakers]
    return train, val, test


def check_labels(manifest, items: list[Item], train: list[Item], fold: str) -> list[str]:
    """The labels of ``items``; refuses a single-label manifest and a label without
    training utterances in this fold."""
    labels = labels_of(items)
    if len(labels) < 2:
        raise RunError(
            f"{manifest}: only one label ({labels[0]!r}); training needs at least two classes"
        )
    missing = sorted(set(labels) - {i.label for i in train})
    if missing:
        where = {m: sorted({i.speaker for i in items if i.label == m}) for m in missing}
        raise RunError(
            f"{manifest}: fold {fold!r}: label(s) "
            + ", ".join(f"{m!r} (only speakers {where[m]})" for m in missing)
            + " have no training utterances; every label needs training data in every fold"
        )
    return labels


def inside(out: str | os.PathLike, *parts: str) -> Path:
    """``out / parts...``, refused unless it resolves (symlinks followed) inside ``out``."""
    root = Path(out).resolve()
    path = Path(out, *parts)
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise RunError(f"{path}: resolves to {resolved}, outside the output folder {root}")
    return path


# ------------------------------------------------------------------------- run directory
class RunLock:
    """``with RunLock(folder):`` -- one writer per fold directory (see the module
    docstring). The lock file holds the owner's PID; it is removed on exit. POSIX only
    (``fcntl.flock``; local file systems, where flock is reliable)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunError(
                    f"{self.folder}: another run (PID {holder}) is writing to this fold "
                    f"directory (lock file {self.path}); wait for it or use another --out"
                ) from None
            try:  # the file may have been unlinked by the holder that just released it
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 64).decode(errors="replace").strip()
        if stale:
            warnings.warn(
                f"{self.path}: stale lock of PID {stale} (that run ended without releasing "
                "it); taking it over",
                RuntimeWarning,
                stacklevel=2,
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # releases the flock
            self.fd = None


def _existing_run(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in folder.iterdir() if p.name in RUN_FILES) if folder.is_dir() else []
    )


def _prepare_run_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """Called with the lock held: refuse or clear an existing run (see the module
    docstring)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    found = _existing_run(folder)
    if not found or resume:
        return
    if not overwrite:
        raise UsageError(
            f"{folder}: holds a run already ({', '.join(found)}); add --resume to continue "
            "it or --overwrite to replace it"
        )
    for name in found:
        path = inside(folder, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file next to ``path`` (mode from the umask), fsync, rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_resume_state(folder: Path, model, optimizer, cfg, labels, device) -> dict | None:
    """The committed state of ``folder/last`` loaded into ``model`` and ``optimizer``;
    None when no epoch was committed yet. Every problem is a one-line error naming the
    file."""
    last = folder / "last"
    state_path = last / "state.json"
    if not state_path.exists():
        if (folder / "state.json").exists():
            raise RunError(
                f"{folder / 'state.json'}: resume state in the layout of an older atfnn-fast "
                "(not in last/); start again with --overwrite"
            )
        return None
    try:
        state = json.loads(state_path.read_text())
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
        epoch, best_epoch, best_uar = state["epoch"], state["best_epoch"], state["best_uar"]
        history = state["history"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch must be a positive int, got {epoch!r}")
        if best_epoch is not None and not (isinstance(best_epoch, int) and best_epoch <= epoch):
            raise ValueError(f"best_epoch must be an epoch <= {epoch}, got {best_epoch!r}")
        if not isinstance(best_uar, int | float):
            raise ValueError(f"best_uar must be a number, got {best_uar!r}")
        if not isinstance(history, list) or len(history) != epoch:
            raise ValueError(f"history must list the {epoch} epochs")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise RunError(
            f"{state_path}: broken resume state ({detail}); start again with --overwrite"
        ) from None
    try:
        ckpt = load_checkpoint(last, map_location=device)
    except CheckpointError as err:
        raise RunError(f"cannot resume: {err}") from None
    if ckpt.config != cfg:
        raise RunError(
            f"{last}: was trained with another model config (preset?); resume with the "
            "original options or start again with --overwrite"
        )
    if ckpt.labels != labels:
        raise RunError(f"{last}: was trained with labels {ckpt.labels}, the manifest has {labels}")
    if ckpt.extra.get("epoch") != state["epoch"]:
        raise RunError(
            f"{state_path}: epoch {state['epoch']} does not match the checkpoint's epoch "
            f"{ckpt.extra.get('epoch')!r}; the run directory was edited"
        )
    model.load_state_dict(ckpt.model.state_dict())
    opt_path = last / "optimizer.pt"
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols
            warnings.simplefilter("ignore")
            opt_state = torch.load(opt_path, map_location=device, weights_only=True)
    except Exception as err:  # unpickling errors of any kind; the message is torch's advice
        raise RunError(
            f"{opt_path}: cannot be loaded as plain tensors ({type(err).__name__}); it is "
            "damaged or was not written by atfnn-fast, and is not trusted as code. Start "
            "again with --overwrite"
        ) from None
    try:
        optimizer.load_state_dict(opt_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise RunError(
            f"{opt_path}: does not fit this model's optimizer ({err}); start again with --overwrite"
        ) from None
    return state


# ------------------------------------------------------------------------ the training


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
    overwrite: bool = False,
) -> dict:
    """Train and test one fold; returns its metrics (rank 0) and writes everything under
    ``out/<fold>``. ``resume`` continues a run there, ``overwrite`` replaces it; without
    either an existing run is refused."""
    tc = (tc or TrainConfig()).check()
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    problem = fold_name_problem(fold)
    if problem:
        raise UsageError(f"fold {fold!r} {problem}")
    rank, world = _dist()
    items = read_manifest(manifest)
    train, val, test = split(items, protocol, fold, tc.val_fraction, tc.seed)
    labels = check_labels(manifest, items, train, fold)
    device = resolve_device(tc.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    folder = inside(out, fold)
    if rank != 0:
        return _train_fold(manifest, folder, fold, protocol, tc, resume, cache, items,
                           (train, val, test), labels, device)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(folder):
        _prepare_run_dir(folder, resume, overwrite)
        return _train_fold(manifest, folder, fold, protocol, tc, resume, cache, items,
                           (train, val, test), labels, device)  # fmt: skip


def _train_fold(manifest, folder, fold, protocol, tc, resume, cache, items, splits, labels,
                device) -> dict:  # fmt: skip
    rank, world = _dist()
    train, val, test = splits
    cfg = ATFNNConfig(num_classes=len(labels), **PRESETS[tc.preset])
    feats = FeatureConfig()
    torch.manual_seed(tc.seed)  # the resume state is checked before the features
    model = ATFNN(cfg, check_finite=False).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    state = {"epoch": 0, "best_uar": -1.0, "best_epoch": None, "history": []}
    if resume:
        loaded = _load_resume_state(folder, model, optimizer, cfg, labels, device)
        if loaded is not None:
            state = loaded
            if rank == 0:
                _write_log(folder, state["history"])  # drops lines of an uncommitted epoch
            _say(rank, f"resuming {fold} after epoch {state['epoch']}")
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
        desc = f"{fold} epoch {epoch}/{tc.epochs}"
        with _progress(batches, desc, tc.progress and rank == 0) as bar:
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
        if not math.isfinite(total):
            raise RunError(
                f"{folder}: the training loss of epoch {epoch} is not finite (diverged); "
                f"nothing of this epoch was saved. Try a lower --lr than {tc.lr}"
            )
        if rank == 0:
            val_metrics = evaluate_items(model, val, mels, stats, cfg, feats, labels, device)
            record = {
                "epoch": epoch, "train_loss": total / max(1, count), "val_war": val_metrics["war"],
                "val_uar": val_metrics["uar"], "seconds": round(time.time() - start, 3),
            }  # fmt: skip
            extra = {"fold": fold, "protocol": protocol, "epoch": epoch, "train": asdict(tc)}
            new = dict(state, epoch=epoch, history=[*state["history"], record])
            if val_metrics["uar"] > state["best_uar"]:
                new.update(best_uar=val_metrics["uar"], best_epoch=epoch)
                save_checkpoint(inside(folder, "best"), model, labels=labels, norm_stats=stats,
                                features=feats, extra={**extra, "val_uar": val_metrics["uar"]})  # fmt: skip
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            # the one commit of this epoch: weights, optimizer and state in one rename
            save_checkpoint(inside(folder, "last"), model, labels=labels, norm_stats=stats,
                            features=feats, extra=extra,
                            extra_files={"optimizer.pt": buffer.getvalue(),
                                         "state.json": json.dumps(new).encode()})  # fmt: skip
            state = new
            _write_log(folder, state["history"])
            print(
                f"{fold} epoch {epoch}: loss {record['train_loss']:.4f}, "
                f"val WAR {record['val_war']:.3f} UAR {record['val_uar']:.3f}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        if world > 1:
            torch.distributed.barrier()

    if rank != 0:
        return {}
    if state["best_epoch"] is None:
        raise RunError(f"{folder}: no epoch was trained (--epochs {tc.epochs})")
    best = load_checkpoint(inside(folder, "best"), map_location=device).model
    metrics = evaluate_items(best, test, mels, stats, cfg, feats, labels, device)
    metrics.update(fold=fold, protocol=protocol, best_epoch=state["best_epoch"],
                   val_uar=state["best_uar"], checkpoint=str(folder / "best"))  # fmt: skip
    _write_atomic(inside(folder, "metrics.json"), (json.dumps(metrics, indent=2) + "\n").encode())
    plot_confusion(
        metrics,
        inside(folder, "confusion.png"),
        f"{fold}: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%}",
    )
    return metrics


def _write_log(folder: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in history)
    _write_atomic(inside(folder, "log.jsonl"), text.encode())


def _progress(iterable, desc: str, enabled: bool):
    """A context manager giving ``iterable`` or its progress bar (cleared on any exit)."""
    if not enabled:
        return contextlib.nullcontext(iterable)
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
    resume: bool = False, cache=None, overwrite: bool = False,
) -> Path | None:  # fmt: skip
    """One fold or all; returns the best checkpoint directory (of the fold with the best
    validation UAR when all folds run). Every fold is checked (labels, names) before the
    first one starts."""
    tc = (tc or TrainConfig()).check()
    items = read_manifest(manifest)
    names = folds(items, protocol) if fold == "all" else [fold]
    for name in names:
        problem = fold_name_problem(name)
        if problem:
            raise UsageError(f"fold {name!r} {problem}")
        train_items, _, _ = split(items, protocol, name, tc.val_fraction, tc.seed)
        check_labels(manifest, items, train_items, name)
        inside(out, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ManifestWarning)  # said once, above
        results = [
            train_fold(manifest, out, name, protocol, tc, resume, cache, overwrite)
            for name in names
        ]
    if not results or not results[0]:
        return None  # not rank 0
    if fold == "all":
        table = summary_table(results)
        _write_atomic(inside(out, "summary.md"), (table + "\n").encode())
        _write_atomic(inside(out, "summary.json"), (json.dumps(results, indent=2) + "\n").encode())
        print(table, flush=True)
    best = max(results, key=lambda r: r["val_uar"])
    return Path(best["checkpoint"])


def evaluate(checkpoint, manifest, out=None, device: str = "cpu", cache=None) -> dict:
    """Metrics of a checkpoint on every utterance of a manifest (+ confusion PNG)."""
    device = resolve_device(device)
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
                             ckpt.features, labels, device)  # fmt: skip
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        plot_confusion(metrics, out / "confusion.png")
    return metrics
