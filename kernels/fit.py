"""Does a CUDA device fit the Triton kernels? (used by :func:`.dispatch.select`)

The needs come from ``resource_needs.json`` beside this file: per op and per compiled arch,
the most shared memory any of its kernels takes per block (over the model configurations
and dtypes of the resource table). ``python -m benchmarks.resources --write-needs`` writes
it from the compiled kernels, and the resource test checks that the file matches them, so
the numbers are the compiler's, not estimates.

A device fits an op when its compute capability is at least the lowest arch compiled
(sm_80) and its opt-in shared memory per block holds the op's largest block for the nearest
compiled arch at or below it (all archs' maximum for anything newer than the table knows).
Registers are not checked: every kernel uses at most 128 per thread, within every NVIDIA
GPU's 255.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

NEEDS_FILE = Path(__file__).with_name("resource_needs.json")


@functools.cache
def needs() -> dict[str, dict[int, int]]:
    """``{op: {arch: shared bytes per block}}``."""
    raw = json.loads(NEEDS_FILE.read_text())
    return {op: {int(a): int(v) for a, v in per_arch.items()} for op, per_arch in raw.items()}


def need_for(op: str, arch: int) -> int | None:
    """Shared bytes per block ``op`` needs on ``arch`` (None: below every compiled arch)."""
    table = needs()[op]
    known = [a for a in table if a <= arch]
    if not known:
        return None
    if arch > max(table):
        return max(table.values())
    return table[max(known)]


def problem(op: str, device: torch.device) -> str | None:
    """Why ``op``'s kernels cannot launch on ``device``, or None if they fit."""
    return _problem(op, device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _problem(op: str, index: int) -> str | None:
    props = torch.cuda.get_device_properties(index)
    arch = 10 * props.major + props.minor
    need = need_for(op, arch)
    name = f"{props.name} (sm_{arch})"
    if need is None:
        lowest = min(needs()[op])
        return f"{name} is older than sm_{lowest}, the lowest arch the kernels are built for"
    have = getattr(props, "shared_memory_per_block_optin", 0)
    if have < need:
        return (
            f"{name} has {have // 1024} KB of shared memory per block; its kernels need "
            f"{-(-need // 1024)} KB"
        )
    return None


def clear_cache() -> None:
    _problem.cache_clear()
