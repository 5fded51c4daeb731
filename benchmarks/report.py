"""Benchmark results: ``python -m benchmarks.report``.

Runs ``pytest benchmarks --benchmark-only`` (extra arguments after ``--`` go to pytest), or
reads a pytest-benchmark JSON file given with ``--json``, and writes
``benchmarks/results/<device-slug>-<yyyymmdd>.json`` in the schema of docs/design.md#benchmarks, a
markdown table next to it (ratios to eager, achieved GB/s and TFLOP/s as fractions of the
peaks measured in the same run) and a bar chart (PNG). ``--readme`` regenerates the performance
section of docs/benchmarks.md, which the README links (``--readme-only``: without running
anything) from the latest results
files: the latest GPU run (a ``scripts/gpu_timing.py`` file or a suite run on a GPU) beside
the latest CPU suite run.

``scripts/gpu_timing.py`` writes its own results through :func:`write_gpu_results` (same
file names; ``"kind": "gpu_timing"``; rows with ``floor_ms``, ``bound``, ``of_floor``,
``rel_err_vs_eager``) and its markdown through :func:`render_gpu_markdown`, which adds the
target table of issue #16 (:data:`TARGETS`).

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
README = ROOT / "docs" / "benchmarks.md"  # the generated tables live there, linked from README.md
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


def case_rows(benchmarks: list[dict], peaks: dict[str, float]) -> list[dict]:
    """pytest-benchmark entries (``extra_info`` + ``stats``) -> result rows."""
    from benchmarks.floors import Counts, compute_peak, floor_ms

    rows = []
    for bench in benchmarks:
        info, stats = bench["extra_info"], bench["stats"]
        median = stats["median"]
        matmul = compute_peak(peaks, info["dtype"], provider=info["provider"])
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
        }
        floor = floor_ms(Counts(info["flops"], info.get("exps", 0), info["bytes"]), peaks, matmul)
        row["exps"] = info.get("exps")
        row["floor_ms"] = None if floor["floor_ms"] is None else round(floor["floor_ms"], 4)
        row["bound"] = floor["bound"]
        row["of_floor"] = (
            round(floor["floor_ms"] / row["median_ms"], 4) if floor["floor_ms"] else None
        )
        rows.append(row)
    eager = {_key(r): r["median_ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        base = eager.get(_key(r))
        r["speedup_vs_eager"] = round(base / r["median_ms"], 3) if base else None
    from benchmarks.cases import CASES, PROVIDERS

    order = {p: i for i, p in enumerate(PROVIDERS)}

    rows.sort(
        key=lambda r: (
            CASES.index(r["case"]),
            r["dtype"],
            r["batch"],
            order.get(r["provider"], len(order)),
        )
    )
    return rows


def _key(row: dict) -> tuple:
    return (row["case"], row["dtype"], row["batch"], row["frames"])


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: list[dict], device_type: str = "cpu") -> str:
    """The results file's table: per row the median, its IQR as a share of the median, the
    ratio to eager with its spread over both IQRs (:func:`ratio_text`), the achieved
    bandwidth and throughput as shares of the ceilings, the floor and a ``noisy`` flag."""
    mem = any(r.get("peak_mem_mb") is not None for r in rows)
    head = (
        "| case | dtype | B | provider | median ms | IQR | x eager [IQR range] | GB/s (of copy) | "
        "TFLOP/s (of matmul) | floor ms (bound) | of floor |"
        + (" peak MB |" if mem else "")
        + " compile s | note |\n"
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: |" if mem else "")
        + " ---: | --- |"
    )
    lines = [head]
    eager = {_key(r): r for r in rows if r["provider"] == "eager"}
    for r in rows:
        bound = f" ({r['bound']})" if r.get("bound") else ""
        rel, ratio, noisy = ratio_text(r, eager.get(_key(r)))
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['batch']} "
            f"| {provider_label(r['provider'], device_type)} "
            f"| {r['median_ms']:.3f} | {_fmt(rel, '.0%')} | {ratio} "
            f"| {r['gbps']:.2f} ({_fmt(r['frac_copy'], '.1%')}) "
            f"| {r['tflops']:.4f} ({_fmt(r['frac_matmul'], '.1%')}) "
            f"| {_fmt(r['floor_ms'], '.3f')}{bound} | {_fmt(r.get('of_floor'), '.1%')} |"
            + (f" {_fmt(r['peak_mem_mb'], '.1f')} |" if mem else "")
            + f" {_fmt(r['compile_s'], '.1f')} | {row_note(r, noisy)} |"
        )
    return "\n".join(lines)


# A row is flagged noisy when its own or its eager row's interquartile range exceeds this
# share of the median (our choice): its ratio to eager is then uncertain by about as much.
NOISY_IQR = 0.2
TERMINAL_WIDTH = 120


def provider_label(provider: str, device_type: str) -> str:
    """A provider named for what it runs: on a CPU ``fused`` is ATFNN's ATen CPU path (the
    Triton kernels need CUDA; ``native`` is its native core)."""
    if device_type != "cuda" and provider == "fused":
        return "fused=aten"
    return provider


def ratio_spread(row: dict, eager: dict | None) -> tuple[float, float] | None:
    """The range of ``eager / row`` over the interquartile ranges of both (each taken as
    median -/+ IQR / 2), or None without IQRs."""
    if eager is None or row.get("iqr_ms") is None or eager.get("iqr_ms") is None:
        return None
    lo_e, hi_e = (eager["median_ms"] + k * eager["iqr_ms"] / 2 for k in (-1, 1))
    lo_r, hi_r = (row["median_ms"] + k * row["iqr_ms"] / 2 for k in (-1, 1))
    if lo_r <= 0:
        return None
    return max(lo_e, 0.0) / hi_r, hi_e / lo_r


def row_note(row: dict, noisy: bool) -> str:
    """``noisy`` (:func:`ratio_text`) and ``above ceiling`` where a row ran faster than its
    floor, which only an under-measured ceiling (or a miscounted case) allows."""
    notes = ["noisy"] if noisy else []
    if (row.get("of_floor") or 0) > 1:
        notes.append("above ceiling")
    return ", ".join(notes)


def ratio_text(row: dict, eager: dict | None) -> tuple[float | None, str, bool]:
    """(IQR as a share of the median, ``x eager [range over both IQRs]``, noisy): a row is
    noisy when its own or its eager row's IQR exceeds :data:`NOISY_IQR` of the median."""
    rel = row["iqr_ms"] / row["median_ms"] if row.get("iqr_ms") is not None else None
    noisy = rel is not None and rel > NOISY_IQR
    if eager is not None and eager.get("iqr_ms") is not None and eager is not row:
        noisy = noisy or eager["iqr_ms"] / eager["median_ms"] > NOISY_IQR
    spread = ratio_spread(row, eager) if eager is not row else None
    ratio = _fmt(row.get("speedup_vs_eager"), ".2f")
    if spread is not None:
        ratio += f" [{spread[0]:.2f}-{spread[1]:.2f}]"
    return rel, ratio, noisy


def terminal_table(rows: list[dict], peaks: dict, device_type: str) -> str:
    """The suite's results for a terminal, at most :data:`TERMINAL_WIDTH` columns: the
    ceilings measured in the run, then per row the median, its IQR as a share of the
    median, the ratio to eager with its spread over both IQRs, the floor and a ``noisy``
    flag (:data:`NOISY_IQR`)."""
    parts = [f"copy {peaks['copy_gbps']:.1f} GB/s"] if peaks.get("copy_gbps") else []
    if peaks.get("matmul_tflops_fp32"):
        parts.append(f"matmul {peaks['matmul_tflops_fp32']:.3f} TFLOP/s fp32")
    if peaks.get("matmul_tflops_bf16"):
        parts.append(f"{peaks['matmul_tflops_bf16']:.3f} bf16")
    if peaks.get("matmul_tops_int8"):
        parts.append(f"{peaks['matmul_tops_int8']:.3f} TOP/s int8")
    if peaks.get("exp_per_s"):
        parts.append(f"exp {peaks['exp_per_s']:.3g}/s")
    lines = [
        "ceilings measured in this run: " + (", ".join(parts) or "none"),
        "(each the best of the run's start and end); floor = max(flops / matmul, exps / exp, "
        "bytes / copy),",
        "the int8 matmul for an int8 provider; x eager: median ratio [range over both IQRs]",
    ]
    if device_type != "cuda":
        lines.append(
            "fused=aten: ATFNN's ATen CPU path; native: its native CPU core (the Triton kernels "
            "run on CUDA only)"
        )
    header = (
        f"{'case':<22} {'dtype':<8} {'B':>4} {'provider':<16} {'median ms':>10} {'IQR':>6} "
        f"{'x eager [IQR range]':>22} {'floor ms':>9} {'of floor':>8}  note"
    )
    lines += [header, "-" * len(header)]
    eager = {_key(r): r for r in rows if r["provider"] == "eager"}
    for r in rows:
        rel, ratio, noisy = ratio_text(r, eager.get(_key(r)))
        lines.append(
            f"{r['case'][:22]:<22} {r['dtype'][:8]:<8} {r['batch']:>4} "
            f"{provider_label(r['provider'], device_type)[:16]:<16} {r['median_ms']:>10.3f} "
            f"{_fmt(rel, '.0%'):>6} {ratio:>22} {_fmt(r.get('floor_ms'), '.3f'):>9} "
            f"{_fmt(r.get('of_floor'), '.1%'):>8}  {row_note(r, noisy)}".rstrip()
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
    keys += ("peaks_start_end",)
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
    exp = f" / {peaks['matmul_tops_int8']:.3f} TOP/s int8" if peaks.get("matmul_tops_int8") else ""
    exp += f", exp {peaks['exp_per_s']:.3g}/s" if peaks.get("exp_per_s") else ""
    on_cpu = str(results["device"]).startswith("CPU")
    cpu_note = (
        " On a CPU, `fused` is ATFNN's CPU implementation of its fused ops (the Triton "
        "kernels run on CUDA only)."
        if on_cpu
        else ""
    )
    return (
        f"**{results['device']}**, {results['date']}, commit {str(results['commit'])[:10]}, "
        f"torch {results['torch']}, triton {results['triton']}"
        + (f", CUDA {results['cuda']}, driver {results['driver']}" if results.get("cuda") else "")
        + f", size `{results.get('size')}`.\n\n"
        f"Peaks measured in the same run: copy {peaks['copy_gbps']:.1f} GB/s, matmul "
        f"{peaks['matmul_tflops_fp32']:.3f} TFLOP/s fp32 / "
        f"{peaks['matmul_tflops_bf16']:.3f} TFLOP/s bf16{exp}. Floor = max(flops / matmul "
        "peak, exps / exp peak, bytes / copy bandwidth), counted in `benchmarks/floors.py`; "
        "an int8 provider is held to the int8 matmul peak (floor and share of matmul); "
        "x eager is the ratio of medians, IQR the interquartile range as a share of the "
        f"median.{cpu_note}\n\n" + markdown_table(results["cases"])
    )


# issue #16's targets: case -> (fused x eager, fused x torch.compile); None: no target
TARGETS = {
    "freq_encoder_fwd": (25, 5),
    "freq_encoder_fwd_bwd": (10, 5),
    "front_end_fwd": (20, 4),
    "full_fwd": (2, None),
    "train_step": (3, 2),
}
GPU_PROVIDERS = ("eager", "compile", "compile-rank1", "fused", "fused-compile", "cudagraph")
FUSED_FAMILY = ("fused", "fused-compile", "cudagraph")


def is_gpu_timing(results: dict) -> bool:
    """A ``scripts/gpu_timing.py`` results file (also the first H100 one, from before the
    ``kind`` key)."""
    return results.get("kind") == "gpu_timing" or "gpu_timing" in str(results.get("method", ""))


def _ms(rows: list[dict], case: str, dtype: str, provider: str) -> float | None:
    for r in rows:
        if (r["case"], r["dtype"], r["provider"]) == (case, dtype, provider):
            return r.get("median_ms")
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def target_rows(results: dict) -> list[dict]:
    """Issue #16's table: per case and dtype, fused vs eager, vs torch.compile and vs
    compile-rank1, and the best of the fused family (fused, fused-compile, cudagraph)."""
    rows = results["cases"]
    out = []
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    for dtype in dtypes:
        for case, (t_eager, t_compile) in TARGETS.items():
            eager = _ms(rows, case, dtype, "eager")
            fused = _ms(rows, case, dtype, "fused")
            if eager is None and fused is None:
                continue
            family = {p: _ms(rows, case, dtype, p) for p in FUSED_FAMILY}
            family = {p: v for p, v in family.items() if v}
            best = min(family, key=family.get) if family else None
            x_eager = _ratio(eager, fused)
            x_compile = _ratio(_ms(rows, case, dtype, "compile"), fused)
            out.append(
                dict(
                    case=case,
                    dtype=dtype,
                    x_eager=x_eager,
                    target_eager=t_eager,
                    x_compile=x_compile,
                    target_compile=t_compile,
                    x_rank1=_ratio(_ms(rows, case, dtype, "compile-rank1"), fused),
                    best=best,
                    best_x_eager=_ratio(eager, family.get(best)) if best else None,
                    met=None
                    if x_eager is None
                    else x_eager >= t_eager
                    and (t_compile is None or (x_compile or 0) >= t_compile),
                )
            )
    return out


def _x(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}x"
    return text if target is None else f"{text} (>= {target}x)"


def target_table(results: dict) -> str:
    lines = [
        "| case | dtype | fused x eager (target) | fused x torch.compile (target) | "
        "fused x compile-rank1 | best fused variant x eager | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in target_rows(results):
        best = f"{r['best']} {_x(r['best_x_eager'])}" if r["best"] else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(
            f"| {r['case']} | {r['dtype']} | {_x(r['x_eager'], r['target_eager'])} "
            f"| {_x(r['x_compile'], r['target_compile'])} | {_x(r['x_rank1'])} | {best} | {met} |"
        )
    return "\n".join(lines)


def gpu_table(results: dict) -> str:
    rows = results["cases"]
    lines = [
        "| case | dtype | provider | median ms | x eager | x compile | floor ms (bound) "
        "| of floor | rel. err vs eager | compile s | host ms | peak MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {p: i for i, p in enumerate(GPU_PROVIDERS)}
    cases = list(TARGETS)
    rows = sorted(
        rows,
        key=lambda r: (
            r["dtype"] != "float32",
            cases.index(r["case"]) if r["case"] in cases else len(cases),
            order.get(r["provider"], len(order)),
        ),
    )
    for r in rows:
        head = f"| {r['case']} | {r['dtype']} | {r['provider']} "
        if r.get("median_ms") is None:
            err = str(r.get("error", "no time")).replace("|", "/")[:160]
            lines.append(head + f"| failed: {err} | | | | | | | | |")
            continue
        ms = r["median_ms"]
        floor = r.get("floor_ms")
        err = r.get("rel_err_vs_eager")
        floor_text = "-" if floor is None else f"{floor:.3f} ({r.get('bound')})"
        lines.append(
            head + f"| {ms:.3f} "
            f"| {_x(_ratio(_ms(rows, r['case'], r['dtype'], 'eager'), ms))} "
            f"| {_x(_ratio(_ms(rows, r['case'], r['dtype'], 'compile'), ms))} "
            f"| {floor_text} "
            f"| {_fmt(r.get('of_floor'), '.1%')} | {_fmt(err, '.1e')} "
            f"| {_fmt(r.get('compile_s'), '.1f')} | {_fmt(r.get('host_ms_per_call'), '.3f')} "
            f"| {_fmt(r.get('peak_mem_mb'), '.0f')} |"
        )
    return "\n".join(lines)


def render_gpu_markdown(results: dict) -> str:
    peaks = results.get("peaks") or {}
    peak_text = (
        ", ".join(f"{k} {v}" for k, v in peaks.items())
        if peaks
        else "not measured in this run (no floors)"
    )
    return (
        f"**{results['device']}**, {results['date']}, commit {str(results.get('commit'))[:10]}, "
        f"torch {results.get('torch')}, triton {results.get('triton')}"
        + (f", CUDA {results['cuda']}, driver {results['driver']}" if results.get("cuda") else "")
        + f", {results.get('size') or 'B=128, T=128'}, default config.\n\n"
        f"Method: {results.get('method', '-')}\n\n"
        f"Peaks measured in the same run: {peak_text}. Floor = max(flops / matmul peak, "
        "exps / exp peak, bytes / copy bandwidth), counted in `benchmarks/floors.py`.\n\n"
        "Targets of issue #16 (fused = `ATFNN`):\n\n"
        + target_table(results)
        + "\n\nAll rows:\n\n"
        + gpu_table(results)
    )


def write_gpu_results(results: dict, outdir: Path) -> tuple[Path, Path]:
    """``<slug>-<yyyymmdd>.json`` and ``.md`` of a gpu_timing run, written atomically."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(results['device'])}-{results['date'].replace('-', '')}"
    json_path, md_path = outdir / f"{stem}.json", outdir / f"{stem}.md"
    _atomic_write(json_path, json.dumps(results, indent=1) + "\n")
    _atomic_write(
        md_path,
        f"# {results['device']}, {results['date']}\n\n" + render_gpu_markdown(results) + "\n",
    )
    return json_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bar_positions(tick: float, count: int, width: float) -> list[float]:
    """Centres of ``count`` adjacent bars of ``width``, centred on ``tick``."""
    return [tick + (i - (count - 1) / 2) * width for i in range(count)]


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
    on_cpu = str(results["device"]).startswith("CPU")
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    for ax, (dtype, batch) in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in results["cases"] if (r["dtype"], r["batch"]) == (dtype, batch)]
        names = list(dict.fromkeys(r["case"] for r in rows))
        width = 0.8 / max(len({r["provider"] for r in rows if r["case"] == n}) for n in names)
        labelled = set()
        for j, name in enumerate(names):
            # each case's bars centred on its tick, however many providers it has
            ms = {r["provider"]: r["median_ms"] for r in rows if r["case"] == name}
            here = [p for p in providers if p in ms]
            for prov, x in zip(here, bar_positions(j, len(here), width), strict=True):
                label = None
                if prov not in labelled:
                    labelled.add(prov)
                    label = provider_label(prov, "cpu" if on_cpu else "cuda")
                ax.bar(x, ms[prov], width, color=colors[prov], label=label)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("median ms")
        ax.set_title(f"{results['device']} - {dtype}, B={batch}, T={rows[0]['frames']}")
        by_label = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        names_in_order = [
            provider_label(p, "cpu" if on_cpu else "cuda") for p in providers if p in labelled
        ]
        ax.legend([by_label[n] for n in names_in_order], names_in_order, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_date(path: Path) -> str | None:
    """A benchmark run's date, or None for other JSON files (the resource tables)."""
    data = json.loads(path.read_text())
    return data.get("date") if isinstance(data, dict) and "cases" in data else None


def _on_gpu(path: Path) -> bool:
    return not str(json.loads(path.read_text()).get("device", "")).startswith("CPU")


def latest_results(outdir: Path = RESULTS, gpu: bool | None = None) -> Path:
    """The latest results file (by date, then modification time); ``gpu`` True / False:
    the latest GPU / CPU run only."""
    runs = [p for p in outdir.glob("*.json") if _run_date(p)]
    if gpu is not None:
        runs = [p for p in runs if _on_gpu(p) == gpu]
    files = sorted(runs, key=lambda p: (_run_date(p), p.stat().st_mtime))
    if not files:
        raise FileNotFoundError(
            f"no {'' if gpu is None else ('GPU ' if gpu else 'CPU ')}results file in {outdir}"
        )
    return files[-1]


def _section(path: Path) -> str:
    results = json.loads(path.read_text())
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    render = render_gpu_markdown if is_gpu_timing(results) else render_markdown
    return f"From `{rel}`:\n\n" + render(results)


def update_readme(
    results_path: Path | None = None, readme: Path = README, outdir: Path = RESULTS
) -> None:
    """Rewrite the README's performance section: the latest GPU run and the latest CPU run
    of ``outdir`` (``results_path``: show that file alone)."""
    if results_path is not None:
        paths = [results_path]
    else:
        paths = []
        for gpu in (True, False):
            try:
                paths.append(latest_results(outdir, gpu=gpu))
            except FileNotFoundError:
                pass
        if not paths:
            raise FileNotFoundError(f"no results file in {outdir}")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} markers")
    titles = {True: "### Latest GPU run\n\n", False: "### Latest CPU run\n\n"}
    parts = [titles[_on_gpu(p)] + _section(p) for p in paths]
    body = (
        f"{BEGIN}\n_Generated by `python -m benchmarks.report --readme-only` from the latest "
        "results files._\n\n" + "\n\n".join(parts) + f"\n{END}"
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
    parser.add_argument(
        "--readme", action="store_true", help="regenerate docs/benchmarks.md's tables"
    )
    parser.add_argument(
        "--readme-only",
        action="store_true",
        help="only regenerate docs/benchmarks.md's tables from the latest GPU and CPU "
        "results files",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    if args.readme_only:
        update_readme(outdir=args.out)
        print(f"updated {README}")
        return 0
    data = json.loads(args.json.read_text()) if args.json else run_suite(args.pytest_args)
    results = results_from_pytest_json(data)
    json_path, md_path = write_results(results, args.out)
    print(f"wrote {json_path}\nwrote {md_path}")
    if not args.no_plot:
        print(f"wrote {plot(results, json_path.with_suffix('.png'))}")
    if args.readme:
        update_readme(outdir=args.out)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
