"""Structured linear maps of convolutional networks, acting on flat vectors.

A layer of a CNN is linear between its activations: a convolution (no bias),
an average pooling, an eval-mode BatchNorm (per-channel scaling) or a dense
matrix after ``Flatten``.  The classes here describe such maps without storing
their (often huge) matrices:

* :class:`ConvOperator` — ``nn.Conv1d`` / ``nn.Conv2d`` without bias, any
  stride, symmetric padding (zeros, circular, reflect), dilation and groups;
  average poolings are depthwise convolutions (:func:`avg_pool_operator`,
  :func:`global_avg_pool_operator`);
* :class:`DiagonalOperator` — elementwise scaling, per channel or per entry;
* :class:`ComposedOperator` — ``parts[-1] ∘ … ∘ parts[0]``, parts being
  operators or dense float64 matrices.

Vectors are flat: a feature map of shape ``(C, H, W)`` is flattened C-major,
exactly as ``torch.flatten`` / ``nn.Flatten`` do.  Every operator gives its
forward map and adjoint in float64 (``matvec`` / ``rmatvec``), a differentiable
torch forward (``torch_apply``), its dense matrix when that fits
(``to_dense``), certified upper bounds of its ℓ2 and induced ℓ∞ norms as
``(mantissa, exponent)`` pairs (value ``mantissa · 2^exponent``, so products
cannot overflow) and a power-iteration lower bound of its ℓ2 norm.

Certified means: every floating-point rounding is covered by a stated margin
(the standard model ``fl(a ∘ b) = (a ∘ b)(1 + δ)``, ``|δ| ≤ u``, plus an
absolute ``η/2`` per multiplication for gradual underflow; Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., §3.1–3.5), as in
:func:`lipsdp.certificate.spectral_norm_bound`.

torch is imported inside the functions that need it: this module imports without it.
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from .errors import (
    CertificationError,
    InvalidOptionError,
    InvalidWeightsError,
    NotApplicableError,
    ProblemTooLargeError,
    ShapeMismatchError,
)
from .scaled import Scaled, from_float, normalized, order_key, times, to_float_up


UNIT_ROUNDOFF = np.finfo(float).eps / 2
_EPS = float(np.finfo(float).eps)
_ETA = float(np.nextafter(0.0, 1.0))  # smallest positive subnormal: the absolute error unit of underflow

#: padding modes whose convolution is a linear map handled here (torch's names)
PADDING_MODES = ("zeros", "circular", "reflect")
#: a composition with at most this many matrix entries is also bounded through its dense matrix
DENSE_NORM_MAX_ENTRIES = 4_000_000
#: ... and at most this many columns: the dense matrix costs one pass through every part per column
DENSE_NORM_MAX_COLUMNS = 4096
#: memory per chunk of identity columns in :meth:`LinearOperator.to_dense`
_CHUNK_BYTES = 64 << 20


def _gamma(n: int) -> float:
    """``γ_n = n u / (1 − n u)`` (Higham, Lemma 3.1)."""
    nu = n * UNIT_ROUNDOFF
    if nu >= 0.5:
        return math.inf
    return nu / (1 - nu)


def max_row_abs_sum_bound(rows: np.ndarray) -> Scaled:
    """Certified upper bound of ``max_i Σ_j |R_ij|`` of a 2-D float64 array, as ``(mantissa, exponent)``.

    ``R`` is scaled by the power of two that brings its largest entry into
    ``[1/2, 1)``, so the sums cannot overflow.  A sum of ``n`` non-negative
    terms is within a relative ``γ_{n−1}`` of its float64 value (Higham,
    Lemma 3.1 / eq. 4.4, any summation order); the scaling is exact except
    for entries pushed into the subnormal range, which lose at most ``η/2``
    each, ``n η/2 < u ≤ u · max row sum`` in all.  Both are covered by the
    factor ``1 + 2(n + 1) ε``, whose product is rounded up.
    """
    rows = np.asarray(rows, dtype=float)
    if rows.size == 0 or not np.any(rows):
        return 0.0, 0
    e = int(np.frexp(np.max(np.abs(rows)))[1])
    sums = np.sum(np.abs(np.ldexp(rows, -e)), axis=1)
    n = rows.shape[1]
    mantissa, e_sum = times(from_float(np.max(sums)), from_float(1 + 2 * (n + 1) * _EPS))
    return mantissa, e_sum + e


def frobenius_bound(matrix: np.ndarray) -> float:
    """An upper bound of ``‖M‖_F`` as a float (``inf`` if it overflows).

    ``M`` is scaled by the power of two that brings its largest entry into
    ``[1/2, 1)``; the sum of the ``k`` squares is then at least ``1/4``, so its
    rounding (relative ``γ_{k+1}``) and the underflow of tiny squares and
    scaled entries (absolute, below ``k η < u/4``) are covered by the factor
    ``1 + 4 γ_{k+1}``; the square root and the rescaling round up one step each.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.size == 0 or not np.any(matrix):
        return 0.0
    e = int(np.frexp(np.max(np.abs(matrix)))[1])
    scaled = np.ldexp(matrix, -e)
    squares = float(np.vdot(scaled, scaled)) * (1 + 4 * _gamma(matrix.size + 1))
    mantissa, exponent = from_float(np.nextafter(math.sqrt(squares), np.inf))
    return to_float_up((mantissa, exponent + e))


def _dense_spectral_bound(matrix: np.ndarray) -> Scaled:
    from .certificate import spectral_norm_bound

    return normalized(spectral_norm_bound(matrix))


# ------------------------------------------------------------------------------- input checks
def _real_array(value: Any, what: str) -> np.ndarray:
    """A read-only float64 copy of ``value`` (numpy or torch), refused if complex, non-numeric, NaN or Inf."""
    if hasattr(value, "detach"):  # a torch tensor (torch is not imported here)
        if value.is_complex():
            raise InvalidWeightsError(f"{what} is complex; lipsdp bounds real networks")
        value = value.detach().cpu().double().numpy()
    raw = np.asarray(value)
    if np.iscomplexobj(raw):
        raise InvalidWeightsError(
            f"{what} is complex; lipsdp bounds real networks (take .real only if that is the model)"
        )
    if raw.dtype.kind not in "biuf":
        raise InvalidWeightsError(f"{what} has non-numeric entries (dtype {raw.dtype})")
    arr = np.array(raw, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InvalidWeightsError(f"{what} contains {bad} NaN/Inf value(s)")
    arr.setflags(write=False)
    return arr


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidOptionError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _shape(value: Any, what: str) -> tuple[int, ...]:
    """A tuple of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(_int(v, what) for v in value)
    except TypeError:
        raise InvalidOptionError(f"{what} must be a tuple of integers, got {value!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ShapeMismatchError(f"{what} must be a non-empty tuple of positive sizes, got {dims}")
    return dims


def _per_dim(value: Any, d: int, what: str, minimum: int) -> tuple[int, ...]:
    """One int per spatial dimension (an int is repeated, as torch does)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * d
    try:
        out = tuple(_int(v, what) for v in value)
    except TypeError:
        raise InvalidOptionError(f"{what} must be an int or a tuple of {d} ints, got {value!r}") from None
    if len(out) != d:
        raise ShapeMismatchError(f"{what} needs one value per spatial dimension ({d}), got {out}")
    if any(v < minimum for v in out):
        raise ShapeMismatchError(f"{what} must be >= {minimum} in every dimension, got {out}")
    return out


def _as_batch(x: Any, size: int, what: str) -> tuple[np.ndarray, bool]:
    """``x`` as a C-contiguous float64 ``(batch, size)`` array, and whether it was one vector."""
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise InvalidWeightsError(f"{what} is complex")
    arr = np.array(arr, dtype=np.float64, order="C", copy=True)
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != size:
        raise ShapeMismatchError(f"{what}: expected shape ({size},) or (batch, {size}), got {np.shape(x)}")
    return arr, single


def _fmt(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


# ------------------------------------------------------------------------------- base class
class LinearOperator(abc.ABC):
    """A linear map between flat float64 vectors with structured in/out shapes.

    Subclasses are immutable.  ``in_shape`` / ``out_shape`` are the feature-map
    shapes (e.g. ``(C, H, W)``), the vectors are their C-major flattenings.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_size(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_size, in_size)``, the shape of the matrix."""
        return self.out_size, self.in_size

    # -- maps
    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A x`` for ``x`` of shape ``(in_size,)`` or ``(batch, in_size)``."""
        batch, single = _as_batch(x, self.in_size, f"input of {self.describe()}")
        y = self._matvec_batch(batch)
        return y[0] if single else y

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``Aᵀ y`` for ``y`` of shape ``(out_size,)`` or ``(batch, out_size)``."""
        batch, single = _as_batch(y, self.out_size, f"adjoint input of {self.describe()}")
        x = self._rmatvec_batch(batch)
        return x[0] if single else x

    @abc.abstractmethod
    def _matvec_batch(self, x: np.ndarray) -> np.ndarray:
        """``(batch, in_size) -> (batch, out_size)``."""

    @abc.abstractmethod
    def _rmatvec_batch(self, y: np.ndarray) -> np.ndarray:
        """``(batch, out_size) -> (batch, in_size)``."""

    @abc.abstractmethod
    def torch_apply(self, x):
        """``A`` on a torch batch ``(batch, *in_shape) -> (batch, *out_shape)``; differentiable, in ``x``'s dtype
        and device (no numpy round trip)."""

    def _check_torch_input(self, x) -> None:
        if tuple(x.shape[1:]) != tuple(self.in_shape) or x.dim() != len(self.in_shape) + 1:
            raise ShapeMismatchError(
                f"{self.describe()}: torch input must have shape (batch, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}"
            )

    # -- dense matrix
    def to_dense(self, max_bytes: int = 2 << 30) -> np.ndarray:
        """The ``(out_size, in_size)`` float64 matrix, built by ``matvec`` on chunks of identity columns.

        Exact for a zero-padded convolution, a diagonal and a single dense part
        (each entry is one coefficient times 1).  With circular/reflect padding
        an entry where several taps read the same input is a rounded sum of
        kernel entries (relative error ``≤ γ_n``), and a composition's entries
        are rounded products: a bound computed on this matrix must add that
        error (as :meth:`ComposedOperator._dense_bounds` does).

        Raises
        ------
        ProblemTooLargeError
            If the matrix needs more than ``max_bytes``.
        """
        n_bytes = 8 * self.out_size * self.in_size
        if n_bytes > max_bytes:
            raise ProblemTooLargeError(
                f"the dense matrix of {self.describe()} is {self.out_size} x {self.in_size} "
                f"({n_bytes / 2**30:.2f} GiB > max_bytes = {max_bytes / 2**30:.2f} GiB); work with the operator "
                f"instead (matvec/rmatvec, norm_bound, inf_norm_bound, norm_lower), use a smaller input size, "
                f"or raise max_bytes if the memory is there"
            )
        dense = np.empty((self.out_size, self.in_size))
        chunk = max(1, min(self.in_size, _CHUNK_BYTES // (8 * (self.in_size + self.out_size))))
        for start in range(0, self.in_size, chunk):
            stop = min(start + chunk, self.in_size)
            unit = np.zeros((stop - start, self.in_size))
            unit[np.arange(stop - start), np.arange(start, stop)] = 1.0
            dense[:, start:stop] = self._matvec_batch(unit).T
        return dense

    # -- norms
    @abc.abstractmethod
    def norm_bound(self) -> Scaled:
        """Certified upper bound ``m · 2^e ≥ ‖A‖₂`` as ``(m, e)``."""

    @abc.abstractmethod
    def inf_norm_bound(self) -> Scaled:
        """Certified upper bound ``m · 2^e ≥ ‖A‖_∞ = max_i Σ_j |A_ij|`` as ``(m, e)``."""

    def norm_lower(self, iterations: int = 50, seed: int = 0) -> float:
        """Lower bound of ``‖A‖₂`` by power iteration on ``AᵀA`` (von Mises).

        Returns ``‖A v‖ / ‖v‖`` at the final iterate ``v``, computed in float64:
        a value of the map, hence ``≤ ‖A‖₂`` up to the rounding of one
        ``matvec`` and two norms (relative ``O(n u)``).
        """
        iterations = _int(iterations, "iterations")
        v = np.random.default_rng(seed).standard_normal(self.in_size)
        v /= np.linalg.norm(v)
        for _ in range(iterations):
            w = self._rmatvec_batch(self._matvec_batch(v[None, :]))[0]
            norm = np.linalg.norm(w)
            if not np.isfinite(norm) or norm == 0:
                break
            v = w / norm
        image = np.linalg.norm(self._matvec_batch(v[None, :])[0])
        return float(image / np.linalg.norm(v))

    # -- algebra
    def compose(self, after: "LinearOperator | np.ndarray") -> "LinearOperator | np.ndarray":
        """The map ``after ∘ self`` (see :func:`compose` for the exact merge rules)."""
        return compose(self, after)

    @abc.abstractmethod
    def scaled(self, factor: float) -> "LinearOperator":
        """``factor · A`` (exact when ``factor`` is a power of two and nothing under- or overflows)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description for messages."""

    @abc.abstractmethod
    def max_abs_entry(self) -> float:
        """Largest absolute coefficient that defines the map (kernel, scale or matrix entry)."""

    # -- certification helpers used by ComposedOperator
    @abc.abstractmethod
    def _abs(self) -> "LinearOperator":
        """An operator ``B`` with ``B ≥ |A|`` entrywise whose matvec on non-negative vectors stays non-negative."""

    @abc.abstractmethod
    def _dot_length(self) -> int:
        """The most products summed for one output entry of ``matvec`` (for ``γ_n``)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


def _factor(value: Any) -> float:
    factor = float(value)
    if not np.isfinite(factor):
        raise InvalidWeightsError(f"scaling factor must be finite, got {value!r}")
    return factor


# ------------------------------------------------------------------------------- convolution
@dataclass(frozen=True, eq=False, repr=False)
class ConvOperator(LinearOperator):
    """``nn.Conv1d`` / ``nn.Conv2d`` without bias as a linear map of flat vectors.

    The map is ``y[o, p] = Σ_{c ∈ group(o)} Σ_κ K[o, c, κ] · x̂[c, s·p + d·κ]``
    with ``x̂`` the input padded by ``padding`` on both sides of every spatial
    dimension (zeros, circular wrap or reflection, as torch pads), ``s`` the
    stride and ``d`` the dilation; the output size per dimension is
    ``⌊(L + 2p − d(k − 1) − 1)/s⌋ + 1``, as torch computes it.

    Parameters
    ----------
    kernel
        ``(c_out, c_in/groups, *k)`` weights, copied to a read-only float64 array.
    in_shape
        ``(c_in, *spatial)``, one or two spatial dimensions.
    stride, padding, dilation
        One int per spatial dimension (an int is repeated).
    padding_mode
        ``"zeros"``, ``"circular"`` or ``"reflect"``.
    groups
        Number of channel groups (``c_in`` for depthwise).

    Raises
    ------
    InvalidWeightsError
        NaN/Inf, complex or non-numeric kernel.
    ShapeMismatchError
        Kernel, channels and groups inconsistent, an output size below 1,
        reflect padding not below the input size, circular padding above it.
    NotApplicableError
        ``padding_mode="replicate"`` (or another mode that is not supported).
    """

    kernel: np.ndarray
    in_shape: tuple[int, ...]
    stride: tuple[int, ...] = 1
    padding: tuple[int, ...] = 0
    padding_mode: str = "zeros"
    dilation: tuple[int, ...] = 1
    groups: int = 1
    out_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        kernel = _real_array(self.kernel, "convolution kernel")
        if kernel.ndim not in (3, 4):
            raise ShapeMismatchError(
                f"convolution kernel must be (c_out, c_in/groups, *k) with 1 or 2 spatial dimensions "
                f"(Conv1d/Conv2d), got shape {kernel.shape}"
            )
        if kernel.size == 0:
            raise ShapeMismatchError(f"convolution kernel of shape {kernel.shape} is empty")
        d = kernel.ndim - 2
        in_shape = _shape(self.in_shape, "in_shape of the convolution")
        if len(in_shape) != d + 1:
            raise ShapeMismatchError(
                f"a Conv{d}d kernel {kernel.shape} acts on inputs (c_in, {'L' if d == 1 else 'H, W'}), "
                f"got in_shape {in_shape}"
            )
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("kernel", kernel)
        set_("in_shape", in_shape)
        set_("stride", _per_dim(self.stride, d, "stride", 1))
        set_("padding", _per_dim(self.padding, d, "padding", 0))
        set_("dilation", _per_dim(self.dilation, d, "dilation", 1))
        set_("groups", _int(self.groups, "groups"))
        self._check_padding_mode()
        self._check_channels()
        set_("out_shape", (kernel.shape[0],) + self._out_spatial())

    def _check_padding_mode(self) -> None:
        if self.padding_mode not in PADDING_MODES:
            raise NotApplicableError(
                f"padding_mode {self.padding_mode!r} is not supported; supported: {', '.join(PADDING_MODES)} "
                f"(replicate padding is not handled by the convolution norm bounds)"
            )
        spatial = self.in_shape[1:]
        if self.padding_mode == "reflect" and any(p >= n for p, n in zip(self.padding, spatial)):
            raise ShapeMismatchError(
                f"reflect padding {self.padding} must be smaller than the input size {spatial} in every dimension"
            )
        if self.padding_mode == "circular" and any(p > n for p, n in zip(self.padding, spatial)):
            raise ShapeMismatchError(
                f"circular padding {self.padding} must not exceed the input size {spatial} (it would wrap twice)"
            )

    def _check_channels(self) -> None:
        c_out, c_in_group = self.kernel.shape[:2]
        c_in, groups = self.in_shape[0], self.groups
        if groups < 1 or c_in % groups or c_out % groups:
            raise ShapeMismatchError(
                f"groups={groups} must be >= 1 and divide both c_in={c_in} and c_out={c_out}"
            )
        if c_in_group != c_in // groups:
            raise ShapeMismatchError(
                f"kernel {self.kernel.shape} expects {c_in_group * groups} input channels with groups={groups}, "
                f"but in_shape {self.in_shape} has {c_in}"
            )

    def _out_spatial(self) -> tuple[int, ...]:
        sizes = []
        for n, k, s, p, dil in zip(self.in_shape[1:], self.kernel.shape[2:], self.stride, self.padding, self.dilation):
            span = n + 2 * p - dil * (k - 1) - 1
            if span < 0:
                raise ShapeMismatchError(
                    f"kernel {self.kernel.shape[2:]} (dilation {self.dilation}) is larger than the padded input "
                    f"{self.in_shape[1:]} + 2 x {self.padding}: the output would be empty"
                )
            sizes.append(span // s + 1)
        return tuple(sizes)

    # -- constructors
    @classmethod
    def from_torch(cls, module, in_shape: Sequence[int]) -> "ConvOperator":
        """The operator of an ``nn.Conv1d`` / ``nn.Conv2d`` acting on inputs of shape ``in_shape`` (no batch).

        The weight is copied in float64 (exact from float32/16); the bias is not
        part of the linear map (see :func:`conv_bias`).  String padding
        ``"valid"`` is 0; ``"same"`` is ``d(k − 1)/2`` per side, refused when
        ``d(k − 1)`` is odd (torch then pads one more on the right).

        Raises
        ------
        NotApplicableError
            Not a Conv1d/Conv2d, asymmetric ``"same"`` padding, or an unsupported padding mode.
        """
        return cls.reader(module)(in_shape)

    @classmethod
    def reader(cls, module) -> Callable[[Sequence[int]], "ConvOperator"]:
        """``in_shape ↦`` the operator of ``module``, with its weight and geometry read *now*.

        A converter reads a module before the shape reaching it is known; reading the weight at
        once keeps a parametrized module's weight the one seen while it was protected from side
        effects (:func:`lipsdp.torch_io._convert`).
        """
        from .activation_registry import qualified_type_name

        # by exact type name, so TorchScript modules (which keep these attributes) are read too
        if qualified_type_name(module) not in ("torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.Conv2d"):
            raise NotApplicableError(
                f"ConvOperator.from_torch reads nn.Conv1d and nn.Conv2d modules, got {type(module).__name__}"
            )
        weight = _real_array(module.weight, f"weight of {type(module).__name__}")
        geometry = (tuple(module.stride), _torch_padding(module), module.padding_mode, tuple(module.dilation),
                    int(module.groups))
        return lambda in_shape: cls(weight, tuple(in_shape), *geometry)

    # -- torch forward / adjoint
    def _functional(self):
        import torch.nn.functional as F

        d = len(self.in_shape) - 1
        return (F.conv1d, F.conv_transpose1d) if d == 1 else (F.conv2d, F.conv_transpose2d)

    def _pad_tuple(self) -> tuple[int, ...]:
        """``F.pad``'s argument: (left, right) per dimension, the last dimension first."""
        return tuple(p for pad in reversed(self.padding) for p in (pad, pad))

    def _kernel_tensor(self, dtype=None, device=None):
        import torch

        tensor = torch.from_numpy(np.array(self.kernel))  # a writable copy (from_numpy warns on read-only arrays)
        return tensor if dtype is None and device is None else tensor.to(dtype=dtype, device=device)

    def _forward(self, x, weight):
        import torch.nn.functional as F

        conv, _ = self._functional()
        if self.padding_mode == "zeros":
            return conv(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        padded = F.pad(x, self._pad_tuple(), mode=self.padding_mode)
        return conv(padded, weight, None, self.stride, 0, self.dilation, self.groups)

    def _matvec_batch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            inputs = torch.from_numpy(x).reshape((x.shape[0],) + self.in_shape)
            return self._forward(inputs, self._kernel_tensor()).reshape(x.shape[0], -1).numpy()

    def _rmatvec_batch(self, y: np.ndarray) -> np.ndarray:
        """Adjoint: ``conv_transpose`` (the adjoint of a zero-padded conv), then the adjoint of the padding.

        For circular/reflect padding ``A = C P`` with ``P`` the padding, a 0/1
        matrix with one 1 per row (padded entry ← its source); ``Pᵀ`` adds each
        padded entry back onto its source (:attr:`_pad_source`).
        """
        import torch

        _, conv_t = self._functional()
        batch = y.shape[0]
        grads = torch.from_numpy(y).reshape((batch,) + self.out_shape)
        zeros = self.padding_mode == "zeros"
        padding = self.padding if zeros else (0,) * len(self.padding)
        padded_in = tuple(n + (0 if zeros else 2 * p) for n, p in zip(self.in_shape[1:], self.padding))
        # output_padding: the rows/columns that the last stride step skips, so that the result has the input's size
        extra = tuple(
            n - ((o - 1) * s - 2 * p + dil * (k - 1) + 1)
            for n, o, s, p, dil, k in zip(padded_in, self.out_shape[1:], self.stride, padding, self.dilation,
                                          self.kernel.shape[2:])
        )
        with torch.no_grad():
            back = conv_t(grads, self._kernel_tensor(), None, self.stride, padding, extra, self.groups, self.dilation)
            back = back.reshape(batch, -1)
            if zeros:
                return back.numpy()
            folded = torch.zeros((batch, self.in_size), dtype=torch.float64)
            return folded.index_add_(1, self._pad_source, back).numpy()

    @functools.cached_property
    def _pad_source(self):
        """For each entry of the padded input (flat), the flat index of the input entry it copies."""
        import torch
        import torch.nn.functional as F

        index = torch.arange(self.in_size, dtype=torch.float64).reshape((1,) + self.in_shape)  # exact below 2^53
        return F.pad(index, self._pad_tuple(), mode=self.padding_mode).reshape(-1).long()

    def torch_apply(self, x):
        self._check_torch_input(x)
        return self._forward(x, self._kernel_tensor(dtype=x.dtype, device=x.device))

    # -- norms
    def norm_bound(self) -> Scaled:
        """Certified ``‖A‖₂`` bound from :func:`lipsdp.conv_norms.conv_norm_bound`."""
        from .conv_norms import conv_norm_bound

        return normalized(conv_norm_bound(self))

    def inf_norm_bound(self) -> Scaled:
        """Certified ``‖A‖_∞ ≤ max_o Σ_{c,κ} |K[o, c, κ]|``.

        Row ``(o, p)`` of ``A`` is ``Σ_{c,κ} K[o, c, κ] e_{idx(c, κ)}`` where
        ``idx`` is the input entry that the padded position reads (zeros
        padding drops the terms that read padding); for circular and reflect
        padding several taps may read the same entry, and the triangle
        inequality bounds the row's absolute sum by the kernel's in every
        mode.  The sum is rounded up by :func:`max_row_abs_sum_bound`.
        """
        return max_row_abs_sum_bound(self.kernel.reshape(self.kernel.shape[0], -1))

    # -- algebra and description
    def scaled(self, factor: float) -> "ConvOperator":
        return replace(self, kernel=self.kernel * _factor(factor))

    def with_kernel(self, kernel: np.ndarray) -> "ConvOperator":
        """The same convolution geometry with another kernel of the same shape."""
        kernel = np.asarray(kernel)
        if kernel.shape != self.kernel.shape:
            raise ShapeMismatchError(f"new kernel has shape {kernel.shape}, expected {self.kernel.shape}")
        return replace(self, kernel=kernel)

    def describe(self) -> str:
        d = len(self.in_shape) - 1
        extra = "" if all(v == 1 for v in self.dilation) else f", d={_fmt(self.dilation)}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        return (f"Conv{d}d({self.in_shape[0]}->{self.out_shape[0]}, k={_fmt(self.kernel.shape[2:])}, "
                f"s={_fmt(self.stride)}, p={_fmt(self.padding)} {self.padding_mode}{extra}) "
                f"on {'x'.join(map(str, self.in_shape))}")

    def max_abs_entry(self) -> float:
        return float(np.max(np.abs(self.kernel)))

    def _abs(self) -> "ConvOperator":
        # |A| ≤ the same geometry with |K| entrywise: an entry of A is a sum of kernel entries
        return replace(self, kernel=np.abs(self.kernel))

    def _dot_length(self) -> int:
        # torch's float64 CPU convolution sums the products of each output (im2col + GEMM; no Winograd/FFT in float64)
        return int(np.prod(self.kernel.shape[1:]))

    @property
    def group_out(self) -> int:
        """Output channels per group."""
        return self.out_shape[0] // self.groups

    @property
    def group_in(self) -> int:
        """Input channels per group."""
        return self.in_shape[0] // self.groups


def _torch_padding(module) -> tuple[int, ...]:
    """A conv module's symmetric padding per spatial dimension (string padding resolved as torch does)."""
    padding = module.padding
    kernel = tuple(module.kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(kernel)
        if padding == "same":
            total = [dil * (k - 1) for dil, k in zip(module.dilation, kernel)]
            if any(t % 2 for t in total):
                raise NotApplicableError(
                    f"padding='same' with kernel {kernel} and dilation {tuple(module.dilation)} pads one more on the "
                    f"right than on the left (torch's rule for an even dilation*(k-1)); only symmetric padding is "
                    f"supported: use an odd kernel size or explicit padding"
                )
            return tuple(t // 2 for t in total)
        raise NotApplicableError(f"unknown string padding {padding!r} (torch knows 'same' and 'valid')")
    return tuple(int(p) for p in padding)


def conv_bias(module, out_shape: Sequence[int]) -> np.ndarray:
    """The bias of a conv module broadcast over the output positions, flat C-major (zeros when it has none).

    Raises
    ------
    ShapeMismatchError
        ``out_shape[0]`` is not the module's number of output channels.
    InvalidWeightsError
        NaN/Inf or complex bias.
    """
    out_shape = _shape(out_shape, "out_shape of the convolution")
    c_out = int(module.out_channels)
    if out_shape[0] != c_out:
        raise ShapeMismatchError(f"out_shape {out_shape} does not start with the module's {c_out} output channels")
    positions = int(np.prod(out_shape[1:]))
    if module.bias is None:
        return np.zeros(c_out * positions)
    bias = _real_array(module.bias, f"bias of {type(module).__name__}")
    return np.repeat(bias, positions)


# ------------------------------------------------------------------------------- pooling
def pool_output_size(n: int, k: int, s: int, p: int, ceil_mode: bool, d: int = 1) -> int:
    """torch's ``pooling_output_shape`` (aten/src/ATen/native/Pool.h) along one axis."""
    numerator = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    size = numerator // s + 1
    if ceil_mode and (size - 1) * s >= n + p:
        size -= 1
    return size


def avg_pool_operator(in_shape: Sequence[int], kernel_size, stride=None, padding=0, count_include_pad: bool = True,
                      ceil_mode: bool = False, divisor_override: int | None = None) -> ConvOperator:
    """``nn.AvgPool1d`` / ``nn.AvgPool2d`` as a depthwise convolution with kernel ``1/∏k`` and zero padding.

    The kernel entry is ``fl(1/∏k)`` (or ``fl(1/divisor_override)``): exact when
    the divisor is a power of two, otherwise within half an ulp of the
    divisor's reciprocal, which torch's ``sum / divisor`` rounds differently.

    Raises
    ------
    NotApplicableError
        ``count_include_pad=False`` with padding (border windows divide by
        fewer entries, so the map is not a convolution), or ``ceil_mode=True``
        where it adds a partial window (same reason).
    ShapeMismatchError
        Padding above half the kernel (torch refuses it too) or an empty output.
    """
    in_shape = _shape(in_shape, "in_shape of the average pooling")
    d = len(in_shape) - 1
    if d not in (1, 2):
        raise ShapeMismatchError(f"average pooling acts on (C, L) or (C, H, W) inputs, got in_shape {in_shape}")
    kernel = _per_dim(kernel_size, d, "kernel_size", 1)
    # torch: a missing stride is the kernel size
    empty = stride is None or (isinstance(stride, (tuple, list)) and not stride)
    stride = kernel if empty else _per_dim(stride, d, "stride", 1)
    padding = _per_dim(padding, d, "padding", 0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ShapeMismatchError(f"pooling padding {padding} must be at most half the kernel size {kernel}")
    if divisor_override is None and not count_include_pad and any(padding):
        raise NotApplicableError(
            "count_include_pad=False with padding > 0 divides border windows by fewer entries, so the pooling is "
            "not a convolution; use count_include_pad=True (torch's default) or padding=0"
        )
    if ceil_mode and any(pool_output_size(n, k, s, p, True) != pool_output_size(n, k, s, p, False)
                         for n, k, s, p in zip(in_shape[1:], kernel, stride, padding)):
        raise NotApplicableError(
            f"ceil_mode=True adds a partial window at the border of input {in_shape[1:]} (kernel {kernel}, stride "
            f"{stride}), which is divided by fewer entries, so the pooling is not a convolution; use ceil_mode=False "
            f"or an input size that the windows tile"
        )
    divisor = int(np.prod(kernel)) if divisor_override is None else _int(divisor_override, "divisor_override")
    if divisor < 1:
        raise ShapeMismatchError(f"divisor_override must be positive, got {divisor}")
    channels = in_shape[0]
    weights = np.full((channels, 1) + kernel, 1.0 / divisor)
    return ConvOperator(weights, in_shape, stride, padding, "zeros", (1,) * d, channels)


def global_avg_pool_operator(in_shape: Sequence[int]) -> ConvOperator:
    """``nn.AdaptiveAvgPool2d(1)`` / ``AdaptiveAvgPool1d(1)``: the mean of each channel, output ``(C, 1, …)``.

    A depthwise kernel covering the whole map with entries ``fl(1/∏ spatial)``
    (exact when the map size is a power of two).
    """
    in_shape = _shape(in_shape, "in_shape of the global average pooling")
    if len(in_shape) not in (2, 3):
        raise ShapeMismatchError(f"global average pooling acts on (C, L) or (C, H, W) inputs, got in_shape {in_shape}")
    spatial = in_shape[1:]
    weights = np.full((in_shape[0], 1) + spatial, 1.0 / int(np.prod(spatial)))
    return ConvOperator(weights, in_shape, 1, 0, "zeros", 1, in_shape[0])


# ------------------------------------------------------------------------------- diagonal
@dataclass(frozen=True, eq=False, repr=False, init=False)
class DiagonalOperator(LinearOperator):
    """Elementwise scaling ``x ↦ s ⊙ x`` on feature maps of shape ``in_shape`` (eval-mode BatchNorm).

    ``DiagonalOperator(scale, shape)``: ``scale`` has either one entry per
    channel (``shape[0]`` entries, broadcast over the spatial positions) or one
    per entry (``∏ shape``).  Its ℓ2 and ℓ∞ norms are both ``max |s|`` (exact).
    """

    scale: np.ndarray
    in_shape: tuple[int, ...]

    def __init__(self, scale: Any, shape: Sequence[int]):
        shape = _shape(shape, "shape of the diagonal operator")
        values = _real_array(scale, "diagonal scale").reshape(-1)
        size = int(np.prod(shape))
        if values.size not in (shape[0], size):
            raise ShapeMismatchError(
                f"diagonal scale has {values.size} entries; for shape {shape} give {shape[0]} (one per channel) "
                f"or {size} (one per entry)"
            )
        values.setflags(write=False)
        object.__setattr__(self, "scale", values)
        object.__setattr__(self, "in_shape", shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    @property
    def full_scale(self) -> np.ndarray:
        """The scale of every entry, flat C-major."""
        if self.scale.size == self.in_size:
            return self.scale
        return np.repeat(self.scale, self.in_size // self.in_shape[0])

    @property
    def channel_scale(self) -> np.ndarray | None:
        """One scale per channel if the scale is constant over each channel's positions, else None."""
        if self.scale.size == self.in_shape[0]:
            return self.scale
        per_channel = self.scale.reshape(self.in_shape[0], -1)
        if np.all(per_channel == per_channel[:, :1]):
            return per_channel[:, 0].copy()
        return None

    def _matvec_batch(self, x: np.ndarray) -> np.ndarray:
        return x * self.full_scale

    def _rmatvec_batch(self, y: np.ndarray) -> np.ndarray:
        return y * self.full_scale

    def torch_apply(self, x):
        import torch

        self._check_torch_input(x)
        scale = torch.from_numpy(np.array(self.scale)).to(dtype=x.dtype, device=x.device)
        if self.scale.size == self.in_size:
            return x * scale.reshape(self.in_shape)
        return x * scale.reshape((-1,) + (1,) * (len(self.in_shape) - 1))

    def norm_bound(self) -> Scaled:
        return from_float(self.max_abs_entry())

    def inf_norm_bound(self) -> Scaled:
        return from_float(self.max_abs_entry())

    def scaled(self, factor: float) -> "DiagonalOperator":
        return DiagonalOperator(self.scale * _factor(factor), self.in_shape)

    def describe(self) -> str:
        per_channel = self.scale.size == self.in_shape[0] and self.in_size != self.in_shape[0]
        kind = "ChannelScale" if per_channel else "Diagonal"
        return f"{kind}({self.scale.size}) on {'x'.join(map(str, self.in_shape))}"

    def max_abs_entry(self) -> float:
        return float(np.max(np.abs(self.scale)))

    def _abs(self) -> "DiagonalOperator":
        return DiagonalOperator(np.abs(self.scale), self.in_shape)

    def _dot_length(self) -> int:
        return 1


# ------------------------------------------------------------------------------- composition
def _dense_part(value: Any) -> np.ndarray:
    matrix = _real_array(value, "dense part of a composed operator")
    if matrix.ndim != 2:
        raise ShapeMismatchError(f"a dense part must be an (out, in) matrix, got shape {matrix.shape}")
    return matrix


def _in_size(part) -> int:
    return part.in_size if isinstance(part, LinearOperator) else part.shape[1]


def _out_size(part) -> int:
    return part.out_size if isinstance(part, LinearOperator) else part.shape[0]


def _describe(part) -> str:
    return part.describe() if isinstance(part, LinearOperator) else f"Dense({part.shape[1]}->{part.shape[0]})"


def _flat_parts(value: Any) -> list:
    if isinstance(value, ComposedOperator):
        return list(value.parts)
    if isinstance(value, LinearOperator):
        return [value]
    return [_dense_part(value)]


@dataclass(frozen=True, eq=False, repr=False)
class ComposedOperator(LinearOperator):
    """``parts[-1] ∘ … ∘ parts[0]``; a part is a :class:`LinearOperator` or a dense ``(out, in)`` matrix.

    Nested compositions are flattened; consecutive parts must agree in flat
    size (a dense matrix acts on the flat vector, so ``Flatten`` is implicit).
    No parts are merged here (see :func:`compose` for that).
    """

    parts: tuple
    in_shape: tuple[int, ...] = field(init=False)
    out_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.parts, (LinearOperator, np.ndarray)):
            raise InvalidOptionError("ComposedOperator takes a sequence of parts, not a single operator or matrix")
        parts = [p for value in self.parts for p in _flat_parts(value)]
        if not parts:
            raise ShapeMismatchError("a composed operator needs at least one part")
        for k, (first, second) in enumerate(zip(parts, parts[1:])):
            if _out_size(first) != _in_size(second):
                raise ShapeMismatchError(
                    f"part {k} ({_describe(first)}) has {_out_size(first)} outputs but part {k + 1} "
                    f"({_describe(second)}) takes {_in_size(second)} inputs"
                )
        first, last = parts[0], parts[-1]
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "in_shape", first.in_shape if isinstance(first, LinearOperator) else (first.shape[1],))
        object.__setattr__(self, "out_shape", last.out_shape if isinstance(last, LinearOperator) else (last.shape[0],))

    def _matvec_batch(self, x: np.ndarray) -> np.ndarray:
        for part in self.parts:
            x = part._matvec_batch(x) if isinstance(part, LinearOperator) else x @ part.T
        return x

    def _rmatvec_batch(self, y: np.ndarray) -> np.ndarray:
        for part in reversed(self.parts):
            y = part._rmatvec_batch(np.ascontiguousarray(y)) if isinstance(part, LinearOperator) else y @ part
        return y

    def torch_apply(self, x):
        import torch

        self._check_torch_input(x)
        batch = x.shape[0]
        for part in self.parts:
            if isinstance(part, LinearOperator):
                x = part.torch_apply(x.reshape((batch,) + part.in_shape))
            else:
                matrix = torch.from_numpy(np.array(part)).to(dtype=x.dtype, device=x.device)
                x = x.reshape(batch, -1) @ matrix.T
        return x.reshape((batch,) + self.out_shape)

    # -- norms
    def norm_bound(self) -> Scaled:
        """Certified ``‖A‖₂``: the product of the parts' bounds, or, for at most
        :data:`DENSE_NORM_MAX_ENTRIES` entries and :data:`DENSE_NORM_MAX_COLUMNS` columns, the
        dense route of :meth:`_dense_bounds` when that is smaller."""
        return self._best(2)

    def inf_norm_bound(self) -> Scaled:
        """Certified ``‖A‖_∞``: as :meth:`norm_bound`, with induced ∞-norms (submultiplicative too)."""
        return self._best(np.inf)

    def _best(self, norm) -> Scaled:
        candidates = [self._product_bound(norm)]
        if self.out_size * self.in_size <= DENSE_NORM_MAX_ENTRIES and self.in_size <= DENSE_NORM_MAX_COLUMNS:
            dense = self._dense_bounds(norm)
            if dense is not None:
                candidates.append(dense)
        return min(candidates, key=order_key)

    def _product_bound(self, norm) -> Scaled:
        """``∏ ‖A_i‖ ≥ ‖A‖`` (submultiplicativity), every product rounded up."""
        total: Scaled = (0.5, 1)
        for part in self.parts:
            total = times(total, _part_bound(part, norm))
        return total

    def _dense_bounds(self, norm) -> Scaled | None:
        """Certified bound of ``‖A‖`` from the computed dense matrix ``W̃`` (None when out of float range).

        Computing column ``j`` as ``fl(A_k … fl(A_1 e_j))`` gives, with ``n_i``
        the dot length of part ``i`` and ``N = Σ n_i`` (Higham, Lemmas 3.3 and
        3.5, eq. 3.11),

            ``|W̃ − A| ≤ γ_N P + U``,  ``P = |A_k| ⋯ |A_1|``,
            ``U = 2η Σ_i n_i ∏_{j>i} ‖A_j‖_∞``

        entrywise (``U`` collects the ``η/2`` that gradual underflow may add to
        each product, carried through the later parts; ``(1 + γ_N) ≤ 2``).
        ``P`` is bounded by the same computation on the ``_abs`` parts, whose
        float values are non-negative: ``P ≤ (P̃ + U)/(1 − γ_N)``.  Then
        ``‖A‖₂ ≤ ‖W̃‖₂ + γ_N ‖P‖_F + √(mn) U`` with ``‖W̃‖₂`` from
        :func:`lipsdp.certificate.spectral_norm_bound`, and
        ``‖A‖_∞ ≤ ‖W̃‖_∞ + γ_N ‖P‖_∞ + n U``.  The few float operations on these
        scalars (relative error below ``30 u``) are covered by a factor 1.01.
        """
        try:
            dense = self.to_dense()
            if not np.all(np.isfinite(dense)):
                return None
            head = _dense_spectral_bound(dense) if norm == 2 else max_row_abs_sum_bound(dense)
            abs_dense = ComposedOperator(tuple(_part_abs(p) for p in self.parts)).to_dense()
        except CertificationError:
            return None
        n_total = sum(_part_dot_length(p) for p in self.parts)
        gamma = 1.01 * _gamma(n_total)
        underflow = self._underflow_bound()
        m, n = dense.shape
        if gamma >= 0.5:
            return None
        if norm == 2:
            abs_norm = frobenius_bound(abs_dense)
            spread = math.sqrt(m * n)
        else:
            abs_norm = to_float_up(max_row_abs_sum_bound(abs_dense))
            spread = float(n)
        p_norm = (abs_norm + spread * underflow) / (1 - gamma)
        error = 1.01 * (gamma * p_norm + spread * underflow)
        value = to_float_up(head) + error
        if not math.isfinite(value) or 0 < value < np.finfo(float).tiny:
            return None
        return from_float(np.nextafter(value, np.inf))

    def _underflow_bound(self) -> float:
        """``U = 2η Σ_i n_i ∏_{j>i} ‖A_j‖_∞`` (inf when it overflows), see :meth:`_dense_bounds`."""
        total, later = 0.0, 1.0
        for part in reversed(self.parts):
            total += _part_dot_length(part) * later
            later *= to_float_up(_part_bound(part, np.inf))
        return 1.01 * 2 * _ETA * total if math.isfinite(total) else math.inf

    # -- algebra and description
    def scaled(self, factor: float) -> "ComposedOperator":
        factor = _factor(factor)
        first = self.parts[0]
        first = first.scaled(factor) if isinstance(first, LinearOperator) else first * factor
        return ComposedOperator((first,) + self.parts[1:])

    def describe(self) -> str:
        return " -> ".join(_describe(p) for p in self.parts)

    def max_abs_entry(self) -> float:
        """The largest coefficient over the parts (not of the product)."""
        return max(p.max_abs_entry() if isinstance(p, LinearOperator) else float(np.max(np.abs(p)))
                   for p in self.parts)

    def _abs(self) -> "ComposedOperator":
        return ComposedOperator(tuple(_part_abs(p) for p in self.parts))

    def _dot_length(self) -> int:
        return sum(_part_dot_length(p) for p in self.parts)


def _part_bound(part, norm) -> Scaled:
    if isinstance(part, LinearOperator):
        return part.norm_bound() if norm == 2 else part.inf_norm_bound()
    return _dense_spectral_bound(part) if norm == 2 else max_row_abs_sum_bound(part)


def _part_abs(part):
    return part._abs() if isinstance(part, LinearOperator) else np.abs(part)


def _part_dot_length(part) -> int:
    return part._dot_length() if isinstance(part, LinearOperator) else int(part.shape[1])


# ------------------------------------------------------------------------------- merge rules
def compose(first: LinearOperator | np.ndarray, second: LinearOperator | np.ndarray) -> LinearOperator | np.ndarray:
    """The map ``second ∘ first``, merging the two parts that meet when the algebra allows it exactly.

    Rules (each an identity of linear maps; the merged coefficients are the
    float64 products):

    * conv, then a diagonal constant on each output channel (same shape):
      one conv, kernel row ``o`` times ``s_o``;
    * a diagonal constant on each input channel, then a conv (same shape): one
      conv, kernel input channel ``c`` of group ``g`` times ``s_{g·c_in/groups + c}``
      (padding acts on each channel separately and linearly, in all three modes,
      so it commutes with per-channel scaling);
    * diagonal then diagonal (same shape): one diagonal;
    * a flat (1-D shape) diagonal next to a dense matrix: the dense matrix with
      columns (diagonal first) or rows (diagonal second) scaled;
    * everything else: a :class:`ComposedOperator` (nested ones flattened).

    Raises
    ------
    ShapeMismatchError
        The sizes do not chain.
    """
    a, b = _flat_parts(first), _flat_parts(second)
    if _out_size(a[-1]) != _in_size(b[0]):
        raise ShapeMismatchError(
            f"cannot compose {_describe(a[-1])} ({_out_size(a[-1])} outputs) with {_describe(b[0])} "
            f"({_in_size(b[0])} inputs)"
        )
    merged = _merge(a[-1], b[0])
    parts = a + b if merged is None else a[:-1] + [merged] + b[1:]
    return parts[0] if len(parts) == 1 else ComposedOperator(tuple(parts))


def _merge(first, second):
    """``second ∘ first`` as one part, or None when no exact rule applies (see :func:`compose`)."""
    if isinstance(first, ConvOperator) and isinstance(second, DiagonalOperator):
        scale = second.channel_scale if second.in_shape == first.out_shape else None
        if scale is not None:
            return first.with_kernel(first.kernel * scale.reshape((-1,) + (1,) * (first.kernel.ndim - 1)))
    if isinstance(first, DiagonalOperator) and isinstance(second, ConvOperator):
        scale = first.channel_scale if first.in_shape == second.in_shape else None
        if scale is not None:
            group = np.arange(second.out_shape[0]) // second.group_out
            index = group[:, None] * second.group_in + np.arange(second.group_in)[None, :]
            factors = scale[index].reshape(index.shape + (1,) * (second.kernel.ndim - 2))
            return second.with_kernel(second.kernel * factors)
    if isinstance(first, DiagonalOperator) and isinstance(second, DiagonalOperator):
        if first.in_shape == second.in_shape:
            both = first.channel_scale is not None and second.channel_scale is not None
            if both:
                return DiagonalOperator(first.channel_scale * second.channel_scale, first.in_shape)
            return DiagonalOperator(first.full_scale * second.full_scale, first.in_shape)
    if isinstance(first, DiagonalOperator) and isinstance(second, np.ndarray) and len(first.in_shape) == 1:
        return _dense_part(second * first.full_scale[None, :])
    if isinstance(first, np.ndarray) and isinstance(second, DiagonalOperator) and len(second.in_shape) == 1:
        return _dense_part(second.full_scale[:, None] * first)
    return None
