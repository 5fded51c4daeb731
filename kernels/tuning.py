"""Launch settings of the Triton kernels: one function per op, the only place block sizes and
warp counts are chosen.

Every setting a function here can return is compiled for sm_80, sm_86, sm_89 and sm_90 by
``python -m benchmarks.resources`` (and its test in ``make test``), which checks that it fits:
shared memory within the arch's per-block limit, no local memory, and at least the occupancy
targets of :data:`WARPS_TARGET`. A new entry, or a later ``triton.autotune`` config, must pass
that check before it ships.

The numbers are chosen from the compiler's resource report (registers and shared memory per
kernel, see docs/design.md#kernel-resources); until a GPU run times alternatives, they are
the smallest tiles that keep ``tl.dot`` legal (every dim >= 16) and the registers under 128
per thread (16 resident warps).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

# resident warps per SM each kernel must reach: 16 on sm_80 / sm_90, 12 on sm_86 / sm_89
WARPS_TARGET = {80: 16, 86: 12, 89: 12, 90: 16}


@dataclass(frozen=True)
class FreqEncoderSettings:
    """Frames per program (``block_t``, the M dim of every dot), band chunk of the softmax
    streams (``band_chunk``) and warps of each F-Encoder kernel."""

    block_t: int = 16
    band_chunk: int = 16
    warps_sweep: int = 4
    warps_ffn_bwd: int = 8
    warps_norm1_bwd: int = 4
    warps_softmax_bwd: int = 4


def freq_encoder_settings(n_f: int, channels: int, ffn_channels: int) -> FreqEncoderSettings:
    """Launch settings of ``atfnn::freq_encoder`` (forward and backward) for a model size.

    Wide FFN tiles (more than 32 hidden channels or 16 channels) double the register
    footprint of the weight tiles, so the backward FFN kernel then gets 8 warps' worth of
    registers per tile row in all kernels that hold weights."""
    del n_f  # bands are streamed: the tiles do not depend on F
    wide = ffn_channels > 32 or channels > 16
    return FreqEncoderSettings(warps_sweep=8 if wide else 4)


@dataclass(frozen=True)
class BandAttentionSettings:
    """Windows per program and warps of the band-attention kernels."""

    block: int
    num_warps: int = 4


def band_attention_settings(kp: int, gwp: int, backward: bool) -> BandAttentionSettings:
    """Windows per program from the widest per-window tile (``kp`` source values, ``gwp``
    target values, both padded to powers of two): each ``[block, width]`` float32 tile stays
    at <= 16 registers per thread in the forward and <= 8 in the backward, which holds
    four such tiles (source, its gradient, target, d out)."""
    widest = max(kp, gwp)
    per_thread = 8 if backward else 16
    block = max(16, min(128, triton.next_power_of_2(per_thread * 128 // widest)))
    return BandAttentionSettings(block=block)
