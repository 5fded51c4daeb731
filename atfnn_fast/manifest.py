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
* a repeated header row (two manifests joined) is refused naming the line, and so is a
  row that is not CSV (a field over csv's field size limit: a quote left open);
* labels follow the one label rule (:func:`atfnn_fast.labels.normalize_labels`): NFC and
  surrounding whitespace stripped (``happy`` and ``happy `` are one class), no control,
  bidi or zero-width character, and two labels that differ only in case (``Angry`` and
  ``angry`` would be two classes) are refused naming the lines;
* a row whose path is a symbolic link loop is kept as written (absolute), so that reading
  it fails naming the loop, as any unreadable file does.

:func:`missing_files` says, before a training or an evaluation starts, how many listed
files cannot be read.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from .files import absolute, check_input, named, write_atomic
from .labels import LabelError, normalize_labels


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
    check_input(path, "manifest")
    rows: list[tuple[int, list[str]]] = []  # (line, [path, label, speaker, session])
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            line = 1
            try:
                header = next(reader, None)
                if header is None or header[:3] != ["path", "label", "speaker"]:
                    raise ManifestError(
                        f"{path}: the header must be path,label,speaker[,session], got {header}"
                    )
                for row in reader:
                    line = reader.line_num
                    if not row:
                        continue
                    rows.append((line, _checked_row(path, line, header, row)))
            except csv.Error as err:
                raise ManifestError(
                    f"{path}:{reader.line_num}: not a CSV row ({err}; a field longer than "
                    f"{csv.field_size_limit()} characters is often a quote left open)"
                ) from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise named(err, path) from None
    if not rows:
        raise ManifestError(f"{path}: no utterances")
    try:  # the one label rule (atfnn_fast.labels): `happy ` is `happy`, `Sad` is refused
        labels = normalize_labels(
            [row[1] for _, row in rows], unique=False, noun="line", names=[n for n, _ in rows]
        )
    except LabelError as err:
        raise ManifestError(f"{path}: {err}") from None
    items: list[Item] = []
    first: dict[Path, tuple[int, Item]] = {}  # file -> (line, item) of its first row
    duplicates: list[tuple[int, int]] = []
    for (line, row), label in zip(rows, labels, strict=True):
        item = Item(absolute(path.parent / row[0]), label, row[2], row[3])
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
    if duplicates:
        listed = ", ".join(f"line {a} repeats line {b}" for a, b in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        warnings.warn(
            f"{path}: {len(duplicates)} duplicate row(s) dropped ({listed}{more})",
            ManifestWarning,
            stacklevel=2,
        )
    return items


def _checked_row(path: Path, line: int, header: list[str], row: list[str]) -> list[str]:
    """``[path, label, speaker, session]`` of a data row, its fields checked."""
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
    return [row[0], row[1], row[2], session]


def missing_files(items: list[Item]) -> str | None:
    """Checked before any work that reads every file of a manifest (training,
    evaluation): how many of its files cannot be read as files, with the first few and
    why, or None when all are there. One stat per file."""
    problems: list[str] = []
    count = 0
    for item in items:
        try:
            if stat.S_ISREG(os.stat(item.path).st_mode):
                continue
            why = "not a regular file"
        except OSError as err:
            why = err.strerror or str(err)
        count += 1
        if len(problems) < 3:
            problems.append(f"{item.path} ({why})")
    if not count:
        return None
    more = f" and {count - len(problems)} more" if count > len(problems) else ""
    return (
        f"{count} of the {len(items)} files it lists cannot be read: " + ", ".join(problems) + more
    )


def labels_of(items: list[Item]) -> list[str]:
    return sorted({item.label for item in items})
