"""Export to plain torch networks, and LMI witnesses checked without a solver.

``to_plain(model)`` returns an ``nn.Sequential`` of ``nn.Linear`` and activation
modules computing the same function (outputs equal to ~1e-6 in float64), which
``lipsdp.estimate`` can certify independently.  It also exports the CNNs of
:func:`lmi.lipschitz_cnn` and any other module with its own ``to_plain`` (the conv
layers and blocks of :mod:`lmi.conv`, :mod:`lmi.conv_spatial`, :mod:`lmi.residual`,
:mod:`lmi.blocks`), whose exports hold ``nn.Conv2d`` modules: certify those with
``lipsdp.estimate(plain, input_shape=(C, H, W))``.

The witness functions take ``lmi`` MLPs (:class:`lmi.models.LipschitzMLP`) only.  Every
function re-checks that the network's activation is covered by its parameterization's
proof before exporting or checking anything (it may have been swapped after
construction).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import UnsupportedModelError
from .layers import resolve_dtype
from .models import LipschitzMLP

__all__ = ["to_plain", "witness", "check_witness", "plain_weights"]


def _require_lmi_model(model, what: str) -> None:
    """Refuse anything but an lmi network, then re-check its activation.

    Raises
    ------
    UnsupportedModelError
        ``model`` is not an :class:`~lmi.models.LipschitzMLP`.
    ActivationNotCoveredError
        Its activation is not covered by its parameterization's proof.
    """
    if not isinstance(model, LipschitzMLP):
        raise UnsupportedModelError(
            f"{what} takes an lmi network (built by lmi.lipschitz_mlp"
            + (", or lmi.lipschitz_cnn and other modules with a to_plain method" if what == "to_plain" else "")
            + f"), got {type(model).__name__}; for other torch models use lipsdp.estimate(model)"
        )
    model.require_covered_activation()


def _is_plain(model) -> bool:
    return isinstance(model, nn.Sequential) and all(isinstance(m, nn.Linear) or not list(m.parameters())
                                                    for m in model)


def plain_weights(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Detached ``[(W, b)]`` of the plain network equivalent to ``model``.

    ``model`` is an lmi network, or an ``nn.Sequential`` whose only parameterised
    modules are ``nn.Linear`` (its weights are read as they are).
    """
    if _is_plain(model):
        return [(m.weight.detach(), m.bias.detach() if m.bias is not None else torch.zeros(m.out_features))
                for m in model if isinstance(m, nn.Linear)]
    _require_lmi_model(model, "plain_weights")
    with torch.no_grad():
        return [(W.detach().clone(), b.detach().clone()) for W, b in model.plain_layers()]


def to_plain(model, dtype=None) -> nn.Sequential:
    """An ``nn.Sequential`` of ``nn.Linear`` + activation equal to ``model``.

    Parameters
    ----------
    model : lmi network (:class:`lmi.models.LipschitzMLP`), or a module with its own
        ``to_plain(dtype=None)`` (:class:`lmi.cnn.LipschitzCNN`, the lmi conv layers and
        blocks), whose export this returns (``nn.Conv2d`` modules included; lipsdp needs
        ``input_shape=(C, H, W)`` for it)
    dtype : torch.float32 or torch.float64, optional
        Dtype of the exported weights (default: the model's).

    Returns
    -------
    nn.Sequential
        ``Linear, act, Linear, act, ..., Linear`` in eval mode, on the model's device,
        with copies of ``model.activation``; for SLL ``Linear, Residual(Linear, act,
        Linear), Linear, …`` with :class:`lipsdp.nn.Residual` blocks, which ``lipsdp``
        certifies as residual layers.

    Raises
    ------
    UnsupportedModelError, ActivationNotCoveredError, UnsupportedDtypeError
    """
    if not isinstance(model, LipschitzMLP) and callable(getattr(model, "to_plain", None)):
        if dtype is not None:
            resolve_dtype(dtype)
        # the module's own export re-checks its activations (lmi layers and LipschitzCNN do)
        return model.to_plain(dtype=dtype) if dtype is not None else model.to_plain()
    _require_lmi_model(model, "to_plain")
    if dtype is not None:
        resolve_dtype(dtype)
    if hasattr(model, "plain_modules"):  # residual models (SLL) export their blocks as lipsdp.nn.Residual
        return nn.Sequential(*model.plain_modules()).to(dtype=dtype).eval()
    layers = plain_weights(model)
    mods: list[nn.Module] = []
    for i, (W, b) in enumerate(layers):
        lin = nn.Linear(W.shape[1], W.shape[0], bias=True, dtype=W.dtype, device=W.device)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(copy.deepcopy(model.activation))
    return nn.Sequential(*mods).to(dtype=dtype).eval()


def witness(model):
    """``(rho, lambdas)`` certifying the model's LMI for its plain weights.

    For the sandwich network ``lambda_k = gamma psi_k^2``; for LDL^T the
    learned multipliers; for Gershgorin the closed-form ones (all for the
    slope-[0, 1] matrix :func:`lmi.functional.lipsdp_matrix`); for the layer-wise
    baselines the product-of-norms witness (for :func:`lmi.functional.layerwise_matrix`).
    ``None`` for SLL (per-block certificate, see :meth:`lmi.models.SLLNet.lmi_violation`).
    """
    _require_lmi_model(model, "witness")
    return model.witness()


def check_witness(model, tol: float = 1e-9) -> tuple[bool, float]:
    """Check the model's LMI at its witness in float64, without a solver.

    Returns ``(ok, violation)`` with ``violation = model.lmi_violation()``: the largest
    eigenvalue of the certificate matrix at ``rho = gamma^2`` divided by its largest
    entry (per block for SLL); ``ok`` is ``violation <= tol`` (False for NaN).

    Raises
    ------
    UnsupportedModelError
        ``model`` is not an lmi network (there is no witness to check).
    ActivationNotCoveredError
        Its activation is not covered by its parameterization's proof.
    """
    _require_lmi_model(model, "check_witness")
    v = model.lmi_violation()
    return bool(v <= tol), v
