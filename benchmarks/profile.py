"""Where the full forward's time goes: ``python -m benchmarks.profile``.

Profiles ``model(x)`` with torch.profiler and splits the device time (CUDA kernel time on a
GPU, CPU op time otherwise) between the front-end (F-Attention, F-Encoder, T-Attention),
the Bi-LSTM T-Encoder and the classifier, using ``record_function`` ranges around each
part. Prints a table and, with ``--json FILE``, writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from benchmarks.device import device_name, pick_device

PARTS = ("front_end", "t_encoder", "classifier")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--provider", choices=("eager", "fused"), default="eager")
    parser.add_argument("--json", help="also write the split to this file")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
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
