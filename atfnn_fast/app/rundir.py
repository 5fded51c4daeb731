"""A training run's fold directory: path checks, the one-writer lock, clearing an old run,
atomic file writes, and loading the resume state of ``last/`` (the layout and the
guarantees are described in :mod:`atfnn_fast.app.train`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch

from atfnn_fast.checkpoint import CheckpointError, load_checkpoint, recover_checkpoint
from atfnn_fast.errors import RunError, UsageError
from atfnn_fast.files import _resolve as loop_safe_resolve
from atfnn_fast.files import write_atomic

LOCK_FILE = ".lock"
# what the trainer writes in a fold directory; --overwrite deletes these and nothing else
# (state.json and optimizer.pt at the top are the layout before resume state moved into last/)
RUN_FILES = (
    "best",
    "last",
    "log.jsonl",
    "metrics.json",
    "confusion.png",
    "state.json",
    "optimizer.pt",
)


class RunWarning(UserWarning):
    """Something of an interrupted run that resuming repaired (one line naming it)."""


def inside(out: str | os.PathLike, *parts: str) -> Path:
    """``out / parts...``, refused unless it resolves (symlinks followed) inside ``out``; a
    symlink loop is an ``OSError`` naming it (Python 3.11 raises ``RuntimeError``)."""
    root = loop_safe_resolve(Path(out))
    path = Path(out, *parts)
    resolved = loop_safe_resolve(path)
    if resolved != root and root not in resolved.parents:
        raise RunError(f"{path}: resolves to {resolved}, outside the output folder {root}")
    return path


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


# what a write of a run file killed midway leaves: ``.<run file>.<12 hex>.<new|old|tmp>``
# (atfnn_fast.files.temp_path; checkpoints: atfnn_fast.checkpoint.save_checkpoint)
_LEFTOVER = re.compile(
    r"^\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.[0-9a-f]{12}\.(new|old|tmp)$"
)


def leftovers(folder: Path) -> list[str]:
    """Names of the temporary copies in ``folder`` that an interrupted write left."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _LEFTOVER.match(p.name))


def existing_run(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in folder.iterdir() if p.name in RUN_FILES) if folder.is_dir() else []
    ) + leftovers(folder)


def recover_run_dir(folder: Path) -> None:
    """Called with the lock held before resuming: finish or undo a checkpoint swap that a
    crash interrupted (:func:`atfnn_fast.checkpoint.recover_checkpoint`; each step is a
    warning line) and delete the partial files of other interrupted writes."""
    for name in ("best", "last"):
        for note in recover_checkpoint(inside(folder, name)):
            warnings.warn(note, RunWarning, stacklevel=2)
    for name in leftovers(folder):  # what is left: partial files, never trusted
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare_run_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """Called with the lock held: refuse or clear an existing run (see the module
    docstring)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if resume:
        recover_run_dir(folder)
        return
    found = existing_run(folder)
    if not found:
        return
    if not overwrite:
        raise UsageError(
            f"{folder}: holds a run already ({', '.join(found)}); add --resume to continue "
            "it or --overwrite to replace it"
        )
    for name in found:
        path = folder / name if _LEFTOVER.match(name) else inside(folder, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def load_resume_state(
    folder: Path, model, optimizer, cfg, labels, device, check_extra=None
) -> dict | None:
    """The committed state of ``folder/last`` loaded into ``model`` and ``optimizer``;
    None when no epoch was committed yet. ``check_extra(extra, state)``, called with the
    checkpoint's ``extra`` (the run's options) before anything is loaded, refuses options
    that differ. Every problem is a one-line error naming the file."""
    last = folder / "last"
    state_path = last / "state.json"
    if not state_path.exists():
        if (folder / "state.json").exists():
            raise RunError(
                f"{folder / 'state.json'}: resume state in the layout of an older atfnn-fast "
                "(not in last/); start again with --overwrite"
            )
        logged = _logged_epochs(folder / "log.jsonl")
        if logged or last.exists():
            what = f"log.jsonl lists {logged} committed epoch(s)" if logged else "last/ is there"
            raise RunError(
                f"{state_path}: missing, but {what}: the resume state is lost, and starting "
                "at epoch 1 would replace best. Start again with --overwrite"
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
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        if isinstance(err, RecursionError):
            detail = "JSON nested too deeply to parse"
        raise RunError(
            f"{state_path}: broken resume state ({detail}); start again with --overwrite"
        ) from None
    try:
        ckpt = load_checkpoint(last, map_location=device)
    except CheckpointError as err:
        raise RunError(f"cannot resume: {err}") from None
    if check_extra is not None:
        check_extra(ckpt.extra, state)
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


def _logged_epochs(log: Path) -> int:
    try:
        return sum(1 for line in log.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError):
        return 1  # there is a log we cannot read: something was committed


def write_log(folder: Path, history: list[dict]) -> None:
    """``folder/log.jsonl``: one JSON line per committed epoch."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    write_atomic(inside(folder, "log.jsonl"), text.encode())
