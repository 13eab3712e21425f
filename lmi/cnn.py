r"""Lipschitz image classifiers: the "2C2F" CNN of LipKernel made γ-Lipschitz per parameterization.

``lipschitz_cnn(input_shape, n_classes, parameterization, gamma)`` builds, for every
parameterization, the same shape (Pauli et al., "LipKernel: Lipschitz-bounded convolutional
neural networks via dissipative layers", 2024, Table 1: two convolutions, two dense layers):

.. code-block:: text

    SpaceToDepth(2)  -> conv stage 1 (4·C -> channels[0]) + activation
    SpaceToDepth(2)  -> conv stage 2 (4·channels[0] -> channels[1]) + activation
    Flatten -> dense (-> hidden) + activation -> last layer (-> n_classes, or an LLN head)

Downsampling is the orthogonal :class:`~lmi.blocks.SpaceToDepth` (a permutation of the
entries), so every convolution is stride 1 and the Fourier layers of :mod:`lmi.conv` stay
circular.  The stages per parameterization:

=================  ==============================================  ===========================================
parameterization   conv stage                                      dense layer / last layer
=================  ==============================================  ===========================================
``sandwich``       :class:`~lmi.conv.SandwichConv2d` (activation    sandwich layer / sandwich output layer
                   inside: ``W_2 σ(W_1 h + b)``)                    (Wang & Manchester, ICML 2023)
``cayley``         :class:`~lmi.conv.CayleyConv2d` + activation     Cayley (semi-)orthogonal
``bro``            zero-pad channels, :class:`~lmi.conv.BROConv2d`  Cayley (BRO layers are square)
                   at ``max(c_in, c_out)``, keep ``c_out``, act.
``aol``            :class:`~lmi.conv_spatial.AOLConv2d` + act.      AOL
``sll``            zero-pad, :class:`~lmi.conv_spatial.SLLConv2d`   AOL projection + SLL block / AOL
                   at ``max(c_in, c_out)`` (activation inside),
                   keep ``c_out``
``unconstrained``  ``nn.Conv2d`` (zero padding) + activation        ``nn.Linear`` (no bound: the reference)
=================  ==============================================  ===========================================

Why the bound holds.  Every block ``f_k`` above is ``L_k``-Lipschitz in the 2-norm by its own
certificate (the per-layer LMIs of :mod:`lmi.conv`, :mod:`lmi.conv_spatial`, :mod:`lmi.layers`;
``SpaceToDepth``, zero-padding channels and ``Flatten`` are isometries, keeping the first
channels is a co-isometry, ReLU and MaxMin are 1-Lipschitz), so the composition is
``∏ L_k``-Lipschitz.  ``gamma`` sits on one layer only, every other ``L_k`` is 1: on the last
layer (``head="linear"``: logits ``γ W h + b`` with ``‖W‖₂ ≤ 1``), or, with ``head="lln"``, on
the dense hidden layer (the LLN head's rows have unit norm and are certified per pair;
Singla et al., ICLR 2022).  :meth:`LipschitzCNN.lipschitz_bound` returns the product of the
blocks' bounds, rounded up (:func:`lmi.certify.body_lipschitz_bound`): ``γ`` as stored in the
model's dtype for ``head="linear"``, ``γ`` times the LLN head's certified ``‖W‖₂`` (≤ √K)
for ``head="lln"``, and ``inf`` for ``"unconstrained"``.

For a network of sandwich layers the product is also one LipSDP certificate of the whole plain
export.  Layer ``k``'s LMI (``ρ_k = L_k²``, multiplier ``Λ_k``) is the quadratic inequality
``‖W_2 Δw‖² ≤ ρ_k ‖Δh‖² − 2 Δwᵀ Λ_k (W_1 Δh − Δw)`` for all ``Δh``, ``Δw``; substituting each
layer's input (an isometry of the previous layer's output) and summing with the weights
``∏_{j>k} ρ_j`` gives the LipSDP-Neuron LMI of the whole export at ``ρ = ∏ ρ_k`` with the
multipliers ``(∏_{j>k} ρ_j) Λ_k``.  So ``lipsdp.estimate(to_plain(model), "lipsdp-neuron",
input_shape=...)`` is feasible at ``γ`` although lipsdp merges the downsampling and each
layer's ``W_2`` into the next layer's ``W_1`` -- which is also why its ``split=k`` option,
which chunks the merged layers, does not follow these blocks;
:meth:`LipschitzCNN.lipsdp_bound` with ``blockwise=True`` cuts at the constrained layers instead.

Export: :meth:`LipschitzCNN.to_plain` (and :func:`lmi.to_plain`) returns an ``nn.Sequential``
of ``nn.Conv2d`` (circular for the Fourier layers, zero-padded for AOL/SLL, stride 2 for
``SpaceToDepth``), ``nn.Linear``, activations, ``nn.Flatten``, :class:`lipsdp.nn.Residual` (SLL
blocks) and, for a channel MaxMin, lipsdp's ``MaxMin("split")`` on the flattened map between
``nn.Flatten`` and ``nn.Unflatten`` (with 1×1 permutation convolutions for the consecutive
pairing; see :class:`~lmi.blocks.ChannelMaxMin`), equal to the model up to rounding, which
``lipsdp.estimate(plain, input_shape=(C, H, W))`` certifies independently.
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn
import torch.nn.functional as F

from lipsdp import activation_registry as registry
from lipsdp.activation_registry import ONE_LIPSCHITZ, SLOPE_IN_0_1, ProofNeeds
from lipsdp.errors import LipSDPError
from lipsdp.nn import MaxMin, Residual

from .blocks import ChannelMaxMin, LLNHead, SpaceToDepth, export_sequential
from .conv import BROConv2d, CayleyConv2d, SandwichConv2d
from .conv_spatial import AOLConv2d, SLLConv2d
from .errors import (
    ActivationNotCoveredError,
    InvalidArgumentError,
    InvalidOptionError,
    ShapeMismatchError,
    UnknownParameterizationError,
    UnsupportedModelError,
)
from .layers import (
    ActivationOwner,
    AOLLinear,
    CayleyLinear,
    SandwichLinear,
    SLLBlock,
    check_image,
    check_input,
    factory_kwargs,
    make_activation,
    positive_int,
    require_covered,
    resolve_dtype,
)
from .models import check_gamma

__all__ = [
    "CNN_PARAMETERIZATIONS",
    "HEADS",
    "LipschitzCNN",
    "lipschitz_cnn",
    "LipschitzLinear",
    "SandwichDense",
    "SLLDense",
    "ChannelResize",
]

CNN_PARAMETERIZATIONS = ("sandwich", "cayley", "bro", "aol", "sll", "unconstrained")
HEADS = ("linear", "lln")
#: keyword options of :func:`lipschitz_cnn` besides its named arguments
OPTIONS = ("kernel_size", "rank")

#: what each parameterization's proof needs of the activation ("unconstrained" has no proof)
_NEEDS = {"sandwich": SLOPE_IN_0_1, "sll": SLOPE_IN_0_1, "cayley": ONE_LIPSCHITZ, "bro": ONE_LIPSCHITZ,
          "aol": ONE_LIPSCHITZ,
          "unconstrained": ProofNeeds("an activation lipsdp reads", lambda rule: True)}


# ------------------------------------------------------------------------------ small modules
def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding detached copies of ``weight`` and ``bias`` (None: no bias)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                    device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _export_in(module: nn.Module, dtype, build) -> nn.Sequential:
    """``build()`` in the module's dtype, or, for another ``dtype``, on a converted copy (evaluated in that dtype)."""
    if dtype is not None and resolve_dtype(dtype) is not module.gamma.dtype:
        return copy.deepcopy(module).to(dtype=dtype).to_plain()
    with torch.no_grad():
        return nn.Sequential(*build()).eval()


class ChannelResize(nn.Module):
    r"""Zero-pad a feature map to ``c_out ≥ c_in`` channels, or keep its first ``c_out < c_in`` channels.

    Both are ``x ↦ E x`` with ``E = [I; 0]`` (an isometry: ``EᵀE = I``) or ``E = [I 0]`` (a
    co-isometry: ``E Eᵀ = I``), so ``‖E‖₂ = 1``.  Export: a 1×1 ``nn.Conv2d`` without bias holding
    ``E`` (0/1 entries: exact).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeMismatchError(f"ChannelResize({self.in_channels}, {self.out_channels}) takes "
                                     f"(N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if self.out_channels >= self.in_channels:
            return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))
        return x[:, :self.out_channels]

    def lipschitz_bound(self) -> float:
        """1 (exact: ``E`` has orthonormal rows or columns)."""
        return 1.0

    def to_plain(self, dtype=None, device=None) -> nn.Sequential:
        """``Sequential(Conv2d(c_in, c_out, 1, bias=False))`` with weight ``E``."""
        fk = factory_kwargs(dtype, device)
        conv = nn.Conv2d(self.in_channels, self.out_channels, 1, bias=False, **fk)
        with torch.no_grad():
            conv.weight.zero_()
            k = min(self.in_channels, self.out_channels)
            conv.weight[torch.arange(k), torch.arange(k), 0, 0] = 1.0
        return nn.Sequential(conv).eval()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class LipschitzLinear(ActivationOwner, nn.Module):
    r"""Dense layer ``x ↦ σ(γ W x + b)`` with ``‖W‖₂ ≤ 1`` by construction, ``γ``-Lipschitz.

    ``W`` is the constrained weight of a unit layer of :mod:`lmi.layers`:

    * ``kind="cayley"`` -- :class:`~lmi.layers.CayleyLinear` (orthonormal rows or columns);
    * ``kind="aol"`` -- :class:`~lmi.layers.AOLLinear` (``WᵀW ⪯ I`` by Gershgorin);
    * ``kind="sandwich"`` -- the ``B`` of :class:`~lmi.layers.SandwichLinear` with ``output=True``
      (``B Bᵀ = I − A Aᵀ ⪯ I``), the last layer of a sandwich network.

    ``‖γ W‖₂ ≤ γ`` and a 1-Lipschitz ``σ`` (``ONE_LIPSCHITZ``; None: no activation) give the
    bound ``γ``.  Export: ``Linear(γW, b)`` (+ a copy of the activation).

    Parameters
    ----------
    in_features, out_features : int
    kind : ``"cayley"``, ``"aol"`` or ``"sandwich"``
    gamma : float (inside :func:`lmi.gamma_range`)
    activation : str, nn.Module or None (no activation)
    dtype, device
    """

    activation_needs = ONE_LIPSCHITZ
    _KINDS = ("cayley", "aol", "sandwich")

    def __init__(self, in_features: int, out_features: int, kind: str = "cayley", gamma: float = 1.0,
                 activation=None, dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        if kind not in self._KINDS:
            raise InvalidArgumentError(f"LipschitzLinear kind must be one of {self._KINDS}, got {kind!r}")
        self.kind = kind
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        if kind == "cayley":
            self.unit = CayleyLinear(in_features, out_features, **fk)
        elif kind == "aol":
            self.unit = AOLLinear(in_features, out_features, **fk)
        else:
            self.unit = SandwichLinear(in_features, out_features, output=True, **fk)
        self.register_buffer("gamma", torch.tensor(check_gamma(gamma, fk["dtype"]), **fk))
        self.activation = None if activation is None else make_activation(
            activation, self.activation_needs, owner=f"LipschitzLinear(kind={kind!r})", **fk)

    @property
    def weight(self) -> torch.Tensor:
        """``γ W``, the weight the forward applies (a 2-D tensor: the head of the per-pair rule)."""
        computed = self.unit.computed()
        W = computed[1] if isinstance(computed, tuple) else computed  # SandwichLinear: (A, B, psi)
        return self.gamma * W

    @property
    def bias(self) -> torch.Tensor:
        return self.unit.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features, self.gamma.dtype, type(self).__name__)
        y = F.linear(x, self.weight, self.bias)
        return y if self.activation is None else self.activation(y)

    def lipschitz_bound(self) -> float:
        """``γ``, after re-checking the activation."""
        self.require_covered_activation()
        return float(self.gamma)

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Sequential(Linear(γW, b)[, activation])`` (another ``dtype``: the construction evaluated in it)."""
        self.require_covered_activation()

        def build():
            mods = [_linear(self.weight.detach(), self.bias.detach())]
            return mods + ([] if self.activation is None else [copy.deepcopy(self.activation)])

        return _export_in(self, dtype, build)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, kind={self.kind!r}, "
                f"gamma={float(self.gamma):.4g}")


class _GammaScaled(ActivationOwner, nn.Module):
    """``x ↦ γ · inner(x)`` for a 1-Lipschitz lmi layer ``self.inner``: ``γ``-Lipschitz.

    Subclasses set ``self.inner`` and the ``gamma`` buffer, and write their own export.
    """

    activation_needs = SLOPE_IN_0_1

    @property
    def activation(self) -> nn.Module:
        return self.inner.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.inner(x)

    def lipschitz_bound(self) -> float:
        """``γ``, after re-checking the activation."""
        self.inner.require_covered_activation()
        return float(self.gamma)


class SandwichDense(_GammaScaled):
    r"""Dense sandwich layer times ``γ``: ``x ↦ γ √2 Aᵀ Ψ σ(√2 Ψ⁻¹ B x + b)``, ``γ``-Lipschitz.

    :class:`~lmi.layers.SandwichLinear` (Wang & Manchester, ICML 2023) satisfies the LipSDP LMI
    of ``W_2 σ(W_1 x + b)`` at ``ρ = 1`` with ``W_1 = √2 Ψ⁻¹ B``, ``W_2 = √2 Aᵀ Ψ`` and the
    multiplier ``Ψ²`` for every parameter value (slope-[0, 1] activations); scaling the output
    by ``γ`` scales ``ρ`` by ``γ²``.  Export: ``Linear(W_1, b), σ, Linear(γ W_2)``.
    """

    def __init__(self, in_features: int, out_features: int, activation=None, gamma: float = 1.0,
                 dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.inner = SandwichLinear(in_features, out_features, activation=activation, **fk)
        self.register_buffer("gamma", torch.tensor(check_gamma(gamma, fk["dtype"]), **fk))

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Sequential(Linear(√2 Ψ⁻¹ B, b), σ, Linear(γ √2 Aᵀ Ψ, no bias))``."""
        self.inner.require_covered_activation()

        def build():
            A, B, psi = (t.detach() for t in self.inner.computed())
            s = math.sqrt(2.0)
            W1 = s * B / psi.unsqueeze(1)
            W2 = self.gamma * (s * (A.transpose(0, 1) * psi.unsqueeze(0)))
            return [_linear(W1, self.inner.bias.detach()), copy.deepcopy(self.activation), _linear(W2, None)]

        return _export_in(self, dtype, build)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, gamma={float(self.gamma):.4g}"


class SLLDense(_GammaScaled):
    r"""Dense SLL block times ``γ``: ``x ↦ γ (x − 2 Vᵀ T⁻¹ σ(V x + b))`` (Araujo et al., ICLR 2023).

    :class:`~lmi.layers.SLLBlock` is 1-Lipschitz (``T ⪰ V Vᵀ`` by Gershgorin, slope-[0, 1]
    constraint with multiplier ``2 T⁻¹``).  Export: ``Residual(Linear(V, b), σ, Linear(−2 Vᵀ
    T⁻¹))`` (:class:`lipsdp.nn.Residual`), then ``Linear(γ I)`` when ``γ ≠ 1``.
    """

    def __init__(self, features: int, activation=None, gamma: float = 1.0, dtype=None, device=None) -> None:
        super().__init__()
        fk = factory_kwargs(dtype, device)
        self.features = positive_int(features, "features")
        self.inner = SLLBlock(features, activation=activation, **fk)
        self.register_buffer("gamma", torch.tensor(check_gamma(gamma, fk["dtype"]), **fk))

    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Sequential(Residual(Linear, σ, Linear)[, Linear(γI)])``."""
        self.inner.require_covered_activation()

        def build():
            V, t = (v.detach() for v in self.inner.computed())
            branch = nn.Sequential(_linear(V, self.inner.bias.detach()), copy.deepcopy(self.activation),
                                   _linear(-2.0 * V.transpose(0, 1) / t.unsqueeze(0), None))
            mods: list[nn.Module] = [Residual(branch)]
            if float(self.gamma) != 1.0:
                eye = torch.eye(self.features, dtype=V.dtype, device=V.device)
                mods.append(_linear(self.gamma * eye, None))
            return mods

        return _export_in(self, dtype, build)

    def extra_repr(self) -> str:
        return f"{self.features}, gamma={float(self.gamma):.4g}"


#: layers whose certificate is an LMI (LipSDP with per-neuron multipliers), not a product of norms
_SDP_LAYERS = (SandwichConv2d, SandwichDense, SLLConv2d, SLLDense)


# ------------------------------------------------------------------------------ activations
def _activation_prototype(activation, parameterization: str) -> nn.Module:
    """The activation as a module, checked against the parameterization's proof and the feature-map rule.

    Raises
    ------
    ActivationNotCoveredError
        The parameterization's proof does not cover it (e.g. MaxMin for sandwich or SLL).
    InvalidArgumentError
        A group activation other than MaxMin (on feature maps only MaxMin has a channel-wise
        version, :class:`~lmi.blocks.ChannelMaxMin`).
    """
    if activation is None or isinstance(activation, str):
        try:
            module = registry.module_from_spec(activation)
        except LipSDPError as exc:  # unknown names and bad parameters: one typed error saying what to pass
            raise ActivationNotCoveredError(f"activation {activation!r} cannot be built ({exc}); pass a spec such "
                                            f"as 'relu', 'leaky_relu:0.2', 'tanh' or 'maxmin'") from None
    elif isinstance(activation, nn.Module):
        module = activation
    else:
        raise ActivationNotCoveredError(f"an activation is a spec string ('relu', 'maxmin', …), a torch module or "
                                        f"None (ReLU); got {type(activation).__name__}")
    require_covered(module, _NEEDS[parameterization], f"lipschitz_cnn(parameterization={parameterization!r})")
    if not isinstance(module, MaxMin) and not registry.rule_from_module(module).elementwise:
        raise InvalidArgumentError(
            f"the activation {module!r} acts on groups of entries; on feature maps only MaxMin has a channel-wise "
            f"version (lmi.ChannelMaxMin): pass activation='maxmin' or an elementwise one ('relu', 'tanh', …)"
        )
    return module


def _act_for_maps(proto: nn.Module, channels: int, image: tuple[int, int], fk: dict) -> nn.Module:
    """A conv stage's activation on ``image``-sized maps: :class:`ChannelMaxMin` for MaxMin, else ``proto``'s copy."""
    if isinstance(proto, MaxMin):
        return ChannelMaxMin(grouping=proto.grouping, channels=channels, spatial_size=image)
    return copy.deepcopy(proto).to(**fk)


def _act_for_vectors(proto: nn.Module, fk: dict) -> nn.Module:
    return copy.deepcopy(proto).to(**fk)


# ------------------------------------------------------------------------------ the model
def _check_input_shape(input_shape) -> tuple[int, int, int]:
    try:
        items = tuple(input_shape)
    except TypeError:
        items = ()
    if len(items) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                                  for v in items):
        raise InvalidArgumentError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    C, H, W = (int(v) for v in items)
    if H % 4 or W % 4:
        raise ShapeMismatchError(f"lipschitz_cnn downsamples twice by SpaceToDepth(2): H and W must be divisible "
                                 f"by 4, got input_shape={tuple(items)} (crop or pad the images)")
    return C, H, W


def _check_channels(channels) -> tuple[int, int]:
    try:
        items = tuple(channels)
    except TypeError:
        items = ()
    if len(items) != 2:
        raise InvalidArgumentError(f"channels must be a pair (c1, c2) of positive ints, got {channels!r}")
    return positive_int(items[0], "channels[0]"), positive_int(items[1], "channels[1]")


class LipschitzCNN(nn.Module):
    """A 2C2F image classifier ``head(body(x))`` with a bound by construction (see the module docstring).

    Build it with :func:`lipschitz_cnn`.  Attributes: ``body`` (an ``nn.Sequential`` up to the
    dense hidden layer), ``head`` (the last layer), ``input_shape``, ``n_classes``,
    ``parameterization``, ``head_kind``, ``gamma`` (the requested bound, a float; for
    ``"unconstrained"`` the scale the training losses' offset uses, not a bound).
    """

    def __init__(self, body: nn.Sequential, head: nn.Module, *, input_shape: tuple[int, int, int], n_classes: int,
                 parameterization: str, gamma: float, head_kind: str, config: dict) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.input_shape = tuple(input_shape)
        self.n_classes = int(n_classes)
        self.parameterization = parameterization
        self.gamma = float(gamma)
        self.head_kind = head_kind
        self.config = dict(config)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.input_shape[0], self._dtype(), "LipschitzCNN", self.input_shape[1:])
        return self.head(self.body(x))

    def lipschitz_bound(self) -> float:
        """Certified 2-norm bound: the product of the blocks' bounds, rounded up (``inf`` for ``"unconstrained"``).

        ``γ`` (in the model's dtype) for ``head="linear"``; ``γ`` times the LLN head's certified
        ``‖W‖₂`` for ``head="lln"``.  Re-checks every activation against its proof
        (:class:`~lmi.errors.ActivationNotCoveredError`).
        """
        from .certify import _mul_up, body_lipschitz_bound

        if self.parameterization == "unconstrained":
            return math.inf
        return float(_mul_up(body_lipschitz_bound(self.body), body_lipschitz_bound(self.head)))

    def body_lipschitz_bound(self) -> float:
        """Certified bound of ``body`` (everything before the last layer; ``inf`` for ``"unconstrained"``)."""
        from .certify import body_lipschitz_bound

        if self.parameterization == "unconstrained":
            return math.inf
        return float(body_lipschitz_bound(self.body))

    def head_weight(self) -> torch.Tensor:
        """The ``(n_classes, hidden)`` weight the last layer applies (detached)."""
        return self.head.weight.detach()

    def per_pair_options(self, body_lipschitz: float | None = None) -> dict:
        """``{"head": W, "body_lipschitz": L_g}`` for ``lmi.certified_accuracy(..., per_pair=True, **options)``.

        ``body_lipschitz`` overrides :meth:`body_lipschitz_bound` (needed for ``"unconstrained"``:
        e.g. lipsdp's bound of ``lmi.export_sequential(model.body)``).
        """
        L = self.body_lipschitz_bound() if body_lipschitz is None else float(body_lipschitz)
        if not math.isfinite(L):
            raise UnsupportedModelError("an unconstrained CNN has no bound by construction: pass body_lipschitz= "
                                        "(e.g. lipsdp.estimate(lmi.export_sequential(model.body), method='naive', "
                                        "input_shape=model.input_shape).value)")
        return {"head": self.head_weight(), "body_lipschitz": L}

    def to_plain(self, dtype=None) -> nn.Sequential:
        """A plain ``nn.Sequential`` equal to the model, for ``lipsdp.estimate(plain, input_shape=model.input_shape)``.

        Parameters
        ----------
        dtype : torch.float32 or torch.float64, optional
            Of the export (default: the model's).  The Fourier and dense constructions are
            evaluated in that dtype from the converted free parameters.
        """
        if dtype is not None:
            resolve_dtype(dtype)
        return export_sequential(nn.Sequential(*self.body, self.head), in_channels=self.input_shape[0], dtype=dtype)

    # -- lipsdp's independent certificate ---------------------------------------------
    def blocks(self) -> list[nn.Sequential]:
        """The model cut into blocks, each an ``nn.Sequential`` starting at a module with parameters.

        Parameter-free modules (``SpaceToDepth``, ``ChannelResize``, activations, ``Flatten``)
        join the block before them (the leading ``SpaceToDepth`` the first block), so every
        block holds exactly one constrained layer -- one certificate of the module docstring.
        """
        mods = list(self.body) + [self.head]
        blocks: list[list[nn.Module]] = []
        pending: list[nn.Module] = []
        for mod in mods:
            if next(mod.parameters(), None) is not None:
                blocks.append(pending + [mod])
                pending = []
            elif blocks:
                blocks[-1].append(mod)
            else:
                pending.append(mod)
        return [nn.Sequential(*b) for b in blocks]

    def export_blocks(self, dtype=None) -> list[tuple[nn.Sequential, tuple]]:
        """``[(plain export, input shape)]`` of :meth:`blocks`: what :meth:`lipsdp_bound` certifies block by block."""
        with torch.no_grad():
            x = torch.zeros(1, *self.input_shape, dtype=self._dtype(), device=next(self.parameters()).device)
            out = []
            for block in self.blocks():
                shape = tuple(x.shape[1:])
                plain = export_sequential(block, in_channels=shape[0] if len(shape) == 3 else None,
                                          dtype=dtype)
                out.append((plain, shape))
                x = block(x)  # the shape of the next block's input (training flags left as they are)
        return out

    @staticmethod
    def _sdp_needed(block: nn.Module) -> bool:
        """Whether the block's certificate is an LMI that a product of norms does not reproduce."""
        # a ChannelMaxMin that knows its map's size exports to lipsdp's MaxMin (a norm of 1); else to an LMI
        return any(isinstance(m, _SDP_LAYERS) or (isinstance(m, ChannelMaxMin) and m.spatial_size is None)
                   for m in block.modules())

    def lipsdp_bound(self, method: str = "auto", blockwise: bool = False, dtype=torch.float64,
                     **options) -> float:
        """lipsdp's certified bound of the plain export (:meth:`to_plain`, float64 by default).

        Parameters
        ----------
        method : a lipsdp method, or ``"auto"``: ``"lipsdp-neuron"`` where a block's certificate
            is an LMI (sandwich and SLL layers, a channel MaxMin of unknown map size),
            ``"naive"`` (product of certified norms, convolutions by FFT) elsewhere
        blockwise : bound each block of :meth:`blocks` separately and multiply (rounded up):
            smaller LMIs (one per constrained layer), a bound never below the whole network's
        dtype : of the export lipsdp reads
        options : passed to :func:`lipsdp.estimate` (``solver=``, ``max_memory_gb=``, …)
        """
        import lipsdp

        from .certify import _mul_up

        def one(plain, shape, sdp):
            name = ("lipsdp-neuron" if sdp else "naive") if method == "auto" else method
            kw = {"input_shape": shape} if len(shape) == 3 else {}
            return float(lipsdp.estimate(plain, method=name, **kw, **options))

        if not blockwise:
            return one(self.to_plain(dtype=dtype), self.input_shape, self._sdp_needed(self))
        total = 1.0
        for (plain, shape), block in zip(self.export_blocks(dtype=dtype), self.blocks()):
            total = _mul_up(total, one(plain, shape, self._sdp_needed(block)))
        return float(total)

    def extra_repr(self) -> str:
        return (f"parameterization={self.parameterization!r}, input_shape={self.input_shape}, "
                f"n_classes={self.n_classes}, gamma={self.gamma:.4g}, head={self.head_kind!r}")


# ------------------------------------------------------------------------------ stages
def _fourier_kernel(kernel_size: int, image: tuple[int, int]) -> tuple[int, int]:
    """The free kernel of a Fourier layer: ``kernel_size``, capped by the image (a larger one adds nothing)."""
    return min(kernel_size, image[0]), min(kernel_size, image[1])


def _conv_stage(p: str, c_in: int, c_out: int, image: tuple[int, int], proto: nn.Module, opts: dict,
                fk: dict) -> list[nn.Module]:
    """One conv stage ``c_in -> c_out`` on ``image``-sized maps, with its activation (1-Lipschitz)."""
    ks = opts["kernel_size"]
    if p == "sandwich":
        return [SandwichConv2d(c_in, c_out, image, activation=_act_for_vectors(proto, fk),
                               kernel_size=_fourier_kernel(ks, image), **fk)]
    if p == "cayley":
        return [CayleyConv2d(c_in, c_out, image, kernel_size=_fourier_kernel(ks, image), **fk),
                _act_for_maps(proto, c_out, image, fk)]
    if p == "aol":
        return [AOLConv2d(c_in, c_out, ks, **fk), _act_for_maps(proto, c_out, image, fk)]
    if p == "unconstrained":
        return [nn.Conv2d(c_in, c_out, ks, padding=ks // 2, **fk), _act_for_maps(proto, c_out, image, fk)]
    m = max(c_in, c_out)  # bro and sll: channel-preserving layers, between zero-padding and truncation
    mods: list[nn.Module] = [ChannelResize(c_in, m)] if c_in < m else []
    if p == "bro":
        rank = opts["rank"] if opts["rank"] is not None else max(m // 2, 1)
        mods.append(BROConv2d(m, image, rank=rank, kernel_size=_fourier_kernel(ks, image), **fk))
    else:
        mods.append(SLLConv2d(m, ks, activation=_act_for_vectors(proto, fk), **fk))
    if c_out < m:
        mods.append(ChannelResize(m, c_out))
    if p == "bro":
        mods.append(_act_for_maps(proto, c_out, image, fk))
    return mods


def _dense_stage(p: str, n_in: int, hidden: int, gamma: float, proto: nn.Module, fk: dict) -> list[nn.Module]:
    """The dense hidden layer ``n_in -> hidden`` with its activation, ``gamma``-Lipschitz."""
    if p == "sandwich":
        return [SandwichDense(n_in, hidden, activation=_act_for_vectors(proto, fk), gamma=gamma, **fk)]
    if p in ("cayley", "bro", "aol"):
        kind = "aol" if p == "aol" else "cayley"
        return [LipschitzLinear(n_in, hidden, kind=kind, gamma=gamma, activation=_act_for_vectors(proto, fk), **fk)]
    if p == "sll":
        return [LipschitzLinear(n_in, hidden, kind="aol", **fk),
                SLLDense(hidden, activation=_act_for_vectors(proto, fk), gamma=gamma, **fk)]
    return [nn.Linear(n_in, hidden, **fk), _act_for_vectors(proto, fk)]


def _last_layer(p: str, hidden: int, n_classes: int, gamma: float, fk: dict) -> nn.Module:
    if p == "unconstrained":
        return nn.Linear(hidden, n_classes, **fk)
    kind = {"sandwich": "sandwich", "aol": "aol", "sll": "aol"}.get(p, "cayley")
    return LipschitzLinear(hidden, n_classes, kind=kind, gamma=gamma, **fk)


def lipschitz_cnn(input_shape, n_classes: int, parameterization: str, gamma: float = 1.0, channels=(16, 32),
                  hidden: int = 100, activation=None, head: str = "linear", dtype=None, device=None,
                  **kwargs) -> LipschitzCNN:
    """Build the 2C2F classifier of the module docstring, ``gamma``-Lipschitz in the 2-norm.

    Parameters
    ----------
    input_shape : (C, H, W)
        One image; ``H`` and ``W`` divisible by 4 (two ``SpaceToDepth(2)``).
    n_classes : int
    parameterization : one of :data:`CNN_PARAMETERIZATIONS`
    gamma : float
        The network's bound (on the last layer; with ``head="lln"`` the body's bound), inside
        :func:`lmi.gamma_range` of ``dtype``.
    channels : (c1, c2)
        Output channels of the two conv stages (LipKernel's 2C2F: (16, 32)).
    hidden : int
        Width of the dense hidden layer (2C2F: 100).
    activation : str, nn.Module or None
        ReLU by default; any activation the parameterization's proof covers (``"tanh"``,
        ``"leaky_relu:0.2"``, …; ``"maxmin"`` for cayley, bro, aol and unconstrained: channel
        MaxMin after convolutions, MaxMin on the dense layer).
    head : ``"linear"`` or ``"lln"`` (:class:`~lmi.blocks.LLNHead`)
    dtype, device
        torch.float32 (default dtype) or torch.float64; any device.
    kernel_size : int, optional (keyword)
        Free kernel size of every convolution (default 3; odd for aol and sll).
    rank : int, optional (keyword)
        Rank of the BRO reflectors (default half their channels).

    Raises
    ------
    UnknownParameterizationError, InvalidOptionError, InvalidArgumentError, ShapeMismatchError,
    ActivationNotCoveredError, NumericalRangeError, UnsupportedDtypeError
    """
    if parameterization not in CNN_PARAMETERIZATIONS:
        raise UnknownParameterizationError(str(parameterization), CNN_PARAMETERIZATIONS)
    unknown = sorted(set(kwargs) - set(OPTIONS))
    if unknown:
        raise InvalidOptionError(f"lipschitz_cnn has no option(s) {unknown}; its keyword options are {list(OPTIONS)}")
    if head not in HEADS:
        raise InvalidOptionError(f"head must be one of {HEADS}, got {head!r}")
    fk = factory_kwargs(dtype, device)
    C, H, W = _check_input_shape(input_shape)
    c1, c2 = _check_channels(channels)
    hidden = positive_int(hidden, "hidden")
    n_classes = positive_int(n_classes, "n_classes")
    if n_classes < 2:
        raise InvalidArgumentError(f"n_classes must be at least 2, got {n_classes}")
    g = check_gamma(gamma, fk["dtype"])
    opts = {"kernel_size": positive_int(kwargs.get("kernel_size", 3), "kernel_size"), "rank": kwargs.get("rank")}
    proto = _activation_prototype(activation, parameterization)
    if isinstance(proto, MaxMin) and (c1 % 2 or c2 % 2 or hidden % 2):
        raise ShapeMismatchError(f"MaxMin pairs channels and features: channels {(c1, c2)} and hidden {hidden} "
                                 f"must be even")
    p = parameterization
    image1, image2 = (H // 2, W // 2), (H // 4, W // 4)
    body: list[nn.Module] = [SpaceToDepth(2, in_channels=C)]
    body += _conv_stage(p, 4 * C, c1, image1, proto, opts, fk)
    body += [SpaceToDepth(2, in_channels=c1)]
    body += _conv_stage(p, 4 * c1, c2, image2, proto, opts, fk)
    body += [nn.Flatten()]
    # gamma on the last layer, or on the dense hidden layer before an LLN head (whose rows are unit)
    body += _dense_stage(p, c2 * image2[0] * image2[1], hidden, g if head == "lln" else 1.0, proto, fk)
    last = (LLNHead(hidden, n_classes, **fk) if head == "lln" else _last_layer(p, hidden, n_classes, g, fk))
    config = {"channels": (c1, c2), "hidden": hidden, "activation": activation if isinstance(activation, str) or
              activation is None else type(activation).__name__, **opts}
    return LipschitzCNN(nn.Sequential(*body), last, input_shape=(C, H, W), n_classes=n_classes,
                        parameterization=p, gamma=g, head_kind=head, config=config)
