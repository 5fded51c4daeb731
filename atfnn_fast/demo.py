"""``make demo`` / ``atfnn-fast demo``: the default model on a batch cut from the bundled
speech recording (English, synthesised with espeak-ng at 22.05 kHz).

Prints the shapes through the pipeline, the parameter count per block and the time per
forward batch on this machine, and checks a checkpoint round trip. The model is untrained:
its class scores mean nothing yet (training arrives with the application issue).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from . import ATFNN, ATFNNConfig, kernels
from .checkpoint import load_checkpoint, save_checkpoint
from .features import FeatureConfig, NormStats, load_audio, log_mel, segment


def speech_sample() -> Path:
    """Path of the bundled speech recording."""
    return Path(str(resources.files("atfnn_fast") / "assets" / "speech.wav"))


def _time_forward(model, x, repeats: int) -> list[float]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        model(x)  # warm-up, outside the timed runs
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return times


def run(device: str = "auto", hop: int = 32, repeats: int = 5, out=sys.stdout) -> dict:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = ATFNNConfig()
    feats = FeatureConfig()
    path = speech_sample()
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    wave = load_audio(path, feats.sample_rate)
    lm = log_mel(wave, cfg.n_mels, feats)
    stats = NormStats.fit([lm])  # demo only: real statistics come from a training split
    batch = stats.apply(segment(lm, cfg.frames, hop, feats.silence_value)).unsqueeze(1)
    say(f"recording      {path.name}: {wave.numel() / feats.sample_rate:.2f} s at 16 kHz mono")
    say(f"log-Mel        {tuple(lm.shape)} (bands, frames)")
    say(f"batch          {tuple(batch.shape)} ({cfg.frames}-frame segments, hop {hop})")

    torch.manual_seed(0)
    model = ATFNN(cfg).to(device).eval()
    x = batch.to(device)
    with torch.inference_mode():
        logits, att = model(x, return_attention=True)
    say(f"logits         {tuple(logits.shape)}")
    say(f"attention      freq {tuple(att.freq.shape)}, time {tuple(att.time.shape)}")
    total = sum(p.numel() for p in model.parameters())
    say(f"parameters     {total:,} ({cfg.variant})")
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if n:
            say(f"  {name:<13}{n:>10,}")

    times = _time_forward(model, x, repeats)
    median = statistics.median(times) * 1000
    dev_name = (
        torch.cuda.get_device_name() if x.is_cuda else f"CPU, {torch.get_num_threads()} threads"
    )
    say(
        f"forward        {median:.1f} ms per batch of {x.shape[0]} (median of {repeats}, "
        f"{dev_name}, backend {kernels.get_backend()}, torch {torch.__version__})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = save_checkpoint(Path(tmp) / "ckpt", model, norm_stats=stats, features=feats)
        loaded = load_checkpoint(ckpt_dir, map_location=device).model.eval()
        with torch.inference_mode():
            same = torch.equal(loaded(x), logits)
    say(f"checkpoint     save/load round trip {'gives identical logits' if same else 'DIFFERS'}")
    say("note           the model is untrained: the logits carry no meaning yet")
    if not same:
        raise RuntimeError("checkpoint round trip changed the logits")
    return {"logits": logits, "median_ms": median, "parameters": total}
