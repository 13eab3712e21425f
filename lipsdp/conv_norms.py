"""Certified spectral norms (ℓ2 → ℓ2) of one convolution, from its Fourier symbol.

A ``Conv1d``/``Conv2d`` without bias maps ``x ↦ y`` with
``y[o, i] = Σ_{c, j} K[o, c, j] · u[c, s·i + d·j − p]`` (per spatial axis; ``u``
the input extended by the padding rule).  Its norm is bounded, or computed
exactly, through a *periodic model* (docs/cnn.md, "Per-layer norms of
convolutions", has the proofs):

* **circular padding** — the map is a row selection of a circular convolution
  on the input's own period; its polyphase symbol ``M(ψ)`` (a
  ``c_out × c_in·s^d`` matrix per frequency ``ψ``, block diagonal over groups)
  gives the exact norm ``max_ψ ‖M(ψ)‖`` (Sedghi, Gupta, Long, "The singular
  values of convolutional layers", ICLR 2019, for stride 1; the polyphase split
  of a stride dividing the size is exact too).  When the output rows repeat
  unevenly (stride not dividing the size, unusual padding), ``√(max
  multiplicity)`` times it is an upper bound;
* **zero padding** — the input, embedded with zeros into a longer period
  ``N ≥ n + p`` (``N`` a multiple of the stride, ``N/s ≥ out``), feeds a
  periodic (or anti-periodic) model whose rows contain the true output, so
  ``max_ψ ‖M(ψ)‖`` over that model's frequencies is an upper bound; ``N`` and the
  twist are chosen per axis to sample the symbol's peak as far from a grid
  point as possible (the finite-size operator's norm lies below the peak);
* **reflect padding** — reflection (norm ``√(max multiplicity)`` of an input
  entry in the padded map, computed from the index map) followed by a 'valid'
  convolution, bounded as for zero padding;
* **small operators** (a group's dense matrix of at most 2¹⁶ entries, or few
  output rows, e.g. global poolings) — also the dense matrix's certified norm
  (:func:`lipsdp.certificate.spectral_norm_bound`); the smaller bound is returned.

Certification in floating point: ``G(ψ) = M(ψ) M(ψ)ᴴ`` is assembled from the
kernel's lag matrices ``R_Δ`` (``G(ψ) = Σ_Δ e^{iψ·Δ} R_Δ``) with an entrywise
rounding bound, and ``t I − G(ψ) ⪰ 0`` is proved for every ``ψ`` at once by a
batched, shifted complex Cholesky factorisation (Rump, "Verification of
positive definiteness", BIT 46, 2006, with the complex-arithmetic unit of
Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.5),
as :func:`lipsdp.certificate.spectral_norm_bound` does for dense matrices.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from .certificate import UNIT_ROUNDOFF
from .errors import (
    CertificationError,
    InputShapeRequiredError,
    InvalidWeightsError,
    NotApplicableError,
    NumericalRangeError,
    ProblemTooLargeError,
    ShapeMismatchError,
)
from .scaled import from_float, times, to_float_up

PADDING_MODES = ("zeros", "circular", "reflect")

_U = UNIT_ROUNDOFF
_ETA = float(np.nextafter(0.0, 1.0))  # smallest subnormal: absolute error unit of gradual underflow
_TINY = float(np.finfo(float).tiny)
#: relative error of one complex floating-point operation, rounded up (Higham Lemma 3.5: ±: u, ×: √2 γ_2, ÷: √2 γ_4)
_COMPLEX_UNIT = 8 * _U
#: assumed accuracy of the library's cos/sin in ulps, generous over what glibc, SLEEF and SVML document (≤ 4 ulp)
_LIBM_ULPS = 16
#: the largest Gram side certified (a c × c complex matrix per frequency)
MAX_GRAM_SIDE = 2048
#: above this Gram side, eigenvalue estimates are power iterations and the period is not tuned (cost O(c³) each)
_LARGE_SIDE = 128
#: the dense per-group matrix is also bounded when it has at most this many entries and few output rows
DENSE_MAX_ENTRIES = 1 << 22
#: memory for one chunk of Gram matrices (complex128): small enough to stay in cache between assembly and proof
_CHUNK_BYTES = 4 << 20
#: zero/reflect padding: extra periods tried per axis (each adds frequencies, i.e. time)
_GRID_EXTRA = 3
#: the relative growth of the proved level ``t`` at which the proof gives up
_MAX_INFLATION = 1e-3


def _gamma(k: float, unit: float = _U) -> float:
    """``γ_k = k·unit / (1 − k·unit)`` (Higham, Lemma 3.1)."""
    ku = k * unit
    if ku >= 0.5:
        raise ProblemTooLargeError(f"a sum of {k:g} terms is too long for a float64 rounding bound")
    return ku / (1 - ku)


# ------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Axis:
    """One spatial axis of the convolution and the periodic model that bounds it.

    The model is a stride-``phase`` convolution on sequences that repeat with
    period ``N = phase · grid`` up to the factor ``(−1)^twist``; tap ``j`` reads
    input ``phase · (i + a_j) + b_j`` where ``(a_j, b_j) = divmod(d·j − offset, phase)``.
    Its frequencies are ``ψ_q = π (2q + twist) / grid``, ``q = 0 … grid − 1``.

    Attributes
    ----------
    rows
        Largest number of true output rows that read one model row (1: a row selection).
    pad_rows
        Reflect padding: largest number of padded entries that copy one input entry.
    exact
        The model's norm times ``√rows · √pad_rows`` is the exact norm on this axis.
    free
        The period and twist may be chosen (zero and reflect padding).
    min_grid
        Smallest admissible ``grid`` (only for ``free`` axes).
    """

    size: int
    kernel: int
    stride: int
    dilation: int
    padding: int
    out: int
    phase: int
    grid: int
    offset: int
    twist: int = 0
    rows: int = 1
    pad_rows: int = 1
    exact: bool = False
    free: bool = False
    min_grid: int = 1

    def taps(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a_j, b_j)`` for every tap ``j`` (model shift and phase)."""
        e = self.dilation * np.arange(self.kernel) - self.offset
        return np.floor_divide(e, self.phase), np.mod(e, self.phase)


def _row_counts(rows: np.ndarray, period: int) -> np.ndarray:
    return np.bincount(np.mod(rows, period), minlength=period)


def _circular_axis(n, k, s, d, p, out) -> _Axis:
    """Circular padding: the model is the input's own period (exact when each model row is read equally often)."""
    if n % s == 0:  # polyphase split: a stride-1 model on n/s frequencies with s phases per channel
        grid, phase, counts = n // s, s, _row_counts(np.arange(out), n // s)
    else:  # the stride-1 model on n frequencies; output i reads model row s·i
        grid, phase, counts = n, 1, _row_counts(s * np.arange(out), n)
    return _Axis(n, k, s, d, p, out, phase=phase, grid=grid, offset=p, rows=int(counts.max()),
                 exact=bool(counts.min() == counts.max()))


def _embedded_axis(n, k, s, d, p, out, offset, pad_rows=1) -> _Axis:
    """Zero padding (or the valid convolution after a reflection): the periodic embedding.

    Admissible periods ``N = s·grid``: ``N ≥ n + offset`` (no tap reaches the
    input across the period) and ``grid ≥ out`` (the output rows are distinct).
    """
    min_grid = max(-(-(n + offset) // s), out)
    return _Axis(n, k, s, d, p, out, phase=s, grid=min_grid, offset=offset, pad_rows=pad_rows, free=True,
                 min_grid=min_grid)


def _reflect_rows(n: int, p: int) -> int:
    """Largest number of entries of the reflect-padded signal (length ``n + 2p``) that copy one input entry."""
    m = np.arange(n + 2 * p) - p
    source = np.where(m < 0, -m, np.where(m >= n, 2 * (n - 1) - m, m))
    return int(np.bincount(source, minlength=n).max())


def _axes(op) -> tuple[tuple[_Axis, ...], str]:
    """The per-axis models of ``op`` (validated), padded to two axes, and the padding mode."""
    kernel_shape = tuple(np.shape(op.kernel))
    d = len(kernel_shape) - 2
    if d not in (1, 2):
        raise NotApplicableError(
            f"conv_norm handles Conv1d and Conv2d kernels (c_out, c_in/groups, *k) with 1 or 2 spatial "
            f"dimensions, got kernel shape {kernel_shape}"
        )
    in_shape = tuple(int(v) for v in op.in_shape)
    if len(in_shape) != d + 1:
        raise ShapeMismatchError(f"a Conv{d}d kernel {kernel_shape} needs in_shape (C, *spatial) with {d} spatial "
                                 f"dimension(s), got {in_shape}")
    groups = int(op.groups)
    c_out, c_in_group = kernel_shape[:2]
    if groups < 1 or c_out % groups or in_shape[0] != c_in_group * groups:
        raise ShapeMismatchError(f"kernel {kernel_shape} with groups={groups} does not fit in_shape {in_shape}")
    mode = str(op.padding_mode)
    if mode not in PADDING_MODES:
        raise NotApplicableError(f"padding_mode {mode!r} is not supported; supported: {', '.join(PADDING_MODES)}")
    geometry = [tuple(int(v) for v in getattr(op, name)) for name in ("stride", "dilation", "padding")]
    axes = []
    for n, k, s, dil, p in zip(in_shape[1:], kernel_shape[2:], *geometry):
        if s < 1 or dil < 1 or p < 0:
            raise ShapeMismatchError(f"stride and dilation must be >= 1 and padding >= 0, got {geometry}")
        span = n + 2 * p - dil * (k - 1) - 1
        if span < 0:
            raise ShapeMismatchError(f"kernel {kernel_shape[2:]} does not fit the padded input {in_shape[1:]}")
        out = span // s + 1
        if mode == "circular":
            axes.append(_circular_axis(n, k, s, dil, p, out))
        elif mode == "zeros":
            axes.append(_embedded_axis(n, k, s, dil, p, out, offset=p))
        else:
            if p >= n:
                raise ShapeMismatchError(f"reflect padding {p} must be smaller than the input size {n}")
            axes.append(_embedded_axis(n + 2 * p, k, s, dil, p, out, offset=0, pad_rows=_reflect_rows(n, p)))
    expected = (c_out,) + tuple(a.out for a in axes)
    out_shape = getattr(op, "out_shape", None)
    if out_shape is not None and tuple(int(v) for v in out_shape) != expected:
        raise ShapeMismatchError(f"out_shape {tuple(out_shape)} does not match the geometry (expected {expected})")
    if d == 1:  # a trivial second axis keeps one code path
        axes.append(_Axis(1, 1, 1, 1, 0, 1, phase=1, grid=1, offset=0, exact=True))
    return tuple(axes), mode


# ------------------------------------------------------------------------------- the kernel's symbol
def _scaled_kernel(kernel) -> tuple[np.ndarray | None, int]:
    """``K · 2^−e`` with its largest entry in ``[1/2, 1)``, and ``e``; ``None`` for a zero kernel.

    Exact, except for entries pushed below the normal range when ``e > 0`` (at most ``η/2`` each,
    covered in :func:`_assembly_error`)."""
    if hasattr(kernel, "detach"):
        kernel = kernel.detach().cpu().double().numpy()
    k = np.asarray(kernel)
    if np.iscomplexobj(k) or k.dtype.kind not in "biuf":
        raise InvalidWeightsError(f"the convolution kernel must be real numbers, got dtype {k.dtype}")
    k = np.asarray(k, dtype=np.float64)
    if not np.all(np.isfinite(k)):
        raise InvalidWeightsError(
            f"the convolution kernel contains {int(k.size - np.isfinite(k).sum())} NaN/Inf value(s); "
            f"no norm bound exists"
        )
    if not np.any(k):
        return None, 0
    exponent = int(np.frexp(np.max(np.abs(k)))[1])
    return np.ldexp(k, -exponent), exponent


def _polyphase(kernel: np.ndarray, groups: int, axes: tuple[_Axis, ...]) -> np.ndarray:
    """The polyphase kernel ``P[g, a1, a2, o, (c, b1, b2)]``: tap ``(j1, j2)`` of channel pair ``(o, c)``
    sits at model shift ``a`` and phase ``b`` (a scatter, exact: distinct taps land on distinct slots).

    The model symbol of group ``g`` is ``M_g(ψ) = Σ_a e^{iψ·a} P[g, a]`` up to the unimodular factor
    ``e^{iψ·a_min}`` (box index 0 is the smallest shift), which changes no singular value or vector.
    """
    c_out, c_in_g = kernel.shape[:2]
    k4 = kernel.reshape(c_out, c_in_g, axes[0].kernel, axes[1].kernel)
    (a1, b1), (a2, b2) = axes[0].taps(), axes[1].taps()
    s1, s2 = axes[0].phase, axes[1].phase
    box1, box2 = int(a1.max() - a1.min()) + 1, int(a2.max() - a2.min()) + 1
    out_g = c_out // groups
    poly = np.zeros((groups, box1, box2, out_g, c_in_g, s1, s2))
    by_group = k4.reshape(groups, out_g, c_in_g, axes[0].kernel, axes[1].kernel)
    for j1, j2 in itertools.product(range(axes[0].kernel), range(axes[1].kernel)):
        poly[:, a1[j1] - a1.min(), a2[j2] - a2.min(), :, :, b1[j1], b2[j2]] = by_group[..., j1, j2]
    return poly.reshape(groups, box1, box2, out_g, c_in_g * s1 * s2)


def _gram_side(poly: np.ndarray) -> np.ndarray:
    """The polyphase kernel of the smaller Gram side: ``M Mᴴ`` as is, or ``Mᴴ M`` through ``J_a = P_{−a}ᵀ``."""
    if poly.shape[3] <= poly.shape[4]:
        return poly
    return np.flip(poly, axis=(1, 2)).swapaxes(3, 4).copy(order="C")


@dataclass(frozen=True)
class _Lags:
    """``G(ψ) = R_0 + Σ_{Δ>0} [cos(ψ·Δ)(R_Δ + R_Δᵀ) + i sin(ψ·Δ)(R_Δ − R_Δᵀ)]`` with ``R_Δ = Σ_a P_{a+Δ} P_aᵀ``.

    ``sym[:, 0]`` holds ``(R_0 + R_0ᵀ)/2``; ``shifts`` the lags ``Δ`` (``Δ > 0`` in
    lexicographic order after the first).  ``error`` bounds, per group, the
    spectral norm of ``Ĝ(ψ) − G(ψ)`` for every ``ψ`` (see :func:`_assembly_error`).
    """

    shifts: np.ndarray  # (L, 2) ints
    sym: object  # torch (groups, L, r*r)
    anti: object  # torch (groups, L - 1, r*r)
    side: int
    error: np.ndarray  # (groups,)


def _lags(poly: np.ndarray) -> _Lags:
    import torch

    groups, box1, box2, r, inner = poly.shape
    shifts = [(0, 0)] + [(d1, d2) for d1 in range(box1) for d2 in range(-box2 + 1, box2) if d1 > 0 or d2 > 0]
    p = torch.from_numpy(poly)
    sym = torch.empty((groups, len(shifts), r * r), dtype=torch.float64)
    anti = torch.empty((groups, len(shifts) - 1, r * r), dtype=torch.float64)
    for index, (d1, d2) in enumerate(shifts):
        lo2, hi2 = max(0, -d2), min(box2, box2 - d2)
        ahead = p[:, d1:, lo2 + d2:hi2 + d2]  # P_{a+Δ}
        behind = p[:, :box1 - d1, lo2:hi2]  # P_a
        left = ahead.permute(0, 3, 1, 2, 4).reshape(groups, r, -1)
        right = behind.permute(0, 3, 1, 2, 4).reshape(groups, r, -1)
        lag = left @ right.transpose(1, 2)
        if index == 0:
            sym[:, 0] = ((lag + lag.transpose(1, 2)) * 0.5).reshape(groups, -1)
        else:
            sym[:, index] = (lag + lag.transpose(1, 2)).reshape(groups, -1)
            anti[:, index - 1] = (lag - lag.transpose(1, 2)).reshape(groups, -1)
    return _Lags(np.array(shifts, dtype=np.int64), sym, anti, r, _assembly_error(poly, len(shifts)))


def _cos_error(n_axes: int = 2) -> float:
    """Absolute error bound of a computed ``cos`` or ``sin`` of ``π Σ_k r_k / grid_k`` (``0 ≤ r_k < 2 grid_k``).

    The angle is ``fl(π) · fl(Σ fl(r_k / grid_k))``: ``n_axes + 2`` roundings of a
    value below ``2π n_axes``, so it is off by at most ``1.01 (n_axes + 2) u · 2π n_axes``;
    cos and sin are 1-Lipschitz, and the library's result is within ``_LIBM_ULPS`` ulps
    (≤ ``2u`` each for a value in [−1, 1]).
    """
    return 1.01 * ((n_axes + 2) * 2 * math.pi * n_axes + 2 * _LIBM_ULPS) * _U


def _assembly_error(poly: np.ndarray, n_lags: int) -> np.ndarray:
    """Per group, a bound on ``‖Ĝ(ψ) − G(ψ)‖₂`` valid for every frequency ``ψ``.

    With ``Q = Σ_Δ Σ_a |P_{a+Δ}||P_a|ᵀ = |P|_Σ |P|_Σᵀ`` (``|P|_Σ = Σ_a |P_a|``), each
    lag entry (a dot product of length ``m ≤ inner · box``) and its symmetric or
    antisymmetric part are within ``γ_{m+1}`` of exact relative to ``Q``'s terms;
    the sum over ``L`` lags with cosines (sines) off by ``ε_c`` adds
    ``γ_L (1 + ε_c)(1 + γ_{m+1}) + ε_c (1 + γ_{m+1})``.  So the real and the
    imaginary parts are each within ``e·Q`` entrywise, the complex entry within
    ``√2 e·Q``, and the spectral norm within ``√2 e ‖Q‖_F ≤ √2 e ‖ |P|_Σ ‖_F²``.
    Gradual underflow adds at most ``η/2`` per product, and the power-of-two scaling of the
    kernel at most ``η/2`` per entry: ``4 r L (m + 1) η`` in Frobenius norm covers both.
    """
    groups, box1, box2, r, inner = poly.shape
    m = inner * box1 * box2
    eps_c = _cos_error()
    g_lag = _gamma(m + 1)
    e = _gamma(n_lags) * (1 + eps_c) * (1 + g_lag) + eps_c * (1 + g_lag) + g_lag
    abs_sum = np.abs(poly).sum(axis=(1, 2))  # (groups, r, inner)
    frob2 = np.einsum("gij,gij->g", abs_sum, abs_sum) * (1 + 2 * _gamma(box1 * box2 + r * inner + 2))
    return 1.01 * (math.sqrt(2) * e * frob2 + 4 * r * n_lags * (m + 1) * _ETA)


# ------------------------------------------------------------------------------- frequencies
def _frequencies(axes: tuple[_Axis, ...]) -> np.ndarray:
    """The model's frequencies as integer numerators ``(2q1 + f1, 2q2 + f2)``, one of each ``±ψ`` pair.

    A real kernel has ``G(−ψ) = conj G(ψ)`` (same eigenvalues); the twisted grids used here
    (``f ∈ {0, 1}``) are symmetric under ``ψ ↦ −ψ``, so half of them suffice.
    """
    m1, m2 = axes[0].grid, axes[1].grid
    q1, q2 = np.meshgrid(np.arange(m1), np.arange(m2), indexing="ij")
    mirror1, mirror2 = np.mod(-q1 - axes[0].twist, m1), np.mod(-q2 - axes[1].twist, m2)
    keep = (q1 * m2 + q2) <= (mirror1 * m2 + mirror2)
    return np.stack([2 * q1[keep] + axes[0].twist, 2 * q2[keep] + axes[1].twist], axis=1)


def _twiddles(numerators: np.ndarray, grids: tuple[int, int], shifts: np.ndarray):
    """``cos`` and ``sin`` of ``ψ·Δ = π Σ_k num_k Δ_k / grid_k`` for each frequency and lag (see :func:`_cos_error`).

    The integer products are reduced modulo ``2 grid_k`` exactly before the one division per axis.
    """
    import torch

    frac = np.zeros((numerators.shape[0], shifts.shape[0]))
    for k, grid in enumerate(grids):
        frac = frac + np.mod(numerators[:, k:k + 1] * shifts[None, :, k], 2 * grid) / grid
    angle = np.pi * frac
    return torch.from_numpy(np.cos(angle)), torch.from_numpy(np.sin(angle[:, 1:]))


def _grams(lags: _Lags, numerators: np.ndarray, grids: tuple[int, int]):
    """``Ĝ(ψ)`` for the given frequencies, every group: complex ``(groups · F, r, r)`` (group-major)."""
    import torch

    cos, sin = _twiddles(numerators, grids, lags.shifts)
    r = lags.side
    real = torch.matmul(cos, lags.sym)  # (groups, F, r*r)
    imag = torch.matmul(sin, lags.anti) if lags.anti.shape[1] else torch.zeros_like(real)
    return torch.complex(real, imag).reshape(-1, r, r)


# ------------------------------------------------------------------------------- the proof
def _chol_shift(traces, sizes: int, errors):
    """Rump's shift for a complex Hermitian Cholesky (see :func:`lipsdp.certificate.cholesky_shift`).

    Success of the floating-point Cholesky of ``A − c I`` (``A`` within
    ``error`` of the exact ``H`` in spectral norm) proves ``H ⪰ 0`` when
    ``c ≥ error + γ'_{n+1}/(1 − γ'_{n+1}) · tr A``; ``γ'`` uses the complex
    unit :data:`_COMPLEX_UNIT` (every complex operation has relative error at most
    that, Higham Lemma 3.5, so Demmel's backward error bound of Cholesky
    ``|ΔA| ≤ γ'_{n+1} |Rᴴ||R|`` holds with it).  The factor 1.01 covers the
    rounding of the trace and of the shifted diagonal; the last term covers
    underflow inside the factorisation, generously.
    """
    g = _gamma(sizes + 1, _COMPLEX_UNIT)
    trace = np.maximum(traces, 0.0) + sizes * errors
    return 1.01 * (errors + g / (1 - g) * trace) + 8 * sizes * _TINY / _U


def _passes(gram, errors: np.ndarray, t: float) -> np.ndarray:
    """For each ``b``, whether a shifted Cholesky proves ``t I − G_b ⪰ 0`` for the exact ``G_b``
    (``‖Ĝ_b − G_b‖₂ ≤ errors[b]``).  ``gram`` is overwritten (a fresh tensor is expected)."""
    import torch

    n = gram.shape[-1]
    diag = t - gram.diagonal(dim1=-2, dim2=-1).real  # rounding ≤ u |t − Ĝ_ii|
    abs_diag = diag.abs().amax(dim=-1).numpy()
    total = errors + _U * abs_diag
    shift = _chol_shift(diag.sum(dim=-1).numpy(), n, total)
    if n == 1:  # Cholesky of a 1 x 1 matrix succeeds iff its entry fl(diag − shift) is positive, i.e. diag > shift
        return diag[:, 0].numpy() > shift
    a = gram.neg_()  # in place: the caller's gram is consumed
    a.diagonal(dim1=-2, dim2=-1).copy_((diag - torch.from_numpy(shift)[:, None]).to(a.dtype))
    _, info = torch.linalg.cholesky_ex(a)
    return (info == 0).numpy()


def _top_eigenvalues(gram) -> np.ndarray:
    """Largest eigenvalue of each Hermitian matrix (an estimate: only the proof's tightness depends on it)."""
    import torch

    if gram.shape[-1] == 1:
        return gram[:, 0, 0].real.numpy().copy()
    if gram.shape[-1] > _LARGE_SIDE:
        return _screen(gram, 100)
    return torch.linalg.eigvalsh(gram)[:, -1].numpy()


def _screen(gram, iterations: int = 6) -> np.ndarray:
    """Rough lower estimates of ``λ_max`` by a few batched power iterations (to pick where to look first)."""
    import torch

    n = gram.shape[-1]
    generator = torch.Generator().manual_seed(0)
    v = torch.randn((n, 1), generator=generator, dtype=torch.float64).to(gram.dtype).expand(gram.shape[0], n, 1)
    for _ in range(iterations):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (v.mH @ gram @ v).real.reshape(-1).numpy()


class _TorchThreads:
    """Inside: torch's intra-op threads set to 1 (restored on exit); ``before`` is the number set before.

    The work here is many small LAPACK calls and small matrix products, which
    intra-op threads do not speed up (and slow down badly when the cores are
    shared); the proof's chunks are shared out over ``before`` Python threads
    instead (:func:`_workers`).
    """

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.before != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        if self.before != 1:
            torch.set_num_threads(self.before)
        return False


def _workers(threads: int, frequencies: int, groups: int, side: int) -> int:
    """Threads for the chunks of the proof: the caller's torch thread count when the work is worth splitting."""
    work = frequencies * groups * float(side) ** 3
    return max(1, min(threads, 8)) if work >= 1e7 else 1


class _Level:
    """The proved level ``t``: ``λ_max(G_g(ψ)) ≤ t`` for every group and frequency checked so far.

    ``t`` only grows (a proof at a lower level stays valid for every higher one),
    starting from an eigenvalue estimate ``λ̃`` times ``1 + η``; ``η`` starts just
    above the Cholesky shift's relative size and grows tenfold whenever the proof
    fails where the estimate says it should not.
    """

    def __init__(self, lags: _Lags, axes: tuple[_Axis, ...]):
        self.lags, self.grids = lags, (axes[0].grid, axes[1].grid)
        self.numerators = _frequencies(axes)
        self.t, self.estimate = 0.0, 0.0
        self.eta0 = 8 * _gamma(lags.side + 1, _COMPLEX_UNIT) * lags.side + 1e-15
        self.eta = self.eta0
        self.peak, self.peak_value = None, -math.inf  # (group, numerators) of the largest estimate

    def grams(self, pairs: np.ndarray):
        """Fresh ``Ĝ`` for ``(group, frequency index)`` pairs, and their error bounds."""
        frequencies, inverse = np.unique(pairs[:, 1], return_inverse=True)
        grams = _grams(self.lags, self.numerators[frequencies], self.grids)
        grams = grams.reshape(self.lags.sym.shape[0], frequencies.size, self.lags.side, self.lags.side)
        return grams[pairs[:, 0], inverse], self.lags.error[pairs[:, 0]]

    def raise_to(self, pairs: np.ndarray, gram, errors: np.ndarray) -> None:
        """Raise ``t`` to the largest eigenvalue estimate of ``gram`` (pairs as in :meth:`grams`) times ``1 + η``."""
        values = _top_eigenvalues(gram)
        top = int(np.argmax(values))
        if values[top] > self.peak_value:
            self.peak_value = float(values[top])
            self.peak = (int(pairs[top, 0]), self.numerators[pairs[top, 1]])
        if values[top] * (1 + self.eta0) < self.t:  # the estimate says t suffices: the proof needs more room
            self.eta *= 10
            if self.eta > _MAX_INFLATION:
                raise CertificationError(
                    "no certified convolution norm: the Cholesky proof failed up to a relative inflation of "
                    f"{_MAX_INFLATION:g} over the eigenvalue estimate"
                )
        self.estimate = max(self.estimate, float(values[top]))
        worst = float(np.max(errors))
        eta = self.eta + 4 * worst / max(self.estimate, _TINY)
        self.t = max(self.t, self.estimate * (1 + eta), 8 * worst + _TINY)  # the floor: a level provable where G ≈ 0

    def failing(self, indices: np.ndarray) -> np.ndarray:
        """The ``(group, frequency index)`` pairs among frequencies ``indices`` where ``t I − G ⪰ 0`` is not proved."""
        groups = self.lags.sym.shape[0]
        gram = _grams(self.lags, self.numerators[indices], self.grids)
        ok = _passes(gram, np.repeat(self.lags.error, indices.size), self.t).reshape(groups, indices.size)
        g, f = np.nonzero(~ok)
        return np.stack([g, indices[f]], axis=1)

    def prove_pairs(self, pairs: np.ndarray) -> None:
        """Prove the given pairs, raising ``t`` on failure (estimates first, then the proof, until it holds)."""
        while pairs.size:
            gram, errors = self.grams(pairs)
            self.raise_to(pairs, gram.clone(), errors)
            pairs = pairs[~_passes(gram, errors, self.t)]


def _largest_traces(lags: _Lags, numerators: np.ndarray, grids: tuple[int, int], count: int = 8) -> np.ndarray:
    """The ``(group, frequency index)`` pairs of largest ``tr G_g(ψ) = ‖M_g(ψ)‖_F²``, a scalar trigonometric
    polynomial in ``ψ`` (cheap for every frequency): where to estimate ``λ_max`` first without peak hints."""
    r = lags.side
    diagonal = np.arange(r) * (r + 1)
    cos, _ = _twiddles(numerators, grids, lags.shifts)
    traces = (cos.numpy() @ lags.sym[:, :, diagonal].sum(dim=-1).numpy().T).T  # (groups, F)
    best = np.argsort(-traces, axis=None)[:count]
    return np.stack(np.unravel_index(best, traces.shape), axis=1)


def _prove_level(lags: _Lags, axes: tuple[_Axis, ...], hints: np.ndarray | None, threads: int = 1):
    """The certified ``t ≥ max_{g, ψ} λ_max(G_g(ψ))`` over the model's frequencies and the peak
    ``(group, numerators)`` of the largest eigenvalue estimate (where the lower bound starts).

    ``t`` is first set from eigenvalue estimates at the frequencies next to the
    symbol's peaks (``hints``); then every chunk of frequencies is proved at that
    level (chunks in parallel threads), and the few failures, if any, raise it.
    """
    from concurrent.futures import ThreadPoolExecutor

    level = _Level(lags, axes)
    numerators, groups, r = level.numerators, lags.sym.shape[0], lags.side
    near = np.zeros(0, dtype=np.int64)
    if hints is not None and hints.size:
        near = np.flatnonzero((numerators[:, None, :] == hints[None, :, :]).all(axis=2).any(axis=1))
    if near.size:
        pairs = np.stack(np.meshgrid(np.arange(groups), near, indexing="ij"), axis=-1).reshape(-1, 2)
    else:
        pairs = _largest_traces(lags, numerators, level.grids)
    gram, errors = level.grams(pairs)
    level.raise_to(pairs, gram, errors)
    per_chunk = max(1, min(64, _CHUNK_BYTES // (16 * r * r * groups)))
    chunks = [np.arange(i, min(i + per_chunk, numerators.shape[0])) for i in range(0, numerators.shape[0], per_chunk)]
    workers = _workers(threads, numerators.shape[0], groups, r)
    if workers > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(workers) as pool:
            failed = list(pool.map(level.failing, chunks))
    else:
        failed = [level.failing(chunk) for chunk in chunks]
    level.prove_pairs(np.concatenate(failed))
    return level.t, level.peak


# ------------------------------------------------------------------------------- choosing the period
def _symbol_at(lags: _Lags, psi: np.ndarray, order: int = 0):
    """``G(ψ)`` (order 0) or its derivatives ``∂_k G`` (order 1, stacked over k) and ``∂_k ∂_l G`` (order 2)
    at continuous frequencies ``psi`` (F, 2), for every group: an estimate, not part of any proof."""
    import torch

    shifts = lags.shifts.astype(float)
    angle = psi @ shifts.T  # (F, L)
    cos, sin = np.cos(angle), np.sin(angle)

    def assemble(c, s):
        real = torch.matmul(torch.from_numpy(np.ascontiguousarray(c)), lags.sym)
        imag = torch.matmul(torch.from_numpy(np.ascontiguousarray(s[:, 1:])), lags.anti)
        return torch.complex(real, imag).reshape(lags.sym.shape[0], -1, lags.side, lags.side)

    if order == 0:
        return assemble(cos, sin)
    if order == 1:
        return [assemble(-shifts[:, k] * sin, shifts[:, k] * cos) for k in range(2)]
    return [[assemble(-shifts[:, k] * shifts[:, l] * cos, -shifts[:, k] * shifts[:, l] * sin) for l in range(2)]
            for k in range(2)]


@dataclass(frozen=True)
class _Peak:
    """A local maximum of ``ψ ↦ λ_max(G(ψ))`` with its quadratic model (``hessian`` None: no usable model)."""

    value: float
    psi: np.ndarray
    hessian: np.ndarray | None


def _newton_peak(lags: _Lags, group: int, psi: np.ndarray, active: np.ndarray, step: np.ndarray,
                 iterations: int = 3) -> _Peak:
    """Refine a peak of ``λ_max(G_g(ψ))`` by Newton steps (each at most ``step``) with the analytic
    gradient and Hessian of a simple eigenvalue: ``∂_k λ = vᴴ ∂_k G v`` and
    ``∂_k∂_l λ = vᴴ ∂_k∂_l G v + 2 Re Σ_{j>1} (vᴴ ∂_k G v_j)(v_jᴴ ∂_l G v)/(λ − λ_j)``."""
    for iteration in range(iterations):
        value, grad, hess = _eigen_derivatives(lags, group, psi)
        if hess is None:
            return _Peak(value, psi, None)
        sub = hess[np.ix_(active, active)]
        if np.any(np.linalg.eigvalsh(sub) >= 0):  # not a maximum of a smooth model
            return _Peak(value, psi, None)
        move = np.zeros(2)
        move[active] = np.clip(-np.linalg.solve(sub, grad[active]), -step[active], step[active])
        if iteration == iterations - 1 or np.all(np.abs(move) < 1e-12):
            break
        psi = psi + move
    return _Peak(value, psi, hess)


def _eigen_derivatives(lags: _Lags, group: int, psi: np.ndarray):
    """``λ_max(G_g(ψ))``, its gradient and Hessian in ``ψ`` (``None`` for both at a multiple top eigenvalue)."""
    import torch

    at = psi[None, :]
    evals, evecs = torch.linalg.eigh(_symbol_at(lags, at)[group, 0])
    value = float(evals[-1])
    gap = (evals[-1] - evals[:-1]).numpy()
    if gap.size and gap.min() <= 1e-9 * max(abs(value), _TINY):
        return value, None, None
    first = [d[group, 0] for d in _symbol_at(lags, at, 1)]
    second = [[d[group, 0] for d in row] for row in _symbol_at(lags, at, 2)]
    top, rest = evecs[:, -1:], evecs[:, :-1]
    couple = [(rest.mH @ d @ top).reshape(-1).numpy() for d in first]
    grad = np.array([float((top.mH @ d @ top).real) for d in first])
    hess = np.empty((2, 2))
    for k, l in itertools.product(range(2), repeat=2):
        hess[k, l] = float((top.mH @ second[k][l] @ top).real)
        if gap.size:
            hess[k, l] += 2 * float(np.sum((couple[k].conj() * couple[l]).real / gap))
    return value, grad, hess


def _peaks(lags: _Lags, axes: tuple[_Axis, ...], limit: int = 3, within: float = 0.02) -> list[_Peak]:
    """The highest local maxima of ``λ_max(G_g(ψ))`` over all groups: located on a coarse grid
    (a few samples per oscillation of the symbol), then refined by Newton steps."""
    degree = np.abs(lags.shifts).max(axis=0)
    active = np.flatnonzero(degree > 0)
    if active.size == 0:
        return []
    coarse = [int(min(64, max(12, 4 * deg + 4))) if deg > 0 else 1 for deg in degree]
    grid_axes = tuple(_Axis(1, 1, 1, 1, 0, 1, phase=1, grid=c, offset=0) for c in coarse)
    half = _frequencies(grid_axes) // 2  # twist 0: numerators 2q
    psi = 2 * np.pi * half / np.array(coarse)
    grams = _symbol_at(lags, psi).reshape(-1, lags.side, lags.side)
    rough = _screen(grams, 20) if lags.side > 8 else _top_eigenvalues(grams)
    estimates = rough.reshape(lags.sym.shape[0], -1)
    values = np.empty((lags.sym.shape[0], coarse[0], coarse[1]))
    for sign in (1, -1):  # λ(−ψ) = λ(ψ): fill the mirror images
        values[:, np.mod(sign * half[:, 0], coarse[0]), np.mod(sign * half[:, 1], coarse[1])] = estimates
    psi_of = lambda i, j: 2 * np.pi * np.array([i / coarse[0], j / coarse[1]])  # noqa: E731
    top = float(values.max())
    found = []
    for g, i, j in zip(*np.nonzero(values >= top * (1 - within) if top > 0 else values >= top)):
        around = values[g][np.ix_([(i - 1) % coarse[0], i, (i + 1) % coarse[0]],
                                  [(j - 1) % coarse[1], j, (j + 1) % coarse[1]])]
        if values[g, i, j] >= around.max():
            found.append((float(values[g, i, j]), int(g), psi_of(i, j)))
    found.sort(key=lambda item: -item[0])
    step = np.array([np.pi / c for c in coarse])
    peaks: list[_Peak] = []
    for _, g, start in found:
        if len(peaks) == limit:
            break
        peak = _newton_peak(lags, g, start, active, step)
        if not any(_same_point(peak.psi, other.psi, step) for other in peaks):
            peaks.append(peak)
    return peaks


def _same_point(a: np.ndarray, b: np.ndarray, step: np.ndarray) -> bool:
    """Whether ``a`` equals ``±b`` on the torus up to a fraction of the coarse spacing."""
    for sign in (1, -1):
        diff = np.mod(a - sign * b + np.pi, 2 * np.pi) - np.pi
        if np.all(np.abs(diff) <= 0.25 * step):
            return True
    return False


def _predicted_max(peaks: list[_Peak], grids: tuple[int, int], twists: tuple[int, int]) -> float:
    """The quadratic models' largest value at the grid points around every peak (grids symmetric in ±ψ)."""
    worst = -math.inf
    for peak in peaks:
        if peak.hessian is None:
            worst = max(worst, peak.value)
            continue
        offsets = []
        for k in range(2):
            position = (peak.psi[k] * grids[k] / np.pi - twists[k]) / 2  # in units of grid steps
            q = np.floor(position) + np.arange(-1, 3)
            offsets.append(np.pi * (2 * q + twists[k]) / grids[k] - peak.psi[k])
        d1, d2 = np.meshgrid(offsets[0], offsets[1], indexing="ij")
        h = peak.hessian
        drop = 0.5 * (h[0, 0] * d1 ** 2 + 2 * h[0, 1] * d1 * d2 + h[1, 1] * d2 ** 2)
        worst = max(worst, peak.value + float(drop.max()))
    return worst


def _choose_grids(lags: _Lags, axes: tuple[_Axis, ...]) -> tuple[tuple[_Axis, ...], np.ndarray | None, bool]:
    """The model's grids, the grid points next to the symbol's peaks (where the proof estimates
    first) and whether the grids were tuned.

    Zero and reflect padding admit several periods and twists per axis (each gives a
    valid bound); the one whose frequencies sample the peaks farthest below their top,
    by the peaks' quadratic models, is taken.
    """
    if lags.side > _LARGE_SIDE:  # each eigen-decomposition costs O(c³): the default grids, no peak search
        return axes, None, False
    peaks = _peaks(lags, axes)
    if not peaks:
        return axes, None, False
    if not any(a.free for a in axes):
        return axes, _hints(peaks, axes), False
    options = [[(g, f) for g in range(a.min_grid, a.min_grid + _GRID_EXTRA + 1) for f in (0, 1)] if a.free
               else [(a.grid, a.twist)] for a in axes]
    best_key, best = None, None
    for choice in itertools.product(*options):
        grids, twists = tuple(c[0] for c in choice), tuple(c[1] for c in choice)
        key = (float(np.float32(_predicted_max(peaks, grids, twists))), grids[0] * grids[1])
        if best_key is None or key < best_key:
            best_key, best = key, choice
    chosen = tuple(replace(a, grid=g, twist=f) for a, (g, f) in zip(axes, best))
    return chosen, _hints(peaks, chosen), True


def _hints(peaks: list[_Peak], axes: tuple[_Axis, ...]) -> np.ndarray:
    """Numerators ``2q + f`` of the grid points around each peak and its mirror image."""
    points = []
    for peak in peaks:
        for sign in (1, -1):
            near = []
            for k, axis in enumerate(axes):
                position = (sign * peak.psi[k] * axis.grid / np.pi - axis.twist) / 2
                q = np.mod(np.floor(position) + np.arange(0, 2), axis.grid).astype(np.int64)
                near.append(2 * np.unique(q) + axis.twist)
            points.extend(itertools.product(*near))
    return np.array(points, dtype=np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------------- the bound
@dataclass(frozen=True)
class _Upper:
    """A certified bound ``scaled = (m, e)``, how it was obtained, the models used and where the lower bound starts."""

    scaled: tuple[float, int]
    exact: bool
    method: str
    axes: tuple[_Axis, ...]
    start: tuple | None  # (group, psi (2,), the group's polyphase kernel): where the lower bound starts


def _method(mode: str, axes: tuple[_Axis, ...], exact: bool, tuned: bool) -> str:
    if mode == "circular":
        return "fft (circular, exact)" if exact else "fft (circular) with the strided row selection (upper bound)"
    grid = ", period and twist tuned to the symbol's peaks" if tuned else ""
    if mode == "zeros":
        return f"fft on the periodic embedding (zero padding{grid})"
    return f"reflection map x fft on the periodic embedding of the valid convolution (reflect padding{grid})"


def _upper(op) -> _Upper:
    with _TorchThreads() as threads:
        return _upper_bound(op, threads=threads.before)


def _upper_bound(op, dense: bool = True, threads: int = 1) -> _Upper:
    """The Fourier bound, or the dense one where that is smaller (small maps, few output rows)."""
    axes, mode = _axes(op)
    kernel, exponent = _scaled_kernel(op.kernel)
    if kernel is None:
        return _Upper((0.0, 0), True, "zero kernel", axes, None)
    groups = int(op.groups)
    if mode == "zeros":
        kernel = _prune_taps(kernel, axes)
    # groups with identical kernels have identical maps (depthwise poolings): keep one of each
    first: dict[bytes, int] = {}
    for g, row in enumerate(kernel.reshape(groups, -1)):
        first.setdefault(row.tobytes(), g)
    kept = np.array(sorted(first.values()), dtype=np.int64)
    fourier = _fourier_bound(kernel, exponent, groups, kept, axes, mode, threads)
    if dense and not fourier.exact and _dense_is_worth_it(kernel, groups, axes):
        matrix = _dense_bound(kernel, groups, kept, axes, mode, tuple(int(v) for v in op.in_shape))
        if _less(matrix, fourier.scaled[0], fourier.scaled[1] - exponent):
            return replace(fourier, scaled=(matrix[0], matrix[1] + exponent), method="dense matrix (small operator)")
    return fourier


def _fourier_bound(kernel: np.ndarray, exponent: int, groups: int, kept: np.ndarray, axes: tuple[_Axis, ...],
                   mode: str, threads: int) -> _Upper:
    """The periodic model's certified bound (module docstring) for the scaled kernel, times ``2^exponent``."""
    poly = _polyphase(kernel, groups, axes)
    poly = poly[kept]
    side = _gram_side(poly)
    if side.shape[3] > MAX_GRAM_SIDE:
        raise ProblemTooLargeError(
            f"the convolution's symbol is {side.shape[3]} x {side.shape[4]} per frequency and group; certified "
            f"norms are computed up to {MAX_GRAM_SIDE} channels on the smaller side"
        )
    lags = _lags(side)
    tuned_axes, hints, tuned = _choose_grids(lags, axes)
    t, peak = _prove_level(lags, tuned_axes, hints, threads)
    factor = int(np.prod([a.rows * a.pad_rows for a in tuned_axes]))
    root = from_float(np.nextafter(math.sqrt(t), np.inf))
    if factor > 1:
        root = times(root, from_float(np.nextafter(math.sqrt(factor), np.inf)))
    exact = mode == "circular" and all(a.exact for a in tuned_axes)
    start = None
    if peak is not None:
        psi = np.array([np.pi * peak[1][k] / tuned_axes[k].grid for k in range(2)])
        start = (int(kept[peak[0]]), psi, poly[peak[0]])
    return _Upper((root[0], root[1] + exponent), exact, _method(mode, tuned_axes, exact, tuned),
                  tuned_axes, start)


def _less(a: tuple[float, int], mantissa: float, exponent: int) -> bool:
    """``a < mantissa · 2^exponent`` for values in float64's range."""
    return math.ldexp(a[0], a[1] - exponent) < mantissa


def _dense_is_worth_it(kernel: np.ndarray, groups: int, axes: tuple[_Axis, ...]) -> bool:
    """The dense matrix of a group is small, and either tiny or with few output rows for the model's rows
    (e.g. a global pooling, where the periodic model has a row per shift and the map one row)."""
    rows = kernel.shape[0] // groups * axes[0].out * axes[1].out
    cols = kernel.shape[1] * axes[0].size * axes[1].size
    few_rows = 4 * axes[0].out * axes[1].out <= axes[0].grid * axes[1].grid
    return rows * cols <= 1 << 16 or (few_rows and rows * cols <= DENSE_MAX_ENTRIES)


def _sources(axis: _Axis, mode: str, size: int) -> np.ndarray:
    """``src[i, j]``: the input entry that tap ``j`` of output ``i`` reads (−1 where it reads a zero)."""
    m = axis.stride * np.arange(axis.out)[:, None] + axis.dilation * np.arange(axis.kernel)[None, :] - axis.padding
    if mode == "circular":
        return np.mod(m, size)
    if mode == "reflect":
        return np.where(m < 0, -m, np.where(m >= size, 2 * (size - 1) - m, m))
    return np.where((m >= 0) & (m < size), m, -1)


def _dense_bound(kernel: np.ndarray, groups: int, kept: np.ndarray, axes: tuple[_Axis, ...], mode: str,
                 in_shape: tuple[int, ...]) -> tuple[float, int]:
    """``max_g ‖A_g‖₂`` over the groups' dense matrices, certified (:func:`lipsdp.certificate.spectral_norm_bound`).

    An entry of ``A_g`` is a sum of at most ``T`` kernel entries (taps that read the
    same input), so the assembled ``Â_g`` is within ``γ_T |A_g|`` entrywise and
    ``‖A_g‖₂ ≤ ‖Â_g‖₂ + γ_T ‖ |K|-matrix ‖_F`` (the same assembly with ``|K|``).
    """
    from .certificate import spectral_norm_bound

    sizes = tuple(in_shape[1:]) + (1,) * (3 - len(in_shape))
    sources = [_sources(a, mode, n) for a, n in zip(axes, sizes)]
    out_g, c_in_g = kernel.shape[0] // groups, kernel.shape[1]
    k4 = kernel.reshape(groups, out_g, c_in_g, axes[0].kernel, axes[1].kernel)
    taps = axes[0].kernel * axes[1].kernel
    best = (0.0, 0)
    for g in kept:
        matrix = np.zeros((out_g, axes[0].out, axes[1].out, c_in_g, sizes[0], sizes[1]))
        absolute = np.zeros_like(matrix)
        for j1, j2 in itertools.product(range(axes[0].kernel), range(axes[1].kernel)):
            i1 = np.flatnonzero(sources[0][:, j1] >= 0)
            i2 = np.flatnonzero(sources[1][:, j2] >= 0)
            if not (i1.size and i2.size):
                continue
            rows1, rows2 = np.meshgrid(i1, i2, indexing="ij")
            cols1, cols2 = sources[0][rows1, j1], sources[1][rows2, j2]
            entry = k4[g, :, :, j1, j2]
            for target, values in ((matrix, entry), (absolute, np.abs(entry))):
                np.add.at(target.transpose(1, 2, 4, 5, 0, 3), (rows1, rows2, cols1, cols2), values)
        matrix = matrix.reshape(out_g * axes[0].out * axes[1].out, -1)
        mantissa, e = spectral_norm_bound(matrix)
        error = _gamma(taps) * math.sqrt(float(np.vdot(absolute, absolute)) * (1 + _gamma(absolute.size + 1)))
        total = from_float(np.nextafter(math.ldexp(mantissa, e) + error * (1 + 2 * _U), np.inf))
        if math.ldexp(total[0], total[1]) > math.ldexp(best[0], best[1]):
            best = total
    return best


def _prune_taps(kernel: np.ndarray, axes: tuple[_Axis, ...]) -> np.ndarray:
    """Zero padding: the kernel with the taps zeroed that read padding for every output row.

    Tap ``j`` of an axis reads input ``s·i + d·j − p``; if that is outside
    ``[0, n)`` for every output row ``i``, the map does not depend on the tap,
    so zeroing it leaves the operator unchanged and can only lower the bound.
    """
    kernel = kernel.copy()
    for k, axis in enumerate(axes[:kernel.ndim - 2]):
        reads = axis.stride * np.arange(axis.out)[:, None] + axis.dilation * np.arange(axis.kernel)[None, :] \
            - axis.padding
        idle = ~((reads >= 0) & (reads < axis.size)).any(axis=0)
        index = [slice(None)] * kernel.ndim
        index[2 + k] = idle
        kernel[tuple(index)] = 0.0
    return kernel


def _input_vector(poly_g: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """The top right singular vector of ``M_g(ψ) = Σ_a e^{iψ·a} P_a`` (input channels × phases)."""
    box1, box2 = poly_g.shape[:2]
    phase = np.exp(1j * (psi[0] * np.arange(box1)[:, None] + psi[1] * np.arange(box2)[None, :]))
    symbol = np.tensordot(phase, poly_g, axes=([0, 1], [0, 1]))
    return np.linalg.svd(symbol)[2][0].conj()


def conv_norm_bound(op) -> tuple[float, int]:
    """Certified upper bound ``m · 2^e ≥ ‖A‖₂`` of a convolution operator, as ``(m, e)``.

    ``op`` has the fields of :class:`lipsdp.operators.ConvOperator` (``kernel``,
    ``in_shape``, ``stride``, ``padding``, ``dilation``, ``padding_mode``,
    ``groups``).  The bound is ``√t · √(row multiplicities)`` where ``t I −
    G(ψ) ⪰ 0`` is proved for every frequency of the periodic model (module
    docstring; docs/cnn.md), times the power of two that scaled the kernel; for
    small operators, the dense matrix's certified norm when that is smaller.

    Raises
    ------
    InvalidWeightsError
        NaN/Inf or complex kernel.
    ShapeMismatchError
        Kernel, channels, groups and input shape inconsistent.
    NotApplicableError
        Not a 1-D or 2-D convolution, or a padding mode other than zeros, circular, reflect.
    CertificationError
        The Cholesky proof failed (never expected for finite kernels).
    """
    return _upper(op).scaled


# ------------------------------------------------------------------------------- lower bound
def _forward(op, kernel, x):
    """``A x`` in torch (float64), with torch's padding and convolution."""
    import torch.nn.functional as F

    d = len(op.in_shape) - 1
    conv = F.conv1d if d == 1 else F.conv2d
    stride, padding, dilation = (tuple(int(v) for v in getattr(op, n)) for n in ("stride", "padding", "dilation"))
    if op.padding_mode == "zeros":
        return conv(x, kernel, None, stride, padding, dilation, int(op.groups))
    pads = tuple(p for pad in reversed(padding) for p in (pad, pad))
    return conv(F.pad(x, pads, mode=op.padding_mode), kernel, None, stride, 0, dilation, int(op.groups))


def _start_signal(op, upper: _Upper) -> np.ndarray | None:
    """A start vector near the top right singular vector: the symbol's top singular vector at the peak
    frequency as a plane wave on the model's input, windowed to the input (a sine envelope for
    non-periodic padding)."""
    if upper.start is None:
        return None
    group, psi, poly_g = upper.start
    vector = _input_vector(poly_g, psi)
    in_shape = tuple(int(v) for v in op.in_shape)
    axes = upper.axes
    c_in_g = in_shape[0] // int(op.groups)
    coords = []
    for k in range(2):
        n = in_shape[1 + k] if k < len(in_shape) - 1 else 1
        shift = op.padding[k] if (op.padding_mode == "reflect" and k < len(in_shape) - 1) else 0
        q, b = np.divmod(np.arange(n) + shift, axes[k].phase)
        envelope = np.ones(n) if op.padding_mode == "circular" else np.sin(np.pi * (np.arange(n) + 1) / (n + 1))
        coords.append((q, b, envelope))
    (q1, b1, e1), (q2, b2, e2) = coords
    v = vector.reshape(c_in_g, axes[0].phase, axes[1].phase)
    wave = np.exp(1j * (psi[0] * q1[:, None] + psi[1] * q2[None, :]))
    signal = (v[:, b1[:, None], b2[None, :]] * wave[None]).real * (e1[:, None] * e2[None, :])[None]
    full = np.zeros((in_shape[0],) + signal.shape[1:])
    full[group * c_in_g:(group + 1) * c_in_g] = signal
    full = full.reshape(in_shape)
    return full if np.any(full) else None


def _lower_bound(op, start: np.ndarray | None, iterations: int = 20, tol: float = 1e-9) -> float:
    """A rigorous lower bound of ``‖A‖₂``: ``‖A x‖/‖x‖`` after power iteration on ``AᵀA``, with the
    rounding of the final ``A x`` subtracted.

    ``|fl(Ax) − Ax| ≤ γ_m |A||x|`` entrywise (``m`` products per output entry, any
    summation order) and ``|A||x| ≤ conv_{|K|}(|x|)`` for every padding mode (the
    padding copies or zeros entries), itself computed in float64 within ``γ_m``;
    the norms lose at most ``γ_{len+1}`` each.
    """
    import torch

    kernel = torch.from_numpy(np.array(op.kernel, dtype=np.float64))
    in_shape = (1,) + tuple(int(v) for v in op.in_shape)
    if start is None:
        start = np.random.default_rng(0).standard_normal(in_shape[1:])
    x = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float64)).reshape(in_shape)
    x = x / x.norm()
    previous = 0.0
    for _ in range(iterations):
        x.requires_grad_(True)
        y = _forward(op, kernel, x)
        value = float(y.detach().norm())
        (back,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
        norm = back.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        x = (back / norm).detach()
        if abs(value - previous) <= tol * value:
            break
        previous = value
    x = x.detach()
    with torch.no_grad():
        y = _forward(op, kernel, x)
        z = _forward(op, kernel.abs(), x.abs())
    m = int(np.prod(np.shape(op.kernel)[1:])) + 1
    g_len = _gamma(max(y.numel(), x.numel()) + 1)
    image = float(y.norm()) * (1 - g_len)
    slack = _gamma(m) / (1 - _gamma(m)) * float(z.norm()) * (1 + g_len)
    length = float(x.norm()) * (1 + g_len)
    return float(max(0.0, (image - slack) / length * (1 - 4 * _U)))


# ------------------------------------------------------------------------------- public result
@dataclass(frozen=True)
class ConvNorm:
    """The spectral norm of one convolution, certified from above and bounded from below.

    Attributes
    ----------
    upper
        Certified upper bound (rounded up).
    lower
        Lower bound ``‖A x‖/‖x‖`` from power iteration on the true operator, rounding subtracted.
    exact
        ``upper`` is the exact norm up to the certificate's rounding (circular padding
        where every model row is read equally often).
    method
        How ``upper`` was obtained.
    seconds
        Wall time of the computation.
    """

    upper: float
    lower: float
    exact: bool
    method: str
    seconds: float

    def __float__(self) -> float:
        return self.upper


def _operator(conv, input_shape):
    """A ConvOperator (or any object with its fields) for ``conv``."""
    if hasattr(conv, "kernel") and hasattr(conv, "in_shape"):
        return conv
    if not (hasattr(conv, "weight") and hasattr(conv, "padding_mode")):
        raise NotApplicableError(
            f"conv_norm takes an nn.Conv1d / nn.Conv2d or a lipsdp.operators.ConvOperator, got {type(conv).__name__}"
        )
    if input_shape is None:
        raise InputShapeRequiredError(
            f"the spectral norm of {type(conv).__name__} depends on the input size: pass "
            f"input_shape=(C, H, W) (or (C, L) for Conv1d), e.g. conv_norm(conv, input_shape=(3, 32, 32))"
        )
    from .operators import ConvOperator

    shape = tuple(input_shape)
    if len(shape) == len(conv.weight.shape) and shape[0] == 1:  # a batch of one: drop it
        shape = shape[1:]
    return ConvOperator.from_torch(conv, shape)


def conv_norm(conv, input_shape=None) -> ConvNorm:
    """Certified spectral norm (ℓ2 → ℓ2) of a convolution acting on inputs of shape ``input_shape``.

    Parameters
    ----------
    conv
        ``nn.Conv1d`` / ``nn.Conv2d`` (its bias is not part of the linear map) or a
        :class:`lipsdp.operators.ConvOperator`.
    input_shape
        ``(C, H, W)`` (``(C, L)`` for Conv1d); required for a module, ignored for an operator.

    Returns
    -------
    ConvNorm
        ``float(result)`` is the certified upper bound.

    Raises
    ------
    NotApplicableError
        A module without ``input_shape``, or not a Conv1d/Conv2d.
    InvalidWeightsError, ShapeMismatchError, CertificationError
        As :func:`conv_norm_bound`.
    NumericalRangeError
        The bound overflows float64 (use :func:`conv_norm_bound`'s ``(m, e)`` form).
    """
    started = time.perf_counter()
    op = _operator(conv, input_shape)
    with _TorchThreads() as threads:
        result = _upper_bound(op, threads=threads.before)
        upper = to_float_up(result.scaled)
        if not math.isfinite(upper):
            raise NumericalRangeError("the convolution's norm bound overflows float64; use conv_norm_bound (m, e)")
        lower = 0.0 if result.scaled[0] == 0 else _lower_bound(op, _start_signal(op, result))
    if lower > upper:
        raise CertificationError(f"internal inconsistency: lower bound {lower!r} above certified bound {upper!r}")
    return ConvNorm(upper, lower, result.exact, result.method, time.perf_counter() - started)
