r"""Losses for certified training of Lipschitz classifiers.

Each takes logits ``z`` (``(N, K)``), integer labels ``y`` and the certification offset of the
pairwise rule, ``√2 · L · ε`` (``L``: the network's Lipschitz constant, ``ε``: the radius to
certify; :mod:`lmi.certify`), and returns the mean over the batch (``reduction="none"``: per example).

* :func:`lipschitz_margin_loss` (= :func:`offset_cross_entropy`) -- cross-entropy of the logits
  with ``√2 L ε`` subtracted from the true one, divided by a temperature (Prach & Lampert, ECCV
  2022; Tsuzuku et al., NeurIPS 2018).  Defined in :mod:`lmi.train`; re-exported here.
* :func:`margin_hinge_loss` -- the multi-class hinge on the certified margin (Lipschitz-margin
  hinge; Anil et al. 2019, Serrurier et al. 2021 for the binary case):
  ``max(0, m − (z_y − max_{j≠y} z_j))`` (``kind="max"``, Crammer–Singer) or
  ``Σ_{j≠y} max(0, m_j − (z_y − z_j))`` (``kind="sum"``, Weston–Watkins), with ``m = √2 L ε``
  or per-pair margins ``m_j = C[y, j] ε`` from a matrix of pair constants.
* :func:`logit_annealing_loss` -- Logit Annealing (Lai, Huang, Kung & Chen, ICML 2025, the BRO
  paper): with the offset logits ``z' = (z − √2 L ε e_y) / T`` and ``p = softmax(z')_y``,
  ``ℓ = T · α · (1 − p)^β · (−log p)``: the focal form anneals the push on points whose
  offset margin is already large, leaving capacity for the others (formula as in the
  authors' implementation, ``ntuaislab/BRONet``, ``lipconvnet/utils/custom_loss.py``:
  ``LossLogitAnnealing`` = offset, divide by ``T``, focal loss with ``α = 0.25``, ``β = 2``,
  times ``T``).

:func:`get_loss` maps the names ``"offset_ce"``, ``"hinge"``, ``"logit_annealing"`` to
callables ``loss(logits, y, lipschitz, eps, temperature)``, which :func:`lmi.train` uses.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InvalidArgumentError, InvalidOptionError, ShapeMismatchError
from .train import lipschitz_margin_loss

__all__ = [
    "LOSSES",
    "get_loss",
    "lipschitz_margin_loss",
    "offset_cross_entropy",
    "margin_hinge_loss",
    "logit_annealing_loss",
]

#: the offset cross-entropy under the name the literature uses (the same function)
offset_cross_entropy = lipschitz_margin_loss

_REDUCTIONS = ("mean", "sum", "none")


def _check(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> None:
    if logits.dim() != 2 or y.dim() != 1 or y.shape[0] != logits.shape[0]:
        raise ShapeMismatchError(f"a loss takes logits (N, K) and labels (N,); got {tuple(logits.shape)} and "
                                 f"{tuple(y.shape)}")
    if reduction not in _REDUCTIONS:
        raise InvalidOptionError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values


def _offset(lipschitz, eps: float) -> float | torch.Tensor:
    """``√2 L ε`` (``L`` may be a tensor: the offset then stays in the autograd graph)."""
    if eps < 0:
        raise InvalidArgumentError(f"eps must be >= 0, got {eps!r}")
    return math.sqrt(2.0) * lipschitz * eps


def margin_hinge_loss(logits: torch.Tensor, y: torch.Tensor, lipschitz=1.0, eps: float = 0.0, *,
                      margin: float | None = None, pair_lipschitz=None, kind: str = "max",
                      reduction: str = "mean") -> torch.Tensor:
    r"""Multi-class hinge on the certified margin.

    ``kind="max"``: ``max(0, max_{j≠y} (m_j − (z_y − z_j)))``, zero exactly when every
    difference clears its margin -- when the point is certified at ``ε`` by the rule the
    margins encode; ``kind="sum"``: ``Σ_{j≠y} max(0, m_j − (z_y − z_j))``.

    Margins ``m_j``: ``margin`` if given, else ``C[y, j] ε`` with ``pair_lipschitz`` ``C``
    (``K × K``, e.g. :func:`lmi.certify.pair_lipschitz`), else ``√2 L ε``.  With a zero margin
    the hinge only penalises misclassification.
    """
    _check(logits, y, reduction)
    if kind not in ("max", "sum"):
        raise InvalidOptionError(f"kind must be 'max' (Crammer-Singer) or 'sum' (Weston-Watkins), got {kind!r}")
    K = logits.shape[1]
    if margin is not None:
        m = torch.full_like(logits, float(margin))
    elif pair_lipschitz is not None:
        C = torch.as_tensor(pair_lipschitz, dtype=logits.dtype, device=logits.device)
        if C.shape != (K, K):
            raise ShapeMismatchError(f"pair_lipschitz must be {K} × {K} for {K} logits, got {tuple(C.shape)}")
        if eps < 0:
            raise InvalidArgumentError(f"eps must be >= 0, got {eps!r}")
        m = C[y] * eps
    else:
        m = torch.zeros_like(logits) + _offset(lipschitz, eps)
    true = logits.gather(1, y.view(-1, 1))
    violation = F.relu(m - (true - logits))
    violation = violation.masked_fill(F.one_hot(y, K).bool(), 0.0)  # j = y is no pair
    per_example = violation.amax(dim=1) if kind == "max" else violation.sum(dim=1)
    return _reduce(per_example, reduction)


def logit_annealing_loss(logits: torch.Tensor, y: torch.Tensor, lipschitz=1.0, eps: float = 0.0,
                         temperature: float = 1.0, *, alpha: float = 0.25, beta: float = 2.0,
                         offset: float | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Logit Annealing loss (Lai et al., ICML 2025): ``T · α · (1 − p)^β · (−log p)``.

    ``p = softmax((z − o e_y) / T)_y`` with offset ``o`` = ``offset`` if given, else
    ``√2 L ε`` (as in :func:`lipschitz_margin_loss`).  ``β = 0`` gives ``α T`` times the
    offset cross-entropy.  ``−log p`` and ``1 − p = −expm1(log p)`` are evaluated without
    cancellation when ``p`` is close to 1 (:func:`_neg_log_softmax_true`).
    """
    _check(logits, y, reduction)
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature must be > 0, got {temperature!r}")
    if beta < 0 or alpha <= 0:
        raise InvalidArgumentError(f"Logit Annealing needs alpha > 0 and beta >= 0, got alpha={alpha!r}, beta={beta!r}")
    o = _offset(lipschitz, eps) if offset is None else offset
    own = F.one_hot(y, logits.shape[1]).bool()
    shifted = (logits - o * own.to(logits.dtype)) / temperature
    neg_log_p = _neg_log_softmax_true(shifted, y, own)
    one_minus_p = -torch.expm1(-neg_log_p)
    per_example = temperature * alpha * one_minus_p.pow(beta) * neg_log_p
    return _reduce(per_example, reduction)


def _neg_log_softmax_true(z: torch.Tensor, y: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    r"""``−log softmax(z)_y`` accurate also when it is tiny (a confident point).

    With ``d_j = z_j − z_y`` (``j ≠ y``) and ``m = max_j d_j``: ``log1p(Σ_j e^{d_j})`` when
    ``m ≤ 0`` (``log_softmax`` would return ``z_y − logsumexp(z)``, which cancels to 0 once
    ``Σ e^{d_j}`` is below the rounding unit, and so would ``1 − p``); ``m + log(e^{−m} + Σ_j
    e^{d_j − m})`` otherwise.  Both branches are evaluated on clamped arguments, so neither
    overflows where it is not selected (no NaN gradients through ``torch.where``).
    """
    d = (z - z.gather(1, y.view(-1, 1))).masked_fill(own, -torch.inf)
    m = d.amax(dim=1)
    small = torch.log1p(torch.exp(d.clamp_max(0.0)).sum(dim=1))
    mc = m.clamp_min(0.0)
    large = mc + torch.log(torch.exp(-mc) + torch.exp(d - mc[:, None]).sum(dim=1))
    return torch.where(m <= 0, small, large)


def _offset_ce(logits, y, lipschitz, eps, temperature):
    return lipschitz_margin_loss(logits, y, lipschitz, eps, temperature)


def _hinge(logits, y, lipschitz, eps, temperature):
    return margin_hinge_loss(logits, y, lipschitz, eps)


def _logit_annealing(logits, y, lipschitz, eps, temperature):
    return logit_annealing_loss(logits, y, lipschitz, eps, temperature)


#: training losses by name: ``loss(logits, y, lipschitz, eps, temperature) -> scalar``
LOSSES: dict[str, Callable] = {"offset_ce": _offset_ce, "hinge": _hinge, "logit_annealing": _logit_annealing}


def get_loss(name) -> Callable:
    """The training loss ``name`` (a key of :data:`LOSSES`), or ``name`` itself when it is callable.

    Raises
    ------
    InvalidOptionError
        An unknown name.
    """
    if callable(name):
        return name
    if name not in LOSSES:
        raise InvalidOptionError(f"unknown loss {name!r}; choose from {sorted(LOSSES)} or pass a callable "
                                 f"loss(logits, y, lipschitz, eps, temperature)")
    return LOSSES[name]
