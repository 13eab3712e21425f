"""Floating-point constants and the shift of a Cholesky proof of positive semidefiniteness.

Shared by the dense certificate (:mod:`lipsdp.certificate`) and the banded,
clique-by-clique one (:mod:`lipsdp.banded_certificate`), so the two prove the
same statement with the same constants; see ``docs/certificates.md``.

Lemma (Demmel 1989; Rump, "Verification of positive definiteness", BIT 46,
2006).  Let ``A`` be a symmetric float64 matrix of order ``n`` and suppose the
floating-point Cholesky factorisation of ``A`` runs to completion with a
factor ``R̃`` in which every inner product (the sums ``Σ_k r_ki r_kj`` that
form one entry, together with the final division or square root) has at most
``m − 1`` terms.  Then ``R̃ᵀR̃ = A + ΔA`` with ``|ΔA| ≤ γ_m |R̃ᵀ||R̃|``
(``γ_m = m u / (1 − m u)``), and since ``‖|R̃ᵀ||R̃|‖₂ ≤ ‖R̃‖_F² = Σ_i (R̃ᵀR̃)_ii
≤ tr A / (1 − γ_m)``, ``‖ΔA‖₂ ≤ γ_m/(1 − γ_m) · tr A``.  Hence a successful
factorisation of ``A = F̃ − c I`` with ``c ≥ γ_m/(1 − γ_m) tr F̃`` proves
``F̃ ⪰ R̃ᵀR̃ + (c − ‖ΔA‖₂) I ⪰ 0``.  A dense factorisation has ``m = n + 1``; a
factorisation in band storage of half-bandwidth ``p`` never forms an entry
outside the band, so its inner products have at most ``p`` terms plus the
division, and ``m = p + 2`` suffices (one to spare, as ``n + 1`` has).
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = np.finfo(float).eps / 2
ETA = float(np.nextafter(0.0, 1.0))  # smallest positive subnormal: the absolute error unit of underflow


def gamma(k: int) -> float:
    """``γ_k = k u / (1 − k u)``: the relative error bound of a sum of ``k`` rounded operations."""
    ku = k * UNIT_ROUNDOFF
    return ku / (1 - ku)


def rump_shift(n: int, trace: float, assembly_error: float, inner_length: int | None = None) -> float:
    """The shift δ such that a successful Cholesky of ``f − δI`` proves ``F ⪰ 0`` (module lemma).

    Parameters
    ----------
    n
        Order of the matrix.
    trace
        ``tr f`` of the computed matrix ``f``.
    assembly_error
        A bound on ``‖F − f‖₂`` for the exact matrix ``F`` whose PSD-ness is claimed.
    inner_length
        ``m`` of the lemma: ``n + 1`` (the default) for a dense factorisation,
        ``p + 2`` for one in band storage of half-bandwidth ``p``.

    The last term covers underflow inside the factorisation itself (generously:
    Rump's is ``4(2n + 2 + max f_ii)·η`` with η the smallest subnormal).
    """
    m = n + 1 if inner_length is None else min(int(inner_length), n + 1)
    trace = max(float(trace), 0.0) + n * assembly_error
    cholesky = gamma(m) / (1 - gamma(m)) * trace
    return 1.01 * (assembly_error + cholesky) + n * np.finfo(float).tiny / UNIT_ROUNDOFF


def scaled_assembly_error(frobenius: float, n: int, max_rank: int, underflow: float, min_diagonal: float) -> float:
    """Spectral-norm bound on the assembly error of a matrix scaled to unit diagonal.

    ``frobenius`` is the Frobenius norm of the scaled entrywise bound
    ``D^{-1/2}|F|D^{-1/2} + 4u|f_scaled|`` (the scaling's own three roundings
    per entry charged to it); the entries are sums of at most ``max_rank``
    products plus the terms, axpy and scaling operations (``+ 7``).  Underflow
    adds at most ``underflow/(√f_ii √f_jj)`` per entry before the scaling and
    ``3η`` in it, ``n`` times that in spectral norm.
    """
    return gamma(max_rank + 7) * frobenius + n * (underflow / min_diagonal + 3 * ETA)
