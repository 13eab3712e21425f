"""Lipschitz-bounded MLPs and the parameterization registry.

``lipschitz_mlp(dims, gamma, parameterization=...)`` builds a network mapping
``dims[0]`` inputs to ``dims[-1]`` outputs through hidden widths ``dims[1:-1]``
whose 2-norm Lipschitz constant is at most ``gamma`` for every parameter value.

Network-level certificates (one LMI for the whole network, docs/formulations.md §1):
``sandwich``, ``ldlt``, ``gershgorin``.  Layer-wise baselines (product of
1-Lipschitz layers, times gamma): ``sll``, ``aol``, ``cayley``, ``spectral``.

Every model exposes

* ``plain_layers()`` -- list of ``(W, b)`` of the equivalent plain network
  ``Linear -> act -> ... -> Linear`` (see :func:`lmi.export.to_plain`);
* ``witness()`` -- ``(rho, [lambda_1, ...])`` such that the LipSDP matrix
  ``M(rho, Lambda)`` of the plain weights is negative semidefinite with
  ``rho = gamma^2`` (``None`` for SLL, whose certificate is per block);
* ``lmi_violation()`` -- the largest normalised eigenvalue of the certificate
  (``<= 0`` up to rounding means the LMI holds);
* ``lipschitz_bound()`` -- ``gamma`` as a float.

Each parameterization declares what its proof needs of the activation
(``activation_needs``): the network-level ones and SLL use the slope-[0, 1]
quadratic constraint with diagonal multipliers (``SLOPE_IN_0_1``: ReLU, tanh,
sigmoid, LeakyReLU with slope in [0, 1], …); the layer-wise products (aol, cayley,
spectral) only need a 1-Lipschitz activation (``ONE_LIPSCHITZ``: also MaxMin,
GroupSort, Householder).  Anything else is refused with
:class:`~lmi.errors.ActivationNotCoveredError`, at construction and again by
``lipschitz_bound()``, ``witness()``, ``lmi_violation()`` and :func:`lmi.to_plain`
(``model.activation`` may be swapped after construction).  The network applies
``model.activation`` at every hidden layer.
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from lipsdp.activation_registry import ONE_LIPSCHITZ, SLOPE_IN_0_1
from lipsdp.errors import LipSDPError

from . import functional as LF
from .errors import ExportError, InvalidArgumentError, InvalidOptionError, NumericalRangeError, ShapeMismatchError
from .layers import (
    ActivationOwner,
    AOLLinear,
    CachedWeights,
    CayleyLinear,
    GershgorinLinear,
    LDLTLinear,
    SandwichLinear,
    SLLBlock,
    SpectralLinear,
    check_input,
    factory_kwargs,
    make_activation,
    positive_float,
    positive_int,
    resolve_dtype,
)
from .registry import get_parameterization, parameterizations, register

__all__ = [
    "LipschitzMLP",
    "SandwichNet",
    "LDLTNet",
    "GershgorinNet",
    "SLLNet",
    "AOLNet",
    "CayleyNet",
    "SpectralNet",
    "register",
    "parameterizations",
    "get_parameterization",
    "lipschitz_mlp",
    "gamma_range",
]


def gamma_range(dtype=None) -> tuple[float, float]:
    """The Lipschitz bounds a model of ``dtype`` accepts: ``[tiny ** (1/4), max ** (1/4)]``.

    ``tiny`` and ``max`` are ``torch.finfo(dtype)``'s smallest normal and largest finite
    numbers.  The constructions and their certificates use gamma² (the LDLᵀ pivot
    ``D_0 = gamma² I``, the sandwich multipliers ``gamma psi²``, the Gershgorin rescaling
    ``(gamma / sqrt(rho))²``, the witness ``rho = gamma²``); in this range gamma² is a normal
    number with a factor ``sqrt(max)`` (resp. ``1/sqrt(tiny)``) of headroom for the weights
    and multipliers it multiplies, so no step under- or overflows.  float32: about
    ``[3.3e-10, 4.3e9]``; float64: about ``[1.2e-77, 1.2e77]``.
    """
    info = torch.finfo(resolve_dtype(dtype))
    return info.tiny ** 0.25, info.max ** 0.25


def check_gamma(gamma, dtype) -> float:
    """``gamma`` as a float inside :func:`gamma_range` of ``dtype`` (typed errors otherwise)."""
    g = positive_float(gamma, "gamma", "the Lipschitz bound")
    lo, hi = gamma_range(dtype)
    if not lo <= g <= hi:
        raise NumericalRangeError(
            f"gamma = {g:g} is outside [{lo:.3g}, {hi:.3g}], the range in which gamma² and the products it enters "
            f"stay finite and normal in {dtype} (lmi.gamma_range); use float64 for a wider range, or rescale the "
            f"outputs instead (c * f is c-times as Lipschitz as f)"
        )
    return g


def _check_dims(dims) -> list[int]:
    try:
        items = list(dims)
    except TypeError:
        raise InvalidArgumentError(f"dims must be a sequence of widths [n_in, hidden..., n_out], got {dims!r}") from None
    if len(items) < 2:
        raise InvalidArgumentError(f"dims must have at least two entries [n_in, ..., n_out], got {items}")
    return [positive_int(d, f"dims[{i}]") for i, d in enumerate(items)]


def _check_options(cls: type, options: dict) -> None:
    """Refuse keyword options that ``cls`` does not take (:class:`~lmi.errors.InvalidOptionError`)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        known = sorted(set(params) - {"self", "dims"})
        raise InvalidOptionError(f"parameterization {cls.parameterization!r} has no option(s) {unknown}; "
                                 f"its options are {known}")


def lipschitz_mlp(dims: Sequence[int], gamma: float = 1.0, parameterization: str = "sandwich",
                  activation=None, learn_gamma: bool = False, dtype=None, device=None, **kwargs):
    """Build a ``gamma``-Lipschitz MLP with widths ``dims``.

    Parameters
    ----------
    dims : sequence of int
        ``[n_in, hidden..., n_out]`` (at least two entries).
    gamma : float
        Lipschitz bound (2-norm), inside :func:`gamma_range` of ``dtype``; with
        ``learn_gamma=True`` it is trained as ``log gamma``.
    parameterization : str
        One of :func:`parameterizations`.
    activation : str or nn.Module, optional
        ReLU by default; a spec string of :mod:`lipsdp.activation_registry` or a torch
        module that the parameterization's proof covers (``activation_needs``).
    dtype : torch.float32 or torch.float64, optional
    **kwargs
        Options of the parameterization (e.g. ``alpha`` for ``ldlt``).

    Raises
    ------
    UnknownParameterizationError, ActivationNotCoveredError, InvalidArgumentError,
    InvalidOptionError, UnsupportedDtypeError, NumericalRangeError, ShapeMismatchError
        See :mod:`lmi.errors`; each message names the culprit.
    """
    cls = get_parameterization(parameterization)
    _check_options(cls, kwargs)
    return cls(dims, gamma=gamma, activation=activation, learn_gamma=learn_gamma,
               dtype=dtype, device=device, **kwargs)


class LipschitzMLP(ActivationOwner, CachedWeights):
    """Base class: gamma handling, plain-weight forward, witnesses and checks.

    Subclasses set ``activation_needs`` (what their proof needs of the activation) and
    ``certificate_matrix`` (the LMI their witness satisfies, :func:`lmi.functional.lipsdp_matrix`
    for the slope-[0, 1] constraint), and implement ``_compute`` (and ``_witness`` /
    ``_lmi_violation`` / ``_forward`` where the defaults do not apply).
    """

    parameterization = "base"
    activation_needs = SLOPE_IN_0_1
    certificate_matrix = staticmethod(LF.lipsdp_matrix)

    def __init__(self, dims: Sequence[int], gamma: float = 1.0, activation=None,
                 learn_gamma: bool = False, dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.dims = _check_dims(dims)
        gamma = check_gamma(gamma, fk["dtype"])
        self.activation = make_activation(activation, self.activation_needs, owner=self._owner_name(), **fk)
        self._check_activation_widths(fk)
        log_g = torch.tensor(math.log(gamma), **fk)
        if learn_gamma:
            self.log_gamma = nn.Parameter(log_g)
        else:
            self.register_buffer("log_gamma", log_g)

    def _owner_name(self) -> str:
        return f"parameterization {self.parameterization!r}"

    def _check_activation_widths(self, fk: dict) -> None:
        """Refuse hidden widths the activation cannot act on (GroupSort(k) needs multiples of k)."""
        for width in sorted(set(self.dims[1:-1])):
            try:
                with torch.no_grad():
                    self.activation(torch.zeros(1, width, **fk))
            except LipSDPError as exc:
                raise ShapeMismatchError(
                    f"the activation {self.activation!r} cannot act on a hidden layer of width {width} ({exc}); "
                    f"choose hidden widths in dims={self.dims} that it accepts"
                ) from None

    # -- gamma --------------------------------------------------------------
    @property
    def gamma(self) -> torch.Tensor:
        """The Lipschitz bound as a tensor (differentiable when learnable)."""
        return torch.exp(self.log_gamma)

    def lipschitz_bound(self) -> float:
        """Certified 2-norm Lipschitz bound of the network (gamma).

        Raises
        ------
        ActivationNotCoveredError
            ``self.activation`` was swapped for one the proof does not cover.
        """
        self.require_covered_activation()
        return float(torch.exp(self.log_gamma.detach()))

    # -- weights ------------------------------------------------------------
    def plain_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(W_1, b_1), ..., (W_l, b_l)]`` of the equivalent plain network."""
        return self.computed()["layers"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``x`` of shape ``(..., dims[0])`` (typed errors for other shapes/dtypes)."""
        check_input(x, self.dims[0], self.log_gamma.dtype, type(self).__name__)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.plain_layers()
        for W, b in layers[:-1]:
            x = self.activation(F.linear(x, W, b))
        W, b = layers[-1]
        return F.linear(x, W, b)

    # -- certificates -------------------------------------------------------
    def witness(self):
        """``(rho, lambdas)`` with ``certificate_matrix(plain weights, lambdas, rho) <= 0``.

        ``None`` where the certificate is not one LMI (SLL).  Raises
        :class:`~lmi.errors.ActivationNotCoveredError` if the activation is not covered.
        """
        self.require_covered_activation()
        return self._witness()

    def _witness(self):
        c = self.computed()
        lams = c.get("lambdas")
        if lams is None:
            return None
        g = float(self.gamma.detach().double())
        return g * g, [lam.detach().double() for lam in lams]

    def lmi_violation(self) -> float:
        """Largest eigenvalue of the certificate at the witness, relative to its largest entry.

        ``<= 0`` up to rounding means the LMI holds (see
        :func:`lmi.functional.relative_max_eig`); NaN when it has non-finite entries.
        Raises :class:`~lmi.errors.ActivationNotCoveredError` if the activation is not covered.
        """
        self.require_covered_activation()
        return self._lmi_violation()

    def _lmi_violation(self) -> float:
        rho, lams = self._witness()
        Ws = [W for W, _ in self.plain_layers()]
        # the terms of a tight certificate cancel: normalise by their size, not by what is left
        scale = max([float(rho)] + [float(lam.abs().max()) for lam in lams])
        return LF.relative_max_eig(self.certificate_matrix(Ws, lams, rho), scale)

    def extra_repr(self) -> str:
        # the stored gamma, not lipschitz_bound(): printing a model must work whatever its activation
        return f"dims={self.dims}, gamma={float(torch.exp(self.log_gamma.detach())):.4g}"


@register("sandwich")
class SandwichNet(LipschitzMLP):
    r"""Sandwich network (Wang & Manchester, ICML 2023).

    ``x -> sqrt(gamma) x -> S_1 -> ... -> S_{l-1} -> sqrt(gamma) B_l h + b_l``
    with sandwich layers ``S_k`` (:class:`~lmi.layers.SandwichLinear`).  The
    plain weights are

    .. math::  W_k = 2\,\Psi_k^{-1} B_k A_{k-1}^T \Psi_{k-1},\quad
               A_0 = I,\ \Psi_0 = \sqrt{\gamma/2}\, I,\ \Psi_l = \sqrt{2/\gamma}\, I,

    and ``M(gamma^2, Lambda) <= 0`` (docs/formulations.md §1) with the witness
    ``Lambda_k = gamma Psi_k^2`` for every parameter value.  (The witness sometimes quoted is
    ``Psi_k^2 / 2``; in the §1 convention that choice violates the LMI even at
    gamma = 1 -- the Schur complement is ``Psi (I - 2 A A^T - B B^T / 2) Psi`` --
    while ``gamma Psi_k^2`` makes it exactly ``gamma Psi (I - A A^T - B B^T) Psi = 0``.)
    The proof is the slope-[0, 1] quadratic constraint with diagonal multipliers.
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, dims, gamma=1.0, activation=None, learn_gamma=False, dtype=None, device=None):
        super().__init__(dims, gamma, activation, learn_gamma, dtype, device)
        d = self.dims
        self.layers = nn.ModuleList(
            [SandwichLinear(d[i], d[i + 1], activation=self.activation, dtype=dtype, device=device)
             for i in range(len(d) - 2)]
            + [SandwichLinear(d[-2], d[-1], output=True, dtype=dtype, device=device)]
        )

    def _compute(self):
        g = self.gamma
        sg = torch.sqrt(g)
        facs = [layer.factors() for layer in self.layers]
        layers, lams = [], []
        A_prev, psi_prev = None, None
        for k, (layer, (A, B, psi)) in enumerate(zip(self.layers, facs)):
            if k == 0:
                left = B * sg  # B_1 sqrt(gamma) = B_1 A_0^T Psi_0 sqrt(2)
            else:
                left = math.sqrt(2.0) * (B @ (A_prev.transpose(0, 1) * psi_prev.unsqueeze(0)))
            if layer.output:
                W = sg * left
            else:
                W = math.sqrt(2.0) * left / psi.unsqueeze(1)
                lams.append(g * psi * psi)
            layers.append((W, layer.bias))
            A_prev, psi_prev = A, psi
        return {"layers": layers, "lambdas": lams, "factors": facs}

    def factors(self):
        """``[(A_k, B_k, psi_k)]`` of every layer (``psi`` is ``None`` for the last)."""
        return self.computed()["factors"]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # the sandwich form itself; to_plain() is checked against it
        facs = self.factors()
        sg = torch.sqrt(self.gamma)
        h = x * sg
        for layer, (A, B, psi) in zip(self.layers[:-1], facs[:-1]):
            pre = math.sqrt(2.0) * F.linear(h, B) / psi + layer.bias
            h = math.sqrt(2.0) * (self.activation(pre) * psi) @ A
        _, B, _ = facs[-1]
        return F.linear(h, B) * sg + self.layers[-1].bias


@register("ldlt")
class LDLTNet(LipschitzMLP):
    r"""LDL^T-parameterized network (after Juston et al., 2025).

    The LipSDP LMI ``-M(gamma^2, Lambda) >= 0`` of the MLP is block
    tridiagonal; its block LDL^T factorisation has pivots
    ``D_0 = gamma^2 I`` and ``D_k = 2 Lambda_k - Lambda_k W_k D_{k-1}^{-1}
    W_k^T Lambda_k`` and the last condition ``D_{l-1} - W_l^T W_l >= 0``.  Each
    :class:`~lmi.layers.LDLTLinear` writes ``W_k`` through the Cholesky factor
    of ``D_{k-1}`` and a strict contraction, so every pivot is positive by
    construction and ``Lambda_k = diag(e^{log lambda_k})`` is the witness.
    ``gamma`` enters as the factor ``F_0 = gamma I`` of ``D_0`` (not ``1/gamma``).
    The LMI is that of the slope-[0, 1] quadratic constraint with diagonal multipliers.
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, dims, gamma=1.0, activation=None, learn_gamma=False, dtype=None, device=None,
                 alpha: float = 1.0):
        super().__init__(dims, gamma, activation, learn_gamma, dtype, device)
        d = self.dims
        self.layers = nn.ModuleList(
            [LDLTLinear(d[i], d[i + 1], alpha=alpha, output=(i == len(d) - 2), dtype=dtype, device=device)
             for i in range(len(d) - 1)]
        )

    def _compute(self):
        n0 = self.dims[0]
        Fk = self.gamma * torch.eye(n0, dtype=self.log_gamma.dtype, device=self.log_gamma.device)
        layers, lams = [], []
        for layer in self.layers:
            W, Fk, lam = layer.weight(Fk)
            layers.append((W, layer.bias))
            if lam is not None:
                lams.append(lam)
        return {"layers": layers, "lambdas": lams}


@register("gershgorin")
class GershgorinNet(LipschitzMLP):
    r"""Network certified by scaled Gershgorin discs (after Juston et al., 2025).

    Free weights ``V_1..V_l`` and a positive input scaling ``s_0 = e^{log s_0}``.
    :func:`~lmi.functional.abs_chain` builds multipliers ``Lambda_k`` and the
    smallest ``rho`` for which ``diag(s)(-M_aug(rho, Lambda))diag(s)`` is
    diagonally dominant (``M_aug`` is the LipSDP matrix with ``W_l^T W_l``
    moved into a Schur complement), hence ``M(rho, Lambda) <= 0``.  The last
    weight is scaled by ``c = gamma / sqrt(rho)``; by homogeneity of ``M`` the
    plain network satisfies ``M(gamma^2, c^2 Lambda) = c^2 M(rho, Lambda) <= 0``.
    Closed form, no decomposition; more conservative than ``ldlt``/``sandwich``
    (it certifies ``|| |W_l| ... |W_1| ||_2``-type bounds).  The LMI is that of the
    slope-[0, 1] quadratic constraint with diagonal multipliers.
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, dims, gamma=1.0, activation=None, learn_gamma=False, dtype=None, device=None):
        super().__init__(dims, gamma, activation, learn_gamma, dtype, device)
        d = self.dims
        self.layers = nn.ModuleList(
            [GershgorinLinear(d[i], d[i + 1], scaling=False, dtype=dtype, device=device)
             for i in range(len(d) - 1)]
        )
        self.log_s0 = nn.Parameter(torch.zeros(d[0], dtype=dtype, device=device))

    def _compute(self):
        Vs = [layer.V for layer in self.layers]
        eps = torch.finfo(Vs[0].dtype).eps
        rho, lams = LF.abs_chain(Vs, torch.exp(self.log_s0), eps=eps)
        c = self.gamma * torch.rsqrt(rho + eps)
        layers = [(V, layer.bias) for V, layer in zip(Vs[:-1], self.layers[:-1])]
        layers.append((c * Vs[-1], self.layers[-1].bias))
        return {"layers": layers, "lambdas": [c * c * lam for lam in lams]}


class _LayerwiseNet(LipschitzMLP):
    """Product of 1-Lipschitz linear layers with activations, output times gamma.

    The proof is the product of the layers' bounds, so the activation only needs to be
    1-Lipschitz (MaxMin, GroupSort, Householder as well as ReLU, tanh, …); the witness
    satisfies the block-diagonal LMI of :func:`lmi.functional.layerwise_matrix`.
    """

    layer_cls: type = AOLLinear
    activation_needs = ONE_LIPSCHITZ
    certificate_matrix = staticmethod(LF.layerwise_matrix)

    def __init__(self, dims, gamma=1.0, activation=None, learn_gamma=False, dtype=None, device=None):
        super().__init__(dims, gamma, activation, learn_gamma, dtype, device)
        d = self.dims
        self.layers = nn.ModuleList(
            [self.layer_cls(d[i], d[i + 1], dtype=dtype, device=device) for i in range(len(d) - 1)]
        )

    def _compute(self):
        Ws = [layer._compute() for layer in self.layers]
        layers = [(W, layer.bias) for W, layer in zip(Ws, self.layers)]
        W, b = layers[-1]
        layers[-1] = (self.gamma * W, b)
        return {"layers": layers, "unit": Ws}

    def layer_bounds(self) -> list[float]:
        """Exact spectral norms of the constrained layer weights (each ``<= 1``)."""
        return [float(torch.linalg.matrix_norm(W.detach().double(), ord=2)) for W in self.computed()["unit"]]

    def _witness(self):
        """Product-of-norms witness (one scalar multiplier per layer) at ``rho = gamma^2``."""
        _, lams = LF.product_witness([W for W, _ in self.plain_layers()])
        g = float(self.gamma.detach().double())
        return g * g, lams


@register("aol")
class AOLNet(_LayerwiseNet):
    """MLP of :class:`~lmi.layers.AOLLinear` layers (``W^T W <= I`` each), output times gamma."""

    layer_cls = AOLLinear


@register("cayley")
class CayleyNet(_LayerwiseNet):
    """MLP of :class:`~lmi.layers.CayleyLinear` (semi-orthogonal) layers, output times gamma."""

    layer_cls = CayleyLinear


@register("spectral")
class SpectralNet(_LayerwiseNet):
    """MLP of :class:`~lmi.layers.SpectralLinear` (exact spectral normalisation), output times gamma."""

    layer_cls = SpectralLinear


@register("sll")
class SLLNet(LipschitzMLP):
    r"""SLL residual network (Araujo et al., ICLR 2023) with the same widths.

    For ``dims = [n_0, h_1, ..., h_{l-1}, n_l]``: an AOL projection
    ``n_0 -> h_1``, an :class:`~lmi.layers.SLLBlock` of width ``h_1``, an AOL
    projection ``h_1 -> h_2``, a block, ..., and a final AOL projection
    ``h_{l-1} -> n_l`` scaled by gamma.  Each piece is 1-Lipschitz (per-block
    LMI ``T - V V^T >= 0``; ``P^T P <= I`` for projections), so the bound is
    gamma = product of the layer bounds.  ``to_plain`` exports each block as a
    :class:`lipsdp.nn.Residual` (see :meth:`plain_modules`), on which LipSDP
    certifies gamma; :meth:`plain_layers` gives the pure Linear/ReLU chain
    (``x = relu(x) − relu(−x)``), exact as a function but hiding the residual
    structure, so LipSDP on it can exceed gamma.  Each block's proof is the slope-[0, 1]
    quadratic constraint with the diagonal multiplier ``2 T^{-1}``.
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, dims, gamma=1.0, activation=None, learn_gamma=False, dtype=None, device=None):
        super().__init__(dims, gamma, activation, learn_gamma, dtype, device)
        d = self.dims
        fk = {"dtype": dtype, "device": device}
        self.projections = nn.ModuleList([AOLLinear(d[i], d[i + 1], **fk) for i in range(len(d) - 1)])
        self.blocks = nn.ModuleList([SLLBlock(h, h, activation=self.activation, **fk) for h in d[1:-1]])

    def _compute(self):
        Ps = [p._compute() for p in self.projections]
        blocks = [blk._compute() for blk in self.blocks]  # (V, t)
        return {"P": Ps, "blocks": blocks}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.computed()
        for P, proj, (V, t), blk in zip(c["P"][:-1], self.projections[:-1], c["blocks"], self.blocks):
            x = F.linear(x, P, proj.bias)
            x = x - 2.0 * (self.activation(F.linear(x, V, blk.bias)) / t) @ V
        return F.linear(x, self.gamma * c["P"][-1], self.projections[-1].bias)

    def plain_modules(self) -> list[nn.Module]:
        """Projections and residual blocks ``x + (−2Vᵀ T⁻¹) σ(V x + b)`` as torch modules.

        The blocks are :class:`lipsdp.nn.Residual` modules, which ``lipsdp`` reads as
        residual layers: LipSDP then certifies the residual structure (≤ γ), which the
        ReLU-split chain of :meth:`plain_layers` hides.
        """
        import copy

        from lipsdp.nn import Residual

        c = self.computed()
        Ps = c["P"]
        mods: list[nn.Module] = []
        with torch.no_grad():
            for k, (P, proj) in enumerate(zip(Ps, self.projections)):
                scale = self.gamma if k == len(Ps) - 1 else 1.0
                mods.append(_linear(P * scale, proj.bias))
                if k < len(c["blocks"]):
                    (V, t), blk = c["blocks"][k], self.blocks[k]
                    branch = nn.Sequential(_linear(V, blk.bias), copy.deepcopy(self.activation),
                                           _linear(-2.0 * V.transpose(0, 1) / t.unsqueeze(0), None))
                    mods.append(Residual(branch))
        return mods

    def plain_layers(self):
        if type(self.activation) is not nn.ReLU:
            raise ExportError(f"SLLNet.plain_layers() writes the identity as relu(x) - relu(-x), which needs the "
                              f"activation nn.ReLU, not {self.activation!r}; lmi.to_plain(model) exports the "
                              f"residual blocks for every activation it accepts")
        c = self.computed()
        Ps, bs = c["P"], [p.bias for p in self.projections]
        layers = []
        W_acc, b_acc = Ps[0], bs[0]  # affine map accumulated since the last ReLU
        for k, ((V, t), blk) in enumerate(zip(c["blocks"], self.blocks)):
            n = V.shape[1]
            eye = torch.eye(n, dtype=V.dtype, device=V.device)
            E = torch.cat([eye, -eye, V], dim=0)
            layers.append((E @ W_acc, E @ b_acc + torch.cat([torch.zeros_like(b_acc), torch.zeros_like(b_acc), blk.bias])))
            O = torch.cat([eye, -eye, -2.0 * V.transpose(0, 1) / t.unsqueeze(0)], dim=1)
            P_next = Ps[k + 1] * (self.gamma if k + 1 == len(Ps) - 1 else 1.0)
            W_acc, b_acc = P_next @ O, bs[k + 1]
        layers.append((W_acc if self.blocks else Ps[0] * self.gamma, b_acc))
        return layers

    def _witness(self):
        return None

    def _lmi_violation(self) -> float:
        """Max over blocks of ``-lambda_min(T - V V^T)/max t`` and over projections of ``||P|| - 1``."""
        viol = [-blk.lmi_min_eig() for blk in self.blocks]
        viol += [float(torch.linalg.matrix_norm(p._compute().detach().double(), ord=2)) - 1.0
                 for p in self.projections]
        return max(viol)

    def layer_bounds(self) -> list[float]:
        return [1.0] * (len(self.projections) + len(self.blocks))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding detached copies of ``weight`` and ``bias`` (None: no bias)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin
