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
* Output: a text line per file, a JSON list (``--json``: ``path``, ``label``, ``scores``,
  and ``warning`` for a silent or very short file (:func:`hearing_problem`, also said on
  stderr);
  a failure ``path``, ``error``) or CSV (``--csv``: ``path,label,error`` and one score
  column per label). Text and CSV go through :mod:`atfnn_fast.text` (escaped so that no
  control, bidi or zero-width character gets out raw and two names never print alike; CSV
  cells that a spreadsheet would run as formulas get a leading ``'``).
* A run directory or a fold directory given as a checkpoint is refused with the ``best``
  checkpoints it holds (:func:`checkpoint_hint`).
* ``--timeline`` (:func:`timeline_files`): a row per segment instead of a line per file
  (``path, segment, start, end, label`` and the scores), as text, JSON lines or CSV, each
  row printed as its batch finishes; ``--smooth N`` averages each row with its neighbours."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from atfnn_fast.export.validate import PROVIDERS
from atfnn_fast.features import AUDIO_SUFFIXES
from atfnn_fast.inference import DEFAULT_BATCH_SIZE, CheckpointPredictor, Prediction
from atfnn_fast.text import csv_cell, one_line, printable
from atfnn_fast.walk import find_files, warn_skipped

# --provider: "auto" (CUDA if onnxruntime-gpu is installed) or a name of PROVIDERS, which
# owns the mapping to ONNX Runtime's execution providers
PROVIDER_CHOICES = ("auto", *PROVIDERS)


def load_predictor(
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    provider: str = "auto",
    threads: int = 0,
):
    """The predictor of ``checkpoint`` (``device``) or of ``onnx`` (``provider``, ONNX
    Runtime's ``threads``, 0: its default): exactly one of them."""
    if (checkpoint is None) == (onnx is None):
        raise ValueError("give exactly one of checkpoint and onnx")
    if checkpoint is not None:
        hint = checkpoint_hint(checkpoint)
        if hint:
            raise ValueError(hint)
    if onnx is not None:
        from atfnn_fast.export import OnnxPredictor

        return OnnxPredictor(onnx, batch_size=batch_size, provider=provider, threads=threads)
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


# a file whose peak stays below this (-60 dBFS) has nothing to hear
SILENT_PEAK = 1e-3
# a file shorter than this fraction of one segment is mostly padding to the model
SHORT_FRACTION = 0.5


def hearing_problem(path: str | os.PathLike, predictor) -> str | None:
    """Why ``predictor``'s label for ``path`` says little, or None: the file is silent
    (peak below -60 dBFS) or shorter than half a segment (the model sees mostly padding).
    The length comes from the file's header; the audio is read again only until a sample
    reaches :data:`SILENT_PEAK` (the first block, for anything but silence). A file that
    cannot be read again gets no warning (its label stands)."""
    import contextlib

    import numpy as np

    from atfnn_fast.features import FeatureConfig, _open_audio, iter_audio

    config = getattr(predictor, "config", None)
    if config is None or not isinstance(path, str | os.PathLike):  # audio bytes (serve)...
        return None
    features = getattr(predictor, "features", None) or FeatureConfig()
    rate = features.sample_rate
    try:
        with _open_audio(Path(path)) as handle:  # the readers' checks: no FIFO can block
            seconds = handle.frames / handle.samplerate
        peak = 0.0
        with contextlib.closing(iter_audio(path, rate)) as blocks:
            for block in blocks:
                block = np.asarray(block)
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
                if peak >= SILENT_PEAK:
                    break
    except (OSError, RuntimeError, ValueError):
        return None
    segment = config.frames * features.hop_length / rate
    if peak < SILENT_PEAK:
        level = "digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.0f} dBFS"
        return (
            f"silent ({level}, {seconds:.2f} s): there was nothing to hear; the label means nothing"
        )
    if seconds < SHORT_FRACTION * segment:
        return (
            f"very short ({seconds:.2f} s, a segment is {segment:.2f} s): the model heard "
            "mostly padding; the label means little"
        )
    return None


def file_entry(
    predictor, path: str | os.PathLike, problem: str | None = None, debug: bool = False
) -> tuple[dict, str | None]:
    """One file's result as ``(entry, text)``: the prediction's ``to_dict()`` and its text
    line, or for a file that fails (``problem``: its source's error, from
    :func:`expand_sources`) ``{"path", "error"}`` and None; the others' runs go on. A file
    whose scores are not finite is such a failure
    (:class:`atfnn_fast.inference.NonFiniteOutput`). ``debug`` re-raises instead. The one
    place a file becomes a row: ``predict``, ``predict --ray`` (:mod:`atfnn_fast.app.scale`)
    and ``serve`` (:mod:`atfnn_fast.app.serve`) all call it."""
    try:
        if problem is not None:
            raise FileNotFoundError(problem)
        prediction = predictor.predict_file(path)
        entry, text = prediction.to_dict(), str(prediction)
        warning = hearing_problem(path, predictor)
        if warning is not None:
            entry["warning"] = warning
            print(
                f"atfnn-fast: warning: {printable(str(path))}: {warning}",
                file=sys.stderr,
                flush=True,
            )
        return entry, text
    except Exception as err:  # one file's failure (memory included) spares the others
        if debug:
            raise
        return {"path": str(path), "error": error_message(path, err)}, None


def error_message(path, err: BaseException) -> str:
    """The one-line error of a file that failed, starting with its path."""
    message = one_line(err)
    if isinstance(err, MemoryError):
        message = f"out of memory ({message}); try a smaller --batch-size"
    if not message.startswith((str(path), str(Path(path)))):
        message = f"{path}: {message}"
    return message


class RowWriter:
    """``predict``'s output on stdout, a row per file in the order given: a line of text, an
    entry of a JSON list printed progressively (``json_list``: ``[`` first, ``]`` last), or
    a CSV row (``csv_rows``, after a header ``path,label,<one column per label>,error``). An
    error entry also gets its line on stderr. The JSON is strict (``allow_nan=False``)."""

    def __init__(self, labels: Sequence[str], json_list: bool = False, csv_rows: bool = False):
        self.labels = list(labels)
        self.json_list = json_list
        self.rows = 0
        self.failed = 0
        self.writer = None
        if json_list:
            sys.stdout.write("[")
        elif csv_rows:
            self.writer = csv.writer(sys.stdout, lineterminator="\n")
            self.writer.writerow(["path", "label", *map(csv_cell, self.labels), "error"])
            sys.stdout.flush()

    def write(self, entry: dict, text: str | None = None) -> None:
        if "error" in entry:
            self.failed += 1
            line = printable(entry["error"], backslash=False)
            print(f"atfnn-fast: error: {line}", file=sys.stderr, flush=True)
        if self.json_list:
            sys.stdout.write(
                ("\n  " if self.rows == 0 else ",\n  ") + json.dumps(entry, allow_nan=False)
            )
        elif self.writer is not None:
            scores = entry.get("scores", {})
            self.writer.writerow(
                [
                    csv_cell(entry["path"]),
                    csv_cell(entry.get("label", "")),
                    *(f"{scores[k]:.6f}" if k in scores else "" for k in self.labels),
                    csv_cell(entry.get("error", "")),
                ]
            )
        elif "error" not in entry:
            if text is None:
                text = str(Prediction(entry["path"], entry["label"], entry["scores"]))
            print(printable(text))
        self.rows += 1
        sys.stdout.flush()

    def close(self) -> int:
        """Ends the JSON list; returns the exit code: 1 if any file failed, else 0."""
        if self.json_list:
            sys.stdout.write("\n]\n" if self.rows else "]\n")
            sys.stdout.flush()
        return 1 if self.failed else 0


def predict_files(
    predictor,
    files: Sequence[str | os.PathLike],
    json_list: bool = False,
    debug: bool = False,
    csv_rows: bool = False,
) -> int:
    """Each file (folders and manifests expanded by :func:`expand_sources`) is reported as
    soon as it is done (:func:`file_entry`, written by :class:`RowWriter`). A file that
    fails gets an error line on stderr and an entry ``{"path", "error"}`` (a CSV row with
    only ``path`` and ``error``); the others are still labelled. Returns the exit code: 1
    if any file failed, else 0. ``debug`` re-raises the first failure instead."""
    out = RowWriter(getattr(predictor, "labels", []), json_list=json_list, csv_rows=csv_rows)
    for path, problem in expand_sources(files):
        out.write(*file_entry(predictor, path, problem, debug))
    return out.close()


def file_error(err: BaseException, path: str) -> str:
    """One file's failure in :func:`timeline_files` as one line naming the file, printed on
    stderr as ``atfnn-fast: error: ...``; returned for the file's error entry: the
    message of :func:`error_message`, as :func:`predict_files` gives."""
    message = error_message(path, err)
    print(f"atfnn-fast: error: {printable(message, backslash=False)}", file=sys.stderr, flush=True)
    return message


TIMELINE_COLUMNS = ("path", "segment", "start", "end", "label")  # then a score per label, error


def timeline_files(
    predictor,
    files: Sequence[str | os.PathLike],
    json_lines: bool = False,
    csv_rows: bool = False,
    smooth: int = 1,
    debug: bool = False,
) -> int:
    """Each file's timeline (``predictor.timeline``: a row per segment), each row printed
    as soon as its batch is done, so a file of any length streams in bounded memory: a
    line of text, a JSON object per line (``json_lines``: ``path``, ``segment``, ``start``,
    ``end`` in seconds, ``label``, ``scores``) or a CSV row (``csv_rows``, after a header
    ``path,segment,start,end,label,<one column per label>,error``). ``smooth`` (odd, 1 =
    off) averages each row's scores with its ``smooth // 2`` neighbours on either side. A
    file that fails gets an error line on stderr and an entry ``{"path", "error"}`` (a CSV
    row with only ``path`` and ``error``) after any rows it gave; the others still run.
    Returns the exit code: 1 if any file failed, else 0. ``debug`` re-raises instead."""
    failed = 0
    labels = list(getattr(predictor, "labels", []))
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if csv_rows and not json_lines else None
    if writer is not None:
        writer.writerow([*TIMELINE_COLUMNS, *labels, "error"])
        out.flush()
    for path, problem in expand_sources(files):
        try:
            if problem is not None:
                raise FileNotFoundError(problem)
            for row in predictor.timeline(path, smooth=smooth):
                if json_lines:
                    out.write(json.dumps(row.to_dict(), allow_nan=False) + "\n")
                elif writer is not None:
                    writer.writerow(
                        [
                            csv_cell(row.file),
                            row.segment,
                            f"{row.start:.3f}",
                            f"{row.end:.3f}",
                            csv_cell(row.label),
                            *(f"{row.scores[k]:.6f}" for k in labels),
                            "",
                        ]
                    )
                else:
                    out.write(printable(str(row)) + "\n")
                out.flush()
        except BrokenPipeError:  # stdout's reader is gone (`| head`): not this file's failure
            raise
        except Exception as err:  # one file's failure spares the others
            if debug:
                raise
            message = file_error(err, path)
            if json_lines:
                out.write(json.dumps({"path": str(path), "error": message}) + "\n")
            elif writer is not None:
                writer.writerow(
                    [csv_cell(str(path)), *[""] * (len(TIMELINE_COLUMNS) - 1)]
                    + [""] * len(labels)
                    + [csv_cell(message)]
                )
            out.flush()
            failed += 1
    return 1 if failed else 0
