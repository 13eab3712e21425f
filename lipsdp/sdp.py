"""A solver-neutral semidefinite program with low-rank, factored data.

Every formulation produces an :class:`SDP`

    minimise  cᵀy   subject to  F_b(y) = F_b⁰ + Σ_t s_t G_tᵀ Q_t(y) G_t ⪰ 0  (each block b),
                                y_i ≥ 0 for i in ``nonneg``,

where each *term* ``t`` has a lift ``G_t`` (r_t × d_b) and a small matrix
``Q_t(y) = Σ_j y[v_j] Q_{t,j}`` that is affine in a few variables.  Keeping the
terms factored (instead of the d² × n coefficient matrix) is what lets the
certification scale, and what structure-exploiting solvers use.  Generic
solvers ask for :meth:`LMIBlock.coefficients` (sparse, d² × n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import scipy.sparse as sp

# a lift filling at least this fraction of (rows × its columns) is multiplied as a dense panel
_DENSE_PANEL_FILL = 0.05


def as_index(cols: np.ndarray):
    """A slice when ``cols`` is a contiguous increasing range (cheap views), else the array."""
    if cols.size and np.all(np.diff(cols) == 1):
        return slice(int(cols[0]), int(cols[-1]) + 1)
    return cols


def add_principal(out: np.ndarray, index, part: np.ndarray) -> None:
    """``out[index, index] += part`` for a slice or an array of distinct indices (:func:`as_index`)."""
    if isinstance(index, slice):
        out[index, index] += part
    else:
        out[np.ix_(index, index)] += part


def _distinct(indices: np.ndarray, size: int) -> np.ndarray:
    """The sorted distinct values of ``indices`` (all in ``0 … size − 1``): ``np.unique``, by a mask when
    that is cheaper (indices that cover a fair part of their range)."""
    if size > 8 * indices.size:
        return np.unique(indices)
    mask = np.zeros(size, dtype=bool)
    mask[indices] = True
    return np.flatnonzero(mask)


@dataclass(frozen=True, eq=False)
class TermStructure:
    """The structure of a :class:`QuadTerm`, derived once from its lift and basis (never from ``y``).

    Attributes
    ----------
    lift
        ``G`` as a canonical CSR matrix (sorted indices, duplicates summed; the term's own lift
        when it is one already).
    columns
        The sorted columns of ``G`` that hold a stored entry (the term's column support).

    Derived arrays are shared by every consumer and must not be modified.
    q_row, q_col, q_var, q_data
        Every stored entry of the basis, as its position ``(a, b)`` in ``Q`` (``r × r``),
        its basis column ``j`` and its coefficient: ``Q(y)_ab = Σ y[variables[j]] · data``.
    """

    lift: sp.csr_matrix
    columns: np.ndarray
    q_row: np.ndarray
    q_col: np.ndarray
    q_var: np.ndarray
    q_data: np.ndarray

    @staticmethod
    def of(lift, basis) -> "TermStructure":
        g = lift if sp.isspmatrix_csr(lift) and lift.has_canonical_format else sp.csr_matrix(lift, copy=True)
        if not g.has_canonical_format:
            g.sum_duplicates()  # sorts the indices too (on the copy: the term's own lift is left as it is)
        coo = basis.tocoo()
        r = g.shape[0]
        return TermStructure(g, _distinct(g.indices, g.shape[1]), coo.row % r, coo.row // r, coo.col, coo.data)

    @cached_property
    def row_extent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lo, hi, count)`` per lift row: its first and last column holding a non-zero (−1 for a row
        without any) and its number of non-zeros (stored zeros are not counted)."""
        g = self.lift
        r = g.shape[0]
        lo = np.full(r, -1, dtype=np.int64)
        hi = np.full(r, -1, dtype=np.int64)
        nz = g.data != 0
        rows = np.repeat(np.arange(r), np.diff(g.indptr))[nz]
        cols = g.indices[nz]
        if rows.size:
            # the non-zeros come row by row with increasing columns: a row's first and last of its run
            first = np.r_[True, rows[1:] != rows[:-1]]
            last = np.r_[rows[1:] != rows[:-1], True]
            lo[rows[first]] = cols[first]
            hi[rows[last]] = cols[last]
        extent = lo, hi, np.bincount(rows, minlength=r)
        for part in extent:
            part.flags.writeable = False  # shared by every consumer of the cached structure
        return extent

    def used_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a, b, j)`` of the basis entries with a non-zero coefficient (the pairs of lift rows
        that some ``Q_j`` couples, as structural consumers read them)."""
        nz = self.q_data != 0
        return self.q_row[nz], self.q_col[nz], self.q_var[nz]


@dataclass(frozen=True, eq=False)
class QuadTerm:
    """``sign · Gᵀ (Σ_j y[variables[j]] Q_j) G``.

    Attributes
    ----------
    lift
        ``G`` (r × d), dense or sparse.
    basis
        Sparse (r², k) matrix; column ``j`` is ``vec(Q_j)`` (column-major, symmetric Q_j).
    variables
        Indices (length k) of the variables multiplying the ``Q_j``.
    sign
        +1 or −1.
    """

    lift: np.ndarray | sp.spmatrix
    basis: sp.csc_matrix
    variables: np.ndarray
    sign: float = 1.0

    @property
    def rank(self) -> int:
        return self.lift.shape[0]

    @cached_property
    def structure(self) -> TermStructure:
        """The term's :class:`TermStructure`, derived on first use (terms are never mutated after build)."""
        return TermStructure.of(self.lift, self.basis)

    def small_matrix(self, y: np.ndarray, absolute: bool = False) -> sp.csr_matrix:
        """Sparse ``Q(y)`` (r × r), or ``|Q|(|y|)`` entrywise when ``absolute``."""
        st = self.structure
        r = self.rank
        w = y[self.variables][st.q_var] * st.q_data
        if absolute:
            w = np.abs(w)
        return sp.csr_matrix((w, (st.q_row, st.q_col)), shape=(r, r))

    def evaluate(self, y: np.ndarray, absolute: bool = False) -> np.ndarray:
        """Dense ``sign · Gᵀ Q(y) G`` (or ``|G|ᵀ |Q| |G|``)."""
        d = self.lift.shape[1]
        out = np.zeros((d, d))
        self.add_to(out, y, absolute)
        return out

    def add_to(self, out: np.ndarray, y: np.ndarray, absolute: bool = False) -> None:
        """Add ``sign · Gᵀ Q(y) G`` (or ``|G|ᵀ |Q(y)| |G|``) into the dense ``out`` (d × d).

        A term whose variables are all zero at ``y`` adds exactly nothing and is
        skipped.  A lift that is dense on its column support (weight rows next to
        selector rows) is multiplied as a dense panel restricted to those columns,
        ``P_Cᵀ (Q P_C)`` with BLAS; a sparse one (a selector) through sparse
        products.  Either way each entry is a sum of the same products
        ``G[a, i] Q[a, b] G[b, j]`` in some order, so the entrywise rounding bound
        ``γ_k |G|ᵀ|Q||G|`` used by :mod:`lipsdp.certificate` holds as before.
        """
        if not np.any(y[self.variables]):
            return
        g = self.structure.lift
        if absolute:
            g = abs(g)
        q = self.small_matrix(y, absolute)
        sign = 1.0 if absolute else self.sign
        cols = self.structure.columns
        if g.nnz > _DENSE_PANEL_FILL * g.shape[0] * cols.size:
            panel = g[:, cols].toarray()
            part = panel.T @ np.asarray(q @ panel)
            if sign != 1.0:
                part *= sign
            add_principal(out, as_index(cols), part)
        else:
            prod = (g.T @ (q @ g)).tocoo()
            prod.sum_duplicates()
            out[prod.row, prod.col] += sign * prod.data

    def coefficients(self, dim: int, n_vars: int) -> sp.csc_matrix:
        """Sparse (d², n_vars): column i = vec(∂/∂y_i of this term)."""
        g = sp.csr_matrix(self.lift)
        q = self.basis.tocoo()
        r = self.rank
        a_rows, b_rows = q.row % r, q.row // r
        ga, gb = g[a_rows], g[b_rows]
        la, lb = np.diff(ga.indptr), np.diff(gb.indptr)
        counts = la * lb
        total = int(counts.sum())
        t = np.repeat(np.arange(q.nnz), counts)
        start = np.repeat(np.cumsum(counts) - counts, counts)
        p = np.arange(total) - start
        lbt = lb[t]
        ia = ga.indptr[t] + p // np.maximum(lbt, 1)
        ib = gb.indptr[t] + p % np.maximum(lbt, 1)
        rows = ga.indices[ia] + dim * gb.indices[ib]
        vals = self.sign * q.data[t] * ga.data[ia] * gb.data[ib]
        cols = self.variables[q.col[t]]
        return sp.csc_matrix((vals, (rows, cols)), shape=(dim * dim, n_vars))


@dataclass(frozen=True, eq=False)
class LMIBlock:
    """``F(y) = constant + Σ terms ⪰ 0`` of size ``dim``.

    ``constant_support`` is optional structural knowledge from the builder: sorted indices ``I``
    with ``constant[i, j] == 0`` whenever ``i ∉ I`` or ``j ∉ I`` (e.g. ``−CᵀC`` vanishes outside
    the columns that ``C`` touches).  Structural consumers then look for the non-zeros of
    ``constant`` inside ``I × I`` only (:func:`lipsdp.banded_certificate.constant_pattern`);
    None (the default) means nothing is known and the whole matrix is read.
    """

    dim: int
    constant: np.ndarray
    terms: tuple
    name: str = ""
    constant_support: np.ndarray | None = None

    def evaluate(self, y: np.ndarray) -> np.ndarray:
        """Dense ``F(y)`` in float64 (symmetrised)."""
        f = np.array(self.constant, dtype=float, copy=True)
        for term in self.terms:
            term.add_to(f, y)
        return 0.5 * (f + f.T)

    def evaluate_abs(self, y: np.ndarray) -> np.ndarray:
        """Entrywise bound ``|F⁰| + Σ |G|ᵀ|Q(y)||G|`` used for rounding-error bounds."""
        f = np.abs(self.constant).astype(float)
        for term in self.terms:
            term.add_to(f, y, absolute=True)
        return f

    def max_rank(self) -> int:
        return max([t.rank for t in self.terms] + [1])

    def coefficients(self, n_vars: int) -> sp.csc_matrix:
        """Sparse (d², n_vars) matrix K with ``vec F(y) = vec F⁰ + K y``."""
        k = sp.csc_matrix((self.dim * self.dim, n_vars))
        for term in self.terms:
            k = k + term.coefficients(self.dim, n_vars)
        return k.tocsc()


@dataclass(eq=False)
class SDP:
    """``minimise cᵀy  s.t.  F_b(y) ⪰ 0, y_nonneg ≥ 0`` (see module docstring).

    Attributes
    ----------
    rho
        Index of the variable ``ρ`` whose coefficient is PSD in every block, so
        raising it can only help (certification repairs through it).
    bound
        Maps a certified ``ρ`` to the Lipschitz bound (e.g. ``√ρ``).
    var_layer
        For chains: the layer index ``k`` a variable belongs to (ρ: 0); the
        exact normalisation ``W_k → W_k / c_k`` rescales it by ``Π_{j>k} c_j²``.
    groups
        Named slices of ``y`` (for users and for warm starts).
    """

    n_vars: int
    objective: np.ndarray
    blocks: list
    nonneg: np.ndarray
    rho: int
    bound: Callable[[float], float]
    var_layer: np.ndarray | None = None
    groups: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Total LMI dimension (sum of block sizes)."""
        return int(sum(b.dim for b in self.blocks))

    def with_margin(self, eps: float) -> "SDP":
        """The same program with ``F_b(y) ⪰ eps·I``: its solutions are strictly feasible for this one."""
        blocks = [LMIBlock(b.dim, b.constant - eps * np.eye(b.dim), b.terms, b.name) for b in self.blocks]
        return SDP(self.n_vars, self.objective, blocks, self.nonneg, self.rho, self.bound, self.var_layer,
                   self.groups, dict(self.meta, margin=eps))


def symmetric_basis(n: int) -> sp.csc_matrix:
    """Basis of symmetric n×n matrices: columns vec(E_ii) and vec(E_ij + E_ji), i < j."""
    iu, ju = np.triu_indices(n)
    k = iu.size
    cols = np.arange(k)
    rows_a = iu + n * ju
    rows_b = ju + n * iu
    off = iu != ju
    rows = np.concatenate([rows_a, rows_b[off]])
    cc = np.concatenate([cols, cols[off]])
    return sp.csc_matrix((np.ones(rows.size), (rows, cc)), shape=(n * n, k))


def identity_basis(n: int) -> sp.csc_matrix:
    """One column: vec(I_n)."""
    idx = np.arange(n)
    return sp.csc_matrix((np.ones(n), (idx + n * idx, np.zeros(n, dtype=int))), shape=(n * n, 1))


def selector(rows: int, dim: int, offset: int) -> sp.csr_matrix:
    """Sparse (rows × dim) matrix picking coordinates offset … offset+rows−1 (canonical CSR, built directly)."""
    return sp.csr_matrix((np.ones(rows), offset + np.arange(rows), np.arange(rows + 1)), shape=(rows, dim))

