"""Layers whose Lipschitz bound holds by construction.

Each layer here is a ``torch.nn.Module`` whose constrained weights are a smooth
function (see :mod:`lmi.functional`) of free parameters, so any optimiser step
keeps the certificate.  The layer-wise ones (:class:`SandwichLinear`,
:class:`AOLLinear`, :class:`CayleyLinear`, :class:`SpectralLinear`,
:class:`SLLBlock`, :class:`GershgorinLinear`) are 1-Lipschitz on their own; the
network-level ones (:class:`LDLTLinear`, and :class:`GershgorinLinear` inside a
network) receive their scaling from the network in :mod:`lmi.models`.

Activations: every layer or network that applies an activation declares what its
proof needs of it (``activation_needs``, a :class:`lipsdp.activation_registry.ProofNeeds`):
the sandwich and SLL layers use the slope-[0, 1] quadratic constraint with diagonal
multipliers (:data:`~lipsdp.activation_registry.SLOPE_IN_0_1`).  Activations are
built and judged by the one activation registry, :mod:`lipsdp.activation_registry`;
anything its proof does not cover is refused with
:class:`~lmi.errors.ActivationNotCoveredError`, at construction and again wherever a
bound is claimed (a user may swap ``layer.activation`` afterwards).

Caching: :class:`CachedWeights` recomputes the constrained weights on every
forward in training mode and caches them in eval mode; the cache is keyed on
the version counters of every parameter/buffer and cleared by ``train()``,
``load_state_dict`` and device/dtype moves.  In eval mode the cached weights are
detached (parameters are treated as constants).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn
import torch.nn.functional as F

from lipsdp import activation_registry
from lipsdp.activation_registry import SLOPE_IN_0_1, ProofNeeds

from . import functional as LF
from .errors import (
    ActivationNotCoveredError,
    InvalidArgumentError,
    InvalidInputError,
    ShapeMismatchError,
    UnsupportedDtypeError,
    UnsupportedModelError,
)
from .registry import accepting

__all__ = [
    "CachedWeights",
    "ActivationOwner",
    "make_activation",
    "require_covered",
    "resolve_dtype",
    "check_input",
    "check_image",
    "SandwichLinear",
    "LDLTLinear",
    "GershgorinLinear",
    "AOLLinear",
    "CayleyLinear",
    "SpectralLinear",
    "SLLBlock",
]

#: the dtypes lmi builds models in (the constructions need real floating point of this precision)
FLOAT_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------------ argument checks
def resolve_dtype(dtype) -> torch.dtype:
    """The dtype a model is built in: ``dtype``, or torch's default dtype when None.

    Raises
    ------
    UnsupportedDtypeError
        Anything but ``torch.float32`` / ``torch.float64``.
    """
    resolved = torch.get_default_dtype() if dtype is None else dtype
    if not any(resolved is d for d in FLOAT_DTYPES):
        raise UnsupportedDtypeError(
            f"lmi builds models in torch.float32 or torch.float64, got dtype={resolved!r}; "
            f"pass dtype=torch.float32 or dtype=torch.float64"
        )
    return resolved


def positive_int(value, name: str) -> int:
    """``value`` as an int, refused (:class:`InvalidArgumentError`) unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(value, name: str, why: str) -> float:
    """``value`` as a float, refused (:class:`InvalidArgumentError`) unless it is positive and finite."""
    try:
        x = math.nan if isinstance(value, bool) else float(value)  # True is not a number here
    except (TypeError, ValueError):
        x = math.nan
    if not (x > 0 and math.isfinite(x)):
        raise InvalidArgumentError(f"{name} must be positive and finite ({why}), got {value!r}")
    return x


def _check_tensor(x, dtype: torch.dtype, owner: str, expected: str) -> None:
    """``x`` must be a tensor of ``dtype`` (InvalidInputError saying what to do otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{owner} takes a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dtype != dtype:
        raise InvalidInputError(
            f"{owner} is in {dtype} but the input is {x.dtype}: convert the input with x.to({dtype}) "
            f"or the model with model.to({x.dtype})"
        )


def check_input(x, width: int, dtype: torch.dtype, owner: str) -> None:
    """Refuse a forward input that is not a ``(..., width)`` tensor of ``dtype``.

    Raises
    ------
    InvalidInputError
        Not a tensor, or a tensor of another dtype (the message says which to use).
    ShapeMismatchError
        The last dimension is not ``width``.
    """
    if isinstance(x, torch.Tensor) and (x.dim() == 0 or x.shape[-1] != width):
        raise ShapeMismatchError(
            f"{owner} expects inputs of width {width} (shape (batch, {width})), got shape {tuple(x.shape)}"
        )
    _check_tensor(x, dtype, owner, f"(batch, {width})")


def check_image(x, channels: int, dtype: torch.dtype, owner: str, image_size: tuple | None = None,
                unbatched: bool = False) -> None:
    """Refuse a forward input that is not a ``(batch, channels, H, W)`` tensor of ``dtype``.

    ``image_size``: the ``(H, W)`` a layer was built for (a Fourier parameterization fixes it);
    ``unbatched``: also accept one image ``(channels, H, W)``.

    Raises
    ------
    InvalidInputError
        Not a tensor, or a tensor of another dtype (the message says which to use).
    ShapeMismatchError
        Not 4-dimensional (or 3-dimensional when ``unbatched``), another channel count or image size.
    """
    size = "H, W" if image_size is None else f"{image_size[0]}, {image_size[1]}"
    expected = f"(batch, {channels}, {size})"
    if isinstance(x, torch.Tensor):
        dims = (3, 4) if unbatched else (4,)
        if x.dim() not in dims or x.shape[-3] != channels:
            one = " or (" + f"{channels}, {size})" if unbatched else "; add a batch axis with x.unsqueeze(0) for one image"
            raise ShapeMismatchError(f"{owner} expects images with {channels} input channels, of shape {expected}{one}; "
                                     f"got shape {tuple(x.shape)}")
        if image_size is not None and tuple(x.shape[-2:]) != tuple(image_size):
            raise ShapeMismatchError(
                f"{owner} was built for {image_size[0]}x{image_size[1]} images (its Fourier parameterization fixes "
                f"the size), got {x.shape[-2]}x{x.shape[-1]}; resize the input or build the layer with "
                f"image_size={tuple(x.shape[-2:])}"
            )
    _check_tensor(x, dtype, owner, expected)


# ------------------------------------------------------------------------------ activations
def _activation_module(activation) -> nn.Module:
    """The torch module of a spec string (``"relu"``, ``"leaky_relu:0.2"``, …), a module, or None (ReLU)."""
    if activation is None or isinstance(activation, str):
        return activation_registry.module_from_spec(activation)
    if isinstance(activation, nn.Module):
        return activation
    raise ActivationNotCoveredError(
        f"an activation is a spec string such as 'relu' or 'leaky_relu:0.2', a torch module, or None "
        f"(ReLU); got {type(activation).__name__}"
    )


def _where_accepted(activation) -> str:
    names = accepting(activation)
    if not names:
        return "no lmi parameterization accepts it"
    return f"parameterizations that accept it: {', '.join(names)}"


def require_covered(activation, needs: ProofNeeds, owner: str) -> None:
    """Refuse ``activation`` unless ``needs`` admits it (for every value of its parameters).

    Raises
    ------
    ActivationNotCoveredError
        Naming the activation, the property ``owner``'s proof needs, why the activation
        lacks it, and the parameterizations that accept it (or that none does).
    """
    ok, reason = needs.admits(activation)
    if not ok:
        raise ActivationNotCoveredError(
            f"{owner} does not cover the activation {activation!r}: its proof needs an activation that is "
            f"{needs.description} for every value of its parameters, but {reason}; {_where_accepted(activation)}"
        )


def make_activation(activation=None, needs: ProofNeeds = SLOPE_IN_0_1, *, owner: str = "this layer",
                    dtype=None, device=None) -> nn.Module:
    """An activation module that ``needs`` admits, on ``dtype``/``device``.

    Parameters
    ----------
    activation : str, nn.Module or None
        A spec string of :mod:`lipsdp.activation_registry` (``"relu"``, ``"leaky_relu:0.2"``,
        ``"tanh"``, ``"maxmin"``, ``"groupsort:4"``, …), a torch module (moved in place to
        ``dtype``/``device`` so its parameters match the model's), or None for ReLU.
    needs : ProofNeeds
        What the proof using the activation needs of it (default: slopes in ``[0, 1]``).
    owner : str
        Who uses it, for the error message.

    Raises
    ------
    ActivationNotCoveredError
        The activation is not covered by ``needs`` (see :func:`require_covered`).
    """
    module = _activation_module(activation)
    require_covered(module, needs, owner)
    return module.to(dtype=resolve_dtype(dtype), device=device)


class ActivationOwner:
    """Mixin of modules applying ``self.activation`` under a proof that needs ``activation_needs``."""

    activation_needs: ProofNeeds = SLOPE_IN_0_1

    def _owner_name(self) -> str:
        return type(self).__name__

    def require_covered_activation(self) -> None:
        """Re-check ``self.activation`` (it may have been swapped since construction)."""
        if getattr(self, "activation", None) is not None:
            require_covered(self.activation, self.activation_needs, self._owner_name())


class CachedWeights(nn.Module):
    """Mixin: ``self.computed()`` returns ``self._compute()``, cached in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = None
        self._cache_key = None

    def _compute(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _state_key(self):
        return tuple(
            (t._version, t.data_ptr(), t.dtype, str(t.device))
            for t in list(self.parameters()) + list(self.buffers())
        )

    def invalidate_cache(self) -> None:
        """Drop cached weights (called by ``train()``, ``load_state_dict`` and moves)."""
        self._cache = None
        self._cache_key = None

    def computed(self):
        """The constrained weights: recomputed in training mode, cached in eval."""
        if self.training:
            self._cache = None
            return self._compute()
        key = self._state_key()
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self._compute()
            self._cache_key = key
        return self._cache

    def train(self, mode: bool = True):
        self.invalidate_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)


def _widths(in_features, out_features) -> tuple[int, int]:
    return positive_int(in_features, "in_features"), positive_int(out_features, "out_features")


def factory_kwargs(dtype, device) -> dict:
    """``{"dtype", "device"}`` for new tensors, with the dtype checked by :func:`resolve_dtype`."""
    return {"dtype": resolve_dtype(dtype), "device": device}


def _init_bias(bias: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    nn.init.uniform_(bias, -bound, bound)


class SandwichLinear(ActivationOwner, CachedWeights):
    r"""Sandwich layer (Wang & Manchester, ICML 2023), 1-Lipschitz by construction.

    Free parameters ``X (q x q)``, ``Y (p x q)`` (stored stacked as ``XY``),
    ``d (q)`` and bias ``b``.  With ``[A^T; B^T] = cayley(X, Y)`` (so
    ``A A^T + B B^T = I``) and ``Psi = diag(e^d)`` the hidden layer is

    .. math::  h \mapsto \sqrt2\, A^T \Psi\, \sigma(\sqrt2\, \Psi^{-1} B h + b),

    and it satisfies, for every parameter value, the LipSDP LMI of the
    one-hidden-layer map ``W_2 sigma(W_1 h + b)`` with ``W_1 = sqrt2 Psi^{-1} B``,
    ``W_2 = sqrt2 A^T Psi``, ``rho = 1`` and multiplier ``Lambda = Psi^2`` (convention of docs/formulations.md §1, where the slope-[0, 1]
    constraint reads ``2 dv^T Lambda dx - 2 dx^T Lambda dx >= 0``):

    .. math::  \begin{bmatrix} -I & W_1^T\Lambda \\ \Lambda W_1 & W_2^T W_2 - 2\Lambda \end{bmatrix} \preceq 0.

    With ``output=True`` the layer is the linear map ``h -> B h + b``
    (``||B|| <= 1``), used as the last layer of a sandwich network.

    The proof is the slope-[0, 1] quadratic constraint with the diagonal multiplier
    ``Psi^2``, so the activation must be elementwise with slopes in ``[0, 1]``
    (``activation_needs``).
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, in_features: int, out_features: int, activation=None, output: bool = False,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        in_features, out_features = _widths(in_features, out_features)
        self.in_features, self.out_features, self.output = in_features, out_features, output
        q, p = out_features, in_features
        self.XY = nn.Parameter(torch.empty(q + p, q, **fk))
        nn.init.xavier_normal_(self.XY)
        if output:
            self.register_parameter("d", None)
        else:
            self.d = nn.Parameter(torch.zeros(q, **fk))
        self.bias = nn.Parameter(torch.empty(q, **fk))
        _init_bias(self.bias, p)
        self.activation = None if output else make_activation(activation, self.activation_needs,
                                                               owner="SandwichLinear", **fk)

    def factors(self):
        """Return ``(A, B, psi)``: ``A`` is ``q x q``, ``B`` is ``q x p``, ``psi = e^d``."""
        q = self.out_features
        C, D = LF.cayley(self.XY[:q], self.XY[q:])
        A, B = C.transpose(0, 1), D.transpose(0, 1)
        psi = None if self.d is None else torch.exp(self.d)
        return A, B, psi

    def _compute(self):
        return self.factors()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features, self.bias.dtype, "SandwichLinear")
        A, B, psi = self.computed()
        if self.output:
            return F.linear(x, B, self.bias)
        pre = math.sqrt(2.0) * F.linear(x, B) / psi + self.bias
        return math.sqrt(2.0) * (self.activation(pre) * psi) @ A

    def lipschitz_bound(self) -> float:
        """1, after re-checking the activation (:class:`~lmi.errors.ActivationNotCoveredError`)."""
        self.require_covered_activation()
        return 1.0

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, output={self.output}"


class LDLTLinear(nn.Module):
    r"""One layer of the LDL^T network (Juston et al., 2025), restated for MLPs.

    The layer holds a free matrix ``V`` (``out x in``), log-multipliers
    ``log lambda`` and a bias.  Given the Cholesky factor ``F`` of the previous
    LDL^T pivot ``D_{k-1} = F F^T`` it returns the plain weight

    .. math::  W_k = \sqrt2\, \Lambda_k^{-1/2}\, \tilde W_k F^T,\qquad
               \tilde W_k = L_k^{-1} V_k,\ L_k L_k^T = V_k V_k^T + \alpha I,

    and the factor of the next pivot
    ``D_k = 2 Lambda_k - Lambda_k W_k D_{k-1}^{-1} W_k^T Lambda_k
    = 2 alpha Lambda_k^{1/2} L_k^{-1} L_k^{-T} Lambda_k^{1/2} > 0``.
    The last layer uses ``W_l = \tilde W_l F^T`` so that
    ``D_{l-1} - W_l^T W_l = F (I - \tilde W_l^T \tilde W_l) F^T \succeq 0``.
    All pivots positive is exactly the block LDL^T test of the LipSDP LMI
    (docs/formulations.md §1-2), so the network with ``D_0 = gamma^2 I`` is gamma-Lipschitz.
    ``alpha > 0`` (finite) is the slack of the contraction; ``alpha = 0`` would make
    ``V V^T + alpha I`` singular.
    """

    def __init__(self, in_features: int, out_features: int, alpha: float = 1.0, output: bool = False,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        in_features, out_features = _widths(in_features, out_features)
        self.in_features, self.out_features, self.output = in_features, out_features, output
        self.alpha = positive_float(alpha, "alpha", "the slack of the Cholesky factor of V V^T + alpha I")
        self.V = nn.Parameter(torch.empty(out_features, in_features, **fk))
        # singular values sqrt(alpha) => tilde W has singular values 1/sqrt(2)
        nn.init.orthogonal_(self.V)
        with torch.no_grad():
            self.V.mul_(math.sqrt(self.alpha))
        if output:
            self.register_parameter("log_lambda", None)
        else:
            self.log_lambda = nn.Parameter(torch.zeros(out_features, **fk))
        self.bias = nn.Parameter(torch.empty(out_features, **fk))
        _init_bias(self.bias, in_features)

    def weight(self, F_prev: torch.Tensor):
        """Return ``(W, F_next, lam)`` given the previous pivot factor ``F_prev``."""
        Wt, Linv = LF.contraction(self.V, self.alpha)
        if self.output:
            return Wt @ F_prev.transpose(0, 1), None, None
        lam = torch.exp(self.log_lambda)
        W = math.sqrt(2.0) * torch.rsqrt(lam).unsqueeze(1) * (Wt @ F_prev.transpose(0, 1))
        F_next = math.sqrt(2.0 * self.alpha) * torch.sqrt(lam).unsqueeze(1) * Linv
        return W, F_next, lam

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, alpha={self.alpha}, output={self.output}"


class _UnitLinearMixin:
    """``weight()``, ``forward`` and the bound of a linear layer whose computed weight has ``‖W‖₂ ≤ 1``."""

    def weight(self) -> torch.Tensor:
        return self.computed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features, self.bias.dtype, type(self).__name__)
        return F.linear(x, self.computed(), self.bias)

    def lipschitz_bound(self) -> float:
        return 1.0


class GershgorinLinear(_UnitLinearMixin, CachedWeights):
    r"""Linear layer rescaled by a scaled-Gershgorin certificate.

    Alone, ``W = V / sqrt(rho)`` with ``rho = max_i (|V|^T |V| s)_i / s_i``
    (``s = e^{log_s} > 0``), so ``W^T W \preceq I`` because
    ``diag(s)(rho I - |V|^T|V|)diag(s)`` is diagonally dominant.  Inside
    :class:`lmi.models.GershgorinNet` only ``V`` and ``bias`` are used and the
    certificate is built for the whole network (:func:`lmi.functional.abs_chain`).
    """

    def __init__(self, in_features: int, out_features: int, scaling: bool = True,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        in_features, out_features = _widths(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.V = nn.Parameter(torch.empty(out_features, in_features, **fk))
        nn.init.orthogonal_(self.V)
        if scaling:
            self.log_s = nn.Parameter(torch.zeros(in_features, **fk))
        else:  # the network owns the scaling vector
            self.register_parameter("log_s", None)
        self.bias = nn.Parameter(torch.empty(out_features, **fk))
        _init_bias(self.bias, in_features)

    def _compute(self):
        if self.log_s is None:
            raise UnsupportedModelError("GershgorinLinear(scaling=False) is only usable inside GershgorinNet, "
                                        "which owns the scaling; build it with scaling=True to use it alone")
        eps = torch.finfo(self.V.dtype).eps
        rho, _ = LF.abs_chain([self.V], torch.exp(self.log_s), eps=eps)
        return self.V * torch.rsqrt(rho + eps)


class _NormedLinear(_UnitLinearMixin, CachedWeights):
    """Shared body of the 1-Lipschitz linear baselines (``||W||_2 <= 1``)."""

    def __init__(self, in_features: int, out_features: int, shape, dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.in_features, self.out_features = in_features, out_features
        self.V = nn.Parameter(torch.empty(*shape, **fk))
        nn.init.orthogonal_(self.V)
        self.bias = nn.Parameter(torch.empty(out_features, **fk))
        _init_bias(self.bias, in_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class AOLLinear(_NormedLinear):
    r"""Almost-orthogonal layer (Prach & Lampert, ECCV 2022).

    ``W = V diag(t)^{-1/2}`` with ``t_i = sum_j |V^T V|_ij``; Gershgorin gives
    the LMI ``W^T W \preceq I`` for every ``V``.
    """

    def __init__(self, in_features: int, out_features: int, dtype=None, device=None) -> None:
        in_features, out_features = _widths(in_features, out_features)
        super().__init__(in_features, out_features, (out_features, in_features), dtype, device)

    def _compute(self):
        return LF.aol_scale(self.V)


class CayleyLinear(_NormedLinear):
    r"""Orthogonal layer through the Cayley transform (Trockman & Kolter, 2021).

    ``W`` has orthonormal rows (``out <= in``) or columns (``out > in``), so it
    satisfies the LMI ``W^T W \preceq I`` with equality on its row/column space.
    """

    def __init__(self, in_features: int, out_features: int, dtype=None, device=None) -> None:
        in_features, out_features = _widths(in_features, out_features)
        shape = (max(in_features, out_features), min(in_features, out_features))
        super().__init__(in_features, out_features, shape, dtype, device)
        with torch.no_grad():
            self.V.mul_(0.5)

    def _compute(self):
        return LF.semi_orthogonal(self.V, self.out_features, self.in_features)


class SpectralLinear(_NormedLinear):
    r"""Spectral normalisation with the exact largest singular value.

    ``W = V / ||V||_2`` (``torch.linalg.matrix_norm(ord=2)``, not a power
    iteration, so the bound is exact): ``W^T W \preceq I``.
    """

    def __init__(self, in_features: int, out_features: int, dtype=None, device=None) -> None:
        in_features, out_features = _widths(in_features, out_features)
        super().__init__(in_features, out_features, (out_features, in_features), dtype, device)

    def _compute(self):
        sigma = torch.linalg.matrix_norm(self.V, ord=2)
        return self.V / sigma.clamp_min(torch.finfo(self.V.dtype).eps)


class SLLBlock(ActivationOwner, CachedWeights):
    r"""SDP-based Lipschitz residual layer (Araujo et al., ICLR 2023).

    ``h(x) = x - 2 V^T T^{-1} sigma(V x + b)`` with ``T = diag(t)``,
    ``t_i = sum_j |V V^T|_ij e^{q_j - q_i}``.  Gershgorin gives
    ``T - V V^T \succeq 0``, which with the slope-[0, 1] quadratic constraint
    (multiplier ``2 T^{-1}``) certifies ``||h||_Lip <= 1``, so the activation must be
    elementwise with slopes in ``[0, 1]`` (``activation_needs``).
    """

    activation_needs = SLOPE_IN_0_1

    def __init__(self, features: int, inner: int | None = None, activation=None,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        features = positive_int(features, "features")
        inner = features if inner is None else positive_int(inner, "inner")
        self.features, self.inner = features, inner
        self.V = nn.Parameter(torch.empty(inner, features, **fk))
        nn.init.xavier_normal_(self.V)
        self.q = nn.Parameter(torch.zeros(inner, **fk))
        self.bias = nn.Parameter(torch.empty(inner, **fk))
        _init_bias(self.bias, features)
        self.activation = make_activation(activation, self.activation_needs, owner="SLLBlock", **fk)

    def _compute(self):
        t = LF.sll_diag(self.V, self.q)
        return self.V, t

    def diag(self) -> torch.Tensor:
        return self.computed()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.features, self.bias.dtype, "SLLBlock")
        V, t = self.computed()
        return x - 2.0 * (self.activation(F.linear(x, V, self.bias)) / t) @ V

    def lmi_min_eig(self) -> float:
        """Smallest eigenvalue of ``T - V V^T`` relative to ``max t`` (``>= 0`` certified)."""
        with torch.no_grad():
            V = self.V.detach().double()
            t = LF.sll_diag(V, self.q.detach().double())
            M = torch.diag(t) - V @ V.T
            return float(torch.linalg.eigvalsh(M).min() / t.max())

    def lipschitz_bound(self) -> float:
        """1, after re-checking the activation (:class:`~lmi.errors.ActivationNotCoveredError`)."""
        self.require_covered_activation()
        return 1.0

    def extra_repr(self) -> str:
        return f"features={self.features}, inner={self.inner}"
