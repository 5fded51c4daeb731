"""Audio loading, log-Mel (against librosa), segmentation and normalisation statistics."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn_fast.features import (
    AudioError,
    FeatureConfig,
    NormStats,
    file_segments,
    iter_audio,
    iter_log_mel,
    iter_segment_batches,
    load_audio,
    log_mel,
    segment,
    speech_sample,
)

SILENCE = math.log(1e-6)


@pytest.fixture(scope="module")
def speech():
    return load_audio(speech_sample())


def test_fixture_is_real_speech_at_22k(speech):
    info = sf.info(str(speech_sample()))
    assert (info.samplerate, info.channels) == (22050, 1)
    assert speech.dtype == torch.float32 and speech.dim() == 1
    # resampled to 16 kHz: the length scales by 16000 / 22050
    assert abs(speech.numel() - info.frames * 16000 / 22050) <= 1
    assert speech.abs().max() > 0.1  # not silence


def test_log_mel_matches_librosa(speech):
    """Stated tolerance: max |difference| of the log-Mel values <= 1e-3 (measured: 1.3e-4,
    mean 3e-6; float32 torchaudio vs float64 librosa, same Hamming window, HTK Mel scale,
    reflect-padded centred frames)."""
    librosa = pytest.importorskip("librosa")
    ours = log_mel(speech).numpy()
    mel = librosa.feature.melspectrogram(
        y=speech.numpy().astype(np.float64),
        sr=16000,
        n_fft=512,
        hop_length=160,
        win_length=320,
        window="hamming",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=80,
        htk=True,
        norm=None,
        fmin=0.0,
        fmax=8000.0,
    )
    theirs = np.log(mel + 1e-6)
    assert ours.shape == theirs.shape == (80, 1 + speech.numel() // 160)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path, rate, channels):
    t = np.arange(rate // 2) / rate  # 0.5 s
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.25 * np.sin(2 * np.pi * 220 * t)
    data = np.stack([left, right], 1)[:, :channels]
    path = tmp_path / f"tone_{rate}_{channels}.wav"
    sf.write(str(path), data, rate, subtype="FLOAT")
    wave = load_audio(path)
    assert abs(wave.numel() - 8000) <= 1
    if rate == 16000:
        np.testing.assert_allclose(wave.numpy(), data.mean(axis=1), atol=1e-6)
    # energy of a resampled sine is kept (the channel mean is what is heard)
    expected_rms = np.sqrt(np.mean(data.mean(axis=1) ** 2))
    assert wave[400:-400].pow(2).mean().sqrt().item() == pytest.approx(expected_rms, rel=0.02)


def test_flac_and_int16_are_read(tmp_path):
    data = (np.random.default_rng(0).uniform(-0.5, 0.5, 16000) * 32767).astype(np.int16)
    sf.write(str(tmp_path / "a.flac"), data, 16000)
    wave = load_audio(tmp_path / "a.flac")
    np.testing.assert_allclose(wave.numpy(), data / 32768.0, atol=1e-6)


def _bad_files(tmp_path):
    good = speech_sample().read_bytes()
    cases = {
        "garbage.wav": b"this is not audio at all" * 10,
        "header_only.wav": good[:30],
        "truncated.wav": good[: len(good) // 2],
        "zero_bytes.wav": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1)), 16000)
    sf.write(str(tmp_path / "nan.wav"), np.full(400, np.nan), 16000, subtype="FLOAT")
    return {
        "garbage.wav": "cannot decode",
        "header_only.wav": "cannot decode",
        "truncated.wav": "truncated",
        "zero_bytes.wav": "cannot decode",
        "empty.wav": "empty audio",
        "nan.wav": "NaN or Inf",
    }


def test_bad_audio_raises_an_error_naming_the_file(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        path = tmp_path / name
        with pytest.raises(AudioError, match=reason) as info:
            load_audio(path)
        assert str(info.value).startswith(str(path)), name
        assert info.value.path == str(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_too_short_audio_names_the_file(tmp_path):
    sf.write(str(tmp_path / "short.wav"), np.zeros(100), 16000)
    with pytest.raises(
        AudioError, match=r"short\.wav: wave must have more than n_fft // 2 = 256 samples"
    ):
        file_segments(tmp_path / "short.wav")


# --------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize(
    "n,frames,hop,count",
    [
        (128, 128, 128, 1),
        (129, 128, 128, 2),
        (300, 128, 128, 3),
        (50, 128, 128, 1),
        (128, 128, 32, 1),
        (160, 128, 32, 2),
        (161, 128, 32, 3),
        (5, 8, 3, 1),
    ],
)
def test_segment_covers_every_frame_and_pads_with_silence(n, frames, hop, count):
    lm = torch.randn(4, n)
    segs = segment(lm, frames, hop)
    assert segs.shape == (count, 4, frames)
    for i in range(count):  # each window is the original frames, then silence
        start = i * hop
        real = max(0, min(frames, n - start))
        torch.testing.assert_close(segs[i, :, :real], lm[:, start : start + real])
        assert (segs[i, :, real:] == SILENCE).all()
    # the fewest windows that cover all n frames
    assert (count - 1) * hop + frames >= n
    assert count == 1 or (count - 2) * hop + frames < n


def test_segment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="must be \\(F, N\\)"):
        segment(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="0 < hop <= frames"):
        segment(torch.zeros(2, 10), frames=8, hop=9)
    with pytest.raises(ValueError, match="no frames"):
        segment(torch.zeros(2, 0))


# -------------------------------------------------------------------------- normalisation
def test_norm_stats_fit_equals_pooled_numpy_statistics():
    rng = np.random.default_rng(1)
    items = [rng.normal(rng.normal(size=(6, 1)), 2.0, size=(6, n)) for n in (3, 50, 17)]
    stats = NormStats.fit(torch.tensor(a) for a in items)
    pooled = np.concatenate(items, axis=1)
    np.testing.assert_allclose(stats.mean, pooled.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pooled.std(axis=1), rtol=1e-12)
    assert stats.count == 70
    normed = stats.apply(torch.tensor(pooled)).numpy()
    np.testing.assert_allclose(normed.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(normed.std(axis=1), 1, rtol=1e-12)


def test_norm_stats_json_round_trip_is_exact():
    stats = NormStats.fit([torch.randn(80, 37, dtype=torch.float64) * 3 + 1])
    again = NormStats.from_json(stats.to_json())
    assert again == stats
    assert json.loads(stats.to_json())["count"] == 37


def test_norm_stats_floor_and_errors():
    stats = NormStats.fit([torch.ones(3, 5)])
    assert stats.std == (1e-5, 1e-5, 1e-5)
    with pytest.raises(ValueError, match="expected keys"):
        NormStats.from_dict({"mean": [0.0]})
    with pytest.raises(ValueError, match="equal length"):
        NormStats((0.0, 1.0), (1.0,), 3)
    with pytest.raises(ValueError, match="std must be positive"):
        NormStats((0.0,), (0.0,), 3)
    with pytest.raises(ValueError, match="finite"):
        NormStats((float("nan"),), (1.0,), 3)
    with pytest.raises(ValueError, match="no log-Mel"):
        NormStats.fit([])
    with pytest.raises(ValueError, match="item 1 has 4 bands, expected 3"):
        NormStats.fit([torch.zeros(3, 2), torch.zeros(4, 2)])
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 3, T\)"):
        stats.apply(torch.zeros(4, 7))


def test_file_segments_is_the_whole_pipeline(speech):
    lm = log_mel(speech)
    stats = NormStats.fit([lm])
    segs = file_segments(speech_sample(), stats=stats, hop=64)
    assert segs.shape == (1 + math.ceil((lm.shape[1] - 128) / 64), 1, 80, 128)
    torch.testing.assert_close(segs[0, 0], stats.apply(lm[:, :128]))


def test_feature_config_validation_and_round_trip():
    cfg = FeatureConfig()
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.silence_value == pytest.approx(SILENCE)
    with pytest.raises(ValueError, match="win_length"):
        FeatureConfig(win_length=1024)
    with pytest.raises(ValueError, match="unknown fields"):
        FeatureConfig.from_dict({"hop": 1})


# ------------------------------------------------------- bounded-memory pipeline (#13)
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
@pytest.mark.parametrize("seconds", [0.03, 0.9, 4.37])
def test_streaming_pipeline_equals_the_whole_file_one(tmp_path, rate, seconds):
    """Blocks of 0.5 s (so a 4.37 s file is read in 9 blocks): the waveform, the log-Mel
    frames and the segments match the whole-file pipeline (float rounding of the resampler
    and the STFT aside; log-Mel compared where the power is above 1e-6 of the peak, since
    the log amplifies rounding in bands that resampling left empty)."""
    rng = np.random.default_rng(rate)
    data = (rng.standard_normal((int(rate * seconds), 2)) * 0.1).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(str(path), data, rate, subtype="FLOAT")
    whole = load_audio(path)
    chunks = list(iter_audio(path, block_seconds=0.5))
    assert len(chunks) == math.ceil(data.shape[0] / (rate * 0.5)) or rate != 16000
    streamed = torch.cat(chunks)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-6)
    lm = log_mel(whole)
    lm_streamed = torch.cat(list(iter_log_mel(iter(chunks))), dim=1)
    assert lm_streamed.shape == lm.shape == (80, 1 + whole.numel() // 160)
    loud = lm > math.log(1e-6 * float(lm.exp().max()))
    torch.testing.assert_close(lm_streamed[loud], lm[loud], rtol=0, atol=1e-4)
    stats = NormStats.fit([lm])
    want = file_segments(path, stats=stats)
    batches = list(iter_segment_batches(path, stats=stats, batch_size=2))
    assert [b.shape[0] for b in batches] == [2] * (want.shape[0] // 2) + [want.shape[0] % 2] * (
        want.shape[0] % 2
    )
    got = torch.cat(batches)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)


def test_streaming_errors_name_the_file(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        path = tmp_path / name
        with pytest.raises(AudioError, match=reason) as info:
            list(iter_segment_batches(path))
        assert str(info.value).startswith(str(path)), name
    sf.write(str(tmp_path / "short.wav"), np.zeros(200), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: wave must have more than n_fft // 2"):
        list(iter_segment_batches(tmp_path / "short.wav"))
    sf.write(str(tmp_path / "loud.wav"), np.full(8000, 3e38), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"loud\.wav: log-Mel features are not finite"):
        list(iter_segment_batches(tmp_path / "loud.wav"))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        list(iter_segment_batches(tmp_path / "loud.wav", batch_size=0))


def test_feature_sizes_from_files_are_bounded():
    with pytest.raises(ValueError, match=r"FeatureConfig\.n_fft = 100000000 exceeds the limit"):
        FeatureConfig.from_dict({"n_fft": 100_000_000, "win_length": 320})
    with pytest.raises(ValueError, match=r"FeatureConfig\.f_max must be finite, got inf"):
        FeatureConfig(f_max=float("inf"))
