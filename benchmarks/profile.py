"""Where the time goes: ``python -m benchmarks.profile``.

Default: profiles ``model(x)`` with torch.profiler and splits the device time (CUDA kernel
time on a GPU, CPU op time otherwise) between the front-end (F-Attention, F-Encoder,
T-Attention), the Bi-LSTM T-Encoder and the classifier, using ``record_function`` ranges
around each part. Prints a table and, with ``--json FILE``, writes it as JSON.

``--cpu``: per-op CPU time (self time of each aten and custom op from torch.profiler; ONNX
Runtime's own profiler per op type) of the eager reference and ATFNN, forward and forward +
backward, and of the exported graph in ONNX Runtime, fp32 and int8.

``--launches`` (CUDA): every Triton launch of the fused front-end, forward and backward
(what a training step launches), timed on its own between two CUDA events
(:class:`LaunchTimer`, installed on the package's single launch path), median over
``--steps`` steps, each printed next to its floor from :mod:`benchmarks.floors` (the
measured copy bandwidth, fp32/tf32 matmul and exponential peaks) and the fraction of the
floor reached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from atfnn_fast.kernels import use_backend
from benchmarks import floors
from benchmarks.device import device_name, pick_device

PARTS = ("front_end", "t_encoder", "classifier")
# the tuning.FreqEncoderSettings field each F-Encoder launch label takes its setting from
FENC_SLOTS = {
    "_fenc_norm1_kernel": "norm1",
    "_fenc_ffn_kernel": "ffn",
    "_fenc_ffn_kernel[GRAD]": "ffn",
    "_fenc_bwd_dh1_kernel": "ffn_bwd_dh1",
    "_fenc_bwd_dy1_kernel": "ffn_bwd_dy1",
    "_fenc_bwd_norm1_kernel": "norm1_bwd",
    "_fenc_bwd_softmax_kernel": "softmax_bwd",
}


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", repr(kernel))


class LaunchTimer:
    """A launch recorder (``kernels.launch_path.recording``) that launches each kernel for
    real between two CUDA events: per-launch device time without a profiler.

    ``num_stages`` of the launch settings in force (:mod:`atfnn_fast.kernels.tuning`) is
    passed to the launch when the host code did not pass it (the sweep times stage counts
    this way); ``stages_injected`` records that it happened."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, kernel, grid, args, kwargs) -> None:
        import torch

        name = kernel_name(kernel)
        label = floors.launch_label(name, kwargs)
        kw = dict(kwargs)
        stages = self._stages(label, kw)
        injected = stages is not None and "num_stages" not in kw
        if injected:
            kw["num_stages"] = stages
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        kernel[grid](*args, **kw)
        end.record()
        consts = {k: v for k, v in kw.items() if isinstance(v, (bool, int, str))}
        self.records.append(
            dict(label=label, start=start, end=end, consts=consts, stages_injected=injected)
        )

    @staticmethod
    def _stages(label: str, kw: dict) -> int | None:
        from atfnn_fast.kernels import tuning

        if label in FENC_SLOTS:
            nf, c, p = kw.get("NF", 0), kw.get("C", 0), kw.get("P", 0)
            return getattr(tuning.freq_encoder_settings(nf, c, p), FENC_SLOTS[label]).num_stages
        if "KP" in kw and "GWP" in kw:
            backward = label.startswith("_band_bwd")
            return tuning.band_attention_settings(kw["KP"], kw["GWP"], backward).num_stages
        return None

    def times(self) -> list[dict]:
        """The records so far with ``ms`` (waits for the device); clears them."""
        import torch

        torch.cuda.synchronize()
        out = []
        for r in self.records:
            row = {k: v for k, v in r.items() if k not in ("start", "end")}
            out.append({**row, "ms": r["start"].elapsed_time(r["end"])})
        self.records = []
        return out


def instrument(model):
    """Wrap the model's parts in record_function ranges (instance-level, reversible)."""
    for name in ("front_end", "embed"):
        fn = getattr(model, name)
        label = "front_end" if name == "front_end" else "t_encoder"

        def wrapped(*args, _fn=fn, _label=label, **kwargs):
            with record_function(f"atfnn::{_label}"):
                return _fn(*args, **kwargs)

        setattr(model, name, wrapped)
    head = model.classifier.forward

    def classifier(*args):
        with record_function("atfnn::classifier"):
            return head(*args)

    model.classifier.forward = classifier
    return model


def split(model, x, steps: int = 5) -> dict:
    device = x.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        for _ in range(2):
            model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities, acc_events=True) as prof:
            for _ in range(steps):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
    totals = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("atfnn::"):
            part = event.key.removeprefix("atfnn::")
            us = event.device_time_total if device.type == "cuda" else event.cpu_time_total
            totals[part] += us / steps / 1e3
    whole = sum(totals[p] for p in PARTS)
    return {
        "device": device_name(device),
        "ms": {p: round(totals[p], 4) for p in PARTS},
        "share": {p: round(totals[p] / whole, 4) if whole else None for p in PARTS},
    }


def front_end_step(model, x):
    """One fused front-end forward and backward (what a training step launches)."""

    def step():
        for q in model.parameters():
            q.grad = None
        out, _ = model.front_end(x)  # the maps stay out of the loss, as in train_step
        out.float().square().mean().backward()

    return step


def launch_breakdown(cfg, batch: int, frames: int, peaks: dict, steps: int = 5) -> dict:
    """Per-launch device time of the fused front-end forward + backward on CUDA, median over
    ``steps`` steps after one warm-up, each with its counted floor."""
    import torch

    from atfnn_fast.kernels import launch as launch_path
    from atfnn_fast.kernels import tuning

    torch.manual_seed(0)
    model = ATFNN(cfg, check_finite=False).cuda()
    x = torch.randn(batch, 1, cfg.n_mels, frames, device="cuda")
    step, timer = front_end_step(model, x), LaunchTimer()
    with launch_path.recording(timer):
        step()
        timer.times()  # warm-up: compiles
        per_step = []
        for _ in range(steps):
            step()
            per_step.append(timer.times())
    expected = floors.fused_launches(cfg, "front_end", batch, frames, 4, backward=True)
    rows = rows_with_floors(per_step, expected, peaks, tuning.current_precision())
    total = sum(r["median_ms"] for r in rows)
    floor = sum(r["floor_ms"] or 0.0 for r in rows)
    return {
        "device": device_name(torch.device("cuda")),
        "batch": batch,
        "frames": frames,
        "peaks": peaks,
        "launches": rows,
        "total_ms": round(total, 4),
        "total_floor_ms": round(floor, 4),
    }


def rows_with_floors(per_step: list[list[dict]], expected, peaks: dict, precision: str):
    """One row per launch position: the median over steps, and the floor of the launch
    ``benchmarks.floors`` expects there (matched by label, in order of occurrence)."""
    counts: dict[str, list] = defaultdict(list)
    for label, c in expected:
        counts[label].append(c)
    seen: dict[str, int] = defaultdict(int)
    rows = []
    for i, first in enumerate(per_step[0]):
        label = first["label"]
        ms = statistics.median(step[i]["ms"] for step in per_step if i < len(step))
        k = seen[label]
        seen[label] += 1
        c = counts[label][k] if k < len(counts[label]) else None
        fl = (
            floors.floor_ms(c, peaks, floors.compute_peak(peaks, "float32", precision)) if c else {}
        )
        rows.append(
            {
                "label": label,
                "median_ms": round(ms, 4),
                "consts": first["consts"],
                "flops": c.flops if c else None,
                "exps": c.exps if c else None,
                "bytes": c.bytes if c else None,
                "floor_ms": round(fl["floor_ms"], 4) if fl.get("floor_ms") else None,
                "bound": fl.get("bound"),
                "of_floor": round(fl["floor_ms"] / ms, 4) if fl.get("floor_ms") else None,
            }
        )
    return rows


def launch_table(result: dict) -> str:
    lines = [
        f"fused front-end forward + backward, per launch, B={result['batch']}, "
        f"T={result['frames']}, {result['device']}",
        "| launch | warps | BT/BLOCK | median ms | floor ms | bound | of floor |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in result["launches"]:
        c = r["consts"]
        tile = c.get("BT", c.get("BLOCK", "-"))
        floor = "-" if r["floor_ms"] is None else f"{r['floor_ms']:.4f}"
        frac = "-" if r["of_floor"] is None else f"{r['of_floor']:.1%}"
        lines.append(
            f"| {r['label']} | {c.get('num_warps', '-')} | {tile} | {r['median_ms']:.4f} "
            f"| {floor} | {r['bound'] or '-'} | {frac} |"
        )
    lines.append(
        f"| total | | | {result['total_ms']:.4f} | {result['total_floor_ms']:.4f} | | "
        f"{result['total_floor_ms'] / result['total_ms']:.1%} |"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------- --cpu: per op
def torch_ops_breakdown(model, x: torch.Tensor, backward: bool, steps: int = 3) -> list[dict]:
    """Self CPU time per aten / custom op of ``model(x)`` (and its backward), averaged
    over ``steps`` calls after a warm-up: ``[{"op", "ms", "share", "calls"}]``."""

    def run():
        if backward:
            xx = x.detach().requires_grad_()
            model(xx).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [
        {
            "op": e.key,
            "ms": round(e.self_cpu_time_total / steps / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 4),
            "calls": e.count // steps,
        }
        for e in events
    ]
    return sorted(rows, key=lambda r: -r["ms"])


def onnxruntime_ops_breakdown(model, x: torch.Tensor, quantize, threads: int, steps: int = 3):
    """Kernel time per ONNX op type of the exported graph in ONNX Runtime's CPU provider
    (its own profiler), averaged over ``steps`` runs after a warm-up."""
    import collections
    import os
    import tempfile

    import onnxruntime as ort

    from atfnn_fast.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="atfnn-profile-") as folder:
        path = export_onnx(model, os.path.join(folder, "m.onnx"), quantize=quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        sess.run(None, feed)
        for _ in range(steps):
            sess.run(None, feed)
        with open(sess.end_profiling()) as fh:
            events = json.load(fh)
    per_op: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
    runs = steps + 1  # the warm-up run is in the profile too
    total = sum(per_op.values()) or 1
    return [
        {
            "op": op,
            "ms": round(us / runs / 1e3, 3),
            "share": round(us / total, 4),
            "calls": calls[op] // runs,
        }
        for op, us in per_op.most_common()
    ]


def cpu_breakdown(batch: int, frames: int, top: int = 8) -> dict:
    """Where a CPU's time goes, per op: the eager reference and ATFNN (forward, and forward
    + backward of the front-end and the whole model), ONNX Runtime fp32 and int8."""
    cfg = ATFNNConfig(frames=frames)
    torch.manual_seed(0)
    ref = ATFNNReference(cfg, check_finite=False).eval()
    fast = ATFNN(cfg, check_finite=False).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 1, cfg.n_mels, frames)
    result = {"batch": batch, "frames": frames, "threads": torch.get_num_threads(), "tables": {}}
    # ATFNN on its ATen CPU path (before the native core) and on the native core (its
    # default): the core's calls show as atfnn::native_* ranges
    runs = (("eager", ref, "auto"), ("fused=aten", fast, "aten"), ("native", fast, "auto"))
    for name, model, backend in runs:
        for mode, backward in (("forward", False), ("forward + backward", True)):
            with use_backend(backend):
                rows = torch_ops_breakdown(model, x, backward)
            result["tables"][f"torch {name}, {mode}"] = rows[:top]
    for quantize in (None, "int8"):
        rows = onnxruntime_ops_breakdown(ref, x, quantize, torch.get_num_threads())
        result["tables"][f"onnxruntime {'int8' if quantize else 'fp32'}, forward"] = rows[:top]
    return result


def ops_table(result: dict) -> str:
    lines = []
    for title, rows in result["tables"].items():
        total = sum(r["ms"] for r in rows)
        lines.append(
            f"{title}, B={result['batch']}, T={result['frames']}, "
            f"{result['threads']} threads (top {len(rows)}: {total:.1f} ms)"
        )
        lines += ["| op | ms | share | calls |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r['op']} | {r['ms']:.2f} | {r['share']:.1%} | {r['calls']} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--provider", choices=("eager", "fused"), default="eager")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument(
        "--launches",
        action="store_true",
        help="CUDA: per-launch times of the fused front-end forward + backward vs floors",
    )
    parser.add_argument("--steps", type=int, default=5, help="--launches: timed steps")
    parser.add_argument(
        "--peaks-json", help="--launches: read the peaks from this gpu_timing.py results file"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="per-op CPU time: eager, ATFNN (forward, forward + backward), ONNX Runtime "
        "fp32 / int8 (--batch defaults to 32 here)",
    )
    parser.add_argument("--threads", type=int, default=0, help="--cpu: threads, 0 = default")
    args = parser.parse_args(argv)
    if args.cpu:
        if args.threads:
            torch.set_num_threads(args.threads)
        batch = args.batch if "--batch" in (argv or sys.argv) else 32
        result = cpu_breakdown(batch, args.frames)
        print(ops_table(result))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return 0
    device = pick_device(args.device)
    if args.launches:
        if device.type != "cuda":
            parser.error("--launches times CUDA launches: it needs a CUDA device")
        from benchmarks.device import measure_peaks

        if args.peaks_json:
            with open(args.peaks_json) as fh:
                peaks = json.load(fh)["peaks"]
        else:
            peaks = measure_peaks(device)
        result = launch_breakdown(ATFNNConfig(), args.batch, args.frames, peaks, args.steps)
        print(launch_table(result))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return 0
    cls = ATFNNReference if args.provider == "eager" else ATFNN
    model = instrument(cls(ATFNNConfig(), check_finite=False).to(device).eval())
    x = torch.randn(args.batch, 1, 80, args.frames, device=device)
    result = {
        "provider": args.provider,
        "batch": args.batch,
        "frames": args.frames,
        **split(model, x),
    }
    print(f"full forward, {args.provider}, B={args.batch}, T={args.frames}, {result['device']}")
    for part in PARTS:
        print(f"  {part:<11}{result['ms'][part]:>10.3f} ms  {result['share'][part]:>7.1%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
