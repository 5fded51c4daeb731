"""kernels/tuning.py: candidates, overrides and the measured tables per arch."""

import json

import pytest

from atfnn_fast.kernels import tuning


@pytest.fixture
def tuned_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(tuning, "current_arch", lambda: 90)
    tuning.tuned_table.cache_clear()
    yield tmp_path
    tuning.tuned_table.cache_clear()


def test_candidates_hold_the_defaults():
    cands = {(c.op, c.slot, c.setting) for c in tuning.candidate_settings()}
    for slot in tuning.FREQ_ENCODER_FIELDS:
        assert ("freq_encoder", slot, getattr(tuning.FreqEncoderSettings(), slot)) in cands
    for kp, gwp in ((8, 8), (16, 16), (8, 32), (8, 64), (64, 64)):
        for backward in (False, True):
            slot = tuning.band_slot(kp, gwp, backward)
            assert ("band_attention", slot, tuning._default_band(kp, gwp, backward)) in cands
    assert all(s.block_t >= 16 for op, _, s in cands if op == "freq_encoder")


def test_no_table_gives_the_defaults(tuned_dir):
    assert tuning.freq_encoder_settings(80, 8, 32, precision="tf32") == tuning.FreqEncoderSettings()
    # the backward d h1 kernel's tiles follow the channels and the dot precision
    assert tuning.freq_encoder_settings(80, 8, 32, precision="ieee").ffn_bwd_dh1 == (
        tuning.KernelLaunch(16, 4, 2)
    )
    assert tuning.freq_encoder_settings(80, 16, 32).ffn_bwd_dh1 == tuning.KernelLaunch(16, 4)
    assert tuning.band_attention_settings(8, 8, False) == tuning.BandAttentionSettings(128)
    assert tuning.band_attention_settings(64, 64, True) == tuning.BandAttentionSettings(16, 8)


def test_table_of_the_arch_is_used(tuned_dir):
    (tuned_dir / "sm_90.json").write_text(
        json.dumps(
            {
                "arch": 90,
                "freq_encoder": {
                    "c8-p32/float32/ieee": {"ffn_bwd_dy1": [32, 4, 1], "norm1": [32, 8]}
                },
                "band_attention": {
                    "fwd-narrow": {"kp8-gwp8/float32": {"block": 256, "num_warps": 8}}
                },
            }
        )
    )
    s = tuning.freq_encoder_settings(80, 8, 32, precision="ieee")
    assert s.ffn_bwd_dy1 == tuning.KernelLaunch(32, 4, 1) and s.norm1 == tuning.KernelLaunch(32, 8)
    assert s.softmax_bwd == tuning.FreqEncoderSettings().softmax_bwd  # not in the table
    # bf16 has no entry: the float32 one; other sizes and tf32: the defaults
    assert tuning.freq_encoder_settings(80, 8, 32, dtype="bfloat16", precision="ieee") == s
    assert tuning.freq_encoder_settings(
        80, 16, 32, precision="ieee"
    ) == tuning.default_freq_encoder_settings(16, "float32", "ieee")
    assert tuning.freq_encoder_settings(80, 8, 32, precision="tf32") == tuning.FreqEncoderSettings()
    assert tuning.band_attention_settings(8, 8, False) == tuning.BandAttentionSettings(256, 8)
    assert tuning.band_attention_settings(8, 8, True) == tuning.BandAttentionSettings(32)
    # another arch has no table
    tuning.tuned_table.cache_clear()
    assert tuning.tuned_table(80) is None


def test_override_wins_and_is_undone(tuned_dir):
    forced = tuning.freq_encoder_with("norm1", tuning.KernelLaunch(32, 16))
    with tuning.override(
        freq_encoder=forced, band_attention={"bwd-narrow": tuning.BandAttentionSettings(16)}
    ):
        assert tuning.freq_encoder_settings(80, 8, 32) is forced
        assert tuning.band_attention_settings(8, 8, True) == tuning.BandAttentionSettings(16)
        assert tuning.band_attention_settings(8, 8, False) == tuning.BandAttentionSettings(128)
    assert tuning.freq_encoder_settings(80, 8, 32, precision="tf32") == tuning.FreqEncoderSettings()
    # the backward d h1 kernel's tiles follow the channels and the dot precision
    assert tuning.freq_encoder_settings(80, 8, 32, precision="ieee").ffn_bwd_dh1 == (
        tuning.KernelLaunch(16, 4, 2)
    )
    assert tuning.freq_encoder_settings(80, 16, 32).ffn_bwd_dh1 == tuning.KernelLaunch(16, 4)
    with pytest.raises(ValueError, match="slots must be among"):
        with tuning.override(band_attention={"sideways": tuning.BandAttentionSettings(16)}):
            pass
    with pytest.raises(ValueError, match="slot must be one of"):
        tuning.freq_encoder_with("lstm", tuning.KernelLaunch(16, 4))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "top level must be an object"),
        ('{"freq_encoder": {"c8-p32/float32/ieee": {"ffn": [48, 8]}}}', "not a candidate"),
        ('{"freq_encoder": {"c8-p32/float32/ieee": {"ffn": "fast"}}}', r"\[block_t, num_warps"),
        ('{"freq_encoder": {"k": {"lstm": [16, 4]}}}', "keys among"),
        ('{"band_attention": {"fwd-narrow": {"k": {"block": 1024}}}}', "not a candidate"),
        ('{"band_attention": {"up": {}}}', "slots must be among"),
        ('{"speed": 1}', "unknown top-level keys"),
    ],
)
def test_malformed_table_names_the_file(tuned_dir, content, message):
    path = tuned_dir / "sm_90.json"
    path.write_text(content)
    with pytest.raises(tuning.TunedTableError, match=message) as err:
        tuning.freq_encoder_settings(80, 8, 32)
    assert str(path) in str(err.value)


def test_launch_kwargs_pass_stages_only_when_set():
    assert tuning.KernelLaunch(16, 4).launch_kwargs() == {"BT": 16, "num_warps": 4}
    assert tuning.KernelLaunch(64, 16, 2).launch_kwargs()["num_stages"] == 2


def test_no_gpu_means_no_arch():
    import torch

    if not torch.cuda.is_available():
        assert tuning.current_arch() is None
