r"""Fourier-domain maths of circular convolutions (pure functions, no state).

A circular (periodic) convolution on images of a fixed size ``H x W`` is
block-diagonalised by the 2-D discrete Fourier transform: with ``x̂ = DFT(x)``
taken per channel, the convolution ``y = K x`` reads

.. math::  \hat y_z = \hat K_z\, \hat x_z \qquad \text{for every frequency } z = (u, v),

where ``K̂_z`` is a ``c_out x c_in`` complex matrix, the *symbol* of the convolution at
``z`` (Sedghi, Gupta & Long, ICLR 2019).  The normalised DFT is unitary, so the
operator norm of the convolution is ``max_z ||K̂_z||_2``, and its singular values are
those of all the ``K̂_z`` together.  A spatial kernel is real exactly when the
symbol is conjugate-symmetric, ``K̂_{-z} = conj(K̂_z)``; because of that symmetry
only the half spectrum of ``torch.fft.rfft2`` (``H x (W // 2 + 1)`` frequencies) is
stored.

Every map here that turns free symbols into constrained ones (:func:`cayley`,
:func:`block_reflector`) is built from sums, products, conjugate transposes and
inverses with real coefficients, so it commutes with complex conjugation: applied
to the symbol of a *real* free kernel, it returns a conjugate-symmetric symbol,
i.e. again the symbol of a real kernel.  That is how the layers of :mod:`lmi.conv`
get real spatial kernels from per-frequency constructions.

Layout: a symbol is a complex tensor of shape ``(H, W // 2 + 1, c_out, c_in)``.

Functions
---------
* :func:`conv_symbol` -- the symbol of ``nn.Conv2d(weight, padding, padding_mode="circular")``;
* :func:`symbol_to_conv_weight` -- the inverse: a ``nn.Conv2d`` weight (kernel of
  the image size, rolled) and padding computing the circular convolution of a symbol;
* :func:`apply_symbol` -- ``y = irfft2(K̂_z rfft2(x)_z)``, the convolution itself;
* :func:`cayley` -- batched complex Cayley transform (orthonormal columns);
* :func:`block_reflector` -- batched ``I - 2 V (V^* V)^{-1} V^*``.
"""
from __future__ import annotations

import torch

from .errors import InvalidArgumentError, ShapeMismatchError
from .functional import cayley  # the one Cayley transform, real or complex (re-exported)

__all__ = [
    "rfft_shape",
    "conv_symbol",
    "symbol_to_conv_weight",
    "apply_symbol",
    "cayley",
    "block_reflector",
]


def rfft_shape(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W // 2 + 1)``: the frequencies ``torch.fft.rfft2`` keeps for an ``H x W`` image."""
    H, W = image_size
    return H, W // 2 + 1


def _scatter(kernel_len: int, n: int, pad: int, ref: torch.Tensor) -> torch.Tensor:
    """The 0/1 ``(n, kernel_len)`` matrix ``S[(pad - a) mod n, a] = 1``.

    Tap ``a`` of a cross-correlation with circular padding ``pad`` reads the input at
    offset ``a - pad``, i.e. it is the tap ``m = pad - a`` (mod ``n``) of a true
    circular convolution; ``S`` moves the taps there, adding those that wrap onto the
    same offset.
    """
    S = torch.zeros(n, kernel_len, dtype=ref.dtype, device=ref.device)
    a = torch.arange(kernel_len, device=ref.device)
    S[(pad - a) % n, a] = 1.0
    return S


def conv_symbol(weight: torch.Tensor, image_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    r"""Symbol of the circular cross-correlation ``nn.Conv2d`` computes with ``weight``.

    ``nn.Conv2d(c_in, c_out, (kh, kw), padding=padding, padding_mode="circular")``
    computes ``y[o, i, j] = sum_{c, a, b} w[o, c, a, b] x[c, i + a - p_h, j + b - p_w]``
    (indices mod ``H``, ``W``).  With the true-convolution kernel
    ``k[o, c, m, n] = sum w[o, c, a, b]`` over taps with ``m = p_h - a``, ``n = p_w - b``
    (mod ``H``, ``W``) this is ``y = k ⊛ x``, whose DFT is ``ŷ_z = k̂_z x̂_z``.

    Parameters
    ----------
    weight : (..., c_out, c_in, kh, kw) real tensor
    image_size : (H, W)
    padding : (p_h, p_w)
        For an output of the input's size, a stride-1 convolution needs ``kh = 2 p_h + 1``;
        other paddings give the same map shifted, whose symbol this also is.

    Returns
    -------
    (H, W // 2 + 1, ..., c_out, c_in) complex tensor
        ``rfft2(conv(x))[..., z] = symbol[z] @ rfft2(x)[..., z]`` for every ``x`` of that size.
    """
    H, W = image_size
    kh, kw = weight.shape[-2:]
    Sh = _scatter(kh, H, padding[0], weight)
    Sw = _scatter(kw, W, padding[1], weight)
    k = Sh @ weight @ Sw.transpose(0, 1)  # (..., c_out, c_in, H, W): the true-convolution kernel
    khat = torch.fft.rfft2(k)
    # contiguous matrices: batched products on strided complex views fall back to one call per matrix
    return torch.movedim(khat, (-2, -1), (0, 1)).contiguous()


def symbol_to_conv_weight(symbol: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""A ``nn.Conv2d`` weight and padding whose circular convolution has ``symbol``.

    The spatial kernel ``k = irfft2(symbol)`` has the full image size.  A stride-1
    circular ``nn.Conv2d`` keeps the image size when ``kernel = 2 * padding + 1``, so
    the exported kernel has ``K_h = H`` rows for odd ``H`` and ``K_h = H + 1`` for even
    ``H`` (padding ``K_h // 2``; the two taps ``a = 0`` and ``a = H`` then read the same
    input row, so the last one is zero), and likewise for ``W``.  Tap ``a`` holds
    ``k[(p_h - a) mod H]`` (the inverse of :func:`conv_symbol`).

    ``symbol`` should be conjugate-symmetric (the symbol of a real kernel); ``irfft2``
    keeps the real part of the self-conjugate frequencies, so rounding-level asymmetry
    is projected away exactly as :func:`apply_symbol` does.

    Returns
    -------
    weight : (c_out, c_in, K_h, K_w) real tensor
    padding : (K_h // 2, K_w // 2)
    """
    H, W = image_size
    k = torch.fft.irfft2(torch.movedim(symbol, (0, 1), (-2, -1)), s=(H, W))
    sizes = (H + 1 - H % 2, W + 1 - W % 2)
    pads = (sizes[0] // 2, sizes[1] // 2)
    gathers = []
    for n, K, p in zip((H, W), sizes, pads):
        G = _scatter(K, n, p, k).transpose(0, 1).clone()  # (K, n): G[a, (p - a) mod n] = 1
        if K > n:  # even size: taps 0 and K - 1 = n read the same input offset; keep tap 0 only
            G[K - 1] = 0.0
        gathers.append(G)
    weight = gathers[0] @ k @ gathers[1].transpose(0, 1)
    return weight, pads


def apply_symbol(symbol: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The circular convolution with ``symbol`` applied to real images ``x``.

    ``y = irfft2(ŷ)`` with ``ŷ_z = symbol[z] @ rfft2(x)_z``: one FFT of the input, one
    batched ``c_out x c_in`` matrix product per frequency and one inverse FFT.

    Parameters
    ----------
    symbol : (H, W // 2 + 1, c_out, c_in) complex tensor
    x : (..., c_in, H, W) real tensor

    Returns
    -------
    (..., c_out, H, W) real tensor
    """
    H, W = x.shape[-2:]
    Hr, Wr = symbol.shape[:2]
    if (Hr, Wr) != rfft_shape((H, W)) or symbol.shape[-1] != x.shape[-3]:
        raise ShapeMismatchError(f"a symbol of shape {tuple(symbol.shape)} cannot act on images of shape "
                                 f"{tuple(x.shape[-3:])}")
    c_out, c_in = symbol.shape[-2:]
    lead = x.shape[:-3]
    xf = torch.fft.rfft2(x).reshape(-1, c_in, Hr * Wr).permute(2, 0, 1)  # (Z, N, c_in)
    # (Z, N, c_out): row z is x̂_zᵀ K̂_zᵀ
    yf = _ContiguousBmm.apply(xf, symbol.reshape(Hr * Wr, c_out, c_in).transpose(1, 2))
    yf = yf.permute(1, 2, 0).reshape(*lead, c_out, Hr, Wr).contiguous()  # c2r FFTs are faster on contiguous input
    return torch.fft.irfft2(yf, s=(H, W))


class _ContiguousBmm(torch.autograd.Function):
    """``torch.bmm(a, b)`` on contiguous copies, in the forward and the backward pass.

    The products of :func:`apply_symbol` act on permuted views of FFT outputs, and so do
    their gradients; CPU batched products of permuted complex views run per matrix and
    are about 100x slower than on contiguous operands.  Gradients follow torch's
    convention for holomorphic maps: ``grad_a = g b^*``, ``grad_b = a^* g``.
    """

    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        return torch.bmm(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.contiguous()
        # conjugate-transposed views of contiguous tensors are fast operands (BLAS's 'C' flag)
        grad_a = torch.bmm(g, b.mH) if ctx.needs_input_grad[0] else None
        grad_b = torch.bmm(a.mH, g) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def _eye(n: int, ref: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=ref.dtype, device=ref.device)


def block_reflector(V: torch.Tensor) -> torch.Tensor:
    r"""Batched block reflector ``W = I - 2 V (V^* V)^{-1} V^*`` (Lai et al., 2025).

    ``P = V (V^* V)^{-1} V^*`` is the orthogonal projector onto the column space of
    ``V`` (``P = P^* = P^2``), so ``W = I - 2P`` is Hermitian and ``W^* W = I - 4P +
    4P^2 = I``: a unitary reflection through the orthogonal complement of ``range(V)``,
    with eigenvalues ``-1`` (multiplicity ``rank V``) and ``+1``.

    ``P`` is formed as ``Q Q^*`` with ``Q`` the orthonormal factor of the reduced QR
    factorisation of ``V``: equal to the formula above whenever ``V`` has full column
    rank, and unitary up to rounding however ill-conditioned ``V^* V`` is (a solve
    with ``V^* V`` loses accuracy with its condition number).  The map commutes with
    complex conjugation (``P`` depends on ``range(V)`` only).

    Parameters
    ----------
    V : (..., n, r) tensor, ``r <= n``

    Returns
    -------
    (..., n, n) tensor
    """
    n, r = V.shape[-2:]
    if r > n:
        raise InvalidArgumentError(f"a block reflector needs V of shape (..., n, r) with r <= n, got {tuple(V.shape)}")
    Q, _ = torch.linalg.qr(V, mode="reduced")
    return _eye(n, V) - 2.0 * (Q @ Q.mH)
