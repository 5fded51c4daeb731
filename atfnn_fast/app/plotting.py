"""matplotlib for the application's figures (confusion matrices, attention maps): checked
before any work that ends in a figure, and quiet.

* :func:`check_plotting` is called before the work of ``train``, ``evaluate --out``,
  ``plot-attention`` and ``demo``: matplotlib must be installed (the ``app`` extra) and an
  ``MPLBACKEND`` set in the environment must name a backend, or matplotlib's import
  fails, after the last epoch of a training. Refusals are one line naming the thing.
* :func:`pyplot` gives ``matplotlib.pyplot`` on the Agg backend (every figure is written
  to a PNG file), with matplotlib's own log records below ERROR silenced (its notes on
  building the font cache or on a configuration folder it cannot write would otherwise
  come before the command's output or its one-line error).
"""

from __future__ import annotations

import logging
import os

from atfnn_fast._deps import require
from atfnn_fast.errors import UsageError


def _quiet() -> None:
    logging.getLogger("matplotlib").setLevel(logging.ERROR)


def check_plotting() -> None:
    """Refuse, before any work, what would stop a figure from being drawn (see the module
    docstring)."""
    _quiet()
    value = os.environ.get("MPLBACKEND")
    try:
        require("matplotlib", extra="app")
        if value:
            from matplotlib.rcsetup import validate_backend

            validate_backend(value)
    except ImportError as err:
        raise UsageError(f"cannot draw the figures: {err}") from None
    except ValueError:
        raise UsageError(
            f"MPLBACKEND={value!r}: not a matplotlib backend; unset it (atfnn-fast draws its "
            "figures to PNG files with Agg whatever it says) or name one, e.g. MPLBACKEND=Agg"
        ) from None


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, quiet (see the module docstring)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
