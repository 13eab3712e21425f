"""The default comparison suite: small MLPs trained on scikit-learn's digits.

:func:`run_default_suite` trains three MLPs with scikit-learn's
``MLPClassifier`` (no torch needed), runs :func:`lipsdp.compare` on each, and
writes ``<out>/compare_default.csv`` and ``<out>/compare_default.png``
atomically.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .api import COMPARE_EXTRAS, DEFAULT_COMPARE
from .io import atomic_path
from .network import Network

#: the methods the suite runs by default: lipsdp.compare's default list
DEFAULT_METHODS = DEFAULT_COMPARE
LOWER_METHODS = COMPARE_EXTRAS  # the rows that are lower bounds (lower) or the exact constant (exact)


@dataclass(frozen=True)
class SuiteNet:
    """One network of the suite: name, hidden widths, activation, training seed."""

    name: str
    hidden: tuple[int, ...]
    activation: str
    seed: int = 0


DEFAULT_NETS = (
    SuiteNet("relu-64-32-32-10", (32, 32), "relu"),
    SuiteNet("tanh-64-32-32-10", (32, 32), "tanh"),
    SuiteNet("relu-64-64-64-64-10", (64, 64, 64), "relu"),
)

_SKLEARN_ACTIVATION = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic", "identity": "identity"}


@lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Standardised digits features ``(1797, 64)`` and labels."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(x), y


def train_digits_mlp(hidden: Sequence[int], activation: str = "relu", seed: int = 0, max_iter: int = 200):
    """Fit an ``MLPClassifier`` on the digits (a few seconds); returns the classifier."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(hidden), activation=_SKLEARN_ACTIVATION[activation], max_iter=max_iter, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def network_from_sklearn(clf, activation: str | None = None) -> Network:
    """The logits of a fitted ``MLPClassifier`` as a Network (sklearn coefs are (in, out))."""
    name = activation or {v: k for k, v in _SKLEARN_ACTIVATION.items()}[clf.activation]
    return Network.from_weights([w.T for w in clf.coefs_], list(clf.intercepts_), name)


def default_networks(nets: Sequence[SuiteNet] = DEFAULT_NETS) -> dict[str, Network]:
    """Train the suite's networks; returns ``{name: Network}``."""
    return {spec.name: network_from_sklearn(train_digits_mlp(spec.hidden, spec.activation, spec.seed), spec.activation) for spec in nets}


def compare_networks(networks: dict[str, Network], methods: Sequence[str], solver: str | None = None, progress: bool = True):
    """``lipsdp.compare`` for every (network, method), with a progress bar; one DataFrame."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .api import compare

    tables = []
    with tqdm(total=len(networks) * len(methods), desc="compare", disable=not progress) as bar:
        for name, net in networks.items():
            for method in methods:
                bar.set_postfix_str(f"{name}: {method}")
                # a long method (exact) shows its own bar under this one
                table = compare(net, methods=[method], solver=solver, progress=None if progress else False)
                table.insert(0, "network", name)
                tables.append(table)
                bar.update()
    frame = pd.concat(tables, ignore_index=True)
    return _with_gaps(frame)


def _with_gaps(frame):
    """Recompute ``gap`` = value / best lower bound of the same network (NaN without one)."""
    lower = frame[frame["method"].isin(LOWER_METHODS)].groupby("network")["value"].max()
    frame["gap"] = frame["value"] / frame["network"].map(lower)
    return frame


def relative_bounds(frame):
    """Each upper bound divided by the best lower bound of its network: what the figure shows.

    The reference is the best lower bound (``lower``/``exact``) where the table has a positive
    one for every network; otherwise the best (smallest) upper bound, so the figure never needs
    a lower bound to exist.

    Returns
    -------
    ratios : pandas.DataFrame
        Index: networks (in table order); columns: the upper-bound methods; NaN for failed rows.
    values : pandas.DataFrame
        The bounds themselves, same shape.
    reference : pandas.Series
        The divisor per network.
    kind : str
        ``"lower"`` or ``"upper"``: which best bound the reference is.
    """
    networks = list(dict.fromkeys(frame["network"]))
    uppers = [m for m in dict.fromkeys(frame["method"]) if m not in LOWER_METHODS]
    lower = frame[frame["method"].isin(LOWER_METHODS)].groupby("network")["value"].max().reindex(networks)
    kind = "lower" if lower.notna().all() and (lower > 0).all() else "upper"
    values = frame[frame["method"].isin(uppers)].pivot_table(index="network", columns="method", values="value",
                                                             dropna=False).reindex(index=networks, columns=uppers)
    reference = lower if kind == "lower" else values.min(axis=1)
    return values.div(reference, axis=0), values, reference, kind


def plot_comparison(frame, path: str | os.PathLike, title: str = "Lipschitz bounds on digits MLPs") -> Path:
    """Bar chart of :func:`relative_bounds` (:func:`lipsdp.figures.plot_bound_ratios`), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from .figures import plot_bound_ratios, save_figure

    _, values, reference, kind = relative_bounds(frame)
    norm = "ℓ∞" if "norm" in frame and set(frame["norm"].astype(str)) == {"inf"} else "ℓ2"
    label = "best of the lower-bound rows" if kind == "lower" else "no lower bound in the table: the best upper bound"
    fig, _ = plot_bound_ratios(values, reference, title=f"{title}: {norm} upper bounds relative to the best {kind} bound",
                               reference_label=label, reference_kind=kind)
    return save_figure(fig, path)


def write_csv(frame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return target


def suite_outputs(out: str | os.PathLike) -> tuple[Path, Path]:
    """Paths of the CSV table and the PNG figure that :func:`run_default_suite` writes under ``out``."""
    out = Path(out)
    return out / "compare_default.csv", out / "compare_default.png"


def run_default_suite(
    out: str | os.PathLike = "results",
    methods: Sequence[str] | None = None,
    solver: str | None = None,
    progress: bool = True,
    nets: Sequence[SuiteNet] | None = None,
):
    """Train the default digits MLPs, compare the methods, write CSV and figure.

    Parameters
    ----------
    out
        Output folder (created); receives ``compare_default.csv`` and ``.png``.
    methods
        Method names for :func:`lipsdp.compare` (default :data:`DEFAULT_METHODS`).
    solver
        Solver name, or None for the automatic choice.
    progress
        Show a tqdm bar over (network, method).
    nets
        The networks to train (default :data:`DEFAULT_NETS`).

    Returns
    -------
    pandas.DataFrame
        ``compare`` columns plus ``network``; the files are at :func:`suite_outputs`.

    Raises
    ------
    UnknownMethodError, UnknownSolverError, SolverUnavailableError, InvalidOptionError
        For a method or solver name that cannot run, before any network is trained.
    """
    from .api import check_method_names, check_solver_name

    names = check_method_names(methods or DEFAULT_METHODS, COMPARE_EXTRAS)
    check_solver_name(solver)
    networks = default_networks(DEFAULT_NETS if nets is None else nets)
    frame = compare_networks(networks, names, solver, progress)
    csv_path, png_path = suite_outputs(out)
    write_csv(frame, csv_path)
    plot_comparison(frame, png_path)
    return frame
