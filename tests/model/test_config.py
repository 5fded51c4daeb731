"""ATFNNConfig: documented defaults, validation on construction, derived sizes, JSON."""

import dataclasses

import pytest
import torch

from atfnn_fast import ATFNNConfig


def test_defaults_are_the_spec():
    cfg = ATFNNConfig()
    assert (cfg.n_mels, cfg.frames, cfg.channels, cfg.f_group, cfg.t_group) == (80, 128, 8, 5, 8)
    assert (cfg.num_heads, cfg.ffn_channels, cfg.ffn_kernel) == (2, 32, 5)
    assert (cfg.lstm_hidden, cfg.lstm_layers, cfg.num_classes) == (128, 3, 4)
    assert cfg.t_attention_source == "input"
    assert (cfg.lstm_input_size, cfg.embedding_size, cfg.variant) == (640, 256, "ATFNN")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ATFNNConfig().channels = 4


@pytest.mark.parametrize(
    "changes,error,pattern",
    [
        (dict(n_mels=81), ValueError, r"n_mels \(81\) must be a multiple of f_group \(5\)"),
        (dict(frames=100), ValueError, r"frames \(100\) must be a multiple of t_group \(8\)"),
        (
            dict(channels=8, num_heads=3),
            ValueError,
            r"channels \(8\) must be a multiple of num_heads \(3\)",
        ),
        (dict(channels=0), ValueError, "channels must be positive, got 0"),
        (dict(lstm_hidden=-1), ValueError, "lstm_hidden must be positive"),
        (dict(num_classes=2.0), TypeError, "num_classes must be an int"),
        (dict(frames=True), TypeError, "frames must be an int"),
        (dict(f_encoder="yes"), TypeError, "f_encoder must be a bool"),
        (dict(t_attention_source="output"), ValueError, "t_attention_source must be one of"),
        (dict(ffn_kernel=4), ValueError, "ffn_kernel must be odd"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps must be finite and positive"),
        (
            dict(layer_norm_eps=float("inf")),
            ValueError,
            "layer_norm_eps must be finite and positive",
        ),
    ],
)
def test_invalid_values_are_refused(changes, error, pattern):
    with pytest.raises(error, match=pattern):
        ATFNNConfig(**changes)


@pytest.mark.parametrize(
    "changes,name,lstm_in,emb",
    [
        (dict(f_attention=False, t_attention=False), "TFNN", 640, 256),
        (dict(f_encoder=False), "ATNN", 80, 256),
        (dict(t_encoder=False), "AFNN", 640, 640),
        (dict(t_attention=False), "ATFNN without t_attention", 640, 256),
    ],
)
def test_variants_and_derived_sizes(changes, name, lstm_in, emb):
    cfg = ATFNNConfig(**changes)
    assert (cfg.variant, cfg.lstm_input_size, cfg.embedding_size) == (name, lstm_in, emb)


def test_t_attention_in_channels():
    assert ATFNNConfig().t_attention_in_channels == 1
    assert ATFNNConfig(t_attention_source="encoding").t_attention_in_channels == 8
    no_enc = ATFNNConfig(t_attention_source="encoding", f_encoder=False)
    assert no_enc.t_attention_in_channels == 1


def test_json_round_trip_and_unknown_fields():
    cfg = ATFNNConfig(num_classes=6, t_attention_source="encoding", t_encoder=False)
    assert ATFNNConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        ATFNNConfig.from_dict({"colour": "red"})


@pytest.mark.parametrize("source", ["input", "encoding"])
@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"f_attention": False, "t_attention": False},
        {"f_encoder": False},
        {"t_encoder": False},
        {"lstm_layers": 1, "ffn_kernel": 3, "channels": 6, "num_heads": 3, "num_classes": 7},
    ],
)
def test_parameter_count_is_the_reference_models(flags, source):
    """The config counts its parameters from the sizes (no model built, no import of the
    reference): the same number as the reference module has, for every variant."""
    from atfnn_fast.reference import ATFNNReference

    cfg = ATFNNConfig(t_attention_source=source, **flags)
    with torch.device("meta"):
        want = sum(p.numel() for p in ATFNNReference(cfg).parameters())
    assert cfg.parameter_count == want
