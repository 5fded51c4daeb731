"""atfnn-fast: ATFNN (Attentive Time-Frequency Neural Network) for speech emotion recognition.

``from atfnn_fast import ATFNN, ATFNNReference, ATFNNConfig``; see README.md.
"""

import os as _os

# A source checkout used without installing (PYTHONPATH=.): kernels/ and export/ sit next to
# this package instead of inside it, so let the checkout's root serve as a second search
# path for atfnn_fast.kernels and atfnn_fast.export. Installed copies never take this path.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "kernels", "triton_band_attention.py")) and not (
    _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kernels"))
):
    __path__.append(_root)

from .config import ATFNNConfig  # noqa: E402
from .model import ATFNN  # noqa: E402
from .reference import ATFNNReference, AttentionMaps  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ATFNN", "ATFNNConfig", "ATFNNReference", "AttentionMaps", "__version__"]
