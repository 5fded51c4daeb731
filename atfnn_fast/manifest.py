"""The manifest CSV: the list of labelled utterances that training, evaluation and ONNX
validation read (docs/design.md#features-and-data).

The common format is a manifest CSV with the header ``path,label,speaker[,session]``; paths
are relative to the CSV's folder. UTF-8, with or without a byte-order mark (as spreadsheet
programs save CSV), LF or CRLF line endings. :func:`read_manifest` checks what it reads:

* speaker and session values name fold directories of a training run, so they are data,
  not paths: an absolute path, a value with a path separator (``/`` or ``\\``), ``.`` or
  ``..``, a character
  that is not printable (control characters included), an empty value or one longer than
  255 bytes is refused with its line number (:func:`fold_name_problem`);
* a file listed twice with the same label, speaker and session is a duplicate row: a
  :class:`ManifestWarning` names the lines and the copy is dropped; the same file under two
  speakers (it would leak between training and test folds), or with two labels or two
  sessions, is refused naming both lines;
* a repeated header row (two manifests joined) and two labels that differ only in case
  (``Angry`` and ``angry`` would be two classes) are refused naming the lines.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic


@dataclass(frozen=True)
class Item:
    path: Path  # absolute
    label: str
    speaker: str
    session: str = ""


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the line."""


class ManifestWarning(UserWarning):
    """Something in a manifest that was fixed on reading (duplicate rows dropped)."""


MAX_NAME_BYTES = 255  # the longest file name most file systems take


def fold_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a speaker or session name (they become fold directory
    names), or None when it can."""
    if not value:
        return "is empty"
    if os.path.isabs(value) or value.startswith(("/", "\\")):
        return "is an absolute path"
    if "/" in value or "\\" in value or (os.altsep and os.altsep in value):
        return "contains a path separator"
    if value in (".", ".."):
        return "is a relative path (. or ..)"
    bad = [c for c in value if not c.isprintable()]
    if bad:
        return f"contains a control or non-printable character ({bad[0]!r})"
    if len(value.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def write_manifest(items: list[Item], out: str | os.PathLike) -> Path:
    """Write ``items`` as a manifest CSV (paths relative to its folder), atomically."""
    out = Path(out).resolve()
    if not items:
        raise ManifestError(f"{out}: no utterances to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    with_session = any(item.session for item in items)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "label", "speaker", "session"][: 4 if with_session else 3])
    for item in sorted(items, key=lambda i: str(i.path)):
        row = [os.path.relpath(item.path, out.parent), item.label, item.speaker]
        writer.writerow(row + ([item.session] if with_session else []))
    return write_atomic(out, text.getvalue().encode("utf-8"))


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Read a manifest CSV; errors name the file and the line (see the module docstring for
    what is checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    items: list[Item] = []
    first: dict[Path, tuple[int, Item]] = {}  # file -> (line, item) of its first row
    duplicates: list[tuple[int, int]] = []
    spellings: dict[str, tuple[str, int]] = {}  # label.casefold() -> (label, first line)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or header[:3] != ["path", "label", "speaker"]:
                raise ManifestError(
                    f"{path}: the header must be path,label,speaker[,session], got {header}"
                )
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if row[:3] == ["path", "label", "speaker"]:
                    raise ManifestError(
                        f"{path}:{line}: the header row path,label,speaker appears again "
                        "(two manifests joined?); keep only the first"
                    )
                if len(row) != len(header) or not all(v.strip() for v in row[:3]):
                    raise ManifestError(f"{path}:{line}: expected {len(header)} fields, got {row}")
                session = row[3] if len(row) > 3 else ""
                for column, value in (("speaker", row[2]), ("session", session)):
                    problem = fold_name_problem(value)
                    if problem and (value or column == "speaker"):
                        raise ManifestError(
                            f"{path}:{line}: {column} {value!r} {problem}; speaker and "
                            "session values name the fold directories of a training run"
                        )
                item = Item((path.parent / row[0]).resolve(), row[1], row[2], session)
                if item.path in first:
                    other, seen = first[item.path]
                    if seen == item:
                        duplicates.append((line, other))
                        continue
                    what = (
                        "two speakers"
                        if seen.speaker != item.speaker
                        else "two labels"
                        if seen.label != item.label
                        else "two sessions"
                    )
                    raise ManifestError(
                        f"{path}: {row[0]} is listed under {what}: line {other} "
                        f"({seen.label}, {seen.speaker}{', ' + seen.session if seen.session else ''})"
                        f" and line {line} ({item.label}, {item.speaker}"
                        f"{', ' + item.session if item.session else ''})"
                    )
                first[item.path] = (line, item)
                items.append(item)
                spelled = spellings.setdefault(item.label.casefold(), (item.label, line))
                if spelled[0] != item.label:
                    raise ManifestError(
                        f"{path}: labels {spelled[0]!r} (line {spelled[1]}) and {item.label!r} "
                        f"(line {line}) differ only in case; they would be two classes. Use one "
                        "spelling"
                    )
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not items:
        raise ManifestError(f"{path}: no utterances")
    if duplicates:
        listed = ", ".join(f"line {a} repeats line {b}" for a, b in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        warnings.warn(
            f"{path}: {len(duplicates)} duplicate row(s) dropped ({listed}{more})",
            ManifestWarning,
            stacklevel=2,
        )
    return items


def labels_of(items: list[Item]) -> list[str]:
    return sorted({item.label for item in items})
