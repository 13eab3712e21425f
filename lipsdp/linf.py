"""ℓ∞ Lipschitz bounds per output row (docs/formulations.md §6; GeoLIP, Wang et al. 2022; Pauli et al. 2024).

For a scalar output ``cᵀy`` (``c`` a unit vector picking one output row, or
``e_i − e_j`` for a row difference) we look for ρ with

    |cᵀ(f(x) − f(x'))| ≤ ρ ‖x − x'‖∞.

On the signal graph (``z = (Δx₀, Δφ₁, …)``, output ``Δy = C z``, QCs
``[P_k z; E_k z]ᵀ Q_k [P_k z; E_k z] ≥ 0``) take an extra scalar ``t`` and
require, with ``τ ≥ 0`` (one per input coordinate):

    F = [[E₀ᵀ diag(τ) E₀ − Σ_k G_kᵀ Q_k(μ_k) G_k,   −Cᵀc],
         [−cᵀC,                                    2ρ − 1ᵀτ]]  ⪰ 0.

Proof: evaluate ``[z; t]ᵀ F [z; t] ≥ 0`` at the true increments with
``t = r = ‖Δx₀‖∞``; every QC term is ≥ 0 and ``Σ τ_i (r² − Δx_{0,i}²) ≥ 0``, so
``2 r cᵀΔy ≤ 2ρ r²``; the sign of ``c`` is immaterial (``z → −z``).  For a
feed-forward chain with ``S = P = 0`` the Schur complement of the last
activation block gives the ``[[T_{l−1}, W_lᵀc], [·, 2ρ − 1ᵀτ]] ⪰ 0`` of docs/formulations.md §6;
with no hidden layer the optimum is ``τ_i = |(Wᵀc)_i|`` and ``ρ = ‖Wᵀc‖₁``.

The bound is linear in ρ (``bound = identity``) and ρ's coefficient ``2 e_t e_tᵀ``
is PSD, so :func:`lipsdp.certificate.certify` and every solver apply unchanged.

The reported ℓ∞ → ℓ∞ bound of a vector output is the **maximum over the
rows** (``‖Δy‖∞ = max_i |e_iᵀΔy|``); ``output_row=i`` bounds one row,
``rows=(i, j)`` the difference of rows ``i`` and ``j`` (the margin of a
classifier).  Each functional goes through the one pipeline of every method,
:func:`lipsdp.bound_methods.solve_and_certify` (power-of-two rescaling, normalisation of a
chain, solve, exact lift of the multipliers back, float64 certificate and repair);
no SVD reduction is used (the input coordinates matter for ℓ∞).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .bound import LipschitzBound
from .errors import InvalidOptionError, NotApplicableError, ShapeMismatchError
from .graph import SignalGraph, build_graph
from .network import Network
from .sdp import SDP, LMIBlock, QuadTerm, selector


def _identity_bound(rho: float) -> float:
    return float(max(rho, 0.0))


def linf_sdp(graph: SignalGraph, c: np.ndarray, granularity: str = "neuron") -> SDP:
    """The ℓ∞ SDP of the module docstring for the output functional ``cᵀy``.

    Variables: ``ρ`` (index 0), ``τ`` (``input_dim``, ≥ 0), then the QC
    multipliers of each activation group (named ``tau``, ``qc1``, …).  Groups
    with ``cross_terms="exact"`` and fixed-slope neurons are restricted to their
    invariant subspace first, as for ℓ2 (:func:`lipsdp.formulations.restricted_qc_bases`).
    """
    from .formulations import restricted_qc_bases

    graph, bases = restricted_qc_bases(graph, granularity)
    c = np.asarray(c, float).reshape(-1)
    if c.shape != (graph.output.shape[0],):
        raise ShapeMismatchError(f"output functional has length {c.size}, the network has {graph.output.shape[0]} outputs")
    d, n0 = graph.dim, graph.input_dim
    dt = d + 1  # z and t
    t_idx = d
    rho_basis = sp.csc_matrix(([2.0], ([0], [0])), shape=(1, 1))
    terms = [QuadTerm(selector(1, dt, t_idx), rho_basis, np.array([0]), +1.0)]
    # τ: lift [E₀; e_t] ((n0+1) × dt); Q_i = e_i e_iᵀ − e_{n0} e_{n0}ᵀ
    lift_tau = sp.vstack([selector(n0, dt, 0), selector(1, dt, t_idx)]).tocsr()
    r = n0 + 1
    idx = np.arange(n0)
    rows = np.concatenate([idx + r * idx, np.full(n0, n0 + r * n0)])
    cols = np.concatenate([idx, idx])
    vals = np.concatenate([np.ones(n0), -np.ones(n0)])
    tau_basis = sp.csc_matrix((vals, (rows, cols)), shape=(r * r, n0))
    tau_vars = np.arange(1, 1 + n0)
    terms.append(QuadTerm(lift_tau, tau_basis, tau_vars, +1.0))
    groups = {"rho": slice(0, 1), "tau": slice(1, 1 + n0)}
    nonneg = [True] + [True] * n0
    var_layer = [0] + [0] * n0
    n_vars = 1 + n0
    for k, (group, basis) in enumerate(zip(graph.groups, bases), start=1):
        groups[f"qc{k}"] = slice(n_vars, n_vars + basis.size)
        if basis.size == 0:  # every neuron of the group has a fixed slope: nothing to multiply
            continue
        lift = sp.hstack([sp.csr_matrix(group.lift(d)), sp.csr_matrix((2 * group.width, 1))]).tocsr()
        v = np.arange(n_vars, n_vars + basis.size)
        terms.append(QuadTerm(lift, basis.coefficients, v, -1.0))
        nonneg.extend(basis.nonneg.tolist())
        var_layer.extend([k] * basis.size)
        n_vars += basis.size
    constant = np.zeros((dt, dt))
    col = -(graph.output.T @ c)
    constant[:d, t_idx] = col
    constant[t_idx, :d] = col
    block = LMIBlock(dt, constant, tuple(terms), "lipsdp-linf")
    objective = np.zeros(n_vars)
    objective[0] = 1.0
    return SDP(n_vars, objective, [block], np.array(nonneg), 0, _identity_bound, np.array(var_layer), groups,
               {"formulation": f"lipsdp-{granularity}-linf", "norm": np.inf})


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_row_options(output_row, rows) -> tuple | None:
    """``rows`` as a tuple; InvalidOptionError for an ``output_row`` that is not an integer or
    ``rows`` that are not a sequence of integers."""
    if output_row is not None and not _is_index(output_row):
        raise InvalidOptionError(f"output_row must be an integer output index, got {output_row!r}")
    if rows is None:
        return None
    if not isinstance(rows, (str, bytes)) and hasattr(rows, "__iter__"):
        rows = tuple(rows)
        if all(_is_index(r) for r in rows):
            return rows
    raise InvalidOptionError(f"rows must be a pair of integer output indices (i, j), got {rows!r}")


def _functionals(p: int, output_row, rows) -> list[tuple[str, np.ndarray]]:
    rows = _check_row_options(output_row, rows)
    if output_row is not None and rows is not None:
        raise NotApplicableError("give either output_row=i or rows=(i, j), not both")
    if rows is not None:
        rows = tuple(int(r) for r in rows)
        if len(rows) != 2 or rows[0] == rows[1]:
            raise NotApplicableError(f"rows must be two different output indices, got {rows}")
        for r in rows:
            if not 0 <= r < p:
                raise ShapeMismatchError(f"output row {r} out of range for {p} outputs")
        c = np.zeros(p)
        c[rows[0]], c[rows[1]] = 1.0, -1.0
        return [(f"{rows[0]}-{rows[1]}", c)]
    picks = range(p) if output_row is None else [int(output_row)]
    out = []
    for i in picks:
        if not 0 <= i < p:
            raise ShapeMismatchError(f"output row {i} out of range for {p} outputs")
        out.append((str(i), np.eye(p)[i]))
    return out


def lipsdp_linf(net: Network, granularity: str = "neuron", method: str = "lipsdp-neuron", *, solver=None,
                reduce: bool = True, output_row: int | None = None, rows: Sequence[int] | None = None,
                **options) -> LipschitzBound:
    """Certified ℓ∞ bound(s) of ``net`` (see the module docstring).

    Parameters
    ----------
    net
        Any network (feed-forward, residual, implicit; any registered activations).
    granularity
        ``"neuron"`` or ``"layer"`` multipliers.
    method
        Name recorded in the result.
    solver
        Back end name or None (automatic).
    reduce
        Normalise the weights of a feed-forward chain before solving (exact).
    output_row, rows
        Bound one output row ``i``, or the difference of rows ``(i, j)``.
        Default: every row, and the result is the maximum (the ℓ∞ → ℓ∞ bound).
    **options
        Passed to the solver.

    Returns
    -------
    LipschitzBound
        ``value`` = max over the requested functionals; ``details["per_row"]``
        maps each functional (``"i"`` or ``"i-j"``) to its certified bound.
    """
    from .bound_methods import combined_status, solve_and_certify
    from .wellposed import check_network_well_posed

    start = time.perf_counter()
    check_network_well_posed(net)
    functionals = _functionals(net.output_dim, output_row, rows)
    output = build_graph(net).output
    bounds = {}
    for name, c in functionals:
        if not np.any(output.T @ c):  # the functional ignores the network: its constant is 0
            continue

        def build(network: Network, reduce: bool = False, c=c) -> SDP:
            return linf_sdp(build_graph(network), c, granularity)  # no SVD reduction in ℓ∞

        bounds[name] = solve_and_certify(net, f"{method} (ℓ∞, output {name})", build, build, solver=solver,
                                         reduce=reduce, norm=np.inf, **options)
    per_row = {name: bounds[name].value if name in bounds else 0.0 for name, _ in functionals}
    best = max(per_row, key=per_row.get)
    return LipschitzBound(
        value=per_row[best], raw_value=bounds[best].raw_value if best in bounds else 0.0, method=method,
        solver="+".join(sorted({b.solver for b in bounds.values()} - {"none"})) or "none",
        status=combined_status(b.status for b in bounds.values()), solve_time=time.perf_counter() - start,
        certificate_margin=min((b.certificate_margin for b in bounds.values()), default=float("nan")), norm=np.inf,
        details={"per_row": per_row, "argmax_row": best,
                 "solver_time": sum(b.details.get("solver_time", 0.0) for b in bounds.values()),
                 "margin_retries": sum(bool(b.details.get("margin_retry")) for b in bounds.values())},
    )


def linf_lower_bound(net: Network, output_row: int | None = None, rows: Sequence[int] | None = None,
                     n_points: int = 256, seed: int = 0) -> float:
    """ℓ∞ lower bound ``max_x ‖J(x)ᵀc‖₁`` over sampled points, for the functionals of :func:`lipsdp_linf`.

    ``x`` is sampled as for :func:`lipsdp.lower.gradient_lower_bound`.  At a
    point where the network is differentiable (almost every sampled point) the
    ℓ∞ constant of ``cᵀf`` is at least the dual norm ``‖∇(cᵀf)(x)‖₁`` of its
    gradient, which is computed from the exact layer Jacobians with a relative
    rounding error of order ``depth · u``.  Difference quotients
    ``|cᵀ(f(y) − f(x))| / ‖y − x‖∞`` are not used: with a small step their
    numerator is a cancellation whose rounding error (relative to it, about
    ``u |f| / |f(y) − f(x)|``) can exceed the gap to the true constant, so they
    could report a "lower bound" above it.
    """
    from .lower import _sample, jacobians

    rng = np.random.default_rng(seed)
    x = _sample(net, n_points, rng)
    jac = jacobians(net, x)  # (s, p, n0)
    best = 0.0
    for _, c in _functionals(net.output_dim, output_row, rows):
        grad = np.einsum("p,spn->sn", c, jac)
        best = max(best, float(np.max(np.sum(np.abs(grad), axis=1))))
    return best
