"""atfnn::band_attention (Triton) against the plain-torch reference, forward and backward.

Without a GPU the kernels run through the Triton interpreter (float32 only); on a CUDA
machine the same tests compile them, and the bf16/fp16 tests run too.
"""

import pytest
import torch
from helpers import DEVICE, assert_accurate, max_rel_err, rounding_sensitivity

from atfnn_fast.kernels import use_backend
from atfnn_fast.kernels.band_attention_op import custom_op as ba_custom
from atfnn_fast.kernels.band_attention_op import reference as ba_reference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _triton_backend():
    with use_backend("triton"):
        yield


def make_inputs(mode, b, f, t, c, width=None, noncontig=False, dtype=torch.float32):
    """(source, weight, bias, target, axis) for mode freq | time_input | time_encoding."""
    width = c if width is None else width

    def rand(*shape):
        if noncontig:  # every other element of a twice-as-long last dim: strided in place
            return torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE, dtype=dtype)[..., ::2]
        return torch.randn(*shape, device=DEVICE, dtype=dtype)

    def rand_enc():
        if noncontig:  # (B, T, F, W) as a permuted view of a (B, F, T, W) tensor
            return torch.randn(b, f, t, width, device=DEVICE, dtype=dtype).transpose(1, 2)
        return torch.randn(b, t, f, width, device=DEVICE, dtype=dtype)

    bias = torch.randn(c, device=DEVICE)
    if mode == "freq":
        return rand(b, 1, f, t), torch.randn(c, 1, 5, 1, device=DEVICE), bias, None, "freq"
    enc = rand_enc()
    if mode == "time_input":
        return rand(b, 1, f, t), torch.randn(c, 1, 1, 8, device=DEVICE), bias, enc, "time"
    source = enc.permute(0, 3, 2, 1)
    return source, torch.randn(c, width, 1, 8, device=DEVICE) * 0.5, bias, enc, "time"


def run(fn, source, weight, bias, target, axis, with_map_grad=True, dtype=None):
    """Forward and all gradients through ``fn`` (optionally on inputs cast to ``dtype``)."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    leaves = [
        cast(t.detach()).clone().requires_grad_(True) if t is not None else None
        for t in (source, weight, bias, target)
    ]
    src = leaves[0]
    if target is not None and source.data_ptr() == target.data_ptr():
        src = leaves[3].permute(0, 3, 2, 1)  # the encoding source is a view of the target
        leaves[0] = None
    out, wmap = fn(src, leaves[1], leaves[2], leaves[3], axis=axis)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    g_out = torch.randn(out.shape, device=DEVICE, generator=gen).to(out.dtype)
    loss = (out * g_out).sum()
    if with_map_grad:
        g_map = torch.randn(wmap.shape, device=DEVICE, generator=gen).to(wmap.dtype)
        loss = loss + (wmap * g_map).sum()
    loss.backward()
    return out, wmap, [t.grad if t is not None else None for t in leaves]


def run_both(*inputs, with_map_grad=True):
    """The op, the float32 reference, the float64 reference (the truth), and how far the
    truth moves under float32 rounding of the inputs (helpers.rounding_sensitivity)."""
    source, target, axis = inputs[0], inputs[3], inputs[4]
    aliased = target is not None and source.data_ptr() == target.data_ptr()

    def exact(source, weight, bias, target):
        if aliased:  # the encoding source stays a view of the (perturbed) target
            source = target.permute(0, 3, 2, 1)
        return run(
            ba_reference.band_attention,
            source,
            weight,
            bias,
            target,
            axis,
            with_map_grad=with_map_grad,
            dtype=torch.float64,
        )

    return [
        run(ba_custom.band_attention, *inputs, with_map_grad=with_map_grad),
        run(ba_reference.band_attention, *inputs, with_map_grad=with_map_grad),
        exact(*inputs[:4]),
        rounding_sensitivity(exact, *inputs[:4]),
    ]


def check(results):
    """Output, weight map and every gradient of the op against the float64 truth, bounded
    by the float32 reference's own error and the rounding sensitivity
    (helpers.assert_accurate). (Weight and bias gradients are sums over all windows with
    cancellations, so they are judged against the truth rather than against the float32
    reference.)"""
    got, ref, truth, sensitivity = results
    assert got[0].dtype == ref[0].dtype
    assert_accurate(got, truth, ref=ref, sensitivity=sensitivity)


# B = 1 and odd; T = 8, 24, 136; F = 5, 40, 80; c = 1, 8, 16 (one axis varied at a time
# around B=3, F=40, T=24, c=8, plus the paper size at B=1).
SHAPES = [
    (1, 40, 24, 8),
    (3, 40, 24, 8),
    (3, 40, 8, 8),
    (3, 40, 136, 8),
    (3, 5, 24, 8),
    (3, 80, 24, 8),
    (3, 40, 24, 1),
    (3, 40, 24, 16),
    (1, 80, 128, 8),
    (5, 5, 8, 1),
]


@pytest.mark.parametrize("mode", ["freq", "time_input", "time_encoding"])
@pytest.mark.parametrize("b,f,t,c", SHAPES)
def test_forward_and_gradients_match_reference(mode, b, f, t, c):
    check(run_both(*make_inputs(mode, b, f, t, c)))


@pytest.mark.parametrize("mode", ["freq", "time_input", "time_encoding"])
@pytest.mark.parametrize("b,f,t,c", [(3, 40, 24, 8), (1, 80, 128, 8), (5, 5, 8, 1)])
@pytest.mark.parametrize("with_map_grad", [True, False])
@pytest.mark.parametrize("backend", ["auto", "aten"])
def test_the_cpu_implementation_matches_reference(mode, b, f, t, c, with_map_grad, backend):
    """Under auto a CPU tensor runs the op's cpu.py on the native core (kernels/native.py);
    under aten its ATen path (the reference's forward ops, and the backward that takes the
    conv's three gradients in one convolution_backward). Both against the float64 truth;
    the ATen forward bit for bit equal to the reference's."""
    if DEVICE.type != "cpu":
        pytest.skip("the CPU implementation")
    from atfnn_fast.kernels import native

    if backend == "auto" and not native.available():
        pytest.skip(f"native core: {native.missing_reason()}")
    inputs = make_inputs(mode, b, f, t, c)
    with use_backend(backend):
        check(run_both(*inputs, with_map_grad=with_map_grad))
        got = run(ba_custom.band_attention, *inputs, with_map_grad=with_map_grad)
    ref = run(ba_reference.band_attention, *inputs, with_map_grad=with_map_grad)
    if backend == "aten":
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])  # the same ops
    else:
        assert max_rel_err(got[0], ref[0]) < 1e-6 and max_rel_err(got[1], ref[1]) < 1e-6


@pytest.mark.parametrize("mode", ["freq", "time_input", "time_encoding"])
def test_non_contiguous_inputs(mode):
    source, weight, bias, target, axis = make_inputs(mode, 3, 40, 24, 8, noncontig=True)
    assert not source.is_contiguous() or (target is not None and not target.is_contiguous())
    check(run_both(source, weight, bias, target, axis))


@pytest.mark.parametrize("width", [1, 3])
def test_time_attention_on_narrow_encodings(width):
    """W = 1 is the ATNN variant (no F-Encoder: the LSTM reads x')."""
    check(run_both(*make_inputs("time_input", 2, 10, 16, 4, width=width)))
    check(run_both(*make_inputs("time_encoding", 2, 10, 16, 4, width=width)))


def test_unused_weight_map_gives_the_same_gradients():
    check(run_both(*make_inputs("freq", 2, 10, 16, 4), with_map_grad=False))
    check(run_both(*make_inputs("time_input", 2, 10, 16, 4), with_map_grad=False))


def test_weight_gradients_are_deterministic():
    source, weight, bias, target, axis = make_inputs("time_input", 3, 40, 24, 8)
    grads = []
    for _ in range(2):
        w = weight.clone().requires_grad_(True)
        out, _ = ba_custom.band_attention(source, w, bias, target, axis=axis)
        out.sum().backward()
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_extreme_values_do_not_overflow():
    source, weight, bias, _, axis = make_inputs("freq", 2, 10, 16, 4)
    source = source * 1e3  # sigmoid saturates; no NaN, weights exactly 0 or 1 allowed
    out, wmap = ba_custom.band_attention(source, weight * 10, bias, axis=axis)
    ref, ref_map = ba_reference.band_attention(source, weight * 10, bias, axis=axis)
    assert torch.isfinite(out).all() and torch.isfinite(wmap).all()
    assert max_rel_err(out, ref) <= 1e-5 and max_rel_err(wmap, ref_map) <= 1e-5


@pytest.mark.parametrize(
    "args,pattern",
    [
        (lambda x, w, b, e: (x, w[:, :, :4], b, None, False), "not a multiple"),
        (lambda x, w, b, e: (x, w, b[:3], None, False), "do not fit"),
        (lambda x, w, b, e: (x.expand(-1, 2, -1, -1), w, b, None, False), "do not fit"),
        (lambda x, w, b, e: (x, w, b, e, False), "axis='time'"),
    ],
)
def test_bad_shapes_are_refused(args, pattern):
    x, w, b, _, _ = make_inputs("freq", 2, 10, 16, 4)
    e = torch.randn(2, 16, 10, 4, device=DEVICE)
    with pytest.raises(ValueError, match=pattern):
        torch.ops.atfnn.band_attention(*args(x, w, b, e))


@pytest.mark.parametrize("mode", ["freq", "time_input"])
def test_opcheck_schema_fake_and_autograd_registration(mode):
    """torch.library's own consistency checks (CPU: the op's plain-torch branch)."""
    with use_backend("auto"):
        source, weight, bias, target, axis = make_inputs(mode, 2, 10, 16, 4)
        args = [t.requires_grad_() if t is not None else None for t in (source, weight, bias)]
        tgt = target.requires_grad_() if target is not None else None
        torch.library.opcheck(torch.ops.atfnn.band_attention.default, (*args, tgt, axis == "time"))


def test_plain_torch_branch_of_the_op_matches_reference():
    """On the CPU without ATFNN_BACKEND=triton the op runs its torch branch (with the
    hand-written backward formulas)."""
    if DEVICE.type == "cuda":
        pytest.skip("CPU branch")
    with use_backend("auto"):
        for mode in ("freq", "time_input", "time_encoding"):
            check(run_both(*make_inputs(mode, 2, 10, 16, 4)))


def test_op_compiles_without_graph_break():
    """torch.compile(fullgraph=True) traces the op (on the CPU: its torch branch; on CUDA:
    the Triton kernels, which inductor sees through wrap_triton)."""
    with use_backend("auto"):
        source, weight, bias, target, _ = make_inputs("time_input", 2, 10, 16, 4)

        def fn(s, w, b, t):
            return torch.ops.atfnn.band_attention(s, w, b, t, True)

        got = torch.compile(fn, fullgraph=True)(source, weight, bias, target)
        want = fn(source, weight, bias, target)
    for g, w in zip(got, want, strict=True):
        assert max_rel_err(g, w) <= 1e-6


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16/fp16 kernels are tested on CUDA only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["freq", "time_input", "time_encoding"])
def test_low_precision_on_cuda(mode, dtype):
    source, weight, bias, target, axis = make_inputs(mode, 3, 80, 128, 8, dtype=dtype)
    exact = [t.double() if t is not None else None for t in (source, weight, bias, target)]
    got = ba_custom.band_attention(source, weight, bias, target, axis=axis)
    assert got[0].dtype == dtype
    assert_accurate(got, ba_reference.band_attention(*exact, axis=axis))  # per-dtype floor


@pytest.mark.skipif(DEVICE.type != "cuda", reason="aot dispatch traces the Triton kernel: CUDA")
def test_opcheck_aot_dispatch_on_cuda():
    source, weight, bias, _, _ = make_inputs("freq", 2, 10, 16, 4)
    torch.library.opcheck(
        torch.ops.atfnn.band_attention.default,
        (source.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), None, False),
    )
