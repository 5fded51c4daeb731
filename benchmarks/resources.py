"""GPU fitness without a GPU: every Triton kernel the fused ops launch, compiled for sm_80,
sm_86, sm_89 and sm_90 with Triton's own compiler, and its resource table.

    python -m benchmarks.resources                 # table; exit 1 if a row falls short
    python -m benchmarks.resources --json rows.json --arch 86 --dtype bfloat16

How it works. A stand-in Triton driver reports the named arch as the current target; the
kernel launch path of the package (:func:`atfnn_fast.kernels._triton_utils.launch`) is
redirected to a recorder that calls ``JITFunction.warmup`` (compile, never launch) with the
exact arguments and launch settings the ops would use. The model's fused front-end runs
forward and backward on CPU tensors of the benchmark's shape (B = 2, T = ``frames``), so the
rows are every kernel the drop-in ``ATFNN`` launches, per configuration. From each cubin,
``cuobjdump --dump-resource-usage`` gives registers, stack and local memory; the compiled
kernel's metadata gives the (dynamic) shared memory. Occupancy (resident warps per SM) is
computed from the arch's limits in :data:`ARCHS`.

A row *fits* when shared memory is within the arch's per-block limit, registers x threads
are within 64 K and it uses no local memory (no stack, no spills); it *meets the target*
when it also reaches :data:`atfnn_fast.kernels.tuning.WARPS_TARGET` resident warps.

Each (arch, dtype) compiles in its own process (no ``TRITON_INTERPRET``), in parallel. On a
CUDA machine, ``--device`` instead compiles for the local GPU, launches for real, and adds
the registers/spills the driver reports for what actually launched next to the prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16", "float16")


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
}


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
    from atfnn_fast.kernels.tuning import WARPS_TARGET

    arch, lim = row["arch"], ARCHS[row["arch"]]
    threads = 32 * row["num_warps"]
    row["warps_per_sm"] = warps_per_sm(arch, row["num_warps"], row["regs"], row["shared_bytes"])
    row["fits"] = (
        row["shared_bytes"] <= lim.smem_per_block
        and row["regs"] * threads <= lim.regs_per_sm
        and row["local_bytes"] == 0
    )
    row["target_warps"] = WARPS_TARGET[arch]
    row["meets_target"] = row["fits"] and row["warps_per_sm"] >= WARPS_TARGET[arch]
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


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else "cuobjdump"


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


def row_for(compiled, arch: int, dtype: str, config: str, **extra) -> dict:
    """The judged resource row of one compiled kernel."""
    res = cubin_resources(compiled.asm["cubin"])
    row = dict(
        kernel=compiled.metadata.name,
        arch=arch,
        dtype=dtype,
        config=config,
        num_warps=compiled.metadata.num_warps,
        regs=res["REG"],
        shared_bytes=compiled.metadata.shared + res.get("SHARED", 0),
        local_bytes=res.get("LOCAL", 0) + res.get("STACK", 0),
        **extra,
    )
    return judge(row) if arch in ARCHS else row


def compile_for(arch: int, kernel, grid, *args, **kwargs):
    """Compile ``kernel[grid](*args, **kwargs)`` for ``arch`` without launching it."""
    from triton.runtime import driver

    driver.set_active(StandInDriver(arch))
    return kernel.warmup(*args, grid=grid, **kwargs)


def _run_front_end(cfg, dtype, device: str = "cpu", batch: int = 2) -> None:
    """The input check and the fused front-end of ATFNN, forward and backward (what
    training launches)."""
    import torch

    from atfnn_fast import ATFNN

    torch.manual_seed(0)
    model = ATFNN(cfg).to(device=device, dtype=dtype)
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, device=device, dtype=dtype)
    x.requires_grad_(True)
    model.prepare_input(x)  # the NaN/Inf check's kernel
    enc, maps = model.front_end(x)
    loss = enc.float().sum() + sum(m.float().sum() for m in maps if m is not None)
    loss.backward()


def compile_rows(arch: int, dtype_name: str, config_names: list[str]) -> list[dict]:
    """Compile every kernel the front-end launches for ``arch``; one row per kernel."""
    import torch
    from triton.runtime import driver

    from atfnn_fast.kernels import _triton_utils, use_backend

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("benchmarks.resources compiles kernels: unset TRITON_INTERPRET")
    driver.set_active(StandInDriver(arch))
    dtype = getattr(torch, dtype_name)
    rows, seen = [], set()
    all_cfgs = configs()
    for name in config_names:
        launched = []

        def record(kernel, grid, args, kwargs, launched=launched):
            launched.append(kernel.warmup(*args, grid=grid, **kwargs))

        with _triton_utils.recording(record), use_backend("triton"):
            _run_front_end(all_cfgs[name], dtype)
        for compiled in launched:
            key = (compiled.hash, name)
            if key in seen:
                continue
            seen.add(key)
            rows.append(row_for(compiled, arch, dtype_name, name))
    return rows


def _dedupe_kernels(rows: list[dict]) -> list[dict]:
    """One row per (kernel, arch, dtype, config, resources): the F- and T-Attention
    launches of one kernel with equal resources collapse."""
    out, seen = [], set()
    for r in rows:
        key = tuple(
            r[k]
            for k in (
                "kernel",
                "arch",
                "dtype",
                "config",
                "num_warps",
                "regs",
                "shared_bytes",
                "local_bytes",
            )
        )
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def collect(archs, dtypes, config_names, others_arch: int | None, jobs: int) -> list[dict]:
    """All rows, each (arch, dtype) compiled in its own subprocess, ``jobs`` at a time.
    With ``others_arch``, the configurations other than "default" compile for that arch
    only (every dtype)."""
    tasks = []
    for arch in archs:
        for dt in dtypes:
            names = [
                n
                for n in config_names
                if others_arch is None or n == "default" or arch == others_arch
            ]
            if names:
                tasks.append((arch, dt, names))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )

    def work(task):
        arch, dt, names = task
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.resources",
            "--worker",
            "--arch",
            str(arch),
            "--dtype",
            dt,
            "--config",
            *names,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling for sm_{arch} {dt} failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(work, tasks))
    return _dedupe_kernels([row for rows in results for row in rows])


# ------------------------------------------------------------------- on a real GPU
def device_rows(config_names: list[str], dtypes=DTYPES) -> list[dict]:
    """On a CUDA machine: launch the front-end for real and read what the driver reports
    for each launched kernel (``n_regs``, ``n_spills``) beside the cubin's own numbers."""
    import torch

    from atfnn_fast.kernels import _triton_utils

    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    rows, all_cfgs = [], configs()
    for dt in dtypes:
        for name in config_names:
            launched = []

            def record(kernel, grid, args, kwargs, launched=launched):
                compiled = kernel[grid](*args, **kwargs)
                launched.append(compiled)

            with _triton_utils.recording(record):
                _run_front_end(all_cfgs[name], getattr(torch, dt), "cuda")
            torch.cuda.synchronize()
            for compiled in {c.hash: c for c in launched}.values():
                compiled._init_handles()
                rows.append(
                    row_for(
                        compiled,
                        arch,
                        dt,
                        name,
                        launched=True,
                        driver_regs=compiled.n_regs,
                        driver_spills=compiled.n_spills,
                    )
                )
    return _dedupe_kernels(rows)


# ------------------------------------------------------------------------------ output
COLUMNS = (
    "kernel",
    "arch",
    "dtype",
    "config",
    "num_warps",
    "regs",
    "shared_bytes",
    "local_bytes",
    "warps_per_sm",
    "fits",
)


def table(rows: list[dict]) -> str:
    """A markdown table of the rows, the short ones marked."""
    head = "| " + " | ".join(COLUMNS) + " | target |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in sorted(rows, key=lambda r: (r["config"], r["kernel"], r["arch"], r["dtype"])):
        mark = "ok" if r.get("meets_target") else f"**SHORT** (>= {r.get('target_warps')})"
        lines.append("| " + " | ".join(str(r[c]) for c in COLUMNS) + f" | {mark} |")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.resources", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--arch", type=int, nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = args.config or list(configs())
    unknown = sorted(set(names) - set(configs()))
    if unknown:
        ap.error(f"--config: unknown {unknown}; known: {sorted(configs())}")
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
            f"  SHORT: {r['kernel']} sm_{r['arch']} {r['dtype']} {r['config']}: "
            f"{r['regs']} regs x {r['num_warps']} warps, {r['shared_bytes']} B shared, "
            f"{r['local_bytes']} B local -> {r['warps_per_sm']} warps/SM "
            f"(target {r['target_warps']})"
        )
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
