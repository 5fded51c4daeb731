"""The README's timeline picture (docs/timeline.png), end to end: a synthetic corpus, a tiny
model trained on it (fold spk1), a 60-minute recording of a new synthetic speaker whose
class changes at known times, its timeline (`predict --timeline --csv`) and the plot
(`plot-timeline --rows ... --smooth 5`). Prints the known changes and, for each, the
nearest change of the smoothed timeline's top label.

    python scripts/timeline_example.py --out timeline-example --png docs/timeline.png

Takes a few minutes on a 2-core CPU (most of it writing the recording and training)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from atfnn_fast.app.cli import main
from atfnn_fast.app.synth import RATE, recording

# (class, minutes): long stretches and a few short ones, 60 minutes in all
PLAN = [
    ("low_flat", 7.0),
    ("high_rising", 5.5),
    ("mid_falling", 9.0),
    ("fast_loud", 1.5),
    ("mid_falling", 6.0),
    ("low_flat", 4.0),
    ("fast_loud", 8.0),
    ("high_rising", 0.75),
    ("low_flat", 6.25),
    ("high_rising", 7.0),
    ("mid_falling", 5.0),
]


def run(*argv: str, stdout: Path | None = None) -> None:
    with contextlib.ExitStack() as stack:
        if stdout is not None:
            fh = stack.enter_context(open(stdout, "w", encoding="utf-8", newline=""))
            stack.enter_context(contextlib.redirect_stdout(fh))
        code = main([str(a) for a in argv])
    if code:
        sys.exit(f"atfnn-fast {' '.join(map(str, argv))}: exit code {code}")


def main_(out: Path, png: Path, smooth: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run("datasets", "synth", "--out", out / "corpus")
    ckpt = out / "runs" / "spk1" / "best"
    if not (ckpt / "config.json").exists():
        run(
            "train", "--manifest", out / "corpus" / "manifest.csv", "--out", out / "runs",
            "--fold", "spk1", "--preset", "tiny", "--epochs", "12", "--batch-size", "32",
            "--hop", "32",
        )  # fmt: skip
    wav = out / "long.wav"
    plan = [(cls, minutes * 60) for cls, minutes in PLAN]
    sf.write(wav, recording(plan, seed=7), RATE, subtype="PCM_16")
    rows = out / "long.csv"
    run("predict", "--checkpoint", ckpt, "--timeline", "--csv", wav, stdout=rows)
    run("plot-timeline", "--rows", rows, "--smooth", smooth, "--output", png)
    with open(rows, encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    labels = list(table[0])[5:-1]
    scores = np.array([[float(r[k]) for k in labels] for r in table])
    half = smooth // 2
    kernel = np.ones(smooth)
    counts = np.convolve(np.ones(len(scores)), kernel, "same")
    smoothed = np.stack([np.convolve(c, kernel, "same") for c in scores.T], 1) / counts[:, None]
    top = smoothed.argmax(1)
    changes = [float(table[i]["start"]) for i in range(1, len(top)) if top[i] != top[i - 1]]
    known = np.cumsum([s for _, s in plan])[:-1]
    print(f"{len(table)} segments; smoothed over {smooth} (+-{half}) segments")
    for t in known:
        near = min(changes, key=lambda c: abs(c - t)) if changes else float("nan")
        print(f"  change at {t / 60:6.2f} min: nearest timeline change {near / 60:6.2f} min")
    print(f"  {len(changes)} changes in the timeline, {len(known)} in the recording")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("timeline-example"))
    parser.add_argument("--png", type=Path, default=Path("docs/timeline.png"))
    parser.add_argument("--smooth", type=int, default=5)
    args = parser.parse_args()
    main_(args.out, args.png, args.smooth)
