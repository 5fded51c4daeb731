"""Device-time of the F-Encoder, the front-end and the full forward on a CUDA GPU, per provider.

    python scripts/gpu_timing.py --out results.json [--batch 128]

Every provider is timed the same way: ``triton.testing.do_bench`` (CUDA events around
repeated calls, median, L2 flushed between calls), no host synchronisation inside the timed
call. ``eager`` is :class:`atfnn_fast.ATFNNReference`, ``compile`` the same block under
``torch.compile``, ``fused`` :class:`atfnn_fast.ATFNN` (Triton ops), ``cudagraph`` the fused
inference call captured once in a CUDA graph and replayed. Each case is also checked
against eager (relative error of the output) before it is timed. The JSON file is rewritten
after every case, so a run cut off early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference  # noqa: E402


def _body(model, case, x):
    if case.startswith("freq_encoder"):
        return lambda: model._f_encoder(x)
    if case.startswith("front_end"):
        return lambda: model.front_end(x)[0]
    return lambda: model(x)


def _graphed(fn):
    """Capture ``fn`` (no grad) in a CUDA graph; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = fn()
    return lambda: (graph.replay(), out)[1]


def time_case(case, provider, dtype, batch, cfg):
    torch.manual_seed(0)
    ref = ATFNNReference(cfg, check_finite=False).cuda().eval()  # no dropout in the check
    model = ref
    if provider in ("fused", "cudagraph"):
        model = ATFNN(cfg, check_finite=False).cuda()
        model.load_state_dict(ref.state_dict())
    bwd = case.endswith("fwd_bwd")
    model.train(False)
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, device="cuda", requires_grad=bwd)
    amp = torch.autocast("cuda", dtype=getattr(torch, dtype), enabled=dtype != "float32")
    body = _body(model, case, x)
    if provider == "compile":
        body = torch.compile(body)
    if bwd:
        grad = None

        def fn():
            nonlocal grad
            with amp:
                out = body()
            if grad is None:
                grad = torch.randn_like(out)
            out.backward(grad)
            return out
    else:

        def fn():
            with torch.no_grad(), amp:
                return body()

    if provider == "cudagraph":
        fn = _graphed(fn)
    with torch.no_grad(), amp:
        want = _body(ref, case, x)().float()
    got = fn().float()
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    host = None
    if provider == "fused" and not bwd:  # eager launch overhead: host time per call
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        host = (time.perf_counter() - t0) / 20 * 1e3
        torch.cuda.synchronize()
    return dict(
        case=case,
        provider=provider,
        dtype=dtype,
        batch=batch,
        frames=cfg.frames,
        median_ms=ms,
        rel_err_vs_eager=err,
        host_ms_per_call=host,
        peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument(
        "--case",
        nargs="+",
        default=["freq_encoder_fwd", "freq_encoder_fwd_bwd", "front_end_fwd", "full_fwd"],
    )
    ap.add_argument("--provider", nargs="+", default=["eager", "compile", "fused", "cudagraph"])
    args = ap.parse_args()
    cfg = ATFNNConfig()
    rows = []
    for dtype in args.dtype:
        for case in args.case:
            for provider in args.provider:
                if provider == "cudagraph" and case.endswith("bwd"):
                    continue
                if provider == "compile" and case == "full_fwd":
                    continue
                torch.cuda.reset_peak_memory_stats()
                try:
                    row = time_case(case, provider, dtype, args.batch, cfg)
                except Exception as exc:
                    row = dict(case=case, provider=provider, dtype=dtype, error=repr(exc)[:500])
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
