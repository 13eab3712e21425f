"""Helpers shared by the notebooks: where their figures go, and the bound-ratio bar chart.

The notebooks import this module from their own directory, which is the kernel's
working directory in JupyterLab, under ``jupytext --execute`` and in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from lipsdp import figures

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
    return figures.save_figure(fig, results_dir() / name, close=False)  # the notebook still shows it


def plot_bound_ratios(upper: pd.DataFrame, lower: pd.Series, title: str, lower_label: str):
    """Each certified upper bound divided by its network's lower bound (:func:`lipsdp.figures.plot_bound_ratios`)."""
    return figures.plot_bound_ratios(upper, lower, title=title, reference_label=lower_label, reference_kind="lower")
