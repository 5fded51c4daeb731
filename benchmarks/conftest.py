"""pytest plumbing of the benchmark suite: options, sizes, the parametrisation, the peaks,
and the run metadata written into pytest-benchmark's JSON (key ``"atfnn"``)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import cases
from benchmarks import device as dev

SIZES = {
    # name: (batches, frames, dtypes); "auto" is "full" on CUDA and "small" on the CPU
    "full": ((1, 128, 512), 128, ("float32", "bfloat16")),
    "small": ((1, 32), 128, ("float32",)),
    "tiny": ((2,), 16, ("float32",)),
}


def pytest_addoption(parser):
    group = parser.getgroup("atfnn", "atfnn-fast benchmarks")
    group.addoption(
        "--bench-size",
        choices=("auto", *SIZES),
        default="auto",
        help="full (B=1,128,512, fp32+bf16; the CUDA default), small (B=1,32, fp32; the CPU "
        "default) or tiny (B=2, T=16: CI's smoke run)",
    )
    group.addoption("--bench-device", choices=("auto", "cpu", "cuda"), default="auto")


def _settings(config, device: torch.device | None = None):
    device = device or dev.pick_device(config.getoption("--bench-device"))
    size = config.getoption("--bench-size")
    if size == "auto":
        size = "full" if device.type == "cuda" else "small"
    batches, frames, dtypes = SIZES[size]
    if device.type != "cuda":
        dtypes = ("float32",)  # bf16 autocast timings are a CUDA matter
    return device, size, batches, frames, dtypes


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    device, *_ = _settings(metafunc.config)
    devices = [device]
    if device.type != "cuda":
        # the GPU cases are listed too, and skipped with a reason, on machines without one
        devices.append(torch.device("cuda"))
    params = []
    for target in devices:
        _, _, batches, _, dtypes = _settings(metafunc.config, target)
        params += [
            pytest.param(
                target.type,
                case,
                provider,
                dtype,
                batch,
                id=f"{target.type}-{case}-{provider}-{dtype}-B{batch}",
                marks=()
                if target == device
                else pytest.mark.skip(
                    reason="GPU case: no CUDA device here (torch.cuda.is_available() is False)"
                ),
            )
            for case in cases.CASES
            for dtype in dtypes
            for batch in batches
            for provider in cases.PROVIDERS
            if provider not in cases.ONNX_PROVIDERS or case == "full_fwd"
            if provider != "compile-rank1" or case.startswith("freq_encoder")
        ]
    metafunc.parametrize(("device", "case", "provider", "dtype", "batch"), params)


@pytest.fixture(scope="session")
def bench_env(pytestconfig):
    """Device, size and the peaks measured once per run (stored for the JSON hook)."""
    device, size, _, frames, _ = _settings(pytestconfig)
    env = {
        **dev.run_metadata(device, size),
        "peaks": dev.measure_peaks(device, tiny=size == "tiny"),
    }
    pytestconfig.stash[ENV_KEY] = env
    return {"torch_device": device, "frames": frames, **env}


ENV_KEY = pytest.StashKey[dict]()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["atfnn"] = config.stash.get(ENV_KEY, None)


def pytest_terminal_summary(terminalreporter, config):
    env = config.stash.get(ENV_KEY, None)
    session = getattr(config, "_benchmarksession", None)
    if env is None or session is None or session.disabled or not session.benchmarks:
        return
    from benchmarks.report import case_rows, markdown_table

    rows = case_rows(
        [
            {"extra_info": b.extra_info, "stats": {"median": b.stats.median}}
            for b in session.benchmarks
            if b.stats is not None
        ],
        env["peaks"],
    )
    terminalreporter.write_sep("-", f"atfnn roofline on {env['device']}")
    terminalreporter.write_line(markdown_table(rows))
