"""Torch modules whose lipsdp description is exact: MaxMin, GroupSort, Householder, Residual, Implicit.

``lipsdp.Network.from_torch`` converts them (converters in :mod:`lipsdp.nn_convert`,
registered on ``import lipsdp``).  The functional forms (:func:`maxmin`,
:func:`group_sort`, :func:`householder`) are the single implementation shared
with :mod:`lmi`.

Grouping conventions (``grouping``): ``"consecutive"`` — neurons
``(0, 1), (2, 3), …`` for group size 2 (the published MaxMin anchors);
``"split"`` — group ``j`` is ``(j, j + n, j + 2n, …)`` with ``n = width / g``.
Sorting is descending by default so ``GroupSort(2)`` ≡ ``MaxMin()`` outputs
``(max, min)`` per pair.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import IllPosedError, InvalidActivationError, UnsupportedLayerError

__all__ = ["GroupSort", "Householder", "Implicit", "MaxMin", "Residual", "group_sort", "householder", "maxmin"]


def _grouped(x: torch.Tensor, g: int, grouping: str) -> torch.Tensor:
    """View ``(..., m)`` as ``(..., n, g)`` with group members on the last axis."""
    m = x.shape[-1]
    if g < 1 or m % g != 0:
        raise InvalidActivationError(f"a layer of width {m} cannot be split into groups of {g} neurons")
    n = m // g
    if grouping == "consecutive":
        return x.reshape(*x.shape[:-1], n, g)
    if grouping == "split":
        return x.reshape(*x.shape[:-1], g, n).transpose(-1, -2)
    raise InvalidActivationError(f"unknown grouping {grouping!r}; use 'consecutive' or 'split'")


def _ungrouped(y: torch.Tensor, grouping: str) -> torch.Tensor:
    if grouping == "split":
        y = y.transpose(-1, -2)
    return y.reshape(*y.shape[:-2], -1)


def group_sort(x: torch.Tensor, group_size: int, grouping: str = "consecutive", descending: bool = True) -> torch.Tensor:
    """Sort each group of ``group_size`` features (last dimension)."""
    y = torch.sort(_grouped(x, int(group_size), grouping), dim=-1, descending=descending).values
    return _ungrouped(y, grouping)


def maxmin(x: torch.Tensor, grouping: str = "consecutive") -> torch.Tensor:
    """MaxMin: each pair becomes ``(max, min)``."""
    return group_sort(x, 2, grouping, descending=True)


def householder(x: torch.Tensor, v: torch.Tensor, grouping: str = "consecutive") -> torch.Tensor:
    """``z ↦ z`` if ``vᵀz > 0`` else ``(I − 2vvᵀ)z`` on each group (``v`` normalised to unit length)."""
    nrm = torch.linalg.vector_norm(v)
    if not bool(nrm > 0):
        raise InvalidActivationError("Householder vector has zero norm")
    u = v / nrm
    z = _grouped(x, u.numel(), grouping)
    proj = z @ u
    y = torch.where((proj > 0).unsqueeze(-1), z, z - 2 * proj.unsqueeze(-1) * u)
    return _ungrouped(y, grouping)


class GroupSort(nn.Module):
    """GroupSort activation (see module docstring for ``grouping`` and ``descending``)."""

    def __init__(self, group_size: int = 2, grouping: str = "consecutive", descending: bool = True):
        super().__init__()
        if int(group_size) < 1:
            raise InvalidActivationError(f"group size must be a positive integer, got {group_size}")
        self.group_size = int(group_size)
        self.grouping = grouping
        self.descending = bool(descending)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_sort(x, self.group_size, self.grouping, self.descending)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, grouping={self.grouping!r}, descending={self.descending}"


class MaxMin(GroupSort):
    """MaxMin = ``GroupSort(2)``: pairs become ``(max, min)``."""

    def __init__(self, grouping: str = "consecutive"):
        super().__init__(2, grouping, True)


class Householder(nn.Module):
    """Householder activation with a (trainable) reflection vector ``v`` of the group size."""

    def __init__(self, v, grouping: str = "consecutive", trainable: bool = True):
        super().__init__()
        v = torch.as_tensor(v, dtype=torch.get_default_dtype()).reshape(-1).clone()
        if v.numel() == 0 or not bool(torch.linalg.vector_norm(v) > 0):
            raise InvalidActivationError("Householder vector has zero norm: the reflection is undefined")
        self.v = nn.Parameter(v, requires_grad=trainable)
        self.grouping = grouping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return householder(x, self.v, self.grouping)


class Residual(nn.Module):
    """``x ↦ x + branch(x)`` (the branch must preserve the width), e.g. ``Residual(nn.Sequential(nn.Linear(n, n), MaxMin()))``."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Implicit(nn.Module):
    """Equilibrium layer ``z = φ(W z + U x + b)``, output ``C z + D x`` (default ``C = I``, ``D = 0``).

    The forward pass finds the equilibrium without gradients and then takes one
    step ``φ(W z + U x + b)`` with gradients (enough for inference and for
    lipsdp; not an implicit-function-theorem backward pass).  The equilibrium
    comes from the iteration that lipsdp's well-posedness certificate
    (:func:`lipsdp.wellposed.check_well_posed`) proves convergent, solved in
    float64 by :mod:`lipsdp.equilibrium`: a layer that lipsdp certifies always
    evaluates.  The certificate is cached by the layer's weights, so it is
    recomputed (one small SDP) only when ``W`` or the activation changed.  A
    layer lipsdp cannot certify is evaluated by the damped iteration
    ``z ← ½z + ½φ(Wz + Ux + b)``, which raises :class:`~lipsdp.errors.IllPosedError`
    when it does not converge.  In training mode, where ``W`` changes at every
    step, the damped iteration is tried first and the certificate is computed
    only where it does not converge.

    Parameters
    ----------
    in_features, width
        Input width and number of equilibrium neurons.
    out_features
        Output width; None for ``y = z``.
    activation
        An activation module (``nn.ReLU()``, ``nn.Tanh()``, :class:`MaxMin`, …).
    scale
        Initial ``‖W‖₂`` (< 1 keeps the layer well posed).
    max_iter, tol
        Iteration limit of the damped iteration; the certified ``‖z − z*‖_∞``
        relative to ``1 +`` the size of the iterate (for the damped iteration:
        its last relative step).
    """

    def __init__(self, in_features: int, width: int, out_features: int | None = None, activation: nn.Module | None = None,
                 scale: float = 0.5, max_iter: int = 500, tol: float = 1e-10):
        super().__init__()
        w = torch.randn(width, width)
        self.W = nn.Parameter(scale * w / torch.linalg.matrix_norm(w, 2))
        self.U = nn.Parameter(torch.randn(width, in_features) / in_features**0.5)
        self.b = nn.Parameter(torch.zeros(width))
        self.C = None if out_features is None else nn.Parameter(torch.randn(out_features, width) / width**0.5)
        self.D = None if out_features is None else nn.Parameter(torch.zeros(out_features, in_features))
        self.activation = activation if activation is not None else nn.ReLU()
        self.max_iter, self.tol = int(max_iter), float(tol)

    def equilibrium(self, x: torch.Tensor) -> torch.Tensor:
        ux = x @ self.U.T + self.b
        with torch.no_grad():
            z = self._fixed_point(x, ux)
        return self.activation(z @ self.W.T + ux)

    def _fixed_point(self, x: torch.Tensor, ux: torch.Tensor) -> torch.Tensor:
        """The equilibrium (no gradients): certified iteration if lipsdp certifies the layer, else damped."""
        from .equilibrium import certified_equilibrium, damped_fixed_point

        def damped(reason: str) -> torch.Tensor:
            return damped_fixed_point(lambda z: self.activation(z @ self.W.T + ux), torch.zeros_like(ux),
                                      self.max_iter, self.tol, reason)

        if self.training:
            # W changes at every training step: the cheap damped iteration first, a certificate only where it fails
            try:
                return damped("")
            except IllPosedError:
                pass
        layer, certificate, reason = self._certificate()
        if certificate is None:
            return damped(reason)
        rows = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64).numpy()
        z = certified_equilibrium(layer, certificate, rows, self.tol)
        return torch.as_tensor(z, dtype=ux.dtype, device=ux.device).reshape(ux.shape)

    def _certificate(self):
        """``(lipsdp layer, certificate, "")``, or ``(None, None, why there is none)``."""
        from .torch_io import convert_module
        from .wellposed import check_well_posed

        try:
            (layer,) = convert_module(self)
        except UnsupportedLayerError as exc:  # e.g. a custom activation module: no lipsdp rule, no certificate
            return None, None, f"lipsdp cannot describe this Implicit layer, so it has no certificate: {exc}"
        try:
            return layer, check_well_posed(layer), ""
        except IllPosedError as exc:
            return None, None, str(exc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.equilibrium(x)
        if self.C is None:
            return z
        return z @ self.C.T + x @ self.D.T
