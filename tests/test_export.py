"""ONNX export, validation in ONNX Runtime, TensorRT readiness, the predictor and the CLI."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from conftest import VARIANTS, randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.cli import main
from atfnn_fast.demo import speech_sample
from atfnn_fast.export import (
    OnnxError,
    OnnxPredictor,
    OnnxValidationError,
    check_tensorrt_ready,
    export_onnx,
    read_metadata,
    validate_onnx,
)
from atfnn_fast.features import FeatureConfig, NormStats

LABELS = ["angry", "happy", "sad", "neutral"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default model with random weights, exported once for the module's tests."""
    torch.manual_seed(0)
    model = randomize(ATFNN(ATFNNConfig(dropout=0.0)), 0.2).eval()
    stats = NormStats.fit([torch.randn(80, 50, dtype=torch.float64) * 2 - 5])
    path = export_onnx(
        model, tmp_path_factory.mktemp("onnx") / "model.onnx", labels=LABELS,
        norm_stats=stats, features=FeatureConfig(f_max=7600.0),
    )  # fmt: skip
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


def test_tensorrt_ready(exported):
    assert check_tensorrt_ready(exported[0]) == []


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
    path = export_onnx(model, tmp_path / "m.onnx")
    report = validate_onnx(path, model, batch_sizes=(1, 7, 64))
    assert report.passed, str(report)
    assert check_tensorrt_ready(path) == []


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
    for path, pattern in ((garbage, "not a readable ONNX"), (truncated, "not a readable ONNX"),
                          (plain, "not exported by atfnn-fast")):  # fmt: skip
        with pytest.raises(OnnxError, match=pattern) as info:
            OnnxPredictor(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        read_metadata(tmp_path / "missing.onnx")
    with pytest.raises(OnnxError, match="not a readable ONNX"):
        check_tensorrt_ready(garbage)


def test_export_checks_its_arguments(tmp_path):
    model = ATFNN(tiny_config())
    with pytest.raises(ValueError, match="opset must be an int >= 18"):
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
    assert "PASS" in text and "trtexec --onnx=" in text and out.exists()

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    files = [str(speech_sample()), str(tmp_path / "missing.wav"), str(bad)]
    for source in (["--onnx", str(out)], ["--checkpoint", str(ckpt)]):
        code = main(["predict", *source, "--json", *files])
        captured = capsys.readouterr()
        assert code == 1
        (result,) = json.loads(captured.out)
        assert result["file"] == files[0] and set(result["scores"]) == set(LABELS)
        errors = captured.err.strip().splitlines()
        assert len(errors) == 2 and "missing.wav: audio file not found" in errors[0]
        assert "bad.wav" in errors[1] and "Traceback" not in captured.err


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["export", "--checkpoint", str(tmp_path / "nope"), "--output", "x.onnx"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"atfnn-fast: error: {tmp_path / 'nope'}: checkpoint directory not found"
    )
