r"""Pure tensor maths of the spatial (zero-padded, stride-1) convolution layers and the residual blocks.

A *kernel* here is a weight tensor of shape ``(out, in, kh, kw)`` (a 2-D convolution with odd
``kh``, ``kw``, zero padding ``(kh // 2, kw // 2)``, stride 1, so the output has the input's
height and width) or of shape ``(out, in)`` (a dense layer: the same maths with a 1x1 kernel on a
1x1 image).  Write ``C_K`` for the linear operator ``x -> conv2d(x, K)`` on images of a fixed
size ``H x W`` and ``C_K^T`` for its adjoint.

* :func:`transpose_kernel` -- the kernel of ``C_K^T``: ``K`` with its two channel axes swapped
  and its spatial axes flipped, with the same padding (exact for odd kernels and stride 1).
* :func:`kernel_gram` -- the kernel of ``C_K^T C_K`` on the infinite grid,
  ``G[i, j, d] = sum_o sum_p K[o, i, p] K[o, j, p + d]`` (``(in, in, 2kh-1, 2kw-1)``; ``K^T K``
  for a dense ``K``).
* :func:`gram_rowsum` -- the scaled Gershgorin row sums of that Gram operator,
  ``t_i = sum_j sum_d |G[i, j, d]| exp(q_j - q_i)``, through
  :func:`lmi.functional.gershgorin_rowsum` on the spatially summed ``|G|``.
* :func:`aol_kernel` / :func:`sll_kernel_diag` -- the AOL rescaling and the SLL diagonal
  (the dense :func:`lmi.functional.aol_scale` / :func:`lmi.functional.sll_diag` for kernels).
* :func:`unfold_contraction` -- a contraction ``||C_Z|| < 1`` from the Cholesky device
  :func:`lmi.functional.contraction` on the unfolded kernel.
* :func:`residual_weights` -- the block-LDL^T (Schur complement) reduction of the residual
  LipSDP LMI: the two weights of ``x -> x + W_2 sigma(W_1 x + b)`` from a contraction.

Why the Gershgorin sums of the infinite-grid Gram bound the zero-padded operator: with
``E`` the zero extension of an ``H x W`` image to the plane and ``R`` the restriction back,
``C_K = R C_K^inf E``.  ``E`` and ``R`` have norm 1 and commute with per-channel scalings
``D``, so ``||C_K D|| <= ||C_K^inf D||``; ``C_K^inf^T C_K^inf`` is the block-Toeplitz operator
with entries ``G[i, j, d]``, and ``diag(t) - C_K^inf^T C_K^inf`` is diagonally dominant after
the scaling ``diag(e^q)`` (Schur test on l2 of the plane), hence positive semidefinite
(Prach & Lampert, ECCV 2022, Thm. 1 and its convolutional form; Araujo et al., ICLR 2023, Thm. 3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import functional as LF
from .errors import InvalidArgumentError

__all__ = [
    "spatial_dims",
    "apply_kernel",
    "transpose_kernel",
    "kernel_gram",
    "gram_rowsum",
    "scale_in",
    "scale_out",
    "aol_kernel",
    "sll_kernel_diag",
    "unfold_contraction",
    "residual_weights",
]


def spatial_dims(K: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a kernel: ``(2, 3)`` for ``(out, in, kh, kw)``, ``()`` for ``(out, in)``."""
    if K.dim() == 2:
        return ()
    if K.dim() == 4 and K.shape[-1] % 2 == 1 and K.shape[-2] % 2 == 1:
        return (2, 3)
    raise InvalidArgumentError(f"a kernel has shape (out, in) or (out, in, kh, kw) with odd kh, kw; "
                               f"got {tuple(K.shape)}")


def apply_kernel(x: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``C_K x (+ bias)``: ``F.linear`` for a dense kernel, zero-padded "same" ``F.conv2d`` otherwise."""
    if not spatial_dims(K):
        return F.linear(x, K, bias)
    return F.conv2d(x, K, bias, padding=(K.shape[-2] // 2, K.shape[-1] // 2))


def transpose_kernel(K: torch.Tensor) -> torch.Tensor:
    r"""The kernel of the adjoint operator ``C_K^T``.

    For stride 1, zero padding ``k // 2`` and odd ``k``, ``<C_K x, y> = <x, C_{K'} y>`` with
    ``K'[i, o, p] = K[o, i, -p]`` (channels swapped, offsets mirrored) and the same padding: the
    transposed convolution of a "same" convolution is a "same" convolution.
    """
    dims = spatial_dims(K)
    Kt = K.transpose(0, 1)
    return Kt.flip(dims) if dims else Kt


def kernel_gram(K: torch.Tensor) -> torch.Tensor:
    r"""The Gram kernel of ``C_K^T C_K`` on the infinite grid (``K^T K`` for a dense ``K``).

    ``G[i, j, d] = sum_o sum_p K[o, i, p + d] K[o, j, p]`` for offsets ``|d| < k``: each input
    channel's slice of ``K`` correlated with every other's (``F.conv2d`` of the kernel, read as a
    batch of ``in`` images with ``out`` channels, with itself as the filter bank, padding ``k - 1``).
    """
    dims = spatial_dims(K)
    if not dims:
        return K.transpose(0, 1) @ K
    Ki = K.transpose(0, 1)  # (in, out, kh, kw): input channel i as an image of `out` channels
    return F.conv2d(Ki, Ki, padding=(K.shape[-2] - 1, K.shape[-1] - 1))


def gram_rowsum(K: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    r"""Scaled Gershgorin row sums of ``C_K^T C_K``: ``t_i = sum_j sum_d |G[i, j, d]| e^{q_j - q_i}``.

    ``diag(t) - C_K^T C_K`` is positive semidefinite for every image size (module docstring);
    for a dense ``K`` this is ``gershgorin_rowsum(K^T K, q)``.
    """
    G = kernel_gram(K)
    summed = G.abs().sum(dim=(2, 3)) if G.dim() == 4 else G
    return LF.gershgorin_rowsum(summed, q)


def scale_in(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``C_K diag(v)``: input channel ``i`` of ``K`` times ``v_i``."""
    return K * v.reshape((1, -1) + (1,) * (K.dim() - 2))


def scale_out(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``diag(v) C_K``: output channel ``o`` of ``K`` times ``v_o``."""
    return K * v.reshape((-1,) + (1,) * (K.dim() - 1))


def aol_kernel(K: torch.Tensor, q: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""AOL rescaling of a kernel (Prach & Lampert, ECCV 2022): ``C_K diag(t + eps)^{-1/2}``.

    ``t = gram_rowsum(K, q)``, so ``diag(t) \succeq C_K^T C_K`` and the rescaled operator has
    norm at most 1 on images of every size (zero padding).  Dense ``K``: :func:`lmi.functional.aol_scale`.
    """
    return scale_in(K, torch.rsqrt(gram_rowsum(K, q) + eps))


def sll_kernel_diag(K: torch.Tensor, q: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""SLL diagonal of a kernel (Araujo et al., ICLR 2023): ``t`` with ``diag(t) \succeq C_K C_K^T``.

    ``C_K C_K^T = C_{K'}^T C_{K'}`` for the adjoint kernel ``K' = transpose_kernel(K)``, so
    ``t = gram_rowsum(K', q) + eps`` (one per output channel of ``K``).  Dense ``K``:
    :func:`lmi.functional.sll_diag`.
    """
    return gram_rowsum(transpose_kernel(K), q) + eps


def unfold_contraction(V: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""A kernel ``Z`` with ``||C_Z|| < 1`` from a free kernel ``V`` (Cholesky device).

    ``C_Z = (I \otimes Z_mat) U`` where ``Z_mat`` is ``Z`` reshaped to ``(out, in kh kw)`` and ``U``
    the unfold (im2col) map of zero-padded ``kh x kw`` patches.  Every pixel lies in at most
    ``kh kw`` patches, so ``U^T U \preceq kh kw I`` and ``||C_Z|| <= sqrt(kh kw) ||Z_mat||``.  With
    ``Z_mat = contraction(V_mat, alpha) / sqrt(kh kw)`` (:func:`lmi.functional.contraction`,
    ``||.|| < 1``) the operator is a strict contraction.  Exact for dense kernels; conservative by
    up to ``sqrt(kh kw)`` for spatial ones (the price of a certificate without a Fourier transform).
    """
    dims = spatial_dims(V)
    W, _ = LF.contraction(V.reshape(V.shape[0], -1), alpha)
    if not dims:
        return W
    return W.reshape(V.shape) / math.sqrt(V.shape[-2] * V.shape[-1])


def residual_weights(Z: torch.Tensor, lam: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weights of a gamma-Lipschitz residual block from a contraction (block LDL^T reduction).

    The block ``y = x + W_2 sigma(W_1 x + b)`` (``W_1: n -> m``, ``W_2: m -> n``) with an elementwise
    slope-[0, 1] ``sigma`` is gamma-Lipschitz if, for a positive diagonal ``Lambda`` (the S-procedure
    with the incremental constraint ``dphi^T Lambda (W_1 dx - dphi) >= 0``),

    .. math::  M = \begin{bmatrix} (\gamma^2 - 1) I & -(W_2 + W_1^T\Lambda) \\
               -(W_2 + W_1^T\Lambda)^T & 2\Lambda - W_2^T W_2 \end{bmatrix} \succeq 0.

    Its block LDL^T factorisation has pivots ``D_0 = (gamma^2 - 1) I`` (needs ``gamma >= 1``) and,
    completing the square in ``W_2`` with ``eps = gamma^2 - 1``,

    .. math::  D_1 = 2\Lambda - \Lambda W_1 W_1^T \Lambda / \gamma^2
               - (\gamma^2/\epsilon)\, E^T E, \qquad E = W_2 + W_1^T \Lambda / \gamma^2.

    ``D_1 \succeq 0`` iff ``Z = [Z_1; Z_2]`` with ``Z_1 = \sqrt{\gamma^2/(2\epsilon)} E \Lambda^{-1/2}``,
    ``Z_2 = W_1^T \Lambda^{1/2} / (\sqrt2 \gamma)`` has ``||Z|| <= 1``.  Hence every contraction ``Z``
    (``2n x m``: ``Z_1`` its first ``n`` output channels) gives a certified block through

    .. math::  W_1 = \sqrt2\,\gamma\,\Lambda^{-1/2} Z_2^T, \qquad
               W_2 = (\sqrt2/\gamma)(\sqrt{\epsilon}\, Z_1 - Z_2)\,\Lambda^{1/2},

    and then ``D_1 = 2 \Lambda^{1/2}(I - Z^T Z)\Lambda^{1/2}``.  At ``gamma = 1`` the pivot ``D_0``
    vanishes, ``W_2 = -W_1^T \Lambda`` and ``Z_1`` drops out (the SLL form with ``Lambda = 2 T^{-1}``).
    For kernels, ``Z^T`` is :func:`transpose_kernel` and the diagonal scalings act per channel; the
    LMI then holds for the zero-padded operators on every image size.  (After Juston et al., 2025,
    "LDLT L-Lipschitz network", whose residual LMI this is; the completion of the square is ours.)

    Parameters
    ----------
    Z : kernel ``(2n, m[, kh, kw])`` with ``||C_Z|| <= 1``
    lam : ``(m,)`` positive multipliers (the diagonal of ``Lambda``, per channel)
    gamma : float >= 1

    Returns
    -------
    W1 : kernel ``(m, n[, kh, kw])``
    W2 : kernel ``(n, m[, kh, kw])``
    """
    if not gamma >= 1.0:
        raise InvalidArgumentError(f"the residual LMI needs gamma >= 1 (the skip path alone is 1-Lipschitz), "
                                   f"got {gamma!r}; scale the block's output for smaller bounds")
    if Z.shape[0] % 2:
        raise InvalidArgumentError(f"Z stacks [Z_1; Z_2] along its output channels, so it needs an even "
                                   f"number of them; got shape {tuple(Z.shape)}")
    n = Z.shape[0] // 2
    Z1, Z2 = Z[:n], Z[n:]
    eps = gamma * gamma - 1.0
    W1 = (math.sqrt(2.0) * gamma) * scale_out(transpose_kernel(Z2), torch.rsqrt(lam))
    W2 = (math.sqrt(2.0) / gamma) * scale_in(math.sqrt(eps) * Z1 - Z2, torch.sqrt(lam))
    return W1, W2
