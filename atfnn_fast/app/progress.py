"""Progress bars of the command line (tqdm, from the ``app`` extra).

A bar is drawn only where someone watches it: when standard error is a terminal. Logged or
piped output (``make demo > log``, CI) gets no carriage-return updates at all; the work's
own summary lines still say what was done. ``ATFNN_PROGRESS=1`` forces bars on, ``0``
forces them off."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable

from atfnn_fast._deps import require

PROGRESS_ENV = "ATFNN_PROGRESS"


def wanted() -> bool:
    """Whether bars are drawn: ``ATFNN_PROGRESS`` if set, else whether stderr is a TTY."""
    forced = os.environ.get(PROGRESS_ENV, "")
    if forced:
        return forced not in ("0", "false", "no", "off")
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable, desc: str, unit: str, enabled: bool = True, leave: bool = True):
    """A context manager giving ``iterable`` or, when ``enabled`` and :func:`wanted`, a tqdm
    bar over it (closed, with its newline, on any exit, errors included)."""
    if not (enabled and wanted()):
        return contextlib.nullcontext(iterable)
    tqdm = require("tqdm", extra="app").tqdm
    return tqdm(iterable, desc=desc, unit=unit, leave=leave)
