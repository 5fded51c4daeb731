"""Issue 31, cause 3: every path that scores a whole recording (evaluate, plot-attention,
training's validation and test scoring) runs its segments through the model in bounded
batches, as predict does, with the same results as one forward pass of all of them."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast import ATFNN
from atfnn_fast.app.cli import main
from atfnn_fast.app.datasets import FeatureCache
from atfnn_fast.app.evaluate import item_probabilities
from atfnn_fast.app.plots import attention_maps
from atfnn_fast.app.synth import make_corpus
from atfnn_fast.app.train import TrainConfig, split, train_fold
from atfnn_fast.checkpoint import load_checkpoint, save_checkpoint
from atfnn_fast.manifest import read_manifest

LABELS = ["angry", "happy", "sad"]


def chunks(total: int, size: int) -> list[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])


def write_noise(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = 0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * rng.standard_normal(t.size)
    sf.write(str(path), wave.astype(np.float32), 16_000, subtype="PCM_16")
    return path


@pytest.fixture
def batches(monkeypatch):
    """The batch size of every forward pass of an ATFNN made without gradients (scoring)."""
    seen: list[int] = []
    real = ATFNN.forward

    def forward(self, x, *args, **kwargs):
        if not torch.is_grad_enabled():
            seen.append(x.shape[0])
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(ATFNN, "forward", forward)
    return seen


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A tiny checkpoint (16-frame segments: 0.16 s) and a manifest of two recordings of
    9 s and 4 s (about 56 and 25 segments)."""
    folder = tmp_path_factory.mktemp("bounded")
    ckpt = save_checkpoint(
        folder / "ckpt", tiny_model(3, seed=3), labels=LABELS, norm_stats=tiny_norm_stats()
    )
    rows = [
        (write_noise(folder / "long.wav", 9.0, 0), "happy"),
        (write_noise(folder / "short.wav", 4.0, 1), "sad"),
    ]
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{p},{y},s1\n" for p, y in rows))
    return ckpt, manifest


def test_evaluate_scores_in_chunks_with_unchanged_results(scored, batches, tmp_path, capsys):
    ckpt, manifest = scored
    loaded = load_checkpoint(ckpt)
    items = read_manifest(manifest)
    mels = FeatureCache(tmp_path / "cache", loaded.config.n_mels, loaded.features).warm(items)
    args = (loaded.model, items, mels, loaded.norm_stats, loaded.config, loaded.features, "cpu")
    whole = item_probabilities(*args, batch_size=4096)
    long, short = batches  # one pass per recording: what evaluate did before
    assert long > 50 and short > 20
    batches.clear()
    chunked = item_probabilities(*args, batch_size=7)
    assert batches == chunks(long, 7) + chunks(short, 7)
    for got, want in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    results = {}
    for size in ("20", "4096"):
        batches.clear()
        argv = ["evaluate", "--checkpoint", ckpt, "--manifest", manifest, "--batch-size", size]
        assert main(list(map(str, argv))) == 0
        assert batches == chunks(long, int(size)) + chunks(short, int(size))
        results[size] = capsys.readouterr().out
    assert results["20"] == results["4096"] and "2 utterances" in results["20"]
    argv = ["evaluate", "--checkpoint", ckpt, "--manifest", manifest, "--batch-size", "0"]
    assert main(list(map(str, argv))) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("argument --batch-size: must be between 1 and 4096, got 0")
    )


def test_plot_attention_runs_in_chunks_with_the_same_maps(scored, batches, tmp_path, capsys):
    ckpt, manifest = scored
    wav = read_manifest(manifest)[0].path
    whole = attention_maps(ckpt, wav, batch_size=4096)
    (total,) = batches
    assert total > 50
    batches.clear()
    png = tmp_path / "att.png"
    argv = ["plot-attention", "--checkpoint", ckpt, wav, "--output", png, "--batch-size", "6"]
    assert main(list(map(str, argv))) == 0
    assert batches == chunks(total, 6) and png.stat().st_size > 5000
    out = capsys.readouterr().out.splitlines()
    ranked = sorted(whole.scores.items(), key=lambda kv: -kv[1])
    assert (
        out[0]
        == f"{wav}: predicted {whole.label} (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")"
    )
    chunked = attention_maps(ckpt, wav, batch_size=6)
    assert chunked.w_f.shape == whole.w_f.shape == chunked.log_mel.shape
    torch.testing.assert_close(chunked.w_f, whole.w_f, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.w_t, whole.w_t, rtol=0, atol=1e-6)
    assert chunked.scores == pytest.approx(whole.scores, abs=1e-6)


@pytest.mark.slow  # one tiny training of one epoch, 2 recordings of 45 s scored: ~10 s
def test_training_scores_validation_and_test_in_chunks(tmp_path, batches):
    """The test and the validation speaker get a 45 s recording each (71 segments of the
    tiny preset's 64 frames): the validation and test scoring never pass more than 64
    segments (predict's default batch) at once, where they used to pass each recording
    whole."""
    manifest = make_corpus(tmp_path / "corpus", speakers=3, per_class=1, seed=2)
    tc = TrainConfig(epochs=1, batch_size=16, hop=64, preset="tiny", device="cpu", progress=False)
    train, val, _ = split(read_manifest(manifest), "loso", "spk1", tc.val_fraction, tc.seed)
    (val_speaker,) = {i.speaker for i in val}
    label = train[0].label  # a label with training utterances
    rows = "".join(  # the test speaker's and the validation speaker's
        f"{write_noise(tmp_path / f'long{k}.wav', 45.0, k)},{label},{speaker}\n"
        for k, speaker in enumerate(("spk1", val_speaker))
    )
    manifest.write_text(manifest.read_text() + rows)
    train_fold(manifest, tmp_path / "run", "spk1", tc=tc)
    # the validation's and the test's long recording, each cut into 64 + the rest
    assert max(batches) == 64 and batches.count(64) == 2
