"""Turn a solver's (approximate) multipliers into a certified bound (MATH §3).

The LMI is re-assembled in float64 at the returned multipliers; each block
``F_b(y)`` must be *provably* positive semidefinite.  The proof is a
floating-point Cholesky factorisation of ``F̃ − δ I`` where ``F̃`` is the
computed matrix and ``δ`` covers

* the error of assembling ``F̃`` (``|F̃ − F| ≤ γ_k |G|ᵀ|Q||G|`` entrywise,
  γ_k = k u / (1 − k u), bounded in spectral norm by the Frobenius norm), and
* the backward error of Cholesky (Rump, "Verification of positive
  definiteness", BIT 46, 2006: success on ``F̃ − c I`` with
  ``c ≥ γ_{n+1}/(1 − γ_{n+1}) · tr F̃`` proves ``F̃ ⪰ 0``), plus a slack for
  the underflow term.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la

from .errors import CertificationError
from .decompose import block_uses, split_decoupled_blocks
from .sdp import SDP

UNIT_ROUNDOFF = np.finfo(float).eps / 2


def _gamma(k: int) -> float:
    ku = k * UNIT_ROUNDOFF
    return ku / (1 - ku)


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


def rounding_shift(f: np.ndarray, f_abs: np.ndarray, max_rank: int) -> float:
    """The shift δ such that a successful Cholesky of ``f − δI`` proves ``F ⪰ 0``."""
    n = f.shape[0]
    assembly = _gamma(max_rank + 4) * float(np.linalg.norm(f_abs, "fro"))
    trace = max(float(np.trace(f)), 0.0) + n * assembly
    cholesky = _gamma(n + 1) / (1 - _gamma(n + 1)) * trace
    return 1.01 * (assembly + cholesky) + n * np.finfo(float).tiny / UNIT_ROUNDOFF


def is_certified_psd(f: np.ndarray, shift: float) -> bool:
    """True if Cholesky of ``f − shift·I`` succeeds."""
    try:
        la.cholesky(f - shift * np.eye(f.shape[0]), lower=True, check_finite=False)
        return True
    except la.LinAlgError:
        return False


def is_provably_psd(f: np.ndarray, f_abs: np.ndarray, max_rank: int) -> bool:
    """Prove ``F ⪰ 0`` for the exact matrix whose float64 assembly is ``f`` (see module docstring).

    Rows and columns with a zero diagonal must vanish (then they are dropped);
    the rest is scaled to unit diagonal before the shifted Cholesky test.
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
    # the scaling's own rounding (three operations per entry) is charged to the assembly error
    abs_scaled = f_abs * inv[:, None] * inv[None, :] + 4 * UNIT_ROUNDOFF * np.abs(f_scaled)
    return is_certified_psd(f_scaled, rounding_shift(f_scaled, abs_scaled, max_rank + 3))


class _RhoLine:
    """``F_b(y + (ρ − y_ρ) e_ρ)`` for every block, as ``base + ρ·slope`` (assembled once).

    ``F`` is affine in ``y``, and so is the entrywise error bound ``|F⁰| + Σ|G|ᵀ|Q(y)||G|``
    in ``|y|`` (ρ ≥ 0), so each trial ρ costs one axpy and one Cholesky.
    """

    def __init__(self, sdp: SDP, y: np.ndarray):
        y0 = y.copy()
        y0[sdp.rho] = 0.0
        unit = np.zeros_like(y)
        unit[sdp.rho] = 1.0
        self.parts, self.fixed = [], []
        for block in sdp.blocks:
            if not block_uses(block, sdp.rho):  # ρ does not reach this block: one check decides it for every ρ
                self.fixed.append((block.evaluate(y0), None, block.evaluate_abs(y0), None, block.max_rank() + 2))
                continue
            const = 0.5 * (block.constant + block.constant.T)
            self.parts.append((
                block.evaluate(y0), block.evaluate(unit) - const,
                block.evaluate_abs(y0), block.evaluate_abs(unit) - np.abs(block.constant),
                block.max_rank() + 2,  # + the axpy's own rounding
            ))
        self.fixed_ok = all(is_provably_psd(f0, a0, rank) for f0, _, a0, _, rank in self.fixed)

    def passes(self, rho: float) -> bool:
        return self.fixed_ok and all(is_provably_psd(f0 + rho * f1, a0 + rho * a1, rank)
                                     for f0, f1, a0, a1, rank in self.parts)

    def smallest_eigenvalue(self, rho: float) -> float:
        return min(float(la.eigvalsh(f0 if f1 is None else f0 + rho * f1, subset_by_index=[0, 0],
                                     check_finite=False)[0])
                   for f0, f1, _, _, _ in self.parts + self.fixed)


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
    margin = line.smallest_eigenvalue(good) if sdp.size <= 6000 else float("nan")
    return Certificate(
        y=y_cert,
        rho=good,
        value=float(sdp.bound(good)),
        margin=margin,
        inflation=(good / rho0 - 1.0) if rho0 > 0 else 0.0,
    )
