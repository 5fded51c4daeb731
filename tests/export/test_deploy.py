"""CPU deployment: the export formulation (DeployGraph), int8 quantisation and its validation
on real features, execution-provider selection and its refusals."""

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import VARIANTS, max_rel_err, randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from atfnn_fast.app.cli import main
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.export import (
    OnnxError,
    OnnxPredictor,
    check_tensorrt_ready,
    export_onnx,
    read_metadata,
    validate_onnx,
)
from atfnn_fast.export.graph import DeployGraph
from atfnn_fast.export.validate import INT8_AGREEMENT, audio_files, session
from atfnn_fast.features import FeatureConfig, NormStats, file_segments, speech_sample

LABELS = ["angry", "happy", "sad", "neutral"]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(1)
    model = ATFNN(ATFNNConfig(dropout=0.0)).eval()
    stats = NormStats.fit([torch.randn(80, 60, dtype=torch.float64) * 2 - 5])
    return model, stats


@pytest.fixture(scope="module")
def fp32_and_int8(default_model, tmp_path_factory):
    model, stats = default_model
    folder = tmp_path_factory.mktemp("deploy")
    kw = dict(labels=LABELS, norm_stats=stats, features=FeatureConfig())
    start = time.perf_counter()
    fp32 = export_onnx(model, folder / "fp32.onnx", **kw)
    seconds = time.perf_counter() - start
    int8 = export_onnx(model, folder / "int8.onnx", quantize="int8", **kw)
    return fp32, int8, seconds


# ----------------------------------------------------------------- the export formulation
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("source", ["input", "encoding"])
def test_deploy_graph_is_the_reference_math(variant, source):
    cfg = tiny_config(t_attention_source=source, **VARIANTS[variant])
    ref = randomize(ATFNNReference(cfg), 0.4).eval()
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    graph = DeployGraph(ref)
    x = torch.randn(5, 1, cfg.n_mels, cfg.frames)
    with torch.no_grad():
        want = ref(x)
        assert max_rel_err(graph(x), want) < 2e-6
        half = DeployGraph(ref, torch.float16)(x.half())
    # float16 (eps 9.8e-4) through the whole model on fresh random weights: 1.2e-2 was seen
    # once (2026-12-07), so the bound is about 20 eps
    assert half.dtype == torch.float16 and max_rel_err(half, want) < 2e-2
    # the reference is left as it was (the graph derives its parameters from a copy)
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())


def test_graph_layout_needs_few_transposes(fp32_and_int8):
    proto = onnx.load(str(fp32_and_int8[0]))
    nodes = list(proto.graph.node)
    ops = [n.op_type for n in nodes]
    # frames (T, B, F); the encoding into the LSTM's (T, B, F*c); T-Attention's weights;
    # two between the LSTM layers (Y is (T, 2, B, H)); and the Attention node's output
    # (frames, heads, F, 1) to head-major planes (frames x heads x F values, no score
    # tensor): nothing per attention head
    assert ops.count("Transpose") == 6
    assert ops.count("Attention") == 1 and "Softmax" not in ops and ops.count("LSTM") == 3
    lstms = [n for n in nodes if n.op_type == "LSTM"]
    assert all(len(n.input) <= 4 for n in lstms)  # zero initial states left implicit
    producer = {o: n for n in nodes for o in n.output}
    assert producer[lstms[0].input[0]].op_type == "Reshape"
    assert "ConstantOfShape" not in ops and "Expand" not in ops
    # the F-Encoder's conv FFN is two convolutions over one (T*B) x F image
    convs = [n for n in nodes if n.op_type == "Conv"]
    kernels = [
        onnx.helper.get_attribute_value(a)
        for n in convs
        for a in n.attribute
        if a.name == "kernel_shape"
    ]
    assert sorted(map(list, kernels)) == [[1, 5], [1, 5], [1, 8], [5, 1]]


@pytest.mark.slow
def test_default_model_exports_in_seconds(fp32_and_int8):
    assert fp32_and_int8[2] < 15.0


def test_exports_at_another_frame_count(tmp_path):
    cfg = tiny_config(frames=40)
    model = randomize(ATFNNReference(cfg), 0.3).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    dims = [
        d.dim_param or d.dim_value
        for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims == ["batch", 1, 10, 40]
    assert validate_onnx(path, model, batch_sizes=(1, 3)).passed
    trt = export_onnx(model, tmp_path / "trt.onnx", target="tensorrt")
    assert validate_onnx(trt, model, batch_sizes=(1, 3)).passed
    assert check_tensorrt_ready(trt) == []


# ------------------------------------------------------------------------------- int8
def test_int8_graph_is_quantised_and_says_so(fp32_and_int8):
    fp32, int8, _ = fp32_and_int8
    meta = read_metadata(int8)
    assert meta["quantization"] == "int8-dynamic" and meta["dtype"] == "float32"
    assert read_metadata(fp32)["quantization"] == "none"
    assert meta["labels"] == LABELS
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    assert "MatMulInteger" in ops  # the classifier's Gemm
    assert "quantised to int8" in proto.doc_string
    # 8-bit weights: uint8 (the U8U8 format, docs/design.md#onnx-export)
    eight_bit = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
    int8_weights = [t for t in proto.graph.initializer if t.data_type in eight_bit]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) > 1_000_000  # the LSTM weights
    assert any("com.microsoft" in p for p in check_tensorrt_ready(int8))


def test_int8_validation_reports_agreement_and_speed(fp32_and_int8, default_model):
    _, int8, _ = fp32_and_int8
    model, stats = default_model
    report = validate_onnx(int8, model, batch_sizes=(2,), speed_batch=2, raise_on_failure=False)
    hop = model.config.frames // 4
    segs = file_segments(speech_sample(), hop=hop, stats=stats)
    a = report.agreement
    assert (a.segments, a.files) == (len(segs), 1)
    # the same figures computed here from the eager model and a plain session
    sess = session(int8, provider="cpu")
    with torch.no_grad():
        p_eager = model(segs).softmax(-1).double().numpy()
    logits = sess.run(None, {"spectrogram": segs.numpy()})[0].astype(np.float64)
    p_int8 = np.exp(logits - logits.max(1, keepdims=True))
    p_int8 /= p_int8.sum(1, keepdims=True)
    assert a.top1 == pytest.approx(np.mean(p_eager.argmax(1) == p_int8.argmax(1)))
    assert a.max_prob_diff == pytest.approx(np.abs(p_eager - p_int8).max(), abs=1e-6)
    assert 0 < a.max_prob_diff < 0.05  # quantised, but close
    assert report.passed == (a.top1 >= INT8_AGREEMENT)
    assert report.speed.batch == 2 and report.speed.ratio > 0
    text = str(report)
    assert "int8-dynamic" in text and "top-1 agreement" in text and "speed at batch 2" in text


def test_float32_agreement_on_real_features_is_exact(fp32_and_int8, default_model, tmp_path):
    fp32 = fp32_and_int8[0]
    model = default_model[0]
    folder = tmp_path / "corpus"
    folder.mkdir()
    wave = speech_sample().read_bytes()
    for name in ("a.wav", "b.wav"):
        (folder / name).write_bytes(wave)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,speaker\n{folder / 'a.wav'},angry,s1\n")
    assert audio_files([folder, manifest]) == [folder / "a.wav", folder / "b.wav", folder / "a.wav"]
    report = validate_onnx(fp32, model, batch_sizes=(1,), audio=[folder])
    a = report.agreement
    assert a.files == 3 and a.top1 == 1.0 and a.top1_files == 1.0
    assert a.max_prob_diff < 1e-5 and report.speed is None and report.passed
    with pytest.raises(FileNotFoundError, match="nope: audio file or folder not found"):
        validate_onnx(fp32, model, batch_sizes=(1,), audio=[tmp_path / "nope"])


def test_quantize_checks_its_arguments(tmp_path):
    model = ATFNN(tiny_config())
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        export_onnx(model, tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="quantises a float32 graph"):
        export_onnx(model, tmp_path / "m.onnx", quantize="int8", dtype="float16")
    assert not list(tmp_path.iterdir())


def test_cli_export_int8(default_model, tmp_path, capsys):
    model, stats = default_model
    ckpt = save_checkpoint(tmp_path / "ckpt", model, labels=LABELS, norm_stats=stats)
    out = tmp_path / "int8.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(out), "--quantize", "int8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "int8 weights" in text and "TensorRT" not in text
    assert read_metadata(out)["quantization"] == "int8-dynamic"
    assert main([*args, "--audio", str(speech_sample())]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "atfnn-fast: error: --audio is for --validate's real-feature check; add --validate"
    )


# --------------------------------------------------------------------------- providers
@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize(
    "provider,what", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")]
)
def test_gpu_providers_refused_with_what_to_install(fp32_and_int8, provider, what):
    with pytest.raises(OnnxError, match=f"{what} is not available") as info:
        OnnxPredictor(fp32_and_int8[0], provider=provider)
    message = str(info.value)
    assert "onnxruntime-gpu" in message and str(fp32_and_int8[0]) in message
    if provider == "tensorrt":
        assert "pip install tensorrt" in message


def test_cpu_provider_and_bad_names(fp32_and_int8):
    predictor = OnnxPredictor(fp32_and_int8[0], provider="cpu")
    assert predictor.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"provider must be one of \['cpu', 'cuda', 'tensorrt'\]"):
        OnnxPredictor(fp32_and_int8[0], provider="gpu")


def test_provider_that_fails_to_start_is_refused(fp32_and_int8, monkeypatch):
    """onnxruntime-gpu without its CUDA libraries falls back to the CPU: refused, not hidden."""
    real = ort.InferenceSession
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(
        ort,
        "InferenceSession",
        lambda path, options, providers: real(path, options, providers=["CPUExecutionProvider"]),
    )
    with pytest.raises(OnnxError, match="could not start CUDAExecutionProvider"):
        OnnxPredictor(fp32_and_int8[0], provider="cuda")


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
def test_float16_graph_takes_the_cuda_provider(tmp_path):
    model = randomize(ATFNN(tiny_config()), 0.3).eval()
    half = export_onnx(model, tmp_path / "half.onnx", dtype="float16")
    with pytest.raises(OnnxError, match="float16 graph needs ONNX Runtime's CUDA"):
        OnnxPredictor(half, provider="cpu")
    with pytest.raises(OnnxError, match="CUDAExecutionProvider is not available"):
        OnnxPredictor(half, provider="cuda")


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
def test_cli_predict_provider_refusal_is_one_line(fp32_and_int8, capsys):
    code = main(
        ["predict", "--onnx", str(fp32_and_int8[0]), "--provider", "cuda", str(speech_sample())]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("atfnn-fast: error: ") and "onnxruntime-gpu" in err


@pytest.mark.skipif(not HAS_CUDA_EP, reason="GPU path: needs onnxruntime-gpu with CUDA")
def test_cuda_provider_runs_float32_and_float16(tmp_path):
    model = randomize(ATFNN(tiny_config()), 0.3).eval()
    for dtype in ("float32", "float16"):
        path = export_onnx(model, tmp_path / f"{dtype}.onnx", dtype=dtype)
        predictor = OnnxPredictor(path, provider="cuda")
        assert predictor.session.get_providers()[0] == "CUDAExecutionProvider"
        assert validate_onnx(path, model, providers=["CUDAExecutionProvider"]).passed
