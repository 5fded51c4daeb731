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
class KernelLaunch:
    """Frames per program (the M dim of every dot) and warps of one kernel."""

    block_t: int
    num_warps: int


@dataclass(frozen=True)
class FreqEncoderSettings:
    """Launch settings of every F-Encoder kernel, and the band chunk of the softmax
    streams (``band_chunk``)."""

    norm1: KernelLaunch = KernelLaunch(16, 4)
    ffn: KernelLaunch = KernelLaunch(64, 16)
    ffn_bwd_dy1: KernelLaunch = KernelLaunch(16, 16)
    ffn_bwd_wgrad: KernelLaunch = KernelLaunch(16, 8)
    norm1_bwd: KernelLaunch = KernelLaunch(16, 8)
    softmax_bwd: KernelLaunch = KernelLaunch(16, 4)
    band_chunk: int = 16


def freq_encoder_settings(n_f: int, channels: int, ffn_channels: int) -> FreqEncoderSettings:
    """Launch settings of ``atfnn::freq_encoder`` (forward and backward) for a model size.

    The FFN kernels hold the operands of 10-15 small dots per band in registers and shared
    memory; the settings are the ones the resource table shows fitting every arch at the
    occupancy targets (docs/design.md#kernel-resources): the forward FFN with 64 frames
    and 16 warps (one 90 KB block per SM), the backward FFN with 16 frames."""
    del n_f, channels, ffn_channels  # bands are streamed; one setting fits the sizes tested
    return FreqEncoderSettings()


@dataclass(frozen=True)
class BandAttentionSettings:
    """Windows per program and warps of the band-attention kernels."""

    block: int
    num_warps: int = 4


def band_attention_settings(kp: int, gwp: int, backward: bool) -> BandAttentionSettings:
    """Windows per program from the widest per-window tile (``kp`` source values, ``gwp``
    target values, both padded to powers of two).

    Forward: each ``[block, width]`` float32 tile at <= 16 values per thread. Backward (four
    such tiles live: source, its gradient, target, d out): 32 windows on 4 warps for rows of
    up to 16 values, else 16 windows on 8 warps (T-Attention reading the encoding, 64-wide
    rows). Chosen from the resource table: 64 windows make ptxas use a stack frame on
    sm_86/sm_89 for the F-Attention backward, 128 cost 150 registers for the T-Attention
    one, and the encoding reader on 4 warps takes 168 registers in bf16 on sm_80."""
    widest = max(kp, gwp)
    if backward:
        return BandAttentionSettings(32) if widest <= 16 else BandAttentionSettings(16, 8)
    return BandAttentionSettings(max(16, min(128, triton.next_power_of_2(16 * 128 // widest))))
