"""ATFNN against ATFNNReference (forward and gradients) and the backend dispatch seam."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    DEVICE,
    VARIANTS,
    assert_accurate,
    randomize,
    rounding_sensitivity,
    tiny_config,
)

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference, kernels
from atfnn_fast.kernels import dispatch
from atfnn_fast.kernels.band_attention_op import reference as ba_reference
from atfnn_fast.kernels.freq_encoder_op import reference as fe_reference

# float32, different code paths (functional ops + SDPA vs nn modules): a few ulps apart.
TOL32 = dict(rtol=1e-5, atol=1e-5)


def pair(cfg):
    ref = randomize(ATFNNReference(cfg)).eval()
    fast = ATFNN(cfg).eval()
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def assert_as_accurate(fast, ref, x):
    """Logits, attention maps, input and parameter gradients of ``fast`` (float32) against
    the float64 reference, bounded by the float32 reference's own error and by the
    problem's rounding sensitivity (helpers.assert_accurate)."""
    ref64, x64 = copy.deepcopy(ref).double(), x.double()
    assert_accurate(
        grads(fast, x),
        grads(ref64, x64),
        ref=grads(ref, x),
        sensitivity=rounding_sensitivity(grads, ref64, x64),
    )


def grads(model, x):
    """Logits, attention maps, and the input and parameter gradients of ones @ logits."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    logits, att = model(x, return_attention=True)
    logits.backward(torch.ones_like(logits))
    return logits, att, x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("source", ["input", "encoding"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "batch,frames", [pytest.param(1, 8, marks=pytest.mark.isa), (3, 24), (2, 136)]
)
def test_atfnn_equals_reference_forward_and_gradients(variant, source, batch, frames):
    cfg = tiny_config(t_attention_source=source, **VARIANTS[variant])
    fast, ref = pair(cfg)
    x = torch.randn(batch, 1, cfg.n_mels, frames)
    assert_as_accurate(fast, ref, x)


@pytest.mark.isa
def test_default_size_forward_equals_reference():
    # Random front-end, default-initialised LSTM: a 3-layer LSTM with N(0, 0.5) weights is
    # chaotic and would amplify float32 rounding of the (equal) front-ends.
    ref = ATFNNReference(ATFNNConfig()).eval()
    for block in (ref.f_attention, ref.t_attention, ref.f_encoder):
        randomize(block)
    fast = ATFNN(ref.config).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 80, 128)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), **TOL32)


def test_three_dim_input_is_the_same_as_four_dim():
    fast, _ = pair(tiny_config())
    x = torch.randn(2, 1, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x[:, 0]), fast(x), rtol=0, atol=0)


@pytest.mark.parametrize("frames", [8, 16, 40, 200])
def test_any_multiple_of_t_group_is_accepted(frames):
    fast, _ = pair(tiny_config())
    logits, att = fast(torch.randn(2, 10, frames), return_attention=True)
    assert logits.shape == (2, 3)
    assert att.freq.shape == att.time.shape == (2, 10, frames)


def test_other_float_dtypes_are_cast_to_the_parameter_dtype():
    fast, _ = pair(tiny_config())
    x = torch.randn(2, 1, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.double()), fast(x), rtol=0, atol=0)
        half = x.half()
        torch.testing.assert_close(fast(half), fast(half.float()), rtol=0, atol=0)


@pytest.mark.isa
def test_cpu_autocast_bf16_runs_close_to_fp32():
    fast, _ = pair(tiny_config())
    x = torch.randn(4, 1, 10, 16)
    with torch.no_grad():
        want = fast(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x)
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)


@pytest.mark.isa
def test_the_avx2_caps_take_effect_where_set():
    """`make test-isa` (in `make test`) sets ONEDNN_MAX_CPU_ISA=AVX2 and
    ATEN_CPU_CAPABILITY=avx2: ATen then dispatches to its AVX2 kernels and oneDNN reports
    no native bf16, as on an AVX2-only CPU. Elsewhere: nothing to check."""
    import platform

    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() != "AVX2":
        pytest.skip("oneDNN is not capped (make test-isa caps it)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the caps are x86's")
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.isa
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_lstm_runs_in_float32_where_onednn_has_no_lstm(dtype, monkeypatch):
    """Issue 30: oneDNN has no bf16 LSTM on a CPU without native bf16 (AVX2-only x86) and
    no fp16 LSTM without native fp16. The decision follows oneDNN's own probe; forced to
    float32, the LSTM sees float32 input and the logits stay close to float32's, with
    gradients for every parameter."""
    from atfnn_fast import reference

    probe = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }
    native = bool(getattr(torch.ops.mkldnn, probe[dtype])())
    x = torch.randn(4, 1, 10, 16)
    with torch.autocast("cpu", dtype=dtype):
        assert reference.lstm_in_float32(x) is not native
    assert reference.lstm_in_float32(x) is False  # no autocast: nothing to leave
    monkeypatch.setattr(reference, "lstm_in_float32", lambda x: True)
    fast, _ = pair(tiny_config())
    seen = []
    fast.t_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        want = fast(x)
    with torch.autocast("cpu", dtype=dtype):
        got = fast(x)
    assert seen == [torch.float32, torch.float32]
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())


# ------------------------------------------------------------------------------ dispatch
def test_backend_default_and_override():
    assert kernels.get_backend() == "auto"
    with kernels.use_backend("torch"):
        assert kernels.get_backend() == "torch"
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("cuda")


def test_auto_on_cpu_runs_the_ops_cpu_implementation():
    """Under auto a CPU tensor takes the custom op (its folder's cpu.py); under torch the
    plain-torch reference; a tensor of another device the reference too."""
    x = torch.randn(1, 1, 10, 16)
    op = dispatch.TRITON_IMPLS["band_attention"]
    assert dispatch.select("band_attention", x, ba_reference.band_attention, op) is op
    with kernels.use_backend("torch"):
        chosen = dispatch.select("band_attention", x, ba_reference.band_attention, op)
    assert chosen is ba_reference.band_attention
    meta = torch.empty(1, 1, 10, 16, device="meta")
    chosen = dispatch.select("band_attention", meta, ba_reference.band_attention, op)
    assert chosen is ba_reference.band_attention


def test_triton_backend_without_kernel_names_the_op(monkeypatch):
    monkeypatch.delitem(dispatch.TRITON_IMPLS, "freq_encoder")
    fast, _ = pair(tiny_config())
    with kernels.use_backend("triton"), pytest.raises(NotImplementedError, match="atfnn::"):
        fast(torch.randn(1, 1, 10, 16))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(dispatch.TRITON_IMPLS, "band_attention", ba_reference.band_attention)
    fast, _ = pair(tiny_config())
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fast(torch.randn(1, 1, 10, 16))


def test_triton_backend_routes_to_registered_implementation(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs["axis"])
        return ba_reference.band_attention(*args, **kwargs)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(dispatch.TRITON_IMPLS, "band_attention", fake)
    monkeypatch.setitem(dispatch.TRITON_IMPLS, "freq_encoder", fe_reference.freq_encoder)
    fast, ref = pair(tiny_config())
    x = torch.randn(2, 1, 10, 16)
    with kernels.use_backend("triton"), torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), **TOL32)
    assert calls == ["freq", "time"]


@pytest.mark.parametrize("source", ["input", "encoding"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_atfnn_with_triton_ops_equals_reference(variant, source):
    """The whole front-end through atfnn::band_attention and atfnn::freq_encoder (the
    Triton interpreter on the CPU), forward and every gradient, against the reference."""
    if not torch.cuda.is_available() and not dispatch.interpreter_enabled():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    cfg = tiny_config(t_attention_source=source, **VARIANTS[variant])
    fast, ref = pair(cfg)
    fast, ref = fast.to(DEVICE), ref.to(DEVICE)
    x = torch.randn(2, 1, cfg.n_mels, 16, device=DEVICE)
    with kernels.use_backend("triton"):
        assert_as_accurate(fast, ref, x)


@pytest.mark.slow
def test_torch_compile_of_the_whole_model_equals_eager():
    fast, _ = pair(tiny_config())
    fast = fast.to(DEVICE)
    x = torch.randn(2, 1, 10, 16, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fast)(x), fast(x), **TOL32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused front-end runs on CUDA")
def test_front_end_compiles_without_graph_break_on_cuda():
    fast = ATFNN(ATFNNConfig()).cuda()
    x = torch.randn(2, 1, 80, 128, device="cuda")
    explanation = torch._dynamo.explain(fast.front_end)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("value,ok", [("torch", True), ("TRITON", True), ("gpu", False)])
def test_environment_variable_is_read_at_import(value, ok):
    env = {**os.environ, "ATFNN_BACKEND": value}
    code = "from atfnn_fast import kernels; print(kernels.get_backend())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == value.lower()
    else:
        assert proc.returncode != 0
        assert "ATFNN_BACKEND must be one of" in proc.stderr


def test_fused_front_end_has_no_graph_break():
    """The custom ops are opaque to dynamo: the whole fused front-end (both band-attention
    calls and the F-Encoder) is one graph, so torch.compile's CUDA-graph mode
    (``mode="reduce-overhead"``) and the benchmarks' captured provider can take it whole."""
    model = ATFNN(tiny_config(), check_finite=False)
    x = torch.randn(2, 1, 10, 16)
    explanation = torch._dynamo.explain(model.front_end)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
