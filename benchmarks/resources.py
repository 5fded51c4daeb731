"""GPU fitness without a GPU: every Triton kernel the fused ops launch, compiled for sm_80,
sm_86, sm_89 and sm_90 (:data:`GATE_ARCHS`; sm_100 and sm_120 with ``--arch``) with Triton's
own compiler, and its resource table.

    python -m benchmarks.resources                 # table; exit 1 if a row falls short
    python -m benchmarks.resources --json rows.json --arch 86 --dtype bfloat16

How it works. A stand-in Triton driver reports the named arch as the current target; the
kernel launch path of the package (:func:`atfnn_fast.kernels.launch.launch`) is
redirected to a recorder that calls ``JITFunction.warmup`` (compile, never launch) with the
exact arguments and launch settings the ops would use. The model's fused front-end runs
forward and backward on CPU tensors of the benchmark's shape (B = 2, T = ``frames``), so the
rows are every kernel the drop-in ``ATFNN`` launches, per configuration. From each cubin,
``cuobjdump --dump-resource-usage`` gives registers, stack and local memory; the compiled
kernel's metadata gives the (dynamic) shared memory. Occupancy (resident warps per SM) is
computed from the arch's limits in :data:`ARCHS`.

A row *fits* when shared memory is within the arch's per-block limit, registers x threads
are within 64 K and it uses no local memory (no stack, no spills, no LDL / STL in its
SASS); it *meets the target* when it also reaches
:data:`atfnn_fast.kernels.tuning.WARPS_TARGET` resident warps.

Each row also counts SASS instructions (:func:`sass_counts`): matrix instructions (HMMA,
HGMMA, other MMA), FFMA, MUFU and local loads / stores. float32 compiles in two precisions
(:data:`PRECISIONS`: ``torch.backends.cudnn.allow_tf32`` on and off), so the tf32 and the
ieee dots are both gated.

Each (arch, dtype) is one task of a pool of worker processes (no ``TRITON_INTERPRET``). On a
CUDA machine, ``--device`` instead compiles for the local GPU, launches for real, and adds
the registers/spills the driver reports for what actually launched next to the prediction.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16", "float16")
# The precisions each dtype compiles in: float32 inputs twice, with
# torch.backends.cudnn.allow_tf32 on ("tf32", the PyTorch default: the F-Encoder's dots may
# take tf32 operands) and off ("ieee"); bfloat16 and float16 once (tf32 left on).
PRECISIONS = {"float32": ("tf32", "ieee"), "bfloat16": ("bf16",), "float16": ("fp16",)}


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM and per-block limits (CUDA C Programming Guide, compute capabilities)."""

    name: str
    max_warps: int  # resident warps per SM
    max_blocks: int  # resident blocks per SM
    smem_per_sm: int  # bytes of shared memory per SM available to blocks
    smem_per_block: int  # bytes one block may use (opt-in maximum)
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of 256
    smem_reserved: int = 1024  # reserved per block by the system


ARCHS = {
    80: ArchLimits("A100", 64, 32, 167936, 166912),
    86: ArchLimits("RTX 30xx / A10", 48, 16, 102400, 101376),
    89: ArchLimits("RTX 40xx / L4 / L40", 48, 24, 102400, 101376),
    90: ArchLimits("H100 / H200", 64, 32, 233472, 232448),
    100: ArchLimits("B200 / GB200 (data-centre Blackwell)", 64, 32, 233472, 232448),
    120: ArchLimits("RTX 50xx / RTX PRO Blackwell", 48, 32, 102400, 101376),
}
# The archs the gate holds every launch to (the default of --arch; tests/kernels/
# test_resources.py). sm_100 and sm_120 compile and are judged with --arch 100 120, but
# some FFN launches spill a few bytes there (docs/design.md#triton-38-and-blackwell):
# they join the gate when those are fixed.
GATE_ARCHS = (80, 86, 89, 90)


def configs() -> dict:
    """The model configurations the tests use, by name."""
    from atfnn_fast import ATFNNConfig
    from atfnn_fast.app.train import PRESETS

    return {
        "default": ATFNNConfig(),
        "tiny": ATFNNConfig(**PRESETS["tiny"]),
        "encoding": ATFNNConfig(t_attention_source="encoding"),
        "wide": ATFNNConfig(n_mels=64, f_group=4, channels=16, num_heads=4),
    }


def warps_per_sm(arch: int, num_warps: int, regs: int, shared: int) -> int:
    """Theoretical resident warps per SM of a kernel (blocks of ``num_warps`` warps)."""
    lim = ARCHS[arch]
    blocks = lim.max_blocks
    blocks = min(blocks, lim.max_warps // num_warps)
    if regs > 0:
        per_warp = -(-regs * 32 // lim.reg_unit) * lim.reg_unit
        blocks = min(blocks, (lim.regs_per_sm // per_warp) // num_warps)
    if shared > 0:
        blocks = min(blocks, lim.smem_per_sm // (shared + lim.smem_reserved))
    return max(blocks, 0) * num_warps


def judge(row: dict) -> dict:
    """Add ``warps_per_sm``, ``fits`` and ``meets_target`` to a row of resources."""
    from atfnn_fast.kernels.tuning import warps_target

    arch, lim = row["arch"], ARCHS[row["arch"]]
    threads = 32 * row["num_warps"]
    row["warps_per_sm"] = warps_per_sm(arch, row["num_warps"], row["regs"], row["shared_bytes"])
    row["fits"] = (
        row["shared_bytes"] <= lim.smem_per_block
        and row["regs"] * threads <= lim.regs_per_sm
        and row["local_bytes"] == 0
        and row.get("ldl", 0) + row.get("stl", 0) == 0
    )
    row["target_warps"] = warps_target(row["kernel"], arch)
    row["meets_target"] = row["fits"] and row["warps_per_sm"] >= row["target_warps"]
    return row


# ------------------------------------------------------------------ compiling, no GPU
class StandInDriver:
    """The part of Triton's driver interface that compiling needs, for a named arch."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.arch  # one compile cache per arch

    def get_current_stream(self, device=None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


def _nvidia_tool(name: str) -> str:
    """A CUDA binary tool shipped with Triton (cuobjdump, nvdisasm), else the one on PATH."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else name


def _cuobjdump() -> str:
    return _nvidia_tool("cuobjdump")


# SASS opcode (its name before the first ".") -> the count it adds to. Matrix instructions:
# HMMA (sm_80/86/89/120 warp MMA, f16/bf16/tf32), HGMMA (sm_90 warpgroup MMA), UTCHMMA
# (sm_100 tcgen05 MMA into tensor memory; UTCQMMA / UTCIMMA / UTCOMMA its 8-bit, integer and
# block-scaled forms) and the other MMA families (IMMA, DMMA, BMMA, QMMA, IGMMA, QGMMA,
# BGMMA); FFMA with its immediate form; MUFU (exp2, rcp, rsqrt, ...); LDL / STL (local
# memory: spills, stack arrays).
SASS_COUNTED = {
    **dict.fromkeys(
        (
            *("HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "BMMA", "BGMMA", "QMMA", "QGMMA"),
            *("UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA"),
        ),
        "mma",
    ),
    "FFMA": "ffma",
    "FFMA32I": "ffma",
    "MUFU": "mufu",
    "LDL": "ldl",
    "STL": "stl",
}
SASS_COLUMNS = ("mma", "ffma", "mufu", "ldl", "stl")
# one instruction of `cuobjdump --dump-sass`: /*0a30*/ [@!P0 ]OPCODE.MODIFIERS operands ;
_SASS_ADDRESS = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/")
_SASS_INSTRUCTION = re.compile(
    r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", re.M
)


def sass_counts(sass_text: str) -> dict[str, int]:
    """Instructions of each :data:`SASS_COLUMNS` kind in ``cuobjdump --dump-sass`` text:
    ``mma`` (tensor-core matrix instructions: HMMA + HGMMA + other MMA), ``ffma``, ``mufu``,
    ``ldl`` and ``stl`` (local loads and stores)."""
    counts = dict.fromkeys(SASS_COLUMNS, 0)
    for opcode in _SASS_INSTRUCTION.findall(sass_text):
        kind = SASS_COUNTED.get(opcode)
        if kind is not None:
            counts[kind] += 1
    return counts


def cubin_resources(cubin: bytes) -> dict:
    """Registers, stack, local and static shared memory of a cubin's (single) kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return {k: int(v) for k, v in fields.items()}


def cubin_sass(cubin: bytes) -> str:
    """``cuobjdump --dump-sass`` of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [_cuobjdump(), "--dump-sass", f.name], capture_output=True, text=True, check=True
        ).stdout


def _kernel_text(cubin: bytes) -> bytes:
    """The machine code of a cubin's single kernel: its ELF ``.text.<kernel>`` section."""
    if cubin[:5] != b"\x7fELF\x02":
        raise ValueError("not a 64-bit ELF cubin")
    (shoff,) = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    texts = []
    for name, _type, _flags, _addr, offset, size in headers:
        start = names_at + name
        if cubin[start : cubin.index(b"\0", start)].startswith(b".text."):
            texts.append(cubin[offset : offset + size])
    if len(texts) != 1:
        raise ValueError(f"expected one .text section in the cubin, found {len(texts)}")
    return texts[0]


def batch_sass_counts(cubins: list[bytes], arch: int) -> list[dict[str, int]]:
    """:func:`sass_counts` of many cubins of one arch with a single disassembler run: their
    kernels' machine code back to back, disassembled as one raw binary by ``nvdisasm -b``,
    each instruction counted for the kernel whose address range holds it. The same counts
    as ``cuobjdump --dump-sass`` per cubin (checked by the tests), at a fraction of the
    cost: each cuobjdump call spends about 0.2 s of CPU on its own."""
    if not cubins:
        return []
    texts = [_kernel_text(c) for c in cubins]
    starts = [0]
    for t in texts:
        if len(t) % 16:
            raise ValueError("kernel code is not a whole number of 16-byte instructions")
        starts.append(starts[-1] + len(t))
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"".join(texts))
        f.flush()
        sm = f"SM{arch}a" if arch >= 90 else f"SM{arch}"  # Triton compiles sm_90a, sm_100a, ...
        out = subprocess.run(
            [_nvidia_tool("nvdisasm"), "--binary", sm, f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    per_kernel: list[list[str]] = [[] for _ in texts]
    for line in out.splitlines():
        m = _SASS_ADDRESS.match(line)
        if m:
            per_kernel[bisect.bisect_right(starts, int(m.group(1), 16)) - 1].append(line)
    counts = [sass_counts("\n".join(lines)) for lines in per_kernel]
    if any(not lines for lines in per_kernel):
        raise RuntimeError(f"nvdisasm printed no SASS for some kernels:\n{out[:4000]}")
    return counts


_RESOURCES: dict[str, dict] = {}  # compiled kernel hash -> cubin_resources


def row_for(
    compiled,
    arch: int,
    dtype: str,
    config: str,
    precision: str | None = None,
    sass: dict | None = None,
    **extra,
) -> dict:
    """The judged resource row of one compiled kernel (``precision``: see
    :data:`PRECISIONS`, the dtype's first by default; ``sass``: its :func:`sass_counts`, from
    ``cuobjdump --dump-sass`` of its cubin if not given)."""
    if compiled.hash not in _RESOURCES:
        _RESOURCES[compiled.hash] = cubin_resources(compiled.asm["cubin"])
    res = _RESOURCES[compiled.hash]
    if sass is None:
        sass = sass_counts(cubin_sass(compiled.asm["cubin"]))
    row = dict(
        kernel=compiled.metadata.name,
        arch=arch,
        dtype=dtype,
        precision=precision or PRECISIONS.get(dtype, (dtype,))[0],
        config=config,
        num_warps=compiled.metadata.num_warps,
        regs=res["REG"],
        shared_bytes=compiled.metadata.shared + res.get("SHARED", 0),
        local_bytes=res.get("LOCAL", 0) + res.get("STACK", 0),
        **sass,
        **extra,
    )
    return judge(row) if arch in ARCHS else row


def rows_for(arch: int, launches: list[tuple], **extra) -> list[dict]:
    """Rows of many ``(compiled, dtype, config, precision, variant)`` launches of one arch;
    their distinct cubins disassembled in one run (:func:`batch_sass_counts`)."""
    unique = {c.hash: c for c, *_ in launches}
    counts = dict(
        zip(unique, batch_sass_counts([c.asm["cubin"] for c in unique.values()], arch), strict=True)
    )
    return [
        row_for(c, arch, dt, name, prec, counts[c.hash], variant=var, **extra)
        for c, dt, name, prec, var in launches
    ]


def compile_for(arch: int, kernel, grid, *args, **kwargs):
    """Compile ``kernel[grid](*args, **kwargs)`` for ``arch`` without launching it."""
    from triton.runtime import driver

    driver.set_active(StandInDriver(arch))
    return kernel.warmup(*args, grid=grid, **kwargs)


# The batch sizes the dispatch can be called with and the gate stands for: 1 to 128 (the
# training batch of the app and the predict batches of short files). A launch's compiled
# variant depends on the batch only through Triton's specialization of its integer
# arguments (== 1, divisible by 16) that scale with B (window and program counts): the
# constexprs and launch settings do not depend on B (kernels/tuning.py). GATE_BATCHES are
# the batches the gate compiles; `--variants` (and tests/kernels/test_resources.py) checks
# that every launch of BATCHES is a variant one of them compiles.
BATCHES = tuple(range(1, 129))
GATE_BATCHES = (1, 2, 3, 4, 8, 16)
# How the front-end is called: "training" (the app's step: forward, then backward of the
# encoding alone; x without a gradient, the attention maps unused), "training-maps" (x with
# a gradient and both attention maps in the loss: the backward's every optional input),
# "inference" (eval, inference_mode, the input check and the forward: predict).
MODES = ("training", "training-maps", "inference")


def _run_front_end(
    cfg,
    dtype,
    device: str = "cpu",
    batch: int = 2,
    tf32: bool = True,
    mode: str = "training-maps",
    model=None,
) -> None:
    """The input check and the fused front-end of ATFNN called as in ``mode`` (:data:`MODES`),
    with ``torch.backends.cudnn.allow_tf32`` set to ``tf32`` (restored afterwards). The
    gradients fed to the backward are uninitialised (nothing runs on the data)."""
    import torch

    from atfnn_fast import ATFNN

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    was = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if model is None:
            torch.manual_seed(0)
            model = ATFNN(cfg).to(device=device, dtype=dtype)
        x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, device=device, dtype=dtype)
        if mode == "inference":
            model.eval()
            with torch.inference_mode():
                model.prepare_input(x)
                model.front_end(x)
            return
        model.train()
        model.zero_grad(set_to_none=True)
        x.requires_grad_(mode == "training-maps")
        model.prepare_input(x)  # the NaN/Inf check's kernel
        enc, maps = model.front_end(x)
        outs = [enc]
        if mode == "training-maps":
            outs += [m for m in maps if m is not None]
        torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])
    finally:
        torch.backends.cudnn.allow_tf32 = was


def launch_key(kernel, args: tuple, kwargs: dict) -> str:
    """Triton's own cache key of a launch under the current driver (``JITFunction.run``:
    the specialization of every argument, the constexprs and the options): two launches
    with the same key run the same compiled kernel. Nothing is compiled."""
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import compute_cache_key

    kw = dict(kwargs)
    kw["debug"] = kw.get("debug", kernel.debug) or knobs.runtime.debug
    kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    _cache, key_cache, _target, _backend, binder = kernel.device_caches[
        driver.active.get_current_device()
    ]
    _bound, specialization, options = binder(*args, **kw)
    return f"{kernel.fn.__name__}:{compute_cache_key(key_cache, specialization, options)}"


def launch_variants(
    dtype_name: str, precision: str, config_names, modes=MODES, batches=BATCHES, arch: int = 90
) -> dict[str, tuple[str, str, int]]:
    """Every distinct compiled variant (:func:`launch_key`) the front-end launches for these
    batch sizes, configurations and modes: key -> (config, mode, smallest batch)."""
    import torch
    from triton.runtime import driver

    from atfnn_fast import ATFNN
    from atfnn_fast.kernels import launch as launch_path
    from atfnn_fast.kernels import use_backend

    driver.set_active(StandInDriver(arch))
    dtype = getattr(torch, dtype_name)
    found: dict[str, tuple[str, str, int]] = {}
    all_cfgs = configs()
    torch.set_flush_denormal(True)  # the uninitialised gradients: no slow denormals
    try:
        for name in config_names:
            torch.manual_seed(0)
            model = ATFNN(all_cfgs[name]).to(dtype=dtype)
            for mode in modes:
                for batch in batches:

                    def record(kernel, grid, args, kwargs, where=(name, mode, batch)):
                        found.setdefault(launch_key(kernel, args, kwargs), where)

                    with launch_path.recording(record), use_backend("triton"):
                        _run_front_end(
                            all_cfgs[name],
                            dtype,
                            batch=batch,
                            tf32=precision != "ieee",
                            mode=mode,
                            model=model,
                        )
    finally:
        torch.set_flush_denormal(False)
    return found


def uncovered_variants(dtype_name: str, precision: str, config_names, modes=MODES, batches=BATCHES):
    """The variants of ``batches`` that no batch of :data:`GATE_BATCHES` launches (empty when
    the gate covers them all), and the number of distinct variants of ``batches``."""
    every = launch_variants(dtype_name, precision, config_names, modes, batches)
    gated = launch_variants(dtype_name, precision, config_names, modes, GATE_BATCHES)
    return {k: v for k, v in every.items() if k not in gated}, len(every)


def variant(kwargs: dict) -> str:
    """The variant of a launch: its boolean constexpr flags that are on (``GRAD``,
    ``HAS_WT``, ``HAS_GMAP``, ...), joined by "+", or "-"."""
    return "+".join(sorted(k for k, v in kwargs.items() if v is True)) or "-"


def compile_rows(arch: int, dtype_name: str, config_names: list[str]) -> list[dict]:
    """Compile every kernel the front-end launches for ``arch``, in each of the dtype's
    :data:`PRECISIONS`; one row per kernel, precision and configuration. A launch equal
    to an earlier one (same kernel, specialization and constexprs) is not compiled again:
    Triton's in-process cache returns it."""
    import torch
    from triton.runtime import driver

    from atfnn_fast import ATFNN
    from atfnn_fast.kernels import launch as launch_path
    from atfnn_fast.kernels import use_backend

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("benchmarks.resources compiles kernels: unset TRITON_INTERPRET")
    driver.set_active(StandInDriver(arch))
    dtype = getattr(torch, dtype_name)
    launches, seen = [], set()
    all_cfgs = configs()
    for precision in PRECISIONS[dtype_name]:
        for name in config_names:
            torch.manual_seed(0)
            model = ATFNN(all_cfgs[name]).to(dtype=dtype)
            for mode in MODES:
                for batch in GATE_BATCHES:
                    launched = []

                    def record(kernel, grid, args, kwargs, launched=launched):
                        compiled = kernel.warmup(*args, grid=grid, **kwargs)  # cached if seen
                        launched.append((compiled, variant(kwargs)))

                    with launch_path.recording(record), use_backend("triton"):
                        _run_front_end(
                            all_cfgs[name],
                            dtype,
                            batch=batch,
                            tf32=precision != "ieee",
                            mode=mode,
                            model=model,
                        )
                    for compiled, var in launched:
                        key = (compiled.hash, precision, name)
                        if key not in seen:
                            seen.add(key)
                            launches.append((compiled, dtype_name, name, precision, var))
    return rows_for(arch, launches)


def _dedupe_kernels(rows: list[dict]) -> list[dict]:
    """One row per distinct row: the F- and T-Attention launches of one kernel with equal
    resources (and variant) collapse."""
    out, seen = [], set()
    for r in rows:
        key = tuple(sorted(r.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def collect(archs, dtypes, config_names, others_arch: int | None, jobs: int) -> list[dict]:
    """All rows: each (arch, dtype) is one task (:func:`compile_rows`), run by a pool of
    ``jobs`` worker processes (each imports torch and Triton once and takes the next task
    when done; float32, with two precisions, first). With ``others_arch``, the
    configurations other than "default" compile for that arch only (every dtype)."""
    tasks = []
    for dt in sorted(dtypes, key=lambda d: -len(PRECISIONS[d])):
        for arch in archs:
            names = [
                n
                for n in config_names
                if others_arch is None or n == "default" or arch == others_arch
            ]
            if names:
                tasks.append((arch, dt, names))
    saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "PYTHONPATH")}
    os.environ.pop("TRITON_INTERPRET", None)  # the workers compile
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            results = list(pool.map(compile_rows, *zip(*tasks, strict=True)))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return _dedupe_kernels([row for rows in results for row in rows])


# ------------------------------------------------------------------- on a real GPU
def device_rows(config_names: list[str], dtypes=DTYPES) -> list[dict]:
    """On a CUDA machine: launch the front-end for real and read what the driver reports
    for each launched kernel (``n_regs``, ``n_spills``) beside the cubin's own numbers."""
    import torch

    from atfnn_fast.kernels import launch as launch_path

    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    rows, all_cfgs = [], configs()
    for dt in dtypes:
        for precision in PRECISIONS[dt]:
            for name in config_names:
                launched = []

                def record(kernel, grid, args, kwargs, launched=launched):
                    launched.append((kernel[grid](*args, **kwargs), variant(kwargs)))

                with launch_path.recording(record):
                    _run_front_end(
                        all_cfgs[name], getattr(torch, dt), "cuda", tf32=precision != "ieee"
                    )
                torch.cuda.synchronize()
                for compiled, var in {c.hash: (c, v) for c, v in launched}.values():
                    compiled._init_handles()
                    rows.append(
                        row_for(
                            compiled,
                            arch,
                            dt,
                            name,
                            precision,
                            variant=var,
                            launched=True,
                            driver_regs=compiled.n_regs,
                            driver_spills=compiled.n_spills,
                        )
                    )
    return _dedupe_kernels(rows)


# ------------------------------------------------------------------------------ output
COLUMNS = (
    "kernel",
    "variant",
    "arch",
    "dtype",
    "precision",
    "config",
    "num_warps",
    "regs",
    "shared_bytes",
    "local_bytes",
    *SASS_COLUMNS,
    "warps_per_sm",
    "fits",
)
_MERGED = ("precision", "config")  # table rows equal in every other column merge


def table(rows: list[dict]) -> str:
    """A markdown table of the rows, the short ones marked. Rows that differ only in
    precision or configuration are one line listing them (e.g. ``tf32, ieee``)."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(str(r.get(c)) for c in COLUMNS if c not in _MERGED)
        key += (str(r.get("meets_target")),)
        m = merged.setdefault(key, {**r, **{c: [] for c in _MERGED}})
        for c in _MERGED:
            if r[c] not in m[c]:
                m[c].append(r[c])
    head = "| " + " | ".join(COLUMNS) + " | target |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    order = {n: i for i, n in enumerate(["tf32", "ieee", "bf16", "fp16"])}
    for r in sorted(
        merged.values(),
        key=lambda r: (
            r["kernel"],
            r["variant"],
            r["arch"],
            r["dtype"],
            order.get(r["precision"][0], 9),
            r["regs"],
        ),
    ):
        mark = "ok" if r.get("meets_target") else f"**SHORT** (>= {r.get('target_warps')})"
        cells = [", ".join(map(str, r[c])) if c in _MERGED else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines)


# kernels of the ops the dispatcher checks devices for (kernels/fit.py); the input check's
# kernel (_assert_finite_kernel) is not dispatched and needs no entry
OP_OF_KERNEL = {"_fenc": "freq_encoder", "_band": "band_attention"}


def needs_from_rows(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per op and arch, the most shared memory per block any of its kernels uses: the
    table :mod:`atfnn_fast.kernels.fit` checks devices against."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        op = next((v for k, v in OP_OF_KERNEL.items() if r["kernel"].startswith(k)), None)
        if op is None:
            continue
        per_arch = out.setdefault(op, {})
        per_arch[str(r["arch"])] = max(per_arch.get(str(r["arch"]), 0), r["shared_bytes"])
    return {op: dict(sorted(v.items())) for op, v in sorted(out.items())}


def shortfalls(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("meets_target")]


def _variants_task(dtype_name: str, precision: str, names: list[str]):
    missing, total = uncovered_variants(dtype_name, precision, names)
    return dtype_name, precision, missing, total


def _check_variants(dtypes, precisions, names, jobs: int) -> int:
    """``--variants``: per dtype and precision, the distinct variants of :data:`BATCHES` in
    every mode and configuration, and those :data:`GATE_BATCHES` miss."""
    tasks = [
        (dt, prec, names)
        for dt in dtypes
        for prec in PRECISIONS[dt]
        if precisions is None or prec in precisions
    ]
    os.environ.pop("TRITON_INTERPRET", None)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        results = list(pool.map(_variants_task, *zip(*tasks, strict=True)))
    bad = 0
    for dt, prec, missing, total in results:
        print(
            f"{dt} {prec}: {total} distinct launch variants over batches {BATCHES[0]}..{BATCHES[-1]}"
            f" x {len(MODES)} modes x {len(names)} configs; {len(missing)} not compiled by the "
            f"gate's batches {GATE_BATCHES}"
        )
        for key, (config, mode, batch) in missing.items():
            print(f"  UNCOVERED: {key.split(':')[0]} {config} {mode} B={batch}")
        bad += len(missing)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.resources", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--arch", type=int, nargs="+", choices=sorted(ARCHS), default=list(GATE_ARCHS))
    ap.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    ap.add_argument("--config", nargs="+", default=None, help="configurations (default: all)")
    ap.add_argument(
        "--others-arch",
        type=int,
        choices=sorted(ARCHS),
        default=None,
        help="compile the non-default configurations for this arch only",
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--device", action="store_true", help="compile and launch on this GPU")
    ap.add_argument(
        "--write-needs",
        action="store_true",
        help="write atfnn_fast/kernels/resource_needs.json from the rows",
    )
    ap.add_argument(
        "--variants",
        action="store_true",
        help="compile nothing: check that every launch of batch sizes 1..128 (every mode) is a "
        "variant the gate's batches compile; exit 1 if not",
    )
    ap.add_argument("--precision", nargs="+", default=None, help="with --variants: these only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = args.config or list(configs())
    unknown = sorted(set(names) - set(configs()))
    if unknown:
        ap.error(f"--config: unknown {unknown}; known: {sorted(configs())}")
    if args.variants:
        return _check_variants(args.dtype, args.precision, names, max(1, args.jobs))
    if args.worker:
        print(json.dumps(compile_rows(args.arch[0], args.dtype[0], names)))
        return 0
    if args.device:
        rows = device_rows(names, args.dtype)
    else:
        rows = collect(args.arch, args.dtype, names, args.others_arch, max(1, args.jobs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write_needs:
        from atfnn_fast.kernels.fit import NEEDS_FILE

        NEEDS_FILE.write_text(json.dumps(needs_from_rows(rows), indent=1) + "\n")
    print(table(rows))
    short = shortfalls(rows)
    print(f"\n{len(rows)} rows, {len(short)} short of fitting or of the occupancy target")
    for r in short:
        print(
            f"  SHORT: {r['kernel']} ({r['variant']}) sm_{r['arch']} {r['dtype']} "
            f"{r['precision']} {r['config']}: "
            f"{r['regs']} regs x {r['num_warps']} warps, {r['shared_bytes']} B shared, "
            f"{r['local_bytes']} B local, {r['ldl']} LDL / {r['stl']} STL -> "
            f"{r['warps_per_sm']} warps/SM "
            f"(target {r['target_warps']})"
        )
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
