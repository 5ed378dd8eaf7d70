"""Figures of the experiment reports (matplotlib, PNG; ``pip install 'diffmm[report]'``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from diffmm.errors import ConfigError
from diffmm.utils import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'diffmm[report]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)  # pyplot keeps every open figure until it is closed
    return path


def _all_whole(xs) -> bool:
    """Whether every value of every sequence in ``xs`` is a finite whole number."""
    try:
        values = np.concatenate([np.asarray(x, dtype=float).ravel() for x in xs])
    except (TypeError, ValueError):  # text categories
        return False
    return values.size > 0 and bool(np.all(np.isfinite(values) & (values == np.round(values))))


def line_plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One line per name: ``curves[name] = (x values, y values)``. When every x value is a
    whole number (epochs, layer counts) the x axis has only whole-number ticks."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    if _all_whole(x for x, _ in curves.values()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def bar_plot(
    values: Mapping[str, tuple[float, float]], path: str | Path, *, title: str, ylabel: str
) -> Path:
    """One bar per name with an error bar: ``values[name] = (mean, std)``."""
    plt = _pyplot()
    names = list(values)
    means = [values[n][0] for n in names]
    stds = [values[n][1] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4.5))
    bars = ax.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], fontsize=7, padding=2)
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def grouped_bar_plot(
    groups: Sequence[str],
    values: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Bars grouped by ``groups``: ``values[name][g]`` is name's bar in group ``g``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4.5))
    width = 0.8 / max(len(values), 1)
    x = np.arange(len(groups))
    for i, (name, ys) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, ys, width, label=name)
    ax.set_xticks(x, groups)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """A heat map with each cell's value written in it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.9 * len(rows) + 2))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for (r, c), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", color="white", fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax)
    return _save(fig, Path(path))
