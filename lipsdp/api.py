"""The public entry points: :func:`estimate` and :func:`compare`.

Both check their arguments before any work: method and solver names, every
keyword option against the options the method and the solver take
(:class:`~lipsdp.errors.InvalidOptionError` names the culprit and lists the
accepted ones), and the size of the SDP against the machine's memory
(:mod:`lipsdp.budget`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from typing import Any, Sequence

import numpy as np

from . import budget
from .errors import InvalidOptionError, LipSDPError, NotApplicableError, UnknownMethodError
from .methods import LipschitzBound, method_spec, methods as registered_methods
from .network import Network
from .solvers import resolve_solver, solver_options, unknown_options_message

DEFAULT_COMPARE = ("naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lower")
#: rows of :func:`compare` that are not registered methods
COMPARE_EXTRAS = ("lower", "exact")

_LIPSDP_OPTIONS = {2: ("split", "cross_terms"), np.inf: ("cross_terms", "output_row", "rows")}
#: Options each built-in method consumes itself, by norm; every other option goes to the solver.
#: A method missing here (registered elsewhere) gets its options passed on unchecked.
METHOD_OPTIONS = {
    "naive": {2: (), np.inf: ()},
    "eclipse-fast": {2: ()},
    "lipsdp-neuron": _LIPSDP_OPTIONS,
    "lipsdp-layer": _LIPSDP_OPTIONS,
    "lipsdp-rr": _LIPSDP_OPTIONS,
    "lipsdp-neuron-layerwise": {2: ()},
}
#: methods that call no solver (closed forms), hence take no solver options
NO_SOLVER_METHODS = frozenset({"naive", "eclipse-fast"})
#: estimate's own parameters, offered as corrections of a misspelt option
_ESTIMATE_PARAMETERS = ("method", "norm", "solver", "reduce", "max_memory_gb")


def as_network(model: Any) -> Network:
    """A :class:`Network` from a Network, a torch module, or a path to a model file."""
    if isinstance(model, Network):
        return model
    if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
        from .io import load_network

        return load_network(model)
    return Network.from_torch(model)


def _parse_norm(norm) -> float:
    if isinstance(norm, str):
        norm = norm.lower()
    if isinstance(norm, (str, numbers.Real)):
        if norm in (2, "2", "l2"):
            return 2
        if norm in (math.inf, "inf", "linf", "infinity"):
            return np.inf
    raise NotApplicableError(f"unsupported norm {norm!r}; use 2 or 'inf'")


def _norm_label(norm) -> str:
    return "2" if norm == 2 else "'inf'"


# ----------------------------------------------------------------------------- argument checks
def check_method_names(names: Any, extras: Sequence[str] = ()) -> list[str]:
    """``names`` as a list of known method names (a single string is one method).

    Raises
    ------
    UnknownMethodError
        For the first name that is neither registered nor in ``extras`` (the message lists them all).
    InvalidOptionError
        For ``names`` that is neither a string nor an iterable of names.
    """
    known = set(registered_methods()) | set(extras)
    if not isinstance(names, str) and not hasattr(names, "__iter__"):
        raise InvalidOptionError(f"methods must be a method name or a list of names, got {names!r}; "
                                 f"known: {', '.join(sorted(known))}")
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise UnknownMethodError(str(name), known)
    return names


def check_solver_name(solver: Any) -> None:
    """Refuse, before any work, a solver name that is unknown or not usable here.

    None and ``"auto"`` (the automatic choice) always pass.  Raises InvalidOptionError (not a
    string), UnknownSolverError, or SolverUnavailableError/LicenseError.
    """
    if solver is None or solver == "auto":
        return
    resolve_solver(solver)


def _check_reduce(reduce: Any) -> None:
    if not isinstance(reduce, (bool, np.bool_)):
        raise InvalidOptionError(f"reduce must be True or False, got {reduce!r}")


def _check_method_values(options: dict) -> None:
    """Types of the LipSDP options (their ranges against the network are checked where they are used)."""
    split = options.get("split")
    integral = isinstance(split, numbers.Integral) and not isinstance(split, (bool, np.bool_))
    if split is not None and (not integral or split < 1):
        raise InvalidOptionError(f"split must be a positive number of layers per chunk (an integer), got {split!r}")
    cross = options.get("cross_terms")
    if cross is not None and not isinstance(cross, (str, bool)):
        raise InvalidOptionError(f"cross_terms must be a string such as 'exact' or 'none' (or a bool), got {cross!r}")


def check_options(method: str, norm, solver: str | None, options: dict) -> None:
    """Raise :class:`InvalidOptionError` for an option neither ``method`` (at ``norm``) nor ``solver`` takes.

    Solver options are checked against the named solver, or for the automatic choice against
    any solver it may pick (:func:`lipsdp.solvers.solve` checks the one it picks).
    """
    table = METHOD_OPTIONS.get(method)
    if table is None:
        return
    own = table.get(norm, ())
    for name in options:
        norms = [n for n, names in table.items() if name in names]
        if name not in own and norms:
            raise InvalidOptionError(
                f"option {name!r} of method {method!r} applies to norm={_norm_label(norms[0])} only, "
                f"not to norm={_norm_label(norm)}"
            )
    _check_method_values(options)
    unknown = [name for name in options if name not in own]
    if not unknown:
        return
    accepted, shown, where, label = _solver_scope(method, norm, solver, own)
    unknown = [name for name in unknown if name not in accepted]
    if unknown:
        also = _ESTIMATE_PARAMETERS + tuple(accepted)
        raise InvalidOptionError(unknown_options_message(unknown, where, shown, also=also, label=label))


def _solver_scope(method: str, norm, solver: str | None, own: Sequence[str]) -> tuple[set, set, str, str]:
    """``(accepted, listed, where, label)`` for the error message of an option ``method`` does not take."""
    if method in NO_SOLVER_METHODS:
        where = f"method {method!r} (it calls no solver, so it takes no solver options)"
        return set(own), set(own), where, "accepted"
    if solver in (None, "auto"):
        # which solver runs depends on the problem: accept what any may take, list the method's own
        where = (f"method {method!r} (norm={_norm_label(norm)}) with the automatic solver choice (solver options "
                 "are checked against the solver it picks; solver_options(name) from lipsdp.solvers lists a solver's)")
        return set(own) | solver_options(None), set(own), where, "method options"
    accepted = set(own) | solver_options(solver)
    return accepted, accepted, f"method {method!r} (norm={_norm_label(norm)}) with solver {solver!r}", "accepted"


def _with_assumptions(bound: LipschitzBound, net: Network) -> LipschitzBound:
    """``bound`` carrying the network's assumptions (e.g. an activation the model file could not say)."""
    extra = tuple(getattr(net, "assumptions", ()) or ())
    if not extra or not dataclasses.is_dataclass(bound) or not hasattr(bound, "assumptions"):
        return bound
    merged = tuple(dict.fromkeys(tuple(bound.assumptions or ()) + extra))
    return dataclasses.replace(bound, assumptions=merged)


# ----------------------------------------------------------------------------- estimate
def estimate(model: Any, method: str = "lipsdp-neuron", norm=2, solver: str | None = None, *,
             reduce: bool = True, max_memory_gb: float | None = None, **options) -> LipschitzBound:
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
    max_memory_gb
        Memory budget in GiB for the SDP (default: a fraction of the memory
        available now; see :mod:`lipsdp.budget`).
    **options
        Method options (LipSDP: ``split=k`` and ``cross_terms`` for norm 2;
        ``cross_terms``, ``output_row=i`` and ``rows=(i, j)`` for norm ``"inf"``)
        and options of the solver (``from lipsdp.solvers import solver_options``;
        ``solver_options("ipm")`` lists them).

    Returns
    -------
    LipschitzBound
        ``float(bound)`` is the certified value; ``assumptions`` lists what was
        assumed about the model (e.g. the activation of a state dict).

    Raises
    ------
    UnknownMethodError, UnknownSolverError, InvalidOptionError
        For a name or option that is not known, before any work.
    ProblemTooLargeError
        When the SDP would need more memory than the budget (nothing large is built first).
    """
    if not isinstance(method, str):
        raise InvalidOptionError(f"method must be a name from lipsdp.methods(), got {method!r}")
    spec = method_spec(method)
    norm = _parse_norm(norm)
    if norm not in spec.norms:
        raise NotApplicableError(f"method {method!r} supports norms {spec.norms}, not {norm}")
    check_solver_name(solver)
    _check_reduce(reduce)
    check_options(method, norm, solver, options)
    budget.check_max_memory(max_memory_gb)
    net = as_network(model)
    budget.check_size(net, method, norm, solver, options, max_memory_gb)
    bound = spec.run(net, norm=norm, solver=solver, reduce=reduce, **options)
    return _with_assumptions(bound, net)


# ----------------------------------------------------------------------------- compare
def _check_lower_options(lower_options: Any, norm) -> dict:
    """``lower_options`` checked against the lower-bound function used at ``norm``."""
    if lower_options is None:
        return {}
    if not isinstance(lower_options, dict):
        raise InvalidOptionError(f"lower_options must be a dict of keyword options, got {lower_options!r}")
    function = _lower_function(norm)
    accepted = list(inspect.signature(function).parameters)[1:]  # after the network
    unknown = [name for name in lower_options if name not in accepted]
    if unknown:
        raise InvalidOptionError(unknown_options_message(unknown, f"lower_options ({function.__name__})", accepted))
    return dict(lower_options)


def _lower_function(norm):
    if norm == 2:
        from .lower import gradient_lower_bound

        return gradient_lower_bound
    from .linf import linf_lower_bound

    return linf_lower_bound


def _compare_row(net: Network, name: str, norm, solver, lower_options: dict, max_memory_gb) -> dict:
    """One row of :func:`compare` (raises LipSDPError on failure)."""
    import time

    start = time.perf_counter()
    if name == "lower":
        value = _lower_function(norm)(net, **lower_options)
        value = float(getattr(value, "value", value))
        return dict(method="lower", value=value, raw_value=value, solver="none", status="lower-bound",
                    solve_time=time.perf_counter() - start)
    if name == "exact":
        from .lower import exact_pattern_bound

        pb = exact_pattern_bound(net)
        return dict(method="exact", value=pb.max_realizable, raw_value=pb.max_all_patterns, solver="none",
                    status="exact", solve_time=time.perf_counter() - start)
    b = estimate(net, method=name, norm=norm, solver=solver, max_memory_gb=max_memory_gb)
    return dict(method=b.method, value=b.value, raw_value=b.raw_value, solver=b.solver, status=b.status,
                solve_time=b.solve_time, certificate_margin=b.certificate_margin)


def compare(model: Any, methods: Sequence[str] | str | None = None, norm=2, solver: str | None = None,
            progress: bool = False, lower_options: dict | None = None, *, max_memory_gb: float | None = None):
    """Run several methods on one model and tabulate them.

    ``"lower"`` (gradient-ascent lower bound; for ``norm="inf"`` the ℓ∞
    finite-difference bound :func:`lipsdp.linf.linf_lower_bound`) and ``"exact"``
    (the exact ℓ2 constant of small piecewise-linear nets by activation-pattern
    enumeration; skipped for ``norm="inf"``) may be listed among the methods.
    ``methods`` may be one name.  Every name, the solver and ``lower_options``
    are checked before any method runs; a method that then fails on this
    model is kept as a row whose ``status`` holds the error message and whose
    value is NaN.

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

    names = check_method_names(DEFAULT_COMPARE if methods is None else methods, COMPARE_EXTRAS)
    norm = _parse_norm(norm)
    check_solver_name(solver)
    lower_options = _check_lower_options(lower_options, norm)
    budget.check_max_memory(max_memory_gb)
    net = as_network(model)
    if norm != 2:
        names = [n for n in names if n != "exact"]
    rows = []
    for name in tqdm(names, desc="methods", disable=not progress, leave=False):
        start = time.perf_counter()
        try:
            rows.append(_compare_row(net, name, norm, solver, lower_options, max_memory_gb))
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
