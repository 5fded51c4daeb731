"""Backend selection for the fused ops (docs/design.md#dispatch).

The backend is read from ``ATFNN_BACKEND`` once, when this module is imported (like
``TRITON_INTERPRET``, it must be set before the kernels are imported), and can be changed
afterwards with :func:`set_backend` or the :func:`use_backend` context manager. Reading it
once keeps the choice a constant for ``torch.compile`` instead of an environment lookup per
call.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch

# "aten": as "auto", but CPU tensors take the ATen CPU implementation instead of the native
# core (kernels/native.py), to compare the two or to rule the core out
BACKENDS = ("auto", "aten", "triton", "torch")
ENV_BACKEND = "ATFNN_BACKEND"
ENV_INTERPRET = "TRITON_INTERPRET"


def _parse(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return value


# op name -> its custom-op entry point (``atfnn::<name>``: the Triton kernels on CUDA, the
# op folder's ``cpu`` module on the CPU), filled in by each op folder's ``op`` module
TRITON_IMPLS: dict[str, Callable] = {}
# op name -> its CPU implementation's eager entry (the op folder's ``cpu`` module), taken
# under auto for CPU tensors where the custom op could not be registered because Triton is
# missing (torch's CPU-only wheels, macOS and Windows ship without it): the CPU
# implementation needs no Triton
CPU_IMPLS: dict[str, Callable] = {}

_backend = _parse(os.environ.get(ENV_BACKEND, "auto") or "auto", ENV_BACKEND)


def register(op: str, module: str, cpu_entry: Callable | None = None):
    """Import an op folder's ``custom_op`` module (``module``, absolute) and record its entry
    point ``op`` in :data:`TRITON_IMPLS`. Where Triton is missing (torch's CPU-only wheels,
    macOS, Windows) the import fails: returns None and records ``cpu_entry`` in
    :data:`CPU_IMPLS`, so CPU tensors still take the CPU implementation (CUDA tensors
    then take the plain-torch reference)."""
    import importlib

    try:
        found = importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != "triton":
            raise  # a missing module of our own is a bug, not a missing Triton
        if cpu_entry is not None:
            CPU_IMPLS[op] = cpu_entry
        return None
    TRITON_IMPLS[op] = getattr(found, op)
    return found


def get_backend() -> str:
    """The backend in force: "auto", "triton" or "torch"."""
    return _backend


def set_backend(name: str) -> None:
    """Set the backend for every later call ("auto", "triton" or "torch")."""
    global _backend
    _backend = _parse(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block under another backend, restoring the previous one afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


# set while benchmarks.resources records launches (see launch.recording): CPU tensors
# may then take the Triton implementations, which compile but never run
recording_launches = False


def interpreter_enabled() -> bool:
    return os.environ.get(ENV_INTERPRET, "0") not in ("", "0")


_warned: set[tuple[str, str]] = set()


def select(
    op: str,
    tensor: torch.Tensor,
    torch_impl: Callable,
    triton_impl: Callable | None,
    unsupported: str | None = None,
):
    """Pick the implementation of ``op`` for a call whose main input is ``tensor``.

    ``unsupported``: why the Triton kernels cannot run this call's sizes (None if they
    can). On CUDA the device must also fit the kernels (:func:`.fit.problem`): under
    ``auto`` a call that cannot use Triton takes plain torch with one warning per op and
    device; under ``triton`` it raises."""
    if torch.onnx.is_in_onnx_export():
        return torch_impl
    backend = _backend
    if backend == "torch":
        return torch_impl
    if tensor.is_cuda and triton_impl is not None and unsupported is None:
        from .fit import problem

        unsupported = problem(op, tensor.device)
    if backend in ("auto", "aten"):
        if triton_impl is None and tensor.device.type == "cpu" and op in CPU_IMPLS:
            return CPU_IMPLS[op]  # no Triton: the CPU implementation without the custom op
        if triton_impl is None or tensor.device.type not in ("cuda", "cpu"):
            return torch_impl
        if not tensor.is_cuda:  # the custom op's CPU implementation (its op folder's cpu.py)
            return triton_impl
        if unsupported is not None:
            key = (op, str(tensor.device))
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"atfnn::{op}: {unsupported}; running the plain-torch implementation "
                    f"instead (set {ENV_BACKEND}=triton to make this an error)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return torch_impl
        return triton_impl
    # backend == "triton": asked for explicitly, so never fall back silently.
    if triton_impl is None:
        raise NotImplementedError(
            f"{ENV_BACKEND}=triton, but op atfnn::{op} has no Triton implementation yet; "
            f"use {ENV_BACKEND}=auto or torch"
        )
    if unsupported is not None and (tensor.is_cuda or interpreter_enabled()):
        raise RuntimeError(f"{ENV_BACKEND}=triton, but atfnn::{op} cannot run here: {unsupported}")
    if not tensor.is_cuda and not interpreter_enabled() and not recording_launches:
        raise RuntimeError(
            f"{ENV_BACKEND}=triton with a {tensor.device.type} tensor needs "
            f"{ENV_INTERPRET}=1 (set before importing atfnn_fast) to run atfnn::{op} "
            "through the Triton interpreter"
        )
    return triton_impl
