"""Activations that are not slope-restricted: GroupSort, MaxMin and Householder (docs/formulations.md §5).

These act on *groups* of ``g`` neurons.  Two conventions for the groups of a
layer of width ``m = n·g`` are supported (``grouping``):

* ``"consecutive"`` (default, the convention of the published MaxMin anchors):
  group ``j`` is neurons ``j·g, …, j·g + g − 1`` (0-based);
* ``"split"``: group ``j`` is neurons ``j, j + n, j + 2n, …`` (for MaxMin: the
  first half holds the maxima, the second half the minima).

Quadratic constraints (Pauli et al., ICLR 2024).  Each rule has a symmetric
``g × g`` matrix ``Π`` that the activation *preserves* per group,
``Δφ_jᵀ Π Δφ_j``-wise:  ``Π Δφ_j = Π Δv_j`` (GroupSort: ``Π = 11ᵀ``, the sum is
preserved; Householder ``φ(z) = z`` if ``vᵀz > 0`` else ``(I − 2vvᵀ)z``:
``Π = I − vvᵀ``), and every group map is 1-Lipschitz in ℓ2.  Hence, with
``λ_j ≥ 0`` and free ``γ_j, s_j, p_j`` and ``T = blkdiag(λ_j I + γ_j Π)``,
``S = blkdiag(s_j Π)``, ``P = blkdiag(p_j Π)``::

    [Δv; Δφ]ᵀ [[T − 2S, S + P], [S + P, −T − 2P]] [Δv; Δφ] ≥ 0,

because the λ part is ``λ(‖Δv‖² − ‖Δφ‖²) ≥ 0`` and the γ, s, p parts are
``γ(a − b)``-type products that vanish when ``ΠΔφ = ΠΔv`` (with
``a = ΔvᵀΠΔv``, ``ab``-terms ``ΔvᵀΠΔφ``, ``b = ΔφᵀΠΔφ``: γ gives ``a − b``,
s gives ``2(ΔvᵀΠΔφ − a)``, p gives ``2(ΔvᵀΠΔφ − b)``, all zero).

The three free directions are linearly dependent: the p-matrix equals the
s-matrix plus twice the γ-matrix, so ``P`` can always be set to 0 without loss
(``cross_terms="s"``).  ``cross_terms="none"`` (the default) drops ``S`` and
``P`` (the "chain" variant of the paper), ``cross_terms="sp"`` keeps both (same
optimum as ``"s"``, one redundant variable).

Caveat on S: the γ- plus s-matrix is ``−(Δv − Δφ)ᵀΠ(Δv − Δφ)`` (negative
semidefinite), so the infimum over free (γ, s) is typically reached only as
``γ_j ≈ s_j → ∞``: by Finsler's lemma it equals the λ-only LMI restricted to
the subspace ``Π_j(Δv_j − Δφ_j) = 0``.  Solvers then stall (cvxopt "unknown");
the well-posed way to get the S-value is that subspace restriction,
``cross_terms="exact"``, which removes the stall exactly: every real increment
satisfies the linear invariant ``R_j(Δφ_j − Δv_j) = 0`` (``R_j`` independent
rows of ``Π``; :meth:`GroupActivation.linear_invariants`), i.e.
``Δφ_j = Δv_j + K_j w_j`` with a basis ``K_j`` of ``null(R_j)``
(:meth:`GroupActivation.invariant_directions`: ``[I; −1ᵀ]`` for GroupSort,
``v`` for Householder; exact integer/stored entries, no SVD).  The SDP is then
posed on that subspace (:func:`lipsdp.formulations.restrict_to_invariants`),
where every γ/s/p term vanishes identically, so only λ_j remains: the value is
at least as tight as any (γ, S, P) choice, with bounded multipliers.

Granularity ``"neuron"`` gives one set ``(λ_j, γ_j, s_j)`` per group,
``"layer"`` one shared set per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from .activations import Activation, QCBasis
from .errors import InvalidActivationError

_GROUPINGS = ("consecutive", "split")
_CROSS = {True: "s", False: "none", "s": "s", "none": "none", "sp": "sp", "p": "p", "exact": "exact"}


def group_indices(m: int, g: int, grouping: str = "consecutive") -> np.ndarray:
    """``(m // g, g)`` array: row ``j`` lists the neurons of group ``j``.

    Raises
    ------
    InvalidActivationError
        If ``g < 1``, ``m`` is not a multiple of ``g``, or ``grouping`` is unknown.
    """
    if g < 1:
        raise InvalidActivationError(f"group size must be a positive integer, got {g}")
    if m % g != 0:
        raise InvalidActivationError(
            f"a layer of width {m} cannot be split into groups of {g} neurons ({m} is not divisible by {g})"
        )
    n = m // g
    if grouping == "consecutive":
        return np.arange(m).reshape(n, g)
    if grouping == "split":
        return np.arange(m).reshape(g, n).T.copy()
    raise InvalidActivationError(f"unknown grouping {grouping!r}; use one of {_GROUPINGS}")


def group_qc_basis(m: int, groups: np.ndarray, proj: np.ndarray, granularity: str, cross_terms: str) -> QCBasis:
    """QC basis of docs/formulations.md §5 for groups ``groups`` (rows) and preserved matrix ``proj`` (g × g).

    Columns per group, in order: λ_j (≥ 0), γ_j, then s_j and/or p_j (free).
    """
    if granularity not in ("neuron", "layer"):
        raise InvalidActivationError(f"unknown multiplier granularity {granularity!r}; use 'neuron' or 'layer'")
    n2 = 2 * m
    n_groups, g = groups.shape
    pi, pj = np.nonzero(np.abs(proj) > 0)
    pv = proj[pi, pj]
    # "exact": the γ/s/p terms vanish on the invariant subspace the SDP is restricted to
    kinds = ["lam"] if cross_terms == "exact" else ["lam", "gam"] + {"none": [], "s": ["s"], "p": ["p"], "sp": ["s", "p"]}[cross_terms]
    rows, cols, vals = [], [], []

    def add(r, c, v, col):
        rows.append(r + n2 * c)
        cols.append(np.full(np.size(r), col))
        vals.append(np.broadcast_to(v, np.shape(r)).astype(float))

    n_kinds = len(kinds)
    for j in range(n_groups):
        idx = groups[j]
        a, b = idx[pi], idx[pj]  # rows/cols of Π inside the m×m blocks
        for t, kind in enumerate(kinds):
            col = j * n_kinds + t if granularity == "neuron" else t
            if kind == "lam":
                add(idx, idx, 1.0, col)
                add(m + idx, m + idx, -1.0, col)
            elif kind == "gam":
                add(a, b, pv, col)
                add(m + a, m + b, -pv, col)
            elif kind == "s":  # [[−2Π, Π], [Π, 0]]
                add(a, b, -2 * pv, col)
                add(a, m + b, pv, col)
                add(m + a, b, pv, col)
            else:  # p: [[0, Π], [Π, −2Π]]
                add(a, m + b, pv, col)
                add(m + a, b, pv, col)
                add(m + a, m + b, -2 * pv, col)
    k = n_groups * n_kinds if granularity == "neuron" else n_kinds
    coef = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n2 * n2, k)
    )
    coef.sum_duplicates()
    nonneg = np.tile(np.array([kind == "lam" for kind in kinds]), k // n_kinds)
    return QCBasis(coef, nonneg)


class GroupActivation(Activation):
    """Base class of group-wise activations with a preserved matrix ``Π`` (see module docstring).

    Subclasses define ``group_size``, ``grouping``, ``cross_terms``, ``preserved()``
    (the ``g × g`` matrix ``Π``) and ``_group_forward`` / ``_group_jacobian`` on
    arrays of shape ``(s, n_groups, g)``.
    """

    group_size: int
    grouping: str
    cross_terms: str | bool

    def _validate(self) -> None:
        if not isinstance(self.group_size, (int, np.integer)) or self.group_size < 1:
            raise InvalidActivationError(f"{self.kind}: group size must be a positive integer, got {self.group_size!r}")
        if self.grouping not in _GROUPINGS:
            raise InvalidActivationError(f"{self.kind}: unknown grouping {self.grouping!r}; use one of {_GROUPINGS}")
        if self.cross_terms not in _CROSS:
            raise InvalidActivationError(
                f"{self.kind}: cross_terms must be one of True, False, 's', 'p', 'sp', 'none', 'exact' (got {self.cross_terms!r})"
            )

    def preserved(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def groups(self, m: int) -> np.ndarray:
        """``(m // g, g)`` neuron indices of the groups of a width-``m`` layer."""
        try:
            return group_indices(m, int(self.group_size), self.grouping)
        except InvalidActivationError as exc:
            raise InvalidActivationError(f"{self.describe()}: {exc}") from None

    def check_width(self, m: int) -> None:
        self.groups(m)

    def qc_basis(self, m: int, granularity: str = "neuron") -> QCBasis:
        return group_qc_basis(m, self.groups(m), self.preserved(), granularity, _CROSS[self.cross_terms])

    @property
    def restrict_to_invariants(self) -> bool:
        """True for ``cross_terms="exact"``: the SDP is posed on the invariant subspace."""
        return _CROSS[self.cross_terms] == "exact"

    def _invariant_rows(self) -> np.ndarray:
        """Independent rows ``R`` (r × g) of ``Π`` (the invariant is ``R(Δφ − Δv) = 0`` per group)."""
        return np.ones((1, int(self.group_size)))

    def _invariant_kernel(self) -> np.ndarray:
        """Basis ``K`` (g × (g − r)) of ``null(R)``, with exactly representable entries."""
        g = int(self.group_size)
        return np.vstack([np.eye(g - 1), -np.ones((1, g - 1))])

    def linear_invariants(self, m: int) -> sp.csr_matrix:
        """``A`` (k × 2m) with ``A [Δv; Δφ] = 0`` for every pair of inputs: ``[−R, R]`` per group."""
        idx = self.groups(m)
        r = self._invariant_rows()
        blocks = np.zeros((len(idx) * r.shape[0], 2 * m))
        for j, cols in enumerate(idx):
            rows = slice(j * r.shape[0], (j + 1) * r.shape[0])
            blocks[rows, cols] = -r
            blocks[rows, m + cols] = r
        return sp.csr_matrix(blocks)

    def invariant_directions(self, m: int) -> sp.csr_matrix:
        """``K`` (m × q): ``Δφ − Δv ∈ range(K)`` for every pair, and ``range(K)`` is exactly that set."""
        idx = self.groups(m)
        k = self._invariant_kernel()
        out = sp.lil_matrix((m, len(idx) * k.shape[1]))
        for j, rows in enumerate(idx):
            out[np.ix_(rows, np.arange(j * k.shape[1], (j + 1) * k.shape[1]))] = k
        return out.tocsr()

    def forward_batch(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, float)
        squeeze = v.ndim == 1
        v2 = np.atleast_2d(v)
        idx = self.groups(v2.shape[1])
        out = np.empty_like(v2)
        out[:, idx] = self._group_forward(v2[:, idx])
        return out[0] if squeeze else out

    def forward(self, v: np.ndarray) -> np.ndarray:
        return self.forward_batch(v)

    def jacobian(self, v: np.ndarray) -> np.ndarray:
        """Jacobian at one point (a generalised one at ties / on the switching hyperplane)."""
        v = np.asarray(v, float).reshape(-1)
        m = v.size
        idx = self.groups(m)
        blocks = self._group_jacobian(v[idx][None])[0]  # (n_groups, g, g)
        jac = np.zeros((m, m))
        for j, rows in enumerate(idx):
            jac[np.ix_(rows, rows)] = blocks[j]
        return jac

    def lipschitz_constant(self, norm=2) -> float:
        return 1.0


@dataclass(frozen=True, eq=False)
class GroupSort(GroupActivation):
    """GroupSort: sort each group of ``group_size`` neurons (MaxMin = ``GroupSort(2)``).

    Parameters
    ----------
    group_size
        Neurons per group ``g`` (the layer width must be a multiple of ``g``).
    grouping
        ``"consecutive"`` or ``"split"`` (see the module docstring).
    descending
        Sort largest first (default, so ``GroupSort(2)`` outputs ``(max, min)``
        like the published MaxMin anchors); the bound does not depend on it.
    cross_terms
        Which free cross multipliers of docs/formulations.md §5 to use: ``"none"``/False (default:
        the S = P = 0 chain variant, well conditioned), ``"s"``/True, ``"sp"``, ``"p"``.
        With S free the optimum is in general only approached as γ_j ≈ s_j → ∞
        (the limit enforces ``Π(Δv − Δφ) = 0`` as a hard constraint), so
        interior-point solvers may stall; ``"exact"`` imposes that constraint
        directly (SDP on the invariant subspace, λ only): as tight as any
        S, P, with bounded multipliers.  See the module docstring.
    """

    group_size: int = 2
    grouping: str = "consecutive"
    descending: bool = True
    cross_terms: str | bool = "none"

    kind: ClassVar[str] = "groupsort"

    def __post_init__(self):
        self._validate()

    def preserved(self) -> np.ndarray:
        g = int(self.group_size)
        return np.ones((g, g))

    def _group_forward(self, u: np.ndarray) -> np.ndarray:
        s = np.sort(u, axis=-1)
        return s[..., ::-1] if self.descending else s

    def _group_jacobian(self, u: np.ndarray) -> np.ndarray:
        order = np.argsort(u, axis=-1, kind="stable")
        if self.descending:
            order = order[..., ::-1]
        g = u.shape[-1]
        eye = np.eye(g)
        return eye[order]  # row r of the output is input order[r]

    def lipschitz_constant(self, norm=2) -> float:
        """1 in every ℓp norm (sorting is non-expansive)."""
        return 1.0

    def describe(self) -> str:
        name = "maxmin" if int(self.group_size) == 2 and self.descending else f"groupsort{int(self.group_size)}"
        extra = [] if self.grouping == "consecutive" else [self.grouping]
        if _CROSS[self.cross_terms] != "none":
            extra.append(f"cross={_CROSS[self.cross_terms]}")
        return name + (f"[{','.join(extra)}]" if extra else "")


@dataclass(frozen=True, eq=False)
class Householder(GroupActivation):
    """Householder activation ``φ(z) = z`` if ``vᵀz > 0`` else ``(I − 2vvᵀ)z``, per group.

    Parameters
    ----------
    v
        The reflection vector (length = group size); it is normalised to unit
        length.  A zero (or non-finite) vector raises :class:`InvalidActivationError`.
    grouping, cross_terms
        As for :class:`GroupSort`.
    """

    v: np.ndarray = field(default_factory=lambda: np.array([1.0, -1.0]) / np.sqrt(2.0))
    grouping: str = "consecutive"
    cross_terms: str | bool = "none"

    kind: ClassVar[str] = "householder"

    def __post_init__(self):
        raw = self.v.detach().cpu().numpy() if hasattr(self.v, "detach") else self.v
        v = np.array(raw, dtype=float).reshape(-1)
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise InvalidActivationError(f"Householder vector must be a non-empty finite vector, got {v!r}")
        nrm = float(np.linalg.norm(v))
        if not nrm > 0:
            raise InvalidActivationError("Householder vector has zero norm: the reflection I − 2vvᵀ/‖v‖² is undefined")
        unit = v / nrm
        unit.setflags(write=False)
        object.__setattr__(self, "v", unit)
        self._validate()

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return int(self.v.size)

    def preserved(self) -> np.ndarray:
        return np.eye(self.v.size) - np.outer(self.v, self.v)

    def reflection(self) -> np.ndarray:
        return np.eye(self.v.size) - 2 * np.outer(self.v, self.v)

    def _invariant_rows(self) -> np.ndarray:
        # Π has rank g − 1 (vᵀΠ = 0): dropping the row of the largest |v_i| leaves independent rows
        keep = np.arange(self.v.size) != int(np.argmax(np.abs(self.v)))
        return self.preserved()[keep]

    def _invariant_kernel(self) -> np.ndarray:
        # φ(z) − z ∈ span(v) exactly (for the stored v), so K = v needs no rounding
        return self.v.reshape(-1, 1)

    def _group_forward(self, u: np.ndarray) -> np.ndarray:
        proj = u @ self.v
        return np.where((proj > 0)[..., None], u, u - 2 * proj[..., None] * self.v)

    def _group_jacobian(self, u: np.ndarray) -> np.ndarray:
        proj = u @ self.v
        eye, refl = np.eye(self.v.size), self.reflection()
        return np.where((proj > 0)[..., None, None], eye, refl)

    def lipschitz_constant(self, norm=2) -> float:
        """1 in ℓ2; in ℓ∞ the larger of 1 and ‖I − 2vvᵀ‖∞ (φ is continuous piecewise linear)."""
        if norm == 2:
            return 1.0
        return float(max(1.0, np.max(np.sum(np.abs(self.reflection()), axis=1))))

    def describe(self) -> str:
        return f"householder{self.v.size}" + ("" if self.grouping == "consecutive" else f"[{self.grouping}]")


def maxmin(grouping: str = "consecutive", cross_terms: str | bool = "none") -> GroupSort:
    """MaxMin on pairs, output ``(max, min)`` (the anchors' convention)."""
    return GroupSort(2, grouping, True, cross_terms)


def with_cross_terms(network, cross_terms: str | bool):
    """``network`` with every GroupSort/MaxMin/Householder rule set to ``cross_terms``.

    Rules inside implicit layers are left unchanged: their outputs are coupled to
    themselves, so they are never restricted to the invariant subspace and
    ``"exact"`` (λ only) would drop their γ multipliers.

    Raises
    ------
    InvalidActivationError
        For an unknown ``cross_terms`` value.
    """
    from dataclasses import replace

    from .network import ActivationLayer, Network, Residual

    if cross_terms not in _CROSS:
        raise InvalidActivationError(f"cross_terms must be one of {sorted(map(str, _CROSS))}, got {cross_terms!r}")

    def convert(layers):
        out = []
        for layer in layers:
            if isinstance(layer, ActivationLayer) and isinstance(layer.activation, GroupActivation):
                layer = ActivationLayer(replace(layer.activation, cross_terms=cross_terms), layer.name)
            elif isinstance(layer, Residual):
                layer = Residual(tuple(convert(layer.branch)), layer.name)
            out.append(layer)
        return out

    return Network(convert(network.layers))
