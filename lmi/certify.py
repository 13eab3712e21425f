"""Certified robustness of Lipschitz classifiers and empirical Lipschitz lower bounds.

For a classifier ``f`` that is ``L``-Lipschitz in the 2-norm, the logit margin
``m(x) = f_y(x) - max_{j != y} f_j(x)`` is ``sqrt(2) L``-Lipschitz (each
difference of two logits is ``||e_y - e_j|| L = sqrt(2) L``-Lipschitz), so the
prediction cannot change within radius ``m(x) / (sqrt(2) L)``.

Any certified ``L`` works; the smaller, the larger the certified radii.  A trained
parameterization often uses only part of its budget ``gamma``, so lipsdp's certified
bound of the same network can be lower: :func:`tightest_bound` takes the smaller of the
two, and ``certified_accuracy(..., use_lipsdp=True)`` uses it (opt-in: it solves an SDP).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "margins",
    "certified_radius",
    "certified_accuracy",
    "lipsdp_bound",
    "tightest_bound",
    "jacobian_norms",
    "empirical_lipschitz",
]


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y(x) - max_{j != y} f_j(x)`` per row (negative when misclassified)."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter(1, labels.view(-1, 1), True)
    return true - logits.masked_fill(mask, -torch.inf).max(dim=1).values


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Certified 2-norm radius ``max(margin, 0) / (sqrt(2) L)`` per example (0 if misclassified)."""
    if not (lipschitz > 0 and math.isfinite(lipschitz)):
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"lipschitz must be a positive finite number, got {lipschitz!r}")
    return margins(logits.detach(), labels).clamp_min(0.0) / (math.sqrt(2.0) * float(lipschitz))


def lipsdp_bound(model, method: str = "lipsdp-neuron", **options) -> float:
    """lipsdp's certified 2-norm bound of ``model``.

    An lmi network is certified through its plain export (:func:`lmi.to_plain`, in the
    model's dtype; for sandwich and SLL the forward computes the factored form, which
    equals the export up to rounding); any other model goes to
    :func:`lipsdp.estimate` as it is (torch models of the supported layers, deel-torchlip
    and orthogonium models included).  ``options`` go to :func:`lipsdp.estimate`.
    """
    import lipsdp

    from .export import to_plain
    from .models import LipschitzMLP

    plain = to_plain(model) if isinstance(model, LipschitzMLP) else model
    return float(lipsdp.estimate(plain, method=method, **options).value)


def tightest_bound(model, method: str = "lipsdp-neuron", **options) -> tuple[float, str]:
    """``(L, source)``: the smaller of ``model.lipschitz_bound()`` and :func:`lipsdp_bound`.

    ``source`` is ``"parameterization"`` or ``"lipsdp"``.  Both are certified upper bounds of
    the same function, so the smaller one is too.
    """
    own = float(model.lipschitz_bound())
    solved = lipsdp_bound(model, method, **options)
    return (solved, "lipsdp") if solved < own else (own, "parameterization")


@torch.no_grad()
def certified_accuracy(model, X: torch.Tensor, y: torch.Tensor, eps, lipschitz: float | None = None,
                       batch_size: int = 4096, use_lipsdp: bool = False, lipsdp_method: str = "lipsdp-neuron"):
    """Fraction of points classified correctly with margin ``> sqrt(2) L eps``.

    Parameters
    ----------
    model : callable returning logits
    X, y : inputs and integer labels
    eps : float or iterable of floats (``eps = 0`` gives the clean accuracy)
    lipschitz : float, optional
        Defaults to ``model.lipschitz_bound()``.
    use_lipsdp : bool
        Opt-in: use lipsdp's certified bound of the model where it is lower than
        ``lipschitz`` (:func:`lipsdp_bound` with ``lipsdp_method``; one SDP solve).

    Returns
    -------
    float, or ``np.ndarray`` of floats when ``eps`` is iterable.
    """
    if lipschitz is None:
        lipschitz = float(model.lipschitz_bound())
    if use_lipsdp:
        lipschitz = min(float(lipschitz), lipsdp_bound(model, lipsdp_method))
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        m = torch.cat([margins(model(X[i:i + batch_size]), y[i:i + batch_size])
                       for i in range(0, len(X), batch_size)])
    finally:
        if was_training:
            model.train()
    scalar = not isinstance(eps, Iterable)
    eps_arr = np.atleast_1d(np.asarray(eps, dtype=float))
    m_np = m.double().cpu().numpy()
    acc = np.array([float(np.mean(m_np > math.sqrt(2.0) * lipschitz * e)) if e > 0
                    else float(np.mean(m_np > 0)) for e in eps_arr])
    return float(acc[0]) if scalar else acc


def jacobian_norms(model, X: torch.Tensor) -> torch.Tensor:
    """Spectral norms of the Jacobian of ``model`` at each row of ``X`` (lower bounds on L)."""
    from torch.func import jacrev, vmap

    def single(x):
        return model(x.unsqueeze(0)).squeeze(0)

    J = vmap(jacrev(single))(X)
    return torch.linalg.matrix_norm(J, ord=2).detach()


def empirical_lipschitz(model, X: torch.Tensor | None = None, n_starts: int = 64, steps: int = 100,
                        lr: float = 0.05, delta: float = 1e-3, seed: int = 0) -> float:
    """Empirical lower bound on the 2-norm Lipschitz constant of ``model``.

    Gradient ascent on the difference quotient ``||f(x) - f(x + d)|| / ||d||``
    over pairs (which, for piecewise-linear nets, has useful gradients where
    ``||J(x)||`` is piecewise constant), followed by the Jacobian norms at the
    final points.  Every value returned is attained, hence a valid lower bound.

    Parameters
    ----------
    X : optional starting points (rows); otherwise standard normal samples.
    """
    import copy

    m64 = copy.deepcopy(model).double().eval()  # float64 so rounding cannot inflate the quotient
    for p in m64.parameters():
        p.requires_grad_(False)
    n_in = model.dims[0] if hasattr(model, "dims") else next(
        m.in_features for m in model.modules() if hasattr(m, "in_features"))
    device = next((p.device for p in m64.parameters()), torch.device("cpu"))
    g = torch.Generator(device="cpu").manual_seed(seed)
    if X is None:
        X = torch.randn(n_starts, n_in, generator=g, dtype=torch.float64)
    X = X.detach().to(dtype=torch.float64, device=device)
    d0 = torch.randn(X.shape, generator=g, dtype=torch.float64).to(device)

    def quotient(x, d):
        return (m64(x) - m64(x + d)).norm(dim=1) / d.norm(dim=1)

    x = X.clone().requires_grad_(True)
    d = (d0 * delta / d0.norm(dim=1, keepdim=True)).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=lr)
    best = 0.0
    for _ in range(steps):
        q = quotient(x, d)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
        with torch.no_grad():  # keep ||d|| = delta: a local (Jacobian-like) quotient
            d.mul_(delta / d.norm(dim=1, keepdim=True).clamp_min(1e-300))
    with torch.no_grad():
        best = max(best, float(quotient(x, d).max()))
    pts = torch.cat([X, x.detach()])
    m64(pts[:1])  # warm the eval cache outside the functorch transforms
    best = max(best, float(jacobian_norms(m64, pts).max()))
    return best
