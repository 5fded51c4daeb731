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
* standard output (rank 0, flushed line by line, whether or not it is a terminal): a
  header before anything slow (:func:`header_lines`: fold, device, preset and parameters,
  the train / validation / test speakers with their utterance counts, the schedule), one
  line per epoch, then the held-out result (:func:`result_line`); ``train`` adds the
  summary table of ``fold="all"`` and the CLI prints the best checkpoint's directory last;
* the checkpoints' ``extra`` records the fold, protocol, options and the speakers of each
  split, so ``evaluate`` can score the held-out fold and warn about training speakers;
* resuming: after every epoch ``<out>/<fold>/last`` is written as one atomic commit: the
  checkpoint plus its resume state, ``last/optimizer.pt`` (tensors only, loaded with
  ``weights_only=True``) and ``last/state.json`` (epoch, best epoch and UAR, the epoch
  log). A crash anywhere leaves the old epoch or the new one, never a mix. ``log.jsonl`` is
  rewritten from that state after the commit. ``best`` is written before ``last``: a crash
  between them redoes the epoch on resume, and the data order and dropout of epoch e are
  seeded from (seed, e), so the redone epoch writes the same ``best`` again and ``resume``
  continues exactly where the last committed epoch left off (epoch granularity). A crash
  in the middle of a commit is repaired by ``resume`` (docs/design.md#files-and-crashes).
  A resume must use the options the run was trained with (:func:`resume_changes`: a
  changed ``--seed``, ``--lr``, ``--batch-size``, ``--hop``, ``--preset`` or ``--amp`` is
  refused naming it); ``--epochs`` and ``--device`` may change, and the change is recorded
  in ``last/state.json``.

Checks before anything is written (our choices where the paper is silent,
docs/design.md#choices-the-paper-leaves-open):

* the manifest needs at least two labels, and every label must have training utterances in
  every fold that is run (otherwise a class has no training data and UAR averages over it);
* fold names come from the manifest's speaker / session values, which
  :func:`atfnn_fast.data.read_manifest` refuses when they are not plain names, and
  :func:`check_fold_name` when they name a run-level file (``summary.md``); matplotlib,
  ``MPLBACKEND``, ``WORLD_SIZE`` and every file of the manifest are checked before any
  work too; every path the
  trainer writes is also checked to resolve inside ``out`` (:func:`inside`), so neither a
  fold name nor a symlink planted in the run directory can send a file elsewhere (the
  feature cache is not a run output: it lives next to the manifest or in ``cache``, named
  by hashes);
* a run directory is owned: ``<out>/<fold>/.lock`` holds the PID of the process writing it
  (an advisory ``flock`` the kernel drops when the process dies, so a lock left by a killed
  run is detected as stale and taken over with a warning); a second run into the same fold
  stops with an error naming the PID. A fold directory that already holds a run is refused
  unless ``resume`` (continue it) or ``overwrite`` (delete the trainer's files in it, and
  nothing else, then start again) is given.

Divergence: an epoch whose training loss, weights after the last update, or validation
outputs are not finite stops the run with a :class:`~atfnn_fast.errors.RunError` naming the
epoch, before anything of it is written; ``best`` therefore always holds finite outputs.
``lr`` is at most :data:`MAX_LR`.

The validation split and the epoch granularity of resuming are our choices:
docs/design.md#choices-the-paper-leaves-open.

Multi-GPU (or multi-process CPU) with ``torchrun``: each process takes every
``world_size``-th segment of every batch of the epoch's shuffled order (the global batch stays
``batch_size``), gradients are averaged by DistributedDataParallel, and rank 0 alone
evaluates, locks and writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from atfnn_fast.app.datasets import FeatureCache, cache_folder
from atfnn_fast.app.evaluate import PROTOCOLS, evaluate_items
from atfnn_fast.app.metrics import plot_confusion
from atfnn_fast.app.plotting import check_plotting
from atfnn_fast.app.progress import progress
from atfnn_fast.app.rundir import (
    RunLock,
    inside,
    load_resume_state,
    prepare_run_dir,
    write_atomic,
    write_log,
)
from atfnn_fast.checkpoint import load_checkpoint, save_checkpoint
from atfnn_fast.config import ATFNNConfig
from atfnn_fast.errors import RunError, UsageError, resolve_device
from atfnn_fast.features import FeatureConfig, NormStats, segment
from atfnn_fast.inference import NonFiniteOutput
from atfnn_fast.manifest import (
    Item,
    ManifestWarning,
    fold_name_problem,
    labels_of,
    missing_files,
    read_manifest,
)
from atfnn_fast.model import ATFNN

PRESETS = {
    "paper": {},  # ATFNNConfig's defaults: the paper's model
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


# What each preset is, for `train --help` and the training header.
PRESET_NOTES = {
    "paper": "the paper's model: 128-frame segments, c = 8 channels, 4 heads, 3-layer "
    "Bi-LSTM of 128 (hours per fold on a CPU)",
    "tiny": "the same architecture, narrow: 64-frame segments, 4 channels, 2 heads, one "
    "LSTM layer of 32 (minutes per fold on a CPU; for trying the pipeline)",
}

# Largest learning rate taken (our choice): Adam's step is about lr per weight, and no
# useful rate for this model comes near 1 (the paper's is 5e-4).
MAX_LR = 1.0
AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


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
        if not (
            isinstance(self.lr, int | float)
            and not isinstance(self.lr, bool)
            and math.isfinite(self.lr)
            and 0 < self.lr <= MAX_LR
        ):
            raise UsageError(f"TrainConfig.lr must be in (0, {MAX_LR:g}], got {self.lr!r}")
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


# --resume (our choice, docs/design.md#resuming-and-early-checks): the options that
# change a run's result must stay as the run began, and a change is refused naming the
# option; the others may change and the change is honoured and recorded in state.json.
RESUME_FIXED = {
    "seed": ("--seed", "it draws the validation speakers, the weights and the data order"),
    "lr": ("--lr", "the optimiser's steps"),
    "batch_size": ("--batch-size", "the optimiser's steps and the data order"),
    "hop": ("--hop", "the training segments"),
    "preset": ("--preset", "the model"),
    "amp": ("--amp", "the arithmetic of every step"),
    "val_fraction": ("TrainConfig.val_fraction", "the validation speakers"),
}
# epochs: a run can be extended (or its remaining epochs cut, down to the committed one);
# device: where it runs (the same ops; the progress bar is no option of the run at all)
RESUME_FREE = ("epochs", "device")


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


# what `train` writes in the run directory itself, beside the fold directories
RUN_LEVEL_FILES = ("summary.md", "summary.json")


def check_fold_name(fold: str) -> None:
    """Refuse a fold name that cannot be a fold directory of the run: not a plain name
    (:func:`atfnn_fast.manifest.fold_name_problem`), or the name of a run-level file
    (:data:`RUN_LEVEL_FILES`), whose write would fail after every fold has trained."""
    problem = fold_name_problem(fold)
    if problem:
        raise UsageError(f"fold {fold!r} {problem}")
    if fold.lower() in RUN_LEVEL_FILES:  # case-insensitive file systems too
        raise UsageError(
            f"fold {fold!r}: is the name of a file the run writes beside the fold directories "
            f"({', '.join(RUN_LEVEL_FILES)}); rename that speaker or session in the manifest"
        )


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


# ------------------------------------------------------------------------ the training


def env_int(name: str, default: int, low: int) -> int:
    """An integer environment variable that torchrun sets (``WORLD_SIZE``,
    ``LOCAL_RANK``): a :class:`~atfnn_fast.errors.UsageError` naming it when it is not an
    integer >= ``low``."""
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise UsageError(
            f"{name}={text!r}: expected an integer >= {low} (torchrun sets it; unset it for a "
            "single-process run)"
        )
    return value


def _dist():
    """(rank, world_size), initialising torch.distributed under torchrun."""
    world = env_int("WORLD_SIZE", 1, 1)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


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
    either an existing run is refused.

    The steps, each a function below: check the options and the fold, lock the fold
    directory (:class:`~atfnn_fast.app.rundir.RunLock`), build the model and optimiser or
    resume them (:func:`_build_or_resume`), prepare the data (:func:`_prepare_data`), then
    per epoch :func:`_run_epoch` and :func:`_commit_epoch` (validation, ``best``, ``last``,
    ``log.jsonl``), and finally :func:`_write_artefacts` (test metrics and the confusion
    plot of the best checkpoint)."""
    tc = (tc or TrainConfig()).check()
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    check_fold_name(fold)
    rank, world = _dist()
    if rank == 0:
        check_plotting()  # the confusion plot comes last: refused now, not after training
    items = read_manifest(manifest)
    train, val, test = split(items, protocol, fold, tc.val_fraction, tc.seed)
    labels = check_labels(manifest, items, train, fold)
    problem = missing_files(items)  # every file's features are computed: all must be there
    if problem:
        raise RunError(f"{manifest}: {problem}")
    device = resolve_device(tc.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", env_int("LOCAL_RANK", 0, 0))
        torch.cuda.set_device(device)
    run = FoldRun(
        manifest=Path(manifest),
        folder=inside(out, fold),
        fold=fold,
        protocol=protocol,
        tc=tc,
        labels=labels,
        device=device,
        rank=rank,
        world=world,
        cfg=ATFNNConfig(num_classes=len(labels), **PRESETS[tc.preset]),
        feats=FeatureConfig(),
        speakers={
            name: sorted({i.speaker for i in part})
            for name, part in zip(("train", "validation", "test"), (train, val, test), strict=True)
        },
    )
    if rank != 0:
        return _run_fold(run, resume, cache, items, (train, val, test))
    run.folder.mkdir(parents=True, exist_ok=True)
    with RunLock(run.folder):
        prepare_run_dir(run.folder, resume, overwrite)
        return _run_fold(run, resume, cache, items, (train, val, test))


@dataclass(frozen=True)
class FoldRun:
    """What every step of one fold's training reads."""

    manifest: Path
    folder: Path
    fold: str
    protocol: str
    tc: TrainConfig
    labels: list[str]
    device: torch.device
    rank: int
    world: int
    cfg: ATFNNConfig
    feats: FeatureConfig
    speakers: dict  # "train" / "validation" / "test" -> sorted speaker names

    def say(self, *args) -> None:
        if self.rank == 0:
            print(*args, flush=True)


@dataclass
class FoldData:
    """Features of every utterance of the manifest, the training set's normalisation, and
    the training segments with their class indices."""

    mels: dict[Path, torch.Tensor]
    stats: NormStats
    x_train: torch.Tensor  # (segments, 1, n_mels, frames)
    y_train: torch.Tensor  # (segments,)


def _run_fold(run: FoldRun, resume: bool, cache, items: list[Item], splits) -> dict:
    train, val, test = splits
    model, optimizer, state = _build_or_resume(run, resume)
    cache = cache_folder(run.manifest, cache)  # the folder the header names is the one used
    for line in header_lines(run, model, splits, len(items), cache):
        run.say(line)
    data = _prepare_data(run, cache, items, train)
    net = model
    if run.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    for epoch in range(state["epoch"] + 1, run.tc.epochs + 1):
        start = time.time()
        error = None
        try:
            loss = _run_epoch(run, net, optimizer, data, epoch)
            if run.rank == 0:
                state = _commit_epoch(run, model, optimizer, data, val, state, epoch, loss, start)
        except RunError as err:  # e.g. diverged: every process must stop, not only this one
            error = err
        if run.world > 1:
            _agree_on_error(run, epoch, error)
        if error is not None:
            raise error
    if run.rank != 0:
        return {}
    return _write_artefacts(run, data, test, state)


def device_name(device: torch.device) -> str:
    """``cpu (2 threads)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def _speaker_counts(part: list[Item]) -> str:
    counts: dict[str, int] = {}
    for item in part:
        counts[item.speaker] = counts.get(item.speaker, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))


def header_lines(run: FoldRun, model, splits, n_items: int, cache=None) -> list[str]:
    """What ``train`` prints before the first epoch: the fold, device, preset and model
    size, the speakers of each split with their utterance counts, and the schedule with
    the feature cache's folder (``cache``, default :func:`cache_folder` of the
    manifest)."""
    cache = cache if cache is not None else cache_folder(run.manifest)
    train, val, test = splits
    tc = run.tc
    params = sum(p.numel() for p in model.parameters())
    unit = "speaker" if run.protocol == "loso" else "session"
    return [
        f"fold {run.fold} ({run.protocol}: test {unit} {run.fold}), device "
        f"{device_name(run.device)}, preset {tc.preset}: {params:,} parameters, "
        f"{len(run.labels)} classes ({', '.join(run.labels)})",
        f"  train       {len(train):>5} utterances: {_speaker_counts(train)}",
        f"  validation  {len(val):>5} utterances: {_speaker_counts(val)} (picks the best epoch)",
        f"  test        {len(test):>5} utterances: {_speaker_counts(test)} (held out)",
        f"  {tc.epochs} epochs, batch {tc.batch_size}, lr {tc.lr:g}, segments of "
        f"{run.cfg.frames} frames every {tc.hop}; features of {n_items} files cached in "
        f"{cache}",
    ]


def result_line(metrics: dict, protocol: str) -> str:
    """``test speaker spk1: WAR 93.8%, UAR 93.8% (chance 25.0%), best epoch 7 (val UAR
    87.5%)``: the held-out fold's result, as ``train`` prints it."""
    unit = "speaker" if protocol == "loso" else "session"
    classes = sum(1 for r in metrics["recall"].values() if r is not None) or 1
    return (
        f"test {unit} {metrics['fold']}: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%} "
        f"(chance {1 / classes:.1%}), best epoch {metrics['best_epoch']} (val UAR "
        f"{metrics['val_uar']:.1%}), {metrics['utterances']} utterances"
    )


def _agree_on_error(run: FoldRun, epoch: int, error: RunError | None) -> None:
    """All processes learn whether any of them failed this epoch (one all-reduce, which
    also stands for the epoch's barrier): a process that failed alone would otherwise leave
    the others waiting in the next collective until its timeout. The others raise too."""
    flag = torch.tensor([0 if error is None else 1], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if error is None and int(flag.item()):
        raise RunError(
            f"{run.folder}: epoch {epoch} failed in another process (see its message); "
            "nothing of this epoch was saved"
        )


def _build_or_resume(run: FoldRun, resume: bool):
    """A fresh model and optimiser (seeded), or with ``resume`` those of the last committed
    epoch in ``folder/last``; returns (model, optimizer, state). The resume state is
    checked before any feature is computed."""
    torch.manual_seed(run.tc.seed)
    model = ATFNN(run.cfg, check_finite=False).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.tc.lr)
    state = {"epoch": 0, "best_uar": -1.0, "best_epoch": None, "history": []}
    if resume:
        changed: dict = {}

        def check(extra: dict, saved_state: dict) -> None:
            changed.update(resume_changes(run, extra, saved_state["epoch"]))

        loaded = load_resume_state(
            run.folder, model, optimizer, run.cfg, run.labels, run.device, check
        )
        if loaded is not None:
            state = loaded
            if changed:  # recorded with the next committed epoch
                note = {"after_epoch": state["epoch"], "changed": changed}
                state = dict(state, resumes=[*state.get("resumes", []), note])
            if run.rank == 0:
                write_log(run.folder, state["history"])  # drops lines of an uncommitted epoch
            what = ", ".join(f"--{k} {a} -> {b}" for k, (a, b) in changed.items())
            run.say(
                f"resuming {run.fold} after epoch {state['epoch']}" + (f" ({what})" if what else "")
            )
        else:
            run.say(f"resuming {run.fold}: no epoch was committed yet; starting at epoch 1")
    return model, optimizer, state


def resume_changes(run: FoldRun, extra: dict, committed: int) -> dict:
    """The options of a resumed run that differ from those it was trained with, as
    ``{name: [old, new]}``: only :data:`RESUME_FREE` ones. A change of a
    :data:`RESUME_FIXED` option, of the protocol or of the speakers of each split (the
    manifest changed) is refused naming it; so is ``epochs`` below the committed epoch."""
    last = run.folder / "last"
    saved = extra.get("train")
    if not isinstance(saved, dict):
        raise RunError(
            f"{last}: records no training options (extra.train), so a resume cannot be "
            "checked against them; start again with --overwrite"
        )
    for name, (option, why) in RESUME_FIXED.items():
        new = getattr(run.tc, name)
        if name in saved and saved[name] != new:
            raise UsageError(
                f"{option} {new}: the run in {run.folder} was trained with {option} "
                f"{saved[name]}, and resuming with another value would change its result "
                f"({why}); resume with {option} {saved[name]}, or start again with --overwrite"
            )
    if extra.get("protocol", run.protocol) != run.protocol:
        raise UsageError(
            f"--protocol {run.protocol}: the run in {run.folder} was trained with --protocol "
            f"{extra['protocol']}; resume with it, or start again with --overwrite"
        )
    if extra.get("speakers", run.speakers) != run.speakers:
        parts = [
            f"{part} {extra['speakers'].get(part)} -> {speakers}"
            for part, speakers in run.speakers.items()
            if extra["speakers"].get(part) != speakers
        ]
        raise RunError(
            f"{run.manifest}: its speakers differ from those the run in {run.folder} was "
            f"trained with ({'; '.join(parts)}): the manifest changed. Resume with the "
            "original manifest, or start again with --overwrite"
        )
    if run.tc.epochs < committed:
        raise UsageError(
            f"--epochs {run.tc.epochs}: the run in {run.folder} has committed {committed} "
            f"epochs already; give at least {committed} (more extends the run)"
        )
    return {
        name: [saved.get(name), getattr(run.tc, name)]
        for name in RESUME_FREE
        if saved.get(name) != getattr(run.tc, name)
    }


def _prepare_data(run: FoldRun, cache: Path, items: list[Item], train: list[Item]) -> FoldData:
    """Features of every utterance (cached in ``cache``; rank 0 computes, the other
    ranks read), normalisation statistics of the training utterances, and the training
    segments: ``frames`` frames every ``hop`` frames."""
    cache = FeatureCache(cache, run.cfg.n_mels, run.feats)
    mels = cache.warm(items, desc=f"features ({len(items)} files)") if run.rank == 0 else None
    if run.world > 1:
        torch.distributed.barrier()
        mels = mels or {i.path: cache.get(i.path) for i in items}
    stats = NormStats.fit(mels[i.path] for i in train)
    index = {label: k for k, label in enumerate(run.labels)}
    segs, ys = [], []
    for item in train:
        s = stats.apply(
            segment(mels[item.path], run.cfg.frames, run.tc.hop, run.feats.silence_value)
        )
        segs.append(s)
        ys += [index[item.label]] * s.shape[0]
    return FoldData(mels, stats, torch.cat(segs).unsqueeze(1), torch.tensor(ys))


def _run_epoch(run: FoldRun, net, optimizer, data: FoldData, epoch: int) -> float:
    """One pass over the training segments in the order seeded by (seed, epoch); returns
    the mean training loss. Refuses a diverged (non-finite) loss before anything of the
    epoch is written."""
    tc, device = run.tc, run.device
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.amp]
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16 and device.type == "cuda")
    net.train()
    gen = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
    torch.manual_seed(tc.seed * 100_003 + epoch)  # dropout of this epoch
    order = torch.randperm(len(data.y_train), generator=gen)
    batches = [order[i : i + tc.batch_size] for i in range(0, len(order), tc.batch_size)]
    # every process takes its share of every batch, so all take the same number of steps
    # (DDP's all-reduce needs that); a last batch smaller than the world is dropped
    batches = [b[run.rank :: run.world] for b in batches if len(b) >= run.world]
    total, count = 0.0, 0
    desc = f"{run.fold} epoch {epoch}/{tc.epochs}"
    with progress(batches, desc, "batch", tc.progress and run.rank == 0, leave=False) as bar:
        for idx in bar:
            xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(net(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    if not math.isfinite(total):
        raise _diverged(run, epoch, "its training loss is not finite")
    bad = [name for name, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise _diverged(run, epoch, f"its weights are not finite ({', '.join(bad[:3])}...)")
    return total / max(1, count)


def _diverged(run: FoldRun, epoch: int, what: str) -> RunError:
    """The error of a diverged epoch: nothing of it is saved, and ``best`` stays the last
    epoch whose outputs were finite."""
    return RunError(
        f"{run.folder}: training diverged in epoch {epoch}: {what}; nothing of this epoch "
        f"was saved. Try a lower --lr than {run.tc.lr}"
    )


def _commit_epoch(
    run: FoldRun,
    model,
    optimizer,
    data: FoldData,
    val: list[Item],
    state: dict,
    epoch: int,
    loss: float,
    start: float,
) -> dict:
    """Rank 0: score the validation utterances, write ``best`` when the validation UAR
    improved, then commit the epoch (``last``: weights, optimiser and state in one
    rename) and rewrite ``log.jsonl``; returns the new state."""
    folder, tc = run.folder, run.tc
    try:
        val_metrics = evaluate_items(
            model, val, data.mels, data.stats, run.cfg, run.feats, run.labels, run.device
        )
    except NonFiniteOutput as err:  # the weights are finite, the outputs are not
        raise _diverged(run, epoch, f"its validation outputs are not finite ({err})") from None
    record = {
        "epoch": epoch,
        "train_loss": loss,
        "val_war": val_metrics["war"],
        "val_uar": val_metrics["uar"],
        "seconds": round(time.time() - start, 3),
    }
    extra = {
        "fold": run.fold,
        "protocol": run.protocol,
        "epoch": epoch,
        "train": asdict(tc),
        "speakers": run.speakers,
    }
    new = dict(state, epoch=epoch, history=[*state["history"], record])
    saved = dict(labels=run.labels, norm_stats=data.stats, features=run.feats)
    if val_metrics["uar"] > state["best_uar"]:
        new.update(best_uar=val_metrics["uar"], best_epoch=epoch)
        save_checkpoint(
            inside(folder, "best"), model, **saved, extra={**extra, "val_uar": val_metrics["uar"]}
        )
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    # the one commit of this epoch: weights, optimizer and state in one rename
    save_checkpoint(
        inside(folder, "last"),
        model,
        **saved,
        extra=extra,
        extra_files={"optimizer.pt": buffer.getvalue(), "state.json": json.dumps(new).encode()},
    )
    write_log(folder, new["history"])
    best = " (best so far)" if new["best_epoch"] == epoch else ""
    run.say(
        f"{run.fold} epoch {epoch}/{tc.epochs}: loss {record['train_loss']:.4f}, "
        f"val WAR {record['val_war']:.1%} UAR {record['val_uar']:.1%}, "
        f"{record['seconds']:.1f} s{best}"
    )
    return new


def _write_artefacts(run: FoldRun, data: FoldData, test: list[Item], state: dict) -> dict:
    """Rank 0, after the last epoch: the best checkpoint's test metrics in
    ``metrics.json`` and their confusion plot in ``confusion.png``; returns the metrics."""
    folder = run.folder
    if state["best_epoch"] is None:
        raise RunError(f"{folder}: no epoch was trained (--epochs {run.tc.epochs})")
    best = load_checkpoint(inside(folder, "best"), map_location=run.device).model
    metrics = evaluate_items(
        best, test, data.mels, data.stats, run.cfg, run.feats, run.labels, run.device
    )
    metrics.update(
        fold=run.fold,
        protocol=run.protocol,
        best_epoch=state["best_epoch"],
        val_uar=state["best_uar"],
        checkpoint=str(folder / "best"),
    )
    write_atomic(
        inside(folder, "metrics.json"),
        (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode(),
    )
    plot_confusion(
        metrics,
        inside(folder, "confusion.png"),
        f"{run.fold}: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%}",
    )
    run.say(result_line(metrics, run.protocol))
    return metrics


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
    manifest,
    out,
    *,
    fold: str = "all",
    protocol: str = "loso",
    tc: TrainConfig | None = None,
    resume: bool = False,
    cache=None,
    overwrite: bool = False,
) -> Path | None:
    """One fold or all; returns the best checkpoint directory (of the fold with the best
    validation UAR when all folds run). Every fold is checked (labels, names) before the
    first one starts."""
    tc = (tc or TrainConfig()).check()
    env_int("WORLD_SIZE", 1, 1)
    check_plotting()
    items = read_manifest(manifest)
    names = folds(items, protocol) if fold == "all" else [fold]
    for name in names:
        check_fold_name(name)
        train_items, _, _ = split(items, protocol, name, tc.val_fraction, tc.seed)
        check_labels(manifest, items, train_items, name)
        inside(out, name)
    owns_group = not torch.distributed.is_initialized()  # else the caller's to close
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ManifestWarning)  # said once, above
            results = [
                train_fold(manifest, out, name, protocol, tc, resume, cache, overwrite)
                for name in names
            ]
    finally:
        if owns_group and torch.distributed.is_initialized():
            # left to interpreter exit, gloo's threads can abort the process
            # ("terminate called without an active exception") after a run that succeeded
            torch.distributed.destroy_process_group()
    if not results or not results[0]:
        return None  # not rank 0
    if fold == "all":
        table = summary_table(results)
        write_atomic(inside(out, "summary.md"), (table + "\n").encode())
        write_atomic(
            inside(out, "summary.json"),
            (json.dumps(results, indent=2, allow_nan=False) + "\n").encode(),
        )
        print(table, flush=True)
    best = max(results, key=lambda r: r["val_uar"])
    return Path(best["checkpoint"])
