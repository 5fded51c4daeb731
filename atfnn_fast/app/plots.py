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

from atfnn_fast.checkpoint import load_checkpoint
from atfnn_fast.errors import UsageError, resolve_device
from atfnn_fast.features import (
    load_audio,
    log_mel,
    mel_centre_frequencies,
    min_tail_frames,
    segment,
)
from atfnn_fast.files import check_output, write_atomic
from atfnn_fast.inference import (
    DEFAULT_BATCH_SIZE,
    check_batch_size,
    softmax_probabilities,
)

HZ_TICKS = (250, 500, 1000, 2000, 4000, 8000)
# --output's extension -> matplotlib's format
IMAGE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg"}


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
    checkpoint, audio, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE
) -> AttentionPlotData:
    """The log-Mel and attention maps of a file: non-overlapping segments, maps concatenated
    along time and cut back to the utterance's N frames; and the file's prediction, scored
    on the segments ``predict`` scores (a nearly-empty padded last segment is drawn but
    not counted: :func:`atfnn_fast.features.min_tail_frames`), so both give one score. The
    segments go through the model ``batch_size`` at a time, as ``predict`` runs them, so
    the memory of the forward passes does not grow with the recording (the maps, like the
    log-Mel, are ``(F, N)``)."""
    check_batch_size(batch_size)
    device = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    cfg, feats = ckpt.config, ckpt.features
    lm = log_mel(load_audio(audio, feats.sample_rate), cfg.n_mels, feats)
    segs = segment(lm, cfg.frames, cfg.frames, feats.silence_value)
    scored = segment(
        lm, cfg.frames, cfg.frames, feats.silence_value, min_tail=min_tail_frames(cfg.frames)
    ).shape[0]
    model = ckpt.model.eval()
    parts: dict[str, list[torch.Tensor]] = {"freq": [], "time": []}
    found_probs: list[np.ndarray] = []

    with torch.inference_mode():
        for start in range(0, segs.shape[0], batch_size):
            x = segs[start : start + batch_size]
            x = ckpt.norm_stats.apply(x) if ckpt.norm_stats is not None else x
            logits, att = model(x.unsqueeze(1).to(device), return_attention=True)
            for name, found in parts.items():
                m = getattr(att, name)
                if m is not None:
                    found.append(m.float().cpu())
            found_probs.append(softmax_probabilities(logits.float()))
    probs = np.concatenate(found_probs)[:scored].mean(0)
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
    from .plotting import pyplot

    plt = pyplot()

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


def image_format(output: str | os.PathLike) -> str:
    """The image format that ``output``'s extension names (:data:`IMAGE_FORMATS`; PNG
    without one); another extension is a :class:`UsageError` naming the file."""
    suffix = Path(output).suffix.lower()
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise UsageError(
            f"{output}: cannot write a {suffix} image; name it "
            f"{', '.join(IMAGE_FORMATS)} (the extension picks the format)"
        )
    return IMAGE_FORMATS[suffix]


def save_attention_plot(data: AttentionPlotData, title: str, output: str | os.PathLike) -> Path:
    """Write :func:`attention_figure` of ``data`` to ``output`` in the format its extension
    names (:func:`image_format`); returns the path."""
    kind = image_format(output)
    fig = attention_figure(data, title)
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    fig.savefig(image, format=kind, dpi=110)
    plt.close(fig)
    return write_atomic(Path(output), image.getvalue())


def plot_attention(
    checkpoint,
    audio,
    output: str | os.PathLike,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Path:
    """Write the attention plot of ``audio`` to ``output`` (PNG, SVG, PDF or JPEG by its
    extension), checked before any work (its extension, the plotting backend, not an
    input, not a device or FIFO, its folder writable) and written atomically; returns the
    path. ``batch_size``: segments per forward pass (:func:`attention_maps`)."""
    from .plotting import check_plotting

    check_batch_size(batch_size)
    image_format(output)
    check_plotting()
    output = check_output(output, inputs=(checkpoint, audio))
    data = attention_maps(checkpoint, audio, device, batch_size)
    return save_attention_plot(data, Path(audio).name, output)


# ------------------------------------------------------------------------------ timeline
# A timeline plot (`plot-timeline`): each class's score over time as a stacked area (the
# scores of a segment sum to 1) above a strip of the top label, x in minutes past 2
# minutes; more segments than TIMELINE_COLUMNS are drawn as that many columns, each the
# mean of as many consecutive segments (the figure is about 1300 pixels wide).
TIMELINE_COLUMNS = 1000
MINUTES_AFTER = 120.0  # seconds: a longer timeline's x axis is in minutes
PLOT_FORMATS = ("png", "svg", "pdf")


@dataclass
class TimelinePlotData:
    """A file's timeline as arrays: segment ``starts`` and ``ends`` (seconds) and
    ``scores (S, C)`` in the order of ``labels``."""

    file: str
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    labels: list[str]

    @classmethod
    def from_rows(cls, rows, labels: list[str] | None = None) -> TimelinePlotData:
        """From :class:`atfnn_fast.inference.TimelineRow` objects or their ``to_dict()``
        (one file's, in order)."""
        starts, ends, scores, file = [], [], [], None
        for row in rows:
            row = row if isinstance(row, dict) else row.to_dict()
            labels = labels or list(row["scores"])
            file = row["path"] if file is None else file
            starts.append(float(row["start"]))
            ends.append(float(row["end"]))
            scores.append([float(row["scores"][k]) for k in labels])
        if not starts:
            raise ValueError("the timeline has no rows")
        return cls(file, np.array(starts), np.array(ends), np.array(scores), list(labels))

    def mean_scores(self) -> dict[str, float]:
        """The mean of the rows' scores: ``predict``'s file scores when the rows are not
        smoothed."""
        return dict(zip(self.labels, (float(v) for v in self.scores.mean(0)), strict=True))


def read_timeline(path: str | os.PathLike, file: str | None = None) -> TimelinePlotData:
    """The timeline of one file from what ``predict --timeline --csv`` or ``--json``
    wrote (CSV, or JSON lines): ``file``'s rows, or the only file's when ``file`` is None.
    Error rows are skipped; a file not in it, several files and no ``file``, or a row
    that does not parse is a ValueError naming ``path``."""
    import csv
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a timeline (not UTF-8 text)") from None
    rows: dict[str, list[dict]] = {}
    labels = None
    try:
        if text.lstrip().startswith("{"):
            for line in text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    if "error" not in row:
                        rows.setdefault(row["path"], []).append(row)
        else:
            reader = csv.DictReader(io.StringIO(text))
            head = reader.fieldnames or []
            if head[:5] != ["path", "segment", "start", "end", "label"] or head[-1:] != ["error"]:
                raise ValueError(
                    "expected the columns path,segment,start,end,label,<labels>,error of "
                    f"`predict --timeline --csv`, got {','.join(head)}"
                )
            labels = head[5:-1]
            for row in reader:
                if not row["error"]:
                    scores = {k: row[k] for k in labels}
                    rows.setdefault(row["path"], []).append({**row, "scores": scores})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a timeline of `predict --timeline` ({err})") from None
    if not rows:
        raise ValueError(f"{path}: the timeline has no rows")
    if file is None:
        if len(rows) > 1:
            names = ", ".join(list(rows)[:3]) + (", ..." if len(rows) > 3 else "")
            raise ValueError(f"{path}: holds {len(rows)} files ({names}); name one")
        file = next(iter(rows))
    if file not in rows:
        raise ValueError(f"{path}: has no rows of {file}")
    try:
        return TimelinePlotData.from_rows(rows[file], labels)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a timeline of `predict --timeline` ({err})") from None


def smooth_scores(scores: np.ndarray, window: int) -> np.ndarray:
    """:func:`atfnn_fast.inference.smooth_probabilities` of ``(S, C)`` scores."""
    from atfnn_fast.inference import smooth_probabilities

    return np.array(list(smooth_probabilities(iter(scores), window)))


def bin_timeline(
    data: TimelinePlotData, columns: int = TIMELINE_COLUMNS
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(edges (G + 1,), scores (G, C), k)``: at most ``columns`` groups of ``k``
    consecutive segments (the last group may hold fewer), each group's scores the mean of
    its segments', its edges the first segment's start and the next group's."""
    n = len(data.starts)
    k = max(1, -(-n // columns))
    groups = range(0, n, k)
    scores = np.stack([data.scores[i : i + k].mean(0) for i in groups])
    edges = np.append(data.starts[::k], data.ends[-1])
    return edges, scores, k


def timeline_figure(data: TimelinePlotData, title: str, smooth: int = 1):
    """The matplotlib figure of :func:`save_timeline_plot`: the scores over time (stacked,
    smoothed over ``smooth`` segments if above 1) above a strip of the top label."""
    from matplotlib.colors import ListedColormap

    from .plotting import pyplot

    plt = pyplot()

    mean = data.mean_scores()
    shown = (
        data
        if smooth == 1
        else TimelinePlotData(
            data.file, data.starts, data.ends, smooth_scores(data.scores, smooth), data.labels
        )
    )
    edges, scores, k = bin_timeline(shown)
    total = float(data.ends[-1])
    minutes = total > MINUTES_AFTER
    scale = 60.0 if minutes else 1.0
    x = edges / scale
    palette = plt.get_cmap("tab10" if len(data.labels) <= 10 else "tab20").colors
    colors = [palette[i % len(palette)] for i in range(len(data.labels))]
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(12, 4.6), sharex=True, gridspec_kw={"height_ratios": [5, 1]}
    )
    steps = np.repeat(x, 2)[1:-1]  # each group's score held over its span
    ax.stackplot(steps, np.repeat(scores, 2, axis=0).T, colors=colors, labels=data.labels)
    ax.set_ylim(0, 1)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylabel("class scores (stacked)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, title="class")
    top = scores.argmax(1)
    strip.pcolormesh(
        x,
        [0, 1],
        top[None, :],
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=len(data.labels) - 0.5,
    )
    strip.set_yticks([0.5], ["top label"])
    strip.set_xlabel("time (min)" if minutes else "time (s)")
    length = f"{total / 60:.1f} min" if minutes else f"{total:.1f} s"
    seg = float(np.median(data.ends - data.starts)) if len(data.starts) > 1 else total
    how = [f"{len(data.starts)} segments of {seg:.2f} s"]
    if smooth > 1:
        how.append(f"each smoothed over {smooth} segments")
    if k > 1:
        how.append(f"each column the mean of {k} segments")
    best = max(mean, key=mean.get)
    fig.suptitle(
        f"{title} ({length}): mean of the segments {best} {mean[best]:.2f}\n" + "; ".join(how),
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def save_timeline_plot(
    data: TimelinePlotData, title: str, output: str | os.PathLike, smooth: int = 1
) -> Path:
    """Write :func:`timeline_figure` to ``output`` (PNG, SVG or PDF by its suffix),
    atomically; returns the path."""
    output = Path(output)
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        from atfnn_fast.errors import UsageError

        raise UsageError(
            f"--output: {output.name} must end in .png, .svg or .pdf (the format written)"
        )
    fig = timeline_figure(data, title, smooth)
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format=fmt, dpi=110)
    plt.close(fig)
    return write_atomic(output, out.getvalue())
