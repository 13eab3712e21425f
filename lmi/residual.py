r"""Residual blocks ``x -> x + W_2 sigma(W_1 x + b)`` with a certified constant, dense and convolutional.

Each block is ``gamma``-Lipschitz for every parameter value.  The certificate is the residual
LipSDP LMI (slope-[0, 1] activation, diagonal multiplier ``Lambda``)

.. math::  M = \begin{bmatrix} (c^2 - 1) I & -(W_2 + W_1^T\Lambda) \\
           -(W_2 + W_1^T\Lambda)^T & 2\Lambda - W_2^T W_2 \end{bmatrix} \succeq 0

at the constant ``c = max(gamma, 1)``.  :func:`lmi.functional_conv.residual_weights` solves it
through its block LDL^T factorisation: every contraction ``Z`` (``||Z|| <= 1``, ``2n x m``) gives
weights with Schur pivot ``2 Lambda^{1/2}(I - Z^T Z) Lambda^{1/2} \succeq 0``.  The skip path alone
is 1-Lipschitz, so no such LMI certifies ``c < 1``; for ``gamma < 1`` the 1-Lipschitz block is
followed by the scaling ``gamma``.  The two families differ only in how ``Z`` is made a contraction:

* :class:`LDLTResidual` / :class:`LDLTResidualConv2d` -- Cholesky
  (:func:`lmi.functional.contraction`, Juston et al. 2025, "LDLT L-Lipschitz network", residual
  variant).  Dense: an exact parameterization of all strict contractions.  Conv: the unfolded
  kernel is made a contraction and divided by ``sqrt(kh kw)``
  (:func:`lmi.functional_conv.unfold_contraction`, conservative).
* :class:`GershgorinResidual` / :class:`GershgorinResidualConv2d` -- scaled Gershgorin discs on
  ``Z^T Z`` (:func:`lmi.functional_conv.aol_kernel` with learned scaling ``q``), after Juston et al.
  2025, "L-Lipschitz Gershgorin ResNet".  That paper applies Gershgorin to the whole matrix
  ``M``, which at ``c <= 1`` forces the branch to zero (its diagonal block ``(c^2 - 1) I`` cannot
  dominate the off-diagonal one); here Gershgorin bounds only the pivot after the exact
  Schur reduction, and at ``gamma = 1`` the block is an SLL layer (Araujo et al., ICLR 2023).

Every block exports (``to_plain()``) to ``lipsdp.nn.Residual(Sequential(Linear/Conv2d, act,
Linear/Conv2d))``, followed by a plain ``gamma I`` layer when ``gamma < 1``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lipsdp.activation_registry import SLOPE_IN_0_1
from lipsdp.errors import NotApplicableError

from . import functional_conv as LFC
from .conv_spatial import finish_export, gamma_buffer, kernel_size_pair, plain_module, scaling_module
from .layers import (
    ActivationOwner,
    CachedWeights,
    check_image,
    check_input,
    factory_kwargs,
    make_activation,
    positive_float,
    positive_int,
)

__all__ = ["LDLTResidual", "GershgorinResidual", "LDLTResidualConv2d", "GershgorinResidualConv2d", "residual_lmi"]


def residual_lmi(W1: torch.Tensor, W2: torch.Tensor, lam: torch.Tensor, c: float) -> torch.Tensor:
    """The matrix ``M`` of the module docstring for dense weights (float64; ``M >= 0`` certifies ``c``)."""
    W1, W2, lam = (v.detach().to(torch.float64) for v in (W1, W2, lam))
    n = W1.shape[1]
    off = -(W2 + W1.transpose(0, 1) * lam.unsqueeze(0))
    top = torch.cat([(c * c - 1.0) * torch.eye(n, dtype=torch.float64, device=W1.device), off], dim=1)
    bottom = torch.cat([off.transpose(0, 1), 2.0 * torch.diag(lam) - W2.transpose(0, 1) @ W2], dim=1)
    return torch.cat([top, bottom], dim=0)


class _ResidualBlock(ActivationOwner, CachedWeights):
    """Shared body: free kernel ``V`` (``2n x m[ x kh x kw]``), multipliers, bias, gamma, export.

    Subclasses implement ``_contraction()`` (a kernel ``Z`` with ``||C_Z|| <= 1``).
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, width: int, inner, kernel_size, activation, gamma, dtype, device) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.width = positive_int(width, "width")
        self.inner = self.width if inner is None else positive_int(inner, "inner")
        self.kernel_size = None if kernel_size is None else kernel_size_pair(kernel_size)
        gamma_buffer(self, gamma, fk)
        spatial = () if self.kernel_size is None else self.kernel_size
        self.V = nn.Parameter(torch.empty(2 * self.width, self.inner, *spatial, **fk))
        nn.init.orthogonal_(self.V)
        self.log_lambda = nn.Parameter(torch.zeros(self.inner, **fk))
        self.bias = nn.Parameter(torch.zeros(self.inner, **fk))
        self.activation = make_activation(activation, self.activation_needs, owner=type(self).__name__, **fk)

    @property
    def spatial(self) -> bool:
        return self.kernel_size is not None

    def _contraction(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gammas(self) -> tuple[float, float]:
        """``(c, s)``: the LMI constant ``max(gamma, 1)`` and the output scale ``min(gamma, 1)``."""
        g = float(torch.exp(self.log_gamma.detach()))
        return max(g, 1.0), min(g, 1.0)

    def _compute(self):
        c, s = self._gammas()
        lam = torch.exp(self.log_lambda)
        W1, W2 = LFC.residual_weights(self._contraction(), lam, c)
        return {"W1": W1, "W2": W2, "lambda": lam, "c": c, "scale": s}

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_1, W_2)`` (kernels for the conv blocks), cached in eval mode."""
        w = self.computed()
        return w["W1"], w["W2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            check_image(x, self.width, self.V.dtype, type(self).__name__)
        else:
            check_input(x, self.width, self.V.dtype, type(self).__name__)
        w = self.computed()
        y = x + LFC.apply_kernel(self.activation(LFC.apply_kernel(x, w["W1"], self.bias)), w["W2"])
        return y if w["scale"] == 1.0 else y * w["scale"]

    def lipschitz_bound(self) -> float:
        """``gamma``, after re-checking the activation (:class:`~lmi.errors.ActivationNotCoveredError`)."""
        self.require_covered_activation()
        return float(torch.exp(self.log_gamma.detach()))

    def lmi_min_eig(self) -> float:
        """Smallest eigenvalue of ``M`` (float64) over its largest entry; ``>= 0`` up to rounding. Dense only."""
        if self.spatial:
            raise NotApplicableError("the LMI of a convolutional block is an operator on images; certify "
                                      "to_plain() with lipsdp.estimate(plain, input_shape=(C, H, W))")
        with torch.no_grad():
            w = self.computed()
            M = residual_lmi(w["W1"], w["W2"], w["lambda"], w["c"])
            return float(torch.linalg.eigvalsh(M).min() / M.abs().max())

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Residual(Sequential(W_1 + b, act, W_2))`` (then a ``gamma I`` layer when ``gamma < 1``)."""
        from lipsdp.nn import Residual

        self.require_covered_activation()
        with torch.no_grad():
            w = self.computed()
            branch = nn.Sequential(plain_module(w["W1"].detach(), self.bias), copy.deepcopy(self.activation),
                                   plain_module(w["W2"].detach(), None))
            mods: list[nn.Module] = [Residual(branch)]
            if w["scale"] != 1.0:
                scale = torch.tensor(w["scale"], dtype=self.V.dtype, device=self.V.device)
                mods.append(scaling_module(self.width, scale, self.spatial))
        return finish_export(mods, dtype)

    def extra_repr(self) -> str:
        ks = "" if self.kernel_size is None else f", kernel_size={self.kernel_size}"
        return f"{self.width}, inner={self.inner}{ks}, gamma={float(torch.exp(self.log_gamma.detach())):.4g}"


class _LDLTContraction:
    """``Z`` from the Cholesky device (:func:`lmi.functional_conv.unfold_contraction`) with slack ``alpha``."""

    def _init_alpha(self, alpha) -> None:
        self.alpha = positive_float(alpha, "alpha", "the slack of the Cholesky factor of V V^T + alpha I")
        with torch.no_grad():  # singular values sqrt(alpha): Z starts with singular values 1/sqrt(2)
            self.V.mul_(math.sqrt(self.alpha))

    def _contraction(self) -> torch.Tensor:
        return LFC.unfold_contraction(self.V, self.alpha)


class _GershgorinContraction:
    """``Z = C_V diag(t)^{-1/2}`` with the scaled Gershgorin sums ``t`` of ``C_V^T C_V`` (learned ``q``)."""

    def _init_q(self) -> None:
        self.q = nn.Parameter(torch.zeros(self.inner, dtype=self.V.dtype, device=self.V.device))

    def _contraction(self) -> torch.Tensor:
        return LFC.aol_kernel(self.V, self.q)


class LDLTResidual(_LDLTContraction, _ResidualBlock):
    r"""Dense residual LDL^T block: ``x -> s (x + W_2 sigma(W_1 x + b))``, ``gamma``-Lipschitz.

    ``Z = L^{-1} V`` with ``L L^T = V V^T + alpha I`` (:func:`lmi.functional.contraction`), then
    :func:`lmi.functional_conv.residual_weights` at ``c = max(gamma, 1)``; ``s = min(gamma, 1)``.
    ``Lambda = diag(e^{log_lambda})`` is the LMI's witness (:meth:`lmi_min_eig` checks it).

    Parameters
    ----------
    features : int
    inner : int, optional (hidden width, default ``features``)
    activation : str, nn.Module or None (ReLU); elementwise with slopes in [0, 1]
    gamma : float
    alpha : float (slack of the Cholesky contraction, > 0)
    """

    def __init__(self, features: int, inner: int | None = None, activation="relu", gamma: float = 1.0,
                 alpha: float = 1.0, dtype=None, device=None) -> None:
        super().__init__(features, inner, None, activation, gamma, dtype, device)
        self._init_alpha(alpha)


class LDLTResidualConv2d(_LDLTContraction, _ResidualBlock):
    r"""Convolutional residual LDL^T block (zero padding "same", stride 1), ``gamma``-Lipschitz.

    As :class:`LDLTResidual` with kernels: ``W_1`` is ``sqrt2 c Lambda^{-1/2}`` times the transposed
    convolution of ``Z_2``, ``W_2`` a combination of ``Z_1``, ``Z_2`` scaled per inner channel, and
    ``||C_Z|| < 1`` from :func:`lmi.functional_conv.unfold_contraction`.
    """

    def __init__(self, channels: int, kernel_size=3, inner_channels: int | None = None, activation="relu",
                 gamma: float = 1.0, alpha: float = 1.0, dtype=None, device=None) -> None:
        super().__init__(channels, inner_channels, kernel_size, activation, gamma, dtype, device)
        self._init_alpha(alpha)


class GershgorinResidual(_GershgorinContraction, _ResidualBlock):
    r"""Dense Gershgorin residual block: ``x -> s (x + W_2 sigma(W_1 x + b))``, ``gamma``-Lipschitz.

    ``Z = V diag(t)^{-1/2}``, ``t_i = sum_j |V^T V|_{ij} e^{q_j - q_i}`` (:func:`lmi.functional.aol_scale`),
    so ``Z^T Z \preceq I``; then :func:`lmi.functional_conv.residual_weights` at ``c = max(gamma, 1)``.
    """

    def __init__(self, features: int, inner: int | None = None, activation="relu", gamma: float = 1.0,
                 dtype=None, device=None) -> None:
        super().__init__(features, inner, None, activation, gamma, dtype, device)
        self._init_q()


class GershgorinResidualConv2d(_GershgorinContraction, _ResidualBlock):
    r"""Convolutional Gershgorin residual block (zero padding "same", stride 1), ``gamma``-Lipschitz.

    ``Z = C_V diag(t)^{-1/2}`` with the Gershgorin sums of the Gram kernel
    (:func:`lmi.functional_conv.aol_kernel`), valid on every image size.
    """

    def __init__(self, channels: int, kernel_size=3, inner_channels: int | None = None, activation="relu",
                 gamma: float = 1.0, dtype=None, device=None) -> None:
        super().__init__(channels, inner_channels, kernel_size, activation, gamma, dtype, device)
        self._init_q()
