"""GPU fitness without a GPU: every kernel the fused ops launch, compiled for sm_80/86/89/90
(benchmarks.resources.GATE_ARCHS) in every configuration, dtype and float32 precision, fits
each arch at the occupancy targets, uses no local memory, and the F-Encoder FFN kernels run
their dots on the tensor cores (matrix instructions in their SASS). The slow tests run under
the Triton of the environment: CI's pinned one in `make test`, the newest in `make
test-compat`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHS = {80, 86, 89, 90}  # the gate's (benchmarks.resources.GATE_ARCHS)
TABLE_ARCHS = {*ARCHS, 100, 120}  # the archs with limits and targets (ARCHS there)
# (dtype, precision) pairs the gate compiles: float32 with and without tf32
PRECISIONS = {("float32", "tf32"), ("float32", "ieee"), ("bfloat16", "bf16"), ("float16", "fp16")}
CONFIGS = {"default", "tiny", "encoding", "wide"}
KERNELS = {
    "_band_fwd_kernel",
    "_band_bwd_kernel",
    "_fenc_norm1_kernel",
    "_fenc_ffn_kernel",
    "_fenc_bwd_dh1_kernel",
    "_fenc_bwd_dy1_kernel",
    "_fenc_bwd_norm1_kernel",
    "_fenc_bwd_softmax_kernel",
    "_band_param_grad_kernel",
    "_fenc_derive_kernel",
    "_fenc_param_grad_kernel",
    "_assert_finite_kernel",
}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "kernels")])
    return env


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """The whole resource gate, run once for this module: every configuration on every arch
    in every dtype and precision (``python -m benchmarks.resources``, 2 worker processes:
    about 5 minutes of CPU, 3 minutes on 2 free cores, with a cold Triton cache). Returns
    (rows, process)."""
    rows_file = tmp_path_factory.mktemp("resources") / "rows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.resources", "--json", str(rows_file)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=1200,
    )
    assert rows_file.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(rows_file.read_text()), proc


def _variants(*extra):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.resources", "--variants", "--jobs", "2", *extra],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=1200,
    )


def test_the_gate_batches_cover_every_batch_size_of_the_dispatch():
    """Every launch the front-end makes at batch sizes 1..128 (training, training with the
    maps, inference; every configuration), as Triton specializes it (its own cache key:
    argument divisibility, constexprs, options), is one the gate's batches
    (benchmarks.resources.GATE_BATCHES) launch, so the gate compiles it. float32 (tf32) and
    bfloat16 here: the batch enters only the integer arguments, which the ieee / fp16 runs
    share with these (the slow test below runs all four). About 50 s of CPU."""
    proc = _variants("--dtype", "float32", "bfloat16", "--precision", "tf32", "bf16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "distinct launch variants" in line]
    assert len(lines) == 2 and all("0 not compiled" in line for line in lines), proc.stdout


@pytest.mark.slow
def test_the_gate_batches_cover_every_batch_size_in_the_other_precisions():
    """The same for float32 ieee and float16 (fp16): with the test above, all four."""
    proc = _variants("--dtype", "float32", "float16", "--precision", "ieee", "fp16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "distinct launch variants" in line]
    assert len(lines) == 2 and all("0 not compiled" in line for line in lines), proc.stdout
    assert any("ieee" in line for line in lines) and any("fp16" in line for line in lines)


def test_grad_recompute_precision_per_config_and_arch():
    """The float32 GRAD recompute's dot precision per configuration and arch: the shipped
    table (exact everywhere, for accuracy: tuning.GRAD_TF32_MAX_CHANNELS) stays within
    where the tf32 variant fits (GRAD_TF32_FITS, compiled 2026-12-05); a width in the table
    turns tf32 on for that arch; bf16 / fp16 / ieee are the forward's."""
    from atfnn_fast.kernels import tuning
    from benchmarks.resources import ARCHS as LIMITS
    from benchmarks.resources import GATE_ARCHS, configs

    assert set(GATE_ARCHS) == ARCHS and set(LIMITS) == TABLE_ARCHS
    assert set(tuning.WARPS_TARGET) == set(tuning.WARPS_TARGET_BY_KERNEL["_fenc_bwd_dh1_kernel"])
    assert set(tuning.GRAD_TF32_MAX_CHANNELS) == set(tuning.GRAD_TF32_FITS) == TABLE_ARCHS
    assert set(tuning.WARPS_TARGET) == TABLE_ARCHS
    for arch in TABLE_ARCHS:
        assert tuning.GRAD_TF32_MAX_CHANNELS[arch] <= tuning.GRAD_TF32_FITS[arch]
    for name, cfg in configs().items():
        for arch in TABLE_ARCHS:
            assert tuning.grad_recompute_precision("tf32", cfg.channels, arch) == "ieee", name
            for mode in ("ieee", "bf16", "fp16"):
                assert tuning.grad_recompute_precision(mode, cfg.channels, arch) == mode
    table = {80: 16, 86: 8, 89: 8, 90: 16}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "GRAD_TF32_MAX_CHANNELS", table)
        assert tuning.grad_recompute_precision("tf32", 16, 90) == "tf32"
        assert tuning.grad_recompute_precision("tf32", 16, 86) == "ieee"
        assert tuning.grad_recompute_precision("tf32", 32, 90) == "ieee"  # wider
        assert tuning.grad_recompute_precision("tf32", 8, 75) == "ieee"  # older than sm_80
        assert tuning.grad_recompute_precision("tf32", 8, 121) == "tf32"  # nearest below


@pytest.mark.slow
def test_the_gate_covers_every_config_arch_dtype_and_precision(gate):
    rows, _ = gate
    for config in CONFIGS:
        for arch in ARCHS:
            for dtype, precision in PRECISIONS:
                kernels = {
                    r["kernel"]
                    for r in rows
                    if (r["config"], r["arch"], r["dtype"], r["precision"])
                    == (config, arch, dtype, precision)
                }
                assert kernels == KERNELS, (config, arch, dtype, precision, kernels)


@pytest.mark.slow
def test_every_kernel_fits_every_arch_at_the_occupancy_target(gate):
    rows, proc = gate
    short = [line for line in proc.stdout.splitlines() if "SHORT:" in line]
    assert not short, "kernels short of fitting or of the occupancy target:\n" + "\n".join(short)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(r["fits"] and r["meets_target"] for r in rows)


@pytest.mark.slow
def test_no_kernel_uses_local_memory(gate):
    rows, _ = gate
    local = [
        f"{r['kernel']} ({r['variant']}) sm_{r['arch']} {r['precision']} {r['config']}: "
        f"{r['local_bytes']} B local, {r['ldl']} LDL, {r['stl']} STL"
        for r in rows
        if r["local_bytes"] or r["ldl"] or r["stl"]
    ]
    assert not local, "\n".join(local)


# (kernel, variant label, does a row's set of on flags belong to it, precisions whose dots
# must reach the matrix units). The forward FFN, its GRAD recompute and the backward FFN
# kernels (d h1 with the weight gradients, d y1) run tf32 / bf16 / fp16 operands
# (docs/design.md, F-Encoder kernels, Precision).
FFN_TENSOR_CORES = (
    ("_fenc_ffn_kernel", "forward", lambda flags: "GRAD" not in flags, ("tf32", "bf16", "fp16")),
    # the float32 recompute stays exact (tuning.GRAD_TF32_MAX_CHANNELS: accuracy)
    ("_fenc_ffn_kernel", "GRAD", lambda flags: "GRAD" in flags, ("bf16", "fp16")),
    ("_fenc_bwd_dh1_kernel", "-", lambda flags: True, ("tf32", "bf16", "fp16")),
    ("_fenc_bwd_dy1_kernel", "-", lambda flags: True, ("tf32", "bf16", "fp16")),
)


def _ffn_rows_without_mma(rows, variants) -> tuple[list[str], list[str]]:
    missing, ffma_only = [], []
    for kernel, label, belongs, precisions in variants:
        for arch in sorted(ARCHS):
            for precision in precisions:
                found = [
                    r
                    for r in rows
                    if (r["kernel"], r["arch"], r["precision"]) == (kernel, arch, precision)
                    and belongs(r["variant"].split("+"))
                ]
                where = f"{kernel} {label} sm_{arch} {precision}"
                if not found:
                    missing.append(where)
                ffma_only += [
                    f"{where} {r['config']}: {r['mma']} matrix instructions, {r['ffma']} FFMA"
                    for r in found
                    if r["mma"] == 0
                ]
    return missing, ffma_only


@pytest.mark.slow
def test_ffn_kernels_run_their_dots_on_the_tensor_cores(gate):
    """The FFN kernels contain matrix instructions (HMMA on sm_80/86/89/120, HGMMA or HMMA on
    sm_90, UTCHMMA on sm_100) on every arch and config: the forward (`_fenc_ffn_kernel`) and the backward's
    `_fenc_bwd_dh1_kernel` and `_fenc_bwd_dy1_kernel` in tf32, bf16 and fp16, the GRAD
    recompute in bf16 and fp16."""
    rows, _ = gate
    missing, ffma_only = _ffn_rows_without_mma(rows, FFN_TENSOR_CORES)
    assert not missing, "no rows for: " + ", ".join(missing)
    assert not ffma_only, (
        f"FFN dots not on the tensor cores in {len(ffma_only)} rows:\n" + "\n".join(ffma_only[:40])
    )


@pytest.mark.slow
def test_the_dispatchers_needs_file_is_the_compiled_kernels(gate):
    from atfnn_fast.kernels.fit import NEEDS_FILE
    from benchmarks.resources import needs_from_rows

    rows, _ = gate
    recorded = json.loads(NEEDS_FILE.read_text())
    for op, per_arch in needs_from_rows(rows).items():
        for arch, need in per_arch.items():
            assert recorded[op][arch] >= need, (
                f"kernels/resource_needs.json is stale for {op} on sm_{arch}: "
                "run python -m benchmarks.resources --write-needs"
            )


SASS_SNIPPET = """
	code for sm_90
		Function : k
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                          /* 0x000fe20000000800 */
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4].tnspB, RZ, !UPT ;
        /*0020*/                   HMMA.1688.F32.TF32 R12, R28.reuse, R36, RZ ;
        /*0030*/               @P0 HMMA.16816.F32.BF16 R12, R28, R36, R12 ;
        /*0040*/                   IMMA.16832.S8.S8 R4, R8, R12, R4 ;
        /*0050*/                   FFMA R3, R2, R5, R3 ;
        /*0060*/              @!P1 FFMA.FTZ R3, R2, 1.4426950216293334961, -R3 ;
        /*0070*/                   FFMA32I R3, R3, 0.5, R2 ;
        /*0080*/                   HFMA2.MMA R4, -RZ, RZ, 0, 0 ;
        /*0090*/                   MUFU.EX2 R0, R0 ;
        /*00a0*/                   STL [R1], R3 ;
        /*00b0*/                   STL.64 [R1+0x8], R4 ;
        /*00c0*/                   LDL.LU R3, [R1] ;
        /*00d0*/                   LDS R3, [R1] ;
        /*00e0*/                   UTCHMMA gdesc[UR4], gdesc[UR6], tmem[UR8], tmem[UR10], UPT ;
        /*00f0*/                   EXIT ;
"""


def test_sass_counts_on_a_snippet():
    from benchmarks.resources import sass_counts

    assert sass_counts(SASS_SNIPPET) == {"mma": 5, "ffma": 3, "mufu": 1, "ldl": 1, "stl": 2}
    assert sass_counts("") == {"mma": 0, "ffma": 0, "mufu": 0, "ldl": 0, "stl": 0}


@pytest.mark.slow
def test_sass_counts_find_the_matrix_instructions_of_a_dot_on_every_arch():
    """A bf16, fp16 and tf32 ``tl.dot`` compiles to matrix instructions (HMMA, HGMMA on
    sm_90, UTCHMMA on sm_100) on every arch, an ieee float32 one to FFMA only; the batched disassembly counts
    what ``cuobjdump --dump-sass`` of each cubin shows."""
    code = """
import json, torch
from benchmarks.resources import ARCHS, batch_sass_counts, compile_for, cubin_sass, sass_counts
from _dot_kernel import dot_kernel
out = []
for arch in sorted(ARCHS):
    cubins = []
    for dtype, prec in (("bfloat16", "ieee"), ("float16", "ieee"), ("float32", "tf32"),
                        ("float32", "ieee")):
        a, b = (torch.empty(64 * 32, dtype=getattr(torch, dtype)) for _ in range(2))
        c = torch.empty(64 * 64)
        k = compile_for(arch, dot_kernel, (1,), a, b, c, M=64, K=32, N=64, PREC=prec)
        cubins.append(k.asm["cubin"])
        out.append([arch, dtype, prec, sass_counts(cubin_sass(k.asm["cubin"]))])
    for row, batched in zip(out[-4:], batch_sass_counts(cubins, arch)):
        row.append(batched)
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arch, dtype, prec, counts, batched in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert counts == batched, (arch, dtype, prec, counts, batched)
        assert counts["mufu"] > 0 and counts["ldl"] == counts["stl"] == 0
        if prec == "ieee" and dtype == "float32":
            assert counts["mma"] == 0 and counts["ffma"] > 0, (arch, counts)
        else:
            assert counts["mma"] > 0, (arch, dtype, prec, counts)


def test_an_oversized_block_is_reported_short():
    code = """
import json, torch
from benchmarks.resources import compile_for, row_for, shortfalls
from _oversized_kernel import oversized_kernel
a, b, c = torch.empty(256 * 128), torch.empty(128 * 256), torch.empty(256 * 256)
compiled = compile_for(86, oversized_kernel, (1,), a, b, c, M=256, K=128, N=256, num_warps=4)
row = row_for(compiled, 86, "float32", "oversized")
print(json.dumps([row, len(shortfalls([row]))]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, n_short = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["shared_bytes"] > 99 * 1024
    assert row["fits"] is False and row["meets_target"] is False and n_short == 1
    # the SASS counts come with every row
    assert row["precision"] == "tf32" and row["mma"] + row["ffma"] > 0


def test_occupancy_arithmetic():
    from benchmarks.resources import warps_per_sm

    # 128 registers x 4 warps: 4 blocks of 4 warps on 64 K registers
    assert warps_per_sm(80, 4, 128, 0) == 16
    # the old band-attention backward: 151 registers x 4 warps -> 12 warps
    assert warps_per_sm(90, 4, 151, 1152) == 12
    # 90 KB blocks: one per SM on sm_86 (100 KB), 16 warps of 16-warp blocks
    assert warps_per_sm(86, 16, 100, 91136) == 16
    assert warps_per_sm(86, 4, 40, 152 * 1024) == 0  # does not fit at all
    # sm_120 (RTX 50xx) has sm_86's 48 warps and 100 KB; sm_100 sm_90's 64 warps and 228 KB
    assert warps_per_sm(120, 4, 128, 0) == 16 and warps_per_sm(120, 4, 32, 0) == 48
    assert warps_per_sm(120, 16, 100, 91136) == 16
    assert warps_per_sm(100, 4, 32, 0) == 64 and warps_per_sm(100, 4, 151, 1152) == 12
    assert warps_per_sm(100, 16, 100, 2 * 91136) == 16  # one 180 KB block
