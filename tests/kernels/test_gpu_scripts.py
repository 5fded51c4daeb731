"""The GPU session's scripts run their CPU parts here: scripts/gpu_sweep.py (plan, overrides
reaching the launches, the tuned table it writes) and scripts/gpu_timing.py (a smoke run on
the CPU at a tiny size; slow)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atfnn_fast import ATFNNConfig
from atfnn_fast.kernels import tuning

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_overrides_reach_every_launch(capsys):
    sweep = _script("gpu_sweep")
    assert sweep.main(["--dry-run"]) == 0
    assert "every override reaches its launches" in capsys.readouterr().out


def test_sweep_plan_covers_every_candidate_once_per_precision():
    sweep = _script("gpu_sweep")
    plan = sweep.plan(["ieee", "tf32"])
    ieee = [c for p, c in plan if p == "ieee"]
    slots = [c.slot for c in tuning.candidate_settings()]
    alternatives = [c for c in tuning.candidate_settings() if slots.count(c.slot) > 1]
    assert sorted(map(repr, ieee)) == sorted(map(repr, alternatives))
    assert {c.slot for c in ieee} >= {"ffn_bwd_dy1", "ffn_bwd_dh1", "fwd-narrow", "bwd-wide"}
    assert "ffn" not in {c.slot for c in ieee}  # its default is its only candidate
    assert {c.slot for p, c in plan if p == "tf32"} == {"ffn_bwd_dy1", "ffn_bwd_dh1"}


def test_tuned_table_from_sweep_rows_loads(tmp_path):
    sweep = _script("gpu_sweep")

    def row(slot, setting, ms, op="freq_encoder", prec="ieee", injected=False):
        tiles = ["kp8-gwp8"] if op == "band_attention" else []
        return dict(
            op=op,
            slot=slot,
            setting=setting,
            median_ms=ms,
            precision=prec,
            prec_seen=[prec],
            stages_injected=injected,
            tiles=tiles,
        )

    rows = [
        row("ffn_bwd_dy1", [64, 4, 1], 1.0),
        row("ffn_bwd_dy1", [32, 4, 1], 0.5),  # faster: written
        row("norm1", [16, 4], 1.0),
        row("norm1", [32, 8], 0.99),  # within 3 %: the default stays
        row("ffn_bwd_dh1", [32, 4, 2], 1.0),
        row("ffn_bwd_dh1", [16, 4, 2], 0.2, injected=True),  # host cannot pass it
        row("fwd-narrow", {"block": 128, "num_warps": 4}, 1.0, op="band_attention"),
        row("fwd-narrow", {"block": 256, "num_warps": 8}, 0.8, op="band_attention"),
        {"op": "freq_encoder", "slot": "ffn", "setting": [16, 4], "error": "boom"},
    ]
    table = sweep.tuned_table(rows, ATFNNConfig(), 90, "NVIDIA H200", "abc")
    assert table["freq_encoder"] == {"c8-p32/float32/ieee": {"ffn_bwd_dy1": [32, 4, 1]}}
    assert table["band_attention"] == {
        "fwd-narrow": {"kp8-gwp8/float32": {"block": 256, "num_warps": 8}}
    }
    path = tmp_path / "sm_90.json"
    path.write_text(json.dumps(table))
    loaded = tuning.load_table(path)
    assert loaded["freq_encoder"]["c8-p32/float32/ieee"].ffn_bwd_dy1 == tuning.KernelLaunch(
        32, 4, 1
    )


def test_timing_default_rows():
    import torch

    timing = _script("gpu_timing")
    cuda = torch.device("cuda")
    assert timing.skip_reason("train_step", "fused-compile", cuda) is None
    assert timing.skip_reason("train_step", "cudagraph", cuda) is None
    assert timing.skip_reason("freq_encoder_fwd_bwd", "compile-rank1", cuda) is None
    assert timing.skip_reason("front_end_fwd", "compile-rank1", cuda)
    assert timing.skip_reason("freq_encoder_fwd_bwd", "cudagraph", cuda)
    assert timing.skip_reason("train_step", "cudagraph", torch.device("cpu"))


@pytest.mark.slow
def test_timing_smoke_run_on_the_cpu(tmp_path):
    """scripts/gpu_timing.py end to end on the CPU at B = 2, T = 16: rows, floors, files."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_timing.py"),
            "--device",
            "cpu",
            "--batch",
            "2",
            "--frames",
            "16",
            "--quick",
            "--case",
            "freq_encoder_fwd_bwd",
            "train_step",
            "--provider",
            "eager",
            "fused",
            "compile-rank1",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("cpu-*.json")
    results = json.loads(json_path.read_text())
    assert results["kind"] == "gpu_timing" and results["peaks"]["copy_gbps"] > 0
    got = {(r["case"], r["provider"]): r for r in results["cases"]}
    assert set(got) == {
        ("freq_encoder_fwd_bwd", "eager"),
        ("freq_encoder_fwd_bwd", "fused"),
        ("freq_encoder_fwd_bwd", "compile-rank1"),
        ("train_step", "eager"),
        ("train_step", "fused"),
    }
    for row in got.values():
        assert "error" not in row, row
        assert row["median_ms"] > 0 and row["floor_ms"] > 0 and row["flops"] > 0
    assert got[("freq_encoder_fwd_bwd", "compile-rank1")]["rel_err_vs_eager"] < 1e-4
    assert got[("train_step", "fused")]["rel_err_vs_eager"] < 1e-4  # same first loss
    md = json_path.with_suffix(".md").read_text()
    assert "| train_step | float32 |" in md and "(>= 3x)" in md


def test_gpu_check_keeps_its_time_budget(tmp_path):
    """scripts/gpu_check.sh with a stand-in python: every step runs in order, the timing
    results feed the launch profile, and a spent budget skips the remaining steps."""
    fake = tmp_path / "python"
    calls = tmp_path / "calls.txt"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'if [[ "$*" == *gpu_timing.py* ]]; then echo "{}" > "$OUT/nvidia-h200-20261130.json"; '
        "sleep 2; fi\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env={**env, "GPU_CHECK_BUDGET_S": "100"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        "scripts/gpu_timing.py",
        "-m",  # benchmarks.profile
        "scripts/gpu_sweep.py",
        "-m",  # pytest tests
        "-m",  # benchmarks.resources
        "-m",  # pytest benchmarks
    ]
    assert f"--peaks-json {out}/nvidia-h200-20261130.json" in lines[1]
    log = (out / "gpu_check.log").read_text()
    assert "timing: exit 0" in log and "total:" in log
    # a budget smaller than the first step: all skipped, nothing started
    calls.unlink()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env={**env, "GPU_CHECK_BUDGET_S": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not calls.exists()
    assert "bench-smoke: skipped" in (out / "gpu_check.log").read_text()


def test_pass_choices_send_a_pass_to_compile_rank1_only_where_it_was_faster(tmp_path):
    sweep = _script("gpu_sweep")

    def row(case, provider, dtype, ms):
        return dict(case=case, provider=provider, dtype=dtype, median_ms=ms)

    rows = [  # float32: the kernels win the forward, compile-rank1 the backward (6 < 10 ms)
        row("freq_encoder_fwd", "fused", "float32", 1.0),
        row("freq_encoder_fwd", "compile-rank1", "float32", 2.0),
        row("freq_encoder_fwd_bwd", "fused", "float32", 11.0),
        row("freq_encoder_fwd_bwd", "compile-rank1", "float32", 8.0),
        # bfloat16: within 3 % in the forward, compile-rank1 missing for fwd+bwd: no entry
        row("freq_encoder_fwd", "fused", "bfloat16", 1.0),
        row("freq_encoder_fwd", "compile-rank1", "bfloat16", 0.99),
        row("freq_encoder_fwd_bwd", "fused", "bfloat16", 9.0),
        row("freq_encoder_fwd_bwd", "compile-rank1", "bfloat16", None),
    ]
    choices = sweep.pass_choices(rows, ATFNNConfig())
    assert choices == {"c8-p32/float32/tf32": {"backward": "compile-rank1"}}
    table = sweep.tuned_table([], ATFNNConfig(), 90, "NVIDIA H200", "abc")
    table["freq_encoder"].update(choices)
    path = tmp_path / "sm_90.json"
    path.write_text(json.dumps(table))
    loaded = tuning.load_table(path)["freq_encoder"]["c8-p32/float32/tf32"]
    assert (loaded.forward, loaded.backward) == ("kernels", "compile-rank1")
    # anything but the two implementations is refused, naming the file and field
    table["freq_encoder"]["c8-p32/float32/tf32"] = {"backward": "eager"}
    path.write_text(json.dumps(table))
    with pytest.raises(tuning.TunedTableError, match=r"sm_90.json.*backward must be one of"):
        tuning.load_table(path)
