"""The scatter of measured tasks with the fitted line and its prediction band (one panel per target)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zmdist.atomic import atomic_path
from zmdist.transfer.table import line_of


def fit_figure(fit: dict[str, Any], level: float, path: Path, predictions: list[dict[str, Any]] | None = None) -> Path:
    """Measured tasks (dots, labelled), the line, and the ``level`` prediction band; predicted new tasks
    (if any) as crosses with their interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(fit["fits"])
    x = np.asarray(fit["scores"])
    fig, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 4.0), squeeze=False)
    span = x.max() - x.min()
    grid = np.linspace(x.min() - 0.1 * span, x.max() + 0.1 * span, 100)
    for ax, target in zip(axes[0], targets):
        line = line_of(fit, target)
        band = np.array([line.predict(float(g), level) for g in grid])
        ax.fill_between(grid, band[:, 1], band[:, 2], color="#4C72B0", alpha=0.15, label=f"{level:.0%} prediction")
        ax.plot(grid, band[:, 0], color="#4C72B0")
        y = np.asarray(fit["targets"][target])
        ax.scatter(x, y, color="black", zorder=3)
        for name, xi, yi in zip(fit["tasks"], x, y):
            ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for p in predictions or []:
            pred, low, high = p[target]["prediction"], p[target]["low"], p[target]["high"]
            ax.errorbar([p["score"]], [pred], yerr=[[pred - low], [high - pred]], fmt="x", color="#DD8452")
        ax.set_xlabel(fit["score_column"])
        ax.set_ylabel(target)
        ax.set_title(f"{target}: R^2 {line.r2:.2f}, LOO RMSE {line.loo_rmse:.3g}", fontsize=9)
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
