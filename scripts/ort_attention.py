"""The F-Encoder's attention node in ONNX Runtime: every candidate form, measured side by side.

Issue 29 ("Kernels VI") item 7: which form of the rank-one attention the exported graph
should use (docs/design.md#onnx-export, the CPU section's ONNX Runtime paragraph). The
candidates are the attention forms of :mod:`atfnn_fast.export.graph` (``ATTENTION_FORMS``):

* ``standard``: ONNX's ``Attention`` op (opset 23), head size 1, one key head shared;
* ``contrib-mha``: ONNX Runtime's ``com.microsoft`` ``MultiHeadAttention``;
* ``contrib-attention``: ``com.microsoft`` ``Attention`` with the rank-one projection inside;
* ``materialized``: ``Mul`` (the score tensor) + ``Softmax`` + ``MatMul``, the reference point.

Each form is exported from one paper-size model (same weights), checked against eager
PyTorch (``validate_onnx``), then timed in ONNX Runtime's CPU provider in one process,
candidates interleaved (as ``validate.median_ms``: blocks of pause, warm-up and timed
calls, medians; with one thread also the calling thread's CPU time, which load inflates far
less), at each batch size and each intra-op thread count (0 = ONNX Runtime's default, one
per physical core). ONNX Runtime's profiler then gives each form's attention node(s) as a
share of the graph's kernel time. ``--int8`` adds the int8 export: which nodes became integer
ops, and its time against float32 (the LSTM node's time from the profiler in both).

ONNX Runtime's CPU kernels (MLAS) pick their ISA from the CPU's features at load; the
``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` caps reach torch (the eager side) only. The
report's first lines say which CPU, flags and ONNX Runtime build ran.

Run quietly (it prints a Markdown report; ``--json`` writes the figures too)::

    nice -n 15 .venv/bin/python scripts/ort_attention.py
    nice -n 15 .venv/bin/python scripts/ort_attention.py --batches 32 --threads 0 --int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.export import export_onnx, onnx_export, validate_onnx
from atfnn_fast.export.graph import ATTENTION_FORMS
from atfnn_fast.export.validate import session

# the op types of each form's attention, as ONNX Runtime's profiler names them
ATTENTION_OPS = {
    "standard": {"Attention"},
    "contrib-mha": {"MultiHeadAttention"},
    "contrib-attention": {"Attention"},
    "materialized": set(),  # the Mul / Softmax / MatMul around the one Softmax: by node name
}


def cpu_line() -> str:
    """CPU model and the SIMD features that decide MLAS's kernels."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags
    ]
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(simd) or 'no AVX2'}"


def timed(fns: dict, runs: int, blocks: int, pause: float = 0.05) -> tuple[dict, dict]:
    """``validate.median_ms``'s interleaving (blocks of pause, warm-up, ``runs`` timed calls
    per function), returning the median wall ms and the median CPU ms of this thread."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            time.sleep(pause)
            fn()
            for _ in range(runs):
                start, start_cpu = time.perf_counter(), time.thread_time()
                fn()
                cpu[name].append(time.thread_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
    medians = [{k: statistics.median(v) * 1e3 for k, v in d.items()} for d in (wall, cpu)]
    return medians[0], medians[1]


def export_form(model, path: Path, form: str, quantize: str | None = None) -> Path:
    """``export_onnx`` with the F-Encoder's attention in ``form`` (any of ATTENTION_FORMS,
    shipped as a target or not)."""
    with mock.patch.dict(onnx_export.TARGETS, {"_measured": form}):
        return export_onnx(model, path, target="_measured", quantize=quantize)


def attention_nodes(path: Path, form: str) -> set[str]:
    """Names of the nodes that compute the attention in the exported graph."""
    import onnx

    graph = onnx.load(str(path)).graph
    if form != "materialized":
        return {n.name for n in graph.node if n.op_type in ATTENTION_OPS[form]}
    producer = {o: n for n in graph.node for o in n.output}
    names = set()
    for node in graph.node:
        if node.op_type == "Softmax":
            names.add(node.name)
            if node.input[0] in producer:
                names.add(producer[node.input[0]].name)
            names.update(n.name for n in graph.node if node.output[0] in n.input)
    return names


def profile(
    paths: dict[str, Path], batch: int, threads: int, calls: int, config
) -> dict[str, dict]:
    """ONNX Runtime's profiler on every file in ``paths``, the files' calls interleaved
    (after one warm-up call each, left out): per file, the median over calls of each node's
    and each op type's kernel milliseconds (``nodes``, ``ops``) and of the graph's sum of
    node kernel times (``total``)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(
        (batch, 1, config.n_mels, config.frames), dtype=np.float32
    )
    with tempfile.TemporaryDirectory(prefix="atfnn-prof-") as tmp:
        sessions = {}
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / name)
            sessions[name] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        for _ in range(calls + 1):
            for sess in sessions.values():
                time.sleep(0.05)  # let the previous session's threads go idle
                sess.run(None, {"spectrogram": x})
        return {name: _per_call(Path(s.end_profiling())) for name, s in sessions.items()}


def _per_call(trace: Path) -> dict[str, dict]:
    """Median per call (the first call dropped) of node / op-type kernel times, in ms."""
    events = json.loads(trace.read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_call = []
    for begin, end in runs[1:]:
        node_ms: dict[str, float] = defaultdict(float)
        op_ms: dict[str, float] = defaultdict(float)
        for e in nodes:
            if begin <= e["ts"] <= end:
                node_ms[e["name"][: -len("_kernel_time")]] += e["dur"] / 1e3
                op_ms[e["args"].get("op_name", "?")] += e["dur"] / 1e3
        per_call.append((node_ms, op_ms))

    def median_of(index: int) -> dict[str, float]:
        keys = {k for call in per_call for k in call[index]}
        return {k: statistics.median(c[index].get(k, 0.0) for c in per_call) for k in keys}

    totals = [sum(c[0].values()) for c in per_call]
    return {"nodes": median_of(0), "ops": median_of(1), "total": statistics.median(totals)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", nargs="+", default=list(ATTENTION_FORMS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--blocks", type=int, default=5, help="interleaved blocks (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per block (default 3)")
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--int8", action="store_true", help="also the int8 export vs float32")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    unknown = [f for f in args.forms if f not in ATTENTION_FORMS]
    if unknown:
        parser.error(f"--forms: {unknown} not in {list(ATTENTION_FORMS)}")

    import onnxruntime as ort

    torch.manual_seed(0)
    config = ATFNNConfig(dropout=0.0)  # paper size
    model = ATFNN(config).eval()
    with torch.no_grad():  # weights well away from the init's small values
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    out: dict = {
        "cpu": cpu_line(),
        "onnxruntime": f"{ort.__version__} ({ort.get_build_info()})",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "caps": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
        "validation": {},
        "times_ms": {},
        "attention_share": {},
    }
    print(f"# ONNX Runtime attention forms\n\nCPU: {out['cpu']}\nONNX Runtime {out['onnxruntime']}")
    print(f"torch CPU capability {out['torch_cpu_capability']}, caps {out['caps']}\n")
    with tempfile.TemporaryDirectory(prefix="atfnn-ortattn-") as tmp:
        paths = {f: export_form(model, Path(tmp) / f"{f}.onnx", f) for f in args.forms}
        print("| form | max rel error vs eager (B = 1, 7) | verdict |\n|---|--:|---|")
        for form, path in paths.items():
            report = validate_onnx(path, model, batch_sizes=(1, 7), seed=0, raise_on_failure=False)
            worst = max(r.max_rel for r in report.results)
            out["validation"][form] = {"max_rel": worst, "passed": report.passed}
            print(f"| {form} | {worst:.2e} | {'PASS' if report.passed else 'FAIL'} |")

        print("\nMedian ms per call, forms interleaved (measured in one process); with one")
        print("thread, the median CPU ms of the calling thread in brackets (robust to load):\n")
        print("| threads | batch | " + " | ".join(args.forms) + " |")
        print("|--:|--:|" + "--:|" * len(args.forms))
        for threads in args.threads:
            sessions = {
                f: session(p, ["CPUExecutionProvider"], threads=threads) for f, p in paths.items()
            }
            for batch in args.batches:
                x = torch.randn(batch, 1, config.n_mels, config.frames).numpy()
                fns = {
                    f: (lambda s=s, x=x: s.run(None, {"spectrogram": x}))
                    for f, s in sessions.items()
                }
                times, cpu = timed(fns, runs=args.runs, blocks=args.blocks)
                out["times_ms"][f"t{threads}_b{batch}"] = times
                cells = [f"{times[f]:.2f}" for f in args.forms]
                if threads == 1:  # one thread works on the calling thread: its CPU time too
                    out["times_ms"][f"cpu_t{threads}_b{batch}"] = cpu
                    cells = [f"{c} ({cpu[f]:.2f})" for c, f in zip(cells, args.forms, strict=True)]
                print(f"| {threads} | {batch} | {' | '.join(cells)} |")
            del sessions

        if not args.no_profile:
            print("\nONNX Runtime profiler, forms interleaved, medians per call: the attention")
            print("node(s) in ms, the graph's node kernel time in ms, the attention's share:\n")
            print(
                "| threads | batch | form | attention ms | graph ms | share | top ops |\n"
                "|--:|--:|---|--:|--:|--:|---|"
            )
            for threads in args.threads:
                for batch in args.batches:
                    profs = profile(paths, batch, threads, args.profile_runs, config)
                    for form, path in paths.items():
                        prof = profs[form]
                        names = attention_nodes(path, form)
                        att = sum(v for k, v in prof["nodes"].items() if k in names)
                        total = prof["total"]
                        top = sorted(prof["ops"].items(), key=lambda kv: -kv[1])[:4]
                        out["attention_share"][f"t{threads}_b{batch}_{form}"] = {
                            "attention_ms": att,
                            "total_ms": total,
                            "ops_ms": prof["ops"],
                        }
                        tops = ", ".join(f"{k} {v / total:.0%}" for k, v in top)
                        print(
                            f"| {threads} | {batch} | {form} | {att:.2f} | {total:.2f} | "
                            f"{att / total:.0%} | {tops} |"
                        )

        if args.int8:
            int8_report(model, config, Path(tmp), args, out)
    if args.json:
        tmp_json = args.json.with_name(args.json.name + ".tmp")
        tmp_json.write_text(json.dumps(out, indent=1))
        os.replace(tmp_json, args.json)
    return 0


def int8_report(model, config, tmp: Path, args, out: dict) -> None:
    """Which nodes the int8 export turns into integer ops, and its speed against float32."""
    import onnx

    fp32 = export_form(model, tmp / "fp32.onnx", "standard")
    int8 = export_form(model, tmp / "int8.onnx", "standard", quantize="int8")
    before = defaultdict(int)
    for node in onnx.load(str(fp32)).graph.node:
        before[(node.domain or "ai.onnx", node.op_type)] += 1
    after = defaultdict(int)
    for node in onnx.load(str(int8)).graph.node:
        after[(node.domain or "ai.onnx", node.op_type)] += 1
    changed = {f"{d}::{o}": n for (d, o), n in after.items() if before.get((d, o)) != n}
    gone = {f"{d}::{o}": n for (d, o), n in before.items() if (d, o) not in after}
    out["int8_nodes"] = {"new_or_changed": changed, "gone": gone}
    print("\n## int8 export\n")
    print(f"node types new or changed in count: {changed}")
    print(f"node types gone: {gone}")
    files = {"fp32": fp32, "int8": int8}
    print("\nMedian ms per call, interleaved (one thread: CPU ms in brackets); the LSTM nodes'")
    print("kernel ms from the profiler:\n")
    print("| threads | batch | fp32 ms | int8 ms | fp32 / int8 | LSTM ms fp32 | LSTM ms int8 |")
    print("|--:|--:|--:|--:|--:|--:|--:|")
    for threads in args.threads:
        sessions = {
            k: session(p, ["CPUExecutionProvider"], threads=threads) for k, p in files.items()
        }
        for batch in args.batches:
            x = torch.randn(batch, 1, config.n_mels, config.frames).numpy()
            fns = {
                k: (lambda s=s, x=x: s.run(None, {"spectrogram": x})) for k, s in sessions.items()
            }
            wall, cpu = timed(fns, runs=args.runs, blocks=args.blocks)
            times = cpu if threads == 1 else wall
            profs = profile(files, batch, threads, args.profile_runs, config)
            lstm = {
                k: sum(v for op, v in p["ops"].items() if "LSTM" in op) for k, p in profs.items()
            }
            out["times_ms"][f"int8_t{threads}_b{batch}"] = {
                "wall": wall,
                "cpu": cpu,
                "lstm_ms": lstm,
            }
            cells = {
                k: f"{wall[k]:.2f}" + (f" ({cpu[k]:.2f})" if threads == 1 else "") for k in files
            }
            print(
                f"| {threads} | {batch} | {cells['fp32']} | {cells['int8']} | "
                f"{times['fp32'] / times['int8']:.2f} | {lstm['fp32']:.2f} | {lstm['int8']:.2f} |"
            )
        del sessions


if __name__ == "__main__":
    sys.exit(main())
