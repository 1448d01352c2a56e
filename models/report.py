"""Report files: PNG plots (ROC, PR, calibration, utility against threshold) and a Markdown
model card. Matplotlib runs headless (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import reliability_curve

__all__ = [
    "markdown_table",
    "plot_calibration",
    "plot_pr",
    "plot_roc",
    "plot_threshold_curve",
    "write_model_card",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    """`curves`: name -> (label, score); one line each."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pr(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, p) in curves.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(path: Path, label: np.ndarray, p: np.ndarray, title: str, *, bins: int = 10) -> Path:
    plt = _pyplot()
    mean_p, rate, count = reliability_curve(label, p, bins=bins, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max(float(mean_p.max()), float(rate.max())) * 1.1 if len(mean_p) else 1.0
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="perfect")
    ax.plot(mean_p, rate, marker="o", label="model (quantile bins)")
    ax.set(
        xlabel="mean predicted probability", ylabel="observed rate", title=title, xlim=(0, top), ylim=(0, top)
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_threshold_curve(
    path: Path,
    thresholds: Sequence[float],
    values: Sequence[float],
    title: str,
    ylabel: str,
    *,
    marker: float | None = None,
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(thresholds, values)
    if marker is not None:
        ax.axvline(marker, color="red", lw=0.8, ls="--", label=f"stored threshold {marker:.3g}")
        ax.legend(fontsize=8)
    ax.set(xscale="log", xlabel="threshold (probability)", ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_model_card(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Markdown: a title, then (heading, body) sections in order."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    path.write_text("\n".join(parts))
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
