"""Speed of the waveform-in graph against today's spectrogram graph with the features
computed outside it (issue 33, item 1).

    PYTHONPATH=. python scripts/waveform_speed.py --runs 5

exports a paper-size model with random weights (``ATFNNConfig()``, 4 classes; the speed
does not depend on the weights) both ways (``export_onnx(..., input="spectrogram")`` and
``input="waveform"``, float32, ONNX Runtime target) or a ``--checkpoint``'s, writes a 3 s
clip and a ``--minutes`` long file (16 kHz mono float WAV, the bundled speech repeated at
several gains: :func:`atfnn_fast.export.waveform.validation_recordings`), and times
``OnnxPredictor.predict_file`` per (graph, file) in one process, end to end: reading the
file, then for the spectrogram graph the Python features (log-Mel in blocks, segments,
normalisation) and the graph ``--batch-size`` segments at a time, for the waveform graph
the whole file through the graph (log-Mel in float64, the Loop over chunks of 64
segments). Cases alternate, one warm-up each; the median of ``--runs`` is printed as a
Markdown table with the real-time factor (audio seconds / wall seconds) and the ratio.
ONNX Runtime's and torch's default thread counts (one per core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint (default: random paper-size model)")
    parser.add_argument("--minutes", type=float, default=10.0, help="the long file (default 10)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="spectrogram graph's batch")
    args = parser.parse_args(argv)

    import soundfile as sf
    import torch

    from atfnn_fast import ATFNN, ATFNNConfig
    from atfnn_fast.checkpoint import load_checkpoint
    from atfnn_fast.export import OnnxPredictor, export_onnx
    from atfnn_fast.export.waveform import validation_recordings
    from atfnn_fast.features import FeatureConfig, NormStats

    with tempfile.TemporaryDirectory(prefix="waveform-speed-") as tmp:
        folder = Path(tmp)
        if args.checkpoint:
            ckpt = load_checkpoint(args.checkpoint)
            model, kw = ckpt.model, dict(labels=ckpt.labels, norm_stats=ckpt.norm_stats)
            features = ckpt.features
        else:
            torch.manual_seed(0)
            model = ATFNN(ATFNNConfig()).eval()
            stats = NormStats.fit([torch.randn(80, 100, dtype=torch.float64) * 3 - 6])
            kw, features = dict(norm_stats=stats), FeatureConfig()
        graphs = {
            kind: export_onnx(model, folder / f"{kind}.onnx", input=kind, features=features, **kw)
            for kind in ("spectrogram", "waveform")
        }
        _, _, long = validation_recordings(folder, features, model.config.frames, args.minutes * 60)
        clip = folder / "clip-3s.wav"
        wave, rate = sf.read(str(long), frames=3 * features.sample_rate, dtype="float32")
        sf.write(str(clip), wave, rate, subtype="FLOAT")
        predictors = {
            kind: OnnxPredictor(path, batch_size=args.batch_size) for kind, path in graphs.items()
        }
        rows = []
        for file in (clip, long):
            seconds = sf.info(str(file)).frames / features.sample_rate
            times: dict[str, list[float]] = {kind: [] for kind in predictors}
            for predictor in predictors.values():
                predictor.predict_file(file)  # warm-up
            for _ in range(args.runs):
                for kind, predictor in predictors.items():
                    time.sleep(0.05)  # let the other session's threads go idle
                    start = time.perf_counter()
                    predictor.predict_file(file)
                    times[kind].append(time.perf_counter() - start)
            med = {kind: statistics.median(t) for kind, t in times.items()}
            rows.append((file.name, seconds, med))
    cpu = _cpu_name()
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores; median of {args.runs} runs")
    print("| file | spectrogram graph + Python features | waveform graph | ratio |")
    print("|---|---|---|---|")
    for name, seconds, med in rows:
        s, w = med["spectrogram"], med["waveform"]
        print(
            f"| {name} ({seconds:g} s) | {s * 1e3:.0f} ms ({seconds / s:.0f}x real time) | "
            f"{w * 1e3:.0f} ms ({seconds / w:.0f}x real time) | {s / w:.2f}x |"
        )
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
