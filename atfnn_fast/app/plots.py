"""Attention maps like the paper's Figure 6: log-Mel, F-Attention and T-Attention of one
utterance, stacked, with a line at Mel band 50."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from atfnn_fast._deps import require
from atfnn_fast.checkpoint import load_checkpoint
from atfnn_fast.features import load_audio, log_mel, segment
from atfnn_fast.files import check_output, write_atomic


def attention_maps(checkpoint, audio, device: str = "cpu"):
    """(log-Mel (F, N), w_f (F, N), w_t (F, N)) of a file: non-overlapping segments, maps
    concatenated along time and cut back to the utterance's N frames."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    cfg, feats = ckpt.config, ckpt.features
    lm = log_mel(load_audio(audio, feats.sample_rate), cfg.n_mels, feats)
    segs = segment(lm, cfg.frames, cfg.frames, feats.silence_value)
    x = ckpt.norm_stats.apply(segs) if ckpt.norm_stats is not None else segs
    with torch.inference_mode():
        _, att = ckpt.model.eval()(x.unsqueeze(1).to(device), return_attention=True)
    n = lm.shape[1]

    def join(m):
        return (
            None if m is None else m.float().cpu().permute(1, 0, 2).reshape(cfg.n_mels, -1)[:, :n]
        )

    return lm, join(att.freq), join(att.time)


def plot_attention(checkpoint, audio, output: str | os.PathLike, device: str = "cpu") -> Path:
    """The PNG ``output``, checked before any work (not an input, not a device or FIFO,
    its folder writable) and written atomically."""
    output = check_output(output, inputs=(checkpoint, audio))
    matplotlib = require("matplotlib", extra="app")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm, w_f, w_t = attention_maps(checkpoint, audio, device)
    panels = [
        ("log-Mel spectrogram", lm, "magma"),
        ("F-Attention weights", w_f, "viridis"),
        ("T-Attention weights", w_t, "viridis"),
    ]
    panels = [p for p in panels if p[1] is not None]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), sharex=True)
    seconds = lm.shape[1] / 100  # 10 ms hop
    for ax, (title, data, cmap) in zip(axes, panels, strict=True):
        image = ax.imshow(
            data.numpy(),
            origin="lower",
            aspect="auto",
            cmap=cmap,
            extent=(0, seconds, 0, data.shape[0]),
        )
        ax.axhline(50, color="white", linestyle="--", linewidth=1)
        ax.set_ylabel("Mel band")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.025)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(Path(audio).name)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(output, png.getvalue())
