"""Helpers shared by the notebooks: where their figures go, and the bound-ratio bar chart.

The notebooks import this module from their own directory, which is the kernel's
working directory in JupyterLab, under ``jupytext --execute`` and in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lipsdp.io import atomic_path

#: Environment variable naming the directory the notebooks write their figures to.
RESULTS_ENV = "LIPSDP_RESULTS"


def results_dir() -> Path:
    """Directory for the notebooks' figures (created if missing).

    Returns
    -------
    pathlib.Path
        ``$LIPSDP_RESULTS`` when set, else ``results/`` of this checkout (the
        committed figures). The tests point the variable to a temporary
        directory so that they never write into the repository.
    """
    configured = os.environ.get(RESULTS_ENV)
    path = Path(configured).expanduser() if configured else Path(__file__).resolve().parents[1] / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, name: str) -> Path:
    """Write ``fig`` as PNG ``name`` under :func:`results_dir` (atomically) and return the path."""
    target = results_dir() / name
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return target


def _bar_label(value: float, ratio: float) -> str:
    return f"{value:.4g}\n{ratio:.2f}×"


def plot_bound_ratios(upper: pd.DataFrame, lower: pd.Series, title: str, lower_label: str):
    """Bars of each certified upper bound divided by its network's lower bound.

    The true Lipschitz constant lies between the lower bound and every upper
    bound, so a bar's height is how far that upper bound can be from the truth.
    The lower bound is the dashed line at 1; the axis is linear from 0 so that
    bar lengths compare as the values do. Each bar is labelled with its value
    and its ratio; a missing value (NaN) is drawn as an empty hatched slot
    labelled "no value" instead of being left out.

    Parameters
    ----------
    upper : pandas.DataFrame
        One row per network, one column per method, certified upper bounds.
    lower : pandas.Series
        Lower bound of each network (indexed like ``upper``); all must be > 0.
    title : str
        Axes title.
    lower_label : str
        How the lower bound was computed (legend text of the line at 1).

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.axes.Axes)
    """
    lower = lower.reindex(upper.index)
    if not (lower > 0).all():
        raise ValueError(f"every network needs a positive lower bound, got {lower.to_dict()}")
    ratios = upper.div(lower, axis=0)
    n_nets, n_methods = ratios.shape
    width = 0.8 / n_methods
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.5 * n_nets * n_methods), 5.0), layout="constrained")
    top = float(np.nanmax(ratios.to_numpy(float)))
    for j, method in enumerate(ratios.columns):
        x = np.arange(n_nets) + (j - (n_methods - 1) / 2) * width
        heights = ratios[method].to_numpy(float)
        present = ~np.isnan(heights)
        bars = ax.bar(x[present], heights[present], width, label=method, color=f"C{j}")
        values = upper[method].to_numpy(float)[present]
        ax.bar_label(bars, [_bar_label(v, r) for v, r in zip(values, heights[present])], fontsize=7, padding=2)
        if not present.all():
            empty = ax.bar(x[~present], np.full((~present).sum(), top), width, fill=False, hatch="//",
                           edgecolor=f"C{j}")
            ax.bar_label(empty, ["no value"] * len(empty), fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.5, label=f"lower bound = 1 ({lower_label})")
    ax.set_xticks(np.arange(n_nets), [f"{net}\nlower bound {lb:.4g}" for net, lb in lower.items()], fontsize=8)
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("upper bound / lower bound")
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)  # outside the axes: never over a bar
    return fig, ax
