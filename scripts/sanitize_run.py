"""One forward and backward of every Triton kernel the fused front-end launches, for
``compute-sanitizer`` (scripts/gpu_sanitize.sh): default and encoding configurations, fp32
and bf16, at a small batch. Run once without the sanitizer first so Triton's disk cache
holds every kernel, and the sanitized run only loads and launches them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["ATFNN_BACKEND"] = "triton"

import torch

from atfnn_fast import ATFNN, ATFNNConfig


def main(argv: list[str]) -> int:
    """``--quick``: the default configuration in float32 only (for racecheck, the slow tool)."""
    quick = "--quick" in argv
    runs = [("default", ATFNNConfig())]
    if not quick:
        runs.append(("encoding", ATFNNConfig(t_attention_source="encoding")))
    for name, cfg in runs:
        for dtype in (torch.float32,) if quick else (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = ATFNN(cfg).to(device="cuda", dtype=dtype)
            x = torch.randn(2, 1, cfg.n_mels, cfg.frames, device="cuda", dtype=dtype)
            x.requires_grad_(True)
            enc, maps = model.front_end(x)
            loss = enc.float().sum() + sum(m.float().sum() for m in maps if m is not None)
            loss.backward()
            torch.cuda.synchronize()
            print(f"{name} {dtype}: forward and backward ran", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
