"""Estimation methods, registered by name: each turns a Network into a certified bound.

``naive``            product of layer norms (residual: Π (1 + ‖branch‖));
``lipsdp-layer``     LipSDP with one multiplier per activation layer;
``lipsdp-neuron``    LipSDP with one multiplier per neuron (``split=k``: chunks of k layers;
                     ``cross_terms="exact"``: GroupSort/Householder QCs on the invariant subspace);
``lipsdp-neuron-layerwise``  the same SDP in the layer-wise (chordal) form of MATH §2;
``eclipse-fast``     ECLipsE-Fast's greedy closed-form feasible point of MATH §2.

Every SDP-based value passes :func:`lipsdp.certify.certify` on the *original*
network (multipliers of the reduced problem are mapped back exactly), so the
reported value is a certified upper bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg as la

from . import formulations as fm
from .certify import UNIT_ROUNDOFF, certify
from .decompose import rho_reaches_every_block
from .errors import CertificationError, NotApplicableError, UnknownMethodError
from .graph import build_graph
from .network import ActivationLayer, Affine, Implicit, Network, Residual
from .runtime import blas_threads, heap_reuse, threads_for_size
from .solvers import solve


MARGIN_RETRY = 1e-8  # relative margin ε of the re-solve when a degenerate optimum cannot be certified


@dataclass
class LipschitzBound:
    """A certified upper bound on a Lipschitz constant.

    Attributes
    ----------
    value
        The certified bound (``float(bound)`` returns it).
    raw_value
        What the solver (or closed form) reported before certification.
    method, solver, status
        How it was obtained; ``status`` is ``"optimal"`` or ``"closed-form"``.
    solve_time
        Wall-clock seconds for the whole estimate (reductions, solve, certification).
    certificate_margin
        Smallest eigenvalue of the LMI at the certified multipliers (NaN when
        not computed, e.g. for the naive bound).
    norm
        2 or ``inf``.
    details
        Method-specific extras (inflation needed by the repair, sizes, ...).
    """

    value: float
    raw_value: float
    method: str
    solver: str
    status: str
    solve_time: float
    certificate_margin: float = float("nan")
    norm: float = 2
    details: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"LipschitzBound({self.value:.6g}, method={self.method!r}, solver={self.solver!r}, "
            f"status={self.status!r}, time={self.solve_time:.3g}s, margin={self.certificate_margin:.3g})"
        )


@dataclass(frozen=True)
class MethodSpec:
    name: str
    run: Callable[..., LipschitzBound]
    description: str
    norms: tuple = (2,)


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, norms: tuple = (2,)):
    """Decorator registering ``fn(net, *, norm, solver, reduce, **options) -> LipschitzBound``."""

    def wrap(fn):
        _METHODS[name] = MethodSpec(name, fn, description, norms)
        return fn

    return wrap


def methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def method_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise UnknownMethodError(name, _METHODS)
    return _METHODS[name]


# ------------------------------------------------------------------------------- naive
def _norm_of(w: np.ndarray, norm) -> float:
    return float(np.linalg.norm(w, 2)) if norm == 2 else float(np.max(np.sum(np.abs(w), axis=1)))


def naive_bound(layers, norm=2) -> float:
    """Product of layer norms; a residual block costs ``1 + bound(branch)``."""
    total = 1.0
    for layer in layers:
        if isinstance(layer, Affine):
            total *= _norm_of(layer.weight, norm)
        elif isinstance(layer, ActivationLayer):
            total *= layer.activation.lipschitz_constant(norm)
        elif isinstance(layer, Residual):
            total *= 1.0 + naive_bound(layer.branch, norm)
        elif isinstance(layer, Implicit):
            raise NotApplicableError("the naive bound does not apply to implicit layers; use lipsdp-neuron")
    return total


@register_method("naive", "product of spectral norms (ℓ∞: of induced ∞-norms)", norms=(2, np.inf))
def _naive(net: Network, *, norm=2, solver=None, reduce=True, **options) -> LipschitzBound:
    start = time.perf_counter()
    raw = naive_bound(net.layers, norm)
    n_layers = len(net.layers)
    width = max(net.input_dim, max((getattr(l, "out_dim", 1) for l in net.layers), default=1))
    value = raw * (1 + 8 * (n_layers + width) * UNIT_ROUNDOFF)  # rounding of the SVDs and the product
    return LipschitzBound(value, raw, "naive", "none", "closed-form", time.perf_counter() - start, norm=norm)


# ------------------------------------------------------------------------------- SDP pipeline
def _zero_bound(method: str, start: float, norm) -> LipschitzBound:
    return LipschitzBound(0.0, 0.0, method, "none", "closed-form", time.perf_counter() - start, 0.0, norm)


def _has_zero_layer(net: Network) -> bool:
    return net.is_feedforward and any(not np.any(w) for w in net.weights)


def solve_and_certify(net: Network, method: str, build_reduced, build_original, *, solver=None, reduce=True,
                      closed_form=None, transfer=None, **options) -> LipschitzBound:
    """Shared pipeline: reduce → build → solve (or closed form) → map back → certify.

    Parameters
    ----------
    build_reduced
        ``(network, reduce) -> SDP`` on the normalised network.
    build_original
        ``network -> SDP`` on the network as given (used for the certificate).
    closed_form
        Optional ``(normalised network, reduced SDP) -> y``: multipliers without a solver.
    transfer
        Optional ``(y, reduced SDP, original SDP) -> y'`` when the certificate is
        checked on a different (equivalent) formulation than the one solved.
    """
    start = time.perf_counter()
    if _has_zero_layer(net):
        return _zero_bound(method, start, 2)
    # reductions, solve and certification of a small LMI run single-threaded and on reused heap memory
    with blas_threads(threads_for_size(_size_hint(net))), heap_reuse():
        return _solve_and_certify(net, method, build_reduced, build_original, start, solver=solver, reduce=reduce,
                                  closed_form=closed_form, transfer=transfer, **options)


def _size_hint(net: Network) -> int:
    """An upper estimate of the LMI size: the input width plus every layer's output width."""
    return int(net.input_dim + sum(getattr(layer, "out_dim", 0) for layer in net.layers))


def _solve_and_certify(net: Network, method: str, build_reduced, build_original, start: float, *, solver, reduce,
                       closed_form, transfer, **options) -> LipschitzBound:
    """The body of :func:`solve_and_certify` (inside its thread and heap settings)."""
    normalisation = None
    work = net
    if reduce and net.is_feedforward:
        work, normalisation = fm.normalise_chain(net)
    sdp_red = build_reduced(work, reduce)
    sdp_orig = build_original(net)

    def attempt(program):
        if closed_form is not None:
            y = closed_form(work, program)
            solver_name, status, solver_time = "closed-form", "closed-form", 0.0
        else:
            result = solve(program, solver, **options)
            y, solver_name, status, solver_time = result.y, result.solver, result.status, result.solve_time
        raw = program.bound(float(y[program.rho]))
        if normalisation is not None:
            y = normalisation.lift_multipliers(y, program.var_layer)
            raw *= normalisation.product
        if transfer is not None:
            y = transfer(y, program, sdp_orig)
        return y, raw, solver_name, status, solver_time

    margin = MARGIN_RETRY * max(1.0, float(np.max(np.abs(sdp_red.blocks[0].constant))))
    margin_used = 0.0
    if closed_form is None and not rho_reaches_every_block(sdp_red):
        # A decoupled block that ρ does not reach (MaxMin/GroupSort chains) cannot be repaired by
        # raising ρ, and a singular optimum leaves it slightly indefinite: solve with F ⪰ εI at once.
        margin_used = margin
    y, raw, solver_name, status, solver_time = attempt(sdp_red.with_margin(margin_used) if margin_used else sdp_red)
    try:
        cert = certify(sdp_orig, y)
    except CertificationError:
        if closed_form is not None or margin_used:
            raise
        # The optimum is often degenerate (F singular in directions ρ cannot reach) and the solver's
        # rounding leaves it slightly indefinite there: re-solve with F ⪰ εI, whose answer is strictly
        # feasible, then certify that (the value moves by O(ε) of the normalised problem).
        margin_used = margin
        y, raw, solver_name, status, solver_time2 = attempt(sdp_red.with_margin(margin_used))
        solver_time += solver_time2
        cert = certify(sdp_orig, y)
    return LipschitzBound(
        cert.value, raw, method, solver_name, status, time.perf_counter() - start, cert.margin, 2,
        {"inflation": cert.inflation, "lmi_size": sdp_red.size, "n_vars": sdp_red.n_vars, "solver_time": solver_time,
         "margin_retry": margin_used},
    )


def _graph_builder(granularity: str):
    def build(network: Network, reduce: bool = False):
        graph = build_graph(network)
        if reduce:
            graph = fm.reduce_graph(graph)
        return fm.lipsdp_l2(graph, granularity)

    return build


def _lipsdp(net: Network, granularity: str, method: str, *, norm=2, solver=None, reduce=True, split=None,
            cross_terms=None, **options):
    """LipSDP on any network; ``cross_terms`` (e.g. ``"exact"``) overrides the GroupSort/Householder rules' choice."""
    from .wellposed import check_network_well_posed

    if cross_terms is not None:
        from .group_activations import with_cross_terms

        net = with_cross_terms(net, cross_terms)
    check_network_well_posed(net)  # IllPosedError for an implicit layer without a well-posedness certificate
    if norm != 2:
        from .linf import lipsdp_linf

        return lipsdp_linf(net, granularity, method, solver=solver, **options)
    if split is not None:
        return _split(net, granularity, method, int(split), solver=solver, reduce=reduce, **options)
    build = _graph_builder(granularity)
    return solve_and_certify(net, method, build, build, solver=solver, reduce=reduce, **options)


@register_method("lipsdp-neuron", "LipSDP with one multiplier per neuron (Fazlyab et al. 2019); split=k for chunks",
                 norms=(2, np.inf))
def _lipsdp_neuron(net: Network, *, norm=2, solver=None, reduce=True, **options):
    return _lipsdp(net, "neuron", "lipsdp-neuron", norm=norm, solver=solver, reduce=reduce, **options)


@register_method("lipsdp-layer", "LipSDP with one multiplier per activation layer", norms=(2, np.inf))
def _lipsdp_layer(net: Network, *, norm=2, solver=None, reduce=True, **options):
    return _lipsdp(net, "layer", "lipsdp-layer", norm=norm, solver=solver, reduce=reduce, **options)


def _split(net: Network, granularity: str, method: str, k: int, *, solver=None, reduce=True, **options):
    """Bound chunks of ``k`` weight layers separately and multiply (MATH §1, "Split")."""
    if k < 1:
        raise NotApplicableError(f"split must be a positive number of layers, got {k}")
    start = time.perf_counter()
    ws, bs, acts = net.weights, net.biases, net.activations
    value = raw = 1.0
    margins = []
    solvers_used = set()
    for lo in range(0, len(ws), k):
        hi = min(lo + k, len(ws))
        chunk = Network.from_weights(ws[lo:hi], bs[lo:hi], list(acts[lo : hi - 1]))
        if hi - lo == 1:
            part = _naive(chunk)
        else:
            part = _lipsdp(chunk, granularity, method, solver=solver, reduce=reduce, **options)
            margins.append(part.certificate_margin)
            solvers_used.add(part.solver)
        value *= part.value
        raw *= part.raw_value
        if hi < len(ws):
            lip = acts[hi - 1].lipschitz_constant(2)
            value *= lip
            raw *= lip
    return LipschitzBound(
        value, raw, f"{method} (split={k})", "+".join(sorted(solvers_used)) or "none", "optimal",
        time.perf_counter() - start, min(margins) if margins else float("nan"), 2, {"split": k},
    )


@register_method("lipsdp-neuron-layerwise", "LipSDP-Neuron in the layer-wise (chordal) form of MATH §2")
def _lipsdp_layerwise(net: Network, *, norm=2, solver=None, reduce=True, **options):
    net._require_feedforward("lipsdp-neuron-layerwise")

    def build(network: Network, reduce: bool = False):
        return fm.lipsdp_layerwise(network, "neuron")

    def transfer(y, sdp_layerwise, sdp_one_block):
        # (ρ, Λ) of the layer-wise optimum is feasible for the one-block LMI (MATH §2 ⇔ §1):
        # certify there, so no free Q_k has to be repaired.
        out = np.zeros(sdp_one_block.n_vars)
        for name, where in sdp_one_block.groups.items():
            out[where] = y[sdp_layerwise.groups[name]]
        return out

    return solve_and_certify(net, "lipsdp-neuron-layerwise", build, _graph_builder("neuron"), solver=solver,
                             reduce=reduce, transfer=transfer, **options)


# ------------------------------------------------------------------------------- ECLipsE-Fast
def eclipse_fast_multipliers(net: Network) -> tuple[float, list[float]]:
    """Greedy closed-form feasible point of MATH §2 with ``Λ_k = ℓ_k I``.

    Starting from ``Q₀ = I``, each step keeps the layer block of MATH §2 PSD by
    taking ``Q_k`` as its Schur complement,

        Q_k = 2ℓΛ… = 2ℓ I − ℓ² S W (Q_{k−1} + 2ℓ Wᵀ A W)⁻¹ Wᵀ S,   A = diag(αβ), S = diag(α+β),

    with ``ℓ_k`` maximising ``λ_min(Q_k)`` (closed form ``ℓ = 1/λ_max(W Q⁻¹ Wᵀ)``
    when ``αβ = 0``; a scalar search otherwise, keeping the 2αβ term).  Finally
    ``ρ = λ_max(W_l Q_{l−1}⁻¹ W_lᵀ)`` and every multiplier is scaled by ρ.

    Returns
    -------
    rho, ells
        ``ρ`` (bound² of the network) and the per-layer ``ℓ_k`` (before scaling by ρ).
    """
    from scipy.optimize import minimize_scalar

    q = np.eye(net.input_dim)
    ells = []
    for w, act in zip(net.weights[:-1], net.activations):
        bounds = act.slope_bounds(w.shape[0])
        if bounds is None:
            raise NotApplicableError(f"eclipse-fast needs slope-restricted activations, not {act.describe()}")
        a, b = bounds
        ab, s = a * b, a + b

        def q_next(ell: float):
            inner = q + 2 * ell * (w.T * ab) @ w
            try:
                chol = la.cho_factor(inner, lower=True)
            except la.LinAlgError:
                return None
            sw = s[:, None] * w
            return 2 * ell * np.eye(w.shape[0]) - ell**2 * sw @ la.cho_solve(chol, sw.T)

        def score(log_ell: float) -> float:
            qn = q_next(np.exp(log_ell))
            return np.inf if qn is None else -la.eigvalsh(qn, subset_by_index=[0, 0])[0]

        g = s[:, None] * w
        sigma = la.eigvalsh(g @ la.solve(q, g.T, assume_a="pos"), subset_by_index=[w.shape[0] - 1, w.shape[0] - 1])[0]
        ell = 1.0 / max(sigma, 1e-300)
        if np.any(ab != 0):
            res = minimize_scalar(score, bracket=(np.log(ell) - 1, np.log(ell)), tol=1e-6)
            if np.isfinite(res.fun) and res.fun < score(np.log(ell)):
                ell = float(np.exp(res.x))
        qn = q_next(ell)
        if qn is None or la.eigvalsh(qn, subset_by_index=[0, 0])[0] <= 0:
            raise NotApplicableError("eclipse-fast found no positive definite step for this network")
        ells.append(ell)
        q = 0.5 * (qn + qn.T)
    w_last = net.weights[-1]
    rho = la.eigvalsh(w_last @ la.solve(q, w_last.T, assume_a="pos"))[-1]
    return float(rho), ells


@register_method("eclipse-fast", "ECLipsE-Fast (Xu & Sivaranjani 2024): closed-form feasible point, certified")
def _eclipse_fast(net: Network, *, norm=2, solver=None, reduce=True, **options):
    net._require_feedforward("eclipse-fast")
    build = _graph_builder("neuron")

    def closed_form(work: Network, sdp_red):
        rho, ells = eclipse_fast_multipliers(work)
        y = np.zeros(sdp_red.n_vars)
        y[sdp_red.rho] = rho
        for k, ell in enumerate(ells, start=1):
            y[sdp_red.groups[f"qc{k}"]] = rho * ell
        return y

    return solve_and_certify(net, "eclipse-fast", build, build, reduce=reduce, closed_form=closed_form)
