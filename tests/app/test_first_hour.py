"""Issue 24, a newcomer's first hour: what `train`, `evaluate`, `predict` and
`plot-attention` say, run as a user runs them (the CLI's output lines are asserted)."""

import argparse
import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from atfnn_fast.app.cli import build_parser, main
from atfnn_fast.app.synth import CLASSES, make_corpus
from atfnn_fast.features import mel_centre_frequencies

TRAIN = ["--preset", "tiny", "--epochs", "2", "--batch-size", "16", "--hop", "32"]


def run_cli(*argv) -> tuple[int, list[str], list[str]]:
    """(exit code, stdout lines, stderr lines) of one `atfnn-fast` call."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic corpus (3 speakers x 4 classes x 3) and one fold trained through the CLI,
    with what it printed and what had been printed when the features were computed."""
    from atfnn_fast.app import train as train_module

    root = tmp_path_factory.mktemp("first_hour")
    code, out, err = run_cli("datasets", "synth", "--out", root / "corpus", "--speakers", "3",
                             "--per-class", "3", "--seed", "1")  # fmt: skip
    assert code == 0
    assert out == [
        f"wrote {root / 'corpus' / 'manifest.csv'}: 36 utterances, 3 speakers, synthetic "
        f"prosody classes (not emotions): {', '.join(CLASSES)}"
    ]
    manifest = root / "corpus" / "manifest.csv"
    printed = io.StringIO()
    seen = {}
    real = train_module.FeatureCache.warm

    def warm(self, *args, **kwargs):
        seen["before_features"] = printed.getvalue()
        return real(self, *args, **kwargs)

    train_module.FeatureCache.warm = warm
    try:
        err = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(err):
            code = main(["train", "--manifest", str(manifest), "--out", str(root / "runs"),
                         "--fold", "spk1", "--device", "cpu", *TRAIN])  # fmt: skip
    finally:
        train_module.FeatureCache.warm = real
    assert code == 0, err.getvalue()
    return {
        "root": root,
        "manifest": manifest,
        "out": printed.getvalue().splitlines(),
        "err": err.getvalue(),
        "before_features": seen["before_features"],
        "best": root / "runs" / "spk1" / "best",
    }


# ------------------------------------------------------------------ item 2: train, evaluate
def test_train_says_what_it_does_and_what_it_got(run):
    out = run["out"]
    assert re.fullmatch(
        r"fold spk1 \(loso: test speaker spk1\), device cpu \(\d+ threads\), preset tiny: "
        r"[\d,]+ parameters, 4 classes \(fast_loud, high_rising, low_flat, mid_falling\)",
        out[0],
    )
    validation = out[2].split(": ")[1].split(" ")[0]  # one of spk2, spk3, drawn by the seed
    trained = ({"spk2", "spk3"} - {validation}).pop()
    assert out[1] == f"  train          12 utterances: {trained} (12)"
    assert out[2] == f"  validation     12 utterances: {validation} (12) (picks the best epoch)"
    assert out[3] == "  test           12 utterances: spk1 (12) (held out)"
    assert out[4].startswith("  2 epochs, batch 16, lr 0.0005, segments of 64 frames every 32;")
    # the header is out before the slow part starts (features, then the first epoch)
    assert run["before_features"].splitlines() == out[:5]
    assert re.fullmatch(r"spk1 epoch 1/2: loss \d+\.\d{4}, val WAR .*%, [\d.]+ s \(best so far\)",
                        out[5])  # fmt: skip
    assert out[6].startswith("spk1 epoch 2/2: loss ")
    metrics = json.loads((run["best"].parent / "metrics.json").read_text())
    assert out[7] == (
        f"test speaker spk1: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%} (chance 25.0%), "
        f"best epoch {metrics['best_epoch']} (val UAR {metrics['val_uar']:.1%}), 12 utterances"
    )
    assert out[8:] == [str(run["best"])]  # the checkpoint stays the last line
    assert run["err"] == ""  # nothing on stderr when it is not a terminal


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subcommands(sub):
                    yield f"{name} {inner}", subsub


def test_every_option_says_what_it_is_and_its_default():
    missing = []
    for name, sub in _subcommands(build_parser()):
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest
            text = action.help or ""
            if not text:
                missing.append(f"{name} {flag}: no help")
            has_default = action.default not in (None, False, argparse.SUPPRESS)
            if has_default and not action.required and "default" not in text:
                missing.append(f"{name} {flag}: default {action.default!r} not said")
    assert missing == []
    code, out, _ = run_cli("train", "--help")
    text = " ".join(" ".join(out).split())
    assert code == 0
    assert "paper: the paper's model" in text and "tiny: the same architecture, narrow" in text
    assert (
        "--epochs EPOCHS training epochs; the best by validation UAR is kept (default 30)" in text
    )


def test_evaluate_scores_the_held_out_fold_and_warns_about_training_speakers(run):
    best, manifest = run["best"], run["manifest"]
    code, out, err = run_cli("evaluate", "--checkpoint", best, "--manifest", manifest)
    metrics = json.loads((best.parent / "metrics.json").read_text())
    assert code == 0 and err == []
    assert out[0] == (
        f"fold spk1: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%} (chance 25.0%), "
        "12 utterances"
    )  # the same numbers as training's held-out result
    assert [line.split()[0] for line in out[1:]] == sorted(CLASSES)

    code, out, err = run_cli("evaluate", "--checkpoint", best, "--manifest", manifest,
                             "--fold", "all")  # fmt: skip
    assert code == 0
    assert out[0].startswith("the whole manifest: WAR ")
    assert out[0].endswith(", 36 utterances, 24 of them seen in training")
    assert err == [
        f"atfnn-fast: warning: {manifest}: 24 of 36 utterances are from speakers {best} was "
        "trained or validated on (spk2, spk3); their scores overstate accuracy on new speakers "
        "(its held-out fold: --fold spk1)"
    ]
    code, out, err = run_cli("evaluate", "--checkpoint", best, "--manifest", manifest,
                             "--fold", "spk9")  # fmt: skip
    assert code == 2 and err == [
        f"atfnn-fast: error: {manifest}: no utterances of speaker 'spk9' (the manifest has "
        "['spk1', 'spk2', 'spk3']); give --fold with one of them or all"
    ]


# ----------------------------------------------------------------------- item 3: predict
def test_predict_folders_manifests_csv_and_what_ran(run, tmp_path):
    best, manifest = run["best"], run["manifest"]
    folder = run["root"] / "corpus" / "spk1"
    code, out, err = run_cli("predict", "--checkpoint", best, folder)
    assert code == 0
    assert err == [f"predict: checkpoint {best} on PyTorch cpu ({torch.get_num_threads()} threads)"]
    files = sorted(folder.glob("*.wav"))
    assert [line.split(": ")[0] for line in out] == [str(f) for f in files]
    assert all(re.fullmatch(r".+\.wav: \w+ \((\w+ \d\.\d{3}(, )?){4}\)", line) for line in out)

    code, out, err = run_cli("predict", "--checkpoint", best, "--csv", manifest)
    rows = list(csv.DictReader(out))
    assert code == 0 and len(rows) == 36
    assert list(rows[0]) == ["path", "label", *sorted(CLASSES), "error"]
    assert all(r["label"] in CLASSES and r["error"] == "" for r in rows)
    assert all(abs(sum(float(r[c]) for c in CLASSES) - 1) < 1e-4 for r in rows)

    text = tmp_path / "notes.wav"
    text.write_text("hello, not audio\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli("predict", "--checkpoint", best, "--json", text, empty, files[0])
    assert code == 1
    bad, nothing, good = json.loads("\n".join(out))
    assert bad == {
        "path": str(text),
        "error": f"{text}: cannot decode audio (Format not recognised; the file starts with "
        "text ('hello, not a'...), extension .wav)",
    }
    assert (
        nothing["error"] == f"{empty}: no audio files (.wav, .flac, .ogg, .opus, .mp3, .aiff, .aif)"
    )
    assert set(good) == {"path", "label", "scores"}  # no duplicate `file` key
    assert err[1:] == [
        f"atfnn-fast: error: {bad['error']}",
        f"atfnn-fast: error: {nothing['error']}",
    ]


def test_a_run_directory_given_as_checkpoint_names_its_best(run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(run["best"].parent, runs / "spk1")
    shutil.copytree(run["best"].parent, runs / "spk2")
    wav = sorted((run["root"] / "corpus" / "spk1").glob("*.wav"))[0]
    code, out, err = run_cli("predict", "--checkpoint", runs / "spk1", wav)
    assert (code, out) == (1, []) and err == [
        f"atfnn-fast: error: {runs / 'spk1'}: a fold directory of `train`, not a checkpoint; "
        f"give its best checkpoint: {runs / 'spk1' / 'best'}"
    ]
    code, out, err = run_cli("evaluate", "--checkpoint", runs, "--manifest", run["manifest"])
    assert code == 1 and err == [
        f"atfnn-fast: error: {runs}: a run directory of `train`, not a checkpoint; give its "
        f"best checkpoint: {runs / 'spk1' / 'best'}, {runs / 'spk2' / 'best'}"
    ]


# ------------------------------------------------------------------- item 6: the plot
def test_attention_plot_explains_itself(run, tmp_path):
    from atfnn_fast.app.plots import attention_figure, attention_maps

    wav = run["root"] / "corpus" / "spk1" / "high_rising_0.wav"
    png = tmp_path / "att.png"
    code, out, err = run_cli("plot-attention", "--checkpoint", run["best"], wav, "--output", png)
    assert code == 0 and err == [] and out[-1] == str(png) and png.stat().st_size > 20_000
    data = attention_maps(run["best"], wav)
    ranked = sorted(data.scores.items(), key=lambda kv: -kv[1])
    assert (
        out[0]
        == f"{wav}: predicted {data.label} (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")"
    )

    fig = attention_figure(data, wav.name)
    assert fig._suptitle.get_text() == (
        f"high_rising_0.wav: predicted {data.label} (score {ranked[0][1]:.2f}; next "
        f"{ranked[1][0]} {ranked[1][1]:.2f})"
    )
    mel, w_f, w_t = fig.axes[:3]  # the panels; their colour bars follow
    centres = mel_centre_frequencies(80)
    for ax in (mel, w_f, w_t):
        assert ax.get_ylabel() == "frequency (Hz)"
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["250", "500", "1k", "2k", "4k"]
        # the 1 kHz tick sits where the band centres cross 1 kHz
        position = ax.get_yticks()[2]
        assert centres[int(position - 0.5)] <= 1000 <= centres[int(position + 0.5)]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["segment boundary (64 frames)"]  # 1.4 s: boundaries at 0.64, 1.28 s
        assert [line.get_xdata()[0] for line in ax.get_lines()] == pytest.approx([0.64, 1.28])
    # the two attention panels share one colour scale, and each says its own range
    clims = [ax.get_images()[0].get_clim() for ax in (w_f, w_t)]
    assert clims[0] == clims[1]
    low = min(float(data.w_f.min()), float(data.w_t.min()))
    high = max(float(data.w_f.max()), float(data.w_t.max()))
    assert clims[0] == pytest.approx((low, high))
    assert w_f.get_title() == (
        f"F-Attention weights (this panel {float(data.w_f.min()):.2f} to "
        f"{float(data.w_f.max()):.2f})"
    )
    assert not any(line.get_ydata()[0] == 50 for ax in fig.axes for line in ax.get_lines())


def test_mel_centre_frequencies_are_the_filter_peaks():
    from atfnn_fast.features import FeatureConfig, _mel_filters

    peaks = _mel_filters(80, FeatureConfig()).argmax(0).numpy() * 16000 / 512
    centres = mel_centre_frequencies(80)
    assert abs(centres - peaks).max() <= 16000 / 512  # within one FFT bin
    assert centres[0] == pytest.approx(22.1, abs=0.1) and centres[-1] == pytest.approx(7733, abs=1)


def test_synthetic_corpus_trains_like_the_readme(tmp_path):
    """`datasets synth` writes what the README's first-hour section trains on."""
    code, out, _ = run_cli("datasets", "synth", "--out", tmp_path / "c", "--per-class", "1")
    assert code == 0 and out[0].startswith(f"wrote {tmp_path / 'c' / 'manifest.csv'}: 20 ")
    assert len(Path(tmp_path / "c" / "manifest.csv").read_text().splitlines()) == 21
    assert make_corpus  # the same generator as the demo's
