"""The CPU benchmark tools run and report what they promise (no assertion is on a time):
``benchmarks.compare`` (providers interleaved, ratios with their spread, floors from the
ceilings measured in the same run) and ``benchmarks.profile --cpu`` (per-op time)."""

import json

import pytest
import torch

from benchmarks import compare, profile
from benchmarks.device import measure_peaks


def test_cpu_ceilings_include_the_exponential_rate_and_int8():
    peaks = measure_peaks(torch.device("cpu"), tiny=True)
    assert peaks["exp_per_s"] > 0 and peaks["matmul_tflops_fp32"] > 0 and peaks["copy_gbps"] > 0
    assert peaks["matmul_tops_int8"] > 0


def test_a_ceiling_is_the_best_of_its_measurements_and_int8_rows_use_int8():
    from benchmarks.device import best_peaks
    from benchmarks.floors import Counts, compute_peak, floor_ms

    start = {"copy_gbps": 30.0, "matmul_tflops_fp32": 0.1, "exp_per_s": 3e9}
    end = {"copy_gbps": 20.0, "matmul_tflops_fp32": 0.2, "matmul_tops_int8": 1.6}
    peaks = best_peaks(start, end)
    assert peaks == {
        "copy_gbps": 30.0,
        "matmul_tflops_fp32": 0.2,
        "exp_per_s": 3e9,
        "matmul_tops_int8": 1.6,
    }
    assert compute_peak(peaks, "float32", provider="onnxruntime-int8") == 1.6
    assert compute_peak(peaks, "float32", provider="onnxruntime") == 0.2
    assert compute_peak(start, "float32", provider="onnxruntime-int8") == 0.1  # not measured
    counts = Counts(flops=3.2e9, exps=0, bytes=0)  # 16 ms at 0.2 TFLOP/s, 2 ms at 1.6 TOP/s
    assert floor_ms(counts, peaks, compute_peak(peaks, "float32"))["floor_ms"] == 16.0
    int8 = floor_ms(counts, peaks, compute_peak(peaks, "float32", provider="onnxruntime-int8"))
    assert int8["floor_ms"] == 2.0 and int8["bound"] == "compute"


def test_compare_interleaves_providers_and_reports_ratios_and_floors(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["--threads", "1", "--rounds", "2", "--frames", "16", "--cases", "front_end_fwd"]
    args += ["--providers", "fused"]
    assert (
        compare.main([*args, "--batch", "32", "--json", str(out), "--md", str(tmp_path / "t.md")])
        == 0
    )
    (run,) = json.loads(out.read_text())["runs"]
    assert run["threads"] == 1 and run["peaks"]["exp_per_s"] > 0
    rows = {r["provider"]: r for r in run["rows"]}
    assert set(rows) == {"eager", "fused"}
    assert rows["eager"]["speedup_vs_eager"] == 1.0
    for r in rows.values():
        assert r["floor_ms"] > 0 and r["x_floor"] > 0 and len(r["speedup_iqr"]) == 2
    text = capsys.readouterr().out
    assert "| front_end_fwd | 32 | fused |" in text and "x floor" in text


@pytest.mark.slow
def test_profile_cpu_splits_the_time_per_op_for_torch_and_onnxruntime(tmp_path, capsys):
    out = tmp_path / "ops.json"
    assert profile.main(["--cpu", "--batch", "2", "--frames", "16", "--json", str(out)]) == 0
    tables = json.loads(out.read_text())["tables"]
    assert set(tables) == {
        "torch eager, forward",
        "torch eager, forward + backward",
        "torch fused=aten, forward",
        "torch fused=aten, forward + backward",
        "torch native, forward",
        "torch native, forward + backward",
        "onnxruntime fp32, forward",
        "onnxruntime int8, forward",
    }
    fused_ops = {r["op"] for r in tables["torch fused=aten, forward"]}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in fused_ops
    native_ops = {r["op"] for r in tables["torch native, forward"]}
    assert "atfnn::native_freq_encoder_forward" in native_ops
    assert any(r["op"] == "Attention" for r in tables["onnxruntime fp32, forward"])
    assert "| op | ms | share | calls |" in capsys.readouterr().out


def test_the_cpu_benchmarks_need_no_triton():
    """torch's CPU-only wheels ship no Triton: the suite's plumbing, the floors and
    benchmarks.compare still import and count (floors.py reads kernels.tuning, which imported
    Triton at the top until 2026-12-06)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "from atfnn_fast import ATFNNConfig\n"
        "from benchmarks import cases, compare, conftest, floors, report\n"
        "c = floors.case_counts(ATFNNConfig(), 'front_end_fwd', 2, 16, 4)\n"
        "assert c.flops > 0 and c.bytes > 0, c\n"
        "print('ok', sorted(cases.PROVIDERS)[0])\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")
