"""Issue 18, through the command line as a user runs it: every valid audio file decodes,
no file makes time or memory explode, a NaN never passes as a result, every field read is
checked and its error names the file, odd files and options get one-line refusals."""

import json
import os
import re
import signal
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_model, tiny_norm_stats, wav_bytes

from atfnn_fast.app import train as train_module
from atfnn_fast.app.cli import main
from atfnn_fast.app.datasets import FeatureCache
from atfnn_fast.app.synth import CLASSES, make_corpus
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.features import AUDIO_RATE_RANGE, FeatureConfig, speech_sample
from atfnn_fast.manifest import read_manifest

LABELS = sorted(CLASSES)


def cli(capsys, *argv):
    """(exit code, stdout, stderr lines) of ``atfnn-fast ...``; never a traceback. The line
    of ``predict`` saying what runs is left out."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if not line.startswith("predict: ")]


def _model(**changes):
    return tiny_model(len(LABELS), **changes)


_stats = tiny_norm_stats


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(folder / "ok", _model(), labels=LABELS, norm_stats=_stats())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), speakers=3, per_class=2, seed=3)


def poison(model):
    """Finite weights whose outputs are not: the last LSTM layer saturates every unit at
    +1 and the classifier's 3e38 weights overflow the logits to +inf, which softmax turns
    into NaN."""
    last = f"_l{model.config.lstm_layers - 1}"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("t_encoder.") and last in name:
                p.fill_(0.0 if "weight" in name else 50.0)
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(3e38)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return model


def nan_model():
    return poison(_model())


# ------------------------------------------------------------- 1: every valid file decodes
def test_predict_reads_odd_length_wavs_and_refuses_a_cut_one(ckpt, tmp_path, capsys):
    speech, rate = sf.read(str(speech_sample()))
    speech = speech[: 2 * rate + 1]  # odd
    files = []
    for bits, extensible in ((24, True), (8, False), (16, False)):
        files.append(tmp_path / f"odd{bits}.wav")
        files[-1].write_bytes(wav_bytes(speech[:, None] * 0.9, rate, bits, extensible=extensible))
    sf.write(str(tmp_path / "sf24.wav"), speech, rate, subtype="PCM_24")
    files.append(tmp_path / "sf24.wav")
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", *files)
    assert (code, err) == (0, [])
    assert [e["label"] in LABELS for e in json.loads(out)] == [True] * 4
    cut = tmp_path / "cut.wav"
    cut.write_bytes(files[0].read_bytes()[:-100])
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", cut)
    (entry,) = json.loads(out)
    assert code == 1 and entry["error"].startswith(f"{cut}: truncated audio file")
    assert err == [f"atfnn-fast: error: {entry['error']}"]


# ------------------------------------------------- 2: bounded rates, lengths, block reads
def test_odd_rates_predict_and_absurd_rates_are_refused(ckpt, tmp_path, capsys):
    t = np.arange(int(1.5 * 48001)) / 48001
    sf.write(str(tmp_path / "r48001.wav"), 0.3 * np.sin(2 * np.pi * 300 * t), 48001)
    one_hz = tmp_path / "one_hz.wav"
    one_hz.write_bytes(wav_bytes(np.zeros((2000, 1)), 1, 16))
    code, out, err = cli(
        capsys, "predict", "--checkpoint", ckpt, "--json", tmp_path / "r48001.wav", one_hz
    )
    good, bad = json.loads(out)
    low, high = AUDIO_RATE_RANGE
    refusal = f"{one_hz}: sample rate 1 Hz is outside the supported {low}..{high} Hz"
    assert code == 1 and good["label"] in LABELS and bad["error"] == refusal
    assert err == [f"atfnn-fast: error: {refusal}"]


def test_evaluate_refuses_a_file_with_an_absurd_rate_naming_it(ckpt, corpus, tmp_path, capsys):
    items = read_manifest(corpus)
    original = items[0].path.read_bytes()
    items[0].path.write_bytes(wav_bytes(np.zeros((4000, 1)), 1, 16))
    try:
        code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", corpus)
    finally:
        items[0].path.write_bytes(original)
    assert code == 1 and err == [
        f"atfnn-fast: error: {items[0].path}: sample rate 1 Hz is outside the supported "
        f"{AUDIO_RATE_RANGE[0]}..{AUDIO_RATE_RANGE[1]} Hz"
    ]


def test_evaluate_reads_audio_in_blocks(ckpt, corpus, tmp_path, capsys, monkeypatch):
    """`evaluate` (and `train`: both fill the same feature cache) reads and resamples
    blocks of AUDIO_BLOCK_SECONDS, as `predict` does."""
    import shutil

    from atfnn_fast import features

    shutil.rmtree(corpus.parent / ".atfnn-cache", ignore_errors=True)
    blocks = []
    real = features._read
    monkeypatch.setattr(features, "AUDIO_BLOCK_SECONDS", 0.25)
    monkeypatch.setattr(features, "_read", lambda p, h, n: blocks.append(n) or real(p, h, n))
    code, out, _ = cli(
        capsys, "evaluate", "--checkpoint", ckpt, "--manifest", corpus, "--out", tmp_path
    )
    assert code == 0 and "UAR" in out
    assert blocks and max(blocks) == 0.25 * 16000 and len(blocks) > len(read_manifest(corpus))


# -------------------------------------------------------------- 3: non-finite never passes
def test_predict_gives_non_finite_scores_an_error_entry(tmp_path, capsys):
    nan_ckpt = save_checkpoint(tmp_path / "nan", nan_model(), labels=LABELS, norm_stats=_stats())
    code, out, err = cli(capsys, "predict", "--checkpoint", nan_ckpt, "--json", speech_sample())
    (entry,) = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert code == 1 and set(entry) == {"path", "error"}
    assert re.fullmatch(
        rf"{re.escape(str(speech_sample()))}: the model's scores are not finite \(NaN or Inf\) "
        r"for \d+ of \d+ segments; the model is broken \(diverged training\?\)",
        entry["error"],
    )
    code, out, err = cli(capsys, "predict", "--checkpoint", nan_ckpt, speech_sample())
    assert (code, out) == (1, "") and "scores are not finite" in err[0]


def test_onnx_predict_gives_non_finite_scores_an_error_entry(tmp_path, capsys):
    from atfnn_fast.export import export_onnx

    path = export_onnx(nan_model(), tmp_path / "nan.onnx", labels=LABELS, norm_stats=_stats())
    code, out, _ = cli(capsys, "predict", "--onnx", path, "--json", speech_sample())
    (entry,) = json.loads(out)
    assert code == 1 and "scores are not finite" in entry["error"]


def test_evaluate_refuses_a_model_with_non_finite_outputs(corpus, tmp_path, capsys):
    nan_ckpt = save_checkpoint(tmp_path / "nan", nan_model(), labels=LABELS, norm_stats=_stats())
    code, out, err = cli(
        capsys, "evaluate", "--checkpoint", nan_ckpt, "--manifest", corpus, "--out", tmp_path
    )
    assert (code, out) == (1, "") and len(err) == 1
    assert err[0].startswith(f"atfnn-fast: error: {nan_ckpt}: ")
    assert "scores are not finite" in err[0]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("poison_with", ["outputs", "loss", "weights"])
def test_a_diverging_run_says_so_and_keeps_no_broken_best(
    corpus, tmp_path, capsys, monkeypatch, poison_with
):
    """Epoch 1 trains normally; epoch 2 ends with finite weights whose outputs are not
    finite, or has a NaN loss, or ends with NaN weights: the run stops with exit 1 naming
    the epoch, and ``best`` is still epoch 1's checkpoint, which predicts finite scores."""
    real = train_module._run_epoch

    def run_epoch(run, net, optimizer, data, epoch):
        if epoch == 2 and poison_with == "loss":
            with torch.no_grad():
                net.classifier.weight.fill_(float("nan"))
        if epoch == 2 and poison_with == "weights":  # the epoch's last update breaks them
            steps = [0, -(-len(data.y_train) // run.tc.batch_size)]

            def last_step(*_):
                steps[0] += 1
                if steps[0] == steps[1]:
                    net.classifier.bias.data.fill_(float("nan"))

            optimizer.register_step_post_hook(last_step)
        loss = real(run, net, optimizer, data, epoch)
        if epoch == 2 and poison_with == "outputs":
            poison(net)
        return loss

    monkeypatch.setattr(train_module, "_run_epoch", run_epoch)
    code, out, err = cli(
        capsys,
        "train",
        "--manifest",
        corpus,
        "--out",
        tmp_path,
        "--fold",
        "spk1",
        "--preset",
        "tiny",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--hop",
        "32",
        "--device",
        "cpu",
    )
    what = {
        "outputs": "validation outputs are not finite",
        "loss": "training loss is not finite",
        "weights": "weights are not finite (classifier.bias",
    }[poison_with]
    assert code == 1 and err[-1].startswith(
        f"atfnn-fast: error: {tmp_path / 'spk1'}: training diverged in epoch 2: its {what}"
    ), err
    assert "Try a lower --lr than" in err[-1]
    state = json.loads((tmp_path / "spk1" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["best_epoch"] == 1
    code, out, _ = cli(
        capsys, "predict", "--checkpoint", tmp_path / "spk1" / "best", "--json", speech_sample()
    )
    assert code == 0 and all(np.isfinite(list(json.loads(out)[0]["scores"].values())))


@pytest.mark.parametrize("lr", ["1e9", "inf", "nan", "0", "-1"])
def test_lr_has_a_sane_upper_bound(corpus, tmp_path, capsys, lr):
    code, out, err = cli(
        capsys, "train", "--manifest", corpus, "--out", tmp_path, "--lr", lr, "--epochs", "1"
    )
    assert (code, out) == (2, "")
    assert err == [f"atfnn-fast train: error: argument --lr: must be a number in (0, 1], got {lr}"]


# ------------------------------------------------- 4: every field checked, file named
def _edited(ckpt, tmp_path, edit, weights=None):
    """A copy of ``ckpt`` whose config.json is ``edit(meta)`` (and weights replaced)."""
    import hashlib
    import shutil

    from safetensors.torch import save_file

    target = tmp_path / "edited"
    shutil.copytree(ckpt, target)
    meta = json.loads((target / "config.json").read_text())
    if weights is not None:
        save_file(weights, str(target / "model.safetensors"))
        data = (target / "model.safetensors").read_bytes()
        meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    text = edit(meta)
    (target / "config.json").write_text(text if isinstance(text, str) else json.dumps(meta))
    return target


def _set(path, value):
    def edit(meta):
        *head, last = path
        node = meta
        for key in head:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            _set(["labels"], [LABELS[0], LABELS[1], LABELS[0], LABELS[3]]),
            f"field 'labels': names 0 and 2 are the same ({LABELS[0]!r}); names must be unique",
        ),
        (_set(["labels"], ["", *LABELS[1:]]), "field 'labels': name 0 is empty or blank ('')"),
        (
            _set(["features", "f_min"], 9000.0),
            "field 'features': FeatureConfig: need 0 <= f_min < f_max <= sample_rate / 2 = "
            "8000 Hz, got f_min = 9000.0, f_max = None",
        ),
        (
            _set(["features", "f_max"], 0.0),
            "field 'features': FeatureConfig: need 0 <= f_min < f_max <= sample_rate / 2 = "
            "8000 Hz, got f_min = 0.0, f_max = 0.0",
        ),
        (
            _set(["features", "sample_rate"], 1),
            "field 'features': FeatureConfig.sample_rate must be in 4000..384000 Hz, got 1",
        ),
        (
            _set(["model", "layer_norm_eps"], float("inf")),
            "field 'model': ATFNNConfig.layer_norm_eps must be finite and positive, got inf",
        ),
        (
            _set(["features"], [1, 2]),
            "field 'features': FeatureConfig: expected a JSON object, got list",
        ),
        (lambda meta: "[" * 100_000, "not valid JSON (nested too deeply to parse)"),
    ],
)
def test_bad_config_json_is_refused_naming_the_file_and_field(
    ckpt, tmp_path, capsys, edit, message
):
    edited = _edited(ckpt, tmp_path, edit)
    for argv in (
        ["predict", "--checkpoint", edited, speech_sample()],
        ["export", "--checkpoint", edited, "--output", tmp_path / "m.onnx"],
    ):
        code, out, err = cli(capsys, *argv)
        assert (code, out) == (1, "")
        assert err == [f"atfnn-fast: error: {edited / 'config.json'}: {message}"]
    assert not (tmp_path / "m.onnx").exists()


def test_integer_weights_are_refused(ckpt, tmp_path, capsys):
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    weights["classifier.weight"] = weights["classifier.weight"].round().to(torch.int32)
    edited = _edited(ckpt, tmp_path, lambda meta: None, weights=weights)
    code, out, err = cli(capsys, "predict", "--checkpoint", edited, speech_sample())
    assert (code, out) == (1, "")
    assert err == [
        f"atfnn-fast: error: {edited / 'model.safetensors'}: weights must be floating point; "
        "these are not: classifier.weight (int32)"
    ]


def test_export_refuses_duplicate_labels(tmp_path):
    from atfnn_fast.export import export_onnx

    with pytest.raises(ValueError, match=r"labels: names 0 and 1 are the same \('a'\)"):
        export_onnx(_model(), tmp_path / "m.onnx", labels=["a", "a", "b", "c"])
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- 5: files and options
class _Hang(Exception):
    pass


def test_a_fifo_is_refused_without_blocking(ckpt, tmp_path, capsys):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)

    def hang(*_):
        raise _Hang("predict blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, "--json", fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    message = f"{fifo}: is a FIFO (named pipe), not an audio file (a regular file is needed)"
    assert code == 1 and json.loads(out) == [{"path": str(fifo), "error": message}]


def test_file_names_with_any_bytes(ckpt, tmp_path, capsys):
    name = os.fsdecode(b"\xe9motion-\xff.wav")  # not UTF-8
    path = tmp_path / name
    path.write_bytes(speech_sample().read_bytes())
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", path)
    (entry,) = json.loads(out)
    assert (code, err) == (0, []) and entry["label"] in LABELS
    assert os.fsencode(entry["path"]) == os.fsencode(str(path))  # the name round-trips
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, path)  # text output
    assert code == 0 and out.startswith(str(tmp_path)) and "\\xe9motion-\\xff.wav: " in out


@pytest.mark.parametrize("opset", ["99", "17", "x"])
def test_opset_outside_the_supported_range_is_a_one_line_usage_error(ckpt, tmp_path, capsys, opset):
    from atfnn_fast.export.onnx_export import DEFAULT_OPSET, MAX_OPSET

    code, out, err = cli(
        capsys, "export", "--checkpoint", ckpt, "--output", tmp_path / "m.onnx", "--opset", opset
    )
    why = (
        f"expected an integer, got {opset!r}"
        if opset == "x"
        else f"must be between {DEFAULT_OPSET} and {MAX_OPSET}, got {opset}"
    )
    assert (code, out, err) == (2, "", [f"atfnn-fast export: error: argument --opset: {why}"])


def test_damaged_cache_entry_is_rebuilt_with_a_warning(ckpt, corpus, tmp_path, capsys):
    code, first, _ = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", corpus)
    assert code == 0
    cache = FeatureCache(corpus.parent / ".atfnn-cache", 10, FeatureConfig())
    entries = [cache._key(item.path) for item in read_manifest(corpus)[:2]]
    torch.save(torch.zeros(3, 7), entries[0])  # wrong shape
    lm = torch.load(entries[1], weights_only=True)
    torch.save(lm.index_fill(1, torch.tensor([0]), float("nan")), entries[1])  # NaN frames
    code, again, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", corpus)
    assert code == 0 and again == first
    assert len(err) == 2 and all(line.startswith("atfnn-fast: warning: ") for line in err)
    assert f"{entries[0]}: damaged feature-cache entry" in err[0] and "shape (3, 7)" in err[0]
    assert f"{entries[1]}: damaged feature-cache entry" in "".join(err)
    assert "(holds NaN or Inf values); rebuilding it" in "".join(err)


def test_manifest_with_a_repeated_header_or_labels_differing_in_case(ckpt, corpus, capsys):
    text = corpus.read_text()
    header, first, *rest = text.splitlines()
    bad = corpus.parent / "joined.csv"
    bad.write_text("\n".join([header, first, header, *rest]) + "\n")
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", bad)
    assert code == 1 and err == [
        f"atfnn-fast: error: {bad}:3: the header row path,label,speaker appears again "
        "(two manifests joined?); keep only the first"
    ]
    label = first.split(",")[1]
    bad.write_text("\n".join([header, first, f"{rest[0].split(',')[0]},{label.upper()},x"]))
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", bad)
    assert code == 1 and err == [
        f"atfnn-fast: error: {bad}: labels {label!r} (line 2) and {label.upper()!r} (line 3) "
        "differ only in case; they would be two classes. Use one spelling"
    ]


def test_wav_bytes_helper_is_valid():
    data = np.zeros((3, 1))
    raw = wav_bytes(data, 16000, 24)
    assert raw[:4] == b"RIFF" and struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
