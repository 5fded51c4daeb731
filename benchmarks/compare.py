"""The providers side by side on one device, interleaved: ``python -m benchmarks.compare``.

pytest-benchmark times one (case, provider) after another, so a change in the machine's load
between two of them moves their ratio. This runs every provider of a case round-robin within
each round (the same load for all of them), takes each provider's median time and, per
round, its speed-up over the eager reference; the reported ratio is the median of those
per-round ratios, with their interquartile range (a ratio whose IQR is more than 15 % of it
is flagged ``noisy``). Each case's floor (:mod:`benchmarks.floors`: flops at the fp32
matmul ceiling, exponentials at the exponential ceiling, bytes at the copy bandwidth, each
ceiling measured in the same run at the same thread count) gives ``x floor``, the time as a
multiple of it. The run repeats for each thread count of ``--threads`` (0: torch's default).

docs/design.md#cpu-implementation holds the targets and the results; ``--md`` / ``--json``
write them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from atfnn_fast import ATFNNConfig
from benchmarks import cases, floors
from benchmarks.device import measure_peaks, pick_device, run_metadata

# (case, batch, providers); eager first: the ratios are over it
PLAN = (
    ("full_fwd", 32, ("eager", "compile", "fused", "native", "onnxruntime", "onnxruntime-int8")),
    ("full_fwd", 1, ("eager", "compile", "fused", "native", "onnxruntime", "onnxruntime-int8")),
    ("front_end_fwd", 32, ("eager", "compile", "fused", "native")),
    ("front_end_fwd_bwd", 32, ("eager", "compile", "fused", "native")),
    ("train_step", 32, ("eager", "compile", "fused", "native")),
)
NOISY = 0.15  # IQR / median of the per-round ratios above which a ratio is flagged


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def run_case(case, batch, providers, frames, rounds, device, peaks, progress=print) -> list[dict]:
    """One case, its providers interleaved: a row per provider."""
    cfg = ATFNNConfig()
    benches = {}
    for provider in providers:
        reason = cases.skip_reason(case, provider, device)
        if reason is None:
            progress(f"  building {case} B={batch} {provider}")
            benches[provider] = cases.build(
                case, provider, cfg, batch, frames, torch.float32, device
            )
    times = {p: [] for p in benches}
    for r in range(rounds):
        for provider, bench in benches.items():
            bench.setup()
            start = time.perf_counter()
            bench.fn()
            times[provider].append(time.perf_counter() - start)
        progress(f"  {case} B={batch}: round {r + 1}/{rounds}")
    counts = floors.case_counts(cfg, case, batch, frames, 4)
    rows = []
    for provider, ts in times.items():
        floor = floors.floor_ms(
            counts, peaks, floors.compute_peak(peaks, "float32", provider=provider)
        )
        ratios = (
            [e / t for e, t in zip(times["eager"], ts, strict=True)] if "eager" in times else []
        )
        q1, ratio, q3 = _quartiles(ratios) if ratios else (None, None, None)
        median_ms = statistics.median(ts) * 1e3
        rows.append(
            {
                "case": case,
                "batch": batch,
                "frames": frames,
                "provider": provider,
                "median_ms": round(median_ms, 3),
                "speedup_vs_eager": None if ratio is None else round(ratio, 3),
                "speedup_iqr": None if ratio is None else [round(q1, 3), round(q3, 3)],
                "noisy": bool(ratio and (q3 - q1) > NOISY * ratio),
                "floor_ms": None if floor["floor_ms"] is None else round(floor["floor_ms"], 3),
                "bound": floor["bound"],
                "x_floor": round(median_ms / floor["floor_ms"], 2) if floor["floor_ms"] else None,
                "compile_s": benches[provider].compile_s,
            }
        )
    return rows


def markdown(rows: list[dict], peaks: dict, threads: int) -> str:
    head = (
        f"threads {threads}: fp32 matmul {peaks.get('matmul_tflops_fp32', 0) * 1e3:.0f} GFLOP/s, "
        f"exp {peaks.get('exp_per_s', 0) / 1e9:.2f} G/s, copy {peaks.get('copy_gbps', 0):.1f} GB/s"
    )
    lines = [
        head,
        "",
        "| case | B | provider | median ms | vs eager (IQR) | floor ms (bound) | x floor |",
        "|---|--:|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        ratio = "-"
        if r["speedup_vs_eager"] is not None:
            lo, hi = r["speedup_iqr"]
            flag = " noisy" if r["noisy"] else ""
            ratio = f"{r['speedup_vs_eager']:.2f}x ({lo:.2f}-{hi:.2f}){flag}"
        floor = f"{r['floor_ms']:.1f} ({r['bound']})" if r["floor_ms"] else "-"
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['provider']} | {r['median_ms']:.1f} | {ratio} "
            f"| {floor} | {r['x_floor'] if r['x_floor'] is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--threads", default="0,1", help="comma-separated thread counts, 0 = torch's default"
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--cases", default=None, help="comma-separated cases (default: all)")
    parser.add_argument("--batch", type=int, default=None, help="only this batch size")
    parser.add_argument(
        "--providers", default=None, help="comma-separated providers (default: each case's)"
    )
    parser.add_argument("--json", type=Path, help="write the rows and ceilings as JSON")
    parser.add_argument("--md", type=Path, help="write the tables as Markdown")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    wanted = set(args.cases.split(",")) if args.cases else None
    only = set(args.providers.split(",")) | {"eager"} if args.providers else None
    default_threads = torch.get_num_threads()
    out = {"env": run_metadata(device, "compare"), "runs": []}
    tables = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads or default_threads)
        n = torch.get_num_threads()
        print(f"threads {n}: measuring the ceilings", file=sys.stderr)
        peaks = measure_peaks(device)
        rows = []
        for case, batch, providers in PLAN:
            if (wanted and case not in wanted) or (args.batch and batch != args.batch):
                continue
            rows += run_case(
                case,
                batch,
                [p for p in providers if only is None or p in only],
                args.frames,
                args.rounds,
                device,
                peaks,
                progress=lambda m: print(m, file=sys.stderr),
            )
        out["runs"].append({"threads": n, "peaks": peaks, "rows": rows})
        tables.append(markdown(rows, peaks, n))
        print(tables[-1], flush=True)
    torch.set_num_threads(default_threads)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.md:
        args.md.write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
