"""Activation rules: one class per activation family (the mathematics; see the registry below).

A rule knows three things about its activation ``φ: R^m → R^m``:

* how to evaluate it (``forward``) and its Jacobian (``jacobian``), used by the
  lower bounds and by tests;
* a family of *incremental quadratic constraints* (QCs): symmetric matrices
  ``Q(μ)`` on ``[Δv; Δφ] ∈ R^{2m}``, affine in multipliers ``μ``, with

      [Δv; Δφ]ᵀ Q(μ) [Δv; Δφ] ≥ 0   for all v, v' and every feasible μ,

  where ``Δv = v − v'`` and ``Δφ = φ(v) − φ(v')``.  ``qc_basis`` returns the
  matrices ``Q_j`` (``Q(μ) = Σ_j μ_j Q_j``) and which ``μ_j`` must be ≥ 0;
* ``qc_value``: the QC evaluated at sampled pairs, for soundness tests.

A rule is the *mathematics* of an activation family; which torch modules and spec
strings map to which rule, with which parameters, is the job of the one activation
registry, :mod:`lipsdp.activation_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import scipy.sparse as sp

from .errors import InvalidActivationError

@dataclass(frozen=True)
class QCBasis:
    """Basis of a QC family on ``[Δv; Δφ] ∈ R^{2m}``.

    Attributes
    ----------
    coefficients
        Sparse matrix of shape ``(4 m², k)``: column ``j`` is ``vec(Q_j)``
        (column-major) of a symmetric ``2m × 2m`` matrix.
    nonneg
        Boolean array of length ``k``: ``μ_j ≥ 0`` is required where True;
        the other multipliers are free.
    """

    coefficients: sp.csc_matrix
    nonneg: np.ndarray

    @property
    def size(self) -> int:
        return int(self.coefficients.shape[1])

    def matrix(self, mu: np.ndarray) -> np.ndarray:
        """Dense ``Q(μ)``."""
        n2 = int(round(np.sqrt(self.coefficients.shape[0])))
        return np.asarray(self.coefficients @ np.asarray(mu, float)).reshape(n2, n2, order="F")


class Activation:
    """Base class of activation rules (see the module docstring)."""

    kind: ClassVar[str] = "abstract"
    #: True for elementwise maps ``φ(v)_i = φ_i(v_i)`` (their QC and lower bounds work neuron by neuron)
    elementwise: ClassVar[bool] = False
    #: the registry's spec string (``"leaky_relu:0.2"``) of a rule built from it, else None
    spec: ClassVar[str | None] = None
    #: the constructor arguments the registry built the rule from
    params: ClassVar[dict] = {}
    #: where the rule describes a function that differs (within a stated amount) from the torch module read
    caveat: ClassVar[str | None] = None

    def forward(self, v: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def jacobian(self, v: np.ndarray) -> np.ndarray:
        """Jacobian ``∂φ/∂v`` at a single point ``v`` (shape ``(m, m)``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def check_width(self, m: int) -> None:
        """Raise :class:`InvalidActivationError` if the rule cannot act on width ``m``."""

    def qc_basis(self, m: int, granularity: str = "neuron") -> QCBasis:
        """QC basis for width ``m``; ``granularity`` is ``"neuron"`` or ``"layer"``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def slope_bounds(self, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-neuron slope bounds ``(α, β)`` if the rule is slope-restricted, else None."""
        return None

    #: True when the SDP should be posed on the subspace of :meth:`invariant_directions`
    restrict_to_invariants: ClassVar[bool] = False

    def linear_invariants(self, m: int):
        """``A`` (k × 2m) with ``A [Δv; Δφ] = 0`` for every pair of inputs, or None (no invariant)."""
        return None

    def invariant_directions(self, m: int):
        """``K`` (m × q) with ``{Δφ − Δv} = range(K)`` exactly, or None (see group_activations)."""
        return None

    def lipschitz_constant(self, norm=2) -> float:
        """Lipschitz constant of ``φ`` in the given norm (used by the naive bound)."""
        raise NotImplementedError(f"{self.kind} does not state its Lipschitz constant")  # pragma: no cover

    def qc_value(self, v1: np.ndarray, v2: np.ndarray, mu: np.ndarray, granularity: str = "neuron") -> np.ndarray:
        """Value of the QC at the pairs ``(v1[s], v2[s])`` (rows), for multipliers ``mu``."""
        v1 = np.atleast_2d(v1)
        v2 = np.atleast_2d(v2)
        m = v1.shape[1]
        q = self.qc_basis(m, granularity).matrix(mu)
        dv = v1 - v2
        dphi = self.forward_batch(v1) - self.forward_batch(v2)
        z = np.concatenate([dv, dphi], axis=1)
        return np.einsum("si,ij,sj->s", z, q, z)

    def forward_batch(self, v: np.ndarray) -> np.ndarray:
        """``forward`` applied to each row of ``v``."""
        return self.forward(v)

    def describe(self) -> str:
        return self.kind


# ----------------------------------------------------------------------------------
# Slope-restricted activations
# ----------------------------------------------------------------------------------
def slope_qc_basis(alpha: np.ndarray, beta: np.ndarray, granularity: str) -> QCBasis:
    """QC basis of elementwise activations with slopes in ``[α_i, β_i]``.

    Per neuron, ``(Δφ_i − α_i Δv_i)(β_i Δv_i − Δφ_i) ≥ 0``; with ``λ_i ≥ 0`` and
    ``T = diag(λ)`` this is the LipSDP constraint

        [Δv; Δφ]ᵀ [[−2 T diag(αβ), T diag(α+β)], [T diag(α+β), −2 T]] [Δv; Δφ] ≥ 0.

    ``granularity="neuron"``: one λ per neuron; ``"layer"``: one λ for the layer.
    """
    m = alpha.size
    n2 = 2 * m
    idx = np.arange(m)
    # entries (row, col, value) for neuron i: (i,i,-2αβ), (i,m+i,α+β), (m+i,i,α+β), (m+i,m+i,-2)
    rows = np.concatenate([idx, idx, m + idx, m + idx])
    cols = np.concatenate([idx, m + idx, idx, m + idx])
    vals = np.concatenate([-2 * alpha * beta, alpha + beta, alpha + beta, -2 * np.ones(m)])
    flat = rows + n2 * cols
    neuron = np.tile(idx, 4)
    keep = vals != 0
    flat, neuron, vals = flat[keep], neuron[keep], vals[keep]
    if granularity == "neuron":
        coef = sp.csc_matrix((vals, (flat, neuron)), shape=(n2 * n2, m))
        # a neuron with a fixed slope (α = β) satisfies the QC with equality: its multiplier is free
        return QCBasis(coef, alpha != beta)
    if granularity == "layer":
        coef = sp.csc_matrix((vals, (flat, np.zeros_like(flat))), shape=(n2 * n2, 1))
        return QCBasis(coef, np.array([bool(np.any(alpha != beta))]))
    raise InvalidActivationError(f"unknown multiplier granularity {granularity!r}; use 'neuron' or 'layer'")


def relu_fn(v):
    return np.maximum(v, 0.0)


def relu_derivative(v):
    return (v > 0).astype(float)


def tanh_derivative(v):
    return 1.0 - np.tanh(v) ** 2


def sigmoid_fn(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def sigmoid_derivative(v):
    s = sigmoid_fn(v)
    return s * (1 - s)


@dataclass(frozen=True, eq=False)
class SlopeRestricted(Activation):
    """Elementwise activation with slopes in ``[alpha, beta]`` (scalars or per neuron).

    Parameters
    ----------
    alpha, beta
        Slope bounds: ``α ≤ (φ(a) − φ(b))/(a − b) ≤ β``.  Arrays give per-neuron bounds.
    name
        Human-readable name (``"relu"``, ``"tanh"``...).
    fn, derivative
        Vectorised numpy callables for the activation and its derivative; ``None``
        when only the bounds are known (e.g. weights read from a file), in which
        case lower bounds cannot be computed.
    """

    alpha: float | np.ndarray = 0.0
    beta: float | np.ndarray = 1.0
    name: str = "slope"
    fn: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    derivative: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    positively_homogeneous: bool = False

    kind: ClassVar[str] = "slope"
    elementwise: ClassVar[bool] = True

    def __post_init__(self):
        a = np.asarray(self.alpha, dtype=float)
        b = np.asarray(self.beta, dtype=float)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise InvalidActivationError(f"{self.name}: slope bounds must be finite")
        if np.any(a > b):
            raise InvalidActivationError(f"{self.name}: slope bounds need alpha <= beta (got {a}, {b})")

    def _bounds(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.broadcast_to(np.asarray(self.alpha, float), (m,)) if np.ndim(self.alpha) == 0 else np.asarray(self.alpha, float)
        b = np.broadcast_to(np.asarray(self.beta, float), (m,)) if np.ndim(self.beta) == 0 else np.asarray(self.beta, float)
        if a.shape != (m,) or b.shape != (m,):
            raise InvalidActivationError(
                f"{self.name}: per-neuron slope bounds have length {a.size}/{b.size}, layer width is {m}"
            )
        return a.copy(), b.copy()

    def check_width(self, m: int) -> None:
        self._bounds(m)

    def slope_bounds(self, m: int):
        return self._bounds(m)

    def lipschitz_constant(self, norm=2) -> float:
        """``max(|α|, |β|)``: valid in every ℓp norm for elementwise maps."""
        return float(max(np.max(np.abs(self.alpha)), np.max(np.abs(self.beta))))

    def qc_basis(self, m: int, granularity: str = "neuron") -> QCBasis:
        a, b = self._bounds(m)
        return slope_qc_basis(a, b, granularity)

    def forward(self, v):
        if self.fn is None:
            raise InvalidActivationError(f"activation {self.name!r} has slope bounds only, no function to evaluate")
        return self.fn(np.asarray(v, float))

    def jacobian(self, v):
        if self.derivative is None:
            raise InvalidActivationError(f"activation {self.name!r} has slope bounds only, no derivative")
        return np.diag(self.derivative(np.asarray(v, float)))

    def elementwise_derivative(self, v):
        """Derivative as a vector (elementwise activations only)."""
        if self.derivative is None:
            raise InvalidActivationError(f"activation {self.name!r} has slope bounds only, no derivative")
        return self.derivative(np.asarray(v, float))

    def describe(self) -> str:
        if np.ndim(self.alpha) == 0 and np.ndim(self.beta) == 0:
            return f"{self.name}[{float(self.alpha):g},{float(self.beta):g}]"
        return f"{self.name}[per-neuron]"
