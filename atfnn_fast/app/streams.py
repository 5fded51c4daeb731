"""The command line's standard streams and signals, set up once per command by
:func:`atfnn_fast.app.cli.main` (docs/design.md#output-text):

* a closed standard output (``atfnn-fast predict ... >&-``: Python then has no
  ``sys.stdout``) is refused before any work, in one line naming it;
* a stream that cannot encode a character (``PYTHONIOENCODING=ascii``, a ``C`` locale)
  writes it as an escape (``\\u00e9``; a byte of a file name that is not UTF-8 as
  ``\\xNN``, as :func:`atfnn_fast.text.printable` writes it) instead of aborting the run;
* a write error of standard output (a full disk behind ``> file``, ``/dev/full``) names
  ``standard output``, not nothing;
* SIGTERM raises :class:`Terminated`, so that a command stopped by ``kill`` or a job
  scheduler cleans up as it does after Ctrl-C (temporary files, locks) and exits with 143.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from atfnn_fast.files import named

STDOUT = "standard output"
ERRORS = "atfnn-escape"


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` swallows it)."""


_terminated = False


def terminating() -> bool:
    """Whether SIGTERM arrived during this command. Code that catches ``Exception`` checks
    it: raised inside a C extension (an import, an ONNX Runtime call), :class:`Terminated`
    can reach Python as another exception (``ImportError: initialization failed``)."""
    return _terminated


def _escape_unencodable(err: UnicodeError):
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start : err.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out), err.end


codecs.register_error(ERRORS, _escape_unencodable)


class NamedStream:
    """A text stream whose write errors are ``OSError``\\ s naming it (same class and
    errno); everything else is the stream's own."""

    def __init__(self, stream, name: str) -> None:
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as err:
            raise named(err, self._name) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            raise named(err, self._name) from None

    def __getattr__(self, attr):
        return getattr(self._stream, attr)


def closed_stdout() -> str | None:
    """The one-line problem of a standard output that is closed, or None."""
    if sys.stdout is None:
        return (
            f"{STDOUT} is closed (file descriptor 1); give the command somewhere to write, "
            "e.g. >/dev/null"
        )
    return None


def _reconfigure(stream, errors: str) -> str | None:
    """Set ``stream``'s encoding error handler; returns the old one (None: not a
    reconfigurable text stream)."""
    old = getattr(stream, "errors", None)
    try:
        stream.reconfigure(errors=errors)
    except (AttributeError, ValueError, OSError):
        return None
    return old


def silence_stdout() -> None:
    """Point file descriptor 1 (or whatever sys.stdout writes to) at /dev/null, so that
    the flush at exit does not fail a second time after a write error."""
    stream = getattr(sys.stdout, "_stream", sys.stdout)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


@contextlib.contextmanager
def command_streams() -> Iterator[None]:
    """For one command: escaping streams, a named standard output and SIGTERM as
    :class:`Terminated` (see the module docstring); everything is restored on exit."""
    saved_stdout = sys.stdout
    old_errors = [(s, _reconfigure(s, ERRORS)) for s in (sys.stdout, sys.stderr) if s is not None]
    sys.stdout = NamedStream(saved_stdout, STDOUT)
    global _terminated
    _terminated = False
    old_term = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum, frame):
            global _terminated
            _terminated = True
            raise Terminated()

        old_term = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        sys.stdout = saved_stdout
        for stream, errors in old_errors:
            if errors is not None:
                _reconfigure(stream, errors)
