"""Activations that are not slope-restricted: GroupSort, MaxMin and Householder (MATH §5).

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
the well-posed way to get the S-value is that subspace restriction (not yet
wired into :func:`lipsdp.formulations.lipsdp_l2`).

Granularity ``"neuron"`` gives one set ``(λ_j, γ_j, s_j)`` per group,
``"layer"`` one shared set per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from .activations import Activation, QCBasis, register_activation, register_activation_name
from .errors import InvalidActivationError

_GROUPINGS = ("consecutive", "split")
_CROSS = {True: "s", False: "none", "s": "s", "none": "none", "sp": "sp", "p": "p"}


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
    """QC basis of MATH §5 for groups ``groups`` (rows) and preserved matrix ``proj`` (g × g).

    Columns per group, in order: λ_j (≥ 0), γ_j, then s_j and/or p_j (free).
    """
    if granularity not in ("neuron", "layer"):
        raise InvalidActivationError(f"unknown multiplier granularity {granularity!r}; use 'neuron' or 'layer'")
    n2 = 2 * m
    n_groups, g = groups.shape
    pi, pj = np.nonzero(np.abs(proj) > 0)
    pv = proj[pi, pj]
    kinds = ["lam", "gam"] + {"none": [], "s": ["s"], "p": ["p"], "sp": ["s", "p"]}[cross_terms]
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
                f"{self.kind}: cross_terms must be one of True, False, 's', 'p', 'sp', 'none' (got {self.cross_terms!r})"
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


@register_activation
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
        Which free cross multipliers of MATH §5 to use: ``"none"``/False (default:
        the S = P = 0 chain variant, well conditioned), ``"s"``/True, ``"sp"``, ``"p"``.
        With S free the optimum is in general only approached as γ_j ≈ s_j → ∞
        (the limit enforces ``Π(Δv − Δφ) = 0`` as a hard constraint), so
        interior-point solvers may stall; see the module docstring.
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


@register_activation
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


def groupsort(group_size: int = 2, grouping: str = "consecutive", descending: bool = True,
              cross_terms: str | bool = "none") -> GroupSort:
    """GroupSort with group size ``group_size``."""
    return GroupSort(group_size, grouping, descending, cross_terms)


def householder(v, grouping: str = "consecutive", cross_terms: str | bool = "none") -> Householder:
    """Householder activation with reflection vector ``v``."""
    return Householder(np.asarray(v, float), grouping, cross_terms)


register_activation_name("maxmin", maxmin)
register_activation_name("groupsort", groupsort)
register_activation_name("maxmin_s", lambda: maxmin(cross_terms="s"))
