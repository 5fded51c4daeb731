"""atfnn-fast: ATFNN (Attentive Time-Frequency Neural Network) for speech emotion recognition.

``from atfnn_fast import ATFNN, ATFNNReference, ATFNNConfig``; see README.md.
"""

from .config import ATFNNConfig
from .model import ATFNN
from .reference import ATFNNReference, AttentionMaps

__version__ = "0.1.0"

__all__ = ["ATFNN", "ATFNNConfig", "ATFNNReference", "AttentionMaps", "__version__"]
