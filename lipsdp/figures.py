"""The bound-ratio bar chart that the comparison suite and the notebooks draw.

A reader compares upper bounds by how far each can be from the true constant, so
every bar is an upper bound divided by a reference: the best lower bound of its
network (the truth lies between the two), or, where no lower bound exists, the
best upper bound.  The axis is linear from 0 while the ratios allow (bar lengths
then compare as the values do), logarithmic with plain tick labels beyond
:data:`LINEAR_RATIO_LIMIT`; each bar carries its value and ratio, and a missing
value is drawn as a hatched "no value" slot instead of being left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import atomic_path

#: largest ratio drawn on a linear axis
LINEAR_RATIO_LIMIT = 10.0


def _bar_text(value: float, ratio: float) -> str:
    return f"{value:.4g}\n{ratio:.3f}×" if ratio < LINEAR_RATIO_LIMIT else f"{value:.4g}\n{ratio:.4g}×"


def plot_bound_ratios(upper, reference, *, title: str, reference_label: str, reference_kind: str = "lower"):
    """Bars of each upper bound divided by its network's reference bound.

    Parameters
    ----------
    upper : pandas.DataFrame
        One row per network, one column per method: upper bounds (NaN where a method gave none).
    reference : pandas.Series
        Positive reference bound per network (indexed like ``upper``).
    title : str
        Axes title.
    reference_label : str
        How the reference was obtained (legend text of the dashed line at 1).
    reference_kind : str
        ``"lower"`` or ``"upper"``: which best bound the reference is (axis label).

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.axes.Axes)
    """
    import matplotlib.pyplot as plt

    reference = reference.reindex(upper.index)
    if not (reference > 0).all():
        from .errors import NotApplicableError

        raise NotApplicableError(f"no figure: every network needs a positive reference bound (a lower bound or a "
                                 f"certified upper bound), got {reference.to_dict()}")
    ratios = upper.div(reference, axis=0)
    n_nets, n_methods = ratios.shape
    width = 0.8 / max(1, n_methods)
    top = float(np.nanmax(ratios.to_numpy(float), initial=1.0))
    logarithmic = top > LINEAR_RATIO_LIMIT
    bottom = 1.0 if logarithmic else 0.0  # a log axis cannot start at 0
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.5 * n_nets * n_methods), 5.0), layout="constrained")
    for j, method in enumerate(ratios.columns):
        x = np.arange(n_nets) + (j - (n_methods - 1) / 2) * width
        heights = ratios[method].to_numpy(float)
        present = ~np.isnan(heights)
        bars = ax.bar(x[present], heights[present] - bottom, width, bottom=bottom, label=method, color=f"C{j}")
        values = upper[method].to_numpy(float)[present]
        ax.bar_label(bars, [_bar_text(v, r) for v, r in zip(values, heights[present])], fontsize=7, padding=2)
        if not present.all():
            empty = ax.bar(x[~present], np.full((~present).sum(), top - bottom), width, bottom=bottom, fill=False,
                           hatch="//", edgecolor=f"C{j}")
            ax.bar_label(empty, ["no value"] * len(empty), fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.5, label=f"{reference_kind} bound = 1 ({reference_label})")
    ax.set_xticks(np.arange(n_nets), [f"{net}\n{reference_kind} bound {ref:.4g}" for net, ref in reference.items()],
                  fontsize=8)
    if logarithmic:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.set_ylim(1.0, top * 3.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100: no 10^k labels
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(0, top * 1.25)
    ax.set_ylabel(f"upper bound / best {reference_kind} bound")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)  # outside the axes: never over a bar
    return fig, ax


def save_figure(fig, path: str | os.PathLike, close: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (then close it unless it is still to be shown)."""
    import matplotlib.pyplot as plt

    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    if close:
        plt.close(fig)
    return target
