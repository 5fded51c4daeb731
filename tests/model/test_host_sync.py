"""No host sync in ATFNN's forward and backward, and its NaN/Inf check without one
(docs/design.md#choices-the-paper-leaves-open, docs/design.md#launches-per-call).

A host sync is an ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``): the op
that copies a device value to the host. On the CPU it costs nothing, but the same Python
runs on CUDA, so counting it under a TorchDispatchMode on the CPU finds every sync a CUDA run
would make. On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing.
"""

import pytest
import torch
from helpers import DEVICE, randomize, tiny_config
from triton.runtime import interpreter

from atfnn_fast import ATFNN, ATFNNReference
from atfnn_fast.kernels import checks, use_backend
from benchmarks.launches import counting


def train_step(model, x):
    logits = model(x)
    logits.square().sum().backward()


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_forward_and_backward_make_no_host_sync(backend):
    """Plain torch on the CPU (auto), the Triton kernels (through the interpreter without a
    GPU), with the NaN/Inf check on (the default)."""
    model = randomize(ATFNN(tiny_config())).to(DEVICE)
    x = torch.randn(2, 1, 10, 16, device=DEVICE, requires_grad=True)
    with use_backend(backend), counting(record=False) as counts:
        train_step(model, x)
    assert counts.syncs == 0
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_the_count_sees_the_reference_check():
    """The reference's check is synchronous: the counter must see its syncs."""
    model = ATFNNReference(tiny_config()).to(DEVICE)
    with counting(record=False) as counts:
        model(torch.randn(2, 1, 10, 16, device=DEVICE))
    assert counts.syncs >= 1


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs CUDA")
def test_cuda_training_step_under_sync_debug_mode_error():
    model = ATFNN(tiny_config(n_mels=80, channels=8, f_group=4, ffn_channels=32)).cuda()
    x = torch.randn(4, 1, 80, 16, device="cuda")
    train_step(model, x)  # warm-up: compiles, loads cuDNN
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_sync_mode_is_the_reference_check():
    model = ATFNN(tiny_config(), check_finite="sync").to(DEVICE)
    x = torch.randn(2, 1, 10, 16, device=DEVICE)
    x[0, 0, 1, 2] = float("nan")
    x[1, 0, 3, 4] = -float("inf")
    with pytest.raises(ValueError, match="x must be finite: got 1 NaN and 1 Inf values"):
        model(x)
    with counting(record=False) as counts:
        model(torch.randn(2, 1, 10, 16, device=DEVICE))
    assert counts.syncs >= 1


def test_bad_check_finite_is_refused():
    with pytest.raises(ValueError, match=r"check_finite must be one of .* got 'async'"):
        ATFNN(tiny_config(), check_finite="async")


def test_the_check_kernel_asserts_on_nan_and_inf(monkeypatch):
    """The CUDA check's kernel through the interpreter: the interpreter compiles
    device_assert out (like a non-debug kernel) unless its options say debug, as the
    kernel's own ``triton.jit(debug=True)`` does on a GPU."""
    if DEVICE.type == "cuda":
        pytest.skip("the interpreter runs CPU tensors")
    monkeypatch.setattr(
        interpreter.interpreter_builder, "options", interpreter.InterpreterOptions(debug=True)
    )
    x = torch.randn(3, 1, 10, 40)[..., ::2]  # strided
    checks.launch_assert_finite(x)
    checks.launch_assert_finite(x[:, 0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[2, 0, 9, 19] = bad
        with pytest.raises(Exception, match="x must be finite: the input contains NaN or Inf"):
            checks.launch_assert_finite(y)
