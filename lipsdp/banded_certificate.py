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

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from .rounding import UNIT_ROUNDOFF, rump_shift, scaled_assembly_error
from .sdp import LMIBlock, QuadTerm

#: blocks smaller than this are certified densely (a dense Cholesky of a few hundred rows costs nothing)
MIN_BANDED_SIZE = 1024
#: the band is used when its half-bandwidth is at most this fraction of the block's size
MAX_BAND_FRACTION = 0.25


def constant_pattern(block: LMIBlock) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with ``i ≥ j``, once each, where ``F⁰_ij`` or ``F⁰_ji`` is non-zero (dense or sparse ``F⁰``)."""
    constant = block.constant
    if sp.issparse(constant):
        coo = constant.tocoo()
        nz = coo.data != 0
        rows, cols = coo.row[nz], coo.col[nz]
    else:  # rows first: a chain's F⁰ lives on its last layer, and a row scan is far cheaper than nonzero()
        constant = np.asarray(constant)
        filled = np.flatnonzero(np.any(constant != 0, axis=1))
        sub_rows, cols = np.nonzero(constant[filled])
        rows = filled[sub_rows]
    i, j = np.maximum(rows, cols), np.minimum(rows, cols)
    if i.size == 0:
        return i.astype(np.int64), j.astype(np.int64)
    key = np.unique(i.astype(np.int64) * block.dim + j)
    return key // block.dim, key % block.dim


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
        g = sp.csr_matrix(term.lift)
        g.eliminate_zeros()
        filled = np.flatnonzero(np.diff(g.indptr))  # lift rows with at least one entry
        if filled.size == 0:
            continue
        lo = np.full(g.shape[0], -1, dtype=np.int64)
        hi = np.full(g.shape[0], -1, dtype=np.int64)
        lo[filled] = np.minimum.reduceat(g.indices, g.indptr[filled])
        hi[filled] = np.maximum.reduceat(g.indices, g.indptr[filled])
        q = sp.coo_matrix(term.basis)
        r = term.rank
        a, b = q.row[q.data != 0] % r, q.row[q.data != 0] // r
        both = (lo[a] >= 0) & (lo[b] >= 0)
        a, b = a[both], b[both]
        if a.size:
            width = max(width, int(np.max(np.maximum(hi[a] - lo[b], hi[b] - lo[a]))))
    return width


@dataclass(frozen=True)
class _CliqueTerm:
    """A term restricted to its column support ``columns``, with the band positions of its lower triangle."""

    term: QuadTerm
    lower: tuple  # (local rows, local cols) of the entries kept
    band: tuple  # (band row = i − j, band column = j) of those entries


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
        self._terms = [self._clique_term(term) for term in block.terms]

    def _clique_term(self, term: QuadTerm) -> _CliqueTerm | None:
        g = sp.csr_matrix(term.lift)
        columns = np.unique(g.indices)
        if columns.size == 0:
            return None
        local = QuadTerm(g[:, columns], term.basis, np.asarray(term.variables), term.sign)
        li, lj = np.tril_indices(columns.size)
        offset = columns[li] - columns[lj]
        keep = offset <= self.bandwidth  # entries outside the band are structurally zero (see half_bandwidth)
        return _CliqueTerm(local, (li[keep], lj[keep]), (offset[keep], columns[lj[keep]]))

    @staticmethod
    def fits(block: LMIBlock, bandwidth: int) -> bool:
        """True when every term's column support is small enough to be evaluated as one dense clique.

        A term that spans far more columns than the band is wide (e.g. a diagonal
        lift over every coordinate) would cost ``O(c²)`` memory; such a block is
        certified densely.
        """
        limit = max(4 * (bandwidth + 1), 64)
        for term in block.terms:
            g = sp.csr_matrix(term.lift)
            if np.unique(g.indices).size > limit:
                return False
        return True

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
        for clique in self._terms:
            if clique is None or not np.any(y[clique.term.variables]):
                continue
            part = clique.term.evaluate(y, absolute)
            ab[clique.band] += part[clique.lower]
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
    """``D^{-1/2} A D^{-1/2}`` in band storage (``inv = 1/√diag``; the padding past the last row stays 0)."""
    n = ab.shape[1]
    rows = np.arange(n)[None, :] + np.arange(ab.shape[0])[:, None]
    inside = rows < n
    return np.where(inside, ab * inv[np.minimum(rows, n - 1)] * inv[None, :], 0.0)


def _symmetric_frobenius(ab: np.ndarray) -> float:
    """Frobenius norm of the symmetric matrix whose lower band is ``ab``."""
    return float(np.sqrt(np.sum(ab[0] ** 2) + 2.0 * np.sum(ab[1:] ** 2)))


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
    abs_scaled = _scale(ab_abs, inv) + 4 * UNIT_ROUNDOFF * np.abs(scaled)
    n, bandwidth = diag.size, ab.shape[0] - 1
    assembly = scaled_assembly_error(_symmetric_frobenius(abs_scaled), n, max_rank, underflow, float(np.min(diag)))
    shift = rump_shift(n, float(np.sum(scaled[0])), assembly, inner_length=bandwidth + 2)
    scaled[0] -= shift + 2 * UNIT_ROUNDOFF * (1.0 + shift)
    return _banded_cholesky_succeeds(scaled)


def _banded_cholesky_succeeds(ab: np.ndarray) -> bool:
    """True if LAPACK's ``pbtrf`` factorises the positive definite band ``ab`` (lower storage).

    The band is handed over in Fortran order (LAPACK's own layout: a C-ordered
    band is copied at a cost far above the factorisation's own).
    """
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
    from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

    n, bandwidth = ab.shape[1], ab.shape[0] - 1
    scale = float(np.max(np.abs(ab[0]), initial=0.0))
    if n > 4 * (bandwidth + 1) and scale > 0:
        sigma = -n * UNIT_ROUNDOFF * scale  # about the resolution of any float64 λ_min of this matrix
        shifted = ab.copy()
        shifted[0] -= sigma
        try:
            factor = la.cholesky_banded(np.asfortranarray(shifted), lower=True, check_finite=False)
            data = np.zeros((2 * bandwidth + 1, n))
            for d in range(bandwidth + 1):
                data[bandwidth - d, : n - d] = ab[d, : n - d]  # below the diagonal: A[j + d, j]
                data[bandwidth + d, d:] = ab[d, : n - d]  # above it, by symmetry
            matrix = sp.dia_matrix((data, np.arange(-bandwidth, bandwidth + 1)), shape=(n, n)).tocsr()
            solve = LinearOperator((n, n), matvec=lambda v: la.cho_solve_banded((factor, True), v,
                                                                                 check_finite=False))
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
    thresholds), else None (a dense certificate); ``pattern`` is :func:`constant_pattern` if known."""
    if block.dim < MIN_BANDED_SIZE:
        return None
    bandwidth = half_bandwidth(block, pattern)
    if bandwidth > MAX_BAND_FRACTION * block.dim or not BandedBlock.fits(block, bandwidth):
        return None
    return bandwidth


def banded_form(block: LMIBlock) -> BandedBlock | None:
    """The block's band assembler when the band pays (:func:`banded_width`), else None."""
    if block.dim < MIN_BANDED_SIZE:
        return None
    pattern = constant_pattern(block)
    bandwidth = banded_width(block, pattern)
    return None if bandwidth is None else BandedBlock(block, bandwidth, pattern)
