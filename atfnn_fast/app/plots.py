"""Attention maps like the paper's Figure 6: log-Mel, F-Attention and T-Attention of one
utterance, stacked, in a figure that explains itself:

* the title gives the file, the predicted label and its score (the mean of the segments'
  probabilities, as ``predict`` computes it) and the runner-up;
* the y-axis is in Hz: ticks at the Mel bands whose centre frequencies are 250 Hz, 500 Hz,
  ..., 8 kHz (:func:`atfnn_fast.features.mel_centre_frequencies`);
* the two attention panels share one colour scale (the smallest and largest weight of
  either), and each panel's title states its own range;
* the boundaries of the model's segments are dotted vertical lines, named in the legend
  (the model sees each segment on its own; the maps are the segments' maps side by side).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atfnn_fast._deps import require
from atfnn_fast.checkpoint import load_checkpoint
from atfnn_fast.features import load_audio, log_mel, mel_centre_frequencies, segment
from atfnn_fast.files import check_output, write_atomic
from atfnn_fast.inference import (
    DEFAULT_BATCH_SIZE,
    check_batch_size,
    mean_probabilities,
    softmax_probabilities,
)

HZ_TICKS = (250, 500, 1000, 2000, 4000, 8000)


@dataclass
class AttentionPlotData:
    """What the plot shows: log-Mel ``(F, N)``, ``w_f`` and ``w_t`` ``(F, N)`` (None when the
    variant has no such block), the prediction, the bands' centre frequencies and the
    segment length in frames."""

    log_mel: torch.Tensor
    w_f: torch.Tensor | None
    w_t: torch.Tensor | None
    label: str
    scores: dict[str, float]
    centres_hz: np.ndarray
    frames: int


def attention_maps(
    checkpoint, audio, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE
) -> AttentionPlotData:
    """The log-Mel and attention maps of a file: non-overlapping segments, maps concatenated
    along time and cut back to the utterance's N frames; and the file's prediction. The
    segments go through the model ``batch_size`` at a time, as ``predict`` runs them, so
    the memory of the forward passes does not grow with the recording (the maps, like the
    log-Mel, are ``(F, N)``)."""
    check_batch_size(batch_size)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    cfg, feats = ckpt.config, ckpt.features
    lm = log_mel(load_audio(audio, feats.sample_rate), cfg.n_mels, feats)
    segs = segment(lm, cfg.frames, cfg.frames, feats.silence_value)
    model = ckpt.model.eval()
    parts: dict[str, list[torch.Tensor]] = {"freq": [], "time": []}

    def probabilities(x: torch.Tensor):
        logits, att = model(x.to(device), return_attention=True)
        for name, found in parts.items():
            m = getattr(att, name)
            if m is not None:
                found.append(m.float().cpu())
        return softmax_probabilities(logits.float())

    def batches():
        for start in range(0, segs.shape[0], batch_size):
            x = segs[start : start + batch_size]
            x = ckpt.norm_stats.apply(x) if ckpt.norm_stats is not None else x
            yield x.unsqueeze(1)

    with torch.inference_mode():
        probs = mean_probabilities(batches(), probabilities)
    labels = ckpt.labels or [f"class_{i}" for i in range(cfg.num_classes)]
    scores = dict(zip(labels, (float(p) for p in probs), strict=True))
    n = lm.shape[1]

    def join(found):
        if not found:
            return None
        return torch.cat(found).permute(1, 0, 2).reshape(cfg.n_mels, -1)[:, :n]

    return AttentionPlotData(
        lm,
        join(parts["freq"]),
        join(parts["time"]),
        max(scores, key=scores.get),
        scores,
        mel_centre_frequencies(cfg.n_mels, feats),
        cfg.frames,
    )


def attention_figure(data: AttentionPlotData, title: str, hop_seconds: float = 0.01):
    """The matplotlib figure of :func:`plot_attention` (for tests and notebooks)."""
    matplotlib = require("matplotlib", extra="app")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = [m for m in (data.w_f, data.w_t) if m is not None]
    low = min((float(m.min()) for m in weights), default=0.0)
    high = max((float(m.max()) for m in weights), default=1.0)
    panels = [("log-Mel spectrogram", data.log_mel, "magma", None, "log Mel energy")]
    for name, m in (("F-Attention", data.w_f), ("T-Attention", data.w_t)):
        if m is not None:
            text = f"{name} weights (this panel {float(m.min()):.2f} to {float(m.max()):.2f})"
            panels.append((text, m, "viridis", (low, high), "weight (shared scale)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.8 * len(panels)), sharex=True)
    axes = np.atleast_1d(axes)
    n_bands, n_frames = data.log_mel.shape
    seconds = n_frames * hop_seconds
    centres = data.centres_hz
    ticks = [f for f in HZ_TICKS if centres[0] <= f <= centres[-1]]
    positions = np.interp(ticks, centres, np.arange(n_bands) + 0.5)
    boundaries = np.arange(data.frames, n_frames, data.frames) * hop_seconds
    for ax, (name, m, cmap, limits, unit) in zip(axes, panels, strict=True):
        vmin, vmax = limits if limits else (None, None)
        image = ax.imshow(
            m.numpy(),
            origin="lower",
            aspect="auto",
            cmap=cmap,
            extent=(0, seconds, 0, n_bands),
            vmin=vmin,
            vmax=vmax,
        )
        for k, t in enumerate(boundaries):
            ax.axvline(
                t,
                color="white",
                linestyle=":",
                linewidth=1.2,
                label=f"segment boundary ({data.frames} frames)" if k == 0 else None,
            )
        ax.set_yticks(positions, [f"{f / 1000:g}k" if f >= 1000 else f"{f}" for f in ticks])
        ax.set_ylabel("frequency (Hz)")
        ax.set_title(name, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.025, label=unit)
        if len(boundaries):
            ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    axes[-1].set_xlabel("time (s)")
    ranked = sorted(data.scores.items(), key=lambda kv: -kv[1])
    runner = f"; next {ranked[1][0]} {ranked[1][1]:.2f}" if len(ranked) > 1 else ""
    fig.suptitle(f"{title}: predicted {data.label} (score {ranked[0][1]:.2f}{runner})")
    fig.tight_layout()
    return fig


def save_attention_plot(data: AttentionPlotData, title: str, output: str | os.PathLike) -> Path:
    """Write :func:`attention_figure` of ``data`` to ``output`` (PNG); returns the path."""
    fig = attention_figure(data, title)
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(Path(output), png.getvalue())


def plot_attention(
    checkpoint,
    audio,
    output: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Path:
    """Write the attention plot of ``audio`` to ``output`` (PNG), checked before any work
    (not an input, not a device or FIFO, its folder writable) and written atomically;
    returns the path. ``batch_size``: segments per forward pass (:func:`attention_maps`)."""
    check_batch_size(batch_size)
    output = check_output(output, inputs=(checkpoint, audio))
    data = attention_maps(checkpoint, audio, device, batch_size)
    return save_attention_plot(data, Path(audio).name, output)
