"""``atfnn-fast predict``: label audio files with a checkpoint (PyTorch,
:class:`atfnn_fast.inference.CheckpointPredictor`) or an exported graph (ONNX Runtime,
:class:`atfnn_fast.export.OnnxPredictor`), and report each file as soon as it is done.

Both predictors take the same core path (features in blocks, segments, the mean of the
segments' probabilities: :mod:`atfnn_fast.inference`); this module only picks one and
prints.

* What ran is said on stderr before the first file (:func:`describe`: the model, and ONNX
  Runtime's execution provider or PyTorch's device), so stdout stays machine-readable.
* Sources are expanded like ``export --audio`` (:func:`expand_sources`): a folder gives its
  audio files (all levels, symbolic links to folders followed, sorted:
  :func:`atfnn_fast.walk.find_files`), a ``.csv`` the files of a manifest; a missing file,
  an empty folder or a sub-folder that cannot be listed is that source's error, the others
  still run; a folder reached twice (a link loop) is walked once, with a warning.
* Output: a text line per file, a JSON list (``--json``: ``path``, ``label``, ``scores``;
  a failure ``path``, ``error``) or CSV (``--csv``: ``path,label,error`` and one score
  column per label). Text and CSV go through :mod:`atfnn_fast.text` (escaped so that no
  control, bidi or zero-width character gets out raw and two names never print alike; CSV
  cells that a spreadsheet would run as formulas get a leading ``'``).
* A run directory or a fold directory given as a checkpoint is refused with the ``best``
  checkpoints it holds (:func:`checkpoint_hint`)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from atfnn_fast.export.validate import AUDIO_SUFFIXES, PROVIDERS
from atfnn_fast.inference import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, CheckpointPredictor
from atfnn_fast.text import csv_cell, one_line, printable
from atfnn_fast.walk import find_files, warn_skipped

# --provider: "auto" (CUDA if onnxruntime-gpu is installed) or a name of PROVIDERS, which
# owns the mapping to ONNX Runtime's execution providers
PROVIDER_CHOICES = ("auto", *PROVIDERS)


def load_predictor(
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = DEFAULT_DEVICE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    provider: str = "auto",
):
    """The predictor of ``checkpoint`` (``device``) or of ``onnx`` (``provider``): exactly
    one of them."""
    if (checkpoint is None) == (onnx is None):
        raise ValueError("give exactly one of checkpoint and onnx")
    if checkpoint is not None:
        hint = checkpoint_hint(checkpoint)
        if hint:
            raise ValueError(hint)
    if onnx is not None:
        from atfnn_fast.export import OnnxPredictor

        return OnnxPredictor(onnx, batch_size=batch_size, provider=provider)
    return CheckpointPredictor(checkpoint, device=device, batch_size=batch_size)


def checkpoint_hint(path: str | os.PathLike) -> str | None:
    """For a directory that is not a checkpoint but holds ``best`` checkpoints (a fold
    directory, or a run directory of ``--fold all``), the message naming them; else None."""
    path = Path(path)
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = [path / "best"] if (path / "best" / "config.json").is_file() else []
    found += sorted(p.parent for p in path.glob("*/best/config.json"))
    if not found:
        return None
    names = ", ".join(str(p) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    kind = "a fold directory of `train`" if path / "best" in found else "a run directory of `train`"
    return f"{path}: {kind}, not a checkpoint; give its best checkpoint: {names}"


def describe(predictor) -> str:
    """What runs: ``model.onnx on ONNX Runtime CPUExecutionProvider`` or ``checkpoint
    ckpt/ on PyTorch cpu (2 threads)``."""
    session = getattr(predictor, "session", None)
    if session is not None:
        providers = session.get_providers()
        rest = f" (then {', '.join(providers[1:])})" if len(providers) > 1 else ""
        return f"{predictor.path} on ONNX Runtime {providers[0]}{rest}"
    import torch

    device = predictor.device
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    return f"checkpoint {predictor.directory} on PyTorch {device} ({where})"


def expand_sources(sources: Sequence[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """``(path, error or None)`` per audio file: a folder gives its audio files (recursively,
    sorted), a ``.csv`` manifest its files, anything else itself (a missing file fails when
    it is read). A folder without audio or an unreadable manifest is one ``error`` entry."""
    out: list[tuple[str, str | None]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():  # walked without recursion, links followed (atfnn_fast.walk)
            found, skipped = find_files(path, AUDIO_SUFFIXES)
            warn_skipped([s for s in skipped if not s.lost])
            lost = [(str(s.path), f"{s.path}: folder skipped, {s.why}") for s in skipped if s.lost]
            if not found and not lost:
                out.append((str(source), f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)})"))
            out += [(str(p), None) for p in found] + lost
        elif path.suffix.lower() == ".csv" and path.is_file():
            from atfnn_fast.manifest import read_manifest

            try:
                out += [(str(item.path), None) for item in read_manifest(path)]
            except (OSError, ValueError) as err:
                out.append((str(source), one_line(err)))
        else:
            out.append((str(source), None))
    return out


def predict_files(
    predictor,
    files: Sequence[str | os.PathLike],
    json_list: bool = False,
    debug: bool = False,
    csv_rows: bool = False,
) -> int:
    """Each file (folders and manifests expanded by :func:`expand_sources`) is reported as
    soon as it is done: a line of text, an entry of a JSON list that is printed
    progressively (``json_list``: ``[`` first, ``]`` last), or a CSV row (``csv_rows``,
    after a header ``path,label,<one column per label>,error``). A file that fails gets an
    error line on stderr and an entry ``{"path", "error"}`` (a CSV row with only ``path``
    and ``error``); the others are still labelled. A file whose scores are not finite is
    such a failure (:class:`atfnn_fast.inference.NonFiniteOutput`), and the JSON is strict
    (``allow_nan=False``). Returns the exit code: 1 if any file failed, else 0. ``debug``
    re-raises the first failure instead."""
    failed = 0
    entries = expand_sources(files)
    labels = list(getattr(predictor, "labels", []))
    writer = None
    if json_list:
        sys.stdout.write("[")
    elif csv_rows:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", *map(csv_cell, labels), "error"])
        sys.stdout.flush()
    for n, (path, problem) in enumerate(entries):
        try:
            if problem is not None:
                raise FileNotFoundError(problem)
            prediction = predictor.predict_file(path)
            entry, text = prediction.to_dict(), str(prediction)
        except Exception as err:  # one file's failure (memory included) spares the others
            if debug:
                raise
            message = one_line(err)
            if isinstance(err, MemoryError):
                message = f"out of memory ({message}); try a smaller --batch-size"
            if not message.startswith((str(path), str(Path(path)))):
                message = f"{path}: {message}"
            line = printable(message, backslash=False)
            print(f"atfnn-fast: error: {line}", file=sys.stderr, flush=True)
            entry, text = {"path": str(path), "error": message}, None
            failed += 1
        if json_list:
            sys.stdout.write(("\n  " if n == 0 else ",\n  ") + json.dumps(entry, allow_nan=False))
        elif writer is not None:
            scores = entry.get("scores", {})
            writer.writerow(
                [
                    csv_cell(entry["path"]),
                    csv_cell(entry.get("label", "")),
                    *(f"{scores[k]:.6f}" if k in scores else "" for k in labels),
                    csv_cell(entry.get("error", "")),
                ]
            )
        elif text is not None:
            print(printable(text))
        sys.stdout.flush()
    if json_list:
        sys.stdout.write("\n]\n" if entries else "]\n")
        sys.stdout.flush()
    return 1 if failed else 0
