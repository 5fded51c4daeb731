"""Issue 24 item 5: the benchmark suite's output reads at a terminal's width."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import NOISY_IQR, TERMINAL_WIDTH, case_rows, terminal_table

ROOT = Path(__file__).resolve().parents[2]
PEAKS = {"copy_gbps": 32.5, "matmul_tflops_fp32": 0.203, "matmul_tflops_bf16": 0.437}


def _bench(provider, median, iqr, case="full_fwd", batch=1):
    info = dict(case=case, provider=provider, dtype="float32", batch=batch, frames=128,
                bytes=8e6, flops=5e8, exps=0)  # fmt: skip
    return {"extra_info": info, "stats": {"median": median, "iqr": iqr}}


def test_terminal_table_fits_and_says_spread_noise_ceilings_and_providers():
    rows = case_rows(
        [
            _bench("eager", 0.010, 0.0005),
            _bench("fused", 0.008, 0.0004),
            _bench("onnxruntime-int8", 0.024, 0.0235),  # issue 24's 0.01x from a 24 ms median
        ],
        PEAKS,
    )
    lines = terminal_table(rows, PEAKS, "cpu").splitlines()
    assert max(map(len, lines)) <= TERMINAL_WIDTH
    assert lines[0] == (
        "ceilings measured in this run: copy 32.5 GB/s, matmul 0.203 TFLOP/s fp32, 0.437 bf16"
    )
    assert lines[1].startswith("(each the best of the run's start and end); floor = max(")
    assert lines[3].startswith("fused=aten: ATFNN's ATen CPU path")
    header = lines[4]
    by_provider = {line.split()[3]: line for line in lines[6:]}
    assert set(by_provider) == {"eager", "fused=aten", "onnxruntime-int8"}
    fused = by_provider["fused=aten"]
    assert "1.25 [1.19-1.31]" in fused and not fused.endswith("noisy")  # 9.75/8.2, 10.25/7.8
    assert fused.index("1.25") < header.index("floor ms")  # aligned under its column
    int8 = by_provider["onnxruntime-int8"]
    assert int8.endswith("noisy") and " 98%" in int8  # IQR / median = 0.98 > NOISY_IQR
    assert NOISY_IQR == 0.2
    gpu = terminal_table(rows, PEAKS, "cuda")
    assert "fused=aten" not in gpu and " fused " in gpu


@pytest.mark.slow  # two timed cases at the tiny size: 20 to 60 s on two shared cores
def test_cpu_run_collects_no_gpu_case_and_prints_the_narrow_table():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "--benchmark-only",
            "--bench-size",
            "tiny",
            "--bench-device",
            "cpu",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            "band_attention_fwd and not bwd and (eager or fused)",
        ],
        cwd=ROOT,
        # not an xdist worker's variables: pytest-benchmark would take the run for a
        # distributed one and refuse --benchmark-only
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
            "CUDA_VISIBLE_DEVICES": "",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout.splitlines()
    assert "atfnn: 44 GPU cases not collected (no CUDA device here)" in out
    assert "GPU case: no CUDA device" not in proc.stdout  # no skip rows for them
    assert not any(line.startswith("SKIPPED") for line in out)
    assert "Name (time in" not in proc.stdout  # pytest-benchmark's wide tables are off
    start = next(i for i, line in enumerate(out) if "atfnn roofline on CPU" in line)
    table = out[start + 1 : start + 9]
    assert table[0].startswith("ceilings measured in this run: copy ")
    assert "TOP/s int8" in table[0] and "exp " in table[0]
    assert [line.split()[3] for line in table[6:8]] == ["eager", "fused=aten"]
    # the table fits a terminal (the run's one-line summary after it is a sentence, not a row)
    rows = out[start : next(i for i, line in enumerate(out) if "atfnn summary" in line)]
    assert max(map(len, rows)) <= TERMINAL_WIDTH


def test_the_suite_ends_with_one_line_that_says_whether_the_machine_was_quiet():
    """Issue 30 item 9: a run on a busy machine says so plainly (load average, ceilings
    drifting between start and end) and names the committed run to trust."""
    from benchmarks.report import RESULTS, ROOT, latest_record, summary_line

    device = "CPU AMD EPYC (2 threads)"
    steady = [PEAKS, {**PEAKS, "copy_gbps": 30.0}]  # 8% apart
    quiet = {"device": device, "load_start_end": [0.3, 2.1], "peaks_start_end": steady}
    assert summary_line(quiet, 42, 300.0, 2) == (
        "atfnn: 42 cases timed in 5.0 min on CPU AMD EPYC (2 threads); the machine stayed "
        "quiet (load and ceilings steady): figures usable"
    )
    busy = {
        "device": device,
        "load_start_end": [7.9, 8.4],
        "peaks_start_end": [PEAKS, {**PEAKS, "matmul_tflops_fp32": 0.05}],
    }
    record = latest_record(device)
    newest = max(RESULTS.glob("cpu-amd-epyc-2-threads-[0-9]*.md"), key=lambda p: p.stem[-8:])
    assert record == newest
    assert summary_line(busy, 42, 1320.0, 2) == (
        "atfnn: 42 cases timed in 22.0 min on CPU AMD EPYC (2 threads); THE MACHINE WAS TOO "
        "BUSY TO MEASURE (load average 7.9 at the start and 8.4 at the end on 2 cores (> 1.5 "
        "per core); ceiling matmul_tflops_fp32 drifted 75% between the start (0.203) and the "
        f"end (0.05)): these figures are not comparable; trust the committed run "
        f"{newest.relative_to(ROOT)} instead"
    )
    # another CPU: the newest CPU record; nothing recorded: rerun
    assert latest_record("CPU Some Laptop (4 threads)").name.startswith("cpu-")
    assert latest_record(device, RESULTS / "nowhere") is None
