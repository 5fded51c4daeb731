"""Peak memory of loading an ONNX file into ``OnnxPredictor``, against the file's size
(issue 31, cause 1: the file used to be parsed three times).

    PYTHONPATH=. python scripts/onnx_load_memory.py --out /tmp/onnx-mem \
        [--source /tmp/old-checkout] [--lstm-hidden 1024]

exports a model with random weights whose Bi-LSTM has ``--lstm-hidden`` units per direction
(1024: about 64 M parameters, a 256 MB file; the paper's model is 6.5 MB), then, in a fresh
process per case, reads the peak resident set size (``VmHWM``) of

* ``imports``: importing the predictor, onnx and onnxruntime and nothing else (the floor);
* ``predictor``: the same, then ``OnnxPredictor(path)``,

for this checkout and for each ``--source`` checkout (e.g. the code before the change,
unpacked with ``git archive``). Prints the peaks and ``(predictor - imports) / file size``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import onnx, onnxruntime; from atfnn_fast.export import OnnxPredictor"


def make_model(out: Path, hidden: int) -> Path:
    import torch

    from atfnn_fast import ATFNN, ATFNNConfig
    from atfnn_fast.export import export_onnx
    from atfnn_fast.features import NormStats

    path = out / f"lstm{hidden}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        config = ATFNNConfig(dropout=0.0, lstm_hidden=hidden)
        stats = NormStats.fit([torch.randn(config.n_mels, 50, dtype=torch.float64) - 5])
        export_onnx(ATFNN(config).eval(), path, norm_stats=stats)
    return path


def peak_mib(code: str, source: Path) -> float:
    """The peak resident set size of a fresh process running ``code``: its ``VmHWM``
    (``/proc/self/status``), which, unlike ``ru_maxrss``, does not carry over the memory of
    the process that forked it (this one, which holds the exported model)."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    probe = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\n{probe}"],
        env=env,
        cwd=source,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return int(proc.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lstm-hidden", type=int, default=1024)
    parser.add_argument("--source", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("onnx-load-memory"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = make_model(args.out, args.lstm_hidden).resolve()
    size = path.stat().st_size / 2**20
    print(f"{path.name}: {size:.0f} MiB")
    print("| checkout | imports (MiB) | OnnxPredictor (MiB) | above imports / file size |")
    print("| --- | ---: | ---: | ---: |")
    for source in [ROOT, *args.source]:
        floor = peak_mib(IMPORTS, source)
        loaded = peak_mib(f"{IMPORTS}; OnnxPredictor({str(path)!r}, provider='cpu')", source)
        print(f"| {source} | {floor:,.0f} | {loaded:,.0f} | {(loaded - floor) / size:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
