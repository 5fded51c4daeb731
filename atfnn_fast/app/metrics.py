"""Speech emotion recognition metrics: WAR (accuracy), UAR (mean per-class recall), the
confusion matrix, and its plot."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from atfnn_fast.files import write_atomic


def confusion(true: list[int], pred: list[int], n_classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        matrix[t, p] += 1
    return matrix


def summarize(true: list[int], pred: list[int], labels: list[str]) -> dict:
    """WAR, UAR (over the classes present in ``true``), per-class recall, confusion."""
    matrix = confusion(true, pred, len(labels))
    support = matrix.sum(axis=1)
    recall = {
        label: (float(matrix[i, i] / support[i]) if support[i] else None)
        for i, label in enumerate(labels)
    }
    present = [r for r in recall.values() if r is not None]
    return {
        "war": float(np.trace(matrix) / max(1, matrix.sum())),
        "uar": float(np.mean(present)) if present else 0.0,
        "recall": recall,
        "confusion": matrix.tolist(),
        "labels": list(labels),
        "utterances": int(matrix.sum()),
    }


def plot_confusion(metrics: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    from .plotting import pyplot

    plt = pyplot()

    matrix = np.asarray(metrics["confusion"], dtype=float)
    labels = metrics["labels"]
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.8 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}",
                ha="center",
                va="center",
                color="white" if rows[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"WAR {metrics['war']:.1%}  UAR {metrics['uar']:.1%}")
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, png.getvalue())
