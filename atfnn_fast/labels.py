"""Class labels: one rule, applied where labels enter the package (docs/design.md#labels):
the manifest (:func:`atfnn_fast.manifest.read_manifest`), a checkpoint's ``config.json``
(:func:`atfnn_fast.checkpoint.load_checkpoint`) and an ONNX file's ``atfnn.labels``
(:func:`atfnn_fast.export.onnx_export.read_metadata`), and the labels given to
``save_checkpoint`` and ``export_onnx``.

:func:`normalize_labels` is that rule:

* each label is normalised: Unicode NFC (the NFC and NFD spellings of one word are one
  label) and surrounding whitespace stripped (``happy`` and ``happy `` are one label);
* a label that is not a string, is empty, or holds a character that would reach a
  terminal, a CSV or a log as something else is refused: control characters (ESC, CR,
  LF, tab...), format characters (bidi controls, zero-width characters, the byte-order
  mark), line and paragraph separators, spaces other than U+0020, surrogates, private-use
  and unassigned code points;
* two different labels equal ignoring case (compared in NFKC case-folded form, so ``sad``,
  ``Sad`` and ``SAD``, and the full-width forms, are one) are refused: they would be two
  classes that a reader takes for one;
* with ``unique=True`` (a model's outputs) the same label twice is refused too; with
  ``unique=False`` (a manifest's rows) repeats are the same class.

Errors are :class:`LabelError` (a ValueError) naming the entry (``name 2``, or what the
caller passes, e.g. ``line 7``) and the problem.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

_REFUSED = {
    "Cc": "a control character",
    "Cf": "a format character (bidi control or zero-width)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than U+0020",
    "Cs": "a surrogate (bytes that are not UTF-8)",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
}
MAX_LABEL_CHARS = 200


class LabelError(ValueError):
    """A label that cannot be used; the message names the entry and the problem."""


def normalize_label(value: object) -> str:
    """NFC and surrounding whitespace stripped; :class:`LabelError` (without an entry
    name) for what :func:`normalize_labels` refuses in a single label."""
    if not isinstance(value, str):
        raise LabelError(f"must be a string, got {value!r}")
    label = unicodedata.normalize("NFC", value).strip()
    if not label:
        raise LabelError(f"is empty or blank ({value!r})")
    for ch in label:
        category = unicodedata.category(ch)
        if category in _REFUSED and ch != " ":
            raise LabelError(
                f"{label!r} holds {_REFUSED[category]} (U+{ord(ch):04X}); labels "
                "reach terminals, CSV files and logs, so they may not"
            )
    if len(label) > MAX_LABEL_CHARS:
        raise LabelError(f"is longer than {MAX_LABEL_CHARS} characters ({len(label)})")
    return label


def _key(label: str) -> str:
    return unicodedata.normalize("NFKC", label).casefold()


def normalize_labels(
    values: Sequence[object],
    *,
    unique: bool = True,
    noun: str = "name",
    names: Sequence[object] | None = None,
) -> list[str]:
    """Every value through :func:`normalize_label`, then the set checked (see the module
    docstring); returns the normalised labels in order. Errors call entry ``i``
    ``f"{noun} {names[i]}"`` (default: its index), e.g. ``name 2`` or ``line 7``."""
    labels: list[str] = []
    first: dict[str, int] = {}  # case-folded form -> index of its first entry

    def name(i: int) -> object:
        return names[i] if names is not None else i

    for i, value in enumerate(values):
        try:
            label = normalize_label(value)
        except LabelError as err:
            raise LabelError(f"{noun} {name(i)} {err}") from None
        j = first.setdefault(_key(label), i)
        if j != i:
            other = labels[j]
            if other != label:
                raise LabelError(
                    f"labels {other!r} ({noun} {name(j)}) and {label!r} "
                    f"({noun} {name(i)}) differ only in case; they would be two classes. Use "
                    "one spelling"
                )
            if unique:
                raise LabelError(
                    f"{noun}s {name(j)} and {name(i)} are the same ({label!r}); "
                    "names must be unique"
                )
        labels.append(label)
    return labels
