"""atfnn::freq_encoder: the rank-one rewrite against nn.MultiheadAttention semantics, its
hand-written backward against autograd, and the fused Triton kernels against both.

Without a GPU the kernels run through the Triton interpreter (float32); on a CUDA machine the
same tests compile them, and the bf16/fp16 and memory tests run too.
"""

import copy

import pytest
import torch
from helpers import (
    DEVICE,
    DOT_FLOOR,
    GRAD_FLOOR,
    assert_accurate,
    max_rel_err,
    randomize,
    rounding_sensitivity,
    tiny_config,
)

from atfnn_fast import kernels
from atfnn_fast.kernels import launch as launch_path
from atfnn_fast.kernels import tuning, use_backend
from atfnn_fast.kernels.freq_encoder_op import common as fc
from atfnn_fast.kernels.freq_encoder_op import custom_op as fe_custom
from atfnn_fast.kernels.freq_encoder_op import rank_one as fm
from atfnn_fast.kernels.freq_encoder_op import reference as fe_reference
from atfnn_fast.reference import FrequencyEncoder

EPS = 1e-5


def make_encoder(heads, channels, n_mels=10, scale=0.5, **changes):
    cfg = tiny_config(num_heads=heads, channels=channels, n_mels=n_mels, **changes)
    return randomize(FrequencyEncoder(cfg), scale).to(DEVICE)


def reference_run(enc, x, wt, g, dtype=torch.float64):
    """nn.MultiheadAttention-based module (+ the T-Attention multiply) with autograd."""
    enc = copy.deepcopy(enc).to(dtype)
    x = x.detach().to(dtype).requires_grad_()
    wt = wt.detach().to(dtype).requires_grad_() if wt is not None else None
    out = enc(x)
    if wt is not None:
        out = out + wt.transpose(1, 2).unsqueeze(-1) * out
    leaves = [x] + ([wt] if wt is not None else []) + list(enc.op_params())
    return out, torch.autograd.grad((out * g.to(dtype)).sum(), leaves)


def fused_run(enc, x, wt, g):
    """The op through the public entry point; it returns the module parameters' gradients
    itself (the derive's vector-Jacobian product)."""
    x = x.detach().clone().requires_grad_()
    wt = wt.detach().clone().requires_grad_() if wt is not None else None
    params = list(enc.op_params())
    out = fe_custom.freq_encoder(x, *params, num_heads=enc.num_heads, eps=EPS, time_weights=wt)
    leaves = [x] + ([wt] if wt is not None else []) + params
    return out, torch.autograd.grad((out * g).sum(), leaves)


def assert_as_accurate(enc, x, wt, g=None, backend="triton"):
    """The fused op's output and every gradient against the float64 reference, bounded by
    the float32 reference's own error and the problem's rounding sensitivity
    (helpers.assert_accurate)."""
    if g is None:
        g = torch.randn(x.shape[0], x.shape[3], x.shape[2], enc.lift.out_features, device=x.device)
    enc64 = copy.deepcopy(enc).double()
    args64 = [t.double() if t is not None else None for t in (x, wt, g)]
    with use_backend(backend):
        got = fused_run(enc, x, wt, g)
    assert got[0].dtype == x.dtype
    with torch.backends.cudnn.flags(allow_tf32=False):  # the float32 reference in float32
        ref = reference_run(enc, x, wt, g, torch.float32)
    truth = reference_run(enc64, *args64)
    sens = rounding_sensitivity(reference_run, enc64, *args64)
    if runs_tf32(x):
        # the FFN dots multiply tf32 operands, forward and backward (the recompute, h1 and
        # its ReLU mask exact): the output has DOT_FLOOR["tf32"], the gradients
        # GRAD_FLOOR["tf32"]
        # (docs/design.md, Precision)
        assert_accurate(got[0], truth[0], tol=DOT_FLOOR["tf32"])
        assert_accurate(got[1], truth[1], tol=GRAD_FLOOR["tf32"], sensitivity=sens)
    else:
        assert_accurate(got, truth, ref=ref, sensitivity=sens)


def runs_tf32(x: torch.Tensor) -> bool:
    """Whether the fused F-Encoder multiplies this input's FFN in tf32 (compiled kernels,
    float32, torch.backends.cudnn.allow_tf32; the interpreter multiplies float32)."""
    return x.is_cuda and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32


# ------------------------------------------------------- the rank-one form, in torch
@pytest.mark.parametrize("heads,channels", [(1, 8), (2, 8), (4, 8), (8, 8), (2, 16), (8, 16)])
def test_rank_one_forward_equals_multihead_attention(heads, channels):
    enc = make_encoder(heads, channels).double()
    x = torch.randn(2, 1, 10, 16, dtype=torch.float64, device=DEVICE) * 3
    derived = fm.derive(*enc.op_params(), num_heads=heads)
    got = fm.forward(x, None, derived, EPS)
    assert max_rel_err(got, enc(x)) <= 1e-12  # an exact identity: float64 rounding only


def test_hand_written_backward_equals_autograd():
    enc = make_encoder(2, 8).double()
    derived = [t.detach().requires_grad_() for t in fm.derive(*enc.op_params(), num_heads=2)]
    x = (torch.randn(2, 1, 10, 8, dtype=torch.float64, device=DEVICE) * 2).requires_grad_()
    wt = torch.rand(2, 10, 8, dtype=torch.float64, device=DEVICE).requires_grad_()
    out = fm.forward(x, wt, fm.Derived(*derived), EPS)
    g = torch.randn_like(out)
    auto = torch.autograd.grad((out * g).sum(), [x, wt, *derived])
    dx, dwt, grads = fm.backward(g, x.detach(), wt.detach(), fm.Derived(*derived), EPS)
    for i, (a, b) in enumerate(zip([dx, dwt, *grads], auto, strict=True)):
        assert max_rel_err(a, b) <= 1e-11, i


# ---------------------------------------------------------------- the CPU implementation
@pytest.mark.parametrize(
    "heads,channels,n_mels,frames,batch,ffn_kernel,ffn_channels",
    [
        (2, 8, 80, 8, 2, 5, 32),  # the paper's sizes, few frames
        (1, 8, 10, 16, 3, 5, 6),
        (3, 6, 15, 8, 1, 3, 5),  # odd everything
        (4, 8, 7, 24, 2, 7, 9),  # a kernel wider than the Triton kernels take; 7 bands
        (2, 4, 5, 8, 5, 1, 3),
    ],
)
@pytest.mark.parametrize("with_time", [True, False])
def test_cpu_forward_and_gradients(
    heads, channels, n_mels, frames, batch, ffn_kernel, ffn_channels, with_time
):
    """The op's CPU implementation (kernels/freq_encoder_op/cpu.py, what ATFNN runs on the
    CPU under ATFNN_BACKEND=auto): output and every gradient against the float64 oracle,
    within the float32 reference's own error, on fresh inputs and awkward sizes."""
    enc = randomize(
        FrequencyEncoder(
            tiny_config(
                num_heads=heads,
                channels=channels,
                n_mels=n_mels,
                f_group=1 if n_mels % 5 else 5,
                ffn_kernel=ffn_kernel,
                ffn_channels=ffn_channels,
            )
        ),
        0.5,
    )
    x = torch.randn(batch, 1, n_mels, frames) * 2
    wt = torch.rand(batch, n_mels, frames) if with_time else None
    assert_as_accurate(enc, x, wt, backend="auto")


def test_cpu_implementation_is_what_aten_runs_on_the_cpu(monkeypatch):
    """Under the aten backend (auto's CPU path where the native core is not built) a CPU
    tensor runs kernels/freq_encoder_op/cpu.py's ATen path (not the SDPA reference, not the
    whole-batch rank-one form): in eager mode through its autograd Function, which keeps the
    activations, so a training step's backward encodes nothing again."""
    from atfnn_fast.kernels.freq_encoder_op import cpu

    calls = []
    real = cpu._encode
    monkeypatch.setattr(cpu, "_encode", lambda *a, **k: calls.append(k["keep"]) or real(*a, **k))
    enc = make_encoder(2, 8).cpu()
    x = torch.randn(2, 1, 10, 8, requires_grad=True)
    with use_backend("aten"):
        with torch.no_grad():
            out = kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
        assert calls == [False] and out.shape == (2, 8, 10, 8)
        out = kernels.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
        out.sum().backward()
    assert calls == [False, True]  # the forward kept what the backward used
    assert x.grad is not None and enc.ffn1.weight.grad is not None


def test_cpu_function_and_custom_op_agree_bit_for_bit():
    """The eager path (activations kept) and the custom op's CPU branch (activations
    recomputed, what torch.compile traces) give the same output and gradients."""
    enc = make_encoder(2, 8, n_mels=20).cpu()
    x = torch.randn(2, 1, 20, 16) * 2
    wt = torch.rand(2, 20, 16)
    runs = []
    for entry in ("eager", "op"):
        xi, wi = x.clone().requires_grad_(), wt.clone().requires_grad_()
        params = [p.detach().clone().requires_grad_() for p in enc.op_params()]
        if entry == "eager":
            out = fe_custom.freq_encoder(xi, *params, num_heads=2, eps=EPS, time_weights=wi)
        else:
            out, _ = torch.ops.atfnn.freq_encoder(xi, wi, params, 2, EPS)
        g = torch.autograd.grad(
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), [xi, wi, *params]
        )
        runs.append([out, *g])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_cpu_float64_is_the_rank_one_math_exactly():
    """In float64 the CPU implementation and the rank-one reference agree to rounding,
    forward and every gradient (the hand-derived backward is the same function)."""
    from atfnn_fast.kernels.freq_encoder_op import cpu

    enc = make_encoder(2, 8, n_mels=20).cpu().double()
    x = torch.randn(3, 1, 20, 8, dtype=torch.float64) * 3
    wt = torch.rand(3, 20, 8, dtype=torch.float64)
    with torch.no_grad():
        derived = fm.derive(*enc.op_params(), num_heads=2)
        assert (
            max_rel_err(cpu.forward(x, wt, derived, EPS), fm.forward(x, wt, derived, EPS)) < 1e-12
        )
        g = torch.randn(3, 8, 20, 8, dtype=torch.float64)
        got = cpu.backward(g, x, wt, derived, EPS)
        want = fm.backward(g, x, wt, derived, EPS)
    pairs = zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True)
    for i, (a, b) in enumerate(pairs):
        assert max_rel_err(a, b) < 1e-10, i


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_inputs(dtype):
    """bf16 / fp16 inputs compute in float32 and return their own dtype, within its floor."""
    enc = make_encoder(2, 8).cpu()
    x = torch.randn(2, 1, 10, 8) * 2
    with torch.no_grad(), use_backend("auto"):
        got = kernels.freq_encoder(x.to(dtype), *enc.op_params(), num_heads=2, eps=EPS)
        truth = copy.deepcopy(enc).double()(x.to(dtype).double())
    assert got.dtype == dtype
    assert_accurate(got, truth)


# ------------------------------------------------------------------- the Triton kernels
@pytest.mark.parametrize(
    "heads,channels,frames",
    [(1, 8, 8), (2, 8, 16), (4, 8, 24), (8, 8, 8), (2, 16, 8), (4, 16, 16), (8, 16, 24)],
)
@pytest.mark.parametrize("with_time", [True, False])
def test_fused_forward_and_gradients(heads, channels, frames, with_time):
    enc = make_encoder(heads, channels)
    x = torch.randn(2, 1, 10, frames, device=DEVICE) * 2
    wt = torch.rand(2, 10, frames, device=DEVICE) if with_time else None
    assert_as_accurate(enc, x, wt)


@pytest.mark.parametrize("ffn_kernel,ffn_channels", [(1, 6), (3, 6), (5, 17)])
def test_ffn_kernel_sizes(ffn_kernel, ffn_channels):
    """The band sweep keeps +-2 neighbours: kernels 1, 3 and 5, odd FFN widths."""
    enc = make_encoder(2, 8, ffn_kernel=ffn_kernel, ffn_channels=ffn_channels)
    x = torch.randn(2, 1, 10, 8, device=DEVICE) * 2
    assert_as_accurate(enc, x, torch.rand(2, 10, 8, device=DEVICE))


def test_wider_ffn_kernel_has_no_triton_kernel():
    assert fe_custom.supports([8, 2, 7, 32]) is not None
    assert fe_custom.supports([8, 2, 5, 32]) is None


@pytest.mark.parametrize("n_mels,batch", [(5, 3), (20, 1), (80, 1)])
def test_band_counts_and_batches(n_mels, batch):
    enc = make_encoder(2, 8, n_mels=n_mels)
    x = torch.randn(batch, 1, n_mels, 8, device=DEVICE)
    assert_as_accurate(enc, x, torch.rand(batch, n_mels, 8, device=DEVICE))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_extreme_inputs_stress_the_softmax_without_nan():
    """x' values of +-30 (saturated F-Attention weights on a loud spectrogram)."""
    enc = make_encoder(2, 8, scale=1.0)
    x = torch.randint(0, 2, (2, 1, 10, 8), device=DEVICE).float() * 60 - 30
    x[0, 0, :, 0] = torch.linspace(-30, 30, 10)
    wt = torch.rand(2, 10, 8, device=DEVICE)
    with use_backend("triton"):
        out, got = fused_run(enc, x, wt, torch.randn(2, 8, 10, 8, device=DEVICE))
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in got)
    # float32 softmax at |logits| ~ 1e3: the input gradient is ill-conditioned, and the
    # sensitivity term of the bound is what lets it through
    assert_as_accurate(enc, x, wt)


def test_non_contiguous_inputs_and_gradients():
    enc = make_encoder(2, 8)
    x = torch.randn(2, 1, 10, 16, device=DEVICE)[..., ::2]  # strided along T
    wt = torch.rand(2, 8, 10, device=DEVICE).transpose(1, 2)  # (B, F, T) view
    assert not x.is_contiguous() and not wt.is_contiguous()
    assert_as_accurate(enc, x, wt)
    g = torch.randn(2, 10, 8, 8, device=DEVICE).transpose(1, 2)  # non-contiguous grad
    with use_backend("triton"):
        _, got = fused_run(enc, x, wt, g)
    with torch.backends.cudnn.flags(allow_tf32=False):
        _, truth = reference_run(enc, x, wt, g)
    for a, t in zip(got, truth, strict=True):
        assert max_rel_err(a, t) <= 1e-5


def test_parameter_gradients_are_deterministic():
    enc = make_encoder(2, 8)
    x = torch.randn(2, 1, 10, 16, device=DEVICE)
    g = torch.randn(2, 16, 10, 8, device=DEVICE)
    with use_backend("triton"):
        first = fused_run(enc, x, None, g)[1]
        second = fused_run(enc, x, None, g)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_torch_ops_time_weights_match_the_reference_multiply():
    enc = make_encoder(2, 8)
    x = torch.randn(2, 1, 10, 8, device=DEVICE)
    wt = torch.rand(2, 10, 8, device=DEVICE)
    got = fe_reference.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS, time_weights=wt)
    want = enc(x) * (1 + wt.transpose(1, 2).unsqueeze(-1))
    assert max_rel_err(got, want) <= 1e-5


def op_params(enc, requires_grad=False):
    return [p.detach().clone().requires_grad_(requires_grad) for p in enc.op_params()]


def test_packed_layout_round_trips():
    enc = make_encoder(4, 16)
    derived = fm.derive(*enc.op_params(), num_heads=4)
    back = fc.unpack(fc.pack(derived), *fc.dims(derived))
    assert all(torch.equal(a, b) for a, b in zip(back, derived, strict=True))
    assert fc.pack(derived).numel() == fc.packed_size(*fc.dims(derived))


def test_bad_shapes_are_refused():
    enc = make_encoder(2, 8)
    params = op_params(enc)
    with pytest.raises(ValueError, match=r"x must be \(B, 1, F, T\)"):
        torch.ops.atfnn.freq_encoder(torch.randn(2, 10, 8), None, params, 2, EPS)
    with pytest.raises(ValueError, match=r"time_weights must be \(B, F, T\) = \(2, 10, 8\)"):
        torch.ops.atfnn.freq_encoder(torch.randn(2, 1, 10, 8), torch.rand(2, 8, 10), params, 2, EPS)
    with pytest.raises(ValueError, match=r"params must be the 14 F-Encoder parameters"):
        torch.ops.atfnn.freq_encoder(torch.randn(2, 1, 10, 8), None, params[:-1], 2, EPS)
    bad = [*params[:4], params[4][:, :4], *params[5:]]
    with pytest.raises(ValueError, match=r"attn.out_proj.weight must be \(8, 8\) .* got \(8, 4\)"):
        torch.ops.atfnn.freq_encoder(torch.randn(2, 1, 10, 8), None, bad, 2, EPS)
    with pytest.raises(ValueError, match=r"num_heads must divide channels"):
        torch.ops.atfnn.freq_encoder(torch.randn(2, 1, 10, 8), None, params, 3, EPS)


def test_derive_vjp_equals_autograd():
    """The gradient kernel's math in torch: the derive's vector-Jacobian product."""
    for heads, channels in [(1, 4), (2, 8), (4, 16)]:
        enc = make_encoder(heads, channels).double()
        params = op_params(enc, requires_grad=True)
        derived = fm.derive(*params, num_heads=heads)
        grads = fm.Derived(*(torch.randn_like(t) for t in derived))
        loss = sum((t * g).sum() for t, g in zip(derived, grads, strict=True))
        auto = torch.autograd.grad(loss, params)
        got = fm.derive_vjp(grads, *params, num_heads=heads)
        for i, (a, b) in enumerate(zip(got, auto, strict=True)):
            assert max_rel_err(a, b) <= 1e-12, i


def test_derived_parameters_on_the_device_equal_derive():
    """The forward's packed output (the derive kernel on the Triton path)."""
    enc = make_encoder(4, 16, ffn_channels=20)
    x = torch.randn(1, 1, 10, 8, device=DEVICE)
    want = fc.pack(fm.derive(*enc.op_params(), num_heads=4))
    with use_backend("triton"):
        _, packed = torch.ops.atfnn.freq_encoder(x, None, list(enc.op_params()), 4, EPS)
    assert packed.dtype == torch.float32
    assert max_rel_err(packed, want) <= 1e-6


@pytest.mark.parametrize("with_time", [True, False])
def test_opcheck(with_time):
    """torch.library's consistency checks; on the CPU they exercise the op's torch branch
    (with the hand-written backward) and its fake implementation."""
    enc = make_encoder(2, 8)
    params = op_params(enc, requires_grad=True)
    x = torch.randn(2, 1, 10, 8, device=DEVICE, requires_grad=True)
    wt = torch.rand(2, 10, 8, device=DEVICE, requires_grad=True) if with_time else None
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    if DEVICE.type != "cpu":
        tests += ("test_aot_dispatch_dynamic",)
    with use_backend("auto"):
        torch.library.opcheck(
            torch.ops.atfnn.freq_encoder.default, (x, wt, params, 2, EPS), test_utils=tests
        )


def test_packed_output_is_not_differentiable():
    """The op's second output (the derived parameters, saved for the backward) carries no
    gradient: using it in a loss must not silently give a wrong gradient."""
    enc = make_encoder(2, 8)
    params = op_params(enc, requires_grad=True)
    x = torch.randn(2, 1, 10, 8, device=DEVICE, requires_grad=True)
    out, packed = torch.ops.atfnn.freq_encoder(x, None, params, 2, EPS)
    assert out.requires_grad
    assert not packed.requires_grad


def test_op_compiles_without_graph_break():
    enc = make_encoder(2, 8)
    params = op_params(enc)
    x = torch.randn(2, 1, 10, 8, device=DEVICE)

    def fn(x):
        return torch.ops.atfnn.freq_encoder(x, None, params, 2, EPS)[0]

    with use_backend("auto"):
        got = torch.compile(fn, fullgraph=True)(x)
    assert max_rel_err(got, fn(x)) <= 1e-5


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16/fp16 kernels are tested on CUDA only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_cuda(dtype):
    enc = make_encoder(2, 8, n_mels=80)
    x = torch.randn(4, 1, 80, 128, device=DEVICE).to(dtype)
    wt = torch.rand(4, 80, 128, device=DEVICE).to(dtype)
    g = torch.randn(4, 128, 80, 8, device=DEVICE).to(dtype)
    out, got = fused_run(enc, x, wt, g)
    assert out.dtype == dtype
    truth = reference_run(enc, x.double(), wt.double(), g.double())
    mode = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    assert_accurate(out, truth[0], dtype=dtype, tol=DOT_FLOOR[mode])
    # the gradients pass through five low-precision kernels (the backward FFN's dots in
    # this dtype too: GRAD_FLOOR) and a float64 partial sum
    assert_accurate(got, truth[1], dtype=dtype, tol=max(5e-2, GRAD_FLOOR[mode]))


@pytest.mark.skipif(DEVICE.type != "cuda", reason="global-memory accounting needs CUDA")
def test_no_score_tensor_in_global_memory():
    """Forward + backward at B*T = 4096 frames: a [B*T, heads, F, F] float32 score tensor
    would need 210 MB; the fused op must stay far below that."""
    enc = make_encoder(2, 8, n_mels=80)
    x = torch.randn(32, 1, 80, 128, device=DEVICE, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fe_custom.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)
    out.sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    scores = 32 * 128 * 2 * 80 * 80 * 4
    assert peak < scores / 4, f"peak {peak / 2**20:.1f} MiB"


# ------------------------------------------------------ precision modes of the FFN dots
def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    """t with the low 13 mantissa bits of its float32 value cleared: what the tensor cores
    read of a float32 operand (Triton feeds the float32 registers to mma / wgmma .tf32)."""
    bits = t.float().contiguous().view(torch.int32) & ~0x1FFF
    return bits.view(torch.float32).to(t.dtype)


ROUNDINGS = {
    "tf32": _round_tf32,
    "bf16": lambda t: t.to(torch.bfloat16).to(t.dtype),
    "fp16": lambda t: t.to(torch.float16).to(t.dtype),
}


def emulated_forward(x, wt, derived, mode):
    """freq_encoder_math.forward in float64 with the operands of its two FFN matmuls rounded
    as the kernels' dots round them in ``mode`` (float32 accumulation is exact enough here:
    the matmuls are the only matmuls of the forward)."""
    rnd, mm = ROUNDINGS[mode], torch.Tensor.__matmul__
    torch.Tensor.__matmul__ = lambda a, b: mm(rnd(a), rnd(b))
    try:
        return fm.forward(x, wt, derived, EPS)
    finally:
        torch.Tensor.__matmul__ = mm


CALIBRATION_DRAWS = 20


def calibration_draws():
    """The floors' calibration problems: ``CALIBRATION_DRAWS`` fixed draws (seeds 0, 1, ...,
    the test's own random stream untouched) of the default model size (c = 8, P = 32, k = 5,
    80 bands), in float64: ``(x, wt, g, derived)``. Fixed, not fresh: the floors bound a
    heavy-tailed maximum, which one fresh draw can only sample (docs/design.md, How accuracy
    is judged)."""
    with torch.random.fork_rng(devices=[]):
        for seed in range(CALIBRATION_DRAWS):
            torch.manual_seed(seed)
            enc = make_encoder(2, 8, n_mels=80, ffn_channels=32).double().cpu()
            x = torch.randn(2, 1, 80, 64, dtype=torch.float64) * 2
            wt = torch.rand(2, 80, 64, dtype=torch.float64)
            g = torch.randn(2, 64, 80, 8, dtype=torch.float64)
            yield x, wt, g, fm.derive(*enc.op_params(), num_heads=2)


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_dot_precision_floors_cover_the_emulated_rounding(mode):
    """The forward accuracy floors of the matrix-unit modes, by emulation on the CPU: the
    FFN dot operands rounded like the kernels round them, against float64, on the
    calibration draws. Over 200 draws the worst forward errors are 2.9e-3 (tf32,
    truncated), 2.1e-3 (fp16), 1.6e-2 (bf16); each floor is at least twice the worst of
    these draws (DOT_FLOOR)."""
    errs = [
        max_rel_err(emulated_forward(x, wt, d, mode), fm.forward(x, wt, d, EPS))
        for x, wt, _, d in calibration_draws()
    ]
    assert 0 < max(errs) <= DOT_FLOOR[mode] / 2, errs


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_backward_dot_precision_floors_cover_the_emulated_rounding(mode):
    """The gradient floors of the matrix-unit modes (GRAD_FLOOR), by emulation on the CPU:
    the backward FFN kernels' dot operands rounded as they round them (the recompute's
    ``h1`` and ReLU mask exact, as the float32 kernels keep them), against float64, on the
    calibration draws."""
    worst = 0.0
    for x, wt, g, d in calibration_draws():
        exact = fm.backward(g, x, wt, d, EPS)
        emulated = fm.backward(g, x, wt, d, EPS, rnd=ROUNDINGS[mode])
        pairs = zip([emulated[0], *emulated[2]], [exact[0], *exact[2]], strict=True)
        worst = max(worst, *(max_rel_err(a, b) for a, b in pairs))
    assert 0 < worst <= GRAD_FLOOR[mode] / 2, worst


@pytest.mark.slow
def test_a_tf32_recompute_would_move_the_gradients_past_the_floor():
    """Why the float32 recompute stays exact (tuning.GRAD_TF32_MAX_CHANNELS): with tf32
    operands in the recompute too, the emulated gradients leave the tf32 floor (the ReLU
    mask flips where h1 is near zero) on some calibration draw."""
    worst = 0.0
    for x, wt, g, d in calibration_draws():
        exact = fm.backward(g, x, wt, d, EPS)
        emulated = fm.backward(
            g, x, wt, d, EPS, rnd=ROUNDINGS["tf32"], recompute_rnd=ROUNDINGS["tf32"]
        )
        pairs = zip([emulated[0], *emulated[2]], [exact[0], *exact[2]], strict=True)
        worst = max(worst, *(max_rel_err(a, b) for a, b in pairs))
    assert worst > GRAD_FLOOR["tf32"], worst


@pytest.mark.skipif(DEVICE.type != "cuda", reason="tf32 needs the compiled kernels (CUDA)")
@pytest.mark.parametrize("allow_tf32", [True, False])
def test_float32_precision_modes_on_cuda(allow_tf32):
    """float32 inputs: tf32 dots while cudnn.allow_tf32 (the output within DOT_FLOOR of the
    float64 truth, the gradients within GRAD_FLOOR["tf32"]), exact float32 ("ieee")
    otherwise."""
    enc = make_encoder(2, 8, n_mels=80)
    x = torch.randn(4, 1, 80, 128, device=DEVICE) * 2
    wt = torch.rand(4, 80, 128, device=DEVICE)
    with torch.backends.cudnn.flags(allow_tf32=allow_tf32):
        assert runs_tf32(x) == allow_tf32
        assert fe_custom._precision(x) == ("tf32" if allow_tf32 else "ieee")
        assert_as_accurate(enc, x, wt)
        if allow_tf32:  # tf32 really ran: the output is off the float32 result
            g = torch.randn(4, 128, 80, 8, device=DEVICE)
            with use_backend("triton"):
                out = fused_run(enc, x, wt, g)[0]
            with torch.backends.cudnn.flags(allow_tf32=False), use_backend("triton"):
                exact = fused_run(enc, x, wt, g)[0]
            assert max_rel_err(out, exact) > 1e-6


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16/fp16 kernels are tested on CUDA only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dots_against_float64(dtype):
    """bf16/fp16 inputs: 16-bit dot operands, float32 accumulation; the output within the
    mode's floor (DOT_FLOOR) of the float64 truth computed from the same (rounded) inputs."""
    enc = make_encoder(2, 8, n_mels=80)
    x = (torch.randn(4, 1, 80, 128, device=DEVICE) * 2).to(dtype)
    wt = torch.rand(4, 80, 128, device=DEVICE).to(dtype)
    assert fe_custom._precision(x) == {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    with use_backend("triton"):
        out = fe_custom.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS, time_weights=wt)
    truth = fm.forward(
        x.double(),
        wt.double(),
        fm.derive(*copy.deepcopy(enc).double().op_params(), num_heads=2),
        EPS,
    )
    mode = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    assert_accurate(out, truth, dtype=dtype, tol=DOT_FLOOR[mode])


def test_offsets_beyond_32_bits_are_refused_for_the_widest_band_tensor():
    """``d h1`` is the widest ``(B, F, T, .)`` scratch (FFN channels, 32 here, against 8
    channels): a shape whose ``B*F*T*32`` passes 2**31 is refused before anything is
    allocated (the input is a stride-0 view)."""
    enc = make_encoder(2, 8, ffn_channels=32)
    # B*F*T*8 = 8e8 < 2**31 < B*F*T*32
    x = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(10, 1, 100_000, 100)
    with pytest.raises(ValueError, match="32-bit offsets"), use_backend("triton"):
        fe_custom.freq_encoder(x, *enc.op_params(), num_heads=2, eps=EPS)


@pytest.mark.slow
def test_compile_rank1_passes_dispatch_and_match_the_kernels():
    """A tuned table (here an override) may send either pass to ``torch.compile`` of the
    rank-one math ("compile-rank1", docs/design.md, F-Encoder kernels): that pass then
    launches no F-Encoder kernel, and its output and gradients equal the kernels'."""
    enc = make_encoder(2, 8, ffn_channels=16)
    x = torch.randn(2, 1, 10, 16, device=DEVICE)
    wt = torch.rand(2, 10, 16, device=DEVICE)
    g = torch.randn(2, 16, 10, 8, device=DEVICE)
    with use_backend("triton"):
        want = fused_run(enc, x, wt, g)
    for forward, backward in (("compile-rank1", "kernels"), ("kernels", "compile-rank1")):
        settings = tuning.FreqEncoderSettings(forward=forward, backward=backward)
        launched = []

        def record(kernel, grid, args, kwargs, launched=launched):
            launched.append(getattr(kernel, "fn", kernel).__name__)

        with tuning.override(freq_encoder=settings), use_backend("triton"):
            got = fused_run(enc, x, wt, g)
            with launch_path.recording(record):
                fused_run(enc, x, wt, g)
        assert max_rel_err(got[0], want[0]) <= 1e-5
        for a, b in zip(got[1], want[1], strict=True):
            assert max_rel_err(a, b) <= 1e-4
        if forward == "compile-rank1":  # the backward's kernels only: no derive
            assert "_fenc_derive_kernel" not in launched, launched
            assert "_fenc_bwd_dh1_kernel" in launched, launched
        else:  # the forward's kernels only
            assert launched == ["_fenc_derive_kernel", "_fenc_norm1_kernel", "_fenc_ffn_kernel"]
