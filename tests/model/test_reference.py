"""ATFNNReference block by block against the independent NumPy reading of
docs/design.md#model-math."""

import numpy as np
import pytest
import torch
from _numpy_ref import atfnn_forward, band_weights, f_encoder, sub
from helpers import VARIANTS, randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference

TOL = dict(rtol=1e-9, atol=1e-9)  # float64 throughout


def numpy_state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def make(cfg, cls=ATFNNReference):
    return randomize(cls(cfg)).double().eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_f_attention_block(batch):
    cfg = tiny_config()
    model = make(cfg)
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, dtype=torch.float64)
    out, w = model._f_attention(x)
    st = numpy_state(model)
    w_np = band_weights(
        x.numpy(), st["f_attention.conv.weight"], st["f_attention.conv.bias"], "freq"
    )
    np.testing.assert_allclose(w.detach().numpy(), w_np, **TOL)
    np.testing.assert_allclose(out.detach().numpy(), x.numpy() * (1 + w_np[:, None]), **TOL)
    # the weight is constant inside a band group and differs between groups
    groups = w_np.reshape(batch, cfg.n_mels // cfg.f_group, cfg.f_group, cfg.frames)
    assert np.ptp(groups, axis=2).max() == 0.0


@pytest.mark.parametrize("source", ["input", "encoding"])
def test_t_attention_block(source):
    cfg = tiny_config(t_attention_source=source)
    model = make(cfg)
    x = torch.randn(2, 1, cfg.n_mels, 24, dtype=torch.float64)
    enc = torch.randn(2, 24, cfg.n_mels, cfg.channels, dtype=torch.float64)
    src = x if source == "input" else enc.permute(0, 3, 2, 1)
    out, w = model._t_attention(src, enc)
    st = numpy_state(model)
    w_np = band_weights(
        src.numpy(), st["t_attention.conv.weight"], st["t_attention.conv.bias"], "time"
    )
    np.testing.assert_allclose(w.detach().numpy(), w_np, **TOL)
    expected = enc.numpy() * (1 + w_np.transpose(0, 2, 1)[..., None])
    np.testing.assert_allclose(out.detach().numpy(), expected, **TOL)
    assert model.t_attention.conv.weight.shape == (
        cfg.channels,
        1 if source == "input" else cfg.channels,
        1,
        cfg.t_group,
    )


@pytest.mark.parametrize("heads,channels", [(1, 4), (2, 4), (4, 8)])
def test_f_encoder_block_matches_multihead_attention_semantics(heads, channels):
    cfg = tiny_config(num_heads=heads, channels=channels)
    model = make(cfg)
    x1 = torch.randn(2, 1, cfg.n_mels, 8, dtype=torch.float64) * 3
    out = model.f_encoder(x1)
    expected = f_encoder(
        x1.numpy(), sub(numpy_state(model), "f_encoder."), heads, cfg.layer_norm_eps
    )
    assert out.shape == (2, 8, cfg.n_mels, channels)
    np.testing.assert_allclose(out.detach().numpy(), expected, **TOL)


def test_lstm_input_feature_order_is_band_major():
    """The T-Encoder reads x̂''[b, t] flattened as f * c + ch."""
    cfg = tiny_config()
    model = make(cfg)
    x = torch.randn(2, 1, cfg.n_mels, cfg.frames, dtype=torch.float64)
    seen = {}
    model.t_encoder.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    model(x)
    _, _, _, seq = atfnn_forward(x.numpy(), numpy_state(model), cfg)
    assert seen["x"].shape == (2, cfg.frames, cfg.n_mels * cfg.channels)
    np.testing.assert_allclose(seen["x"].detach().numpy(), seq, **TOL)


@pytest.mark.parametrize("source", ["input", "encoding"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_model_matches_numpy(variant, source):
    cfg = tiny_config(t_attention_source=source, **VARIANTS[variant])
    assert cfg.variant == variant
    model = make(cfg)
    x = torch.randn(2, 1, cfg.n_mels, cfg.frames, dtype=torch.float64)
    logits, att = model(x, return_attention=True)
    ref_logits, w_f, w_t, _ = atfnn_forward(x.numpy(), numpy_state(model), cfg)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, **TOL)
    for got, want in ((att.freq, w_f), (att.time, w_t)):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got.detach().numpy(), want, **TOL)


CONTRACT_KEYS = {
    "f_attention.conv.weight": (8, 1, 5, 1),
    "f_attention.conv.bias": (8,),
    "t_attention.conv.weight": (8, 1, 1, 8),
    "t_attention.conv.bias": (8,),
    "f_encoder.lift.weight": (8, 1),
    "f_encoder.lift.bias": (8,),
    "f_encoder.attn.in_proj_weight": (24, 8),
    "f_encoder.attn.in_proj_bias": (24,),
    "f_encoder.attn.out_proj.weight": (8, 8),
    "f_encoder.attn.out_proj.bias": (8,),
    "f_encoder.norm1.weight": (8,),
    "f_encoder.norm1.bias": (8,),
    "f_encoder.ffn1.weight": (32, 8, 5),
    "f_encoder.ffn1.bias": (32,),
    "f_encoder.ffn2.weight": (8, 32, 5),
    "f_encoder.ffn2.bias": (8,),
    "f_encoder.norm2.weight": (8,),
    "f_encoder.norm2.bias": (8,),
    "classifier.weight": (4, 256),
    "classifier.bias": (4,),
}
for _layer in range(3):
    _d_in = 640 if _layer == 0 else 256
    for _sfx in ("", "_reverse"):
        CONTRACT_KEYS[f"t_encoder.weight_ih_l{_layer}{_sfx}"] = (512, _d_in)
        CONTRACT_KEYS[f"t_encoder.weight_hh_l{_layer}{_sfx}"] = (512, 128)
        CONTRACT_KEYS[f"t_encoder.bias_ih_l{_layer}{_sfx}"] = (512,)
        CONTRACT_KEYS[f"t_encoder.bias_hh_l{_layer}{_sfx}"] = (512,)


@pytest.mark.parametrize("cls", [ATFNN, ATFNNReference])
def test_state_dict_keys_and_shapes_are_the_spec(cls):
    state = cls(ATFNNConfig()).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == CONTRACT_KEYS


def test_encoding_source_conv_reads_c_channels():
    state = ATFNNReference(ATFNNConfig(t_attention_source="encoding")).state_dict()
    assert tuple(state["t_attention.conv.weight"].shape) == (8, 8, 1, 8)


@pytest.mark.parametrize(
    "variant,absent,classifier_in",
    [
        ("TFNN", ("f_attention.", "t_attention."), 256),
        ("ATNN", ("f_encoder.",), 256),
        ("AFNN", ("t_encoder.",), 640),
    ],
)
def test_disabled_blocks_have_no_parameters(variant, absent, classifier_in):
    cfg = ATFNNConfig(**VARIANTS[variant])
    state = ATFNNReference(cfg).state_dict()
    assert not [k for k in state if k.startswith(absent)]
    assert state["classifier.weight"].shape == (4, classifier_in)
    if variant == "ATNN":  # the LSTM reads x' with F features
        assert state["t_encoder.weight_ih_l0"].shape == (512, 80)


def test_dropout_only_in_training_mode():
    model = ATFNNReference(tiny_config(dropout=0.5))
    x = torch.randn(4, 1, 10, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
