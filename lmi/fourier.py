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
* :func:`apply_symbol` -- ``y = irfft2(K̂_z rfft2(x)_z) + b``, the convolution itself, with a
  hand-written backward pass (the same three steps with the adjoint symbol); the transforms
  are small real and complex DFT matrix products into a frequency-major layout, where one
  batched product applies all the ``K̂_z`` (faster on CPU than torch's FFTs for these small,
  often odd image sizes, whose generic ``rfft2`` backward also runs a full complex FFT);
* :func:`cayley` -- batched complex Cayley transform (orthonormal columns);
* :func:`block_reflector` -- batched ``I - 2 V (V^* V)^{-1} V^*``.
"""
from __future__ import annotations

import functools
import math

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


@functools.lru_cache(maxsize=64)
def _tap_dft(kernel_size: tuple[int, int], image_size: tuple[int, int], padding: tuple[int, int],
             dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r"""The real ``(2 Z, kh kw)`` matrix ``[Re E; Im E]`` of the half-spectrum DFT of the taps.

    ``E[(u, v), (a, b)] = exp(-2πi (u m_a / H + v n_b / W))`` with ``m_a = p_h - a``,
    ``n_b = p_w - b`` (the true-convolution offsets of :func:`_scatter`), for the ``Z = H (W//2 + 1)``
    frequencies of ``rfft2``; so ``E @ w`` is the symbol of the taps ``w``.  Taps wrapping onto the
    same offset add up, exactly as in :func:`_scatter`.  Computed in float64, then cast.
    """
    (kh, kw), (H, W), (ph, pw) = kernel_size, image_size, padding
    Hr, Wr = rfft_shape(image_size)
    m = (ph - torch.arange(kh, dtype=torch.float64)) % H
    n = (pw - torch.arange(kw, dtype=torch.float64)) % W
    u = torch.arange(Hr, dtype=torch.float64)
    v = torch.arange(Wr, dtype=torch.float64)
    phase = (u[:, None, None, None] * m[None, None, :, None] / H + v[None, :, None, None] * n[None, None, None, :] / W)
    phase = (-2.0 * math.pi * phase).reshape(Hr * Wr, kh * kw)
    return torch.cat([torch.cos(phase), torch.sin(phase)]).to(dtype=dtype, device=device)


def conv_symbol(weight: torch.Tensor, image_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    r"""Symbol of the circular cross-correlation ``nn.Conv2d`` computes with ``weight``.

    ``nn.Conv2d(c_in, c_out, (kh, kw), padding=padding, padding_mode="circular")``
    computes ``y[o, i, j] = sum_{c, a, b} w[o, c, a, b] x[c, i + a - p_h, j + b - p_w]``
    (indices mod ``H``, ``W``).  With the true-convolution kernel
    ``k[o, c, m, n] = sum w[o, c, a, b]`` over taps with ``m = p_h - a``, ``n = p_w - b``
    (mod ``H``, ``W``) this is ``y = k ⊛ x``, whose DFT is ``ŷ_z = k̂_z x̂_z``, i.e.

    .. math::  \hat k_{(u, v)} = \sum_{a, b} w[\cdot, \cdot, a, b]\,
               e^{-2\pi i (u (p_h - a) / H + v (p_w - b) / W)}.

    The sum runs over the ``kh kw`` taps only (one small real matrix product with the
    tap DFT, no FFT of a zero-padded kernel), straight into the frequency-major layout.

    Parameters
    ----------
    weight : (..., c_out, c_in, kh, kw) real tensor
    image_size : (H, W)
    padding : (p_h, p_w)
        For an output of the input's size, a stride-1 convolution needs ``kh = 2 p_h + 1``;
        other paddings give the same map shifted, whose symbol this also is.

    Returns
    -------
    (H, W // 2 + 1, ..., c_out, c_in) complex tensor, contiguous
        ``rfft2(conv(x))[..., z] = symbol[z] @ rfft2(x)[..., z]`` for every ``x`` of that size.
    """
    Hr, Wr = rfft_shape(image_size)
    kh, kw = weight.shape[-2:]
    E = _tap_dft((kh, kw), tuple(image_size), tuple(padding), weight.dtype, weight.device)
    taps = weight.reshape(-1, kh * kw).transpose(0, 1)  # (kh kw, rows)
    ri = E @ taps  # (2 Z, rows): real parts, then imaginary parts
    Z = Hr * Wr
    return torch.complex(ri[:Z], ri[Z:]).reshape(Hr, Wr, *weight.shape[:-2])


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


def apply_symbol(symbol: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    r"""The circular convolution with ``symbol`` applied to real images ``x``, plus an optional per-channel ``bias``.

    ``y = irfft2(ŷ) + bias`` with ``ŷ_z = symbol[z] @ rfft2(x)_z``: one FFT of the input, one
    batched ``c_out x c_in`` matrix product per frequency and one inverse FFT (the backward
    pass is the same three steps with the adjoint, see :class:`_SymbolConv`).  A constant
    image ``b`` has the spectrum ``H W b`` at ``z = 0`` and 0 elsewhere, so the bias is added
    to the zero frequency before the inverse transform.

    Parameters
    ----------
    symbol : (H, W // 2 + 1, c_out, c_in) complex tensor
    x : (..., c_in, H, W) real tensor
    bias : (c_out,) real tensor, optional

    Returns
    -------
    (..., c_out, H, W) real tensor
    """
    H, W = x.shape[-2:]
    Hr, Wr = symbol.shape[:2]
    if (Hr, Wr) != rfft_shape((H, W)) or symbol.shape[-1] != x.shape[-3] or symbol.dim() != 4 or (
            bias is not None and tuple(bias.shape) != (symbol.shape[-2],)):
        raise ShapeMismatchError(f"a symbol of shape {tuple(symbol.shape)} (bias of shape "
                                 f"{None if bias is None else tuple(bias.shape)}) cannot act on images of shape "
                                 f"{tuple(x.shape[-3:])}")
    return _SymbolConv.apply(symbol, x, bias)[0]


@functools.lru_cache(maxsize=64)
def _axis_dft(n: int, inverse: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``n x n`` complex DFT matrix ``e^{∓2πi u h / n}`` (inverse: ``+`` and a factor ``1/n``), from float64."""
    k = torch.arange(n, dtype=torch.float64)
    angle = (2.0 * math.pi / n) * torch.outer(k, k).remainder(n)
    F = torch.polar(torch.ones_like(angle), angle if inverse else -angle)
    return (F / n if inverse else F).to(dtype=dtype, device=device)


def _mirror_counts(W: int) -> torch.Tensor:
    """``c_v`` (float64, ``W // 2 + 1``): 2 for the half-spectrum columns that stand for themselves and their
    conjugate mirror, 1 for ``v = 0`` and (even ``W``) ``v = W / 2``, which have no mirror."""
    c = torch.full((W // 2 + 1,), 2.0, dtype=torch.float64)
    c[0] = 1.0
    if W % 2 == 0:
        c[-1] = 1.0
    return c


#: images of at most this many pixels are transformed by one real matrix product each way (for them it is
#: faster than two axis transforms and a transpose); larger ones axis by axis.  Both compute rfft2 / irfft2.
_WHOLE_IMAGE_DFT_PIXELS = 64


@functools.lru_cache(maxsize=64)
def _real_image_dft(image_size: tuple[int, int], inverse: bool, dtype: torch.dtype, device: torch.device):
    r"""Real matrices of the half-spectrum 2-D DFT of ``H x W`` images (``Z = H (W//2 + 1)`` frequencies).

    Forward, ``(H W, 2Z)``: ``x_flat @ F`` holds ``Re x̂_z, Im x̂_z`` interleaved, ``x̂ = rfft2(x)``
    (``x̂_z = Σ_n x_n e^{-iθ_{z,n}}``, ``θ = 2π (u h / H + v w / W)``).  Inverse, ``(2Z, H W)``:
    ``(Re ŷ_z, Im ŷ_z) @ G = (1/HW) Re Σ_z c_v ŷ_z e^{iθ_{z,n}}`` (:func:`_mirror_counts`), which is
    ``irfft2(ŷ)``: torch's ``irfft2`` keeps the real part of the columns without mirror.  With
    ``H = 1``: the one-sided DFT along one axis (``rfft`` / ``irfft``).  Computed in float64, then cast.
    """
    H, W = image_size
    Hr, Wr = rfft_shape(image_size)
    u, v = torch.arange(Hr, dtype=torch.float64), torch.arange(Wr, dtype=torch.float64)
    h, w = torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
    turns = (torch.outer(u, h).remainder(H)[:, None, :, None] / H
             + torch.outer(v, w).remainder(W)[None, :, None, :] / W)  # (Hr, Wr, H, W)
    angle = (2.0 * math.pi * turns).reshape(Hr * Wr, H * W)
    scale = _mirror_counts(W).repeat(Hr)[:, None] / (H * W) if inverse else torch.ones(1, 1, dtype=torch.float64)
    rows = torch.stack([scale * torch.cos(angle), -scale * torch.sin(angle)], dim=1).reshape(2 * Hr * Wr, H * W)
    return (rows if inverse else rows.t().contiguous()).to(dtype=dtype, device=device)


def _to_rows(x: torch.Tensor) -> torch.Tensor:
    """``rfft2`` of real images ``(..., c, H, W)`` as ``(Z, M, c)`` per-frequency row blocks (``M`` images), contiguous.

    Small images (:data:`_WHOLE_IMAGE_DFT_PIXELS`): one real product with the whole-image DFT,
    then one 2-D transpose to the frequency-major layout.  Larger ones: the one-sided DFT along
    the contiguous last axis as a real product, one 2-D transpose bringing the rows ``h`` to the
    front, and the DFT along ``H`` as one complex ``H x H`` product that writes the
    frequency-major layout directly.  (Matrix products, because torch's FFTs of these small,
    odd sizes copy their operands; a 2-D transpose, because torch copies it several times
    faster than the equivalent 3-D permutation.)
    """
    c, H, W = x.shape[-3:]
    Wr = W // 2 + 1
    if H * W <= _WHOLE_IMAGE_DFT_PIXELS:
        F = _real_image_dft((H, W), False, x.dtype, x.device)
        xf = torch.view_as_complex((x.reshape(-1, H * W) @ F).view(-1, H * Wr, 2))  # (M c, Z)
        return xf.t().contiguous().view(H * Wr, -1, c)
    along_w = _real_image_dft((1, W), False, x.dtype, x.device)  # the one-sided DFT along the last axis
    xw = torch.view_as_complex((x.reshape(-1, W) @ along_w).view(-1, Wr, 2))
    t = xw.view(-1, H * Wr).t().contiguous().view(H, -1)  # (H, Wr M c)
    return (_axis_dft(H, False, t.dtype, t.device) @ t).view(H * Wr, -1, c)


def _from_rows(rows: torch.Tensor, lead: tuple, image_size: tuple[int, int]) -> torch.Tensor:
    """``irfft2`` of ``(Z, M, c)`` row blocks (the layout of :func:`_to_rows`): real images ``(*lead, c, H, W)``.

    As ``torch.fft.irfft2``: the inverse DFT along ``H``, then the one-sided real inverse
    along ``W``, which keeps the real part of the columns ``v = 0`` and ``v = W/2`` (small
    images: both at once, one real product with the whole-image inverse).
    """
    Z, _, c = rows.shape
    H, W = image_size
    Wr = Z // H
    real = rows.real.dtype
    if H * W <= _WHOLE_IMAGE_DFT_PIXELS:
        t = rows.view(Z, -1).t().contiguous()  # (M c, Z)
        y = torch.view_as_real(t).view(-1, 2 * Z) @ _real_image_dft((H, W), True, real, rows.device)
        return y.view(*lead, c, H, W)
    t = (_axis_dft(H, True, rows.dtype, rows.device) @ rows.view(H, -1)).view(Z, -1).t().contiguous()  # (M c, Z)
    y = torch.view_as_real(t).view(-1, 2 * Wr) @ _real_image_dft((1, W), True, real, rows.device)
    return y.view(*lead, c, H, W)


@functools.lru_cache(maxsize=64)
def _self_mirror_weights(spectrum_shape: tuple[int, int], image_size: tuple[int, int], dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
    """``(Z, 1, 1)`` real weights ``c_v / (H W)`` (:func:`_mirror_counts`), frequency-major."""
    H, W = image_size
    return (_mirror_counts(W).repeat(spectrum_shape[0]) / (H * W)).view(-1, 1, 1).to(dtype=dtype, device=device)


class _SymbolConv(torch.autograd.Function):
    r"""``(y, x̂) = (irfft2(K̂ · rfft2(x)) + b, rfft2(x))``, with a hand-written backward pass (``x̂`` is saved).

    With ``N = H W``, ``x̂ = rfft2(x)``, ``ŷ_z = K̂_z x̂_z`` and ``y = irfft2(ŷ) = (1/N) Re Σ_z c_v
    ŷ_z e^{2πi z·n}`` (the sum over the half spectrum; ``c_v = 2`` for the columns that stand for
    themselves and their conjugate mirror, ``c_v = 1`` for ``v = 0`` and, for even ``W``,
    ``v = W/2``), the gradients in torch's convention (``∂L/∂Re + i ∂L/∂Im``) of a real loss
    with gradient ``g`` at ``y`` are, with ``ĝ = rfft2(g)``:

    * at ``ŷ``: ``(c_v / N) ĝ_z``; hence at the symbol ``(c_v / N) Σ_images ĝ_z x̂_z^*``;
    * at ``x``: ``Re Σ_z (K̂_z^* (c_v/N) ĝ_z) e^{2πi z·n} = irfft2(K̂^* ĝ)`` -- the convolution
      with the adjoint symbol, the weights ``c_v`` cancelling against ``irfft2``'s;
    * at the bias ``b``: the sum of ``g`` over images and pixels, i.e. ``Σ_images Re ĝ_{z=0}``.

    So the backward pass costs what the forward does (one FFT, per-frequency products, one
    inverse FFT), where torch's generic backward of ``rfft2`` zero-pads to the full spectrum
    and runs a full complex FFT, and the batched products run on contiguous operands only
    (on CPU, products of permuted complex views fall back to one call per matrix).
    ``setup_context`` and ``generate_vmap_rule`` make it usable under ``torch.func``
    transforms (:func:`lmi.certify.jacobian_norms`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(symbol, x, bias):
        Hr, Wr, c_out, c_in = symbol.shape
        xf = _to_rows(x)  # (Z, M, c_in): row m of block z is x̂_zᵀ of image m
        yf = torch.bmm(xf, symbol.reshape(Hr * Wr, c_out, c_in).mT)  # rows x̂_zᵀ K̂_zᵀ
        if bias is not None:  # the spectrum of the constant image b: H W b at z = 0
            yf[0] += (x.shape[-2] * x.shape[-1]) * bias
        return _from_rows(yf, x.shape[:-3], tuple(x.shape[-2:])), xf

    @staticmethod
    def setup_context(ctx, inputs, output):
        symbol, x, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(symbol, output[1])
        ctx.image_size = tuple(x.shape[-2:])
        ctx.lead = tuple(x.shape[:-3])

    @staticmethod
    def backward(ctx, g, _unused):
        symbol, xf = ctx.saved_tensors
        Hr, Wr, c_out, c_in = symbol.shape
        gf = _to_rows(g.contiguous())  # (Z, M, c_out): rows ĝ_zᵀ
        grad_symbol = grad_x = grad_bias = None
        if ctx.needs_input_grad[2]:  # Σ over images and pixels of g = Σ_m ĝ_{m, z=0} (real)
            grad_bias = gf[0].real.sum(dim=0)
        if ctx.needs_input_grad[0]:
            # Σ_m ĝ_{m,z} x̂_{m,z}^* = (X_z^* G_z)ᵀ: a conjugate-transposed contiguous operand is a BLAS flag
            weights = _self_mirror_weights((Hr, Wr), ctx.image_size, xf.real.dtype, xf.device)
            grad_symbol = torch.bmm(xf.mH, gf).mT * weights
            grad_symbol = grad_symbol.reshape(Hr, Wr, c_out, c_in)
        if ctx.needs_input_grad[1]:
            K = symbol.reshape(Hr * Wr, c_out, c_in).resolve_conj()
            gx = torch.bmm(gf, K.conj().resolve_conj())  # rows ĝ_zᵀ conj(K̂_z) = (K̂_z^* ĝ_z)ᵀ
            grad_x = _from_rows(gx, ctx.lead, ctx.image_size)
        return grad_symbol, grad_x, grad_bias


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
