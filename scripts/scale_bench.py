"""The figures of the README's "Scaling out" section (issue 33, item 5), in one run:

    python scripts/scale_bench.py                # all of it, about 10 minutes on 2 cores
    python scripts/scale_bench.py --quick        # small sizes, to check the script runs

1. Batch scoring of 1,000 clips of 3 s and of 4 files of 10 minutes (16 kHz WAV, written to
   a temporary folder) with the paper-size model exported to ONNX: one-machine ``predict``
   (this process, :func:`atfnn_fast.app.predict.file_entry` per file, ONNX Runtime's default
   threads) beside ``predict --ray`` (:func:`atfnn_fast.app.scale.iter_entries`, a local
   Ray with ``--workers`` actors of one CPU each). Files per second and x real time (audio
   seconds per wall second); Ray's start-up is timed apart, the actors' start (torch and
   ONNX Runtime loaded in each) is in the time, as in a real run.
2. Serving (:mod:`atfnn_fast.app.serve`, 1 replica with ``--threads`` CPUs) of one 3 s WAV
   clip per request, from an asyncio load generator (aiohttp, which the scale extra brings;
   each of C clients sends its next request when the last one is answered) for
   ``--seconds`` per point: requests per second, p50 and p99 latency at concurrency 1, 8
   and 32, with batching on (``--max-batch``) and off (max batch 1).

Prints a JSON line per measurement and, last, the Markdown tables with the CPU's name
(``lscpu``). Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATE = 16_000


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    return f"{name}, {os.cpu_count()} logical CPUs"


def make_model(folder: Path) -> Path:
    """The paper-size ATFNN (random weights: speed does not depend on them) as ONNX."""
    import torch

    from atfnn_fast import ATFNN, ATFNNConfig
    from atfnn_fast.export.onnx_export import export_onnx
    from atfnn_fast.features import NormStats

    torch.manual_seed(0)
    config = ATFNNConfig(num_classes=4)
    stats = NormStats.fit([torch.randn(config.n_mels, 200, dtype=torch.float64) - 5])
    model = ATFNN(config).eval()
    return export_onnx(
        model, folder / "paper.onnx", labels=["ang", "hap", "neu", "sad"], norm_stats=stats
    )


def speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = 1 + np.sin(np.arange(n) * (2 * np.pi * 3 / RATE))  # 3 Hz syllable rate
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def write_set(folder: Path, count: int, seconds: float) -> tuple[list[str], float]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.wav"
        sf.write(path, speech_like(seconds, i), RATE, subtype="PCM_16")
        paths.append(str(path))
    return paths, count * seconds


def batch_figures(onnx: Path, sets: dict, workers: int) -> list[dict]:
    import functools

    from atfnn_fast.app.predict import file_entry, load_predictor
    from atfnn_fast.app.scale import connect, iter_entries

    rows = []
    predictor = load_predictor(onnx=onnx)
    for name, (paths, audio_s) in sets.items():
        start = time.perf_counter()
        failed = sum("error" in file_entry(predictor, p)[0] for p in paths)
        wall = time.perf_counter() - start
        rows.append(dict(kind="batch", set=name, runner="predict (one process)", files=len(paths),
                         wall_s=wall, files_per_s=len(paths) / wall, x_real_time=audio_s / wall,
                         failed=failed))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    start = time.perf_counter()
    ray = connect("local", num_cpus=workers)
    startup = time.perf_counter() - start
    factory = functools.partial(load_predictor, onnx=onnx, threads=1)
    for name, (paths, audio_s) in sets.items():
        listed = [(p, None) for p in paths]
        start = time.perf_counter()
        failed = sum("error" in e for e in iter_entries(factory, listed, workers=workers))
        wall = time.perf_counter() - start
        rows.append(dict(kind="batch", set=name, runner=f"predict --ray ({workers} workers)",
                         files=len(paths), wall_s=wall, files_per_s=len(paths) / wall,
                         x_real_time=audio_s / wall, failed=failed, ray_start_s=startup))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows, ray


async def _load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    batches: list[int] = []
    errors = 0
    headers = {"Content-Type": "audio/wav"}

    async def one(session) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                errors += 1
            batches.append(int(response.headers.get("x-atfnn-batch", "0")))
        latencies.append(time.perf_counter() - t0)

    async def client(session, deadline: float) -> None:
        while time.perf_counter() < deadline:
            await one(session)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))  # warm-up, not counted
        latencies.clear()
        batches.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(session, start + seconds) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return dict(requests=len(lat), req_per_s=len(lat) / wall, p50_ms=float(np.percentile(lat, 50)),
                p99_ms=float(np.percentile(lat, 99)), mean_batch=float(np.mean(batches)),
                errors=errors)  # fmt: skip


def serve_figures(onnx: Path, body: bytes, threads: int, max_batch: int, seconds: float,
                  concurrencies: list[int]) -> list[dict]:  # fmt: skip
    import socket

    from ray import serve

    from atfnn_fast.app.serve import build_app, start

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = []
    for batching, size in (("on", max_batch), ("off", 1)):
        app = build_app(onnx=onnx, threads=threads, max_batch=size, access_log=False)
        start(app, "127.0.0.1", port)
        for c in concurrencies:
            row = asyncio.run(_load(f"http://127.0.0.1:{port}/", body, c, seconds))
            rows.append(dict(kind="serve", batching=batching, max_batch=size, concurrency=c, **row))
            print(json.dumps(rows[-1]), flush=True)
        serve.delete("atfnn")
    serve.shutdown()
    return rows


def tables(cpu: str, batch: list[dict], served: list[dict]) -> str:
    lines = [
        f"Measured on {cpu}.",
        "",
        "| set | runner | files/s | × real time |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['set']} | {r['runner']} | {r['files_per_s']:.3g} | {r['x_real_time']:.0f}× |"
        for r in batch
    ]
    lines += ["", "| batching | concurrency | req/s | p50 ms | p99 ms | mean batch |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r['batching']} | {r['concurrency']} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | "
        f"{r['p99_ms']:.0f} | {r['mean_batch']:.1f} |"
        for r in served
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--long-files", type=int, default=4)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (CPUs of local Ray)")
    parser.add_argument("--threads", type=int, default=2, help="CPUs of the serving replica")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0, help="per serving point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.long_files, args.long_minutes, args.seconds = 20, 1, 0.5, 3.0
    cpu = cpu_name()
    print(json.dumps({"cpu": cpu}), flush=True)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        tmp = Path(tmp)
        onnx = make_model(tmp)
        sets = {
            f"{args.clips} clips of 3 s": write_set(tmp / "clips", args.clips, 3.0),
            f"{args.long_files} files of {args.long_minutes:g} min": write_set(
                tmp / "long", args.long_files, 60 * args.long_minutes
            ),
        }
        batch, ray = [], None
        if not args.skip_batch:
            batch, ray = batch_figures(onnx, sets, args.workers)
        served = []
        if not args.skip_serve:
            from atfnn_fast.app.scale import connect

            ray = connect("local", num_cpus=max(args.workers, args.threads))
            body = Path(sets[f"{args.clips} clips of 3 s"][0][0]).read_bytes()
            served = serve_figures(onnx, body, args.threads, args.max_batch, args.seconds,
                                   args.concurrency)  # fmt: skip
        if ray is not None:
            ray.shutdown()
    print(tables(cpu, batch, served))
    return 0


if __name__ == "__main__":
    sys.exit(main())
