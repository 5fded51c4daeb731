"""Checkpoints: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` holds the model config, the label names, the normalisation statistics, the
feature parameters and the SHA-256 of the weights file. Nothing in a checkpoint is code:
loading parses JSON and safetensors only (no pickle).

Writes are atomic: both files are written and fsynced into a private hidden directory next
to the target (``.<name>.<random>.new``, modes from the umask), which then takes the
target's place, so a crash leaves either the old checkpoint or the new one, never a mixture
or a half-written file. Overwriting an existing checkpoint swaps the two directories in one
``renameat2(RENAME_EXCHANGE)`` where Linux has it and deletes the old copy; elsewhere the old
one is renamed aside (``.<name>.<random>.old``) and the new one renamed in, and
:func:`recover_checkpoint` finishes such a swap that a crash interrupted (training calls it
before it resumes). A directory that is not a checkpoint is never overwritten.
``extra_files`` (name -> bytes) travel inside the same atomic step: training stores its
resume state (``optimizer.pt``, ``state.json``) in the ``last`` checkpoint this way, so a
crash leaves the old epoch or the new one, never a mix (docs/design.md#files-and-crashes).

Loading treats the directory as untrusted: ``weights_sha256`` must be present and match;
model sizes are checked against :data:`atfnn_fast.config.SIZE_LIMITS` before the model is
built; non-finite weights are refused. A checkpoint written without ``weights_sha256`` is
refused with the command that re-saves it (:func:`resave_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ATFNNConfig
from .features import FeatureConfig, NormStats
from .files import check_input, named, read_checked, short_name, temp_path, write_new
from .files import fsync_dir as _fsync_dir
from .labels import LabelError, normalize_labels

FORMAT = "atfnn-fast-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Sizes a checkpoint's files may have, checked before they are read (our choice): config.json
# holds the config, labels, statistics and a run's record (a few KiB to a few hundred);
# model.safetensors's JSON header names each tensor (about 100 bytes each, 4 KiB for the
# paper's model)
MAX_CONFIG_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or written; the message says which file and why."""


@dataclass
class Checkpoint:
    model: nn.Module
    config: ATFNNConfig
    labels: list[str] | None = None
    norm_stats: NormStats | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    extra: dict[str, Any] = field(default_factory=dict)


def model_labels(labels, num_classes: int) -> list[str]:
    """The names of a model's ``num_classes`` outputs, normalised and checked by the one
    label rule (:func:`atfnn_fast.labels.normalize_labels`: NFC, stripped, no control,
    bidi or zero-width character, no two equal ignoring case) after the count: a
    :class:`~atfnn_fast.labels.LabelError` says what is wrong. The one check for
    checkpoints, ONNX metadata and ``export``."""
    if not isinstance(labels, list | tuple):
        raise LabelError(f"must be a list of {num_classes} names, got {type(labels).__name__}")
    if len(labels) != num_classes:
        raise LabelError(f"expected {num_classes} names (num_classes), got {len(labels)}")
    return normalize_labels(labels, unique=True)


def label_problem(labels, num_classes: int) -> str | None:
    """Why ``labels`` cannot name the ``num_classes`` outputs of a model
    (:func:`model_labels`), or None."""
    try:
        model_labels(labels, num_classes)
    except LabelError as err:
        return str(err)
    return None


def check_deployment_info(
    config: ATFNNConfig, labels: list[str] | None, norm_stats: NormStats | None
) -> list[str] | None:
    """Labels and normalisation statistics that travel with a model (checkpoints, ONNX
    files) must fit its config (:func:`label_problem`); returns the labels as a list."""
    if labels is not None:
        try:
            labels = model_labels(labels, config.num_classes)
        except LabelError as err:
            raise ValueError(f"labels: {err}") from None
    if norm_stats is not None and norm_stats.n_mels != config.n_mels:
        raise ValueError(
            f"norm_stats: expected {config.n_mels} bands (n_mels), got {norm_stats.n_mels}"
        )
    return labels


def weights_size_range(config: ATFNNConfig) -> tuple[int, int]:
    """The smallest and largest size in bytes of a ``model.safetensors`` of ``config``'s
    model: the 8-byte header length, a JSON header of at most :data:`MAX_HEADER_BYTES`, and
    the parameters at 2 to 8 bytes each (float16 to float64)."""
    count = config.parameter_count
    return 8 + 2 * count, 8 + MAX_HEADER_BYTES + 8 * count


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_checkpoint(directory: Path) -> bool:
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


# Tests set this to a function(step, target) to kill the process at a step of the swap:
# "written" (the new copy is complete, nothing moved yet), then with RENAME_EXCHANGE
# "swapped" (the new copy is in place, the old one not yet deleted), or without it
# "moved-aside" (the old copy renamed aside, no target) and "renamed" (the new copy in
# place, the old one not yet deleted).
_fault_hook = None
# renameat2(RENAME_EXCHANGE) where the kernel and file system have it; tests turn it off to
# run the two-rename fallback
USE_EXCHANGE = True


def _step(name: str, target: Path) -> None:
    if _fault_hook is not None:
        _fault_hook(name, target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where that is not available (then nothing happened)."""
    import ctypes
    import errno

    if not USE_EXCHANGE:
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _leftovers(target: Path) -> dict[str, dict[str, Path]]:
    """Copies of an interrupted :func:`save_checkpoint` of ``target``: {token: {"new" or
    "old": path}}."""
    prefix = f".{short_name(target.name)}."
    found: dict[str, dict[str, Path]] = {}
    if not target.parent.is_dir():
        return found
    for entry in target.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        token, _, tag = name[len(prefix) :].partition(".")
        if len(token) == 12 and tag in ("new", "old") and entry.is_dir():
            found.setdefault(token, {})[tag] = entry
    return found


def recover_checkpoint(directory: str | os.PathLike) -> list[str]:
    """Finish or undo a :func:`save_checkpoint` of ``directory`` that a crash interrupted,
    and delete its leftover copies; returns one line per thing done. Only for a directory
    no other process is writing (training calls it under its run lock).

    When ``directory`` exists it is complete (the swap is one rename), and every leftover
    copy is deleted. When it is missing and the copies of one save are both there (the old
    one moved aside, the new one complete: the fallback without RENAME_EXCHANGE, killed
    between its two renames), the new copy is renamed in; an old copy alone is renamed
    back; a new copy alone (a first save killed before its rename) is deleted."""
    target = Path(directory)
    found = _leftovers(target)
    notes: list[str] = []
    if not target.exists():
        pairs = [t for t in found if set(found[t]) == {"new", "old"}]
        olds = [t for t in found if set(found[t]) == {"old"}]
        use = found[pairs[0]]["new"] if pairs else found[olds[0]]["old"] if olds else None
        if use is not None:
            os.rename(use, target)
            _fsync_dir(target.parent)
            which = "the new copy" if pairs else "the old copy"
            notes.append(
                f"{target}: recovered from an interrupted save ({which} {use.name} was complete "
                "and is now in place)"
            )
    for copies in _leftovers(target).values():
        for path in copies.values():
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"{target}: removed {path.name}, left by an interrupted save")
    return notes


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` (``_orig_mod``) and DistributedDataParallel /
    DataParallel (``module``) wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(
            model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel
        ):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model, seen = inner, seen + 1
    return model


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    *,
    labels: list[str] | None = None,
    norm_stats: NormStats | None = None,
    features: FeatureConfig | None = None,
    extra: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``model`` (an ATFNN or ATFNNReference, also inside ``torch.compile`` or a
    DistributedDataParallel wrapper) atomically to ``directory``, with ``extra_files``
    (plain file names -> contents) in the same atomic step. Directories and files get
    their modes from the umask."""
    from safetensors.torch import save as save_bytes

    model = _unwrap(model)
    config = getattr(model, "config", None)
    if not isinstance(config, ATFNNConfig):
        raise TypeError(
            f"model must be an ATFNN or ATFNNReference (with an ATFNNConfig), "
            f"got {type(model).__name__}"
        )
    labels = check_deployment_info(config, labels, norm_stats)
    extra_files = extra_files or {}
    for name in extra_files:
        if (
            name in (WEIGHTS_FILE, CONFIG_FILE)
            or Path(name).name != name
            or name in ("", "..", ".")
        ):
            raise ValueError(f"extra_files: {name!r} is not a plain file name of its own")
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not _is_checkpoint(target):
        raise CheckpointError(
            f"{target}: refusing to overwrite a non-empty directory that is not a checkpoint"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise named(err, target.parent) from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_bytes(tensors, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": config.to_dict(),
        "labels": labels,
        "norm_stats": norm_stats.to_dict() if norm_stats is not None else None,
        "features": (features or FeatureConfig()).to_dict(),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "extra": extra or {},
    }
    files = {WEIGHTS_FILE: weights, CONFIG_FILE: (json.dumps(meta, indent=2) + "\n").encode()}
    files.update(extra_files)
    tmp = temp_path(target, "new")
    try:
        os.mkdir(tmp, 0o777)  # the umask applies, as for any new directory
        for name, content in files.items():
            write_new(tmp / name, content, target / name)
        _fsync_dir(tmp)
        _step("written", target)
        _swap_in(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise named(err, target) if err.filename is None else err from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_in(new: Path, target: Path) -> None:
    """Put the complete copy ``new`` in place of ``target``: one RENAME_EXCHANGE where
    available (``target`` is never missing), else two renames through an ``.old`` copy
    (:func:`recover_checkpoint` finishes a swap killed between them). A concurrent writer of
    the same target makes either way retry, so the last complete copy renamed in stays."""
    for _ in range(16):
        if not target.exists():
            try:
                os.rename(new, target)
                return
            except OSError:  # another writer put its copy in first
                if not target.exists():
                    raise
        if _exchange(new, target):
            _step("swapped", target)
            shutil.rmtree(new, ignore_errors=True)  # now the old copy
            return
        old = new.with_name(new.name[: -len("new")] + "old")
        try:
            os.rename(target, old)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        _step("moved-aside", target)
        try:
            os.rename(new, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(old, ignore_errors=True)
            continue
        _step("renamed", target)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise CheckpointError(f"{target}: other writers kept replacing it; not written")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``config.json`` of a checkpoint (no weights are read)."""
    directory = check_input(directory, "checkpoint directory", folder=True)
    path = directory / CONFIG_FILE

    def check_size(size: int) -> None:
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{path}: {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a checkpoint's "
                f"{CONFIG_FILE} may have; not read"
            )

    try:
        data = read_checked(path, check_size)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a checkpoint directory?)") from None
    except OSError as err:  # permission denied, a symlink loop...: not a JSON problem
        raise named(err, path) from None
    try:
        meta = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply to parse)") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an atfnn-fast checkpoint (format != {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {meta.get('version')!r}, this atfnn-fast reads "
            f"version {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    model_class: type[nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
    allow_missing_checksum: bool = False,
) -> Checkpoint:
    """Load a checkpoint into a new ``model_class`` (default :class:`atfnn_fast.ATFNN`).

    Refuses, with a :class:`CheckpointError` naming the file and listing the problems,
    anything that does not match: a missing or wrong checksum, sizes beyond the limits, a
    missing or unexpected key, a shape, a non-finite weight. ``allow_missing_checksum``
    accepts a file without ``weights_sha256`` (only :func:`resave_checkpoint` uses it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    if model_class is None:
        from .model import ATFNN as model_class
    directory = Path(directory)
    meta = read_metadata(directory)
    cfg_path = directory / CONFIG_FILE
    if "model" not in meta:
        raise CheckpointError(f"{cfg_path}: field 'model' is missing")
    config = _parse_field(cfg_path, "model", ATFNNConfig.from_dict, meta["model"])
    labels = meta.get("labels")
    stats = meta.get("norm_stats")
    if stats is not None:
        stats = _parse_field(cfg_path, "norm_stats", NormStats.from_dict, stats)
    features = _parse_field(
        cfg_path, "features", FeatureConfig.from_dict, meta.get("features") or {}
    )
    try:
        config.check_size_limits(f"{cfg_path}: field 'model'")  # before anything is built
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if labels is not None:
        labels = _parse_field(cfg_path, "labels", model_labels, labels, config.num_classes)
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise CheckpointError(
            f"{cfg_path}: field 'extra': expected a JSON object, got {type(extra).__name__}"
        )
    if stats is not None and stats.n_mels != config.n_mels:
        raise CheckpointError(
            f"{cfg_path}: norm_stats has {stats.n_mels} bands, the model config "
            f"n_mels = {config.n_mels}"
        )
    weights = directory / WEIGHTS_FILE
    expected_sha = meta.get("weights_sha256")
    if expected_sha is not None and not (
        isinstance(expected_sha, str) and re.fullmatch(r"[0-9a-f]{64}", expected_sha)
    ):
        raise CheckpointError(
            f"{cfg_path}: field 'weights_sha256': expected 64 lowercase hex digits, got "
            f"{_short_repr(expected_sha)}"
        )
    if not allow_missing_checksum and expected_sha is None:
        raise CheckpointError(
            f"{cfg_path}: has no weights_sha256, so {WEIGHTS_FILE} cannot be verified "
            "(written by an older atfnn-fast, or edited). If you trust this checkpoint, "
            're-save it with: python -c "from atfnn_fast.checkpoint import resave_checkpoint; '
            f'resave_checkpoint({str(directory)!r})"'
        )
    low, high = weights_size_range(config)

    def check_size(size: int) -> None:
        if not low <= size <= high:
            raise CheckpointError(
                f"{weights}: {size:,} bytes, but the model in {CONFIG_FILE} "
                f"({config.parameter_count:,} parameters) implies {low:,} to {high:,}; the "
                "file is corrupted or was replaced (not read)"
            )

    # One read: the checksum and the tensors come from the same bytes, whose size was
    # checked first (a sparse or replaced file is refused before it is hashed)
    try:
        data = read_checked(weights, check_size)
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    except OSError as err:
        raise CheckpointError(f"{weights}: cannot be read ({err.strerror})") from None
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise CheckpointError(
            f"{weights}: SHA-256 differs from the one recorded in {CONFIG_FILE}; "
            "the file is corrupted or was replaced"
        )
    try:
        state = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({err})") from None
    del data
    model = model_class(config)
    expected = model.state_dict()
    problems = [f"missing key {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [
        f"unexpected key {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected
    ]
    problems += [
        f"shape of {k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(
            f"{weights}: does not match a {config.variant} model with the config in "
            f"{CONFIG_FILE}:\n  " + "\n  ".join(problems)
        )
    not_float = [
        f"{k} ({str(state[k].dtype).removeprefix('torch.')})"
        for k in expected
        if not state[k].is_floating_point()
    ]
    if not_float:
        raise CheckpointError(
            f"{weights}: weights must be floating point; these are not: "
            + ", ".join(sorted(not_float))
        )
    bad = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for k, v in state.items()
        if not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"{weights}: non-finite (NaN or Inf) weights in " + ", ".join(sorted(bad))
        )
    model.load_state_dict(state)
    model.to(map_location)
    return Checkpoint(model, config, labels, stats, features, extra)


def _parse_field(cfg_path: Path, name: str, parse, value, *args):
    """``parse(value, *args)`` with any error as a :class:`CheckpointError` naming the file
    and the field."""
    try:
        return parse(value, *args)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: field {name!r}: {err}") from None


def resave_checkpoint(
    directory: str | os.PathLike, output: str | os.PathLike | None = None
) -> Path:
    """Re-save a checkpoint that has no ``weights_sha256`` (an older atfnn-fast wrote it) so
    that it records one; every other check of :func:`load_checkpoint` still applies. Writes
    to ``output`` (default: in place, atomically) and returns it. Only for files you
    trust: the checksum guards against later changes, not earlier ones."""
    ckpt = load_checkpoint(directory, allow_missing_checksum=True)
    return save_checkpoint(
        output if output is not None else directory,
        ckpt.model,
        labels=ckpt.labels,
        norm_stats=ckpt.norm_stats,
        features=ckpt.features,
        extra=ckpt.extra,
    )
