"""ONNX export, validation in ONNX Runtime, TensorRT readiness, the predictor and the CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from helpers import VARIANTS, randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from atfnn_fast.app.cli import main
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.export import (
    OnnxError,
    OnnxPredictor,
    OnnxValidationError,
    check_tensorrt_ready,
    export_onnx,
    read_metadata,
    validate_onnx,
)
from atfnn_fast.export.onnx_export import int8_saturation_risks
from atfnn_fast.features import FeatureConfig, NormStats, speech_sample

LABELS = ["angry", "happy", "sad", "neutral"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default model with random weights, exported once for the module's tests."""
    torch.manual_seed(0)
    model = randomize(ATFNN(ATFNNConfig(dropout=0.0)), 0.2).eval()
    stats = NormStats.fit([torch.randn(80, 50, dtype=torch.float64) * 2 - 5])
    path = export_onnx(
        model,
        tmp_path_factory.mktemp("onnx") / "model.onnx",
        labels=LABELS,
        norm_stats=stats,
        features=FeatureConfig(f_max=7600.0),
    )
    return path, model, stats


def test_graph_uses_standard_ops_one_lstm_per_layer(exported):
    path, _, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert ops.count("LSTM") == 3  # one node per layer, not unrolled
    assert "Loop" not in ops and "Scan" not in ops
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lstm.attribute}
    assert attrs["direction"] == b"bidirectional" and attrs.get("layout", 0) == 0
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 80, 128]  # dynamic batch, time fixed at frames
    out_dims = [
        d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim
    ]
    assert out_dims == ["batch", 4]


def test_validates_at_several_batch_sizes(exported):
    path, model, _ = exported
    report = validate_onnx(path, model, batch_sizes=(1, 7, 64))
    assert report.passed and [r.batch for r in report.results] == [1, 7, 64]
    assert all(r.max_rel <= 1e-4 for r in report.results)
    assert "CPUExecutionProvider" in report.providers
    assert "PASS" in str(report)


def test_metadata_round_trip(exported):
    path, model, stats = exported
    meta = read_metadata(path)
    assert meta["config"] == model.config
    assert meta["labels"] == LABELS
    assert meta["norm_stats"] == stats
    assert meta["features"] == FeatureConfig(f_max=7600.0)
    assert meta["dtype"] == "float32" and meta["quantization"] == "none"


def test_onnxruntime_loads_without_warnings(exported):
    path, _, _ = exported
    code = (
        "import onnxruntime as ort; so = ort.SessionOptions(); so.log_severity_level = 1; "
        f"ort.InferenceSession({str(path)!r}, so, providers=['CPUExecutionProvider'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "[W:" not in proc.stderr and "[E:" not in proc.stderr, proc.stderr


def test_default_graph_has_no_score_tensor(exported):
    """The default (ONNX Runtime) graph writes the F-Encoder's attention as one standard
    Attention node per model: no Softmax, and no value of the (heads, frames, F, F) scores."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(exported[0])))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Attention") == 1 and "Softmax" not in ops
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 23
    for value in proto.graph.value_info:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[-2:] != [80, 80], f"{value.name}: {dims}"


def test_tensorrt_target_is_ready_and_the_default_says_what_it_needs(exported, tmp_path):
    """The tensorrt target passes the TensorRT check; the default graph is flagged with the
    TensorRT version its Attention node needs and the way out."""
    path, model, _ = exported
    trt = export_onnx(model, tmp_path / "trt.onnx", labels=LABELS, target="tensorrt")
    assert check_tensorrt_ready(trt) == []
    proto = onnx.load(str(trt))
    assert "Attention" not in {n.op_type for n in proto.graph.node}
    problems = "\n".join(check_tensorrt_ready(path))
    assert "Attention needs TensorRT >= 10.14" in problems
    assert "--target tensorrt" in problems and "opset 23" in problems


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_both_targets_validate_against_eager_at_batches_1_3_17(exported, tmp_path, target):
    path, model, _ = exported
    if target != "onnxruntime":
        path = export_onnx(model, tmp_path / f"{target}.onnx", labels=LABELS, target=target)
    report = validate_onnx(path, model, batch_sizes=(1, 3, 17))
    assert report.passed and [r.batch for r in report.results] == [1, 3, 17]
    assert all(r.max_rel <= 1e-4 for r in report.results)


def test_int8_export_of_the_default_graph_keeps_its_attention(exported, tmp_path):
    _, model, _ = exported
    q = export_onnx(model, tmp_path / "int8.onnx", labels=LABELS, quantize="int8")
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "Attention" in ops and "DynamicQuantizeLSTM" in ops
    # format U8U8: the agreement below holds on x86 without VNNI too (issue 30)
    assert int8_saturation_risks(onnx.load(str(q))) == []
    report = validate_onnx(q, model, batch_sizes=(1, 3, 17))
    assert report.passed, str(report)


def test_unknown_target_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match="target must be one of"):
        export_onnx(exported[1], tmp_path / "x.onnx", labels=LABELS, target="trt")


def test_tensorrt_check_flags_a_broken_graph(exported, tmp_path):
    proto = onnx.load(str(exported[0]))
    graph = proto.graph
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    lstm.attribute.append(onnx.helper.make_attribute("layout", 1))
    lstm.attribute.append(
        onnx.helper.make_attribute(
            "activations", ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"]
        )
    )
    # the graph writes its LayerNorms out; a LayerNormalization node using all 3 outputs
    graph.node.append(
        onnx.helper.make_node(
            "LayerNormalization", ["spectrogram", "scale"], ["ln_y", "ln_mean", "ln_invstd"]
        )
    )
    conv = next(n for n in graph.node if n.op_type == "Conv")
    conv.input[1] = "runtime_weight"
    graph.node.append(onnx.helper.make_node("MyOp", ["spectrogram"], ["custom"], domain="my.ops"))
    graph.node.append(onnx.helper.make_node("Hardmax", ["spectrogram"], ["hard"]))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    problems = "\n".join(check_tensorrt_ready(broken))
    assert "layout=1" in problems
    assert "different activations per direction" in problems
    assert "Mean / InvStdDev outputs" in problems
    assert "'runtime_weight' is not an initializer" in problems
    assert "custom domain 'my.ops'" in problems
    assert "Hardmax is not in the TensorRT support matrix" in problems


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,source",
    [("ATFNN", "encoding"), ("TFNN", "input"), ("ATNN", "input"), ("AFNN", "input")],
)
def test_every_variant_exports_and_validates(tmp_path, variant, source):
    cfg = tiny_config(t_attention_source=source, **VARIANTS[variant])
    model = randomize(ATFNNReference(cfg), 0.3).eval()
    for target in ("onnxruntime", "tensorrt"):
        path = export_onnx(model, tmp_path / f"{target}.onnx", target=target)
        report = validate_onnx(path, model, batch_sizes=(1, 7, 64))
        assert report.passed, str(report)
    assert check_tensorrt_ready(path) == []  # the tensorrt target


@pytest.mark.slow
def test_static_batch_and_float16(tmp_path):
    model = randomize(ATFNN(tiny_config()), 0.3).eval()
    static = export_onnx(model, tmp_path / "static.onnx", dynamic_batch=False)
    dims = [d.dim_value for d in onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 10, 16]
    assert validate_onnx(static, model, batch_sizes=(1,)).passed
    half = export_onnx(model, tmp_path / "half.onnx", dtype="float16")
    proto = onnx.load(str(half))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert not [t.name for t in weights if np.prod(t.dims) > 1]  # every weight in fp16
    report = validate_onnx(half, model)
    if report.skipped:  # no CUDA execution provider: stated, not silently passed
        assert "CUDA execution provider" in report.skipped and not report.passed
        with pytest.raises(OnnxError, match="float16 graph needs ONNX Runtime's CUDA"):
            OnnxPredictor(half)
    else:
        assert report.passed


def test_validation_fails_loudly_on_a_wrong_graph(exported, tmp_path):
    proto = onnx.load(str(exported[0]))
    bias = next(t for t in proto.graph.initializer if "classifier.bias" in t.name)
    values = onnx.numpy_helper.to_array(bias) + 1.0
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(proto, str(wrong))
    with pytest.raises(OnnxValidationError, match="FAIL"):
        validate_onnx(wrong, exported[1], batch_sizes=(2,))


def test_bad_files_give_clear_errors(tmp_path, exported):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07definitely not a protobuf" * 20)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported[0].read_bytes()[:5000])
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(plain))
    for path, pattern in (
        (garbage, "not a readable ONNX"),
        (truncated, "not a readable ONNX"),
        (plain, "not exported by atfnn-fast"),
    ):
        with pytest.raises(OnnxError, match=pattern) as info:
            OnnxPredictor(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        read_metadata(tmp_path / "missing.onnx")
    with pytest.raises(OnnxError, match="not a readable ONNX"):
        check_tensorrt_ready(garbage)


def test_export_checks_its_arguments(tmp_path):
    model = ATFNN(tiny_config())
    with pytest.raises(ValueError, match=r"opset must be an int in 18\.\.20, got 17"):
        export_onnx(model, tmp_path / "m.onnx", opset=17)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_onnx(model, tmp_path / "m.onnx", dtype="int8")
    with pytest.raises(ValueError, match="expected 3 names"):
        export_onnx(model, tmp_path / "m.onnx", labels=["a"])
    with pytest.raises(TypeError, match="ATFNN or ATFNNReference"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_predictor_on_spectrograms_and_files(exported, tmp_path):
    path, model, _ = exported
    predictor = OnnxPredictor(path)
    x = torch.randn(5, 1, 80, 128)
    probs = predictor.predict_spectrograms(x.numpy())
    with torch.no_grad():
        want = model(x).softmax(-1).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(predictor.predict_spectrograms(x[:, 0].numpy()), probs)
    with pytest.raises(ValueError, match=r"\(S, 1, 80, 128\)"):
        predictor.predict_spectrograms(np.zeros((2, 1, 80, 64), np.float32))
    stereo = tmp_path / "stereo_44k.wav"
    wave, rate = sf.read(str(speech_sample()))
    sf.write(str(stereo), np.stack([wave, wave * 0.5], 1), rate)
    pred = predictor.predict_file(stereo)
    assert pred.label in LABELS and set(pred.scores) == set(LABELS)
    assert sum(pred.scores.values()) == pytest.approx(1.0)


def test_cli_export_and_predict(exported, tmp_path, capsys):
    _, model, stats = exported
    ckpt = save_checkpoint(tmp_path / "ckpt", model, labels=LABELS, norm_stats=stats)
    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--validate"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and out.exists()
    assert "TensorRT" not in text  # issue 30: only --target tensorrt is checked for it
    trt = tmp_path / "trt.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(trt), "--target", "tensorrt"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "no problem found" in text and f"trtexec --onnx={trt}" in text

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    files = [str(speech_sample()), str(tmp_path / "missing.wav"), str(bad)]
    for source in (["--onnx", str(out)], ["--checkpoint", str(ckpt)]):
        code = main(["predict", *source, "--json", *files])
        captured = capsys.readouterr()
        assert code == 1
        result, missing, broken = json.loads(captured.out)
        assert set(result) == {"path", "label", "scores"}  # no duplicate `file` key
        assert result["path"] == files[0] and set(result["scores"]) == set(LABELS)
        assert missing == {"path": files[1], "error": f"{files[1]}: audio file not found"}
        assert set(broken) == {"path", "error"} and broken["path"] == files[2]
        assert broken["error"] == (
            f"{files[2]}: cannot decode audio (Error in WAV/W64/RF64 file. Malformed 'fmt ' "
            "chunk; the file starts with a RIFF/WAV header, extension .wav)"
        )
        ran, *errors = captured.err.strip().splitlines()
        assert ran == (
            f"predict: {out} on ONNX Runtime CPUExecutionProvider"
            if source[0] == "--onnx"
            else f"predict: checkpoint {ckpt} on PyTorch cpu ({torch.get_num_threads()} threads)"
        )
        assert errors == [
            f"atfnn-fast: error: {missing['error']}",
            f"atfnn-fast: error: {broken['error']}",
        ]


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["export", "--checkpoint", str(tmp_path / "nope"), "--output", "x.onnx"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"atfnn-fast: error: {tmp_path / 'nope'}: checkpoint directory not found"
    )


# ---------------------------------------------------------------- issue 13: reliability
def predict_cli(capsys, *argv):
    """(exit code, stdout, stderr lines) of `atfnn-fast predict ...`; never a traceback. The
    line saying what runs (`predict: <model> on ...`) is checked and left out."""
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = err.splitlines()
    if lines and lines[0].startswith("predict: "):
        assert re.fullmatch(
            r"predict: .+ on (ONNX Runtime \w+ExecutionProvider|PyTorch .+)", lines[0]
        )
        lines = lines[1:]
    return code, out, lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model (10 bands, 16 frames) as a checkpoint, a dynamic-batch and a static-batch
    ONNX file."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(1)
    model = randomize(ATFNN(tiny_config()), 0.3).eval()
    stats = NormStats.fit([torch.randn(10, 50, dtype=torch.float64) - 5])
    labels = ["angry", "happy", "sad"]
    kw = dict(labels=labels, norm_stats=stats)
    ckpt = save_checkpoint(folder / "ckpt", model, **kw)
    dynamic = export_onnx(model, folder / "dynamic.onnx", **kw)
    static = export_onnx(model, folder / "static.onnx", dynamic_batch=False, **kw)
    return {"model": model, "ckpt": ckpt, "dynamic": dynamic, "static": static}


class Spy:
    """Records the batch sizes that reach a callable."""

    def __init__(self, fn, size):
        self.fn, self.size, self.sizes = fn, size, []

    def __call__(self, *args, **kwargs):
        self.sizes.append(self.size(*args, **kwargs))
        return self.fn(*args, **kwargs)


def test_predictors_run_segments_in_chunks(tiny):
    from atfnn_fast.inference import CheckpointPredictor

    speech = speech_sample()  # 6.3 s: 40 segments of 16 frames
    whole = CheckpointPredictor(tiny["ckpt"], batch_size=4096).predict_file(speech)
    ckpt = CheckpointPredictor(tiny["ckpt"], batch_size=7)
    ckpt.model = Spy(ckpt.model, lambda x: x.shape[0])
    chunked = ckpt.predict_file(speech)
    assert ckpt.model.sizes == [7] * 5 + [5]
    assert chunked.label == whole.label
    assert chunked.scores == pytest.approx(whole.scores, abs=1e-6)
    for name, batches in (("dynamic", [7] * 5 + [5]), ("static", [1] * 40)):
        onnx_predictor = OnnxPredictor(tiny[name], batch_size=7)
        run = onnx_predictor.session.run
        onnx_predictor.session = type("S", (), {})()
        onnx_predictor.session.run = Spy(run, lambda out, feed: feed["spectrogram"].shape[0])
        got = onnx_predictor.predict_file(speech)
        assert onnx_predictor.session.run.sizes == batches, name
        assert got.label == whole.label and got.scores == pytest.approx(whole.scores, abs=1e-5)


def test_cli_batch_size_gives_the_same_scores_and_is_checked(tiny, capsys):
    speech = speech_sample()
    results = []
    for batch in ("1", "3", "64"):
        code, out, err = predict_cli(
            capsys, "--onnx", tiny["dynamic"], "--batch-size", batch, "--json", speech
        )
        assert code == 0 and err == []
        results.append(json.loads(out)[0]["scores"])
    assert results[0] == pytest.approx(results[1], abs=1e-6) == results[2]
    for bad, why in (
        ("0", "must be between 1 and 4096, got 0"),
        ("5000", "must be between 1 and 4096, got 5000"),
    ):
        code, out, err = predict_cli(capsys, "--onnx", tiny["dynamic"], "--batch-size", bad, speech)
        assert (code, out, err) == (
            2,
            "",
            [f"atfnn-fast predict: error: argument --batch-size: {why}"],
        )


def test_a_failing_file_does_not_lose_the_others(tiny, tmp_path, capsys, monkeypatch):
    """`long.wav` runs out of memory; a.wav before it and b.wav after it are still reported,
    each as soon as it is done, and the exit code says that one failed."""
    from atfnn_fast.inference import CheckpointPredictor

    files = []
    for name in ("a.wav", "long.wav", "b.wav"):
        files.append(tmp_path / name)
        files[-1].write_bytes(speech_sample().read_bytes())
    real, seen = CheckpointPredictor.predict_file, {}

    def predict_file(self, path):
        seen[Path(path).name] = capsys.readouterr()  # what was printed so far
        if Path(path).name == "long.wav":
            raise MemoryError()
        return real(self, path)

    monkeypatch.setattr(CheckpointPredictor, "predict_file", predict_file)
    code, out, err = predict_cli(capsys, "--checkpoint", tiny["ckpt"], "--json", *files)
    assert code == 1
    a, failed, b = json.loads("".join(c.out for c in seen.values()) + out)
    err = [line for c in seen.values() for line in c.err.splitlines()] + err
    assert err[0].startswith("predict: checkpoint ")  # what runs, before the first file
    err = err[1:]
    assert a["path"] == str(files[0]) and a["label"] in ("angry", "happy", "sad")
    assert b["path"] == str(files[2]) and b["scores"] == pytest.approx(a["scores"])
    error = f"{files[1]}: out of memory (MemoryError); try a smaller --batch-size"
    assert failed == {"path": str(files[1]), "error": error}
    assert err == [f"atfnn-fast: error: {error}"]
    printed, before = "", {}  # stdout as each file began
    for name, captured in seen.items():
        printed += captured.out
        before[name] = printed
    assert before["a.wav"] == "["
    assert json.loads(before["long.wav"] + "]") == [a]
    assert json.loads(before["b.wav"] + "]") == [a, failed]
    seen.clear()
    code, out, err = predict_cli(capsys, "--checkpoint", tiny["ckpt"], *files)  # text output
    out = "".join(c.out for c in seen.values()) + out
    assert code == 1 and [line.split(":")[0] for line in out.splitlines()] == [
        str(files[0]),
        str(files[2]),
    ]


def _tamper_onnx(source, target, **props):
    proto = onnx.load(str(source))
    meta = {p.key: p for p in proto.metadata_props}
    for key, value in props.items():
        meta[f"atfnn.{key}"].value = value
    onnx.save(proto, str(target))
    return target


@pytest.mark.parametrize(
    "change,message",
    [
        (
            dict(frames=64),
            "metadata atfnn.config frames is 64, graph input 'spectrogram' dim 3 is 16",
        ),
        (
            dict(num_classes=4, labels=["a", "b", "c", "d"]),
            "metadata atfnn.config num_classes is 4, graph output 'logits' dim 1 is 3",
        ),
        (
            dict(labels=["a", "b"]),
            "metadata atfnn.labels: expected 3 names (num_classes), got 2",
        ),
        (dict(labels=[1, 2, 3]), "metadata atfnn.labels: name 0 must be a string, got 1"),
        (
            dict(labels=["a", "b", "a"]),
            "metadata atfnn.labels: names 0 and 2 are the same ('a'); names must be unique",
        ),
        (dict(labels=["a", " ", "c"]), "metadata atfnn.labels: name 1 is empty or blank (' ')"),
        (
            dict(features='{"f_min": 9000.0}'),
            "metadata atfnn.features: FeatureConfig: need 0 <= f_min < f_max <= "
            "sample_rate / 2 = 8000 Hz, got f_min = 9000.0, f_max = None",
        ),
        (
            dict(features="[" * 100_000),
            "metadata atfnn.features: JSON nested too deeply to parse",
        ),
        (
            dict(layer_norm_eps=float("inf")),
            "metadata atfnn.config: ATFNNConfig.layer_norm_eps must be finite and positive, "
            "got inf",
        ),
        (
            dict(dtype="float16"),
            "metadata atfnn.dtype is 'float16', the graph input "
            "'spectrogram' has element type 1 (ONNX TensorProto; float32 "
            "is 1, float16 is 10)",
        ),
        (
            dict(dtype="int8"),
            "metadata atfnn.dtype is 'int8', expected one of ['float16', 'float32']",
        ),
        (
            dict(format_version="2"),
            "metadata atfnn.format_version is '2', this atfnn-fast reads '1'",
        ),
        (
            dict(n_mels=20, f_group=5),
            "metadata atfnn.norm_stats has 10 bands, atfnn.config n_mels is 20",
        ),
        (
            dict(frames=80_000_000),
            "metadata atfnn.config: frames = 80000000 exceeds the limit of 8192",
        ),
    ],
)
def test_tampered_onnx_metadata_is_refused_naming_field_file_and_values(
    tiny, tmp_path, capsys, change, message
):
    config = json.loads(read_metadata(tiny["dynamic"])["config"].to_json())
    props = {}
    for key in ("labels", "dtype", "format_version", "features"):
        if key in change:
            value = change.pop(key)
            props[key] = value if isinstance(value, str) else json.dumps(value)
    if change:
        props["config"] = json.dumps({**config, **change})
    tampered = _tamper_onnx(tiny["dynamic"], tmp_path / "tampered.onnx", **props)
    code, out, err = predict_cli(capsys, "--onnx", tampered, "--json", speech_sample())
    assert (code, out, err) == (1, "", [f"atfnn-fast: error: {tampered}: {message}"])


def test_tampered_checkpoints_are_refused_before_use(tiny, tmp_path, capsys):
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    def copy(name):
        return Path(shutil.copytree(tiny["ckpt"], tmp_path / name))

    def meta(path, **changes):
        data = json.loads((path / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                del data[key]
            elif key == "model":
                data["model"].update(value)
            else:
                data[key] = value
        (path / "config.json").write_text(json.dumps(data))
        return path

    speech = speech_sample()
    unsigned = meta(copy("unsigned"), weights_sha256=None)
    code, out, err = predict_cli(capsys, "--checkpoint", unsigned, speech)
    assert code == 1 and out == ""
    assert err == [
        f"atfnn-fast: error: {unsigned / 'config.json'}: has no weights_sha256, so "
        "model.safetensors cannot be verified (written by an older atfnn-fast, or edited). If "
        'you trust this checkpoint, re-save it with: python -c "from atfnn_fast.checkpoint '
        f"import resave_checkpoint; resave_checkpoint('{unsigned}')\""
    ]
    subprocess.run([sys.executable, "-c", err[0].split("python -c ")[1][1:-1]], check=True)
    assert predict_cli(capsys, "--checkpoint", unsigned, speech)[0] == 0  # re-saved: accepted

    nan = copy("nan")
    state = load_file(str(nan / "model.safetensors"))
    state["classifier.bias"][1] = float("nan")
    save_file(state, str(nan / "model.safetensors"))
    digest = hashlib.sha256((nan / "model.safetensors").read_bytes()).hexdigest()
    meta(nan, weights_sha256=digest)  # the checksum matches the tampered weights
    code, out, err = predict_cli(capsys, "--checkpoint", nan, speech)
    assert (code, out, err) == (
        1,
        "",
        [
            f"atfnn-fast: error: {nan / 'model.safetensors'}: non-finite (NaN or Inf) weights in "
            "classifier.bias (1 of 3)"
        ],
    )

    for field, value, limit in (
        ("frames", 80_000_000, "exceeds the limit of 8192"),
        ("num_classes", 10**9, "exceeds the limit of 1000"),
    ):
        huge = meta(copy(f"huge_{field}"), model={field: value}, labels=None)
        code, out, err = predict_cli(capsys, "--checkpoint", huge, speech)
        assert (code, out, err) == (
            1,
            "",
            [
                f"atfnn-fast: error: {huge / 'config.json'}: field 'model': {field} = {value} {limit}"
            ],
        )


def test_failed_export_validation_keeps_no_output(tiny, tmp_path, capsys, monkeypatch):
    from atfnn_fast.export import validate

    monkeypatch.setitem(validate.TOLERANCE, "float32", -1.0)  # any difference fails
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier, good export")
    code = main(["export", "--checkpoint", str(tiny["ckpt"]), "--output", str(out), "--validate"])
    captured = capsys.readouterr()
    assert code == 1 and "FAIL" in captured.out
    (err,) = captured.err.splitlines()
    assert re.fullmatch(
        rf"atfnn-fast: error: {re.escape(str(out))}: validation failed \(max relative error "
        rf"\S+ > -1\); the graph is kept as {re.escape(str(out))}\.failed, "
        rf"{re.escape(str(out))} was not written",
        err,
    ), err
    assert out.read_bytes() == b"an earlier, good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.failed"]
    with pytest.raises(OnnxError):  # what failed is kept for inspection, not deployed
        OnnxPredictor(tmp_path / "model.onnx")


def _peak_rss_mib(argv: list[str]) -> float:
    """Peak resident memory of `atfnn-fast predict ...` in a fresh process (os.wait4's
    ru_maxrss, what /usr/bin/time -v reports)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "atfnn_fast.app.cli", "predict", *map(str, argv)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode()[-2000:]
    return usage.ru_maxrss / 1024


@pytest.mark.parametrize("source", ["ckpt", "dynamic"])
def test_peak_memory_is_flat_in_the_file_length(tiny, tmp_path, source):
    """1 and 10 minutes of audio (tiny model; the paper-size figures for 1, 10 and 60 minutes
    are in docs/notes/predict-memory.md): the peak stays within 40 MiB. The whole-file
    pipeline grew by about 300 MiB between the two."""
    rate = 16_000
    peaks = {}
    for minutes in (1, 10):
        wav = tmp_path / f"{minutes}min.wav"
        with sf.SoundFile(str(wav), "w", rate, 1, subtype="PCM_16") as fh:
            noise = np.random.default_rng(0).standard_normal(60 * rate).astype(np.float32)
            for _ in range(minutes):
                fh.write(0.1 * noise)
        option = "--checkpoint" if source == "ckpt" else "--onnx"
        peaks[minutes] = _peak_rss_mib([option, tiny[source], "--json", wav])
    assert peaks[10] - peaks[1] < 40, peaks
