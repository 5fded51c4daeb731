"""The int8 graph's formats side by side (issue 30): speed in ONNX Runtime, the top-1
agreement on the bundled recording and the U8S8 saturation risk, on this CPU.

    python scripts/int8_formats.py [--checkpoint CKPT] [--threads 2] [--batches 1 32]

Formats of the default model's graph (random weights N(0, 0.2^2) as in the export
tests, or ``--checkpoint``'s):

* ``float32``: the graph before quantisation;
* ``u8s8``: ONNX Runtime's default (int8 weights): saturates on x86 without VNNI;
* ``u8s8-reduce-range``: int8 weights limited to 7 bits (ONNX Runtime's other remedy);
* ``u8u8``: uint8 weights, what ``export --quantize int8`` writes.

Each is timed with :func:`atfnn_fast.export.validate.median_ms` (three blocks of a pause,
one warm-up and three calls, formats alternating) on the same random input, one session per
format with ``--threads`` intra-op threads. The speed cost of the portable format is the
``u8u8`` row against ``u8s8``: on an AVX2-only CPU ``u8s8`` is fast and wrong (saturated),
so the fair comparison there is against ``float32``. Prints the CPU (model name, AVX2 /
AVX-512 / VNNI flags) first; the figures hold for that CPU only and for a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.export import export_onnx, read_metadata, validate_onnx
from atfnn_fast.export.onnx_export import (
    INPUT_NAME,
    _quantize_int8,
    _set_metadata,
    int8_saturation_risks,
)
from atfnn_fast.export.validate import median_ms, session

FORMATS = {
    "u8s8": ("QInt8", False),
    "u8s8-reduce-range": ("QInt8", True),
    "u8u8": ("QUInt8", False),
}


def cpu_line() -> str:
    """The CPU's model name and the instruction sets that pick ONNX Runtime's int8 kernels."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
    have = [f for f in wanted if f in flags]
    return f"{name} ({', '.join(have) or 'no AVX2 / VNNI flags'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint directory (default: random weights)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from atfnn_fast.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        model, labels = ckpt.model.eval(), ckpt.labels
        extra = dict(norm_stats=ckpt.norm_stats, features=ckpt.features)
    else:
        torch.manual_seed(0)  # random weights as in tests/export/test_export.py
        model = ATFNN(ATFNNConfig(dropout=0.0)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
        labels, extra = ["angry", "happy", "sad", "neutral"], {}
    print(f"CPU: {cpu_line()}; ONNX Runtime threads {args.threads}")
    with tempfile.TemporaryDirectory(prefix="atfnn-int8-formats-") as tmp:
        paths = {"float32": export_onnx(model, Path(tmp) / "float32.onnx", labels=labels, **extra)}
        meta = read_metadata(paths["float32"])
        for name, (weight_type, reduce_range) in FORMATS.items():
            proto = _quantize_int8(onnx.load(str(paths["float32"])), weight_type, reduce_range)
            _set_metadata(
                proto,
                meta["config"],
                meta["labels"],
                meta["norm_stats"],
                meta["features"],
                "float32",
                "int8",
            )
            paths[name] = Path(tmp) / f"{name}.onnx"
            onnx.save(proto, str(paths[name]))
        sessions = {
            name: session(p, threads=args.threads, provider="cpu") for name, p in paths.items()
        }
        cfg = meta["config"]
        print(f"{'format':<18} {'U8S8 risk':<10} {'top-1 agree':>11} {'max dp':>7}", end="")
        print("".join(f" {f'B={b} ms':>10}" for b in args.batches))
        rows = {}
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 1, cfg.n_mels, cfg.frames))
            feed = {INPUT_NAME: x.astype(np.float32)}
            calls = {
                name: (lambda s=s, feed=feed: s.run(None, feed)) for name, s in sessions.items()
            }
            for name, ms in median_ms(calls).items():
                rows.setdefault(name, []).append(ms)
        for name, path in paths.items():
            risks = int8_saturation_risks(onnx.load(str(path)))
            report = validate_onnx(
                path, model, batch_sizes=(1,), raise_on_failure=False, audio=(), speed=False
            )
            a = report.agreement
            agree = f"{a.top1:>10.1%} {a.max_prob_diff:>7.3f}" if a else f"{'-':>11} {'-':>7}"
            print(f"{name:<18} {'yes' if risks else 'no':<10} {agree}", end="")
            print("".join(f" {ms:>10.2f}" for ms in rows[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
