"""Model configuration: the one place every ATFNN size lives.

Defaults and math: docs/design.md#model-math. Choices the paper leaves open are marked
"(open)" on the fields below; docs/design.md#choices-the-paper-leaves-open gives the reasons.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

T_ATTENTION_SOURCES = ("input", "encoding")

# Upper bounds for sizes read from files (checkpoint config.json, ONNX metadata), checked by
# :meth:`ATFNNConfig.check_size_limits` before anything is allocated. Generous (our choice): the
# paper's model is 80 bands x 128 frames, 8 channels, 3 x 128 LSTM units, 1.6 M parameters.
SIZE_LIMITS = {
    "num_classes": 1000,
    "n_mels": 512,
    "frames": 8192,
    "channels": 256,
    "f_group": 512,
    "t_group": 8192,
    "num_heads": 64,
    "ffn_channels": 1024,
    "ffn_kernel": 63,
    "lstm_hidden": 4096,
    "lstm_layers": 16,
}
# elements of one segment's largest activation, n_mels * frames * channels (paper: 81,920)
MAX_SEGMENT_ELEMENTS = 1 << 24
# parameters of the whole model, counted without allocating (paper: 1.6 M)
MAX_PARAMETERS = 200_000_000


@dataclass(frozen=True)
class ATFNNConfig:
    """Sizes and switches of an ATFNN model; validated on construction.

    Sizes:
        num_classes: emotion classes of the classifier.
        n_mels: Mel bands ``F`` of the input spectrogram.
        frames: segment length ``T`` the model is trained and exported at. Any ``T`` that is
            a multiple of ``t_group`` is accepted at run time.
        channels: ``c``, width of the attention convolutions and of the F-Encoder tokens.
        f_group / t_group: bands / frames pooled by one F- / T-Attention window.
        num_heads: heads of the F-Encoder self-attention (open: 2).
        ffn_channels / ffn_kernel: hidden width and kernel size of the F-Encoder's conv FFN
            (32 and 5 in the paper; the kernel must be odd so ``padding = k // 2`` keeps F).
        lstm_hidden / lstm_layers: the Bi-LSTM T-Encoder.
        layer_norm_eps: epsilon of both F-Encoder LayerNorms (open: PyTorch's 1e-5).
        dropout: (open) dropout on the 2*lstm_hidden utterance embedding before the classifier,
            the only dropout in the model; the fused front-end therefore needs none.
        lstm_dropout: (open) nn.LSTM's dropout between LSTM layers, 0 by default.

    Variants (paper Table III): ``f_attention``, ``t_attention``, ``f_encoder``, ``t_encoder``;
    all True is ATFNN. A disabled block has no parameters. ``t_attention_source`` is "input"
    (Eq. 2: the T-Attention convolution reads the raw spectrogram) or "encoding" (Eq. 4
    reading: it reads the F-Encoder output with ``channels`` input channels; 1 channel when
    the F-Encoder is disabled).
    """

    num_classes: int = 4
    n_mels: int = 80
    frames: int = 128
    channels: int = 8
    f_group: int = 5
    t_group: int = 8
    num_heads: int = 2
    ffn_channels: int = 32
    ffn_kernel: int = 5
    lstm_hidden: int = 128
    lstm_layers: int = 3
    layer_norm_eps: float = 1e-5
    dropout: float = 0.2
    lstm_dropout: float = 0.0
    f_attention: bool = True
    t_attention: bool = True
    f_encoder: bool = True
    t_encoder: bool = True
    t_attention_source: str = "input"

    def __post_init__(self) -> None:
        ints = (
            "num_classes",
            "n_mels",
            "frames",
            "channels",
            "f_group",
            "t_group",
            "num_heads",
            "ffn_channels",
            "ffn_kernel",
            "lstm_hidden",
            "lstm_layers",
        )
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ATFNNConfig.{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"ATFNNConfig.{name} must be positive, got {value}")
        if self.num_classes < 2:  # (our choice) docs/design.md#choices-the-paper-leaves-open
            raise ValueError(
                "ATFNNConfig.num_classes must be at least 2 (a one-class model answers that "
                f"class with score 1.000 whatever it hears), got {self.num_classes}"
            )
        for name in ("f_attention", "t_attention", "f_encoder", "t_encoder"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ATFNNConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("dropout", "lstm_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"ATFNNConfig.{name} must be a float, got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ATFNNConfig.{name} must be in [0, 1), got {value}")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(
            self.layer_norm_eps, int | float
        ):
            raise TypeError(
                f"ATFNNConfig.layer_norm_eps must be a float, got {self.layer_norm_eps!r}"
            )
        if not (math.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ValueError(
                f"ATFNNConfig.layer_norm_eps must be finite and positive, got {self.layer_norm_eps}"
            )
        if self.n_mels % self.f_group:
            raise ValueError(
                f"ATFNNConfig: n_mels ({self.n_mels}) must be a multiple of "
                f"f_group ({self.f_group})"
            )
        if self.frames % self.t_group:
            raise ValueError(
                f"ATFNNConfig: frames ({self.frames}) must be a multiple of "
                f"t_group ({self.t_group})"
            )
        if self.channels % self.num_heads:
            raise ValueError(
                f"ATFNNConfig: channels ({self.channels}) must be a multiple of "
                f"num_heads ({self.num_heads})"
            )
        if self.ffn_kernel % 2 == 0:
            raise ValueError(
                f"ATFNNConfig: ffn_kernel must be odd so the conv FFN keeps the {self.n_mels} "
                f"bands, got {self.ffn_kernel}"
            )
        if self.t_attention_source not in T_ATTENTION_SOURCES:
            raise ValueError(
                f"ATFNNConfig.t_attention_source must be one of {T_ATTENTION_SOURCES}, "
                f"got {self.t_attention_source!r}"
            )

    # Derived sizes: computed here once, used everywhere else.
    @property
    def encoding_width(self) -> int:
        """Features per (frame, band) after the F-Encoder: ``channels``, or 1 without it."""
        return self.channels if self.f_encoder else 1

    @property
    def lstm_input_size(self) -> int:
        """Per-frame feature vector size, flattened row-major over (band, channel)."""
        return self.n_mels * self.encoding_width

    @property
    def t_attention_in_channels(self) -> int:
        return 1 if self.t_attention_source == "input" else self.encoding_width

    @property
    def embedding_size(self) -> int:
        """Classifier input: 2*lstm_hidden (Bi-LSTM), or n_mels*width without T-Encoder."""
        return 2 * self.lstm_hidden if self.t_encoder else self.lstm_input_size

    @property
    def variant(self) -> str:
        """Paper name (Table III) of the variant: ATFNN, TFNN, ATNN or AFNN; any other
        combination is described as "ATFNN without <blocks>"."""
        flags = ("f_attention", "t_attention", "f_encoder", "t_encoder")
        off = tuple(name for name in flags if not getattr(self, name))
        names = {
            (): "ATFNN",
            ("f_attention", "t_attention"): "TFNN",
            ("f_encoder",): "ATNN",
            ("t_encoder",): "AFNN",
        }
        return names.get(off, "ATFNN without " + ", ".join(off))

    @property
    def parameter_count(self) -> int:
        """Parameters of the model this config builds, counted from the sizes (the state dict
        of docs/design.md#state-dict; tests/model/test_config.py checks it against
        ``ATFNNReference`` for every variant)."""
        c = self.channels
        count = self.embedding_size * self.num_classes + self.num_classes  # classifier
        if self.f_attention:
            count += c * self.f_group + c
        if self.t_attention:
            count += c * self.t_attention_in_channels * self.t_group + c
        if self.f_encoder:
            p, k = self.ffn_channels, self.ffn_kernel
            count += 2 * c  # lift
            count += 3 * c * c + 3 * c + c * c + c  # in_proj, out_proj
            count += 4 * c  # norm1, norm2
            count += p * c * k + p + c * p * k + c  # ffn1, ffn2
        if self.t_encoder:
            h, width = self.lstm_hidden, self.lstm_input_size
            for layer in range(self.lstm_layers):
                inputs = width if layer == 0 else 2 * h
                count += 2 * (4 * h * inputs + 4 * h * h + 8 * h)  # both directions
        return count

    def check_size_limits(self, source: str = "ATFNNConfig") -> None:
        """Refuse sizes beyond :data:`SIZE_LIMITS`, :data:`MAX_SEGMENT_ELEMENTS` and
        :data:`MAX_PARAMETERS` with a ValueError naming ``source`` (the file), the field, the
        value and the limit. Used for configs read from files, whose sizes are untrusted: a
        ``frames`` of 80,000,000 would otherwise allocate gigabytes. Nothing is allocated
        (the parameters are counted on the meta device)."""
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if value > limit:
                raise ValueError(f"{source}: {name} = {value} exceeds the limit of {limit}")
        elements = self.n_mels * self.frames * max(self.channels, 1)
        if elements > MAX_SEGMENT_ELEMENTS:
            raise ValueError(
                f"{source}: n_mels * frames * channels = {elements} exceeds the limit of "
                f"{MAX_SEGMENT_ELEMENTS}"
            )
        count = self.parameter_count
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"{source}: this config has {count:,} parameters, more than the limit of "
                f"{MAX_PARAMETERS:,}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ATFNNConfig:
        if not isinstance(data, dict):
            raise TypeError(f"ATFNNConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ATFNNConfig: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ATFNNConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ATFNNConfig:
        return dataclasses.replace(self, **changes)
