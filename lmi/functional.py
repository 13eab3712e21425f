"""Pure tensor maths shared by the Lipschitz parameterizations.

Every function here is a side-effect free map from free parameters (tensors) to
constrained quantities.  The layers in :mod:`lmi.layers` and the networks in
:mod:`lmi.models` only wire these pieces together, so each piece of maths lives
in exactly one place:

* :func:`cayley` -- the Cayley transform of a tall matrix (orthonormal columns);
  used by the sandwich layer (Wang & Manchester, ICML 2023) and by the
  orthogonal baseline.
* :func:`contraction` -- a strict contraction built from a Cholesky factor,
  ``W = L^{-1} V`` with ``L L^T = V V^T + alpha I``; used by the LDL^T network.
* :func:`gershgorin_rowsum` -- the scaled absolute row sums
  ``sum_j |P_ij| exp(q_j - q_i)`` that upper bound a PSD matrix by a diagonal
  one (Gershgorin discs); used by AOL, SLL.
* :func:`abs_chain` -- the chain of absolute-value products behind the
  Gershgorin certificate of a whole network.
* :func:`lipsdp_matrix` -- the LipSDP matrix ``M(rho, Lambda)`` (docs/formulations.md §1) for
  a feed-forward network with slope-[0, 1] activations, used to check witnesses
  without an SDP solver.
* :func:`layerwise_matrix` -- the same for 1-Lipschitz activations (MaxMin,
  GroupSort, …) with one scalar multiplier per layer, the certificate of the
  layer-wise (product) parameterizations.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import InvalidArgumentError, ShapeMismatchError

__all__ = [
    "cayley",
    "semi_orthogonal",
    "contraction",
    "gershgorin_rowsum",
    "aol_scale",
    "sll_diag",
    "abs_chain",
    "lipsdp_matrix",
    "layerwise_matrix",
    "lmi_max_eig",
    "relative_max_eig",
    "product_witness",
]


def _eye_like(n: int, ref: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=ref.dtype, device=ref.device)


def cayley(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cayley transform (real, or batched complex) of the stacked matrices ``[X; Y]``.

    With ``Z = X - X^* + Y^* Y`` (``X`` is ``q x q``, ``Y`` is ``p x q``, ``^*`` the
    conjugate transpose) return

    .. math::  C = (I + Z)^{-1}(I - Z) = 2 (I + Z)^{-1} - I, \qquad D = -2\,Y (I + Z)^{-1}.

    Then ``C^* C + D^* D = I_q`` (``[C; D]`` has orthonormal columns): ``Z + Z^* =
    2 Y^* Y``, so with ``M = I + Z``, ``(I - Z)^*(I - Z) + 4 Y^* Y = M^* M - 2(Z + Z^*)
    + 4 Y^* Y = M^* M``, and multiplying by ``M^{-*}`` and ``M^{-1}`` gives the identity.
    ``M`` is invertible for every ``X, Y``: its Hermitian part is ``I + Y^* Y ≻ 0``.
    With ``p = 0``, ``C`` is unitary (the classical Cayley map of the skew-Hermitian
    ``X - X^*``).  In the sandwich notation ``A^T = C`` and ``B^T = D``, hence
    ``A A^T + B B^T = I``.  It commutes with complex conjugation, so a
    conjugate-symmetric batch of Fourier symbols (:mod:`lmi.fourier`) stays
    conjugate-symmetric: real spatial kernels stay real.

    Parameters
    ----------
    X : (..., q, q) tensor (real or complex)
    Y : (..., p, q) tensor, same dtype (``p`` may be 0)

    Returns
    -------
    C : (..., q, q) tensor
    D : (..., p, q) tensor
    """
    if X.shape[-1] != X.shape[-2] or Y.shape[-1] != X.shape[-1]:
        raise ShapeMismatchError(f"cayley needs X of shape (..., q, q) and Y of shape (..., p, q), got "
                                 f"{tuple(X.shape)} and {tuple(Y.shape)}")
    C, D, _ = _Cayley.apply(X, Y)
    return C, D


class _Cayley(torch.autograd.Function):
    r"""The map of :func:`cayley` with a hand-written backward pass (a handful of products).

    One ``q x q`` inverse serves both factors: ``(I + Z)^{-1}(I - Z) = 2 (I + Z)^{-1} - I``, and
    it is well conditioned, the Hermitian part of ``M = I + Z`` being ``I + Y^* Y ⪰ I``, so
    ``||M^{-1}|| <= 1``.  Gradients, in torch's convention for complex tensors (``∂L/∂Re +
    i ∂L/∂Im``; real tensors: the same formulas with transposes), with ``N = M^{-1}``:

    .. math::  G_N = 2 G_C - 2 Y^* G_D, \quad G_M = -N^* G_N N^*, \quad
               G_X = G_M - G_M^*, \quad G_Y = -2 G_D N^* + Y (G_M + G_M^*),

    from ``C = 2N - I``, ``D = -2 Y N``, ``dN = -N dM N`` and ``dM = dX - dX^* + dY^* Y + Y^* dY``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(X, Y):
        eye = _eye_like(X.shape[-1], X)
        N = torch.linalg.inv(eye + (X - X.mH + Y.mH @ Y))
        return 2.0 * N - eye, -2.0 * (Y @ N), N

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(inputs[1], output[2])

    @staticmethod
    def backward(ctx, gC, gD, _unused):
        Y, N = ctx.saved_tensors
        gN = None
        if gC is not None:
            gN = 2.0 * gC
        if gD is not None:
            gN = -2.0 * (Y.mH @ gD) if gN is None else gN - 2.0 * (Y.mH @ gD)
        if gN is None:
            return None, None
        gM = -(N.mH @ gN @ N.mH)
        gX = gM - gM.mH if ctx.needs_input_grad[0] else None
        gY = None
        if ctx.needs_input_grad[1]:
            gY = Y @ (gM + gM.mH)
            if gD is not None:
                gY = gY - 2.0 * (gD @ N.mH)
        return gX, gY


def semi_orthogonal(P: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """A ``out x in`` matrix with orthonormal rows or columns (spectral norm 1).

    ``P`` is a free ``(max, min)`` matrix whose first ``min`` rows are ``X`` and
    remaining rows ``Y`` of :func:`cayley`.  If ``out <= in`` the result has
    orthonormal rows (``W W^T = I``), otherwise orthonormal columns.
    """
    k = min(out_features, in_features)
    C, D = cayley(P[:k], P[k:])
    tall = torch.cat([C, D], dim=0)  # (max, min), orthonormal columns
    return tall if out_features >= in_features else tall.transpose(0, 1)


def contraction(V: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Strict contraction from a free matrix through a Cholesky factor.

    With ``L L^T = V V^T + alpha I`` (``L`` lower triangular), ``W = L^{-1} V``
    satisfies

    .. math::  I - W W^T = \alpha\, L^{-1} L^{-T} \succ 0,

    i.e. ``||W||_2 < 1`` for every ``V``, and the slack has the closed-form
    factor ``sqrt(alpha) L^{-1}``.  This is the Cholesky device of the LDL^T
    parameterization (Juston et al., 2025), written on the row side so the
    slack's factor is available without another decomposition.

    Returns
    -------
    W : tensor, same shape as ``V``
    Linv : (m, m) lower-triangular ``L^{-1}``
    """
    m = V.shape[0]
    eye = _eye_like(m, V)
    G = V @ V.transpose(0, 1) + alpha * eye
    L = torch.linalg.cholesky(G)
    W = torch.linalg.solve_triangular(L, V, upper=False)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    return W, Linv


def gershgorin_rowsum(P: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    r"""Scaled Gershgorin row sums ``t_i = sum_j |P_ij| exp(q_j - q_i)``.

    For symmetric ``P``, ``diag(t) - P`` is positive semidefinite: it is the
    congruence ``diag(e^{-q}) S diag(e^{-q})`` of a diagonally dominant ``S``.
    """
    A = P.abs()
    if q is None:
        return A.sum(dim=1)
    return (A * torch.exp(q.unsqueeze(0) - q.unsqueeze(1))).sum(dim=1)


def aol_scale(V: torch.Tensor, q: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""AOL rescaling (Prach & Lampert, 2022): ``W = V diag(t)^{-1/2}`` with
    ``t = gershgorin_rowsum(V^T V)``, hence ``W^T W \preceq I``."""
    t = gershgorin_rowsum(V.transpose(0, 1) @ V, q)
    return V * torch.rsqrt(t + eps).unsqueeze(0)


def sll_diag(V: torch.Tensor, q: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""SLL diagonal (Araujo et al., ICLR 2023): ``t = gershgorin_rowsum(V V^T, q)``
    so that ``diag(t) \succeq V V^T`` (``V`` is ``k x n``)."""
    return gershgorin_rowsum(V @ V.transpose(0, 1), q) + eps


def abs_chain(weights: Sequence[torch.Tensor], s0: torch.Tensor, eps: float):
    r"""Forward/backward sweeps of the scaled Gershgorin certificate.

    For a feed-forward net with weights ``W_1..W_l`` and slope-[0, 1]
    activations, the augmented LipSDP matrix (``W_l^T W_l`` replaced by its
    Schur complement) is block tridiagonal with diagonal blocks
    ``rho I, 2 Lambda_1, ..., 2 Lambda_{l-1}, I`` and off-diagonal blocks
    ``-Lambda_k W_k`` and ``W_l``.  With the positive scaling vectors

        s_0 given,  s_k = |W_k| s_{k-1} + eps          (k = 1..l)

    and multipliers (backwards, ``Lambda_l = I``)

        lambda_k = (|W_{k+1}|^T Lambda_{k+1} s_{k+1}) / s_k,

    every row of ``diag(s) (-M_aug) diag(s)`` is diagonally dominant except the
    input block, which needs ``rho s_0 >= |W_1|^T Lambda_1 s_1``.  Returns the
    smallest such ``rho`` (``rho_req``) and the multipliers
    ``[lambda_1, ..., lambda_{l-1}]``.
    """
    s = [s0]
    for W in weights:
        s.append(W.abs() @ s[-1] + eps)
    lam_next = torch.ones_like(s[-1])  # Lambda_l = I
    lams = []
    for k in range(len(weights) - 1, 0, -1):  # k = l-1 .. 1 (0-based weights[k] = W_{k+1})
        lam_k = (weights[k].abs().transpose(0, 1) @ (lam_next * s[k + 1])) / s[k]
        lams.append(lam_k)
        lam_next = lam_k
    lams.reverse()
    rho_req = ((weights[0].abs().transpose(0, 1) @ (lam_next * s[1])) / s0).max()
    return rho_req, lams


def lipsdp_matrix(weights: Sequence[torch.Tensor], lambdas: Sequence[torch.Tensor], rho) -> torch.Tensor:
    r"""The LipSDP-Neuron matrix ``M(rho, Lambda)`` for slope-[0, 1] activations.

    Variables ``z = (dx_0, dx_1, ..., dx_{l-1})``; ``M`` is block tridiagonal:
    ``(0,0) = -rho I``, ``(k,k) = -2 Lambda_k`` (plus ``W_l^T W_l`` on the last
    block), ``(k-1,k) = W_k^T Lambda_k``.  ``M \preceq 0`` certifies that the
    network is ``sqrt(rho)``-Lipschitz in the 2-norm (docs/formulations.md §1).
    """
    W = [w.detach().to(torch.float64) for w in weights]
    lam = [x.detach().to(torch.float64).reshape(-1) for x in lambdas]
    _check_multiplier_count(W, lam)
    sizes = [W[0].shape[1]] + [w.shape[0] for w in W[:-1]]
    offs = [0]
    for n in sizes:
        offs.append(offs[-1] + n)
    M = torch.zeros(offs[-1], offs[-1], dtype=torch.float64, device=W[0].device)
    M[: sizes[0], : sizes[0]] = -float(rho) * torch.eye(sizes[0], dtype=torch.float64, device=W[0].device)
    for k in range(1, len(W)):
        a, b = offs[k], offs[k + 1]
        pa, pb = offs[k - 1], offs[k]
        M[a:b, a:b] = -2.0 * torch.diag(lam[k - 1])
        off = W[k - 1].transpose(0, 1) * lam[k - 1].unsqueeze(0)  # W_k^T Lambda_k
        M[pa:pb, a:b] += off
        M[a:b, pa:pb] += off.transpose(0, 1)
    a, b = offs[-2], offs[-1]
    M[a:b, a:b] += W[-1].transpose(0, 1) @ W[-1]
    return M


def _check_multiplier_count(weights, lambdas) -> None:
    if len(lambdas) != len(weights) - 1:
        raise InvalidArgumentError(f"need {len(weights) - 1} multiplier vectors (one per hidden layer), "
                                   f"got {len(lambdas)}")


def _scalar_multiplier(lam: torch.Tensor, k: int) -> float:
    """The one multiplier of hidden layer ``k`` (a constant vector is accepted)."""
    if lam.numel() == 0 or not bool((lam == lam[0]).all()):
        raise InvalidArgumentError(
            f"the 1-Lipschitz constraint of hidden layer {k} takes one scalar multiplier (a group activation "
            f"mixes neurons, so per-neuron multipliers are not valid); got {lam.numel()} different values"
        )
    return float(lam[0])


def layerwise_matrix(weights: Sequence[torch.Tensor], lambdas: Sequence[torch.Tensor], rho) -> torch.Tensor:
    r"""The LipSDP matrix for 1-Lipschitz activations, one scalar multiplier per hidden layer.

    A 1-Lipschitz activation (elementwise or not: MaxMin, GroupSort, Householder)
    satisfies ``lambda (||dx_k||^2 - ||dphi_k||^2) >= 0`` for any scalar
    ``lambda >= 0``.  With ``dv_0 = dx_0`` and ``dv_k`` the output differences of
    hidden layer ``k``, adding these constraints to ``||W_l dv_{l-1}||^2 - rho
    ||dx_0||^2`` gives the block-diagonal matrix

    .. math::  \mathrm{diag}(-\rho I + \lambda_1 W_1^T W_1,\ -\lambda_1 I + \lambda_2 W_2^T W_2,
               \ \dots,\ -\lambda_{l-1} I + W_l^T W_l),

    and ``M \preceq 0`` certifies that the network is ``sqrt(rho)``-Lipschitz in the
    2-norm.  The product-of-norms witness (:func:`product_witness`) makes every
    block exactly tight in its top eigenvalue.
    """
    W = [w.detach().to(torch.float64) for w in weights]
    _check_multiplier_count(W, lambdas)
    hidden = [_scalar_multiplier(torch.as_tensor(x).detach().reshape(-1), k + 1) for k, x in enumerate(lambdas)]
    before = [float(rho)] + hidden  # multiplier of the input of layer k (rho for the network input)
    after = hidden + [1.0]  # multiplier of its output (1 for the network output)
    blocks = [-b * torch.eye(Wk.shape[1], dtype=torch.float64, device=Wk.device) + a * (Wk.transpose(0, 1) @ Wk)
              for Wk, b, a in zip(W, before, after)]
    return torch.block_diag(*blocks)


def relative_max_eig(M: torch.Tensor, scale: float = 0.0) -> float:
    r"""Largest eigenvalue of the symmetric part of ``M`` divided by ``max(max |M_ij|, scale)``.

    Scale-free (``M`` and ``c M`` with ``c scale`` give the same value), so a tolerance
    on it means the same thing for every gamma; ``<= 0`` up to rounding means
    ``M \preceq 0``.  Pass as ``scale`` the size of the terms summed into ``M`` (e.g.
    ``rho`` and the multipliers) where they cancel, as at a tight witness.  NaN when
    ``M`` has non-finite entries.
    """
    if not bool(torch.isfinite(M).all()):
        return math.nan
    denom = max(float(M.abs().max()), float(scale))
    if denom == 0.0:  # the zero matrix is negative semidefinite
        return 0.0
    return float(torch.linalg.eigvalsh(0.5 * (M + M.T)).max()) / denom


def lmi_max_eig(weights, lambdas, rho) -> float:
    """Largest eigenvalue of :func:`lipsdp_matrix` (``<= 0`` means certified)."""
    M = lipsdp_matrix(weights, lambdas, rho)
    return float(torch.linalg.eigvalsh(0.5 * (M + M.T)).max())


def product_witness(weights: Sequence[torch.Tensor]):
    r"""LipSDP-Layer witness of the product-of-norms bound.

    With ``q_0 = rho = prod ||W_k||^2`` and ``q_k = q_{k-1} / ||W_k||^2``,
    ``Lambda_k = q_k I`` makes ``M(rho, Lambda) \preceq 0``.  Returns
    ``(rho, lambdas)``.
    """
    norms = [float(torch.linalg.matrix_norm(w.detach().to(torch.float64), ord=2)) for w in weights]
    rho = 1.0
    for n in norms:
        rho *= n * n
    lams, q = [], rho
    for k in range(len(weights) - 1):
        q = q / max(norms[k] ** 2, 1e-300)
        lams.append(torch.full((weights[k].shape[0],), q, dtype=torch.float64))
    return rho, lams
