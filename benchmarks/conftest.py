"""pytest plumbing of the benchmark suite: options, sizes, the parametrisation, the peaks,
and the run metadata written into pytest-benchmark's JSON (key ``"atfnn"``).

For a terminal: on a machine without CUDA the GPU cases are not collected (one summary line
counts them), pytest-benchmark's own tables (245 columns) are off unless ``--bench-tables``,
and the run ends with :func:`benchmarks.report.terminal_table` (120 columns: ceilings,
median, IQR, ratio to eager with its spread, floor, a noisy flag), then one summary line
(:func:`benchmarks.report.summary_line`): cases, minutes, device, and whether the machine
was too busy to measure (load average, ceilings drifting between start and end), naming
the committed run to trust instead."""

from __future__ import annotations

import os
import time

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
    group.addoption(
        "--bench-tables",
        action="store_true",
        help="also print pytest-benchmark's own tables (wide); by default only the atfnn "
        "table (120 columns) is printed",
    )


GPU_NOT_COLLECTED = pytest.StashKey[int]()


def pytest_configure(config):
    # pytest-benchmark's tables are 245 columns wide; the atfnn table says the same in 120
    if hasattr(config.option, "benchmark_quiet") and not config.getoption("--bench-tables"):
        config.option.benchmark_quiet = True


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
    if device.type != "cuda":
        # the GPU cases are not collected on machines without one; the summary counts them
        metafunc.config.stash[GPU_NOT_COLLECTED] = len(_params(metafunc.config, "cuda"))
    params = [
        pytest.param(*values, id="-".join(map(str, values[:4])) + f"-B{values[4]}")
        for values in _params(metafunc.config, device)
    ]
    metafunc.parametrize(("device", "case", "provider", "dtype", "batch"), params)


def _params(config, device) -> list[tuple]:
    """(device type, case, provider, dtype, batch) of every case run on ``device``."""
    device = torch.device(device)
    _, _, batches, _, dtypes = _settings(config, device)
    return [
        (device.type, case, provider, dtype, batch)
        for case in cases.CASES
        for dtype in dtypes
        for batch in batches
        for provider in cases.PROVIDERS
        if provider not in cases.ONNX_PROVIDERS or case == "full_fwd"
        if provider != "compile-rank1" or case.startswith("freq_encoder")
    ]


@pytest.fixture(scope="session")
def bench_env(pytestconfig):
    """Device, size and the peaks (stored for the JSON hook): measured at the start of the
    run and again at its end (this fixture's teardown, before the JSON and the table are
    written), each ceiling the best of the two, so that a busy moment of a shared machine
    cannot lower a ceiling below what a case then achieves."""
    device, size, _, frames, _ = _settings(pytestconfig)
    load_start = _load()
    start = dev.measure_peaks(device, tiny=size == "tiny")
    env = {**dev.run_metadata(device, size), "peaks": start}
    pytestconfig.stash[ENV_KEY] = env
    pytestconfig.stash[START_KEY] = time.perf_counter()
    yield {"torch_device": device, "frames": frames, **env}
    end = dev.measure_peaks(device, tiny=size == "tiny")
    env["peaks"] = dev.best_peaks(start, end)
    env["peaks_start_end"] = [start, end]
    env["load_start_end"] = [load_start, _load()]


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


ENV_KEY = pytest.StashKey[dict]()
START_KEY = pytest.StashKey[float]()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["atfnn"] = config.stash.get(ENV_KEY, None)


def pytest_terminal_summary(terminalreporter, config):
    skipped_gpu = config.stash.get(GPU_NOT_COLLECTED, 0)
    if skipped_gpu:
        terminalreporter.write_line(
            f"atfnn: {skipped_gpu} GPU cases not collected (no CUDA device here)"
        )
    env = config.stash.get(ENV_KEY, None)
    session = getattr(config, "_benchmarksession", None)
    if env is None or session is None or session.disabled or not session.benchmarks:
        return
    from benchmarks.report import case_rows, terminal_table

    rows = case_rows(
        [
            {"extra_info": b.extra_info, "stats": {"median": b.stats.median, "iqr": b.stats.iqr}}
            for b in session.benchmarks
            if b.stats is not None
        ],
        env["peaks"],
    )
    terminalreporter.write_sep("-", f"atfnn roofline on {env['device']}")
    device_type = _settings(config)[0].type
    terminalreporter.write_line(terminal_table(rows, env["peaks"], device_type))
    from benchmarks.report import summary_line

    seconds = time.perf_counter() - config.stash.get(START_KEY, time.perf_counter())
    cores = os.cpu_count() or 1
    terminalreporter.write_sep("-", "atfnn summary")
    terminalreporter.write_line(summary_line(env, len(rows), seconds, cores))
