"""Peak memory of ``atfnn-fast predict`` against the length of the audio.

    PYTHONPATH=. python scripts/predict_memory.py --minutes 1 10 60 --out predict-memory

writes a paper-size checkpoint with random weights (``ATFNNConfig()``, 4 classes), its
ONNX exports (float32 and int8: predictors ``onnx`` and ``onnx-int8``), and 16 kHz mono WAV
files of the given lengths (speech-like noise bursts),
then runs ``python -m atfnn_fast.cli predict --checkpoint|--onnx ... --json FILE`` once per
(predictor, length) in a fresh process and reads that process's peak resident set size
from ``os.wait4`` (the kernel's ``ru_maxrss``, as ``/usr/bin/time -v`` reports it) and its
wall time, end to end (imports, decoding, log-Mel, segments, the model): the real-time
factor is the audio's length over that time.
``--source DIR`` runs another checkout's CLI (e.g. the code before the change) on the
same files. Prints a Markdown table (``--repeats N``: N runs per case, the largest peak and
the shortest time, which is the least disturbed by other work on the machine).

    PYTHONPATH=. python scripts/predict_memory.py --rates 16000 16001 44099 48001 \
        --seconds 5 --predictors checkpoint --out predict-memory

does the same for ``--seconds`` of audio written at each of the sample rates ``--rates``
(the resampler's cost; docs/notes/predict-memory.md).

    PYTHONPATH=. python scripts/predict_memory.py --minutes 1 10 60 --predictors onnx \
        --timeline both --out predict-memory

runs each case with and without ``--timeline`` (a JSON line per segment; ``--timeline
only``: with it alone), to show that the timeline streams in the same memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_wav(path: Path, minutes: float, rate: int = 16_000) -> Path:
    """Noise bursts under a syllable-rate envelope, written block by block."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as fh:
        for start in range(0, total, 60 * rate):
            n = min(60 * rate, total - start)
            t = np.arange(start, start + n) / rate
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
            fh.write((0.2 * envelope * rng.standard_normal(n)).astype(np.float32))
    return path


def make_models(folder: Path) -> tuple[Path, Path]:
    import torch

    from atfnn_fast import ATFNN, ATFNNConfig
    from atfnn_fast.checkpoint import save_checkpoint
    from atfnn_fast.export import export_onnx
    from atfnn_fast.features import NormStats

    torch.manual_seed(0)
    model = ATFNN(ATFNNConfig(dropout=0.0)).eval()
    stats = NormStats.fit([torch.randn(80, 100, dtype=torch.float64) - 5])
    labels = ["angry", "happy", "sad", "neutral"]
    ckpt = save_checkpoint(folder / "ckpt", model, labels=labels, norm_stats=stats)
    onnx = export_onnx(model, folder / "model.onnx", labels=labels, norm_stats=stats)
    export_onnx(model, folder / "model-int8.onnx", labels=labels, norm_stats=stats, quantize="int8")
    return ckpt, onnx


def peak_rss(cmd: list[str], env: dict, cwd: str | None = None) -> tuple[float, float, int]:
    """(peak RSS in MiB, seconds, exit code) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--out", default="predict-memory")
    parser.add_argument("--source", default=None, help="checkout whose CLI runs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--predictors",
        nargs="+",
        choices=("checkpoint", "onnx", "onnx-int8"),
        default=["checkpoint", "onnx"],
    )
    parser.add_argument(
        "--rates", type=int, nargs="+", default=None, help="sample rates of the files (Hz)"
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of the files with --rates"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per case; the table shows the fastest"
    )
    parser.add_argument(
        "--timeline",
        choices=("no", "both", "only"),
        default="no",
        help="also (both) or only run `predict --timeline` (default %(default)s)",
    )
    args = parser.parse_args()
    timelines = {"no": [False], "both": [False, True], "only": [True]}[args.timeline]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, onnx = (out / "ckpt", out / "model.onnx")
    if not (ckpt.exists() and onnx.exists() and (out / "model-int8.onnx").exists()):
        ckpt, onnx = make_models(out)
    sources = {
        "checkpoint": ["--checkpoint", str(ckpt)],
        "onnx": ["--onnx", str(onnx)],
        "onnx-int8": ["--onnx", str(out / "model-int8.onnx")],
    }
    env = dict(os.environ)
    if args.source:
        # python -m puts the working directory first on sys.path: run from the checkout
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    print("| predictor | audio | peak RSS | time | real time x | exit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    if args.rates:
        cases = [(f"{args.seconds:g} s at {r} Hz", args.seconds / 60, r) for r in args.rates]
    else:
        cases = [(f"{m:g} min", m, 16_000) for m in args.minutes]
    for label, minutes, rate in cases:
        wav = out / f"audio-{minutes * 60:g}s-{rate}Hz.wav"
        if not wav.exists():
            make_wav(wav, minutes, rate)
        for kind, timeline in ((k, t) for k in args.predictors for t in timelines):
            source = sources[kind]
            cmd = [
                sys.executable,
                "-m",
                "atfnn_fast.app.cli",
                "predict",
                *source,
                *extra,
                *(["--timeline"] if timeline else []),
                "--json",
                str(wav),
            ]
            runs = [peak_rss(cmd, env, args.source) for _ in range(args.repeats)]
            rss = max(r[0] for r in runs)
            seconds = min(r[1] for r in runs)
            code = max(r[2] for r in runs)
            speed = minutes * 60 / seconds
            print(
                f"| {kind}{' --timeline' if timeline else ''} | {label} | {rss:,.0f} MiB | {seconds:.1f} s | {speed:,.0f} | {code} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
