"""Walking a folder for audio files (docs/design.md#folders): ``predict``, ``export
--audio`` and ``datasets prepare`` list folders with :func:`find_files` only.

* No recursion on the call stack: an explicit stack of folders, ``os.scandir`` on each,
  so a tree of any depth the file system allows is walked (``Path.rglob`` of Python 3.11
  ends in a ``RecursionError`` some 1,000 levels down).
* Symbolic links to folders are followed (a corpus assembled from links to speaker
  folders is the corpus), with loop detection: each folder is walked once, known by its
  ``(st_dev, st_ino)``; a folder reached again (a link back to an ancestor, or a second
  link to one folder) is a :class:`Skipped` entry that loses nothing.
* Nothing is dropped silently: a folder that cannot be listed (permission denied,
  gone meanwhile, a dangling or looping link to a would-be folder) is a :class:`Skipped`
  entry that may lose files; a name with a wanted suffix is listed whatever it is (a
  dangling link, a FIFO...), so reading it fails naming it.
* Files are returned sorted, so runs are reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Skipped:
    """A folder :func:`find_files` did not walk: ``why`` in words; ``lost`` when files under
    it may be missing from the result (else it was walked under another name)."""

    path: Path
    why: str
    lost: bool

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def find_files(
    root: str | os.PathLike, suffixes: tuple[str, ...]
) -> tuple[list[Path], list[Skipped]]:
    """``(files, skipped)``: every entry under ``root`` whose name ends in one of
    ``suffixes`` (lower-case, with the dot; compared case-insensitively) and that is not a
    folder, sorted; and the folders that were not walked (see the module docstring)."""
    root = Path(root)
    st = os.stat(root)  # the caller has checked it is a folder; errors are the caller's
    seen: dict[tuple[int, int], Path] = {(st.st_dev, st.st_ino): root}
    stack = [root]
    files: list[Path] = []
    skipped: list[Skipped] = []
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError as err:
            skipped.append(Skipped(folder, f"cannot be listed ({err.strerror or err})", True))
            continue
        for entry in listed:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows a symbolic link
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    info = entry.stat()
                except OSError as err:
                    skipped.append(Skipped(path, f"cannot be read ({err.strerror or err})", True))
                    continue
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    skipped.append(
                        Skipped(path, f"the folder {seen[key]} again (walked once)", False)
                    )
                    continue
                seen[key] = path
                stack.append(path)
            elif entry.name.lower().endswith(suffixes):
                files.append(path)
            elif entry.is_symlink() and _dangling_folder_link(path):
                skipped.append(Skipped(path, "a symbolic link that cannot be followed", True))
    files.sort()
    skipped.sort(key=lambda s: s.path)
    return files, skipped


def _dangling_folder_link(path: Path) -> bool:
    """A link whose target cannot be looked at (dangling, a loop, no permission): it may
    have been a folder. A link to a file or other non-folder is not reported."""
    try:
        os.stat(path)
    except OSError:
        return True
    return False


class FolderWarning(UserWarning):
    """A folder that was not walked (one line naming it; see :class:`Skipped`)."""


def warn_skipped(skipped: list[Skipped], category: type[Warning] = FolderWarning) -> None:
    """One warning per folder not walked."""
    import warnings

    for entry in skipped:
        what = "" if entry.lost else "; nothing is missed"
        warnings.warn(f"{entry.path}: skipped, {entry.why}{what}", category, stacklevel=3)
