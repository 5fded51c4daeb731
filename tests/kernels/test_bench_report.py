"""The benchmark suite's bookkeeping: roofline counts, result rows, files and README."""

import json

import pytest
import torch

from atfnn_fast import ATFNNConfig
from benchmarks import cases, floors, report

CFG = ATFNNConfig()
PEAKS = {"copy_gbps": 100.0, "matmul_tflops_fp32": 2.0, "matmul_tflops_bf16": 4.0}


def entry(case, provider, median_s, dtype="float32", batch=4, frames=128):
    return {
        "extra_info": {
            "case": case,
            "provider": provider,
            "dtype": dtype,
            "batch": batch,
            "frames": frames,
            "bytes": 10**9,
            "flops": 10**12,
            "compile_s": None,
            "peak_mem_mb": None,
        },
        "stats": {"median": median_s, "iqr": 0.001, "rounds": 10},
    }


def test_band_attention_bytes_are_counted_by_hand():
    b, f, t, c = 1, 80, 128, 8
    fwd = 3 * b * f * t + 2 * b * f * t + 2 * b * t * f * c  # F: x, x', w_f; T: x, x̂, x̂'', w_t
    assert floors.bytes_moved(CFG, "band_attention_fwd", b, t, 4) == fwd * 4
    assert floors.bytes_moved(CFG, "band_attention_fwd", b, t, 2) == fwd * 2


def test_counts_grow_along_the_pipeline():
    fl = {case: floors.case_counts(CFG, case, 8, 128, 4) for case in cases.CASES}
    assert (
        fl["band_attention_fwd"].flops + fl["freq_encoder_fwd"].flops
        > fl["front_end_fwd"].flops  # the band case's T-Attention reweights the encoding
    )
    assert fl["front_end_fwd"].flops < fl["full_fwd"].flops < fl["train_step"].flops
    assert fl["front_end_fwd"].bytes < fl["full_fwd"].bytes < fl["train_step"].bytes
    assert fl["freq_encoder_fwd"].exps < fl["freq_encoder_fwd_bwd"].exps


def test_skip_reasons(monkeypatch):
    from atfnn_fast.kernels import dispatch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cases.skip_reason("full_fwd", "eager", cpu) is None
    assert cases.skip_reason("full_fwd", "fused", cpu) is None  # ATFNN's CPU implementation
    monkeypatch.setitem(dispatch.TRITON_IMPLS, "band_attention", object())
    monkeypatch.delitem(dispatch.TRITON_IMPLS, "freq_encoder", raising=False)
    assert cases.skip_reason("band_attention_fwd_bwd", "fused", cuda) is None
    reason = cases.skip_reason("front_end_fwd", "fused", cuda)
    assert reason == "no Triton kernel yet for atfnn::freq_encoder"
    assert cases.skip_reason("full_fwd", "onnxruntime", cpu) is None
    assert "full_fwd only" in cases.skip_reason("train_step", "onnxruntime", cpu)
    assert "float32" in cases.skip_reason("full_fwd", "onnxruntime", cpu, "bfloat16")
    assert cases.skip_reason("full_fwd", "onnxruntime-int8", cpu) is None
    assert "full_fwd only" in cases.skip_reason("front_end_fwd", "onnxruntime-int8", cpu)
    assert "CPU op" in cases.skip_reason("full_fwd", "onnxruntime-int8", cuda)


def test_rows_have_ratios_throughput_and_fractions():
    rows = report.case_rows(
        [entry("full_fwd", "compile", 0.5), entry("full_fwd", "eager", 1.0)], PEAKS
    )
    assert [r["provider"] for r in rows] == ["eager", "compile"]
    eager, comp = rows
    assert (eager["speedup_vs_eager"], comp["speedup_vs_eager"]) == (1.0, 2.0)
    assert comp["median_ms"] == 500.0
    assert comp["gbps"] == 2.0 and comp["frac_copy"] == 0.02
    assert comp["tflops"] == 2.0 and comp["frac_matmul"] == 1.0
    assert comp["floor_ms"] == 500.0  # 1 TFLOP at 2 TFLOP/s (1 GB at 100 GB/s: 10 ms)
    assert comp["bound"] == "compute" and comp["of_floor"] == 1.0
    table = report.markdown_table(rows)
    # IQR 1 ms of 500 ms; x eager [(1000-0.5)/(500+0.5), (1000+0.5)/(500-0.5)]
    assert "| full_fwd | float32 | 4 | compile | 500.000 | 0% | 2.00 [2.00-2.00] |" in table
    assert "| 4 | eager | 1000.000 | 0% | 1.00 |" in table
    assert "| fused |" not in table and "noisy" not in table


def test_markdown_table_flags_a_noisy_ratio_and_names_the_cpu_path():
    noisy = entry("full_fwd", "fused", 0.004)  # IQR 1 ms of 4 ms: 25 %
    fast = {"copy_gbps": 1e3, "matmul_tflops_fp32": 1e3}  # a 1 ms floor, below both rows
    rows = report.case_rows([entry("full_fwd", "eager", 0.010), noisy], fast)
    table = report.markdown_table(rows, "cpu")
    fused = next(line for line in table.splitlines() if "fused=aten" in line)
    # x eager 2.50, over both IQRs [(10-0.5)/(4+0.5), (10+0.5)/(4-0.5)] = [2.11-3.00]
    assert "| 4.000 | 25% | 2.50 [2.11-3.00] |" in fused and fused.endswith("| noisy |")
    assert "| fused |" in report.markdown_table(rows, "cuda")


def test_a_row_faster_than_its_floor_says_the_ceiling_is_low():
    # 1 TFLOP at 2 TFLOP/s: a 500 ms floor; 400 ms beats it
    rows = report.case_rows([entry("full_fwd", "eager", 0.4)], PEAKS)
    assert rows[0]["of_floor"] == 1.25
    assert report.markdown_table(rows).endswith("| above ceiling |")
    table = report.terminal_table(rows, PEAKS, "cpu")
    assert table.splitlines()[-1].endswith("125.0%  above ceiling")
    assert report.terminal_table(rows, {**PEAKS, "matmul_tops_int8": 8.0}, "cpu").startswith(
        "ceilings measured in this run: copy 100.0 GB/s, matmul 2.000 TFLOP/s fp32, 4.000 bf16, "
        "8.000 TOP/s int8"
    )


def test_cpu_deployment_rows_side_by_side():
    names = ["onnxruntime-int8", "onnxruntime", "fused", "eager"]
    times = [0.25, 0.4, 0.8, 1.0]
    rows = report.case_rows(
        [entry("full_fwd", p, t, batch=32) for p, t in zip(names, times, strict=True)], PEAKS
    )
    assert [r["provider"] for r in rows] == ["eager", "fused", "onnxruntime", "onnxruntime-int8"]
    assert [r["speedup_vs_eager"] for r in rows] == [1.0, 1.25, 2.5, 4.0]


def test_results_file_schema_and_readme(tmp_path):
    data = {
        "benchmarks": [entry("train_step", "eager", 0.2)],
        "atfnn": {
            "device": "NVIDIA H100 80GB HBM3",
            "driver": "580",
            "cuda": "13.0",
            "torch": "2.11.0+cu130",
            "triton": "3.6.0",
            "commit": "abc",
            "date": "2026-11-24",
            "size": "full",
            "peaks": PEAKS,
        },
    }
    results = report.results_from_pytest_json(data)
    json_path, md_path = report.write_results(results, tmp_path)
    assert json_path.name == "nvidia-h100-80gb-hbm3-20261124.json"
    saved = json.loads(json_path.read_text())
    for key in ("device", "driver", "cuda", "torch", "triton", "commit", "date", "peaks"):
        assert key in saved
    (row,) = saved["cases"]
    assert {"case", "provider", "dtype", "batch", "frames", "median_ms", "peak_mem_mb"} <= set(row)
    assert "| train_step | float32 | 4 | eager | 200.000 |" in md_path.read_text()
    assert report.plot(results, tmp_path / "p.png").stat().st_size > 1000

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")
    report.update_readme(report.latest_results(tmp_path), readme)
    text = readme.read_text()
    assert "old" not in text and "after" in text and "NVIDIA H100 80GB HBM3" in text


def test_foreign_json_is_refused():
    with pytest.raises(ValueError, match="no 'atfnn' block"):
        report.results_from_pytest_json({"benchmarks": []})


def test_profile_splits_the_full_forward():
    from helpers import tiny_config

    from atfnn_fast import ATFNNReference
    from benchmarks import profile

    model = profile.instrument(ATFNNReference(tiny_config()).eval())
    result = profile.split(model, torch.randn(2, 1, 10, 16), steps=2)
    assert set(result["ms"]) == {"front_end", "t_encoder", "classifier"}
    assert all(v > 0 for v in result["ms"].values())
    assert sum(result["share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_readme_shows_the_latest_gpu_run_beside_the_cpu_run(tmp_path):
    cpu = {
        "device": "CPU AMD EPYC (2 threads)",
        "driver": None,
        "cuda": None,
        "torch": "2.11",
        "triton": "3.6",
        "commit": "abc",
        "date": "2026-11-26",
        "size": "small",
        "peaks": PEAKS,
        "cases": report.case_rows([entry("full_fwd", "eager", 0.2)], PEAKS),
    }
    report.write_results(cpu, tmp_path)
    rows = [
        {
            "case": "train_step",
            "provider": p,
            "dtype": "float32",
            "batch": 128,
            "frames": 128,
            "median_ms": ms,
            "floor_ms": 1.0,
            "bound": "compute",
            "of_floor": 1.0 / ms,
        }
        for p, ms in (("eager", 30.0), ("compile", 20.0), ("fused", 9.0), ("cudagraph", 6.0))
    ]
    rows.append(
        {
            "case": "train_step",
            "provider": "fused-compile",
            "dtype": "float32",
            "batch": 128,
            "frames": 128,
            "error": "RuntimeError('no | graph')",
        }
    )
    gpu = {
        "kind": "gpu_timing",
        "device": "NVIDIA H200",
        "driver": "1",
        "cuda": "13.0",
        "torch": "2.11",
        "triton": "3.6",
        "commit": "def",
        "date": "2026-11-30",
        "peaks": {"copy_gbps": 4000.0},
        "cases": rows,
    }
    json_path, md_path = report.write_gpu_results(gpu, tmp_path)
    assert json_path.name == "nvidia-h200-20261130.json"
    md = md_path.read_text()
    # fused 9 ms: 3.33x eager (target 3x), 2.22x compile (target 2x); cudagraph is the best
    assert (
        "| train_step | float32 | 3.33x (>= 3x) | 2.22x (>= 2x) | - | cudagraph 5.00x | yes |" in md
    )
    assert "failed: RuntimeError('no / graph')" in md  # a failed provider keeps its row
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.BEGIN}\nold\n{report.END}\n")
    report.update_readme(readme=readme, outdir=tmp_path)
    text = readme.read_text()
    assert text.index("### Latest GPU run") < text.index("### Latest CPU run")
    assert "NVIDIA H200" in text and "CPU AMD EPYC" in text and "old" not in text


def test_each_case_s_bars_are_centred_on_its_tick():
    assert report.bar_positions(2, 3, 0.2) == pytest.approx([1.8, 2.0, 2.2])
    assert report.bar_positions(0, 2, 0.4) == pytest.approx([-0.2, 0.2])
    assert report.bar_positions(5, 1, 0.4) == [5]
