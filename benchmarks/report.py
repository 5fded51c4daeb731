"""Benchmark results: ``python -m benchmarks.report``.

Runs ``pytest benchmarks --benchmark-only`` (extra arguments after ``--`` go to pytest), or
reads a pytest-benchmark JSON file given with ``--json``, and writes
``benchmarks/results/<device-slug>-<yyyymmdd>.json`` in the schema of docs/design.md#benchmarks, a
markdown table next to it (ratios to eager, achieved GB/s and TFLOP/s as fractions of the
peaks measured in the same run) and a bar chart (PNG). ``--readme`` regenerates the README's
performance section from the latest results file.

Each case row holds the required fields (case, provider, dtype, batch, frames, median_ms,
peak_mem_mb) plus: iqr_ms, rounds, compile_s, bytes, flops, gbps, tflops, frac_copy,
frac_matmul, floor_ms (bytes at the measured copy bandwidth), speedup_vs_eager.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.device import slug

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


def case_rows(benchmarks: list[dict], peaks: dict[str, float]) -> list[dict]:
    """pytest-benchmark entries (``extra_info`` + ``stats``) -> result rows."""
    rows = []
    for bench in benchmarks:
        info, stats = bench["extra_info"], bench["stats"]
        median = stats["median"]
        matmul = peaks.get(
            "matmul_tflops_fp32" if info["dtype"] == "float32" else "matmul_tflops_bf16"
        )
        gbps = info["bytes"] / median / 1e9
        tflops = info["flops"] / median / 1e12
        row = {
            "case": info["case"],
            "provider": info["provider"],
            "dtype": info["dtype"],
            "batch": info["batch"],
            "frames": info["frames"],
            "median_ms": round(median * 1e3, 4),
            "peak_mem_mb": info.get("peak_mem_mb"),
            "iqr_ms": round(stats["iqr"] * 1e3, 4) if "iqr" in stats else None,
            "rounds": stats.get("rounds"),
            "compile_s": info.get("compile_s"),
            "host_ms": info.get("host_ms"),
            "bytes": info["bytes"],
            "flops": info["flops"],
            "gbps": round(gbps, 3),
            "tflops": round(tflops, 5),
            "frac_copy": round(gbps / peaks["copy_gbps"], 4) if peaks.get("copy_gbps") else None,
            "frac_matmul": round(tflops / matmul, 4) if matmul else None,
            "floor_ms": round(info["bytes"] / (peaks["copy_gbps"] * 1e9) * 1e3, 4)
            if peaks.get("copy_gbps")
            else None,
        }
        rows.append(row)
    eager = {_key(r): r["median_ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        base = eager.get(_key(r))
        r["speedup_vs_eager"] = round(base / r["median_ms"], 3) if base else None
    from benchmarks.cases import CASES, PROVIDERS

    order = {p: i for i, p in enumerate(PROVIDERS)}

    rows.sort(key=lambda r: (CASES.index(r["case"]), r["dtype"], r["batch"], order[r["provider"]]))
    return rows


def _key(row: dict) -> tuple:
    return (row["case"], row["dtype"], row["batch"], row["frames"])


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| case | dtype | B | provider | median ms | x eager | GB/s (of copy) | "
        "TFLOP/s (of matmul) | floor ms | peak MB | compile s |\n"
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['batch']} | {r['provider']} "
            f"| {r['median_ms']:.3f} | {_fmt(r['speedup_vs_eager'], '.2f')} "
            f"| {r['gbps']:.2f} ({_fmt(r['frac_copy'], '.1%')}) "
            f"| {r['tflops']:.4f} ({_fmt(r['frac_matmul'], '.1%')}) "
            f"| {_fmt(r['floor_ms'], '.3f')} | {_fmt(r['peak_mem_mb'], '.1f')} "
            f"| {_fmt(r['compile_s'], '.1f')} |"
        )
    return "\n".join(lines)


def results_from_pytest_json(data: dict) -> dict:
    env = data.get("atfnn")
    if not env:
        raise ValueError(
            "this pytest-benchmark JSON has no 'atfnn' block: it was not written by "
            "`pytest benchmarks` of atfnn-fast"
        )
    if not data.get("benchmarks"):
        raise ValueError("this pytest-benchmark JSON holds no timed benchmark")
    keys = ("device", "driver", "cuda", "torch", "triton", "commit", "date", "size", "peaks")
    return {**{k: env.get(k) for k in keys}, "cases": case_rows(data["benchmarks"], env["peaks"])}


def write_results(results: dict, outdir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<slug>-<yyyymmdd>.json`` and ``.md`` atomically; returns both paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(results['device'])}-{results['date'].replace('-', '')}"
    json_path, md_path = outdir / f"{stem}.json", outdir / f"{stem}.md"
    _atomic_write(json_path, json.dumps(results, indent=1) + "\n")
    _atomic_write(md_path, render_markdown(results) + "\n")
    return json_path, md_path


def render_markdown(results: dict) -> str:
    peaks = results["peaks"]
    return (
        f"**{results['device']}**, {results['date']}, commit {str(results['commit'])[:10]}, "
        f"torch {results['torch']}, triton {results['triton']}"
        + (f", CUDA {results['cuda']}, driver {results['driver']}" if results.get("cuda") else "")
        + f", size `{results.get('size')}`.\n\n"
        f"Peaks measured in the same run: copy {peaks['copy_gbps']:.1f} GB/s, matmul "
        f"{peaks['matmul_tflops_fp32']:.3f} TFLOP/s fp32 / "
        f"{peaks['matmul_tflops_bf16']:.3f} TFLOP/s bf16.\n\n" + markdown_table(results["cases"])
    )


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(results: dict, path: Path) -> Path:
    """Median time per case and provider (log scale), one panel per (dtype, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["batch"]) for r in results["cases"]})
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    present = {r["provider"] for r in results["cases"]}
    from benchmarks.cases import PROVIDERS

    providers = [p for p in PROVIDERS if p in present]
    for ax, (dtype, batch) in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in results["cases"] if (r["dtype"], r["batch"]) == (dtype, batch)]
        names = list(dict.fromkeys(r["case"] for r in rows))
        width = 0.8 / len(providers)
        for i, prov in enumerate(providers):
            ms = {r["case"]: r["median_ms"] for r in rows if r["provider"] == prov}
            xs = [j + i * width for j, n in enumerate(names) if n in ms]
            if xs:
                ax.bar(xs, [ms[n] for n in names if n in ms], width, label=prov)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("median ms")
        ax.set_title(f"{results['device']} - {dtype}, B={batch}, T={rows[0]['frames']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_date(path: Path) -> str | None:
    """A benchmark run's date, or None for other JSON files (the resource tables)."""
    data = json.loads(path.read_text())
    return data.get("date") if isinstance(data, dict) and "cases" in data else None


def latest_results(outdir: Path = RESULTS) -> Path:
    runs = [p for p in outdir.glob("*.json") if _run_date(p)]
    files = sorted(runs, key=lambda p: (_run_date(p), p.stat().st_mtime))
    if not files:
        raise FileNotFoundError(f"no results file in {outdir}")
    return files[-1]


def update_readme(results_path: Path, readme: Path = README) -> None:
    results = json.loads(results_path.read_text())
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} markers")
    rel = results_path.relative_to(ROOT) if results_path.is_relative_to(ROOT) else results_path
    body = (
        f"{BEGIN}\n_Generated by `python -m benchmarks.report --readme` from `{rel}`._\n\n"
        + render_markdown(results)
        + f"\n{END}"
    )
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    _atomic_write(readme, text[:start] + body + text[stop:])


def run_suite(pytest_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "benchmarks"),
            "--benchmark-only",
            f"--benchmark-json={out}",
            "-p",
            "no:cacheprovider",
            *pytest_args,
        ]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode not in (0,) or not out.exists():
            raise SystemExit(f"benchmark run failed (pytest exit {proc.returncode})")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", type=Path, help="read this pytest-benchmark JSON, do not run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--readme", action="store_true", help="regenerate README's section")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text()) if args.json else run_suite(args.pytest_args)
    results = results_from_pytest_json(data)
    json_path, md_path = write_results(results, args.out)
    print(f"wrote {json_path}\nwrote {md_path}")
    if not args.no_plot:
        print(f"wrote {plot(results, json_path.with_suffix('.png'))}")
    if args.readme:
        update_readme(latest_results(args.out))
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
