"""Per-file time of ``atfnn-fast predict --onnx`` on a folder of short clips (issue 31).

    PYTHONPATH=. python scripts/many_clips.py --clips 1000 --seconds 0.5 --cpus 0 1 \
        --out /tmp/many-clips

writes a model with random weights (``--model tiny``: the test suite's 10-band size, or
``paper``: ``ATFNNConfig()``) as an ONNX file and ``--clips`` 16 kHz mono 16-bit WAV files of
``--seconds`` each (noise under a syllable-rate envelope) into ``OUT/clips``, then runs
``python -m atfnn_fast.cli predict --onnx OUT/model.onnx --json OUT/clips`` in a fresh
process pinned to ``--cpus`` (``os.sched_setaffinity``; default: all), ``--repeats`` times.
It prints the time per clip after the first (``predict`` prints and flushes each file's
JSON entry when it is done: the time from the first entry to the last over the clips
between them, which leaves out the process start, imports and session) and the wall time
end to end, each the smallest of the runs. The target of issue 31 is at most 25 ms per
clip for 1,000 clips of 0.5 s on 2 cores.

``--source DIR`` runs another checkout's CLI (e.g. the code before a change) on the same
files; ``--env KEY=VALUE`` sets variables for the predict process (e.g.
``OMP_NUM_THREADS=1``). Figures taken on a machine shared with other work are not
trustworthy: say so beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_model(out: Path, size: str) -> Path:
    import torch

    from atfnn_fast import ATFNN, ATFNNConfig
    from atfnn_fast.export import export_onnx
    from atfnn_fast.features import NormStats

    path = out / f"model-{size}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    tiny = dict(n_mels=10, frames=16, channels=4, ffn_channels=6, lstm_hidden=5, lstm_layers=2)
    config = ATFNNConfig(num_classes=4, dropout=0.0, **(tiny if size == "tiny" else {}))
    model = ATFNN(config).eval()
    stats = NormStats.fit([torch.randn(config.n_mels, 50, dtype=torch.float64) - 5])
    labels = ["angry", "happy", "sad", "neutral"]
    return export_onnx(model, path, labels=labels, norm_stats=stats)


def make_clips(folder: Path, clips: int, seconds: float, rate: int = 16_000) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    paths = []
    for k in range(clips):
        path = folder / f"clip{k:05d}.wav"
        if not path.exists():
            wave = (0.2 * envelope * rng.standard_normal(t.size)).astype(np.float32)
            sf.write(str(path), wave, rate, subtype="PCM_16")
        paths.append(path)
    return paths


def run_predict(model: Path, target: Path, cpus, source: Path, env: dict) -> tuple[float, float]:
    """(wall seconds end to end, seconds per clip after the first) of one ``predict --onnx
    --json`` process on the folder ``target``. ``predict`` prints and flushes each file's
    JSON entry as soon as it is done, so the time between the first entry and the last,
    over the clips between them, is the per-clip time without the process start (imports,
    session)."""
    cmd = [sys.executable, "-m", "atfnn_fast.cli", "predict", "--onnx", str(model), "--json"]
    environ = {**os.environ, **env, "PYTHONPATH": str(source)}

    def pin():
        if cpus:
            os.sched_setaffinity(0, cpus)

    start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, str(target)],
        env=environ,
        cwd=source,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin,
    )
    stamps, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        if '"path"' in line:
            stamps.append(time.perf_counter())
    err = proc.stderr.read()
    code = proc.wait()
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"predict failed ({code}): {err[-2000:]}")
    results = json.loads("".join(lines))
    if not all("label" in r for r in results):
        raise SystemExit(f"predict reported errors: {[r for r in results if 'error' in r][:3]}")
    return total, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--model", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--cpus", type=int, nargs="*", default=None, help="CPU ids to pin to")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose CLI runs")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for predict")
    parser.add_argument("--out", type=Path, default=Path("many-clips"))
    args = parser.parse_args(argv)
    if args.clips < 2:
        parser.error("need --clips >= 2")
    env = dict(item.split("=", 1) for item in args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    model = make_model(args.out, args.model)
    make_clips(args.out / "clips", args.clips, args.seconds)
    cpus = set(args.cpus) if args.cpus else None
    runs = [
        run_predict(model, args.out / "clips", cpus, args.source, env) for _ in range(args.repeats)
    ]
    total, per_clip = min(r[0] for r in runs), min(r[1] for r in runs)
    where = f"CPUs {sorted(cpus)}" if cpus else f"all {os.cpu_count()} CPUs"
    print(
        f"{args.clips} clips of {args.seconds:g} s, {args.model} model, {where}, "
        f"{args.source}{' ' + ' '.join(args.env) if args.env else ''}: "
        f"{per_clip * 1e3:.1f} ms per clip after the first; {total:.1f} s end to end "
        f"({total / args.clips * 1e3:.1f} ms per clip with the process start); "
        f"fastest of {args.repeats}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
