"""atfnn-fast: ATFNN (Attentive Time-Frequency Neural Network) for speech emotion recognition.

``from atfnn_fast import ATFNN, ATFNNReference, ATFNNConfig``; see README.md and
docs/design.md.
"""

import os as _os

# A source checkout used without installing (PYTHONPATH=.): kernels/ and export/ sit next to
# this package instead of inside it, so let the checkout's root serve as a second search
# path for atfnn_fast.kernels and atfnn_fast.export. Installed copies never take this path.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "kernels", "dispatch.py")) and not (
    _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kernels"))
):
    __path__.append(_root)

# The lowest torch the default test suite passes on (docs/design.md#dependencies):
# torch.library.triton_op / wrap_triton shipped in 2.6, but 2.6's custom-op schema inference
# rejects the ops' list[int] annotations, and 2.7's Triton (3.3) interpreter cannot run the
# F-Encoder kernels (the CPU kernel tests); 2.8 (Triton 3.4) passes.
MIN_TORCH = (2, 8)


def _check_torch() -> None:
    import torch

    found = torch.__version__.split("+")[0].split(".")
    try:
        version = tuple(int(part) for part in found[:2])
    except ValueError:  # a development build with an odd version string: let it try
        return
    if version < MIN_TORCH:
        raise ImportError(
            f"atfnn-fast needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} "
            f"(its torch.library custom ops), found torch {torch.__version__}; "
            f'upgrade it, e.g. pip install "torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"'
        )


_check_torch()

from .config import ATFNNConfig  # noqa: E402
from .model import ATFNN  # noqa: E402
from .reference import ATFNNReference, AttentionMaps  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ATFNN", "ATFNNConfig", "ATFNNReference", "AttentionMaps", "__version__"]
