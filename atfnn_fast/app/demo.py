"""``make demo`` / ``atfnn-fast demo``: the whole pipeline in a few minutes on a CPU.

1. The default (paper-size) model on a batch cut from the bundled speech recording (English,
   synthesised with espeak-ng at 22.05 kHz): shapes, parameters per block, time per batch,
   a checkpoint round trip (:func:`run`).
2. No emotional speech corpus can be bundled, so the demo synthesises one
   (:mod:`atfnn_fast.synth`: synthetic *prosody* classes, not emotions, spoken by synthetic
   speakers told apart by timbre), trains one leave-one-speaker-out fold with the tiny
   preset, evaluates it, writes the confusion matrix and an attention plot, exports the
   checkpoint to ONNX, validates it in ONNX Runtime and prints a summary
   (:func:`run_pipeline`).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from atfnn_fast import ATFNN, ATFNNConfig, kernels
from atfnn_fast.checkpoint import load_checkpoint, save_checkpoint
from atfnn_fast.errors import RunError, resolve_device
from atfnn_fast.features import (
    FeatureConfig,
    NormStats,
    load_audio,
    log_mel,
    segment,
    speech_sample,
)


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


def run(device: str = "auto", hop: int = 32, repeats: int = 5, out=None) -> dict:
    device = resolve_device(device)
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
    say("note           this paper-size model is untrained; the pipeline below trains one")
    if not same:
        raise RuntimeError("checkpoint round trip changed the logits")
    return {"logits": logits, "median_ms": median, "parameters": total}


def run_pipeline(out_dir="demo-output", epochs: int = 12, seed: int = 0, out=None) -> dict:
    """Synthetic corpus -> one LOSO fold -> metrics, plots, ONNX; returns the summary."""
    from atfnn_fast.export import check_tensorrt_ready, export_onnx, validate_onnx

    from .plots import plot_attention
    from .synth import CLASSES, make_corpus
    from .train import TrainConfig, train

    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    out_dir = Path(out_dir)
    start = time.perf_counter()
    manifest = make_corpus(out_dir / "corpus", speakers=5, per_class=8, seed=seed, overwrite=True)
    say(f"corpus         {manifest}: 5 synthetic speakers x {len(CLASSES)} classes x 8")
    say("               (synthetic prosody classes, NOT emotions: " + ", ".join(CLASSES) + ")")
    tc = TrainConfig(epochs=epochs, batch_size=32, hop=32, preset="tiny", seed=seed, device="cpu")
    best = train(manifest, out_dir / "runs", fold="spk1", tc=tc, overwrite=True)  # a re-run
    fold_dir = best.parent
    metrics = json.loads((fold_dir / "metrics.json").read_text())  # train printed its result
    say(f"confusion      {fold_dir / 'confusion.png'}")
    example = out_dir / "corpus" / "spk1" / "high_rising_0.wav"
    att = plot_attention(best, example, out_dir / "attention.png")
    say(f"attention      {att}")
    ckpt = load_checkpoint(best)
    onnx_path = export_onnx(
        ckpt.model,
        out_dir / "model.onnx",
        labels=ckpt.labels,
        norm_stats=ckpt.norm_stats,
        features=ckpt.features,
    )
    report = validate_onnx(onnx_path, ckpt.model, batch_sizes=(1, 7))
    worst = max(r.max_rel for r in report.results)
    say(
        f"onnx           {onnx_path}: max relative error {worst:.1e} vs eager "
        f"({'PASS' if report.passed else f'FAIL: {report.failure}'}); TensorRT problems: "
        f"{len(check_tensorrt_ready(onnx_path))}"
    )
    int8_path = export_onnx(
        ckpt.model,
        out_dir / "model-int8.onnx",
        quantize="int8",
        labels=ckpt.labels,
        norm_stats=ckpt.norm_stats,
        features=ckpt.features,
    )
    int8 = validate_onnx(
        int8_path, ckpt.model, batch_sizes=(1,), audio=[manifest], raise_on_failure=False
    )
    a, sp = int8.agreement, int8.speed
    say(
        f"onnx int8      {int8_path}: top-1 agreement with float32 eager {a.top1:.1%} of "
        f"{a.segments} segments ({a.top1_files:.1%} of {a.files} files), largest "
        f"probability difference {a.max_prob_diff:.3f}; {sp.ratio:.1f}x eager at batch "
        f"{sp.batch} ({'PASS' if int8.passed else f'FAIL: {int8.failure}'})"
    )
    seconds = time.perf_counter() - start
    say(f"pipeline       {seconds:.0f} s on {torch.get_num_threads()} CPU threads")
    failed = [(p, r.failure) for p, r in ((onnx_path, report), (int8_path, int8)) if r.failure]
    if failed:  # the demo's exit code says it too (`make demo` fails)
        raise RunError("; ".join(f"{p}: validation failed ({why})" for p, why in failed))
    return {
        "metrics": metrics,
        "seconds": seconds,
        "onnx_max_rel": worst,
        "int8_agreement": a.top1,
        "checkpoint": str(best),
    }
