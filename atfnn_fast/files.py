"""Writing files safely (docs/design.md#files-and-crashes): atomic writes under private,
unique, short temporary names, modes from the umask, output targets checked before any work,
and OS errors as one line naming the path and the reason.

* :func:`temp_path`: ``.<name>.<12 hex digits>.<tag>`` in the target's folder. The random part
  makes it private to one writer (created with ``O_EXCL``), so two writers of one output
  never share a temporary file; a name longer than 40 bytes is cut to 32 bytes plus a hash of
  the whole name, so the temporary name stays under 64 bytes whatever the target's (legal)
  name is.
* :func:`write_atomic`: the bytes go to a new temporary file (mode ``0o666`` less the umask,
  as ``open()`` would create it), are fsynced, renamed over the target and the folder is
  fsynced. Two concurrent writers of one target: each renames a complete file, so the target
  holds the last complete writer's file, never a mix.
* :func:`check_output`: called before any work; refuses a target that is a directory, a
  device, a FIFO or a socket (never replaced, never written into), a target inside or equal
  to an input, a name longer than the file system allows, and a folder where no file can be
  created (a probe file is created and removed).
* :func:`named`: an ``OSError`` with the path it concerns (a write error has none), so the
  command line prints ``<path>: <reason>``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from pathlib import Path

from .errors import UsageError

SHORT_NAME_BYTES = 40


def short_name(name: str) -> str:
    """``name`` if it is at most 40 bytes, else its first 32 bytes and a hash of it all."""
    raw = os.fsencode(name)
    if len(raw) <= SHORT_NAME_BYTES:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:7]
    return os.fsdecode(raw[:32]) + "~" + digest


def temp_path(target: str | os.PathLike, tag: str = "tmp") -> Path:
    """A fresh private temporary name next to ``target`` (see the module docstring)."""
    target = Path(target)
    return target.with_name(f".{short_name(target.name)}.{uuid.uuid4().hex[:12]}.{tag}")


def named(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` (same class and errno) naming ``path``: the file the user asked for, not a
    temporary one of ours (a write error names no file at all)."""
    if err.strerror is None:
        return err
    return type(err)(err.errno, err.strerror, os.fspath(path))


def describe(err: OSError) -> str:
    """``<path>: <reason>`` (``[Errno 28] No space left on device`` -> the reason alone)."""
    if err.strerror is None:
        return str(err)
    path = err.filename
    return f"{os.fsdecode(path)}: {err.strerror}" if path is not None else err.strerror


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, name_in_errors: str | os.PathLike | None = None) -> None:
    """Create ``path`` (must not exist; mode from the umask), write ``data``, fsync."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise named(err, name_in_errors or path) from err


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); errors name
    ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_new(tmp, data, path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        _discard(tmp)
        raise named(err, path) from err
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # Python < 3.13: a symlink loop
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path)) from None


def check_output(
    path: str | os.PathLike,
    *,
    inputs: tuple[str | os.PathLike, ...] = (),
    option: str = "--output",
    directory: bool = False,
) -> Path:
    """Refuse an output target before any work (see the module docstring); creates its
    folder (``directory``: the target itself is a folder of outputs) and returns the path.
    Refusals of the target itself are :class:`~atfnn_fast.errors.UsageError`; a folder
    where nothing can be written is its ``OSError`` naming the folder."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise named(err, path) from None
    if st is not None:
        kind = stat.S_IFMT(st.st_mode)
        if kind != (stat.S_IFDIR if directory else stat.S_IFREG):
            raise UsageError(
                f"{option} {path}: is {KINDS.get(kind, 'not a regular file')}; give the path "
                "of a regular file to write (it is never replaced or written into)"
                if not directory
                else f"{option} {path}: is "
                f"{'a regular file' if kind == stat.S_IFREG else KINDS.get(kind, 'no folder')}, "
                "not a folder"
            )
    resolved = _resolve(path)
    for source in inputs:
        source_path = _resolve(Path(source))
        if resolved == source_path or source_path in resolved.parents:
            raise UsageError(
                f"{option} {path}: is inside the input {source}; writing there would "
                "replace or add to what is read. Choose a path outside it"
                if resolved != source_path
                else f"{option} {path}: is the input {source}; choose another path"
            )
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not directory:
            limit = os.pathconf(folder, "PC_NAME_MAX")
            if len(os.fsencode(path.name)) > limit:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fspath(path))
        probe = temp_path(folder / "probe", "probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise named(err, folder) from None
    return path


def absolute(path: str | os.PathLike) -> Path:
    """``path`` with its symbolic links resolved (``Path.resolve``, not strict); a symlink
    loop, which Python before 3.13 raises as ``RuntimeError``, leaves it absolute and
    normalised instead, so that whatever reads it fails naming the loop (``ELOOP``)."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        return Path(os.path.abspath(path))


def check_input(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """An input the user named: a :class:`FileNotFoundError` ``<path>: <what> not found``
    when nothing is there, a :class:`~atfnn_fast.errors.UsageError` saying what is there
    instead (``is a directory, not a <what>``) when it is not a regular file (``folder``:
    a directory), and its ``OSError`` naming it (permission denied, a symlink loop) when
    it cannot be looked at. Returns the path."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as err:
        raise named(err, path) from None
    kind = stat.S_IFMT(st.st_mode)
    if kind != (stat.S_IFDIR if folder else stat.S_IFREG):
        found = KINDS.get(kind, "not a regular file") if kind != stat.S_IFREG else "a file"
        raise UsageError(f"{path}: is {found}, not a {what}")
    return path


def read_checked(path: str | os.PathLike, check_size) -> bytes:
    """The bytes of the regular file ``path``, read once through one descriptor: its size
    (``fstat``) goes to ``check_size(size)`` first, which raises to refuse it, so a file
    whose size is wrong (a sparse 30 GiB file, say) is refused before anything is read;
    what later replaces the file cannot reach the bytes returned. Raises ``OSError``
    naming ``path`` (``FileNotFoundError``, ``IsADirectoryError``, ``EINVAL`` for a device,
    FIFO or socket, which are never opened blocking)."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise named(err, path) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        check_size(info.st_size)
        try:
            data = fh.read(info.st_size + 1)
        except OSError as err:
            raise named(err, path) from None
    if len(data) != info.st_size:  # changed while it was read
        check_size(len(data))
    return data
