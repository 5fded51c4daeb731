"""GPU fitness without a GPU: every kernel the fused ops launch, compiled for sm_80/86/89/90
(benchmarks.resources), fits each arch at the occupancy targets; a kernel that would not
launch or would spill is reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "kernels")])
    return env


@pytest.mark.slow
def test_every_kernel_fits_every_arch_dtype_and_config(tmp_path):
    """Every arch x dtype for the default config, every dtype on sm_86 (the smallest shared
    memory and warp limits) for the others: about 3 minutes on 2 cores. The full table
    (every config on every arch) is benchmarks/results/resources-cpu-*.md."""
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.resources",
            "--others-arch",
            "86",
            "--json",
            str(rows_file),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=1200,
    )
    assert rows_file.exists(), proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    short = [line for line in proc.stdout.splitlines() if "SHORT:" in line]
    assert not short, "kernels short of fitting or of the occupancy target:\n" + "\n".join(short)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    archs = {r["arch"] for r in rows}
    assert archs == {80, 86, 89, 90}
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16", "float16"}
    assert {r["config"] for r in rows} == {"default", "tiny", "encoding", "wide"}
    assert {r["arch"] for r in rows if r["config"] != "default"} == {86}
    kernels = {r["kernel"] for r in rows}
    assert {
        "_band_fwd_kernel",
        "_band_bwd_kernel",
        "_fenc_norm1_kernel",
        "_fenc_ffn_kernel",
        "_fenc_bwd_ffn_kernel",
        "_fenc_bwd_norm1_kernel",
        "_fenc_bwd_softmax_kernel",
    } <= kernels
    assert all(r["local_bytes"] == 0 for r in rows)
    # the dispatcher's table of needs is the one these kernels give
    from atfnn_fast.kernels.fit import NEEDS_FILE
    from benchmarks.resources import needs_from_rows

    recorded = json.loads(NEEDS_FILE.read_text())
    for op, per_arch in needs_from_rows(rows).items():
        for arch, need in per_arch.items():
            assert recorded[op][arch] >= need, (
                f"kernels/resource_needs.json is stale for {op} on sm_{arch}: "
                "run python -m benchmarks.resources --write-needs"
            )


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


def test_occupancy_arithmetic():
    from benchmarks.resources import warps_per_sm

    # 128 registers x 4 warps: 4 blocks of 4 warps on 64 K registers
    assert warps_per_sm(80, 4, 128, 0) == 16
    # the old band-attention backward: 151 registers x 4 warps -> 12 warps
    assert warps_per_sm(90, 4, 151, 1152) == 12
    # 90 KB blocks: one per SM on sm_86 (100 KB), 16 warps of 16-warp blocks
    assert warps_per_sm(86, 16, 100, 91136) == 16
    assert warps_per_sm(86, 4, 40, 152 * 1024) == 0  # does not fit at all
