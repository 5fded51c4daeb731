"""The CPU benchmark tools run and report what they promise (no assertion is on a time):
``benchmarks.compare`` (providers interleaved, ratios with their spread, floors from the
ceilings measured in the same run) and ``benchmarks.profile --cpu`` (per-op time)."""

import json

import pytest
import torch

from benchmarks import compare, profile
from benchmarks.device import measure_peaks


def test_cpu_ceilings_include_the_exponential_rate():
    peaks = measure_peaks(torch.device("cpu"), tiny=True)
    assert peaks["exp_per_s"] > 0 and peaks["matmul_tflops_fp32"] > 0 and peaks["copy_gbps"] > 0


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
        "torch fused, forward",
        "torch fused, forward + backward",
        "onnxruntime fp32, forward",
        "onnxruntime int8, forward",
    }
    fused_ops = {r["op"] for r in tables["torch fused, forward"]}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in fused_ops
    assert any(r["op"] == "Attention" for r in tables["onnxruntime fp32, forward"])
    assert "| op | ms | share | calls |" in capsys.readouterr().out
