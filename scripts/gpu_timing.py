"""Device time of the F-Encoder, the front-end, the full forward and the training step, per
provider, against the floors of :mod:`benchmarks.floors` and the targets of issue #16.

    python scripts/gpu_timing.py --results-dir OUT [--batch 128] [--budget-s 240]
    python scripts/gpu_timing.py --device cpu --batch 2 --frames 16 --quick   # smoke run

Providers (B = 128, T = 128, default config, fp32 and bf16 autocast):

* ``eager``: :class:`atfnn_fast.ATFNNReference`;
* ``compile``: the same under ``torch.compile`` (default mode; the whole model for
  ``full_fwd`` / ``train_step``, where dynamo graph-breaks around the LSTM);
* ``fused``: :class:`atfnn_fast.ATFNN` (its Triton ops on CUDA);
* ``fused-compile``: ``torch.compile(ATFNN)``, the Triton ops inside the graph;
* ``cudagraph``: the fused call captured once in a CUDA graph and replayed; for
  ``train_step`` the whole step (forward, cross-entropy, backward, ``Adam(capturable=True)``
  step) with static inputs;
* ``compile-rank1`` (F-Encoder cases): ``torch.compile`` of the plain-torch rank-one math of
  ``kernels/freq_encoder_op/rank_one.py`` (forward; forward + backward through autograd): whether
  the hand-written kernels beat Inductor on the same algebra.

Every provider is timed the same way: on CUDA ``triton.testing.do_bench`` (CUDA events
around repeated calls, median, L2 flushed between calls), no host synchronisation inside the
timed call; on the CPU ``time.perf_counter``. Each output is checked against eager (relative
error) before it is timed. The peaks (a large device-to-device copy, bf16 / fp32 / tf32
matmuls, an exponential-throughput kernel) are measured first, in the same run, and every
row carries its case's floor (:func:`benchmarks.floors.floor_ms`) and the fraction of the
floor reached. A provider that fails records its error and the run goes on; a run past
``--budget-s`` records the rest as skipped. The JSON and markdown files are rewritten after
every row, so a run cut off early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference  # noqa: E402
from atfnn_fast.kernels.freq_encoder_op import rank_one as fm  # noqa: E402
from benchmarks import device as dev  # noqa: E402
from benchmarks import floors, report  # noqa: E402

CASES = ("train_step", "freq_encoder_fwd_bwd", "freq_encoder_fwd", "front_end_fwd", "full_fwd")
PROVIDERS = ("eager", "compile", "fused", "fused-compile", "cudagraph", "compile-rank1")
FUSED = ("fused", "fused-compile", "cudagraph")


def skip_reason(case: str, provider: str, device: torch.device) -> str | None:
    """Why the default run leaves this (case, provider) out, or None."""
    if provider == "compile-rank1" and not case.startswith("freq_encoder"):
        return "compile-rank1 runs the F-Encoder cases"
    if provider == "cudagraph" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if provider == "cudagraph" and case.endswith("fwd_bwd"):
        return "cudagraph runs the inference cases and train_step"
    if provider == "fused-compile" and case != "train_step":
        return "fused-compile runs train_step (ask for others with --case/--provider)"
    if provider == "compile" and case == "full_fwd":
        return "no compile target for full_fwd (issue #16)"
    return None


# ------------------------------------------------------------------------------ timing
def bench_ms(fn, device: torch.device, quick: bool) -> float:
    if device.type == "cuda":
        import triton

        warmup, rep = (5, 20) if quick else (25, 250)
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    fn()
    times = []
    for _ in range(3 if quick else 10):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _autocast(device: torch.device, dtype: str, graphed: bool = False):
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    # CUDA graphs need autocast's cast cache off (torch.cuda.graphs docs)
    return torch.autocast(device.type, dtype=getattr(torch, dtype), cache_enabled=not graphed)


def _capture(fn):
    """Capture ``fn`` in a CUDA graph after warm-up on a side stream; returns the replay,
    which gives the captured output (rewritten in place by each replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


# ------------------------------------------------------------------------------- cases
def _models(cfg, provider: str, device: torch.device, train: bool):
    torch.manual_seed(0)
    ref = ATFNNReference(cfg, check_finite=False).to(device).train(train)
    if provider not in FUSED:
        return ref, ref
    model = ATFNN(cfg, check_finite=False).to(device)
    model.load_state_dict(ref.state_dict())
    return ref, model.train(train)


def _forward(case: str, model, provider: str):
    """model -> a function of x giving the case's output tensor."""
    blk = floors.block(case)
    if provider == "compile-rank1":
        enc = model.f_encoder

        def rank1(x):
            derived = fm.derive(*enc.op_params(), num_heads=enc.num_heads)
            return fm.forward(x, None, derived, enc.eps)

        return torch.compile(rank1)
    if provider in ("compile", "fused-compile") and blk in ("full", "train"):
        model = torch.compile(model)
    if blk == "freq_encoder":
        body = model._f_encoder
    elif blk == "front_end":

        def body(x):
            return model.front_end(x)[0]

    else:
        body = model
    if provider in ("compile", "fused-compile") and blk not in ("full", "train"):
        body = torch.compile(body)
    return body


def build(case: str, provider: str, cfg, dtype: str, batch: int, frames: int, device):
    """``(fn, check_fn, want, graphed)``: the timed call (returns its output), the call
    whose output is checked (None: no check), the eager reference's output, and whether
    ``fn`` is to be captured in a CUDA graph."""
    train = case == "train_step"
    bwd = floors.has_backward(case)
    graphed = provider == "cudagraph"
    ref, model = _models(cfg, provider, device, train)
    amp = _autocast(device, dtype, graphed)
    x = torch.randn(batch, 1, cfg.n_mels, frames, device=device, requires_grad=bwd and not train)
    fwd = _forward(case, model, provider)

    if train:
        labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
        if graphed and model.t_encoder is not None:
            # flatten once: embed() re-flattens on every call, which would re-point the
            # LSTM weights inside the captured graph
            model.t_encoder.flatten_parameters()
            model.t_encoder.flatten_parameters = lambda: None
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.Adam(params, lr=5e-4, capturable=graphed)

        def fn():
            opt.zero_grad(set_to_none=True)
            with amp:
                logits = fwd(x)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            opt.step()
            return loss.detach()

        def want():
            torch.manual_seed(1)
            with _autocast(device, dtype):
                return F.cross_entropy(ref(x).float(), labels).detach()

        check_fn = None
        if provider in ("eager", "fused"):  # same dropout draws: the first loss must agree

            def check_fn():
                torch.manual_seed(1)
                return fn()

    elif bwd:
        grad = {}

        def fn():
            with amp:
                out = fwd(x)
            if "g" not in grad:
                grad["g"] = torch.randn_like(out)
            out.backward(grad["g"])
            x.grad = None
            return out.detach()

        ref_fwd = _forward(case, ref, "eager")

        def want():
            with torch.no_grad(), amp:
                return ref_fwd(x)

        check_fn = fn
    else:

        def fn():
            with torch.no_grad(), amp:
                return fwd(x)

        ref_fwd = _forward(case, ref, "eager")

        def want():
            with torch.no_grad(), amp:
                return ref_fwd(x)

        check_fn = fn
    return fn, check_fn, want, graphed


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float().reshape(-1), want.float().reshape(-1)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def time_case(case, provider, cfg, dtype, batch, frames, device, quick) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if provider in ("compile", "fused-compile", "compile-rank1"):
        torch._dynamo.reset()  # fresh caches: no recompile limit carried over between rows
    fn, check_fn, want, graphed = build(case, provider, cfg, dtype, batch, frames, device)
    err = None
    start = time.perf_counter()
    if check_fn is not None:
        expected = want()  # first: train_step's eager provider updates the reference's weights
        err = _rel_err(check_fn(), expected)
    else:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    if graphed:
        fn = _capture(fn)
    host = None
    if provider == "fused" and device.type == "cuda":  # host time to issue one call
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        host = (time.perf_counter() - t0) / 10 * 1e3
        torch.cuda.synchronize()
    ms = bench_ms(fn, device, quick)
    return dict(
        median_ms=round(ms, 4),
        rel_err_vs_eager=err,
        compile_s=round(first_s, 2) if "compile" in provider else None,
        host_ms_per_call=None if host is None else round(host, 4),
        peak_mem_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device.type == "cuda"
        else None,
    )


def with_floor(row: dict, cfg, peaks: dict) -> dict:
    elem = 4 if row["dtype"] == "float32" else 2
    counts = floors.case_counts(cfg, row["case"], row["batch"], row["frames"], elem)
    fl = floors.floor_ms(counts, peaks, floors.compute_peak(peaks, row["dtype"]))
    row.update(flops=counts.flops, exps=counts.exps, bytes=counts.bytes)
    row["floor_ms"] = None if fl["floor_ms"] is None else round(fl["floor_ms"], 4)
    row["bound"] = fl["bound"]
    ms = row.get("median_ms")
    row["of_floor"] = round(fl["floor_ms"] / ms, 4) if ms and fl["floor_ms"] else None
    return row


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results-dir", type=Path, help="write <device-slug>-<yyyymmdd>.{json,md}")
    ap.add_argument("--out", type=Path, help="also write the JSON to this path")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--case", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--provider", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--quick", action="store_true", help="short timing loops (smoke runs)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting rows after")
    ap.add_argument(
        "--all", action="store_true", help="run every asked (case, provider), no default skips"
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = dev.pick_device(args.device)
    if device.type != "cuda":
        args.dtype = [d for d in args.dtype if d == "float32"] or ["float32"]
    cfg = ATFNNConfig()
    peaks = dev.measure_peaks(device, tiny=args.quick)
    print("peaks:", json.dumps(peaks), flush=True)
    results = {
        "kind": "gpu_timing",
        **dev.run_metadata(device, f"B={args.batch}, T={args.frames}"),
        "peaks": peaks,
        "method": "scripts/gpu_timing.py: "
        + ("triton.testing.do_bench (CUDA events, median)" if device.type == "cuda" else "")
        + ("time.perf_counter, median" if device.type != "cuda" else "")
        + f", default config{', quick' if args.quick else ''}",
        "cases": [],
    }

    def save():
        if args.results_dir:
            report.write_gpu_results(results, args.results_dir)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")

    for case in args.case:
        for dtype in args.dtype:
            for provider in args.provider:
                base = dict(
                    case=case, provider=provider, dtype=dtype, batch=args.batch, frames=args.frames
                )
                reason = None if args.all else skip_reason(case, provider, device)
                if reason:
                    continue
                spent = time.perf_counter() - t_start
                if args.budget_s is not None and spent > args.budget_s:
                    row = {**base, "error": f"skipped: time budget of {args.budget_s:.0f} s spent"}
                else:
                    try:
                        row = {
                            **base,
                            **time_case(
                                case,
                                provider,
                                cfg,
                                dtype,
                                args.batch,
                                args.frames,
                                device,
                                args.quick,
                            ),
                        }
                    except Exception as exc:
                        tb = traceback.format_exc(limit=3)
                        row = {**base, "error": f"{exc!r}"[:400], "traceback": tb[-1200:]}
                        if device.type == "cuda":
                            try:  # a failed launch can leave the context unusable
                                torch.cuda.synchronize()
                                torch.cuda.empty_cache()
                            except Exception as again:
                                row["after_error"] = repr(again)[:300]
                row = with_floor(row, cfg, peaks)
                results["cases"].append(row)
                brief = {k: row.get(k) for k in ("median_ms", "floor_ms", "rel_err_vs_eager")}
                print(case, dtype, provider, row.get("error") or json.dumps(brief), flush=True)
                save()
    save()
    print(report.render_gpu_markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
