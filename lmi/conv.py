r"""Convolutional layers with a Lipschitz bound by construction, built in the Fourier domain.

All layers here act on images ``(batch, C, H, W)`` (or one image ``(C, H, W)``) of a
size ``(H, W)`` fixed at construction, with circular padding and stride 1.  On such
images a convolution is the same as one ``c_out x c_in`` complex matrix per frequency
(its *symbol*, see :mod:`lmi.fourier`), and the 2-norm of the convolution is the
largest norm of these matrices.  Each layer therefore imposes its constraint
frequency by frequency -- the per-frequency version of a dense construction:

* :class:`SandwichConv2d` -- the sandwich layer of Wang & Manchester (ICML 2023),
  per frequency the maths of :class:`lmi.layers.SandwichLinear`; a network-level
  LipSDP certificate with the slope-[0, 1] constraint (ReLU, tanh, …);
* :class:`CayleyConv2d` -- orthogonal (or semi-orthogonal) convolution by the
  Cayley transform of every frequency (Trockman & Kolter, ICLR 2021);
* :class:`BROConv2d` -- block reflector orthogonal convolution (Lai et al., 2025).

Free parameters are small real spatial kernels (``kernel_size``, default 3x3); their
symbols are transformed per frequency, which keeps the symbols conjugate-symmetric,
so the constrained spatial kernels are real, but they span the whole image.  Every
layer exports (:meth:`to_plain`) to plain ``nn.Conv2d`` modules with circular padding
and a kernel of the image size (``H + 1`` for even ``H``, see
:func:`lmi.fourier.symbol_to_conv_weight`), which ``lipsdp.estimate(..., input_shape=
(C, H, W))`` certifies independently.

``gamma`` (default 1) is each layer's Lipschitz bound in the 2-norm; it is a buffer
(``layer.gamma``), checked like the dense networks' (:func:`lmi.gamma_range`).
Constrained symbols are recomputed in training mode and cached in eval mode
(:class:`lmi.layers.CachedWeights`).
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from lipsdp.activation_registry import ONE_LIPSCHITZ, SLOPE_IN_0_1
from lipsdp.errors import LipSDPError

from . import fourier as FT
from .errors import InvalidArgumentError, ShapeMismatchError
from .layers import (ActivationOwner, CachedWeights, check_image, factory_kwargs, make_activation, positive_int,
                     resolve_dtype)
from .models import check_gamma

__all__ = ["SandwichConv2d", "CayleyConv2d", "BROConv2d"]


# ------------------------------------------------------------------------------ arguments
def _pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as a pair of positive ints (:class:`InvalidArgumentError`)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a positive int or a pair (H, W) of them, got {value!r}") from None
    if len(items) != 2:
        raise InvalidArgumentError(f"{name} must be a positive int or a pair (H, W) of them, got {value!r}")
    return positive_int(items[0], f"{name}[0]"), positive_int(items[1], f"{name}[1]")


def _kernel_size(kernel_size, image_size: tuple[int, int]) -> tuple[int, int]:
    """The free kernel's size: ``kernel_size``, or ``min(3, image size)`` per axis when None."""
    if kernel_size is None:
        return min(3, image_size[0]), min(3, image_size[1])
    ks = _pair(kernel_size, "kernel_size")
    if ks[0] > image_size[0] or ks[1] > image_size[1]:
        raise InvalidArgumentError(
            f"kernel_size {ks} exceeds the image size {image_size}: on {image_size[0]}x{image_size[1]} images a "
            f"circular kernel of the image size is already arbitrary; pass kernel_size <= {image_size}"
        )
    return ks


def _centre(kernel_size: tuple[int, int]) -> tuple[int, int]:
    """Padding that centres a free kernel (tap ``k // 2`` reads the output pixel itself)."""
    return kernel_size[0] // 2, kernel_size[1] // 2


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        t.uniform_(-bound, bound)


def _conv_module(symbol: torch.Tensor, bias: torch.Tensor | None, image_size: tuple[int, int]) -> nn.Conv2d:
    """A plain circular ``nn.Conv2d`` (detached copies) computing the convolution with ``symbol`` plus ``bias``."""
    weight, padding = FT.symbol_to_conv_weight(symbol.detach(), image_size)
    c_out, c_in = weight.shape[:2]
    conv = nn.Conv2d(c_in, c_out, kernel_size=tuple(weight.shape[-2:]), padding=padding, padding_mode="circular",
                     bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias.detach())
    return conv


# ------------------------------------------------------------------------------ base class
class _FourierConv(ActivationOwner, CachedWeights):
    """Shared body: shapes, gamma, input checks, the forward pass and the export.

    A subclass implements ``_compute()`` (its constrained symbols, from the free
    parameters) and ``_ops(computed)``: the layer as a list of steps, each
    ``("conv", symbol, bias_or_None)`` or ``("act", module)``.  :meth:`forward` runs the
    steps with FFTs, :meth:`to_plain` turns the same steps into ``nn.Conv2d`` modules
    and activation copies, so the export and the layer cannot drift apart.
    """

    def __init__(self, in_channels, out_channels, image_size, gamma, kernel_size, dtype, device) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.image_size = _pair(image_size, "image_size")
        self.kernel_size = _kernel_size(kernel_size, self.image_size)
        self.register_buffer("gamma", torch.tensor(check_gamma(gamma, fk["dtype"]), **fk))

    # -- checks ---------------------------------------------------------------
    def _check_input(self, x) -> None:
        """Refuse anything but ``(batch, C, H, W)`` / ``(C, H, W)`` tensors of the layer's dtype and image size."""
        check_image(x, self.in_channels, self.gamma.dtype, type(self).__name__, self.image_size, unbatched=True)

    def _check_activation_shape(self, fk: dict) -> None:
        """Refuse an activation that cannot act on this layer's feature maps (MaxMin needs an even width)."""
        if self.activation is None:
            return
        try:
            with torch.no_grad():
                self.activation(torch.zeros(1, self.out_channels, *self.image_size, **fk))
        except LipSDPError as exc:
            raise ShapeMismatchError(
                f"the activation {self.activation!r} cannot act on feature maps of shape "
                f"({self.out_channels}, {self.image_size[0]}, {self.image_size[1]}) ({exc}); group activations pair "
                f"neighbours along the last (width) axis, so choose an image width they accept"
            ) from None

    # -- the layer ------------------------------------------------------------
    def _free_symbol(self, kernel: torch.Tensor) -> torch.Tensor:
        """Symbol of a free kernel, centred (``(H, W//2+1, rows, cols)`` complex)."""
        return FT.conv_symbol(kernel, self.image_size, _centre(self.kernel_size))

    def _ops(self, computed) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for op in self._ops(self.computed()):
            if op[0] == "conv":
                _, symbol, bias = op
                x = FT.apply_symbol(symbol, x, bias)
            else:
                x = op[1](x)
        return x

    def lipschitz_bound(self) -> float:
        """``gamma``, after re-checking the activation (:class:`~lmi.errors.ActivationNotCoveredError`)."""
        self.require_covered_activation()
        return float(self.gamma)

    def to_plain(self, dtype=None) -> nn.Sequential:
        """An ``nn.Sequential`` of circular ``nn.Conv2d`` (+ activation copies) computing this layer.

        Parameters
        ----------
        dtype : torch.float32 or torch.float64, optional
            Dtype of the export (default: the layer's).  Another dtype evaluates the
            construction itself in that dtype from the (converted) free parameters, so a
            float64 export of a float32 layer is orthogonal / satisfies the LMI to float64
            rounding.

        Returns
        -------
        nn.Sequential in eval mode, on the layer's device.  Each convolution has a kernel
        of the image size (``H + 1`` for even ``H``) and ``padding_mode="circular"``.
        lipsdp reads group activations (MaxMin, GroupSort) on flat vectors only: to
        certify an export ending in one, insert ``nn.Flatten()`` before it (on an even
        width MaxMin pairs the same neighbours either way, and flattening keeps norms).

        Raises
        ------
        ActivationNotCoveredError, UnsupportedDtypeError
        """
        self.require_covered_activation()
        if dtype is not None and resolve_dtype(dtype) is not self.gamma.dtype:
            return copy.deepcopy(self).to(dtype=dtype).to_plain()
        with torch.no_grad():
            computed = self._compute()
        mods: list[nn.Module] = []
        for op in self._ops(computed):
            if op[0] == "conv":
                mods.append(_conv_module(op[1], op[2], self.image_size))
            else:
                mods.append(copy.deepcopy(op[1]))
        return nn.Sequential(*mods).eval()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, image_size={self.image_size}, "
                f"kernel_size={self.kernel_size}, gamma={float(self.gamma):.4g}")


# ------------------------------------------------------------------------------ sandwich
class SandwichConv2d(_FourierConv):
    r"""Convolutional sandwich layer (Wang & Manchester, ICML 2023), gamma-Lipschitz by construction.

    Free parameters: a real kernel ``XY`` of shape ``(q + p, q, kh, kw)`` (``q`` =
    ``out_channels``, ``p`` = ``in_channels``), ``d`` (``q``) and the bias ``b`` (``q``).
    At each frequency ``z`` the symbol of ``XY`` splits into ``X_z`` (``q x q``) and
    ``Y_z`` (``p x q``), and the complex Cayley transform (:func:`lmi.fourier.cayley`)
    gives ``[C_z; D_z]`` with orthonormal columns; ``A_z = C_z^*``, ``B_z = D_z^*`` then
    satisfy ``A_z A_z^* + B_z B_z^* = I``.  Let ``A``, ``B`` be the circular convolutions
    with these symbols (so ``A A^T + B B^T = I`` as real operators: the unitary DFT
    block-diagonalises them) and ``Psi = diag(e^d)`` per channel (constant over pixels,
    so it commutes with the DFT).  The layer is

    .. math::  h \mapsto \sqrt{2\gamma}\, A^T \Psi\,
               \sigma\big(\sqrt{2\gamma}\, \Psi^{-1} B h + b\big),

    the dense sandwich layer applied frequency by frequency, with ``sqrt(gamma)`` at the
    input and at the output (as :class:`lmi.models.SandwichNet` does for a network).

    Certificate (LipSDP, docs/formulations.md §1): with ``W_1 = sqrt(2 gamma) Psi^{-1} B``,
    ``W_2 = sqrt(2 gamma) A^T Psi``, the multiplier ``Lambda = gamma Psi^2`` (diagonal:
    one value per channel, repeated over pixels) and ``rho = gamma^2``,

    .. math::  \begin{bmatrix} -\gamma^2 I & W_1^T\Lambda \\ \Lambda W_1 & W_2^T W_2 - 2\Lambda
               \end{bmatrix} \preceq 0,

    because its Schur complement with respect to ``-gamma^2 I`` is
    ``2 gamma Psi (A A^T + B B^T - I) Psi = 0``.  With the slope-[0, 1] quadratic
    constraint of an elementwise activation this proves that the layer is
    gamma-Lipschitz in the 2-norm for every parameter value, so the activation must be
    elementwise with slopes in ``[0, 1]`` (``activation_needs``: ReLU, tanh, …).

    With ``output=True`` the layer is the linear map ``h -> gamma B h + b``
    (``||B|| <= 1`` since ``B_z B_z^* = I - A_z A_z^*``), the last layer of a sandwich network.

    Parameters
    ----------
    in_channels, out_channels : int
    image_size : int or (H, W)
        The image size the layer acts on (the Fourier parameterization needs it).
    activation : str, nn.Module or None
        Spec string of :mod:`lipsdp.activation_registry` or module (None: ReLU); ignored
        for ``output=True``.
    gamma : float
        Lipschitz bound, inside :func:`lmi.gamma_range` of ``dtype``.
    output : bool
        Linear last layer instead of a sandwich layer.
    kernel_size : int or (kh, kw), optional
        Size of the free kernel (default ``min(3, image size)``).  The constrained
        kernels span the whole image whatever its value.
    dtype, device
        torch.float32 (default dtype) or torch.float64; any device.

    Export (:meth:`to_plain`): ``Conv2d(W_1, b), activation, Conv2d(W_2)`` (``output=True``:
    ``Conv2d(gamma B, b)``).
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, in_channels: int, out_channels: int, image_size, activation="relu", gamma: float = 1.0,
                 output: bool = False, kernel_size=None, dtype=None, device=None) -> None:
        super().__init__(in_channels, out_channels, image_size, gamma, kernel_size, dtype, device)
        fk = factory_kwargs(dtype, device)
        q, p = self.out_channels, self.in_channels
        kh, kw = self.kernel_size
        self.output = bool(output)
        # symbol entries are sums of kh*kw taps: xavier variance of the dense layer, spread over the taps
        self.XY = nn.Parameter(torch.randn(q + p, q, kh, kw, **fk) * math.sqrt(2.0 / (2 * q + p) / (kh * kw)))
        if self.output:
            self.register_parameter("d", None)
        else:
            self.d = nn.Parameter(torch.zeros(q, **fk))
        self.bias = nn.Parameter(torch.empty(q, **fk))
        _uniform_(self.bias, p * kh * kw)
        self.activation = None if self.output else make_activation(activation, self.activation_needs,
                                                                   owner="SandwichConv2d", **fk)
        self._check_activation_shape(fk)

    def factors(self):
        """``(A, B, psi)``: symbols ``A_z`` (``q x q``), ``B_z`` (``q x p``) and ``psi = e^d`` (None for output)."""
        q = self.out_channels
        S = self._free_symbol(self.XY)  # (H, Wr, q + p, q)
        C, D = FT.cayley(*S.split([q, self.in_channels], dim=-2))  # a split's backward is one concatenation
        psi = None if self.d is None else torch.exp(self.d)
        return C.mH, D.mH, psi

    def _compute(self):
        A, B, psi = self.factors()
        g = self.gamma
        if self.output:
            return {"W1": B * g}
        s = torch.sqrt(2.0 * g)
        # W_1 = sqrt(2 gamma) Psi^{-1} B (rows scaled), W_2 = sqrt(2 gamma) A^* Psi (columns scaled)
        return {"W1": B * (s / psi)[:, None], "W2": A.mH * (s * psi)[None, :]}

    def _ops(self, c) -> list:
        if self.output:
            return [("conv", c["W1"], self.bias)]
        return [("conv", c["W1"], self.bias), ("act", self.activation), ("conv", c["W2"], None)]

    def witness(self):
        """``(rho, lam)``: ``gamma^2`` and the per-channel LipSDP multiplier ``gamma psi^2`` (None for output)."""
        self.require_covered_activation()
        if self.output:
            return None
        g = float(self.gamma)
        return g * g, (g * torch.exp(2.0 * self.d.detach())).double()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", output={self.output}"


# ------------------------------------------------------------------------------ orthogonal
class _OrthogonalConv(_FourierConv):
    """Shared body of the (semi-)orthogonal layers: ``x -> sigma(gamma Q x + b)``, ``sigma`` optional.

    ``Q`` has (semi-)unitary symbols, hence ``||Q||_2 = 1``; a 1-Lipschitz activation
    (``ONE_LIPSCHITZ``: ReLU, MaxMin, GroupSort, …) keeps the bound ``gamma``.
    """

    activation_needs = ONE_LIPSCHITZ

    def _init_common(self, activation, bias: bool, fk: dict) -> None:
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **fk))
            _uniform_(self.bias, self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        else:
            self.register_parameter("bias", None)
        self.activation = None if activation is None else make_activation(activation, self.activation_needs,
                                                                           owner=type(self).__name__, **fk)
        self._check_activation_shape(fk)

    def _unit_symbol(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute(self):
        return {"W": self._unit_symbol() * self.gamma}

    def _ops(self, c) -> list:
        ops = [("conv", c["W"], self.bias)]
        if self.activation is not None:
            ops.append(("act", self.activation))
        return ops


class CayleyConv2d(_OrthogonalConv):
    r"""Orthogonal circular convolution by the Cayley transform (Trockman & Kolter, ICLR 2021).

    Free parameter: a real kernel ``V`` of shape ``(max(c_in, c_out), min(c_in, c_out),
    kh, kw)``.  At each frequency its symbol splits into ``X_z`` (``k x k``, ``k =
    min``) and ``Y_z`` (``(max - k) x k``), and the complex Cayley transform gives the
    tall ``T_z = [C_z; D_z]`` with orthonormal columns (:func:`lmi.fourier.cayley`; for
    ``c_in = c_out`` it is the unitary ``(I + S)^{-1}(I - S)`` of the skew-Hermitian
    ``S = X_z - X_z^*``).  The layer's symbol is ``gamma T_z`` when ``c_out >= c_in``
    (orthonormal columns: norm-preserving) and ``gamma T_z^*`` otherwise (orthonormal
    rows: a co-isometry).  Every symbol has all its singular values equal to 1, so the
    convolution ``Q`` has ``Q^T Q = I`` (``c_out >= c_in``) or ``Q Q^T = I``, all singular
    values 1, and the layer ``x -> sigma(gamma Q x + b)`` is gamma-Lipschitz for any
    1-Lipschitz ``sigma`` (the LMI ``Q^T Q \preceq I`` with equality on its row space).

    Parameters
    ----------
    channels_in, channels_out : int
    image_size : int or (H, W)
    gamma : float
    kernel_size : int or (kh, kw), optional
        Size of the free kernel (default ``min(3, image size)``).
    activation : str, nn.Module or None
        None (default): no activation; otherwise a 1-Lipschitz one (``"relu"``, ``"maxmin"``, …).
    bias : bool
    dtype, device
    """

    def __init__(self, channels_in: int, channels_out: int, image_size, gamma: float = 1.0, kernel_size=None,
                 activation=None, bias: bool = True, dtype=None, device=None) -> None:
        super().__init__(channels_in, channels_out, image_size, gamma, kernel_size, dtype, device)
        fk = factory_kwargs(dtype, device)
        big, small = max(self.in_channels, self.out_channels), min(self.in_channels, self.out_channels)
        kh, kw = self.kernel_size
        # a skew part of norm about 1 per frequency: far from both the identity and the -I pole
        self.V = nn.Parameter(torch.randn(big, small, kh, kw, **fk) * (0.5 / math.sqrt(big * kh * kw)))
        self._init_common(activation, bias, fk)

    def _unit_symbol(self) -> torch.Tensor:
        k = min(self.in_channels, self.out_channels)
        S = self._free_symbol(self.V)  # (H, Wr, max, min)
        C, D = FT.cayley(*S.split([k, S.shape[-2] - k], dim=-2))
        tall = torch.cat([C, D], dim=-2)
        return tall if self.out_channels >= self.in_channels else tall.mH


class BROConv2d(_OrthogonalConv):
    r"""Block Reflector Orthogonal convolution (Lai et al., 2025), gamma-Lipschitz by construction.

    Free parameter: a real kernel ``V`` of shape ``(channels, rank, kh, kw)``.  At each
    frequency its symbol ``V_z`` (``channels x rank``) defines the block reflector

    .. math::  W_z = I - 2 V_z (V_z^* V_z)^{-1} V_z^*,

    ``I`` minus twice the orthogonal projector onto ``range(V_z)``: Hermitian and unitary
    (eigenvalues ``-1`` on ``range(V_z)``, ``+1`` on its complement;
    :func:`lmi.fourier.block_reflector`).  The convolution ``Q`` with these symbols is
    therefore orthogonal and symmetric (``Q^T = Q = Q^{-1}``), and the layer
    ``x -> sigma(gamma Q x + b)`` is gamma-Lipschitz for any 1-Lipschitz ``sigma``.
    ``V_z^* V_z`` must be invertible, i.e. ``V_z`` of full column rank, which holds for
    all but a measure-zero set of kernels; the reference implementation adds a small
    multiple of the identity to ``V_z^* V_z`` (which keeps ``||W_z|| <= 1`` but makes it
    only approximately orthogonal), here the projector is formed from a QR
    factorisation instead, unitary to rounding.

    Parameters
    ----------
    channels : int
        Input and output channels (at least 2).
    image_size : int or (H, W)
    rank : int
        Columns of ``V``, ``1 <= rank < channels`` (``rank = channels`` would give
        ``W_z = -I`` for every parameter value).
    gamma : float
    kernel_size : int or (kh, kw), optional
        Size of the free kernel (default ``min(3, image size)``).
    activation : str, nn.Module or None
        None (default): no activation; otherwise a 1-Lipschitz one.
    bias : bool
    dtype, device
    """

    def __init__(self, channels: int, image_size, rank: int, gamma: float = 1.0, kernel_size=None,
                 activation=None, bias: bool = True, dtype=None, device=None) -> None:
        channels = positive_int(channels, "channels")
        rank = positive_int(rank, "rank")
        if rank >= channels:
            raise InvalidArgumentError(
                f"BROConv2d needs 1 <= rank < channels, got rank={rank} with channels={channels} (rank = channels "
                f"makes every frequency's reflector -I, whatever the parameters); use e.g. rank={max(channels // 2, 1)}"
                + ("" if channels > 1 else "; a single channel admits no proper block reflector, use CayleyConv2d")
            )
        super().__init__(channels, channels, image_size, gamma, kernel_size, dtype, device)
        fk = factory_kwargs(dtype, device)
        self.rank = rank
        kh, kw = self.kernel_size
        # the reference's identity start (centre tap [I; 0]) plus noise, so the symbols vary over frequencies
        V = torch.randn(channels, rank, kh, kw, **fk) * (0.5 / math.sqrt(channels * kh * kw))
        V[torch.arange(rank), torch.arange(rank), kh // 2, kw // 2] += 1.0
        self.V = nn.Parameter(V)
        self._init_common(activation, bias, fk)

    def _unit_symbol(self) -> torch.Tensor:
        return FT.block_reflector(self._free_symbol(self.V))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"
