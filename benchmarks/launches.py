"""Device launches and host syncs of ATFNN's fused front-end, counted without a GPU.

    python -m benchmarks.launches                  # default config, B = 2
    python -m benchmarks.launches --config tiny --x-grad

The counting rule (docs/design.md#launches-per-call):

* a **Triton launch** is one call of :func:`atfnn_fast.kernels.launch.launch`. The
  launch recorder receives it (nothing runs; CPU tensors take the Triton branch, as in
  :mod:`benchmarks.resources`);
* an **aten launch** is one aten op (the package's ``atfnn::`` custom ops are looked into:
  the ops of their bodies count, not the custom op itself) seen by a ``TorchDispatchMode`` that would run a kernel on
  a GPU: every op except views and other aliasing ops (an output that aliases an input in the
  op's schema, plus ``_unsafe_view``), metadata queries, and allocations without a fill
  (``empty*``, ``new_empty*``). ``zeros`` / ``fill_`` / ``copy_`` / ``clone`` / ``_to_copy``
  count; autograd's own ops (the add that sums a gradient reaching one tensor from two uses)
  are dispatched like any other and count too;
* a **host sync** is one ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``):
  the op that copies a device value to the host.

What is counted: ``front_end(x)`` of an :class:`atfnn_fast.ATFNN` (forward), and a training
step's front-end: the forward, then ``enc.backward(g)`` with ``g`` made outside the count,
the attention maps unused (as in training), parameter gradients ``None`` before the step
(AccumulateGrad then stores the gradient: free) and ``x`` not requiring a gradient unless
``x_grad``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALLOCATIONS = frozenset(
    ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted")
)
METADATA = frozenset(("sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_contiguous"))
VIEWS = frozenset(("_unsafe_view", "alias", "detach", "lift_fresh"))
SYNC = "_local_scalar_dense"


def is_launch(func) -> bool:
    """Whether an aten op would run a device kernel (the rule of the module docstring)."""
    name = func._schema.name.split("::")[-1]
    if name in ALLOCATIONS or name in METADATA or name in VIEWS or name == SYNC:
        return False
    returns = func._schema.returns
    aliasing = any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
    return not aliasing


@dataclass
class Counts:
    """Launches and syncs of one counted region."""

    triton: list[str] = field(default_factory=list)
    aten: Counter = field(default_factory=Counter)
    syncs: int = 0

    @property
    def total(self) -> int:
        return len(self.triton) + sum(self.aten.values())

    def summary(self) -> dict:
        return dict(
            total=self.total,
            triton=len(self.triton),
            aten=sum(self.aten.values()),
            syncs=self.syncs,
            triton_kernels=dict(Counter(self.triton)),
            aten_ops=dict(self.aten),
        )


class CountingMode(TorchDispatchMode):
    """Counts aten launches and host syncs (see the module docstring) into ``counts``."""

    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        qualname = func._schema.name
        if qualname.startswith("atfnn::"):  # look inside the package's custom ops
            from torch._library.custom_ops import OPDEFS

            with self:
                return OPDEFS[qualname]._init_fn(*args, **(kwargs or {}))
        name = qualname.split("::")[-1]
        if name == SYNC:
            self.counts.syncs += 1
        elif is_launch(func):
            self.counts.aten[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class counting:
    """Context manager: count Triton launches (recorded, not run: CPU tensors take the
    Triton branch) and aten launches into ``self.counts``. With ``record=False`` the
    kernels run as the backend decides (the interpreter, or plain torch) and only the aten
    ops and syncs of the region are counted, the interpreter's own ops excluded."""

    def __init__(self, record: bool = True) -> None:
        self.counts = Counts()
        self.record = record

    def __enter__(self) -> Counts:
        import contextlib

        from atfnn_fast.kernels import launch as launch_path

        self._stack = contextlib.ExitStack()
        if self.record:

            def recorder(kernel, grid, args, kwargs):
                self.counts.triton.append(kernel.__name__)

            self._stack.enter_context(launch_path.recording(recorder))
        else:
            real = launch_path.launch

            def counted(kernel, grid, *args, **kwargs):
                self.counts.triton.append(kernel.__name__)
                with _no_counting():
                    real(kernel, grid, *args, **kwargs)

            self._stack.enter_context(_patched(launch_path, "launch", counted))
        self._stack.enter_context(CountingMode(self.counts))
        return self.counts

    def __exit__(self, *exc) -> None:
        self._stack.close()


def _no_counting():
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


class _patched:
    def __init__(self, obj, name, value) -> None:
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self):
        import sys

        self.old = getattr(self.obj, self.name)
        # the kernels' host modules imported `launch` by name: patch every binding
        self.modules = [
            m
            for m in list(sys.modules.values())
            if m is not None
            and getattr(m, "__name__", "").startswith("atfnn_fast.kernels")
            and getattr(m, self.name, None) is self.old
        ]
        for m in self.modules:
            setattr(m, self.name, self.value)

    def __exit__(self, *exc):
        for m in self.modules:
            setattr(m, self.name, self.old)


def front_end_counts(
    model, x: torch.Tensor, *, x_grad: bool = False, record: bool = True
) -> tuple[Counts, Counts]:
    """``(forward, training step)`` counts of ``model.front_end`` (module docstring)."""
    x = x.detach().requires_grad_(x_grad)
    model.zero_grad(set_to_none=True)
    with counting(record) as fwd:
        model.front_end(x)
    model.zero_grad(set_to_none=True)
    with counting(record) as step:
        enc, _ = model.front_end(x)
        g = _outside(lambda: torch.ones_like(enc))
        enc.backward(g)
    return fwd, step


def _outside(fn):
    with _no_counting():
        return fn()


def measure(config_name: str = "default", batch: int = 2, x_grad: bool = False) -> dict:
    """Counts of the Triton branch (recorded) for one configuration of
    :func:`benchmarks.resources.configs`."""
    from atfnn_fast import ATFNN
    from atfnn_fast.kernels import use_backend

    from .resources import configs

    cfg = configs()[config_name]
    torch.manual_seed(0)
    model = ATFNN(cfg)
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames)
    with use_backend("triton"):
        with counting() as check:
            model.prepare_input(x)
        fwd, step = front_end_counts(model, x, x_grad=x_grad)
    return dict(
        config=config_name,
        input_check=check.summary(),
        forward=fwd.summary(),
        training_step=step.summary(),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.launches", description=__doc__)
    ap.add_argument("--config", default="default")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--x-grad", action="store_true", help="x requires a gradient")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.config, args.batch, args.x_grad), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
