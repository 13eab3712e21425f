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
from .bound import LipschitzBound
from .bound_methods import method_spec, methods as registered_methods, run_method
from .network import Network
from .solver_registry import resolve_solver, solver_options, unknown_options_message

DEFAULT_COMPARE = ("naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lower")
#: rows of :func:`compare` that are not registered methods
COMPARE_EXTRAS = ("lower", "exact")

#: estimate's own parameters, offered as corrections of a misspelt option
_ESTIMATE_PARAMETERS = ("method", "norm", "solver", "reduce", "max_memory_gb", "input_shape")


def as_network(model: Any, input_shape: Any = None) -> Network:
    """A :class:`Network` from a Network, a torch module, or a path to a model file.

    ``input_shape`` (one input's shape without the batch axis, e.g. ``(1, 28, 28)``) is required
    for models with convolutions or pooling (:class:`~lipsdp.errors.InputShapeRequiredError`
    otherwise) and checked against the network when given.
    """
    from .io import check_input_shape, load_network

    if isinstance(model, Network):
        return check_input_shape(model, input_shape)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return load_network(model, input_shape=input_shape)
    return Network.from_torch(model, input_shape)


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
    any solver it may pick (:func:`lipsdp.solver_registry.solve` checks the one it picks).
    """
    table = method_spec(method).options
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
    if not method_spec(method).uses_solver:
        where = f"method {method!r} (it calls no solver, so it takes no solver options)"
        return set(own), set(own), where, "accepted"
    if solver in (None, "auto"):
        # which solver runs depends on the problem: accept what any may take, list the method's own
        where = (f"method {method!r} (norm={_norm_label(norm)}) with the automatic solver choice (solver options "
                 "are checked against the solver it picks; solver_options(name) from lipsdp.solver_registry lists a solver's)")
        return set(own) | solver_options(None), set(own), where, "method options"
    accepted = set(own) | solver_options(solver)
    return accepted, accepted, f"method {method!r} (norm={_norm_label(norm)}) with solver {solver!r}", "accepted"


# ----------------------------------------------------------------------------- estimate
def estimate(model: Any, method: str = "lipsdp-neuron", norm=2, solver: str | None = None, *,
             reduce: bool = True, max_memory_gb: float | None = None, input_shape: Any = None,
             **options) -> LipschitzBound:
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
        Apply the exact reductions of docs/formulations.md §4 (SVD input/output reduction and
        per-layer normalisation) before solving; they never change the value.
    max_memory_gb
        Memory budget in GiB for the SDP (default: a fraction of the memory
        available now; see :mod:`lipsdp.budget`).
    input_shape
        Shape of one input without the batch axis, e.g. ``(1, 28, 28)``: required for a
        model with convolutions or pooling (docs/cnn.md says how each method treats them).
    **options
        Method options (LipSDP: ``split=k`` and ``cross_terms`` for norm 2;
        ``cross_terms``, ``output_row=i`` and ``rows=(i, j)`` for norm ``"inf"``)
        and options of the solver (``from lipsdp.solver_registry import solver_options``;
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
    if method in COMPARE_EXTRAS:
        raise NotApplicableError(
            f"{method!r} is not an upper bound: estimate returns certified upper bounds only. "
            f"Use lipsdp.compare(model, methods=[{method!r}]) or `lipsdp estimate --method {method}` (labelled as such)"
        )
    spec = method_spec(method)
    norm = _parse_norm(norm)
    if norm not in spec.norms:
        raise NotApplicableError(f"method {method!r} supports norms {spec.norms}, not {norm}")
    check_solver_name(solver)
    if solver is not None and not spec.uses_solver:
        raise InvalidOptionError(f"method {method!r} is a closed form and uses no solver; drop solver={solver!r}")
    _check_reduce(reduce)
    check_options(method, norm, solver, options)
    budget.check_max_memory(max_memory_gb)
    net = as_network(model, input_shape)
    budget.check_size(net, method, norm, solver, options, max_memory_gb)
    bound = run_method(spec, net, norm=norm, solver=solver, reduce=reduce, **options)
    # what the model's source did not say (e.g. the activation of a state dict) is part of the answer
    return dataclasses.replace(bound, assumptions=net.assumptions) if net.assumptions else bound


# ----------------------------------------------------------------------------- compare
#: ``status`` of the rows of :func:`compare` that are lower bounds (``gap`` divides by the best of them)
LOWER_STATUSES = ("lower-bound", "exact")


def _lower_function(norm):
    if norm == 2:
        from .lower import gradient_lower_bound

        return gradient_lower_bound
    from .linf import linf_lower_bound

    return linf_lower_bound


def _check_row_options(options: Any, what: str, function, controlled: Sequence[str] = ()) -> dict:
    """``options`` (a dict or None) checked against the keyword parameters of ``function``.

    ``controlled``: parameters :func:`compare` sets itself (refused here).
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidOptionError(f"{what} must be a dict of keyword options, got {options!r}")
    accepted = [p for p in list(inspect.signature(function).parameters)[1:] if p not in controlled]  # after the net
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise InvalidOptionError(unknown_options_message(unknown, f"{what} ({function.__name__})", accepted))
    return dict(options)


def _row(method: str, value: float, raw_value: float, status: str, start: float, solver: str = "none") -> dict:
    import time

    return dict(method=method, value=value, raw_value=raw_value, solver=solver, status=status,
                solve_time=time.perf_counter() - start)


def _bound_row(net: Network, name: str, norm, solver, options: dict, max_memory_gb, progress) -> dict:
    """One row of :func:`compare` for a checked name (raises LipSDPError on failure)."""
    import time

    start = time.perf_counter()
    if name == "lower":
        lower_options = options.get("lower", {})
        try:
            value = _lower_function(norm)(net, **lower_options)
        except TypeError as exc:  # an option value of the wrong type
            raise InvalidOptionError(f"lower_options {lower_options}: {exc}") from exc
        value = float(getattr(value, "value", value))
        return _row("lower", value, value, "lower-bound", start)
    if name == "exact":
        if norm != 2:
            raise NotApplicableError("the method 'exact' gives the ℓ2 constant only; use 'lower' for norm='inf'")
        from .lower import exact_pattern_bound

        pb = exact_pattern_bound(net, progress=progress, **options.get("exact", {}))
        return _row("exact", pb.max_realizable, pb.max_all_patterns, "exact", start)
    solver = solver if method_spec(name).uses_solver else None  # closed forms take no solver
    b = estimate(net, method=name, norm=norm, solver=solver, max_memory_gb=max_memory_gb)
    return dict(method=b.method, value=b.value, raw_value=b.raw_value, solver=b.solver, status=b.status,
                solve_time=b.solve_time, certificate_margin=b.certificate_margin)


def _checked_row_options(norm, lower_options, exact_options) -> dict:
    """``{"lower": ..., "exact": ...}``: the options of the two rows that are not registered methods, checked."""
    from .lower import exact_pattern_bound

    return {"lower": _check_row_options(lower_options, "lower_options", _lower_function(norm)),
            "exact": _check_row_options(exact_options, "exact_options", exact_pattern_bound, ("progress",))}


def compare_row(model: Any, method: str, norm=2, solver: str | None = None, *, lower_options: dict | None = None,
                exact_options: dict | None = None, max_memory_gb: float | None = None,
                progress: bool | None = False, input_shape: Any = None) -> dict:
    """One row of :func:`compare`: the number ``method`` gives for ``model``, or a typed error.

    Unlike :func:`compare`, a method that fails raises.  Used by ``lipsdp estimate`` for the
    rows that are not upper bounds (``"lower"``, ``"exact"``).

    Returns
    -------
    dict
        ``method, value, raw_value, solver, status, solve_time`` (and ``certificate_margin``
        for upper bounds); ``status`` is ``"lower-bound"`` or ``"exact"`` for those rows.

    Raises
    ------
    LipSDPError
        Unknown name or option, or the method cannot give a number for this model
        (e.g. :class:`~lipsdp.errors.ProblemTooLargeError` from ``"exact"``).
    """
    if not isinstance(method, str):
        raise InvalidOptionError(f"method must be one name (a string), got {method!r}")
    check_method_names(method, COMPARE_EXTRAS)
    norm = _parse_norm(norm)
    check_solver_name(solver)
    options = _checked_row_options(norm, lower_options, exact_options)
    budget.check_max_memory(max_memory_gb)
    return _bound_row(as_network(model, input_shape), method, norm, solver, options, max_memory_gb, progress)


def compare(model: Any, methods: Sequence[str] | str | None = None, norm=2, solver: str | None = None,
            progress: bool | None = None, lower_options: dict | None = None, *, exact_options: dict | None = None,
            max_memory_gb: float | None = None, claimed: float | None = None, input_shape: Any = None):
    """Run several methods on one model and tabulate them.

    ``"lower"`` (gradient-ascent lower bound; for ``norm="inf"`` the ℓ∞
    gradient bound :func:`lipsdp.linf.linf_lower_bound`) and ``"exact"``
    (the exact ℓ2 constant of small piecewise-linear nets by enumerating their
    linear regions, :func:`lipsdp.lower.exact_pattern_bound`; skipped for
    ``norm="inf"``) may be listed among the methods.  ``methods`` may be one
    name.  Every name, the solver and the options are checked before any method
    runs; a method that then fails on this model is kept as a row whose
    ``status`` holds the error message and whose value is NaN.

    Parameters
    ----------
    progress
        tqdm bars over the methods and inside ``"exact"`` (whose bar states the
        number of regions up front); None (default): shown on a terminal only.
    lower_options, exact_options
        Keyword options of the lower-bound function (e.g. ``n_starts``) and of
        :func:`~lipsdp.lower.exact_pattern_bound` (``max_regions``: it refuses
        networks with more possible regions, by default
        :data:`~lipsdp.lower.DEFAULT_MAX_REGIONS`; None lifts the limit).
    claimed
        A claimed Lipschitz constant γ (e.g. the one a training library promises): adds the
        columns ``claimed`` and ``claim`` (:func:`lipsdp.claims.add_claim_columns`: an upper
        bound "holds" or "not proved", a lower bound "refuted" or "consistent").
    input_shape
        Shape of one input, required for models with convolutions or pooling (see :func:`estimate`).

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method, norm, value, raw_value, solver, status,
        solve_time, certificate_margin, gap`` where ``gap`` is value / the best
        lower bound in the table (``"lower"`` or ``"exact"``; NaN without one);
        ``table.attrs["assumptions"]`` is the model's :attr:`Network.assumptions`.
    """
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    names = check_method_names(DEFAULT_COMPARE if methods is None else methods, COMPARE_EXTRAS)
    norm = _parse_norm(norm)
    check_solver_name(solver)
    options = _checked_row_options(norm, lower_options, exact_options)
    budget.check_max_memory(max_memory_gb)
    if claimed is not None:
        from .claims import add_claim_columns, check_gamma

        check_gamma(claimed)
    net = as_network(model, input_shape)
    if norm != 2:
        names = [n for n in names if n != "exact"]
    rows = []
    for name in tqdm(names, desc="methods", disable=None if progress is None else not progress, leave=False):
        start = time.perf_counter()
        try:
            rows.append(_bound_row(net, name, norm, solver, options, max_memory_gb, progress))
        except LipSDPError as exc:
            rows.append(dict(method=name, value=float("nan"), raw_value=float("nan"), solver=str(solver),
                             status=f"error: {type(exc).__name__}: {exc}", solve_time=time.perf_counter() - start))
    for row in rows:
        row["norm"] = "inf" if norm != 2 else "2"
    table = pd.DataFrame(rows, columns=["method", "norm", "value", "raw_value", "solver", "status", "solve_time",
                                        "certificate_margin"])
    lower_rows = table[table["status"].isin(LOWER_STATUSES)]
    best_lower = lower_rows["value"].max() if len(lower_rows) else float("nan")
    table["gap"] = table["value"] / best_lower if best_lower and best_lower > 0 else float("nan")
    table.attrs["assumptions"] = net.assumptions  # what every row assumed about the model (see Network.assumptions)
    return table if claimed is None else add_claim_columns(table, claimed)


# ----------------------------------------------------------------------------- listings
#: what the rows of :func:`compare` that are not registered methods give, and their norms
_EXTRA_METHODS = {
    "lower": ("lower bound", (2, np.inf),
              "largest Jacobian norm found by sampling and gradient ascent (ℓ∞: finite differences); "
              "a true lower bound, not a certificate"),
    "exact": ("exact constant", (2,),
              "the true ℓ2 constant of tiny ReLU/LeakyReLU nets (≤ 16 hidden neurons) by enumerating their "
              "linear regions; refuses nets with more possible regions than max_regions"),
}


def _norms_label(norms: Sequence) -> str:
    return ", ".join("2" if n == 2 else "inf" for n in norms)


def method_table() -> list[dict]:
    """Every name :func:`compare` accepts, with what kind of number it gives.

    Returns
    -------
    list of dict
        One per name, sorted: ``name``, ``gives`` (``"certified upper bound"``,
        ``"lower bound"`` or ``"exact constant"``), ``norms``, ``accepted_by``
        (the Python functions that take it), ``default`` (``"estimate"`` and/or
        ``"compare"`` where it is a default) and ``description``.
    """
    estimate_default = inspect.signature(estimate).parameters["method"].default
    rows = []
    for name in sorted(set(registered_methods()) | set(COMPARE_EXTRAS)):
        if name in _EXTRA_METHODS:
            gives, norms, description = _EXTRA_METHODS[name]
            accepted = "compare"
        else:
            spec = method_spec(name)
            gives, norms, description, accepted = "certified upper bound", spec.norms, spec.description, "estimate, compare"
        defaults = [which for which, is_default in (("estimate", name == estimate_default),
                                                    ("compare", name in DEFAULT_COMPARE)) if is_default]
        rows.append(dict(name=name, gives=gives, norms=_norms_label(norms), accepted_by=accepted,
                         default=", ".join(defaults), description=description))
    return rows


#: one line per built-in back end (a registered solver may carry its own ``description``)
_SOLVER_DESCRIPTIONS = {
    "ipm": "the project's structured interior-point solver (rank-≤2 multiplier terms, exact block splitting)",
    "mosek": "MOSEK through cvxpy (needs a licence)",
    "cvxopt": "CVXOPT's interior-point method, called directly with sparse data",
    "scs": "SCS through cvxpy, with tight tolerances",
    "clarabel": "Clarabel through cvxpy",
    "firstorder": "minimises the eigenvalue form from an ECLipsE-Fast start (a feasible point, certified like any other)",
}


def _solver_description(spec) -> str:
    own = getattr(spec, "description", None)
    if own:
        return own
    if spec.name.startswith("cvxpy:"):
        return f"the plain cvxpy reference path with {spec.name.split(':', 1)[1]}"
    return _SOLVER_DESCRIPTIONS.get(spec.name, "")


def _availability(spec) -> str | None:
    """None when ``spec`` is usable here, else the reason (a failing check is reported, not raised)."""
    try:
        return spec.available()
    except Exception as exc:  # an import inside a third-party check; the listing must still print
        return f"its availability check failed ({type(exc).__name__}: {exc})"


def _automatic_role(spec, rank: int | None) -> str:
    """When ``solver=None`` tries ``spec``: its rank, and its size limit or condition."""
    if rank is None:
        return "explicit only"
    limits = [f"LMI size ≤ {spec.max_size}" if spec.max_size is not None else "",
              f"LMI size ≥ {spec.min_size}" if getattr(spec, "min_size", None) is not None else "",
              "where its structure applies" if spec.applies is not None else ""]
    limits = [text for text in limits if text]
    return f"{rank}" + (f" ({'; '.join(limits)})" if limits else "")


def solver_table() -> list[dict]:
    """Every registered solver, usable here or not.

    Returns
    -------
    list of dict
        One per solver, in the automatic choice's order, then the explicit-only ones:
        ``name``, ``usable`` (bool), ``why_not`` (the reason it cannot run here, or ``""``),
        ``automatic`` (its rank in the order ``solver=None`` tries the usable solvers, or
        ``"explicit only"``) and ``description``.
    """
    from .solver_registry import lookup_solver, solvers

    specs = sorted(map(lookup_solver, solvers(available_only=False)), key=lambda s: (s.priority < 0, -s.priority, s.name))
    rows, rank = [], 0
    for spec in specs:
        problem = _availability(spec)
        automatic = spec.priority >= 0
        rank += automatic
        rows.append(dict(name=spec.name, usable=problem is None, why_not=problem or "",
                         automatic=_automatic_role(spec, rank if automatic else None),
                         description=_solver_description(spec)))
    return rows
