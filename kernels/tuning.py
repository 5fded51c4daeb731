"""Launch settings of the Triton kernels: one function per op, the only place block sizes and
warp counts are chosen.

Where a setting comes from, first match wins:

1. an :func:`override` in force (the sweep, ``scripts/gpu_sweep.py``, times candidates
   this way: the host code calls :func:`freq_encoder_settings` / :func:`band_attention_settings`
   on every call, so overriding what they return reaches every launch);
2. the measured table of the current GPU's arch, ``tuned/sm_<XX>.json`` next to this file
   (written by ``scripts/gpu_sweep.py --write-tuned``, shipped in the wheel), keyed by kernel
   and size, dtype and dot precision (:func:`table_key`);
3. the hand-chosen defaults below.

Every setting a function here can return is one of :func:`candidate_settings`: the explicit
list the sweep may time and the resource gate (``python -m benchmarks.resources``) must
compile for sm_80, sm_86, sm_89 and sm_90 (``benchmarks.resources.GATE_ARCHS``; sm_100 and
sm_120 have limits and targets here too, judged with ``--arch 100 120``), checking that it
fits: shared memory within the arch's per-block limit, no local memory, and at least the
occupancy targets of :data:`WARPS_TARGET`. A tuned table naming a setting outside that list is refused at load
time. A new candidate must pass the resource check before it ships.

The defaults are chosen from the compiler's resource report (registers and shared memory per
kernel, see docs/design.md#kernel-resources): the smallest tiles that keep ``tl.dot`` legal
(every dim >= 16) and the registers under 128 per thread (16 resident warps).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

# resident warps per SM each kernel must reach: 16 on sm_80 / sm_90 / sm_100 (64 warps an SM
# at most), 12 on sm_86 / sm_89 / sm_120 (48 at most)
WARPS_TARGET = {80: 16, 86: 12, 89: 12, 90: 16, 100: 16, 120: 12}
# The one exception, measured (benchmarks.resources, 2026-11-30): _fenc_bwd_dh1_kernel holds
# per band four im2col tensor-core operands ([frames, K*C] tiles of y1 and d r2, the FFN
# weights as [K*C, P] operands) and two [K*C, P] weight-gradient accumulators. Its dots chain
# (d h1 feeds the weight-gradient dot), so Triton puts every warp on the M dim and each warp
# keeps a whole copy of the weight operands (64 registers each in tf32 at c = 8): 170-250
# registers a thread on 4 warps, 8 resident warps (4 on sm_86 / sm_89 at c = 16). Every
# layout tried with fewer registers spilled (docs/design.md#kernel-resources).
WARPS_TARGET_BY_KERNEL = {"_fenc_bwd_dh1_kernel": {80: 8, 86: 4, 89: 4, 90: 8, 100: 8, 120: 4}}


# The float32 GRAD recompute of _fenc_ffn_kernel (the backward's forward recompute) on the
# matrix units. GRAD_TF32_FITS: per arch, the widest F-Encoder channel count at which its tf32
# variant fits (benchmarks.resources, compiled 2026-12-05 for tiny c = 4, default c = 8,
# wide c = 16 on sm_80/86/89/90: 108-128 registers, 5-7 KB shared, 0 local, 16 warps per SM
# everywhere; the register overflow at c = 16 on sm_86 that first kept it exact is gone).
# sm_100 / sm_120 (2026-12-07): 128 registers, 6-7 KB shared, 30-80 matrix instructions, 16
# warps per SM at c = 4, 8 and 16 under Triton 3.6; under Triton 3.8 the c = 16 variant spills
# (32 B local on sm_100, 40 B on sm_120), so 8 there.
GRAD_TF32_FITS = {80: 16, 86: 16, 89: 16, 90: 16, 100: 8, 120: 8}
# What ships: the exact ("ieee") recompute at every width. With tf32 operands the recompute's
# h1 and ReLU mask are the forward's tf32 ones; emulated on the CPU over the 20 calibration
# draws (rank_one.backward's recompute_rnd) the worst input gradient then moves 0.20 from the
# float64 truth (a mask bit flipping where h1 is within ~1e-3 of zero), against 1.0e-2 with
# the exact recompute: twenty times the error for one of the backward's seven launches, so
# the tf32 recompute stays off until a GPU run shows what it buys (docs/design.md, F-Encoder
# kernels, Precision). A width w per arch here (at most GRAD_TF32_FITS) turns it on there.
GRAD_TF32_MAX_CHANNELS = {80: 0, 86: 0, 89: 0, 90: 0, 100: 0, 120: 0}


def grad_recompute_precision(precision: str, channels: int, arch: int | None = None) -> str:
    """The dot precision of the backward's GRAD recompute for a forward in ``precision``:
    bf16 / fp16 / ieee as the forward; tf32 where :data:`GRAD_TF32_MAX_CHANNELS` turns it on
    for this arch and width (``arch`` None: the current GPU's; a newer arch than the table
    knows takes the nearest one below it; no GPU: the narrowest entry), else ieee."""
    if precision != "tf32":
        return precision
    arch = current_arch() if arch is None else arch
    if arch is None:  # no GPU (the interpreter multiplies float32 anyway): the narrowest
        return "tf32" if channels <= min(GRAD_TF32_MAX_CHANNELS.values()) else "ieee"
    known = [a for a in sorted(GRAD_TF32_MAX_CHANNELS) if a <= arch]
    if not known:
        return "ieee"
    return "tf32" if channels <= GRAD_TF32_MAX_CHANNELS[known[-1]] else "ieee"


def warps_target(kernel: str, arch: int) -> int:
    """The resident warps per SM ``kernel`` must reach on ``arch``."""
    return WARPS_TARGET_BY_KERNEL.get(kernel, WARPS_TARGET)[arch]


TUNED_DIR = Path(__file__).resolve().parent / "tuned"


@dataclass(frozen=True)
class KernelLaunch:
    """Frames per program (the M dim of every dot), warps and pipeline stages of one kernel
    (``num_stages=None``: Triton's default)."""

    block_t: int
    num_warps: int
    num_stages: int | None = None

    def launch_kwargs(self) -> dict:
        """The launch keyword arguments of this setting (``BT``, ``num_warps`` and, when
        set, ``num_stages``)."""
        kw = dict(BT=self.block_t, num_warps=self.num_warps)
        if self.num_stages is not None:
            kw["num_stages"] = self.num_stages
        return kw


@dataclass(frozen=True)
class FreqEncoderSettings:
    """Launch settings of every F-Encoder kernel, and the band chunk of the softmax
    streams (``band_chunk``)."""

    norm1: KernelLaunch = KernelLaunch(16, 4)
    ffn: KernelLaunch = KernelLaunch(64, 16)
    ffn_bwd_dh1: KernelLaunch = KernelLaunch(32, 4, 2)
    ffn_bwd_dy1: KernelLaunch = KernelLaunch(64, 4, 1)
    norm1_bwd: KernelLaunch = KernelLaunch(16, 8)
    softmax_bwd: KernelLaunch = KernelLaunch(16, 4)
    band_chunk: int = 16
    forward: str = "kernels"  # which implementation runs the pass: PASS_IMPLS
    backward: str = "kernels"


# the FreqEncoderSettings field of each F-Encoder kernel launch (the FFN kernel's forward and
# its GRAD variant share ``ffn``)
FREQ_ENCODER_FIELDS = ("norm1", "ffn", "ffn_bwd_dh1", "ffn_bwd_dy1", "norm1_bwd", "softmax_bwd")
# Per pass (forward, backward) of atfnn::freq_encoder, the implementation that runs it:
# "kernels" (the Triton kernels) or "compile-rank1" (torch.compile of the plain-torch
# rank-one math, kernels/freq_encoder_op/rank_one.py). A tuned table names "compile-rank1" for a
# pass only where the GPU timing measured it faster (scripts/gpu_sweep.py --timing-json).
PASS_FIELDS = ("forward", "backward")
PASS_IMPLS = ("kernels", "compile-rank1")
# fields whose kernels run tl.dot (their speed depends on the dot precision, ieee or tf32)
DOT_FIELDS = ("ffn", "ffn_bwd_dh1", "ffn_bwd_dy1")


@dataclass(frozen=True)
class BandAttentionSettings:
    """Windows per program, warps and pipeline stages of the band-attention kernels."""

    block: int
    num_warps: int = 4
    num_stages: int | None = None


# ------------------------------------------------------------------ sweep candidates
_K = KernelLaunch
# Per F-Encoder kernel: the defaults first, then the alternatives the sweep times. Each was
# compiled for sm_80 and sm_86 (the tightest registers / shared memory of the four archs) in
# fp32 and bf16 and fits with 0 local memory at the occupancy target (2026-11-29). Stages:
# Triton's default is 3; 1 and 2 are the alternatives. Left out because they do not fit: the
# forward FFN at 32 or 16 frames, at 8 warps, or with 1 or 2 stages (local memory on sm_80,
# or 8 warps per SM on sm_86: its 64-88 KB block leaves one block per SM), so it keeps its
# default. The backward FFN kernels (2026-11-30, checked on all four archs in tf32, ieee and
# bf16 at their own targets): d y1 with 128 frames (local memory in ieee, or below the
# target) or 2-3 stages (55-159 KB of shared memory); d h1 beyond 32 frames or 4 warps
# (spills, or replicated warp slices; docs/design.md#kernel-resources).
FREQ_ENCODER_CANDIDATES: dict[str, tuple[KernelLaunch, ...]] = {
    "norm1": (_K(16, 4), _K(16, 8), _K(32, 8), _K(32, 16)),
    "ffn": (_K(64, 16),),
    "ffn_bwd_dh1": (_K(32, 4, 2), _K(16, 4), _K(32, 4), _K(16, 4, 2)),
    "ffn_bwd_dy1": (_K(64, 4, 1), _K(32, 4, 1), _K(64, 8, 1)),
    "norm1_bwd": (_K(16, 8), _K(16, 16), _K(32, 16)),
    "softmax_bwd": (_K(16, 4), _K(16, 8), _K(32, 8), _K(32, 16)),
}
BAND_CHUNK_CANDIDATES = (16,)
_B = BandAttentionSettings
# Band attention, per direction and row width (the wider of the padded source and target
# rows: "narrow" <= 16 values, the default config's F- and T-Attention; "mid" 32; "wide" 64 and
# more, the T-Attention reading the encoding). The defaults of band_attention_settings first;
# checked like the F-Encoder's on sm_80/86/89/90: 256 windows on 4 warps forward-narrow, 64
# windows forward-wide (142 registers on sm_90), 32 on 8 warps and 16 on 4 backward-wide miss
# the target. No config compiles "mid" rows: their slots hold the defaults alone.
# Forward-wide (2026-12-07, Triton 3.6 and 3.8, sm_80 to sm_120): 32 windows on 4 warps,
# the default until then, take 133 registers under Triton 3.8 on sm_90 (12 warps per SM) and
# 238-255 in bf16 on sm_100 / sm_120; 32 windows on 8 warps (the default now: 48-99
# registers, 16-40 warps per SM) and 16 on 4 warps (40-84, 20-48) fit both.
BAND_ATTENTION_CANDIDATES: dict[str, tuple[BandAttentionSettings, ...]] = {
    "fwd-narrow": (_B(128), _B(64), _B(64, 2), _B(128, 8), _B(256, 8)),
    "fwd-mid": (_B(64),),
    "fwd-wide": (_B(32, 8), _B(16)),
    "bwd-narrow": (_B(32), _B(16), _B(32, 8), _B(64, 8)),
    "bwd-mid": (_B(16, 8),),
    "bwd-wide": (_B(16, 8), _B(8, 4), _B(16, 16)),
}


@dataclass(frozen=True)
class Candidate:
    """One launch setting the sweep may time: ``op`` "freq_encoder" (``slot`` a field of
    :class:`FreqEncoderSettings`) or "band_attention" (``slot`` :func:`band_slot`)."""

    op: str
    slot: str
    setting: KernelLaunch | BandAttentionSettings


def candidate_settings() -> Iterator[Candidate]:
    """Every launch setting the sweep may time and a tuned table may name (defaults
    included). The resource gate must compile each of them for every arch: a candidate that
    does not fit (shared memory, spills) or misses :func:`warps_target` must not be here."""
    for slot, options in FREQ_ENCODER_CANDIDATES.items():
        for setting in options:
            yield Candidate("freq_encoder", slot, setting)
    for slot, options in BAND_ATTENTION_CANDIDATES.items():
        for setting in options:
            yield Candidate("band_attention", slot, setting)


def freq_encoder_with(slot: str, setting: KernelLaunch, base=None) -> FreqEncoderSettings:
    """The F-Encoder settings ``base`` (default: the defaults) with one kernel's launch
    replaced: what the sweep and the resource gate run for one candidate."""
    if slot not in FREQ_ENCODER_FIELDS:
        raise ValueError(f"slot must be one of {FREQ_ENCODER_FIELDS}, got {slot!r}")
    return replace(base or FreqEncoderSettings(), **{slot: setting})


def band_slot(kp: int, gwp: int, backward: bool) -> str:
    """The candidate slot of a band-attention launch with these padded row widths."""
    widest = max(kp, gwp)
    width = "narrow" if widest <= 16 else ("mid" if widest <= 32 else "wide")
    return f"{'bwd' if backward else 'fwd'}-{width}"


# ------------------------------------------------------------------------- overrides
_override: dict = {}


@contextlib.contextmanager
def override(
    freq_encoder: FreqEncoderSettings | None = None,
    band_attention: dict[str, BandAttentionSettings] | None = None,
) -> Iterator[None]:
    """Launch settings forced for the block: ``freq_encoder`` for every F-Encoder call,
    ``band_attention`` per slot (:func:`band_slot`; slots not named keep their usual
    setting). Not thread-safe; meant for the sweep and tests."""
    global _override
    previous = _override
    _override = {**previous}
    if freq_encoder is not None:
        _override["freq_encoder"] = freq_encoder
    if band_attention is not None:
        unknown = set(band_attention) - set(BAND_ATTENTION_CANDIDATES)
        if unknown:
            raise ValueError(
                f"band_attention override slots must be among {tuple(BAND_ATTENTION_CANDIDATES)}"
                f", got {sorted(unknown)}"
            )
        _override["band_attention"] = {**previous.get("band_attention", {}), **band_attention}
    try:
        yield
    finally:
        _override = previous


# ---------------------------------------------------------------------- tuned tables
def current_precision() -> str:
    """ "tf32" while ``torch.backends.cudnn.allow_tf32`` (the flag the F-Encoder's dots
    follow: kernels/freq_encoder_op/custom_op.py ``_precision``), else "ieee": the key the tuned
    tables are read and written with."""
    import torch

    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def table_key(dtype: str = "float32", precision: str = "ieee", channels=None, ffn=None) -> str:
    """Key of a tuned F-Encoder entry: ``c<channels>-p<ffn_channels>/<dtype>/<precision>``
    (``dtype`` and ``precision`` only for band attention)."""
    head = f"c{channels}-p{ffn}/" if channels is not None else ""
    return f"{head}{dtype}/{precision}"


class TunedTableError(ValueError):
    """A tuned-settings file that cannot be used (the message names the file)."""


def _launch_from(value, path: Path, where: str) -> KernelLaunch:
    ok = (
        isinstance(value, list)
        and len(value) in (2, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value[:2])
        and (len(value) == 2 or value[2] is None or isinstance(value[2], int))
    )
    if not ok:
        raise TunedTableError(
            f"{path}: {where} must be [block_t, num_warps] or [block_t, num_warps, num_stages], "
            f"got {value!r}"
        )
    return KernelLaunch(*value)


def _band_from(value, path: Path, where: str) -> BandAttentionSettings:
    if not isinstance(value, dict) or not set(value) <= {"block", "num_warps", "num_stages"}:
        raise TunedTableError(
            f"{path}: {where} must be an object with block, num_warps (, num_stages), got {value!r}"
        )
    try:
        return BandAttentionSettings(**value)
    except TypeError as exc:
        raise TunedTableError(f"{path}: {where}: {exc}") from None


def load_table(path: Path) -> dict:
    """Read and check one tuned table: ``{"freq_encoder": {key: FreqEncoderSettings},
    "band_attention": {slot: {key: BandAttentionSettings}}}``. Every setting must be a
    candidate (:func:`candidate_settings`); anything else raises :class:`TunedTableError`
    naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TunedTableError(f"{path}: not a readable JSON tuned table ({exc})") from None
    if not isinstance(data, dict):
        raise TunedTableError(f"{path}: the top level must be an object, got {type(data).__name__}")
    unknown = set(data) - {"arch", "device", "source", "freq_encoder", "band_attention"}
    if unknown:
        raise TunedTableError(f"{path}: unknown top-level keys {sorted(unknown)}")
    cands = {(c.op, c.slot, c.setting) for c in candidate_settings()}
    table: dict = {"freq_encoder": {}, "band_attention": {}}
    for key, entry in (data.get("freq_encoder") or {}).items():
        keys = {*FREQ_ENCODER_FIELDS, *PASS_FIELDS, "band_chunk"}
        if not isinstance(entry, dict) or not set(entry) <= keys:
            raise TunedTableError(
                f"{path}: freq_encoder[{key!r}] must be an object with keys among "
                f"{(*FREQ_ENCODER_FIELDS, *PASS_FIELDS, 'band_chunk')}, got {entry!r}"
            )
        sizes = re.fullmatch(r"c(\d+)-p\d+/(\w+)/(\w+)", key)
        settings = (
            default_freq_encoder_settings(int(sizes[1]), sizes[2], sizes[3])
            if sizes
            else FreqEncoderSettings()
        )
        for slot in FREQ_ENCODER_FIELDS:
            if slot in entry:
                kl = _launch_from(entry[slot], path, f"freq_encoder[{key!r}].{slot}")
                if ("freq_encoder", slot, kl) not in cands:
                    raise TunedTableError(
                        f"{path}: freq_encoder[{key!r}].{slot} = {entry[slot]} is not a "
                        "candidate of kernels/tuning.py (only candidates pass the resource gate)"
                    )
                settings = replace(settings, **{slot: kl})
        for field in PASS_FIELDS:
            if field in entry:
                if entry[field] not in PASS_IMPLS:
                    raise TunedTableError(
                        f"{path}: freq_encoder[{key!r}].{field} must be one of {PASS_IMPLS}, "
                        f"got {entry[field]!r}"
                    )
                settings = replace(settings, **{field: entry[field]})
        chunk = entry.get("band_chunk", settings.band_chunk)
        if chunk not in BAND_CHUNK_CANDIDATES:
            raise TunedTableError(
                f"{path}: freq_encoder[{key!r}].band_chunk must be one of "
                f"{BAND_CHUNK_CANDIDATES}, got {chunk!r}"
            )
        table["freq_encoder"][key] = replace(settings, band_chunk=chunk)
    for slot, entries in (data.get("band_attention") or {}).items():
        if slot not in BAND_ATTENTION_CANDIDATES or not isinstance(entries, dict):
            raise TunedTableError(
                f"{path}: band_attention slots must be among {tuple(BAND_ATTENTION_CANDIDATES)}"
                f" with an object of entries, got {slot!r}"
            )
        for key, value in entries.items():
            setting = _band_from(value, path, f"band_attention[{slot!r}][{key!r}]")
            if ("band_attention", slot, setting) not in cands:
                raise TunedTableError(
                    f"{path}: band_attention[{slot!r}][{key!r}] = {value} is not a candidate "
                    "of kernels/tuning.py (only candidates pass the resource gate)"
                )
            table["band_attention"].setdefault(slot, {})[key] = setting
    return table


@functools.cache
def tuned_table(arch: int | None) -> dict | None:
    """The checked table of ``tuned/sm_<arch>.json``, or None when there is none."""
    if arch is None:
        return None
    path = TUNED_DIR / f"sm_{arch}.json"
    return load_table(path) if path.exists() else None


def current_arch() -> int | None:
    """Compute capability (e.g. 90) of the GPU Triton compiles for now, None without one."""
    try:
        import triton  # only here: the settings tables need no Triton (CPU-only wheels)
    except ImportError:
        return None
    config = triton.runtime.driver
    active = getattr(config, "_active", None)  # a driver set with set_active (resources)
    try:
        if active is None:
            import torch

            if not torch.cuda.is_available():  # probing for a driver costs ~30 ms
                return None
            active = config.active
        target = active.get_current_target()
    except Exception:  # no usable GPU driver
        return None
    if getattr(target, "backend", None) != "cuda" or not isinstance(target.arch, int):
        return None
    return target.arch


# -------------------------------------------------------------------------- settings
def freq_encoder_settings(
    n_f: int,
    channels: int,
    ffn_channels: int,
    *,
    dtype: str = "float32",
    precision: str | None = None,
) -> FreqEncoderSettings:
    """Launch settings of ``atfnn::freq_encoder`` (forward and backward) for a model size.

    An :func:`override`, else the tuned table of this arch for ``(channels, ffn_channels,
    dtype, precision)`` (the float32 entry when the dtype has none; ``precision`` defaults
    to :func:`current_precision`), else the defaults: the FFN kernels hold the operands of
    10-15 small dots per band in registers and shared memory; the settings are the ones the
    resource table shows fitting every arch at the occupancy targets
    (docs/design.md#kernel-resources): the forward FFN with 64 frames and 16 warps (one
    90 KB block per SM), the backward FFN's d h1 kernel with 32 frames on 4 warps (16 above 8
    channels: its im2col tiles are ``K * C`` wide), its d y1 kernel with 64 frames."""
    del n_f  # bands are streamed: the band count does not change the tiles
    if "freq_encoder" in _override:
        return _override["freq_encoder"]
    prec = precision or current_precision()
    table = tuned_table(current_arch())
    if table:
        entries = table["freq_encoder"]
        for key in (
            table_key(dtype, prec, channels, ffn_channels),
            table_key("float32", prec, channels, ffn_channels),
        ):
            if key in entries:
                return entries[key]
    return default_freq_encoder_settings(channels, dtype, prec)


def default_freq_encoder_settings(channels: int, dtype: str, precision: str):
    """The untuned settings of a model size, dtype and dot precision (a tuned table's entry
    replaces fields of these): the class defaults, but for ``_fenc_bwd_dh1_kernel``, whose
    im2col tiles are ``K * C`` wide, 16 frames above 8 channels, and 16 frames with 2
    stages for float32 FMA dots at any width ("ieee": 32 frames take local memory on sm_90;
    at c = 16 Triton 3.8's 3 stages cap it at 128 registers with 8 B of local memory on
    sm_86 / sm_89, 2 stages take 139-184 registers and none on sm_80 to sm_120, Triton 3.6
    and 3.8, 2026-12-07)."""
    if dtype == "float32" and precision == "ieee":
        return FreqEncoderSettings(ffn_bwd_dh1=KernelLaunch(16, 4, 2))
    if channels > 8:
        return FreqEncoderSettings(ffn_bwd_dh1=KernelLaunch(16, 4))
    return FreqEncoderSettings()


def band_attention_settings(
    kp: int, gwp: int, backward: bool, *, dtype: str = "float32"
) -> BandAttentionSettings:
    """Windows per program from the widest per-window tile (``kp`` source values, ``gwp``
    target values, both padded to powers of two): an :func:`override` of its slot, else
    the tuned table of this arch (key ``kp<kp>-gwp<gwp>/<dtype>``, the float32 entry when
    the dtype has none), else the defaults below.

    Forward: each ``[block, width]`` float32 tile at <= 16 values per thread, and 32 windows
    on 8 warps (8 values a thread) for rows of 64 values and more (T-Attention reading the
    encoding: on 4 warps Triton 3.8 takes 133 registers on sm_90, 238-255 in bf16 on
    sm_100 / sm_120; 8 warps keep the grid and the bytes per program of 4 warps, where 16
    windows would re-read the conv weights in twice the programs, +4% bytes in the SASS
    model; docs/design.md#kernel-resources). Backward (four
    such tiles live: source, its gradient, target, d out): 32 windows on 4 warps for rows of
    up to 16 values, else 16 windows on 8 warps (T-Attention reading the encoding, 64-wide
    rows). Chosen from the resource table: 64 windows make ptxas use a stack frame on
    sm_86/sm_89 for the F-Attention backward, 128 cost 150 registers for the T-Attention
    one, and the encoding reader on 4 warps takes 168 registers in bf16 on sm_80."""
    slot = band_slot(kp, gwp, backward)
    forced = _override.get("band_attention", {})
    if slot in forced:
        return forced[slot]
    table = tuned_table(current_arch())
    if table:
        entries = table["band_attention"].get(slot, {})
        for key in (f"kp{kp}-gwp{gwp}/{dtype}", f"kp{kp}-gwp{gwp}/float32"):
            if key in entries:
                return entries[key]
    return _default_band(kp, gwp, backward)


def _default_band(kp: int, gwp: int, backward: bool) -> BandAttentionSettings:
    widest = max(kp, gwp)
    if backward:
        return BandAttentionSettings(32) if widest <= 16 else BandAttentionSettings(16, 8)
    if widest >= 64:  # "wide" rows: 32 windows on 8 warps (see band_attention_settings)
        return BandAttentionSettings(32, 8)
    return BandAttentionSettings(max(16, min(128, _next_power_of_2(16 * 128 // widest))))


def _next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length()
