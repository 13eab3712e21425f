r"""Spatial-domain Lipschitz convolutions: AOL and SLL (zero padding "same", stride 1).

Both layers act on images ``(batch, channels, H, W)`` of any size and keep it (odd kernel sizes,
padding ``k // 2``).  Their certificates are Gershgorin bounds on the Gram kernel of the
convolution (:mod:`lmi.functional_conv`), valid for the zero-padded operator on every image size.

* :class:`AOLConv2d` -- ``x -> gamma C_{K D} x + b`` with the AOL rescaling ``D``
  (Prach & Lampert, ECCV 2022): ``||C_{K D}|| <= 1``.
* :class:`SLLConv2d` -- ``x -> gamma (x - 2 C_K^T T^{-1} sigma(C_K x + b))`` (Araujo et al.,
  ICLR 2023): 1-Lipschitz residual layer times gamma.

Both hold ``gamma`` fixed (a buffer ``log_gamma``), report it by ``lipschitz_bound()``, cache the
constrained kernels in eval mode (:class:`lmi.layers.CachedWeights`) and export to plain torch
modules with ``to_plain()`` (``nn.Conv2d``, activations, :class:`lipsdp.nn.Residual`), which
``lipsdp.estimate(plain, input_shape=(C, H, W))`` re-certifies.
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from lipsdp.activation_registry import SLOPE_IN_0_1

from . import functional_conv as LFC
from .errors import InvalidArgumentError
from .layers import (ActivationOwner, CachedWeights, check_image, factory_kwargs, make_activation, positive_int,
                     resolve_dtype)
from .models import check_gamma

__all__ = ["AOLConv2d", "SLLConv2d", "kernel_size_pair", "plain_module", "scaling_module"]


# ------------------------------------------------------------------------------ argument checks
def kernel_size_pair(kernel_size) -> tuple[int, int]:
    """``(kh, kw)`` from an int or a pair, refused unless both are odd positive integers.

    Raises
    ------
    InvalidArgumentError
        Even or non-positive sizes (a "same" zero padding is symmetric only for odd kernels).
    """
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else kernel_size
    try:
        kh, kw = pair
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"kernel_size is an odd positive int or a pair of them, got {kernel_size!r}"
        ) from None
    kh, kw = positive_int(kh, "kernel_size"), positive_int(kw, "kernel_size")
    if kh % 2 == 0 or kw % 2 == 0:
        raise InvalidArgumentError(
            f"kernel_size must be odd (zero padding k // 2 keeps the image size and makes the transposed "
            f"convolution a convolution with the same padding), got {kernel_size!r}"
        )
    return kh, kw


def gamma_buffer(module: nn.Module, gamma, fk: dict) -> float:
    """Register ``log gamma`` as a buffer of ``module`` after checking ``gamma`` (typed errors)."""
    g = check_gamma(gamma, fk["dtype"])
    module.register_buffer("log_gamma", torch.tensor(math.log(g), **fk))
    return g


# ----------------------------------------------------------------------------------- export
def plain_module(K: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``nn.Linear`` (dense kernel) or zero-padded "same" ``nn.Conv2d`` holding detached copies of ``K``, ``bias``."""
    if not LFC.spatial_dims(K):
        mod = nn.Linear(K.shape[1], K.shape[0], bias=bias is not None, dtype=K.dtype, device=K.device)
    else:
        kh, kw = K.shape[-2:]
        mod = nn.Conv2d(K.shape[1], K.shape[0], (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None,
                        dtype=K.dtype, device=K.device)
    with torch.no_grad():
        mod.weight.copy_(K)
        if bias is not None:
            mod.bias.copy_(bias)
    return mod


def scaling_module(width: int, scale: torch.Tensor, spatial: bool) -> nn.Module:
    """``x -> scale x`` as a plain module: ``nn.Linear`` or 1x1 ``nn.Conv2d`` with weight ``scale I``, no bias."""
    eye = torch.eye(width, dtype=scale.dtype, device=scale.device) * scale
    return plain_module(eye.reshape(width, width, 1, 1) if spatial else eye, None)


def finish_export(mods: list, dtype) -> nn.Sequential:
    """``nn.Sequential(*mods)`` in eval mode, converted to ``dtype`` (checked) when given."""
    if dtype is not None:
        resolve_dtype(dtype)
    return nn.Sequential(*mods).to(dtype=dtype).eval()


# ----------------------------------------------------------------------------------- layers
class AOLConv2d(CachedWeights):
    r"""Almost-orthogonal convolution (Prach & Lampert, ECCV 2022), ``gamma``-Lipschitz.

    ``y = gamma C_{K D} x + b`` with a free kernel ``K`` (``out x in x kh x kw``) and the rescaling
    ``D = diag(d)``, ``d_i = (sum_j sum_delta |K^T K|_{ij}[delta])^{-1/2}``, where ``K^T K`` is the
    Gram kernel (the correlation of the kernel's input-channel slices, :func:`lmi.functional_conv.kernel_gram`).
    Gershgorin on the Gram operator gives ``D C_K^T C_K D \preceq I``, i.e. ``||C_{K D}||_2 <= 1``
    for zero padding and every image size (:mod:`lmi.functional_conv`).  Linear: no activation.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : odd int or pair of odd ints
    gamma : float
        The Lipschitz bound (2-norm over the whole image), inside :func:`lmi.gamma_range`.
    bias : bool
    dtype, device
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, gamma: float = 1.0, bias: bool = True,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = kernel_size_pair(kernel_size)
        gamma_buffer(self, gamma, fk)
        self.kernel = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *self.kernel_size, **fk))
        nn.init.orthogonal_(self.kernel)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_channels, **fk))
        else:
            self.register_parameter("bias", None)

    def _compute(self) -> torch.Tensor:
        return torch.exp(self.log_gamma) * LFC.aol_kernel(self.kernel)

    def weight(self) -> torch.Tensor:
        """The constrained kernel ``gamma K D`` (cached in eval mode)."""
        return self.computed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels, self.kernel.dtype, "AOLConv2d")
        return LFC.apply_kernel(x, self.computed(), self.bias)

    def lipschitz_bound(self) -> float:
        """``gamma``: ``||C_{K D}|| <= 1`` for every kernel."""
        return float(torch.exp(self.log_gamma.detach()))

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``nn.Sequential(nn.Conv2d)`` with the constrained kernel (zero padding ``k // 2``)."""
        with torch.no_grad():
            return finish_export([plain_module(self.computed().detach(), self.bias)], dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"gamma={self.lipschitz_bound():.4g}")


class SLLConv2d(ActivationOwner, CachedWeights):
    r"""Convolutional SDP-based Lipschitz layer (Araujo et al., ICLR 2023), ``gamma``-Lipschitz.

    .. math::  y = \gamma\,\bigl(x - 2\, C_K^T T^{-1} \sigma(C_K x + b)\bigr),

    with a free kernel ``K`` (``inner x channels x kh x kw``), ``C_K^T`` its transposed convolution
    and ``T = diag(t)`` per inner channel, ``t_a = sum_b sum_delta |K K^T|_{ab}[delta] e^{q_b - q_a}``
    (:func:`lmi.functional_conv.sll_kernel_diag`), so ``T \succeq C_K C_K^T`` on every image size.
    With the slope-[0, 1] constraint and the multiplier ``2 T^{-1}`` the residual LMI of
    :func:`lmi.functional_conv.residual_weights` holds at ``gamma = 1`` (its off-diagonal block
    vanishes and ``4 T^{-1}(T - C_K C_K^T) T^{-1} \succeq 0`` remains), so the bracket is
    1-Lipschitz; the activation must be elementwise with slopes in ``[0, 1]`` (``activation_needs``).

    Parameters
    ----------
    channels : int
    kernel_size : odd int or pair of odd ints
    activation : str, nn.Module or None (ReLU)
    gamma : float
    inner_channels : int, optional (default ``channels``)
    dtype, device
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, channels: int, kernel_size=3, activation="relu", gamma: float = 1.0,
                 inner_channels: int | None = None, dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.channels = positive_int(channels, "channels")
        self.inner_channels = self.channels if inner_channels is None else positive_int(inner_channels,
                                                                                         "inner_channels")
        self.kernel_size = kernel_size_pair(kernel_size)
        gamma_buffer(self, gamma, fk)
        self.kernel = nn.Parameter(torch.empty(self.inner_channels, self.channels, *self.kernel_size, **fk))
        nn.init.xavier_normal_(self.kernel)
        self.q = nn.Parameter(torch.zeros(self.inner_channels, **fk))
        self.bias = nn.Parameter(torch.zeros(self.inner_channels, **fk))
        self.activation = make_activation(activation, self.activation_needs, owner="SLLConv2d", **fk)

    def _compute(self):
        """``(K, t, back)`` with ``back = -2 transpose_kernel(K) T^{-1}``, the kernel of ``-2 C_K^T T^{-1}``."""
        t = LFC.sll_kernel_diag(self.kernel, self.q)
        return self.kernel, t, LFC.scale_in(LFC.transpose_kernel(self.kernel), -2.0 / t)

    def diag(self) -> torch.Tensor:
        """``t``, the diagonal of ``T`` (cached in eval mode)."""
        return self.computed()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.channels, self.kernel.dtype, "SLLConv2d")
        K, _, back = self.computed()
        # the transposed convolution as a "same" convolution (faster than conv_transpose2d on CPU)
        y = x + LFC.apply_kernel(self.activation(LFC.apply_kernel(x, K, self.bias)), back)
        return torch.exp(self.log_gamma) * y

    def lipschitz_bound(self) -> float:
        """``gamma``, after re-checking the activation (:class:`~lmi.errors.ActivationNotCoveredError`)."""
        self.require_covered_activation()
        return float(torch.exp(self.log_gamma.detach()))

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Residual(Conv2d, act, Conv2d)`` (then a 1x1 ``gamma I`` conv when ``gamma != 1``).

        The second convolution holds ``-2 transpose_kernel(K) T^{-1}``: the transposed convolution
        of a "same" convolution is a "same" convolution with the flipped, channel-swapped kernel.
        """
        from lipsdp.nn import Residual

        self.require_covered_activation()
        with torch.no_grad():
            K, _, back = (v.detach() for v in self.computed())
            branch = nn.Sequential(plain_module(K, self.bias), copy.deepcopy(self.activation), plain_module(back, None))
            mods: list[nn.Module] = [Residual(branch)]
            g = torch.exp(self.log_gamma.detach())
            if float(g) != 1.0:
                mods.append(scaling_module(self.channels, g, spatial=True))
        return finish_export(mods, dtype)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, inner_channels={self.inner_channels}, "
                f"gamma={float(torch.exp(self.log_gamma.detach())):.4g}")
