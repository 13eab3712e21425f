"""Turn a solver's (approximate) multipliers into a certified bound (docs/formulations.md §3).

The LMI is re-assembled in float64 at the returned multipliers; each block
``F_b(y)`` must be *provably* positive semidefinite.  The proof is a
floating-point Cholesky factorisation of ``F̃ − δ I`` where ``F̃`` is the
computed matrix and ``δ`` covers

* the error of assembling ``F̃`` (``|F̃ − F| ≤ γ_k |G|ᵀ|Q||G|`` entrywise,
  γ_k = k u / (1 − k u), bounded in spectral norm by the Frobenius norm),
* the absolute error that gradual underflow may add to each entry
  (:func:`underflow_per_entry`; it matters only when the whole matrix is
  near the underflow range, which :func:`lipsdp.bound_methods.power_of_two_rescaling`
  avoids by rescaling the network exactly), and
* the backward error of Cholesky (Rump, "Verification of positive
  definiteness", BIT 46, 2006: success on ``F̃ − c I`` with
  ``c ≥ γ_{n+1}/(1 − γ_{n+1}) · tr F̃`` proves ``F̃ ⪰ 0``), plus a slack for
  its own underflow term.

A block whose aggregate sparsity pattern is a narrow band (a deep chain's
block-tridiagonal LMI) is assembled and factorised in band storage instead
(:mod:`lipsdp.banded_certificate`: the same proof with ``γ_{p+2}`` for
half-bandwidth ``p`` in place of ``γ_{n+1}``, a clique-by-clique argument;
``docs/certificates.md``), so memory and time grow linearly with depth.

A block whose aggregate sparsity pattern splits into decoupled components
(:mod:`lipsdp.decompose`) is checked component by component: ``F`` is their
direct sum in exact arithmetic, so this proves the same statement, and it is
far cheaper for the per-layer-decoupled MaxMin/GroupSort chains.

Both the matrix and the error bound are first scaled to unit diagonal
(``D^{-1/2} F D^{-1/2}``, a congruence, so PSD-ness is unchanged): a deep net's
LMI has entries of very different magnitudes, and a shift derived from the
unscaled trace would swamp its small directions.

If ``F(y)`` fails, ``ρ`` is raised (its coefficient is PSD in every block, so
this only helps) by an exponential search and bisection.  If no ``ρ`` up to
``max_inflation`` works, the answer is refused with :class:`CertificationError`.

The same Cholesky proof gives certified spectral norms without an SVD
(:func:`spectral_norm_bound`, used by the naive bound).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg as la

from .banded_certificate import banded_form, is_provably_psd_banded, smallest_eigenvalue_banded
from .errors import CertificationError
from .decompose import block_uses, split_decoupled_blocks
from .rounding import ETA as _ETA, UNIT_ROUNDOFF, gamma as _gamma, rump_shift, scaled_assembly_error
from .runtime import blas_threads, threads_for_size
from .sdp import SDP, as_index


@dataclass(frozen=True)
class Certificate:
    """A certified point of an SDP.

    Attributes
    ----------
    y
        The multipliers at which every block was proven PSD (ρ possibly raised).
    rho
        The certified ρ̂ ≥ the solver's ρ.
    value
        The certified bound ``sdp.bound(ρ̂)``.
    margin
        Smallest eigenvalue over the blocks at ``y`` (≥ 0 up to rounding); small
        margins mean the solver was pushed to the boundary.
    inflation
        Relative increase ``ρ̂/ρ − 1`` that the repair needed (0 when none).
    """

    y: np.ndarray
    rho: float
    value: float
    margin: float
    inflation: float


def cholesky_shift(f: np.ndarray, assembly_error: float) -> float:
    """The shift δ such that a successful dense Cholesky of ``f − δI`` proves ``F ⪰ 0`` for every
    symmetric ``F`` with ``‖F − f‖₂ ≤ assembly_error`` (:func:`lipsdp.rounding.rump_shift` with ``m = n + 1``)."""
    return rump_shift(f.shape[0], float(np.trace(f)), assembly_error)


def is_certified_psd(f: np.ndarray, shift: float) -> bool:
    """True if Cholesky of ``f − shift·I`` succeeds."""
    try:
        la.cholesky(f - shift * np.eye(f.shape[0]), lower=True, check_finite=False)
        return True
    except la.LinAlgError:
        return False


def is_provably_psd(f: np.ndarray, f_abs: np.ndarray, max_rank: int, underflow: float = 0.0) -> bool:
    """Prove ``F ⪰ 0`` for the exact matrix whose float64 assembly is ``f`` (see module docstring).

    Rows and columns with a zero diagonal must vanish (then they are dropped);
    the rest is scaled to unit diagonal before the shifted Cholesky test.

    Parameters
    ----------
    f, f_abs
        The assembled matrix and its entrywise bound ``|F⁰| + Σ|G|ᵀ|Q||G|``.
    max_rank
        Length of the longest inner product of the assembly (for ``γ_k``).
    underflow
        Bound on the absolute error per entry that gradual underflow may add
        to the assembly (:func:`underflow_per_entry`).  After the scaling it
        is at most ``underflow / min f_ii`` per entry, so a matrix whose whole
        scale is near the underflow range is refused rather than trusted.
    """
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(f_abs))):
        return False
    diag = np.diag(f).copy()
    if np.any(diag < 0):
        return False
    zero = diag == 0
    if np.any(zero):
        if np.any(f_abs[zero] != 0):
            return False
        keep = ~zero
        f, f_abs, diag = f[np.ix_(keep, keep)], f_abs[np.ix_(keep, keep)], diag[keep]
        if diag.size == 0:
            return True
    inv = 1.0 / np.sqrt(diag)
    f_scaled = f * inv[:, None] * inv[None, :]
    if not np.all(np.isfinite(f_scaled)):  # a diagonal so small that the scaling overflows proves nothing
        return False
    # the scaling's own rounding (three operations per entry) is charged to the assembly error
    abs_scaled = f_abs * inv[:, None] * inv[None, :] + 4 * UNIT_ROUNDOFF * np.abs(f_scaled)
    assembly = scaled_assembly_error(float(np.linalg.norm(abs_scaled, "fro")), diag.size, max_rank, underflow,
                                     float(np.min(diag)))
    return is_certified_psd(f_scaled, cholesky_shift(f_scaled, assembly))


def underflow_per_entry(block) -> float:
    """Bound on the absolute error that gradual underflow adds to one entry of ``block``'s assembly.

    Every multiplication may add an absolute error ``η/2`` (η = smallest
    subnormal) on top of its relative rounding.  An entry of a term is
    ``Σ_a G_ai (Σ_b Q_ab G_bj)`` with ``Q_ab = Σ_v y_v c_v``, so those errors
    reach it multiplied by at most ``(1 + max|G|)²`` and at most
    ``(r + 1)² (k + 1)`` times (``r`` rows of ``G``, ``k`` variables of the term);
    the axpy of the ρ-line adds one more multiplication.
    """
    total = 2.0
    for term in block.terms:
        g_max = float(np.max(np.abs(term.structure.lift.data), initial=0.0))
        total += (term.rank + 1) ** 2 * (len(term.variables) + 1) * (1.0 + g_max) ** 2
    return total * _ETA


class _DenseLine:
    """One block's ``F(y + (ρ − y_ρ) e_ρ) = base + ρ·slope``, assembled once as dense matrices.

    ``F`` is affine in ``y``, and so is the entrywise error bound ``|F⁰| + Σ|G|ᵀ|Q(y)||G|``
    in ``|y|`` (ρ ≥ 0), so each trial ρ costs one axpy and one Cholesky.  ``slope`` is
    None for a block that ρ does not reach.
    """

    def __init__(self, block, y0: np.ndarray, unit: np.ndarray | None):
        self.rank = block.max_rank() + 2  # + the axpy's own rounding
        self.underflow = underflow_per_entry(block)
        self.base, self.base_abs = block.evaluate(y0), block.evaluate_abs(y0)
        self.slope = self.slope_abs = None
        if unit is not None:
            # the slope is assembled without F⁰ (not as F(unit) − F⁰, whose cancellation would add an
            # unaccounted rounding error of order u·|F⁰| wherever F⁰ and the ρ term overlap)
            terms_only = replace(block, constant=np.zeros((block.dim, block.dim)))
            self.slope, self.slope_abs = terms_only.evaluate(unit), terms_only.evaluate_abs(unit)

    def _value_at(self, rho: float) -> np.ndarray:
        """``base + ρ·slope``."""
        return self.base if self.slope is None else self.base + rho * self.slope

    def _at(self, rho: float):
        """``base + ρ·slope`` and ``base_abs + ρ·slope_abs``."""
        if self.slope is None:
            return self.base, self.base_abs
        return self._value_at(rho), self.base_abs + rho * self.slope_abs

    def passes(self, rho: float) -> bool:
        return is_provably_psd(*self._at(rho), self.rank, self.underflow)

    def smallest_eigenvalue(self, rho: float, dense_ok: bool = True) -> float:
        """λ_min at ``rho`` (the reported margin); NaN when ``dense_ok`` is False (too large to be worth it)."""
        return extreme_eigenvalue(self._value_at(rho)) if dense_ok else float("nan")


class _BandedLine(_DenseLine):
    """The same line in band storage (:class:`lipsdp.banded_certificate.BandedBlock`): ``O(N p)`` memory."""

    def __init__(self, block, banded, y0: np.ndarray, unit: np.ndarray | None):
        self.rank = block.max_rank() + 2
        self.underflow = underflow_per_entry(block)
        self.base, self.base_abs = banded.evaluate(y0), banded.evaluate(y0, absolute=True)
        self.slope = self.slope_abs = None
        if unit is not None:
            self.slope = banded.evaluate(unit, constant=False)
            self.slope_abs = banded.evaluate(unit, absolute=True, constant=False)
            # the band columns the slope reaches (ρ's term covers the input's coordinates only); elsewhere
            # base + ρ·slope is base itself, so the axpy runs on these columns alone
            reached = np.flatnonzero(np.any((self.slope != 0) | (self.slope_abs != 0), axis=0))
            self.reach = as_index(reached) if reached.size else slice(0, 0)

    def _value_at(self, rho: float) -> np.ndarray:
        return self.base if self.slope is None else self._axpy(self.base, rho, self.slope)

    def _at(self, rho: float):
        if self.slope is None:
            return self.base, self.base_abs
        return self._value_at(rho), self._axpy(self.base_abs, rho, self.slope_abs)

    def _axpy(self, base: np.ndarray, rho: float, slope: np.ndarray) -> np.ndarray:
        """``base + ρ·slope`` (a new band), computed on the columns the slope reaches."""
        out = base.copy()
        out[:, self.reach] += rho * slope[:, self.reach]
        return out

    def passes(self, rho: float) -> bool:
        return is_provably_psd_banded(*self._at(rho), self.rank, self.underflow)

    def smallest_eigenvalue(self, rho: float, dense_ok: bool = True) -> float:
        return smallest_eigenvalue_banded(self._value_at(rho))  # O(N p) per Lanczos step: at any size


def block_line(block, y0: np.ndarray, unit: np.ndarray | None) -> _DenseLine:
    """The ρ-line of one block, in band storage when its pattern is a narrow band
    (:func:`lipsdp.banded_certificate.banded_form`), else dense."""
    banded = banded_form(block)
    return _DenseLine(block, y0, unit) if banded is None else _BandedLine(block, banded, y0, unit)


class _RhoLine:
    """``F_b(y + (ρ − y_ρ) e_ρ)`` for every block, each assembled once (:func:`block_line`).

    Blocks that ρ does not reach are checked once, at construction (``fixed_ok``).
    """

    def __init__(self, sdp: SDP, y: np.ndarray):
        y0 = y.copy()
        y0[sdp.rho] = 0.0
        unit = np.zeros_like(y)
        unit[sdp.rho] = 1.0
        self.parts, self.fixed = [], []
        for block in sdp.blocks:
            if block_uses(block, sdp.rho):
                self.parts.append(block_line(block, y0, unit))
            else:  # ρ does not reach this block: one check decides it for every ρ
                self.fixed.append(block_line(block, y0, None))
        self.fixed_ok = all(line.passes(0.0) for line in self.fixed)

    def passes(self, rho: float) -> bool:
        return self.fixed_ok and all(line.passes(rho) for line in self.parts)

    def smallest_eigenvalue(self, rho: float, dense_ok: bool = True) -> float:
        """The smallest eigenvalue over the blocks (NaN if any block's is not computed)."""
        values = [line.smallest_eigenvalue(rho, dense_ok) for line in self.parts + self.fixed]
        return float("nan") if np.any(np.isnan(values)) else min(values)


#: the margin of dense blocks is computed (a dense eigenvalue problem) up to this total LMI size
DENSE_MARGIN_MAX_SIZE = 6000


def _rounded_up(value: float) -> float:
    """The next float above a positive ``value`` (``sdp.bound``'s square root may round down by half an ulp)."""
    return float(np.nextafter(value, np.inf)) if value > 0 else value


def certify(sdp: SDP, y: np.ndarray, *, max_inflation: float = 1e-3, tol: float = 1e-8) -> Certificate:
    """Certify (and if needed repair) the multipliers ``y`` of ``sdp``.

    Parameters
    ----------
    sdp
        The program (usually the unreduced one, at multipliers mapped back).
    y
        Approximate solution from a solver or a closed form.
    max_inflation
        Largest relative increase of ρ the repair may use before refusing.
    tol
        Relative precision of the bisection on ρ.

    Raises
    ------
    CertificationError
        If the multipliers are not finite, or no ρ̂ ≤ ρ(1 + max_inflation) makes
        every block provably PSD (e.g. a multiplier block that must be PSD on its
        own is not).
    """
    y = np.array(y, dtype=float, copy=True)
    if y.shape != (sdp.n_vars,) or not np.all(np.isfinite(y)):
        raise CertificationError("the solver returned multipliers that are not finite; no bound can be certified")
    y[sdp.nonneg] = np.maximum(y[sdp.nonneg], 0.0)
    rho0 = max(float(y[sdp.rho]), 0.0)
    y[sdp.rho] = rho0

    line = _RhoLine(split_decoupled_blocks(sdp), y)  # exact: F(y) is the direct sum of the decoupled blocks
    scale = max(rho0, 1e-300)
    if not line.fixed_ok:
        raise CertificationError(
            "the LMI is violated at the solver's multipliers in a decoupled block that rho does not reach, "
            "so raising rho cannot repair it: the answer is not a certified bound"
        )
    if line.passes(rho0):
        good = rho0
    else:
        bad, good, step = rho0, None, 1e-12
        while step <= max_inflation:
            trial = rho0 + scale * step
            if line.passes(trial):
                good = trial
                break
            bad, step = trial, step * 10
        if good is None:
            if rho0 == 0.0 and line.passes(1e-300):
                good = 1e-300
            else:
                raise CertificationError(
                    f"the LMI is violated at the solver's multipliers and raising rho by a factor "
                    f"{1 + max_inflation:g} does not repair it: the answer is not a certified bound"
                )
        while good - bad > tol * scale:
            mid = 0.5 * (good + bad)
            if line.passes(mid):
                good = mid
            else:
                bad = mid
    y_cert = y.copy()
    y_cert[sdp.rho] = good
    margin = line.smallest_eigenvalue(good, dense_ok=sdp.size <= DENSE_MARGIN_MAX_SIZE)
    return Certificate(
        y=y_cert,
        rho=good,
        value=_rounded_up(float(sdp.bound(good))),
        margin=margin,
        inflation=(good / rho0 - 1.0) if rho0 > 0 else 0.0,
    )


# ------------------------------------------------------------------------------- spectral norms
#: Gram matrices up to this side get a dense eigenvalue estimate; larger ones Lanczos (ARPACK)
DENSE_EIG_MAX_SIDE = 256


def spectral_norm_bound(w: np.ndarray) -> tuple[float, int]:
    """A certified upper bound ``m · 2^e ≥ ‖W‖₂``, returned as ``(m, e)`` so products cannot overflow.

    ``W`` is first scaled exactly by a power of two (largest entry in
    ``[1/2, 1)``).  With the smaller Gram matrix ``G = W Wᵀ`` (or ``WᵀW``)
    and an estimate ``λ̃`` of its largest eigenvalue (dense for small sides,
    Lanczos for large ones: no SVD, which takes minutes on 5000 × 5000), the
    bound ``√t`` with ``t = λ̃ (1 + η)`` is proved by a floating-point Cholesky
    factorisation of ``t I − G`` shifted as in :func:`cholesky_shift`: the
    assembly error of ``G`` is at most ``γ_k ‖W‖_F²`` in spectral norm
    (``|G̃ − G| ≤ γ_k |W||W|ᵀ`` entrywise, ``k`` the inner dimension) and the
    subtraction from ``t`` adds ``u·max|t − G̃_ii|``.  ``η`` starts just above
    what these errors need and grows tenfold when the proof fails (an
    estimate below ``λ_max``), so the bound is within a relative ``1e-7`` of
    ``‖W‖₂`` unless the matrix is huge.

    Raises
    ------
    CertificationError
        If no ``t`` up to ``λ̃ (1 + 1e-3)`` can be proved (the eigenvalue estimate ``λ̃`` was too low).
    """
    w = np.asarray(w, dtype=float)
    if w.size == 0 or not np.any(w):
        return 0.0, 0
    if not np.all(np.isfinite(w)):
        raise CertificationError("the weight matrix has non-finite entries; no spectral norm bound can be certified")
    exponent = int(np.frexp(np.max(np.abs(w)))[1])
    scaled = np.ldexp(w, -exponent)  # exact: the entries only move towards the normal range's top
    with blas_threads(threads_for_size(min(w.shape))):
        root = _certified_root_of_gram(scaled)
    mantissa, e = np.frexp(root)
    return float(mantissa), int(e) + exponent


def _certified_root_of_gram(w: np.ndarray) -> float:
    """``√t ≥ ‖W‖₂`` with ``t I − G ⪰ 0`` proved (see :func:`spectral_norm_bound`)."""
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    # ‖W‖_F² as a dot product (no temporary), rounded up by the γ of its length
    gram_error = _gamma(max(w.shape)) * float(np.vdot(w, w)) * (1 + 2 * _gamma(w.size))
    estimate = _largest_eigenvalue(gram)
    eta = 4 * (gram_error / estimate + 2 * _gamma(gram.shape[0] + 1) * gram.shape[0]) + 1e-12
    while eta <= 1e-3:
        t = estimate * (1 + eta)
        if _proves_gram_below(gram, t, gram_error):
            return float(np.nextafter(np.sqrt(t), np.inf))  # √t rounded up
        eta *= 10
    raise CertificationError("no certified spectral norm bound: the Cholesky proof failed for every tried shift")


def extreme_eigenvalue(m: np.ndarray, largest: bool = False) -> float:
    """The smallest (or largest) eigenvalue of a symmetric matrix.

    LAPACK's subset driver can fail ("Internal Error") on clustered spectra, e.g. the Gram
    matrices of orthogonal weights; the full divide-and-conquer driver is the fallback.
    """
    n = m.shape[0]
    index = [n - 1, n - 1] if largest else [0, 0]
    try:
        return float(la.eigvalsh(m, subset_by_index=index, check_finite=False)[0])
    except la.LinAlgError:
        values = la.eigvalsh(m, driver="evd", check_finite=False)
        return float(values[-1] if largest else values[0])


def _largest_eigenvalue(gram: np.ndarray) -> float:
    """Estimate of ``λ_max`` of a symmetric PSD matrix (its accuracy only affects tightness)."""
    n = gram.shape[0]
    if n <= DENSE_EIG_MAX_SIDE:
        return extreme_eigenvalue(gram, largest=True)
    from scipy.sparse.linalg import eigsh

    start = np.ones(n) / np.sqrt(n)  # deterministic start vector
    # one BLAS thread: each Lanczos step is a single matrix-vector product, which more threads only slow down
    with blas_threads(1):
        return float(eigsh(gram, k=1, which="LA", tol=1e-10, v0=start, return_eigenvectors=False)[0])


def _proves_gram_below(gram: np.ndarray, t: float, gram_error: float) -> bool:
    """True if a shifted Cholesky proves ``t I − G ⪰ 0`` for every ``G`` within ``gram_error`` of ``gram``."""
    n = gram.shape[0]
    a = -gram
    diag = t - np.diag(gram)
    a[np.diag_indices(n)] = diag
    error = gram_error + UNIT_ROUNDOFF * float(np.max(np.abs(diag)))  # the rounding of t − G_ii
    a[np.diag_indices(n)] -= cholesky_shift(a, error)
    try:
        la.cholesky(a, lower=True, overwrite_a=True, check_finite=False)
        return True
    except la.LinAlgError:
        return False
