"""Solver back ends for :class:`~lipsdp.sdp.SDP` and the automatic choice among them.

Names (``lipsdp.solvers()`` lists the ones usable here):

* ``"cvxopt"`` — CVXOPT's primal-dual interior-point method called directly
  with the sparse coefficient matrices (no modelling layer);
* ``"mosek"``, ``"scs"``, ``"clarabel"`` — through cvxpy (MOSEK only with a
  working licence; SCS with tight tolerances);
* ``"cvxpy:<SOLVER>"`` — the plain cvxpy reference path with any solver cvxpy
  knows (e.g. ``"cvxpy:SCS"``, ``"cvxpy:CVXOPT"``).

Each back end takes its own keyword options (:func:`solver_options` lists
them); :func:`solve` refuses any other with
:class:`~lipsdp.errors.InvalidOptionError` before the back end runs.

The automatic choice is licensed MOSEK > structured solvers registered with a
priority (see :func:`register_solver`) > CVXOPT > SCS > Clarabel (small
problems only).  Every back end returns a :class:`SolveResult` or raises a
typed error; ``inaccurate`` answers are failures, never bounds.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .errors import (InvalidOptionError, LicenseError, SolverFailedError, SolverUnavailableError,
                     UnknownSolverError)
from .sdp import SDP


@dataclass
class SolveResult:
    """What a back end returns: multipliers and how it got them."""

    y: np.ndarray
    status: str
    objective: float
    solver: str
    solve_time: float
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SolverSpec:
    """A registered back end.

    ``priority``: higher is preferred by the automatic choice; ``max_size`` / ``min_size``:
    largest / smallest total LMI size the automatic choice gives it (None: no limit);
    ``applies``: optional predicate on the SDP; ``options``: the keyword options
    ``solve`` accepts, or a function returning them (None: the named keyword
    parameters of ``solve`` after the SDP; a catch-all ``**kwargs`` accepts nothing more).
    """

    name: str
    solve: Callable[..., SolveResult]
    available: Callable[[], str | None]
    priority: int = 0
    max_size: int | None = None
    applies: Callable[[SDP], bool] | None = None
    min_size: int | None = None
    options: Iterable[str] | Callable[[], Iterable[str]] | None = None


_SOLVERS: dict[str, SolverSpec] = {}


def register_solver(spec: SolverSpec) -> None:
    """Add a back end (e.g. a structure-exploiting solver) to the registry."""
    _SOLVERS[spec.name] = spec


def solvers(available_only: bool = True) -> list[str]:
    """Names of the registered back ends (by default only those usable here)."""
    return sorted(n for n, s in _SOLVERS.items() if not available_only or s.available() is None)


# --------------------------------------------------------------------------- cvxpy
def _installed_cvxpy_solvers() -> list[str]:
    import cvxpy as cp

    return list(cp.installed_solvers())


@functools.lru_cache(maxsize=None)
def mosek_problem() -> str | None:
    """None if MOSEK has a working licence here, else the reason it cannot be used.

    Checks the licence with MOSEK's own API (no cvxpy import, a few milliseconds);
    a missing licence is ``mosek.Error`` with rescode 1008.
    """
    try:
        import mosek
    except ImportError:
        return "the mosek package is not installed (pip install 'lipsdp[mosek]')"
    try:
        with mosek.Env() as env:
            env.checkoutlicense(mosek.feature.pts)
    except mosek.Error as exc:
        return f"MOSEK is installed but has no working licence ({str(exc).strip()[:160]})"
    return None


def _cvxpy_available(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if name == "MOSEK" and mosek_problem():  # checked first: cheap, and spares the cvxpy import
            return mosek_problem()
        if name not in _installed_cvxpy_solvers():
            return f"cvxpy does not have the solver {name} installed"
        return None

    return check


#: options of cvxpy's ``Problem.solve`` itself that every cvxpy path passes on
_CVXPY_COMMON_OPTIONS = ("verbose", "warm_start")


def _clarabel_settings() -> tuple[str, ...]:
    """The fields of ``clarabel.DefaultSettings`` (what cvxpy accepts as Clarabel options)."""
    try:
        import clarabel
    except ImportError:
        return ()
    settings = clarabel.DefaultSettings()
    return tuple(n for n in dir(settings) if not n.startswith("_") and not callable(getattr(settings, n)))


#: solver options each cvxpy path accepts (SCS 3 settings, CVXOPT's solver options as cvxpy maps
#: them, MOSEK's cvxpy keywords); anything else would be rejected by the solver or, for CVXOPT,
#: stored silently in its global options
_CVXPY_OPTIONS = {
    "SCS": ("eps_abs", "eps_rel", "eps_infeas", "eps", "max_iters", "time_limit_secs", "normalize", "scale",
            "adaptive_scale", "rho_x", "alpha", "acceleration_lookback", "acceleration_interval",
            "write_data_filename", "log_csv_filename", "linear_solver", "use_indirect", "gpu"),
    "CVXOPT": ("abstol", "reltol", "feastol", "max_iters", "refinement", "kktsolver"),
    "MOSEK": ("mosek_params", "save_file", "bfs", "accept_unknown", "eps"),
    "CLARABEL": _clarabel_settings,
}


def _cvxpy_options(name: str) -> Callable[[], tuple[str, ...]]:
    def options() -> tuple[str, ...]:
        own = _CVXPY_OPTIONS[name]
        return _CVXPY_COMMON_OPTIONS + tuple(own() if callable(own) else own)

    return options


_CVXPY_DEFAULTS = {
    "SCS": {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 200_000},
    "CLARABEL": {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9},
    "CVXOPT": {"abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9},
    "MOSEK": {},
}


def solve_with_cvxpy(sdp: SDP, solver: str, verbose: bool = False, **options) -> SolveResult:
    """Plain cvxpy path: ``vec F_b = vec F_b⁰ + K_b y`` with ``F_b ⪰ 0``."""
    import cvxpy as cp

    y = cp.Variable(sdp.n_vars)
    constraints = []
    for block in sdp.blocks:
        k = block.coefficients(sdp.n_vars)
        f = block.constant + cp.reshape(k @ y, (block.dim, block.dim), order="F")
        constraints.append(0.5 * (f + f.T) >> 0)
    if np.any(sdp.nonneg):
        constraints.append(y[np.flatnonzero(sdp.nonneg)] >= 0)
    problem = cp.Problem(cp.Minimize(sdp.objective @ y), constraints)
    opts = dict(_CVXPY_DEFAULTS.get(solver, {}))
    opts.update(options)
    start = time.perf_counter()
    try:
        problem.solve(solver=solver, verbose=verbose, **opts)
    except cp.error.SolverError as exc:
        if solver == "MOSEK" and mosek_problem():
            raise LicenseError(mosek_problem()) from exc
        raise SolverFailedError(f"{solver} (via cvxpy) failed: {exc}", "error") from exc
    except (ValueError, ArithmeticError) as exc:  # a back end's own numerical breakdown (CVXOPT: 1/sqrt(0))
        raise SolverFailedError(f"{solver} (via cvxpy) broke down numerically: {type(exc).__name__}: {exc}",
                                "numerical-error") from exc
    elapsed = time.perf_counter() - start
    status = problem.status
    if status != cp.OPTIMAL or y.value is None:
        raise SolverFailedError(
            f"{solver} (via cvxpy) returned status {status!r}; an inaccurate or infeasible answer is not a bound",
            status,
        )
    return SolveResult(np.asarray(y.value, float), "optimal", float(problem.value), f"cvxpy:{solver}", elapsed)


# --------------------------------------------------------------------------- native CVXOPT
def _cvxopt_available() -> str | None:
    try:
        import cvxopt  # noqa: F401
    except ImportError:
        return "cvxopt is not installed"
    return None


def solve_with_cvxopt(sdp: SDP, abstol: float = 1e-9, reltol: float = 1e-9, feastol: float = 1e-9,
                      max_iters: int = 100, verbose: bool = False) -> SolveResult:
    """CVXOPT ``solvers.sdp`` on ``hs − Gs y ⪰ 0`` with ``hs = F⁰``, ``Gs = −K``."""
    import cvxopt
    from cvxopt import solvers as cvx_solvers

    def sparse(m):
        m = m.tocoo()
        return cvxopt.spmatrix(m.data.tolist(), m.row.tolist(), m.col.tolist(), size=m.shape)

    gs = [sparse(-block.coefficients(sdp.n_vars)) for block in sdp.blocks]
    hs = [cvxopt.matrix(np.asarray(block.constant, float)) for block in sdp.blocks]
    kwargs = {}
    idx = np.flatnonzero(sdp.nonneg)
    if idx.size:
        kwargs["Gl"] = cvxopt.spmatrix(-1.0, list(range(idx.size)), idx.tolist(), size=(idx.size, sdp.n_vars))
        kwargs["hl"] = cvxopt.matrix(0.0, (idx.size, 1))
    start = time.perf_counter()
    # Badly scaled programs can stall just short of 1e-9; one retry asks for 1e-7 (still "optimal",
    # and the certificate is checked independently afterwards).
    for relax in (1.0, 100.0):
        options = {"show_progress": verbose, "abstol": abstol * relax, "reltol": reltol * relax,
                   "feastol": feastol * relax, "maxiters": max_iters}
        try:
            sol = cvx_solvers.sdp(cvxopt.matrix(sdp.objective), Gs=gs, hs=hs, options=options, **kwargs)
        except (ValueError, ArithmeticError) as exc:
            raise SolverFailedError(f"cvxopt failed: {exc}", "error") from exc
        if sol["status"] == "optimal":
            break
    elapsed = time.perf_counter() - start
    if sol["status"] != "optimal":
        raise SolverFailedError(
            f"cvxopt returned status {sol['status']!r} after {sol.get('iterations')} iterations; "
            "an inaccurate or infeasible answer is not a bound",
            str(sol["status"]),
        )
    y = np.asarray(sol["x"], float).ravel()
    return SolveResult(y, "optimal", float(sdp.objective @ y), "cvxopt", elapsed, {"iterations": sol.get("iterations")})


register_solver(SolverSpec("cvxopt", solve_with_cvxopt, _cvxopt_available, priority=50))
for _name, _prio, _max in (("MOSEK", 100, None), ("SCS", 20, None), ("CLARABEL", 10, 150), ("CVXOPT", 0, None)):
    _solve = functools.partial(solve_with_cvxpy, solver=_name)
    _avail = _cvxpy_available(_name)
    _options = _cvxpy_options(_name)
    register_solver(SolverSpec(f"cvxpy:{_name}", _solve, _avail, priority=-1, options=_options))
    if _name != "CVXOPT":
        register_solver(SolverSpec(_name.lower(), _solve, _avail, priority=_prio, max_size=_max, options=_options))


# --------------------------------------------------------------------------- structured interior point
from .ipm import register as _register_ipm  # noqa: E402  (lipsdp/ipm.py: the default where it applies)

_register_ipm()

from .firstorder import register as _register_firstorder  # noqa: E402  (automatic above ipm's size, chains only)

_register_firstorder()

from .chordal import register as _register_chordal  # noqa: E402  (block-tridiagonal chains; named explicitly)

_register_chordal()


# --------------------------------------------------------------------------- choice
def _automatic_candidates(sdp: SDP | None):
    """Usable back ends for ``sdp``, best first (the automatic choice's order).

    A generator: availability is checked lazily, so picking the structured
    solver never imports cvxpy (whose import alone takes seconds).
    """
    for spec in sorted(_SOLVERS.values(), key=lambda s: -s.priority):
        if spec.priority < 0:
            continue
        if sdp is not None and spec.max_size is not None and sdp.size > spec.max_size:
            continue
        if sdp is not None and spec.min_size is not None and sdp.size < spec.min_size:
            continue
        if sdp is not None and spec.applies is not None and not spec.applies(sdp):
            continue
        if spec.available() is not None:
            continue
        yield spec


def _registry_key(name: str) -> str:
    """The registry key of a solver name: lower case, or ``cvxpy:`` plus the upper-case cvxpy name."""
    if name.startswith("cvxpy:"):
        return "cvxpy:" + name.split(":", 1)[1].upper()
    return name.lower()


def lookup_solver(name: str) -> SolverSpec:
    """The registered back end called ``name`` (availability not checked).

    Raises
    ------
    InvalidOptionError
        For a name that is not a string.
    UnknownSolverError
        For a name that is not registered (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise InvalidOptionError(f"solver must be a name (a string such as 'cvxopt') or None, got {name!r}; "
                                 f"known: {', '.join(sorted(_SOLVERS))}")
    key = _registry_key(name)
    if key not in _SOLVERS:
        raise UnknownSolverError(name, list(_SOLVERS))
    return _SOLVERS[key]


def solver_options(name: str | None = None) -> frozenset[str]:
    """Keyword options the back end ``name`` accepts.

    For None or ``"auto"``: those of any back end the automatic choice may pick (which one
    runs depends on the problem; :func:`solve` checks again against the one it picks).
    """
    if name is None or name == "auto":
        specs = [s for s in _SOLVERS.values() if s.priority >= 0]
        return frozenset().union(*(_accepted_options(s) for s in specs))
    return _accepted_options(lookup_solver(name))


def _accepted_options(spec: SolverSpec) -> frozenset[str]:
    if spec.options is not None:
        return frozenset(spec.options() if callable(spec.options) else spec.options)
    params = inspect.signature(spec.solve).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return frozenset(named[1:])  # the first parameter is the SDP


def check_solver_options(spec: SolverSpec, options: dict, chosen: bool = False) -> None:
    """Raise :class:`InvalidOptionError` for options the back end ``spec`` does not take.

    ``chosen``: the back end was picked automatically (the message says how to name one).
    """
    accepted = _accepted_options(spec)
    unknown = [name for name in options if name not in accepted]
    if unknown:
        how = (" (chosen automatically for this problem; name a solver with solver=... to use its options)"
               if chosen else "")
        raise InvalidOptionError(unknown_options_message(unknown, f"solver {spec.name!r}{how}", accepted))


def unknown_options_message(unknown: Iterable[str], where: str, accepted: Iterable[str],
                            also: Iterable[str] = (), label: str = "accepted") -> str:
    """``"unknown option(s) 'x' for <where>; <label>: ...; did you mean 'y'?"`` (one line).

    ``also``: further valid names (e.g. a function's own parameters) offered as corrections.
    """
    unknown, accepted = list(unknown), sorted(accepted)
    names = ", ".join(repr(u) for u in unknown)
    plural = "s" if len(unknown) > 1 else ""
    text = f"unknown option{plural} {names} for {where}; {label}: {', '.join(accepted) or '(none)'}"
    guesses = [g for u in unknown for g in difflib.get_close_matches(u, list(accepted) + list(also), n=1)]
    if guesses:
        text += f"; did you mean {', '.join(repr(g) for g in dict.fromkeys(guesses))}?"
    return text


def resolve_solver(name: str | None, sdp: SDP | None = None) -> SolverSpec:
    """The back end for ``name`` (None/"auto": the best usable one for ``sdp``).

    Raises
    ------
    UnknownSolverError
        For a name that is not registered (InvalidOptionError for a name that is not a string).
    LicenseError / SolverUnavailableError
        For a known back end that cannot run here; the message names the usable ones.
    """
    if name is None or name == "auto":
        first = next(_automatic_candidates(sdp), None)
        if first is None:
            raise SolverUnavailableError("no SDP solver is usable here; install cvxopt or scs")
        return first
    spec = lookup_solver(name)
    problem = spec.available()
    if problem is not None:
        usable = ", ".join(solvers()) or "(none)"
        error = LicenseError if "licen" in problem.lower() else SolverUnavailableError
        raise error(f"solver {name!r} is not usable: {problem}. Usable here: {usable}")
    if sdp is not None and spec.applies is not None and not spec.applies(sdp):
        from .errors import NotApplicableError

        raise NotApplicableError(f"solver {name!r} does not apply to this problem ({sdp.meta.get('formulation')})")
    return spec


def _run(spec: SolverSpec, sdp: SDP, options: dict) -> SolveResult:
    """``spec.solve(sdp, **options)``; an option value of the wrong type is the caller's error, typed as such."""
    try:
        return spec.solve(sdp, **options)
    except TypeError as exc:
        if not options:
            raise
        raise InvalidOptionError(f"solver {spec.name!r} could not use the options {sorted(options)}: {exc}") from exc


def solve(sdp: SDP, solver: str | None = None, **options) -> SolveResult:
    """Solve ``sdp`` with the named back end, or with the automatic choice.

    In automatic mode a back end that fails (typed :class:`SolverFailedError`)
    hands over to the next usable one (e.g. the structured solver to CVXOPT);
    the error of the last one is raised if all fail.  Options the back end does
    not take raise :class:`~lipsdp.errors.InvalidOptionError` before it runs.
    """
    if solver is not None and solver != "auto":
        spec = resolve_solver(solver, sdp)
        check_solver_options(spec, options)
        return _run(spec, sdp, options)
    failures = []
    # solver-specific options belong to the first choice only: no hand-over when options are given
    for spec in itertools.islice(_automatic_candidates(sdp), 1 if options else 2):
        check_solver_options(spec, options, chosen=True)
        try:
            result = _run(spec, sdp, options)
        except SolverFailedError as exc:
            failures.append(f"{spec.name}: {exc}")
            last = exc
            continue
        if failures:
            result.info["fallback_from"] = failures
        return result
    if not failures:
        raise SolverUnavailableError("no SDP solver is usable here; install cvxopt or scs")
    raise SolverFailedError("; ".join(failures), getattr(last, "status", None)) from last
