"""The native CPU core (kernels/native.py, kernels/csrc, kernels/freq_encoder_op/native.cpp):
forward and gradients against the float64 oracle on awkward sizes, each ISA path forced in
turn, thread counts, threads at once, overflow, NaN, low precision, the fallback without
the library, and the custom op's checks (docs/design.md#native-cpu-core)."""

import copy
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from helpers import assert_accurate, max_rel_err, randomize, tiny_config

from atfnn_fast import kernels
from atfnn_fast.kernels import native, use_backend
from atfnn_fast.kernels.freq_encoder_op import cpu
from atfnn_fast.kernels.freq_encoder_op import native as fe_native
from atfnn_fast.kernels.freq_encoder_op import rank_one as fm
from atfnn_fast.reference import FrequencyEncoder

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native core not built: {native.missing_reason()}"
)
EPS = 1e-5
ISAS = native.supported_isas()


def encoder(heads=2, channels=8, n_mels=20, ffn_kernel=5, ffn_channels=32, scale=0.5):
    cfg = tiny_config(
        num_heads=heads,
        channels=channels,
        n_mels=n_mels,
        f_group=1 if n_mels % 5 else 5,
        ffn_kernel=ffn_kernel,
        ffn_channels=ffn_channels,
    )
    return randomize(FrequencyEncoder(cfg), scale)


def run(enc, x, wt, g, dtype=None):
    """Output and every gradient (x, time weights, module parameters) through the public
    entry; in ``dtype`` through the nn.Module reference (the oracle) where given."""
    if dtype is not None:
        enc = copy.deepcopy(enc).to(dtype)
    x = x.detach().to(dtype or x.dtype).requires_grad_()
    wt = None if wt is None else wt.detach().to(dtype or wt.dtype).requires_grad_()
    params = list(enc.op_params())
    if dtype is not None:
        out = enc(x)
        if wt is not None:
            out = out + wt.transpose(1, 2).unsqueeze(-1) * out
    else:
        out = kernels.freq_encoder(x, *params, num_heads=enc.num_heads, eps=EPS, time_weights=wt)
    leaves = [x] + ([wt] if wt is not None else []) + params
    return [out, *torch.autograd.grad((out * g.to(out.dtype)).sum(), leaves)]


def check_against_oracle(enc, x, wt):
    g = torch.randn(x.shape[0], x.shape[3], x.shape[2], enc.lift.out_features)
    got = run(enc, x, wt, g)
    ref = run(enc, x, wt, g, torch.float32)
    truth = run(enc, x, wt, g, torch.float64)
    assert_accurate(got, truth, ref=ref)
    return got


@pytest.mark.isa
@pytest.mark.parametrize(
    "heads,channels,n_mels,ffn_kernel,ffn_channels,batch,frames",
    [
        (2, 8, 80, 5, 32, 2, 24),  # the paper's sizes
        (1, 4, 5, 1, 8, 3, 7),  # 5 bands, kernel 1; 21 frames: no multiple of anything
        (4, 16, 37, 7, 16, 2, 9),  # 37 bands: a partial vector in every ISA
        (3, 6, 17, 3, 12, 1, 33),  # odd widths, 3 heads
        (2, 12, 64, 7, 8, 5, 5),
    ],
)
@pytest.mark.parametrize("with_time", [True, False])
def test_forward_and_gradients_against_the_float64_oracle(
    heads, channels, n_mels, ffn_kernel, ffn_channels, batch, frames, with_time
):
    enc = encoder(heads, channels, n_mels, ffn_kernel, ffn_channels)
    x = torch.randn(batch, 1, n_mels, frames) * 2
    wt = torch.rand(batch, n_mels, frames) if with_time else None
    with use_backend("auto"):
        check_against_oracle(enc, x, wt)


@pytest.mark.parametrize("isa", ISAS)
def test_each_isa_path_forced_in_turn(isa):
    """The same sizes on every path this CPU runs, the generic one included; the paths
    agree with each other to float32 rounding (they sum in different orders)."""
    enc = encoder(2, 8, 37, 5, 32)
    x = torch.randn(2, 1, 37, 40) * 2
    wt = torch.rand(2, 37, 40)
    with native.use_isa(isa), use_backend("auto"):
        assert native.isa() == isa
        got = check_against_oracle(enc, x, wt)
    with native.use_isa(ISAS[-1]), use_backend("auto"):
        g = torch.ones_like(got[0])
        best = run(enc, x, wt, g)
    with native.use_isa(isa), use_backend("auto"):
        this = run(enc, x, wt, g)
    for a, b in zip(this, best, strict=True):
        assert max_rel_err(a, b) < 1e-5


def test_a_forced_isa_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(native, "supported_isas", lambda: ["generic"])
    with native.use_isa("avx512"), pytest.raises(RuntimeError, match="runs only"):
        native.isa()
    with pytest.raises(ValueError, match="isa must be one of"):
        native.set_isa("sse9")


@pytest.mark.parametrize("frames", [16, 37])
def test_one_and_two_threads_give_the_same_values(frames):
    """Thread count changes only which thread runs which frames: every value is the same,
    the parameter gradients included (summed over fixed ranges of frames, then in order),
    so a training run is reproducible on any number of threads."""
    enc = encoder(2, 8, 20)
    x = torch.randn(4, 1, 20, frames)
    wt = torch.rand(4, 20, frames)
    g = torch.randn(4, frames, 20, 8)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert len(native.chunks(4 * frames)) == min(threads, 4 * frames // 16)
            with use_backend("auto"):
                results.append(run(enc, x, wt, g))
    finally:
        torch.set_num_threads(before)
    one, two = results
    for i, (a, b) in enumerate(zip(one, two, strict=True)):  # every value, bit for bit
        assert torch.equal(a, b), i


def test_calls_from_several_python_threads_at_once():
    enc = encoder(2, 8, 20)
    inputs = [torch.randn(3, 1, 20, 32) for _ in range(4)]
    params = list(enc.op_params())
    with torch.no_grad(), use_backend("auto"):
        want = [kernels.freq_encoder(x, *params, num_heads=2, eps=EPS) for x in inputs]
    got = [None] * len(inputs)

    def work(i):
        with torch.no_grad():
            for _ in range(5):
                got[i] = kernels.freq_encoder(inputs[i], *params, num_heads=2, eps=EPS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.isa
def test_large_inputs_would_overflow_an_unshifted_exponential():
    """Scores of +-1e4 (exp overflows float32 past 88): the max-shifted exponential stays
    finite and the result matches the oracle."""
    enc = encoder(2, 8, 20, scale=1.0)
    x = torch.randn(2, 1, 20, 8) * 60
    x[0, 0, :, 0] = torch.linspace(-100, 100, 20)
    with torch.no_grad():
        p = fm.derive(*enc.op_params(), num_heads=2)
        s_max = ((x.abs().amax() * p.a_head.abs() + p.b_head.abs()) * x.abs().amax()).max()
        assert s_max > 1000
    g = torch.randn(2, 8, 20, 8)
    with use_backend("auto"):
        got = run(enc, x, None, g)
    assert all(torch.isfinite(t).all() for t in got)
    # the output against the oracle; the gradients of so saturated a softmax are
    # ill-conditioned (the float32 reference is 2e-3 to 6e-3 off there): within a few times
    # the float32 reference's own error of the float64 truth
    # the input's gradient too (a 1e3 softmax: test_extreme_inputs_stress_the_softmax_
    # without_nan lets the Triton kernels through on the rounding sensitivity for it)
    ref = run(enc, x, None, g, torch.float32)
    truth = run(enc, x, None, g, torch.float64)
    assert_accurate(got[:1], truth[:1], ref=ref[:1])
    for i, (a, r, t) in enumerate(zip(got[1:], ref[1:], truth[1:], strict=True)):
        assert max_rel_err(a, t) <= 5 * max_rel_err(r, t) + 1e-5, i


def test_a_nan_in_the_input_gives_nan_out_and_the_model_refuses_it():
    enc = encoder(2, 8, 20)
    x = torch.randn(1, 1, 20, 8)
    x[0, 0, 3, 2] = float("nan")
    with torch.no_grad(), use_backend("auto"):
        out = kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
    assert torch.isnan(out[0, 2]).all()  # the frame holding the NaN
    assert torch.isfinite(out[0, 3]).all()  # the others are untouched
    from atfnn_fast import ATFNN, ATFNNConfig

    model = ATFNN(ATFNNConfig(frames=8, lstm_hidden=8, lstm_layers=1)).eval()
    bad = torch.randn(1, 1, 80, 8)
    bad[0, 0, 5, 5] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="must be finite: got 1 NaN"):
        model(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    enc = encoder(2, 8, 20)
    x = (torch.randn(2, 1, 20, 8) * 2).to(dtype)
    wt = torch.rand(2, 20, 8).to(dtype)
    with use_backend("auto"):
        got = run(enc, x, wt, torch.randn(2, 8, 20, 8))
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    with use_backend("aten"):
        want = run(enc, x, wt, torch.randn(2, 8, 20, 8))
    assert max_rel_err(got[0].float(), want[0].float()) < 1e-2


@pytest.mark.isa
def test_auto_takes_the_native_core_and_aten_the_aten_path(monkeypatch):
    calls = []
    real_fwd, real_bwd = fe_native.forward, fe_native.backward
    monkeypatch.setattr(
        fe_native, "forward", lambda *a, **k: calls.append("f") or real_fwd(*a, **k)
    )
    monkeypatch.setattr(
        fe_native, "backward", lambda *a, **k: calls.append("b") or real_bwd(*a, **k)
    )
    enc = encoder(2, 8, 20)
    x = torch.randn(2, 1, 20, 8, requires_grad=True)
    with use_backend("auto"):
        kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS).sum().backward()
    assert calls == ["f", "b"]  # the backward reads the forward's statistics: no recompute
    with use_backend("aten"):
        kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS).sum().backward()
    assert calls == ["f", "b"]


@pytest.mark.isa
def test_the_native_core_kept_statistics_and_recompute_agree_bit_for_bit():
    enc = encoder(2, 8, 20)
    x = torch.randn(2, 1, 20, 16) * 2
    wt = torch.rand(2, 20, 16)
    g = torch.randn(2, 16, 20, 8)
    with torch.no_grad():
        p = fm.derive(*enc.op_params(), num_heads=2)
        out, stats = fe_native.forward(x, wt, p, EPS, keep_stats=True)
        assert torch.equal(out, fe_native.forward(x, wt, p, EPS)[0])
        kept = fe_native.backward(g, x, wt, p, EPS, stats)
        recomputed = fe_native.backward(g, x, wt, p, EPS)
    for a, b in zip([*kept[:2], *kept[2]], [*recomputed[:2], *recomputed[2]], strict=True):
        assert torch.equal(a, b)


def test_without_the_library_the_aten_path_runs_and_says_so_once(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_loaded", True)
    monkeypatch.setattr(native, "_load_error", "the native CPU core was not built")
    monkeypatch.setattr(native, "_warned", False)
    enc = encoder(2, 8, 20)
    x = torch.randn(2, 1, 20, 8)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        with use_backend("auto"):
            got = kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
            kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
    lines = [str(w.message) for w in caught if "native CPU core" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0] and "C++ compiler" in lines[0]
    assert native.info() == {
        "cpu_path": "aten",
        "native": False,
        "reason": "the native CPU core was not built",
    }
    with torch.no_grad(), use_backend("aten"):
        want = kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
    assert torch.equal(got, want)


def test_float64_stays_on_the_aten_path():
    enc = encoder(2, 8, 20).double()
    p = fm.derive(*enc.op_params(), num_heads=2)
    assert "float64" in fe_native.unsupported(torch.zeros(1, 1, 20, 8, dtype=torch.float64), p)
    assert not cpu.use_native(torch.zeros(1, 1, 20, 8, dtype=torch.float64), p)


def test_info_names_the_cpu_path_and_isa():
    out = subprocess.run(
        [sys.executable, "-m", "atfnn_fast.app.cli", "info"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CPU path: native ({native.isa()}" in out
