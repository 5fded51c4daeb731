"""``python -m atfnn_fast.cli`` (as in ``torchrun ... -m atfnn_fast.cli train ...``): the
command line's stable module path. The command line itself is the application layer's
:mod:`atfnn_fast.app.cli`; this entry point belongs to that layer too, and no core module
imports it (docs/design.md#layers)."""

import sys

from atfnn_fast.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
