"""The helpers every test directory imports (``from helpers import ...``): test sizes, random
parameters, the one accuracy check, and WAV files written byte by byte.

Importing this module first sets TRITON_INTERPRET=1 on a machine without CUDA, so the Triton
kernels run through the interpreter there; on a GPU machine they compile for real. (The
variable must be set before ``atfnn_fast`` and so its kernels are imported; ``conftest.py``
imports this module before anything else.)
"""

from __future__ import annotations

import copy
import os
import struct
from collections.abc import Callable

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from atfnn_fast import ATFNNConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Small sizes that keep every divisibility rule of the contract but run in milliseconds.
TINY = dict(
    num_classes=3,
    n_mels=10,
    frames=16,
    channels=4,
    f_group=5,
    t_group=8,
    num_heads=2,
    ffn_channels=6,
    ffn_kernel=5,
    lstm_hidden=5,
    lstm_layers=2,
    dropout=0.0,
)

VARIANTS = {
    "ATFNN": {},
    "TFNN": dict(f_attention=False, t_attention=False),
    "ATNN": dict(f_encoder=False),
    "AFNN": dict(t_encoder=False),
}


def tiny_config(**changes) -> ATFNNConfig:
    return ATFNNConfig(**{**TINY, **changes})


def tiny_model(num_classes: int, seed: int = 0, **changes) -> torch.nn.Module:
    """A tiny ATFNN in eval mode with fresh random weights (the CLI and file tests')."""
    from atfnn_fast import ATFNN

    torch.manual_seed(seed)
    return randomize(ATFNN(tiny_config(num_classes=num_classes, **changes)), 0.3).eval()


def tiny_norm_stats():
    """Normalisation statistics of the tiny config's 10 bands."""
    from atfnn_fast.features import NormStats

    return NormStats.fit([torch.randn(10, 50, dtype=torch.float64) - 5])


def randomize(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Replace every parameter by fresh random values (LayerNorm affine included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the relative error the accuracy checks bound."""
    scale = want.detach().abs().max().clamp_min(1e-30)
    return ((got.detach().double() - want.detach().double()).abs().max() / scale).item()


# ------------------------------------------------------------------------- accuracy
# Unit roundoff of each dtype, and the relative error any result may have regardless of the
# reference (a few hundred roundings of a well-conditioned sum).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
# The F-Encoder output's floors in the matrix-unit modes of its FFN dots: tf32 for float32
# inputs on CUDA while torch.backends.cudnn.allow_tf32 (the tensor cores read 10 of the 23
# mantissa bits: truncation, u = 2**-10), fp16 / bf16 operands for those inputs. Emulated on
# the CPU the output moves up to 2.9e-3 / 2.1e-3 / 1.6e-2 over 200 draws (3.7e-3 / 3.5e-3 /
# 1.8e-2 on one more); each floor is at least twice that (docs/design.md, "How accuracy is
# judged").
DOT_FLOOR = {"tf32": 1e-2, "fp16": 1e-2, "bf16": 4e-2}
# The F-Encoder's gradients with its backward FFN dots on the matrix units (h1 and its ReLU
# mask exact, freq_encoder_math.backward's ``rnd``): emulated on the CPU (200 draws, default
# model size) the worst gradient moves 2.7e-2 (tf32), 3.0e-2 (fp16), 0.17 (bf16), each on
# a_head, a sum over every frame and band whose terms cancel (the median draw: 2.1e-3,
# 1.0e-3, 8.2e-3); each floor is 2x the worst.
# The GRAD recompute stays exact in float32 (tuning.GRAD_TF32_MAX_CHANNELS): with tf32
# operands there the worst gradient would move 0.20 (emulated, rank_one.backward's
# recompute_rnd), and this floor would have to be 0.45.
GRAD_FLOOR = {"tf32": 6e-2, "fp16": 6e-2, "bf16": 0.35}


def leaves(tree, label: str = "") -> list[tuple[str, torch.Tensor | None]]:
    """(label, tensor) pairs of a nested tuple/list/dict of tensors, in a fixed order."""
    if isinstance(tree, dict):
        return [pair for k, v in tree.items() for pair in leaves(v, f"{label}.{k}")]
    if isinstance(tree, list | tuple):
        return [pair for i, v in enumerate(tree) for pair in leaves(v, f"{label}[{i}]")]
    return [(label or "output", tree)]


def rounding_sensitivity(fn: Callable, *args, dtype=torch.float32, draws: int = 3, ulps: float = 4):
    """How far ``fn``'s float64 result moves when every floating input (tensors, and the
    parameters of modules among ``args``) is perturbed by up to ``ulps`` roundings of
    ``dtype``. Returns the per-leaf maximum over ``draws`` random perturbations, keyed like
    :func:`leaves`.

    Why several roundings: a fused implementation rounds tensors the reference keeps
    internal (the F-Encoder's stored ``y1``, its derived parameters, partial sums cast back
    to the dtype), and each acts on the next stage as a perturbation of its input. Its
    forward output differs from the float64 truth by ~4e-7 relative, about 7 float32
    roundings, so one rounding of the inputs would understate what a correct fused path may
    pass downstream (measured: an LSTM weight gradient moved 1.3e-5 under the fused
    front-end, 3.9e-6 under one-rounding perturbations, at seed 1684612097)."""
    u = UNIT_ROUNDOFF[dtype] * ulps

    def perturb(a):
        if isinstance(a, torch.nn.Module):
            a = copy.deepcopy(a)
            with torch.no_grad():
                for p in a.parameters():
                    p.mul_(1 + u * (2 * torch.rand_like(p) - 1))
            return a
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach() * (1 + u * (2 * torch.rand_like(a) - 1))
        return a

    truth = leaves(fn(*args))
    worst = {label: 0.0 for label, t in truth if t is not None}
    for _ in range(draws):
        moved = dict(leaves(fn(*[perturb(a) for a in args])))
        for label, t in truth:
            if t is not None:
                worst[label] = max(worst[label], max_rel_err(moved[label], t))
    return worst


def assert_accurate(got, truth, *, ref=None, sensitivity=None, dtype=None, tol=None):
    """Every tensor of ``got`` is as accurate as the problem allows, measured against the
    float64 ``truth`` (same nested structure; None where a gradient does not exist).

    The bound on ``max_rel_err(got, truth)`` of each tensor is the largest of
      - ``tol`` (default: the per-dtype FLOOR of ``got``'s dtype, or ``dtype``);
      - 2x the error of ``ref``, an implementation in the same dtype we trust (two float32
        implementations that sum in different orders can differ by twice their own error);
      - 2x ``sensitivity`` (from :func:`rounding_sensitivity`): where the problem is
        ill-conditioned, rounding the inputs alone moves the result this far, and a reference
        that happens to land close to the truth does not make that a fair bound.
    """
    got_l, truth_l = leaves(got), leaves(truth)
    assert [label for label, _ in got_l] == [label for label, _ in truth_l]
    ref_l = dict(leaves(ref)) if ref is not None else {}
    sens = sensitivity or {}
    for label, t in truth_l:
        g = dict(got_l)[label]
        assert (g is None) == (t is None), f"{label}: present in one result only"
        if t is None:
            continue
        assert g.shape == t.shape, f"{label}: shape {tuple(g.shape)}, expected {tuple(t.shape)}"
        floor = tol if tol is not None else FLOOR[dtype or g.dtype]
        ref_err = max_rel_err(ref_l[label], t) if label in ref_l else 0.0
        bound = max(floor, 2 * ref_err, 2 * sens.get(label, 0.0))
        err = max_rel_err(g, t)
        assert err <= bound, (
            f"{label}: relative error {err:.3g} > bound {bound:.3g} "
            f"(floor {floor:.3g}, reference {ref_err:.3g}, sensitivity {sens.get(label, 0):.3g})"
        )


_KSDATAFORMAT_PCM = bytes.fromhex("0100000000001000800000aa00389b71")


def wav_bytes(
    frames: np.ndarray, rate: int, bits: int, *, extensible: bool = False, pad: bool = True
) -> bytes:
    """A PCM WAV file written byte by byte: ``frames (n, channels)`` in [-1, 1) as
    ``bits``-bit samples (8 bits unsigned, the others signed little-endian), the fmt chunk
    plain or WAVE_FORMAT_EXTENSIBLE (as sox writes it for 24 bits), and the data chunk
    followed by its pad byte when its size is odd (``pad=False``: a writer that forgets)."""
    channels = frames.shape[1]
    width = bits // 8
    scaled = np.clip(np.round(frames * 2 ** (bits - 1)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    ints = scaled.astype(np.int64).reshape(-1)
    if bits == 8:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    block = channels * width
    if extensible:
        fmt = struct.pack(
            "<HHIIHHHHI16s",
            0xFFFE,
            channels,
            rate,
            rate * block,
            block,
            bits,
            22,
            bits,
            0,
            _KSDATAFORMAT_PCM,
        )
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2 and pad:
        body += b"\0"
    riff_size = len(body) + (1 if len(data) % 2 and not pad else 0)
    return b"RIFF" + struct.pack("<I", riff_size) + body
