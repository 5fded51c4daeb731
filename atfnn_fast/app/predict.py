"""``atfnn-fast predict``: label audio files with a checkpoint (PyTorch,
:class:`atfnn_fast.inference.CheckpointPredictor`) or an exported graph (ONNX Runtime,
:class:`atfnn_fast.export.OnnxPredictor`), and report each file as soon as it is done.

Both predictors take the same core path (features in blocks, segments, the mean of the
segments' probabilities: :mod:`atfnn_fast.inference`); this module only picks one and
prints."""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence

from atfnn_fast.export.validate import PROVIDERS
from atfnn_fast.inference import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, CheckpointPredictor

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
    if onnx is not None:
        from atfnn_fast.export import OnnxPredictor

        return OnnxPredictor(onnx, batch_size=batch_size, provider=provider)
    return CheckpointPredictor(checkpoint, device=device, batch_size=batch_size)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (the command line's error format)."""
    text = str(err).strip() or type(err).__name__
    text = re.sub(r":\s*\n\s*", ": ", text)
    return re.sub(r"\s*\n\s*", "; ", text)


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (decoded by Python as
    lone surrogates) written as ``\\xNN`` and control characters and line separators
    (newline, carriage return, tab, escape, U+2028...) as ``\\n``, ``\\r``, ``\\t``,
    ``\\x1b``, ``\\u2028``, so printing never fails and one file stays one line whatever
    its name holds (the JSON output escapes them its own way)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in text
    )


def predict_files(
    predictor, files: Sequence[str | os.PathLike], json_list: bool = False, debug: bool = False
) -> int:
    """Each file is reported as soon as it is done: a line of text, or (``json_list``) an
    entry of a JSON list that is printed progressively (``[`` first, ``]`` last). A file
    that fails gets an error line on stderr and, with ``json_list``, an entry
    ``{"path", "error"}``; the others are still labelled. A file whose scores are not
    finite is such a failure (:class:`atfnn_fast.inference.NonFiniteOutput`), and the JSON
    is strict (``allow_nan=False``). Returns the exit code: 1 if any file failed, else 0.
    ``debug`` re-raises the first failure instead."""
    failed = 0
    if json_list:
        sys.stdout.write("[")
    for n, path in enumerate(files):
        try:
            prediction = predictor.predict_file(path)
            entry, text = prediction.to_dict(), str(prediction)
        except Exception as err:  # one file's failure (memory included) spares the others
            if debug:
                raise
            message = one_line(err)
            if isinstance(err, MemoryError):
                message = f"out of memory ({message}); try a smaller --batch-size"
            if not message.startswith(str(path)):
                message = f"{path}: {message}"
            print(f"atfnn-fast: error: {printable(message)}", file=sys.stderr, flush=True)
            entry, text = {"path": str(path), "error": message}, None
            failed += 1
        if json_list:
            sys.stdout.write(("\n  " if n == 0 else ",\n  ") + json.dumps(entry, allow_nan=False))
            sys.stdout.flush()
        elif text is not None:
            print(printable(text), flush=True)
    if json_list:
        sys.stdout.write("\n]\n" if files else "]\n")
        sys.stdout.flush()
    return 1 if failed else 0
