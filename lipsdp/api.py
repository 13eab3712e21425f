"""The public entry points: :func:`estimate` and :func:`compare`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import LipSDPError, NotApplicableError
from .methods import LipschitzBound, method_spec
from .network import Network

DEFAULT_COMPARE = ("naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lower")


def as_network(model: Any) -> Network:
    """A :class:`Network` from a Network, a torch module, or a path to a model file."""
    if isinstance(model, Network):
        return model
    if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
        from .io import load_network

        return load_network(model)
    return Network.from_torch(model)


def _parse_norm(norm) -> float:
    if norm in (2, 2.0, "2", "l2"):
        return 2
    if norm in (np.inf, math.inf, "inf", "linf", "infinity"):
        return np.inf
    raise NotApplicableError(f"unsupported norm {norm!r}; use 2 or 'inf'")


def estimate(model: Any, method: str = "lipsdp-neuron", norm=2, solver: str | None = None, *,
             reduce: bool = True, **options) -> LipschitzBound:
    """Certified upper bound on the Lipschitz constant of ``model``.

    Parameters
    ----------
    model
        A :class:`Network`, a torch ``nn.Module`` (``nn.Sequential`` of supported
        layers), or a path to a saved model (see :func:`lipsdp.io.load_network`).
    method
        A name from :func:`lipsdp.methods` (default ``"lipsdp-neuron"``).
    norm
        2 (default) or ``"inf"``.
    solver
        A name from :func:`lipsdp.solvers`, ``"cvxpy:<SOLVER>"``, or None for the
        automatic choice.
    reduce
        Apply the exact reductions of MATH §4 (SVD input/output reduction and
        per-layer normalisation) before solving; they never change the value.
    **options
        Method options (``split=k`` for LipSDP) and solver options.

    Returns
    -------
    LipschitzBound
        ``float(bound)`` is the certified value.
    """
    net = as_network(model)
    spec = method_spec(method)
    norm = _parse_norm(norm)
    if norm not in spec.norms:
        raise NotApplicableError(f"method {method!r} supports norms {spec.norms}, not {norm}")
    return spec.run(net, norm=norm, solver=solver, reduce=reduce, **options)


def compare(model: Any, methods: Sequence[str] | None = None, norm=2, solver: str | None = None,
            progress: bool = False, lower_options: dict | None = None):
    """Run several methods on one model and tabulate them.

    ``"lower"`` (gradient-ascent lower bound; for ``norm="inf"`` the ℓ∞
    finite-difference bound :func:`lipsdp.linf.linf_lower_bound`) and ``"exact"``
    (the exact ℓ2 constant of small piecewise-linear nets by activation-pattern
    enumeration; skipped for ``norm="inf"``) may be listed among the methods.  A method that fails is kept as a row whose
    ``status`` holds the error message and whose value is NaN.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method, norm, value, raw_value, solver, status,
        solve_time, certificate_margin, gap`` where ``gap`` is value / the best
        lower bound in the table.
    """
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    net = as_network(model)
    norm = _parse_norm(norm)
    names = list(methods) if methods is not None else list(DEFAULT_COMPARE)
    if norm != 2:
        names = [n for n in names if n != "exact"]
    rows = []
    for name in tqdm(names, desc="methods", disable=not progress, leave=False):
        start = time.perf_counter()
        try:
            if name == "lower" and norm != 2:
                from .linf import linf_lower_bound

                value = linf_lower_bound(net)
                rows.append(dict(method="lower", value=value, raw_value=value, solver="none",
                                 status="lower-bound", solve_time=time.perf_counter() - start))
            elif name == "lower":
                from .lower import gradient_lower_bound

                lb = gradient_lower_bound(net, **(lower_options or {}))
                rows.append(dict(method="lower", value=lb.value, raw_value=lb.value, solver="none",
                                 status="lower-bound", solve_time=time.perf_counter() - start))
            elif name == "exact":
                from .lower import exact_pattern_bound

                pb = exact_pattern_bound(net)
                rows.append(dict(method="exact", value=pb.max_realizable, raw_value=pb.max_all_patterns,
                                 solver="none", status="exact", solve_time=time.perf_counter() - start))
            else:
                b = estimate(net, method=name, norm=norm, solver=solver)
                rows.append(dict(method=b.method, value=b.value, raw_value=b.raw_value, solver=b.solver,
                                 status=b.status, solve_time=b.solve_time, certificate_margin=b.certificate_margin))
        except LipSDPError as exc:
            rows.append(dict(method=name, value=float("nan"), raw_value=float("nan"), solver=str(solver),
                             status=f"error: {type(exc).__name__}: {exc}", solve_time=time.perf_counter() - start))
    for row in rows:
        row["norm"] = "inf" if norm != 2 else "2"
    table = pd.DataFrame(rows, columns=["method", "norm", "value", "raw_value", "solver", "status", "solve_time",
                                        "certificate_margin"])
    lower_rows = table[table["status"].isin(["lower-bound", "exact"])]
    best_lower = lower_rows["value"].max() if len(lower_rows) else float("nan")
    table["gap"] = table["value"] / best_lower if best_lower and best_lower > 0 else float("nan")
    return table
