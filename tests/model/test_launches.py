"""Device launches of ATFNN's fused front-end (docs/design.md#launches-per-call).

The counting rule (``benchmarks/launches.py``): a Triton launch is one call of
``kernels.launch_path.launch``, received by the launch recorder (nothing runs: CPU tensors
take the Triton branch, as in ``benchmarks.resources``); an aten launch is one aten op seen
by a TorchDispatchMode that would run a device kernel: every op but views / aliasing ops,
metadata queries and allocations without a fill (``empty*``). Fills, copies and casts count;
the ops inside the ``atfnn::`` custom ops count, and so do autograd's own (the ``add`` that
sums the gradients of a tensor used twice). A host sync is one ``_local_scalar_dense``.

Counted: ``front_end(x)`` forward; a training step's front-end = the forward, then
``enc.backward(g)`` (``g`` made outside the count, maps unused, parameter gradients None
before, ``x`` without a gradient unless said).
"""

import pytest
import torch
from helpers import tiny_config

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.kernels import use_backend
from benchmarks.launches import counting, front_end_counts, is_launch

FORWARD_LIMIT = 6
STEP_LIMIT = 16


@pytest.mark.parametrize(
    "cfg",
    [ATFNNConfig(frames=32), tiny_config()],
    ids=["default", "tiny"],
)
def test_front_end_launches(cfg):
    torch.manual_seed(0)
    model = ATFNN(cfg)
    x = torch.randn(2, 1, cfg.n_mels, cfg.frames)
    with use_backend("triton"):
        fwd, step = front_end_counts(model, x)
        _, step_x = front_end_counts(model, x, x_grad=True)
    assert fwd.total <= FORWARD_LIMIT, fwd.summary()
    assert step.total <= STEP_LIMIT, step.summary()
    assert fwd.aten == {} and step.aten == {}, (fwd.aten, step.aten)  # all in Triton
    assert fwd.syncs == step.syncs == step_x.syncs == 0
    # with x requiring a gradient, autograd adds the two gradients reaching x (F- and
    # T-Attention both read it): one aten add
    assert step_x.total == step.total + 1 and dict(step_x.aten) == {"add": 1}
    # the front-end's parameters got their gradients through the kernels (recorded, not run)
    front = [model.f_attention, model.t_attention, model.f_encoder]
    assert all(p.grad is not None for m in front for p in m.parameters())


def test_the_input_check_is_one_launch():
    cfg = tiny_config()
    model = ATFNN(cfg)
    x = torch.randn(2, 1, cfg.n_mels, cfg.frames)
    with use_backend("triton"), counting() as counts:
        model.prepare_input(x)
    assert counts.total == 1 and counts.triton == ["_assert_finite_kernel"]


def test_the_rule_counts_fills_and_math_but_not_views_or_allocations():
    with counting() as counts:
        a = torch.empty(4, 4)
        a.view(16).t()
        torch.zeros(3)
        a.float().contiguous()  # no-ops: nothing dispatched
        (a + 1).sum()
    assert dict(counts.aten) == {"zeros": 1, "add": 1, "sum": 1}
    assert not is_launch(torch.ops.aten.transpose.int)
    assert is_launch(torch.ops.aten._to_copy.default)
