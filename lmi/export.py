"""Export to plain torch networks, and LMI witnesses checked without a solver.

``to_plain(model)`` returns an ``nn.Sequential`` of ``nn.Linear`` and activation
modules computing the same function (outputs equal to ~1e-6 in float64), which
``lipsdp.estimate`` can certify independently.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import functional as LF
from .errors import ExportError

__all__ = ["to_plain", "witness", "check_witness", "plain_weights"]


def plain_weights(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Detached ``[(W, b)]`` of the plain network equivalent to ``model``."""
    if isinstance(model, nn.Sequential) and all(isinstance(m, nn.Linear) or not list(m.parameters())
                                                for m in model):
        return [(m.weight.detach(), m.bias.detach() if m.bias is not None else torch.zeros(m.out_features))
                for m in model if isinstance(m, nn.Linear)]
    if not hasattr(model, "plain_layers"):
        raise ExportError(f"{type(model).__name__} has no plain_layers(); not an lmi model")
    with torch.no_grad():
        return [(W.detach().clone(), b.detach().clone()) for W, b in model.plain_layers()]


def to_plain(model, dtype=None) -> nn.Sequential:
    """An ``nn.Sequential`` of ``nn.Linear`` + activation equal to ``model``.

    Parameters
    ----------
    model : lmi model (anything with ``plain_layers()`` and ``activation``)
    dtype : torch.dtype, optional
        Dtype of the exported weights (default: the model's).

    Returns
    -------
    nn.Sequential
        ``Linear, act, Linear, act, ..., Linear`` in eval mode, on the model's device;
        for SLL ``Linear, Residual(Linear, act, Linear), Linear, …`` with
        :class:`lipsdp.nn.Residual` blocks, which ``lipsdp`` certifies as residual layers.
    """
    if hasattr(model, "plain_modules"):  # residual models (SLL) export their blocks as lipsdp.nn.Residual
        return nn.Sequential(*model.plain_modules()).to(dtype=dtype).eval()
    layers = plain_weights(model)
    act = getattr(model, "activation", None)
    if act is None and len(layers) > 1:
        raise ExportError("model has no activation attribute")
    mods: list[nn.Module] = []
    for i, (W, b) in enumerate(layers):
        lin = nn.Linear(W.shape[1], W.shape[0], bias=True, dtype=dtype or W.dtype, device=W.device)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(copy.deepcopy(act))
    return nn.Sequential(*mods).eval()


def witness(model):
    """``(rho, lambdas)`` certifying ``M(rho, Lambda) <= 0`` for the plain weights of ``model``.

    For the sandwich network ``lambda_k = gamma psi_k^2``; for LDL^T the
    learned multipliers; for Gershgorin the closed-form ones; for the layer-wise
    baselines the product-of-norms witness.  ``None`` for SLL (per-block
    certificate, see :meth:`lmi.models.SLLNet.lmi_violation`).
    """
    return model.witness()


def check_witness(model, tol: float = 1e-9) -> tuple[bool, float]:
    """Check the LipSDP LMI at the model's witness in float64, without a solver.

    Returns ``(ok, max_eig)`` where ``max_eig`` is the largest eigenvalue of
    ``M(gamma^2, Lambda)`` normalised by ``max(1, max|M_ij|)``.
    """
    w = model.witness()
    if w is None:
        v = model.lmi_violation()
        return v <= tol, v
    rho, lams = w
    Ws = [W for W, _ in plain_weights(model)]
    M = LF.lipsdp_matrix(Ws, lams, rho)
    v = float(torch.linalg.eigvalsh(0.5 * (M + M.T)).max() / max(1.0, float(M.abs().max())))
    return v <= tol, v
