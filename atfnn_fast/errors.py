"""Errors shared by the application modules, and the device check.

The command line maps exceptions to exit codes (see :mod:`atfnn_fast.cli`):

* :class:`UsageError` (and a path given on the command line that does not exist): the
  command cannot run as written; exit code 2, like argparse's own errors;
* anything else (a bad file, a failed run): exit code 1.

Both are :class:`ValueError` subclasses so that API callers can catch them as such.
"""

from __future__ import annotations

import torch


class UsageError(ValueError):
    """An argument or option that cannot be used as given; the message names it."""


class RunError(ValueError):
    """A run that cannot go on (its directory is locked, its resume state is broken...); the
    message names the file."""


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
    a device this machine does not have is refused with a :class:`UsageError` naming
    ``option`` instead of failing later inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"{option}: unknown device {name!r} (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"{option}: device type {device.type!r} is not supported (cpu or cuda)")
    if not torch.cuda.is_available():
        raise UsageError(
            f"{option} {name}: CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"{option} {name}: this machine has {count} CUDA device(s)")
    return device
