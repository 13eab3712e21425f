"""Evaluate an equilibrium layer ``z = φ(W z + U x + b)`` by an iteration its certificate proves convergent.

:mod:`lipsdp.wellposed` certifies a layer with a multiplier (a diagonal ``Λ`` or a
block matrix ``T``).  Every certificate is, read the right way, a contraction
rate ``ρ < 1`` of some fixed-point map in a weighted norm, so the layer is
evaluated by iterating that map: the same condition that lets lipsdp bound the
layer guarantees that its forward pass converges, and an a posteriori error
bound says when to stop.

Norms.  For a symmetric ``P ≻ 0``, ``‖v‖_P = (vᵀ P v)^{1/2}``.  A map ``T`` is a
contraction with rate ``ρ`` if ``‖T(v) − T(v')‖_P ≤ ρ ‖v − v'‖_P``; then (Banach)
it has exactly one fixed point ``v*`` and, for every ``v``,

    ‖v − v*‖_P ≤ ‖T(v) − v‖_P / (1 − ρ),

a *certified* error of the iterate (see Stopping below).

Contraction certificates (``"group"``, ``"contraction"``, ``"contraction-scalar"``).
The multiplier ``P`` satisfies ``P − ℓ² WᵀPW ≻ 0`` and the activation obeys
``‖Δφ‖_P ≤ ℓ‖Δv‖_P`` (elementwise maps with a diagonal ``P``; group maps with
``P = blkdiag(λ_j I + γ_j Π_j)``, see :mod:`lipsdp.wellposed`).  So the plain
iteration ``z ← φ(Wz + u)`` contracts with ``ρ = ℓ‖P^{1/2} W P^{−1/2}‖₂ < 1``.

Monotone certificate (``"monotone"``: slopes in ``[α_i, β_i]`` with ``α_i ≥ 0``).
This is the monotone-operator view of equilibrium networks of Winston & Kolter
("Monotone operator equilibrium networks", NeurIPS 2020) in the weighted form of
Revay, Wang & Manchester ("Lipschitz bounded equilibrium networks", 2020).  Put
``c = φ(0)``, ``σ_i(w) = (φ_i(w) − c_i)/β_i`` (``σ_i ≡ 0`` when ``β_i = 0``: then
``φ_i`` is constant), ``M = W diag(β)`` and ``û = u + Wc``.  Then ``z = c + diag(β) ẑ``
solves the layer exactly when ``ẑ = σ(Mẑ + û)``, and ``σ`` has slopes in ``[0, 1]``.

* An elementwise map with slopes in ``[0, 1]`` is *firmly nonexpansive* in every
  diagonal norm, ``⟨Δσ, Δw⟩_Λ ≥ ‖Δσ‖²_Λ``, hence (Minty) the resolvent
  ``σ = (I + A)⁻¹`` of a maximal monotone operator ``A`` (Bauschke & Combettes,
  *Convex Analysis and Monotone Operator Theory*, ch. 23).
* ``ẑ = σ(Mẑ + û)`` ⟺ ``0 ∈ A(ẑ) + F(ẑ)`` with the affine ``F(ẑ) = (I − M)ẑ − û``.
  The certificate ``2Λ − ΛM − MᵀΛ ≻ 0`` says exactly that ``F`` is strongly
  monotone in the Λ inner product: ``⟨F ẑ − F ẑ', ẑ − ẑ'⟩_Λ ≥ m‖ẑ − ẑ'‖²_Λ``, ``m > 0``.
* Peaceman–Rachford splitting with step 1 iterates ``v ← R_F(R_A(v))`` with the
  reflected resolvents ``R_A = 2σ − I`` and ``R_F(y) = 2(2I − M)⁻¹(y + û) − y``.
  ``R_A`` is nonexpansive (``A`` monotone).  For two points ``x, x'`` put
  ``y = (I + F)⁻¹x`` (so ``x = y + Fy`` and ``R_F x = y − Fy``) and ``y'`` alike;
  then ``‖x − x'‖²_Λ − ‖R_F x − R_F x'‖²_Λ = 4⟨Fy − Fy', y − y'⟩_Λ ≥ 4m‖y − y'‖²_Λ``,
  which is positive unless ``x = x'``: the affine ``R_F`` is a contraction, with
  rate the operator norm of its linear part,
  ``ρ = ‖Λ^{1/2} (2(2I − M)⁻¹ − I) Λ^{−1/2}‖₂ < 1`` (computed, and rounded up for
  float64 error, when the iteration is built).  Hence ``v ← R_F(R_A(v))``
  contracts with rate ``ρ`` (Giselsson, "Tight global linear convergence rate
  bounds for Douglas–Rachford splitting", 2017, treats the general case).
* Its fixed point is the pre-activation: ``v* = Mẑ* + û = W z* + u``, and
  ``z* = φ(v*)``; since ``|φ_i(w) − φ_i(w')| ≤ β_i|w − w'|``,
  ``‖z − z*‖_∞ ≤ max_i(β_i / √λ_i) · ‖v − v*‖_Λ``.

(The damped iteration ``z ← ½z + ½φ(Wz + u)`` that this replaces needs
``φ(W·)`` to be nonexpansive, which the monotone certificate does not give: a
large skew-symmetric part of ``W`` makes it diverge while ``2Λ − ΛW − WᵀΛ ≻ 0``.)

Acceleration.  For elementwise activations with a derivative, each step also
tries a (semismooth) Newton step on the equilibrium equation (``v = Wφ(v) + u``,
resp. ``z = φ(Wz + u)``), shortened up to three times by halves; it is taken
only where it shrinks the residual ``‖T(v) − v‖_P`` by at least the factor ``ρ``
that a step of ``T`` guarantees.  So the residual falls at least as ``ρᵏ``, the
convergence proof above is untouched, and Newton only makes it faster.

Stopping.  A row stops when a certified bound on ``‖z − z*‖_∞`` is below
``tol·(1 + size of the iterate)``: the contraction's ``‖T(v) − v‖_P / (1 − ρ)``
and, for the monotone certificate, also ``‖e‖_Λ / m`` for the residual
``e = v − Wφ(v) − u`` of the equation (``m``: the monotonicity modulus of ``F``;
from ``⟨e, ẑ − ẑ*⟩_Λ ≥ ⟨F ẑ − F ẑ*, ẑ − ẑ*⟩_Λ``, as ``σ(v) = ẑ`` solves the problem
with ``û`` shifted by ``e``), much tighter when ``ρ`` is close to 1.  Both are
bounds for the float64 map; each evaluation adds only its rounding.  A row
whose residual stops falling sits at the rounding floor of an ill-conditioned
layer: it is returned if its certified error is below :data:`ROUNDING_ACCEPT`
(relative), else :class:`~lipsdp.errors.SolverFailedError` is raised.

Layers without a certificate are evaluated by the damped iteration, which must
visibly converge or raise :class:`~lipsdp.errors.IllPosedError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import CertificationError, IllPosedError, InvalidActivationError, NumericalRangeError, SolverFailedError
from .network import Implicit

#: iterations beyond the count the rate predicts, for the rounding of the last steps
_SLACK_STEPS = 20
#: no evaluation runs longer than this many iterations, whatever the rate promises
_MAX_STEPS = 100_000
#: relative float64 error allowed for in a computed operator norm, per unit of dimension and conditioning
_NORM_ROUNDING = 32 * np.finfo(float).eps
#: certified relative error accepted where float64 rounding stops an iteration above its tolerance
ROUNDING_ACCEPT = 1e-6
#: relative last step with which an uncertified layer's damped iteration still counts as converged
DAMPED_ACCEPT = 1e-6
#: fractions of the Newton step tried, longest first (backtracking far from the equilibrium)
_NEWTON_LENGTHS = (1.0, 0.5, 0.25, 0.125)


Array = np.ndarray
Step = Callable[[Array, Array], Array]


@dataclass(frozen=True)
class Splitting:
    """A contraction whose fixed point gives the equilibrium (see the module docstring).

    Attributes
    ----------
    step
        ``step(v, u)``: one iteration on rows ``v`` for inputs ``u = U x + b`` (rows).
    newton
        ``newton(v, u)``: a Newton candidate, or None where no derivative is available.
    start
        ``start(u)``: the first iterate.
    output
        ``output(v)``: the equilibrium ``z`` of an iterate.
    factor
        ``‖v‖_P = ‖v @ factor‖₂`` for each row (``P = factor factorᵀ``).
    rate
        Contraction rate ``ρ < 1`` of ``step`` in ``‖·‖_P`` (rounding included).
    scale
        ``‖output(v) − z*‖_∞ ≤ scale · ‖v − v*‖_P``, so the contraction certifies
        ``‖output(v) − z*‖_∞ ≤ scale · ‖step(v, u) − v‖_P / (1 − ρ)``.
    equation_bound
        ``equation_bound(v, u)``: another certified bound on ``‖output(v) − z*‖_∞``
        per row, from the residual of the equilibrium equation, or None.
    """

    step: Step
    newton: Step | None
    start: Callable[[Array], Array]
    output: Callable[[Array], Array]
    factor: Array
    rate: float
    scale: float
    equation_bound: Callable[[Array, Array], Array] | None = None


# ----------------------------------------------------------------------------- splittings
def splitting(layer: Implicit, certificate: Array, kind: str | None = None) -> Splitting:
    """The convergent iteration that ``certificate`` (from :func:`lipsdp.wellposed.check_well_posed`) proves.

    Raises
    ------
    CertificationError
        If the rate computed in float64 is not below 1 (the certificate's margin is
        lost to rounding).
    """
    from .wellposed import certificate_kind

    kind = certificate_kind(layer) if kind is None else kind
    if kind == "monotone":
        return _peaceman_rachford(layer, np.diag(certificate))
    return _picard(layer, np.asarray(certificate, float), _lipschitz(layer, kind))


def contraction_rate(layer: Implicit, certificate: Array, kind: str) -> float:
    """The rate ``ρ`` (rounded up for float64 error) of the iteration ``certificate`` proves (< 1 if it proves one).

    Needs only ``W`` and the activation's slope bounds or Lipschitz constant, not
    its function, so it applies to rules known by their bounds alone.
    """
    if kind == "monotone":
        return _monotone_operators(layer, np.sqrt(np.diag(certificate)))[0]
    return _contraction_operators(layer, np.asarray(certificate, float), _lipschitz(layer, kind))[0]


def _lipschitz(layer: Implicit, kind: str) -> float:
    return 1.0 if kind == "group" else float(layer.activation.lipschitz_constant(2))


def _operator_norm(matrix: Array, conditioning: float) -> float:
    """``‖matrix‖₂`` rounded up by the float64 error of forming and measuring it."""
    norm = float(np.linalg.norm(matrix, 2))
    return norm * (1.0 + _NORM_ROUNDING * matrix.shape[0] * conditioning)


def _monotonicity(matrix: Array, conditioning: float) -> float:
    """``λ_min((matrix + matrixᵀ)/2)`` rounded down by the float64 error of forming and measuring it."""
    low = float(np.linalg.eigvalsh(0.5 * (matrix + matrix.T))[0])
    return low - _NORM_ROUNDING * matrix.shape[0] * conditioning * float(np.linalg.norm(matrix, 2))


def _check_rate(rate: float, layer: Implicit) -> float:
    if not rate < 1.0:
        raise CertificationError(
            f"the well-posedness certificate of {layer.name or 'an implicit layer'} gives a contraction rate "
            f"{rate:.17g} ≥ 1 in float64 "
            "(its margin is lost to rounding); rescale W so the layer is well posed with a margin"
        )
    return rate


def _elementwise_derivative(layer: Implicit) -> Callable[[Array], Array] | None:
    """``w ↦ φ'(w)`` (rows) if the activation is elementwise and states its derivative, else None."""
    rule = layer.activation
    derivative = getattr(rule, "elementwise_derivative", None)
    if not getattr(rule, "elementwise", False) or derivative is None:
        return None
    try:
        derivative(np.zeros((1, layer.W.shape[0])))
    except InvalidActivationError:  # a rule known by its slope bounds only
        return None
    return derivative


def _monotone_operators(layer: Implicit, root: Array) -> tuple[float, float, Array]:
    """For ``Λ = diag(root²)``: the rate ρ of ``R_F``, the modulus ``m`` of ``F``, and ``(2I − M)⁻¹``."""
    W = layer.W
    n = W.shape[0]
    M = W * np.asarray(layer.activation.slope_bounds(n)[1], float)[None, :]  # M = W diag(β)
    resolvent = np.linalg.inv(2.0 * np.eye(n) - M)
    reflect = 2.0 * resolvent - np.eye(n)  # the linear part of R_F
    conditioning = root.max() / root.min()
    rate = _operator_norm(root[:, None] * reflect / root[None, :], conditioning)
    modulus = _monotonicity(root[:, None] * (np.eye(n) - M) / root[None, :], conditioning)
    return rate, modulus, resolvent


def _contraction_operators(layer: Implicit, P: Array, ell: float) -> tuple[float, Array, Array]:
    """The rate ``ℓ‖P^{1/2} W P^{−1/2}‖₂`` in ``‖·‖_P``, the Cholesky factor ``L`` of ``P`` and its eigenvalues."""
    P = 0.5 * (P + P.T)
    chol = np.linalg.cholesky(P)  # P = L Lᵀ, ‖z‖_P = ‖Lᵀ z‖
    scaled = chol.T @ np.linalg.solve(chol, layer.W.T).T  # Lᵀ W L⁻ᵀ
    eigs = np.linalg.eigvalsh(P)
    return ell * _operator_norm(scaled, math.sqrt(eigs[-1] / eigs[0])), chol, eigs


def _peaceman_rachford(layer: Implicit, lam: Array) -> Splitting:
    """Peaceman–Rachford on the pre-activation ``v = W z + u`` (monotone certificate ``Λ = diag(lam)``)."""
    W, rule = layer.W, layer.activation
    n = W.shape[0]
    beta = np.asarray(rule.slope_bounds(n)[1], float)
    inv_beta = np.divide(1.0, beta, out=np.zeros(n), where=beta > 0)
    c = rule.forward_batch(np.zeros((1, n)))[0]
    root = np.sqrt(lam)
    rate, modulus, resolvent = _monotone_operators(layer, root)
    rate = _check_rate(rate, layer)
    shift = c @ W.T  # û = u + W c
    scale = float(np.max(beta / root))  # ‖z − z*‖_∞ ≤ scale · ‖ẑ − ẑ*‖_Λ

    def equation_bound(v: Array, u: Array) -> Array:
        # strong monotonicity: ‖ẑ − ẑ*‖_Λ ≤ ‖e‖_Λ / m, e = v − Wφ(v) − u (module docstring)
        return scale * _norms(v - rule.forward_batch(v) @ W.T - u, np.diag(root)) / modulus

    def step(v: Array, u: Array) -> Array:
        r = 2.0 * (rule.forward_batch(v) - c) * inv_beta - v  # R_A(v) = 2σ(v) − v
        return 2.0 * (r + u + shift) @ resolvent.T - r  # R_F(r)

    derivative = _elementwise_derivative(layer)

    def newton(v: Array, u: Array) -> Array:
        # v = W φ(v) + u: Jacobian I − W diag(φ'(v)), nonsingular under the certificate
        h = v - rule.forward_batch(v) @ W.T - u
        jac = np.eye(n) - W[None, :, :] * derivative(v)[:, None, :]
        return v - np.linalg.solve(jac, h[:, :, None])[:, :, 0]

    return Splitting(step, None if derivative is None else newton, lambda u: np.array(u, float),
                     rule.forward_batch, np.diag(root), rate, scale, equation_bound if modulus > 0 else None)


def _picard(layer: Implicit, P: Array, ell: float) -> Splitting:
    """The plain iteration ``z ← φ(Wz + u)``, a contraction in ``‖·‖_P`` (``P − ℓ²WᵀPW ≻ 0``)."""
    W, rule = layer.W, layer.activation
    n = W.shape[0]
    rate, chol, eigs = _contraction_operators(layer, P, ell)
    rate = _check_rate(rate, layer)

    def step(z: Array, u: Array) -> Array:
        return rule.forward_batch(z @ W.T + u)

    derivative = _elementwise_derivative(layer)

    def newton(z: Array, u: Array) -> Array:
        # z = φ(Wz + u): Jacobian I − diag(φ'(Wz + u)) W
        w = z @ W.T + u
        jac = np.eye(n) - derivative(w)[:, :, None] * W[None, :, :]
        return z - np.linalg.solve(jac, (z - rule.forward_batch(w))[:, :, None])[:, :, 0]

    # ‖Δz‖_∞ ≤ ‖Δz‖₂ ≤ ‖Δz‖_P / √λ_min(P)
    return Splitting(step, None if derivative is None else newton, lambda u: np.zeros_like(u),
                     lambda z: z, chol, rate, 1.0 / math.sqrt(eigs[0]))


# ------------------------------------------------------------------------------ iteration
def _norms(v: Array, factor: Array) -> Array:
    return np.linalg.norm(v @ factor, axis=1)


def _sizes(v: Array, z: Array) -> Array:
    # an iterate is only known to float64 precision relative to its own size
    return 1.0 + np.maximum(np.abs(v).max(axis=1), np.abs(z).max(axis=1))


def _step_cap(split: Splitting, bound: float, tol: float, what: str) -> int:
    """Iterations after which the contraction's error bound ``bound·ρᵏ`` is below ``tol`` (plus slack)."""
    if not math.isfinite(bound):
        raise NumericalRangeError(
            f"{what}: the equilibrium iteration overflows float64 at these inputs; scale the inputs or weights down"
        )
    if bound <= tol:
        return _SLACK_STEPS
    needed = math.log(tol / bound) / math.log(split.rate) if split.rate > 0 else 1.0
    return int(min(_MAX_STEPS, math.ceil(needed) + _SLACK_STEPS))


class _Iterates:
    """Rows ``v``, their images ``T(v)`` and residuals ``‖T(v) − v‖_P`` for inputs ``u``.

    ``stalled`` marks rows whose residual stopped falling: a step of ``T`` shrinks
    it by ``ρ`` in exact arithmetic, so these rows sit at the float64 rounding floor.
    """

    def __init__(self, split: Splitting, u: Array):
        self.split, self.u = split, u
        self.v = split.start(u)
        self.tv = split.step(self.v, u)
        self.res = _norms(self.tv - self.v, split.factor)
        self.stalled = np.zeros(u.shape[0], bool)

    def contraction_errors(self, rows: Array) -> Array:
        """The contraction's certified ``‖output(v) − z*‖_∞`` of ``rows`` (falls at least as ``ρᵏ``)."""
        return self.split.scale * self.res[rows] / (1.0 - self.split.rate)

    def relative_errors(self, rows: Array) -> Array:
        """The best certified ``‖output(v) − z*‖_∞ / (1 + size of the iterate)`` of ``rows``."""
        v, bound = self.v[rows], self.contraction_errors(rows)
        if self.split.equation_bound is not None:
            bound = np.minimum(bound, self.split.equation_bound(v, self.u[rows]))
        return bound / _sizes(v, self.split.output(v))

    def advance(self, rows: Array) -> None:
        """One step on ``rows``: the Newton candidate where it shrinks the residual by ``ρ``, else ``v ← T(v)``."""
        split, u, res, v = self.split, self.u[rows], self.res[rows], self.v[rows]
        newton = self._newton(v, u)
        take = np.zeros(rows.size, bool)
        for length in _NEWTON_LENGTHS if newton is not None else ():
            trial = ~take
            candidate = v[trial] + length * (newton[trial] - v[trial])
            with np.errstate(all="ignore"):  # a wild candidate is simply not taken
                cand_tv = split.step(candidate, u[trial])
                cand_res = _norms(cand_tv - candidate, split.factor)
            good = cand_res <= split.rate * res[trial]  # NaN compares False
            self._store(rows[trial][good], candidate[good], cand_tv[good], cand_res[good])
            take[np.flatnonzero(trial)[good]] = True
            if take.all():
                break
        rest = rows[~take]
        if rest.size:
            v = self.tv[rest]
            tv = split.step(v, self.u[rest])
            new_res = _norms(tv - v, split.factor)
            self.stalled[rest] = ~(new_res < self.res[rest])
            self._store(rest, v, tv, new_res)

    def _store(self, rows: Array, v: Array, tv: Array, res: Array) -> None:
        self.v[rows], self.tv[rows], self.res[rows] = v, tv, res

    def _newton(self, v: Array, u: Array) -> Array | None:
        if self.split.newton is None:
            return None
        try:
            with np.errstate(all="ignore"):
                return self.split.newton(v, u)
        except np.linalg.LinAlgError:  # a singular generalised Jacobian: the step of T alone
            return None


def iterate(split: Splitting, u: Array, tol: float, what: str = "implicit layer") -> Array:
    """Equilibria for the rows of ``u``, each with certified ``‖z − z*‖_∞ ≤ tol·(1 + size of the iterate)``.

    A row whose residual reaches the float64 rounding floor first is returned if
    its certified error is below ``ROUNDING_ACCEPT`` (relative), the most float64
    can certify for an ill-conditioned layer.

    Raises
    ------
    SolverFailedError
        If a row stalls with a larger certified error.
    NumericalRangeError
        If the iteration overflows float64.
    """
    state = _Iterates(split, u)
    everything = np.arange(u.shape[0])
    finite = np.all(np.isfinite(u), axis=1)  # NaN inputs give NaN outputs, as through any layer
    done = ~finite | (state.relative_errors(everything) <= tol)
    first = float(np.max(state.contraction_errors(everything)[finite], initial=0.0))
    for _ in range(_step_cap(split, first, tol, what)):
        rows = np.flatnonzero(~done & ~state.stalled)
        if rows.size == 0:
            break
        state.advance(rows)
        done[rows] = state.relative_errors(rows) <= tol
    rows = np.flatnonzero(~done)
    errors = state.relative_errors(rows)
    if np.any(~(errors <= ROUNDING_ACCEPT)):
        raise SolverFailedError(
            f"{what}: the certified equilibrium iteration (contraction rate {split.rate:.6g}) stopped at a "
            f"relative error bound of {float(np.max(errors)):.3g}, above the tolerance {tol:.3g}: float64 "
            "rounding limits this layer; rescale W so it is well posed with a larger margin"
        )
    z = split.output(state.v)
    z[~finite] = np.nan
    return z


# ---------------------------------------------------------------------------- entry points
def certified_equilibrium(layer: Implicit, certificate: Array, x: Array, tol: float | None = None) -> Array:
    """``z`` with ``z = φ(W z + U x + b)`` for the rows of ``x``, using the layer's well-posedness certificate.

    Parameters
    ----------
    layer
        The equilibrium layer.
    certificate
        Its multiplier from :func:`lipsdp.wellposed.check_well_posed`.
    x
        Inputs, one per row (float64).
    tol
        Certified bound on ``‖z − z*‖_∞`` relative to ``1 +`` the size of the
        iterate (default: ``layer.tol``).
    """
    x = np.atleast_2d(np.asarray(x, float))
    u = x @ layer.U.T + layer.b
    if u.shape[0] == 0:
        return np.zeros((0, layer.W.shape[0]))
    split = splitting(layer, certificate)
    return iterate(split, u, layer.tol if tol is None else float(tol), layer.name or "implicit layer")


def solve_equilibrium(layer: Implicit, x: Array) -> Array:
    """The equilibria of ``layer`` at the rows of ``x``.

    A layer certified well posed by :func:`lipsdp.wellposed.check_well_posed` is
    solved by its certified iteration; any other layer by the damped iteration.

    Raises
    ------
    IllPosedError
        If the layer has no certificate and the damped iteration does not converge.
    """
    from .wellposed import check_well_posed

    try:
        certificate = check_well_posed(layer)
    except IllPosedError as exc:
        x = np.atleast_2d(np.asarray(x, float))
        u = x @ layer.U.T + layer.b

        def step(z: Array) -> Array:
            return layer.activation.forward_batch(z @ layer.W.T + u)

        return damped_fixed_point(step, np.zeros_like(u), layer.max_iter, layer.tol, str(exc))
    return certified_equilibrium(layer, certificate, x)


def damped_fixed_point(step: Callable[[Any], Any], z: Any, max_iter: int, tol: float, reason: str,
                       accept: float = DAMPED_ACCEPT) -> Any:
    """Iterate ``z ← ½z + ½ step(z)`` (numpy arrays or torch tensors) until the step is below ``tol``.

    Used for layers without a well-posedness certificate, where nothing
    guarantees convergence: the result is returned only if it visibly converged
    (last step below ``accept`` relative to ``1 + ‖z‖_∞`` after ``max_iter``).

    Raises
    ------
    IllPosedError
        Naming ``reason`` (why the layer is not certified), if it did not converge.
    """
    if 0 in z.shape:
        return z
    gap = math.inf
    for k in range(max_iter):
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging iteration is refused below, not warned about
            z_new = step(z)
        if k == 0 and not math.isfinite(float(abs(z_new).max())):  # NaN inputs propagate (numpy or torch)
            return z_new
        gap = float(abs(z_new - z).max()) / (1.0 + float(abs(z_new).max()))
        if gap <= tol:
            return z_new
        z = 0.5 * z + 0.5 * z_new
    if gap <= accept:  # a NaN gap (the iterates diverged) is refused below
        return z
    raise IllPosedError(
        f"{reason.rstrip('.')}. The damped equilibrium iteration z ← ½z + ½φ(Wz + Ux + b) did not converge either "
        f"(relative step {gap:.3g} after {max_iter} iterations), so this layer has no evaluation lipsdp can stand by."
    )
