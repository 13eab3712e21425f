"""Clique-by-clique certificate of a banded LMI block (deep chains), in band storage.

The LipSDP-Neuron LMI of a feed-forward chain, in its natural order
``z = (Δx₀, Δφ₁, …, Δφ_{l−1})``, is block tridiagonal: every term couples one
layer with the next, so its aggregate sparsity pattern (the union of the
patterns of ``F⁰`` and of every term, taken from the structure and never from
the numbers) lies in a band of half-bandwidth ``p = max_k (n_{k−1} + n_k) − 1``.
Its maximal cliques are the consecutive layer pairs ``(k−1, k)``.

For such a block the certificate of :mod:`lipsdp.certificate` is run in LAPACK's
band storage (``(p + 1) × N`` instead of ``N × N``):

* ``F(y)`` and its entrywise error bound ``|F⁰| + Σ|G|ᵀ|Q(y)||G|`` are
  assembled term by term, each term on its own column support (a clique) with
  the very products of the dense assembly (:meth:`lipsdp.sdp.QuadTerm.evaluate`),
  so the dense assembly-error model holds entry by entry;
* both are scaled to unit diagonal (a congruence), and
* a banded Cholesky (``scipy.linalg.cholesky_banded``, LAPACK ``pbtrf``) of
  ``F̃ − δI`` is run, with Rump's shift computed from ``γ_{p+2}`` in place of
  ``γ_{N+1}`` (:mod:`lipsdp.rounding` states and proves the lemma: a banded
  factorisation's inner products have at most ``p`` terms).

Why this is a clique-by-clique proof: the banded Cholesky factor of a block
tridiagonal matrix is its block ``LDLᵀ`` factorisation, which writes
``F = Σ_k E_kᵀ C_k E_k`` with each clique matrix ``C_k`` (on layers
``k−1, k``) PSD and the Schur complement of one clique passed on to the next:
success proves the existence of a PSD decomposition over the cliques, which
for a chordal pattern is equivalent to ``F ⪰ 0`` (Agler, Helton, McCullough
& Rodman 1988; Vandenberghe & Andersen 2015).  Memory is ``O(N p)`` and time
``O(N p²)``: linear in depth at fixed width.  ``docs/certificates.md`` has the
full argument.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

from .rounding import UNIT_ROUNDOFF, rump_shift, scaled_assembly_error
from .runtime import blas_threads, csr_product_into, threads_for_size
from .sdp import LMIBlock, QuadTerm, as_index

#: blocks smaller than this are certified densely (a dense Cholesky of a few hundred rows costs nothing)
MIN_BANDED_SIZE = 1024
#: the band is used when its half-bandwidth is at most this fraction of the block's size
MAX_BAND_FRACTION = 0.25


# Structural answers per block object.  An LMIBlock (and its terms) is never mutated after it is
# built (it is frozen; ``with_margin`` and the decomposition build new blocks), and one estimate asks
# for the same structure several times: for the closed form's slack, the decomposition and the
# certificate.  The cached values hold no reference to their block, so it can still be collected.
_patterns: "weakref.WeakKeyDictionary[LMIBlock, tuple]" = weakref.WeakKeyDictionary()
_widths: "weakref.WeakKeyDictionary[LMIBlock, int | None]" = weakref.WeakKeyDictionary()


def constant_pattern(block: LMIBlock) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with ``i ≥ j``, once each, where ``F⁰_ij`` or ``F⁰_ji`` is non-zero (dense or sparse ``F⁰``).

    Computed once per block (the arrays returned are read-only).
    """
    pattern = _patterns.get(block)
    if pattern is None:
        pattern = _constant_pattern(block)
        for part in pattern:
            part.flags.writeable = False
        _patterns[block] = pattern
    return pattern


def _constant_pattern(block: LMIBlock) -> tuple[np.ndarray, np.ndarray]:
    """The body of :func:`constant_pattern`."""
    constant = block.constant
    support = block.constant_support
    if support is not None and not sp.issparse(constant):
        # the builder's contract: F⁰ vanishes outside support × support, so only that part is read
        support = np.asarray(support, dtype=np.int64)
        sub_rows, sub_cols = np.nonzero(np.asarray(constant)[np.ix_(support, support)])
        return _lower_once(support[sub_rows], support[sub_cols], block.dim)
    if sp.issparse(constant):
        coo = constant.tocoo()
        nz = coo.data != 0
        rows, cols = coo.row[nz], coo.col[nz]
    else:  # rows first: a chain's F⁰ lives on its last layer, and a row scan is far cheaper than nonzero()
        constant = np.asarray(constant)
        filled = np.flatnonzero(np.any(constant != 0, axis=1))
        sub_rows, cols = np.nonzero(constant[filled])
        rows = filled[sub_rows]
    return _lower_once(rows, cols, block.dim)


def _lower_once(rows: np.ndarray, cols: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions ``(rows, cols)`` folded onto the lower triangle (``i ≥ j``), each once, sorted."""
    i, j = np.maximum(rows, cols), np.minimum(rows, cols)
    if i.size == 0:
        return i.astype(np.int64), j.astype(np.int64)
    key = np.unique(i.astype(np.int64) * dim + j)
    return key // dim, key % dim


def half_bandwidth(block: LMIBlock, pattern: tuple | None = None) -> int:
    """Half-bandwidth of the block's aggregate sparsity pattern (structural: no cancellation is relied on).

    ``F⁰`` contributes its non-zeros; a term ``Gᵀ Q(y) G`` contributes
    ``g_a g_bᵀ`` for every pair ``(a, b)`` that some basis matrix ``Q_j``
    couples, whose entries lie within ``max(hi_a − lo_b, hi_b − lo_a)`` of the
    diagonal (``lo``, ``hi``: the first and last column a lift row touches).
    ``pattern`` is :func:`constant_pattern` when the caller has it already.
    """
    rows, cols = constant_pattern(block) if pattern is None else pattern
    width = int(np.max(rows - cols, initial=0))
    for term in block.terms:
        structure = term.structure
        lo, hi, _ = structure.row_extent
        a, b, _ = structure.used_pairs()
        both = (lo[a] >= 0) & (lo[b] >= 0)
        a, b = a[both], b[both]
        if a.size:
            width = max(width, int(np.max(np.maximum(hi[a] - lo[b], hi[b] - lo[a]))))
    return width


class _Workspace:
    """Arrays the terms of one :meth:`BandedBlock.evaluate` share (allocated once per call: fresh pages
    cost more than the products of a clique)."""

    def __init__(self, terms: list):
        terms = [t for t in terms if t is not None]
        self.panel = np.empty(max([t.shape[0] * t.shape[1] for t in terms], default=0))
        self.qg = np.empty(max([t.rows.size * t.shape[1] for t in terms], default=0))
        self._products = {}

    def product(self, c: int) -> np.ndarray:
        """A zero ``2c × c`` array whose lower half stays zero (see :meth:`_CliqueTerm.add_to`)."""
        if c not in self._products:
            self._products[c] = np.zeros((2 * c, c))
        return self._products[c]


#: a row group of a clique product spans at least this many columns (smaller ranges are joined)
_MIN_GROUP_COLUMNS = 64


def _row_groups(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: int) -> tuple[list, np.ndarray]:
    """Groups of the rows ``rows`` of a clique's panel (``c`` columns; row ``rows[k]`` has its non-zeros in
    the panel columns ``lo[k] … hi[k]``, ``hi[k] < 0`` for none) for the product ``P = Gᵀ (Q G)`` on them.

    The rows' column ranges are merged where they overlap, and consecutive merged ranges are joined until
    a group spans :data:`_MIN_GROUP_COLUMNS` columns: the groups' ranges ``lo … hi`` are then disjoint, so
    ``P[lo:hi+1, :]`` is ``G[g, lo:hi+1]ᵀ (Q G)[g, :]`` over the group's rows ``g`` alone (the other rows
    of ``G`` are zero there: the same products, without zero ones).  Returns the groups as ``(panel rows,
    positions in rows, lo, hi)`` (the indices as slices when contiguous) and the panel columns no group
    covers (``P`` is zero there).
    """
    index = np.flatnonzero(hi >= 0)  # rows of G without non-zeros add nothing to P
    order = index[np.argsort(lo[index], kind="stable")]
    starts_lo, ends_hi = lo[order], np.maximum.accumulate(hi[order]) if order.size else hi[order]
    # a merged range starts where a row begins past every earlier row's end
    starts = np.flatnonzero(np.r_[True, starts_lo[1:] > ends_hi[:-1]]) if order.size else order
    ends = np.r_[starts[1:], order.size].astype(np.int64)
    groups, covered, first = [], np.zeros(c, dtype=bool), 0
    for k in range(starts.size):
        begin, end = int(starts_lo[starts[first]]), int(ends_hi[ends[k] - 1])
        if end - begin + 1 >= _MIN_GROUP_COLUMNS or k == starts.size - 1:
            members = np.sort(order[starts[first]:ends[k]])
            groups.append((as_index(rows[members]), as_index(members), begin, end))
            covered[begin:end + 1] = True
            first = k + 1
    return groups, np.flatnonzero(~covered)


class _CliqueTerm:
    """One term ``sign · Gᵀ Q(y) G`` on its column support (a clique of the band), ready to be evaluated.

    Precomputed once from the term's structure: where the lift's entries go in the dense
    panel ``G[:, columns]`` (the panel itself is written per evaluation, so memory stays
    that of the sparse lift), ``Q``'s sparsity as a CSR pattern over the rows of ``Q``
    that hold entries (the basis entries of one position ``(a, b)`` are summed first, as
    a sparse ``Q`` sums its duplicates), and where the lower triangle of the product goes
    in the band.
    """

    def __init__(self, term: QuadTerm, bandwidth: int, dim: int):
        structure = term.structure
        g, columns = structure.lift, structure.columns
        c = columns.size
        self.shape = (g.shape[0], c)
        self.variables = np.asarray(term.variables)
        self.sign = term.sign
        # canonical CSR: each panel position once
        self.positions = np.repeat(np.arange(g.shape[0]) * c, np.diff(g.indptr)) + np.searchsorted(columns, g.indices)
        self.values, self.values_abs = g.data, np.abs(g.data)
        order = np.lexsort((structure.q_col, structure.q_row))
        a, b = structure.q_row[order], structure.q_col[order]
        self.entry_var, self.entry_data = structure.q_var[order], structure.q_data[order]
        new_pair = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
        # Q's stored entries are the runs of basis entries at one (a, b); None: every run has one entry
        self.pair_starts = None if np.all(new_pair) else np.flatnonzero(new_pair)
        pair_rows, self.pair_cols = a[new_pair], b[new_pair].astype(np.int32)
        self.rows, counts = np.unique(pair_rows, return_counts=True)  # the rows of Q holding entries
        self.indptr = np.r_[0, np.cumsum(counts)].astype(np.int32)
        extent_lo, extent_hi, count = structure.row_extent  # over the lift's non-zeros
        used = count[self.rows] > 0
        local_lo = np.where(used, np.searchsorted(columns, extent_lo[self.rows]), 0)
        local_hi = np.where(used, np.searchsorted(columns, extent_hi[self.rows]), -1)
        self.groups, self.uncovered = _row_groups(self.rows, local_lo, local_hi, c)
        self.depth = min(bandwidth + 1, c)  # the band rows a clique of c columns reaches
        self.start = int(columns[0]) if columns[-1] - columns[0] + 1 == c else None
        if self.start is None:  # scattered columns: explicit positions of the lower triangle's band entries
            li, lj = np.tril_indices(c)
            offset = columns[li] - columns[lj]
            keep = offset <= bandwidth  # entries outside the band are structurally zero (see half_bandwidth)
            self.lower = li[keep] * c + lj[keep]  # flat positions in the c × c product
            self.band = offset[keep] * dim + columns[lj[keep]]  # flat positions in the (p + 1) × N band

    @staticmethod
    def of(term: QuadTerm, bandwidth: int, dim: int) -> "_CliqueTerm | None":
        """The clique of ``term``, or None for a term without lift entries or basis entries (it adds nothing)."""
        if term.structure.columns.size == 0 or term.structure.q_row.size == 0:
            return None
        return _CliqueTerm(term, bandwidth, dim)

    def product(self, y: np.ndarray, absolute: bool, out: np.ndarray, space: _Workspace) -> np.ndarray:
        """``P = sign · Gᵀ Q(y) G`` (or ``|G|ᵀ |Q|(|y|) |G|``) on the clique's columns, written into ``out``
        (c × c): its lower triangle ``i ≥ j`` (all that is read); entries above it may be left as they were.

        Each entry is a sum of the products ``G[a, i] · (Σ_b Q[a, b] G[b, j])`` over the
        non-zero ``Q[a, b]``, as in :meth:`lipsdp.sdp.QuadTerm.add_to` (rows of ``G`` or ``Q``
        that are zero there add exact zeros and are skipped here).
        """
        r, c = self.shape
        w = y[self.variables][self.entry_var] * self.entry_data
        if absolute:
            w = np.abs(w)
        q = w if self.pair_starts is None else np.add.reduceat(w, self.pair_starts)
        panel = space.panel[: r * c].reshape(r, c)
        panel.fill(0.0)
        panel.reshape(-1)[self.positions] = self.values_abs if absolute else self.values
        qg = space.qg[: self.rows.size * c].reshape(self.rows.size, c)
        csr_product_into(self.indptr, self.pair_cols, q, panel, qg)  # Q[rows] @ panel, entry by entry in CSR order
        # P[lo:hi+1, :hi+1] = G[g, lo:hi+1]ᵀ (Q G)[g, :hi+1] per row group g (see _row_groups): the other
        # rows of G are zero on those columns, and the lower triangle of these rows ends at column hi
        sign = 1.0 if absolute else self.sign
        for panel_rows, qg_rows, lo, hi in self.groups:
            block = out[lo : hi + 1, : hi + 1]
            np.matmul(panel[panel_rows, lo : hi + 1].T, qg[qg_rows, : hi + 1], out=block)
            if sign != 1.0:
                block *= sign
        out[self.uncovered] = 0.0
        return out

    def add_to(self, ab: np.ndarray, y: np.ndarray, absolute: bool, space: _Workspace) -> None:
        """Add the lower band of :meth:`product` into the band ``ab`` ((p + 1) × N).

        The product is written into the upper half of ``space.product(c)``, a ``2c × c``
        array whose lower half stays zero: the view ``V[d, j] = P[j + d, j]`` is then the
        product's ``d``-th subdiagonal, padded with zeros where ``j + d ≥ c`` (those add
        exact zeros to the band).
        """
        c = self.shape[1]
        scratch = space.product(c)
        part = self.product(y, absolute, scratch[:c], space)
        if self.start is None:
            ab.reshape(-1)[self.band] += part.reshape(-1)[self.lower]
            return
        step = scratch.strides[1]
        diagonals = np.lib.stride_tricks.as_strided(scratch, shape=(self.depth, c), strides=(c * step, (c + 1) * step),
                                                    writeable=False)
        ab[: self.depth, self.start : self.start + c] += diagonals


class BandedBlock:
    """Assembly of one LMI block in lower band storage: ``ab[i − j, j] = F[i, j]`` for ``0 ≤ i − j ≤ p``.

    Built from the block's structure once; :meth:`evaluate` is then called at
    as many multipliers as the certificate needs (the ρ-line's base and slope).
    """

    def __init__(self, block: LMIBlock, bandwidth: int, pattern: tuple | None = None):
        self.block = block
        self.dim = block.dim
        self.bandwidth = bandwidth
        i, j = constant_pattern(block) if pattern is None else pattern
        self._constant_band = (i - j, j)
        constant = block.constant.tocsr() if sp.issparse(block.constant) else np.asarray(block.constant)
        below, above = np.asarray(constant[i, j]).ravel(), np.asarray(constant[j, i]).ravel()
        # the symmetric part, as the dense assembly takes it, and the larger of the two magnitudes for the bound
        self._constant = 0.5 * (below + above)
        self._constant_abs = np.maximum(np.abs(below), np.abs(above))
        self._terms = [_CliqueTerm.of(term, bandwidth, self.dim) for term in block.terms]
        # the products are of clique size: BLAS threads would only cost there
        self._threads = threads_for_size(max([t.shape[1] for t in self._terms if t is not None], default=1))

    @staticmethod
    def fits(block: LMIBlock, bandwidth: int) -> bool:
        """True when every term's column support is small enough to be evaluated as one dense clique.

        A term that spans far more columns than the band is wide (e.g. a diagonal
        lift over every coordinate) would cost ``O(c²)`` memory; such a block is
        certified densely.
        """
        limit = max(4 * (bandwidth + 1), 64)
        return all(term.structure.columns.size <= limit for term in block.terms)

    def evaluate(self, y: np.ndarray, *, absolute: bool = False, constant: bool = True) -> np.ndarray:
        """``F(y)`` (or its entrywise bound ``|F⁰| + Σ|G|ᵀ|Q(y)||G|`` when ``absolute``) in lower band storage.

        ``constant=False`` leaves ``F⁰`` out (the slope of ``F`` along a variable).
        Each entry is summed in the order of :meth:`lipsdp.sdp.LMIBlock.evaluate`
        (``F⁰`` first, then the terms in turn) from the same products, so the
        rounding bound of the dense assembly holds for it.
        """
        ab = np.zeros((self.bandwidth + 1, self.dim))
        if constant:
            ab[self._constant_band] = self._constant_abs if absolute else self._constant
        space = _Workspace(self._terms)
        with blas_threads(self._threads):
            for clique in self._terms:
                if clique is not None and np.any(y[clique.variables]):
                    clique.add_to(ab, y, absolute, space)
        return ab


# ------------------------------------------------------------------------------- the proof in band storage
def _without_rows(ab: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The principal submatrix on the rows ``keep`` (a boolean mask), still in lower band storage."""
    bandwidth, n = ab.shape[0] - 1, ab.shape[1]
    d, j = np.nonzero(ab)
    i = j + d
    inside = (i < n) & keep[i] & keep[j]
    position = np.cumsum(keep) - 1
    out = np.zeros((bandwidth + 1, int(keep.sum())))
    out[position[i[inside]] - position[j[inside]], position[j[inside]]] = ab[d[inside], j[inside]]
    return out


def _scale(ab: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``D^{-1/2} A D^{-1/2}`` in band storage (``inv = 1/√diag``; the padding past the last row stays 0).

    Diagonal by diagonal, ``(a_ij · inv_i) · inv_j`` with ``i = j + d``: the same two roundings per entry
    as the dense scaling.
    """
    n = ab.shape[1]
    out = np.zeros_like(ab)
    for d in range(min(ab.shape[0], n)):
        np.multiply(ab[d, : n - d], inv[d:], out=out[d, : n - d])
        out[d, : n - d] *= inv[: n - d]
    return out


def _symmetric_frobenius(ab: np.ndarray, overwrite: bool = False) -> float:
    """Frobenius norm of the symmetric matrix whose lower band is ``ab`` (``overwrite``: ``ab`` may be
    squared in place)."""
    squares = np.square(ab, out=ab if overwrite else None)
    return float(np.sqrt(np.sum(squares[0]) + 2.0 * np.sum(squares[1:])))


def is_provably_psd_banded(ab: np.ndarray, ab_abs: np.ndarray, max_rank: int, underflow: float = 0.0) -> bool:
    """Prove ``F ⪰ 0`` for the exact matrix whose float64 assembly is the band ``ab`` (module docstring).

    The band counterpart of :func:`lipsdp.certificate.is_provably_psd`, step for
    step: rows and columns with a zero diagonal must vanish (then they are
    dropped), the rest is scaled to unit diagonal, and a banded Cholesky of
    ``F̃ − δI`` is run with Rump's shift for inner products of length
    ``p + 2`` (:func:`lipsdp.rounding.rump_shift`), plus ``2u`` for rounding
    the shifted unit diagonal.

    Parameters
    ----------
    ab, ab_abs
        Lower band storage (``(p + 1) × N``) of the matrix and of its entrywise bound.
    max_rank, underflow
        As for :func:`lipsdp.certificate.is_provably_psd`.
    """
    if not (np.all(np.isfinite(ab)) and np.all(np.isfinite(ab_abs))):
        return False
    diag = ab[0].copy()
    if np.any(diag < 0):
        return False
    zero = diag == 0
    if np.any(zero):
        n = diag.size
        d, j = np.nonzero(ab_abs)
        touched = np.zeros(n, bool)
        inside = j + d < n
        touched[j[inside]] = True
        touched[(j + d)[inside]] = True
        if np.any(touched & zero):
            return False
        keep = ~zero
        if not np.any(keep):
            return True
        ab, ab_abs, diag = _without_rows(ab, keep), _without_rows(ab_abs, keep), diag[keep]
    inv = 1.0 / np.sqrt(diag)
    scaled = _scale(ab, inv)
    if not np.all(np.isfinite(scaled)):  # a diagonal so small that the scaling overflows proves nothing
        return False
    abs_scaled = _scale(ab_abs, inv)
    abs_scaled += 4 * UNIT_ROUNDOFF * np.abs(scaled)
    n, bandwidth = diag.size, ab.shape[0] - 1
    frobenius = _symmetric_frobenius(abs_scaled, overwrite=True)  # abs_scaled is not needed after this
    assembly = scaled_assembly_error(frobenius, n, max_rank, underflow, float(np.min(diag)))
    shift = rump_shift(n, float(np.sum(scaled[0])), assembly, inner_length=bandwidth + 2)
    scaled[0] -= shift + 2 * UNIT_ROUNDOFF * (1.0 + shift)
    return _banded_cholesky_succeeds(scaled)


def _banded_cholesky_succeeds(ab: np.ndarray) -> bool:
    """True if LAPACK's ``pbtrf`` factorises the positive definite band ``ab`` (lower storage).

    The band is handed over in Fortran order (LAPACK's own layout: a C-ordered
    band is copied at a cost far above the factorisation's own).
    """
    with blas_threads(threads_for_size(ab.shape[0])):  # its BLAS calls work on blocks of the band's width
        _, info = lapack.dpbtrf(np.asfortranarray(ab), lower=1, overwrite_ab=1)
    if info < 0:  # pragma: no cover - an argument error is a bug here, never a verdict on the matrix
        raise ValueError(f"LAPACK dpbtrf: argument {-info} is invalid")
    return info == 0


#: bands up to this order fall back to LAPACK's banded eigensolver when Lanczos does not converge
DIRECT_EIG_MAX_SIZE = 2000


def smallest_eigenvalue_banded(ab: np.ndarray) -> float:
    """Smallest eigenvalue of the symmetric matrix whose lower band is ``ab``, or NaN when it is not
    found cheaply (an estimate: it only reports the margin, the proof is :func:`is_provably_psd_banded`).

    Shift-invert Lanczos (ARPACK) around a shift ``σ = −N u max_i a_ii`` just below zero, each step one banded
    triangular solve pair (``O(N p)``), finds the eigenvalue nearest ``σ`` in a bounded number of
    steps; when ``A − σI`` is not positive definite (the smallest eigenvalue is below ``σ``) or
    ARPACK does not converge (a cluster of near-null directions), LAPACK's banded eigensolver
    (``sbevx``, ``O(N² p)``) decides up to :data:`DIRECT_EIG_MAX_SIZE` rows; larger bands give NaN.
    """
    n, bandwidth = ab.shape[1], ab.shape[0] - 1
    scale = float(np.max(np.abs(ab[0]), initial=0.0))
    if n > 4 * (bandwidth + 1) and scale > 0:
        sigma = -n * UNIT_ROUNDOFF * scale  # about the resolution of any float64 λ_min of this matrix
        band = np.asfortranarray(ab)
        shifted = band.copy(order="F")
        shifted[0] -= sigma
        try:
            with blas_threads(threads_for_size(bandwidth + 1)):  # every kernel here is of the band's width
                factor = la.cholesky_banded(shifted, lower=True, overwrite_ab=True, check_finite=False)
                # shift-invert mode only applies (A − σI)⁻¹ (OPinv); A itself is the band's product for completeness
                matrix = LinearOperator((n, n), dtype=float,
                                        matvec=lambda v: la.blas.dsbmv(bandwidth, 1.0, band, v, lower=1))
                solve = LinearOperator((n, n), dtype=float,
                                       matvec=lambda v: la.cho_solve_banded((factor, True), v, check_finite=False))
                start = np.ones(n) / np.sqrt(n)  # deterministic
                value = eigsh(matrix, k=1, sigma=sigma, which="LM", OPinv=solve, v0=start, tol=1e-8, maxiter=30,
                              return_eigenvectors=False)
            return float(value[0])
        except (la.LinAlgError, ArpackError):
            pass
    if n > DIRECT_EIG_MAX_SIZE:
        return float("nan")
    return float(la.eig_banded(ab, lower=True, eigvals_only=True, select="i", select_range=(0, 0),
                               check_finite=False)[0])


def banded_width(block: LMIBlock, pattern: tuple | None = None) -> int | None:
    """The half-bandwidth the certificate uses for ``block`` when the band pays (size and bandwidth
    thresholds), else None (a dense certificate); ``pattern`` is :func:`constant_pattern` if known.
    Decided once per block (its structure never changes)."""
    if block.dim < MIN_BANDED_SIZE:
        return None
    if block not in _widths:
        bandwidth = half_bandwidth(block, pattern)
        fits = bandwidth <= MAX_BAND_FRACTION * block.dim and BandedBlock.fits(block, bandwidth)
        _widths[block] = bandwidth if fits else None
    return _widths[block]


def banded_form(block: LMIBlock) -> BandedBlock | None:
    """The block's band assembler when the band pays (:func:`banded_width`), else None."""
    bandwidth = banded_width(block)
    return None if bandwidth is None else BandedBlock(block, bandwidth)
