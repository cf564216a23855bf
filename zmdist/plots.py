"""Figures written beside results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zmdist.atomic import atomic_path


def reliability_diagram(bins: dict[str, np.ndarray], ece: float, path: Path, title: str = "") -> Path:
    """Accuracy vs confidence per bin (bars), the diagonal of perfect calibration, and bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = bins["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.nan_to_num(bins["accuracy"], nan=0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.bar(centers, acc, width=width * 0.95, color="#4C72B0", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title} ECE = {ece:.3f}".strip())
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, bins["count"], width=width * 0.95, color="#DD8452", edgecolor="black")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("samples")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
