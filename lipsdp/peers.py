"""Read models built with deel-torchlip and orthogonium, without importing either library.

Every module is matched by its fully qualified type name (eager, or TorchScript through
:func:`lipsdp.activation_registry.qualified_type_name`; a parametrized layer by the class
it was built from, :func:`lipsdp.torch_io.type_name`), so a same-named class of another
library is never mistaken for one of these.  What each module computes in eval mode was
read from the peers' sources (deel-torchlip 1.0.5, orthogonium 0.0.4):

deel-torchlip (``deel.torchlip.modules``)
    ``SpectralLinear``, ``FrobeniusLinear``: ``W x + b`` with ``W = module.weight`` (spectral
    normalisation then Björck, or Frobenius normalisation, and the ``k_coef_lip`` factor;
    in eval mode Björck returns the weight stored by the last training step).
    ``GroupSort(g)``, ``GroupSort2``, ``FullSort``: ``k·sort`` *ascending* within consecutive
    groups of ``g`` (the whole layer when ``g`` is None or larger than the width),
    ``k = _coefficient_lip`` (``deel.torchlip.Sequential(k_coef_lip=…)`` sets it).
    ``MaxMin``: ``k·[relu(x); relu(−x)]`` (it doubles the width).
    ``LPReLU``: PReLU with its slopes clamped to ``[−k, k]``.
    ``HouseHolder``: pairs ``(x_j, x_{j+n/2})`` reflected by angle ``θ_j`` (one angle for all
    pairs only: lipsdp's Householder rule has one reflection vector per layer).
    ``ScaleBiasLayer`` (the vanilla export of its normalisations): ``s x + b``;
    ``LayerCentering(dim=-1)``: ``x − mean(x) + b``; ``BatchCentering``/``BatchLipNorm`` in eval
    mode as their vanilla export; ``Sequential``: a container.
orthogonium (``orthogonium.layers``)
    ``OrthoLinear``, ``UnitNormLinear``: ``W x + b`` with ``W = module.weight``.  OrthoLinear's
    power iteration runs on *every* weight computation, eval mode included, so its output
    drifts from call to call; it is read at its current state, left unchanged, and the result
    says so (:func:`lipsdp.torch_io.note`).
    ``SDPBasedLipschitzDense``: ``x − 2 Wᵀ diag(t) σ(W x + b)``, a residual layer.
    ``MaxMin(axis=1)``: pairs ``(x_j, x_{j+n/2})``, maximum at ``j`` and minimum at ``j+n/2``
    (lipsdp's ``maxmin`` with ``grouping="split"``), not adjacent neurons.
    ``Abs``: ``|x|`` (``leaky_relu`` with slope −1).
    ``AdditiveResidual(fn)``: ``α x + (1−α) fn(x)``, ``α = sigmoid(alpha)``;
    ``PrescaledAdditiveResidual(fn)``: ``(x + fn(α x)) / (1 + |α|)``.

Every activation read here is checked against the module itself on probe inputs before
it is used: a module whose output differs from lipsdp's reading (a changed pairing, order
or scaling) is refused, never certified as a different network.

Registered on ``import lipsdp``; torch is imported lazily.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from scipy.special import expit

from . import activation_registry as registry
from .activation_registry import UnreadableModule
from .errors import InvalidActivationError, UnsupportedLayerError
from .network import ActivationLayer, Affine, Residual
from .torch_io import (
    Unsupported,
    WidthDependent,
    child_path,
    convert_module,
    register_torch_converter,
    supported_modules,
)

DEEL = "deel.torchlip.modules"
ORTHOGONIUM = "orthogonium.layers"
#: width of the probe inputs of activations that accept any (even) width
PROBE_WIDTH = 8
#: relative tolerance of the probe (the peers compute in float32)
PROBE_RTOL = 1e-5


# ------------------------------------------------------------------------------ helpers
def _np(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _attribute(module: Any, name: str) -> Any:
    """An attribute of an eager or scripted module, None included (deel's FullSort has no group size);
    traced modules keep none (refused with the reason)."""
    if not hasattr(module, name):
        raise UnreadableModule(f"cannot read its {name!r} (a traced module keeps no attributes): save the model "
                               "with torch.jit.script instead")
    return getattr(module, name)


def _scale(module: Any) -> float:
    """deel-torchlip's ``_coefficient_lip``: the factor its activations multiply their output by."""
    k = float(_attribute(module, "_coefficient_lip"))
    if not (math.isfinite(k) and k > 0):
        raise UnreadableModule(f"its k_coef_lip is {k}; a positive finite factor is needed")
    return k


def _scaling(k: float, width: int, path: str) -> list:
    """``[k·I]`` as an affine layer (empty for k = 1)."""
    return [] if k == 1.0 else [Affine.create(k * np.eye(width), None, f"{path}/k_coef_lip")]


def _features_axis(axis: Any) -> None:
    """Refuse an axis other than the features of a ``(batch, features)`` input."""
    if axis is not None and int(axis) not in (1, -1):
        raise UnreadableModule(f"it acts along axis {axis}; lipsdp reads dense layers, whose features are axis 1")


def _device_dtype(module: Any):
    import torch

    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def require_same_output(module: Any, layers: list, width: int, what: str) -> None:
    """Refuse ``module`` unless lipsdp's ``layers`` compute its output on probe inputs of ``width``.

    The probe values are multiples of 1/8 (exact in float32, with ties), so sorting and pairing
    are compared exactly and arithmetic up to :data:`PROBE_RTOL`.

    Raises
    ------
    UnreadableModule
        The outputs differ, or the module fails on a width its reading accepts.
    """
    import torch

    x = np.random.default_rng(0).integers(-24, 25, size=(16, width)) / 8.0
    device, dtype = _device_dtype(module)
    try:
        with torch.no_grad():
            theirs = _np(module(torch.as_tensor(x, dtype=dtype, device=device)))
    except Exception as exc:  # the peer's own failure on this width
        raise UnreadableModule(f"it fails on a probe input of width {width} ({type(exc).__name__}: {exc})") from None
    ours = x
    for layer in layers:
        ours = layer(ours)
    scale = max(1.0, float(np.max(np.abs(ours))))
    if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=0.0, atol=PROBE_RTOL * scale):
        gap = float(np.max(np.abs(theirs - ours))) if theirs.shape == ours.shape else float("nan")
        raise UnreadableModule(
            f"its output differs from lipsdp's reading as {what} on probe inputs (largest difference {gap:.3g}; "
            f"shapes {theirs.shape} and {ours.shape}): its pairing, order or scaling is not the one read, so it is "
            "refused rather than certified as a different network"
        )


def _checked_reader(name: str, params: Callable[[Any], dict], width: Callable[[Any], int]) -> Callable[[Any], dict]:
    """A registry reader: ``params(module)``, accepted once the rule reproduces the module (probe)."""

    def reader(module: Any) -> dict:
        found = params(module)
        try:
            rule = registry.entry(name).rule(**found)
        except InvalidActivationError as exc:  # e.g. non-finite slopes: listed as unsupported with the reason
            raise UnreadableModule(str(exc)) from None
        require_same_output(module, [ActivationLayer(rule)], width(module), rule.describe())
        return found

    return reader


def _any_width(module: Any) -> int:
    return PROBE_WIDTH


# ----------------------------------------------------------------------- registry readers
def _orthogonium_maxmin(module: Any) -> dict:
    _features_axis(_attribute(module, "axis"))
    return {"grouping": "split"}  # z.split(n // 2): pairs (j, j + n/2), max first half, min second


def _abs(module: Any) -> dict:
    return {"negative_slope": -1.0}


def _lprelu(module: Any) -> dict:
    k = _scale(module)
    weight = _np(_attribute(module, "weight")).reshape(-1)
    return {"weight": np.clip(weight, -k, k)}  # F.prelu(x, clamp(weight, -k, k)): no output factor


def _lprelu_width(module: Any) -> int:
    n = _attribute(module, "weight").numel()
    return PROBE_WIDTH if n == 1 else int(n)


def _householder(module: Any) -> dict:
    theta = _np(_attribute(module, "theta")).reshape(-1)
    if theta.size == 0:
        raise UnreadableModule("it has no reflection angle")
    if not np.all(theta == theta[0]):
        raise UnreadableModule(f"its {theta.size} pairs have different angles (from {theta.min():.4g} to "
                               f"{theta.max():.4g}); lipsdp's Householder rule has one reflection vector per layer")
    half = 0.5 * float(theta[0])
    # kept where sin(θ/2)x − cos(θ/2)y ≤ 0, reflected by I − 2wwᵀ, w = (sin, −cos)(θ/2), else:
    # lipsdp keeps z where vᵀz > 0 with v = −w (both give z on the hyperplane, where the reflection is z)
    return {"v": np.array([-math.sin(half), math.cos(half)]), "grouping": "split"}


def _householder_width(module: Any) -> int:
    return 2 * int(_attribute(module, "theta").numel())


# ----------------------------------------------------------------------- structural converters
def _affine(module: Any, path: str) -> list:
    """``W x + b`` with the weight the module uses now (parametrizations applied)."""
    bias = getattr(module, "bias", None)
    return [Affine.create(module.weight, None if bias is None else bias.reshape(-1), path)]


def _container(module: Any, path: str) -> list:
    """The children in order (every unsupported one reported together)."""
    layers, unsupported = [], []
    for name, child in module.named_children():
        try:
            layers.extend(convert_module(child, child_path(path, name)))
        except UnsupportedLayerError as exc:
            unsupported.extend(exc.unsupported)
    if unsupported:
        raise UnsupportedLayerError(unsupported, supported_modules())
    return layers


def _deel_group_size(module: Any) -> int | None:
    size = _attribute(module, "group_size")
    return None if size is None else int(size)


def _deel_groupsort(module: Any, path: str) -> list:
    size, k = _deel_group_size(module), _scale(module)

    def build(width: int) -> list:
        group = width if size is None or size > width else size  # deel sorts the whole layer then
        rule = registry.entry("groupsort").rule(group_size=group, grouping="consecutive", descending=False)
        layers = [ActivationLayer(rule, path)] + _scaling(k, width, path)
        require_same_output(module, layers, width, f"{k:g}·{rule.describe()} (ascending)")
        return layers

    return [WidthDependent(build, path)]


def _deel_maxmin(module: Any, path: str) -> list:
    _features_axis(_attribute(module, "_dim"))
    k = _scale(module)

    def build(width: int) -> list:
        split = np.vstack([np.eye(width), -np.eye(width)])  # cat(relu(x), relu(−x))
        layers = [Affine.create(split, None, f"{path}/[x;-x]"), ActivationLayer(registry.rule_from_spec("relu"), path)]
        layers += _scaling(k, 2 * width, path)
        require_same_output(module, layers, width, f"{k:g}·[relu(x); relu(-x)]")
        return layers

    return [WidthDependent(build, path)]


def _scale_bias(module: Any, path: str) -> list:
    scalar = _attribute(module, "scalar")
    s = float(scalar.detach()) if hasattr(scalar, "detach") else float(scalar)
    bias = getattr(module, "bias", None)
    def build(width: int) -> list:
        return [Affine.create(s * np.eye(width), bias, path)]

    return [WidthDependent(build, path)]


def _layer_centering(module: Any, path: str) -> list:
    dims = np.atleast_1d(np.asarray(_attribute(module, "dim"))).tolist()
    if not dims or any(int(d) not in (1, -1) for d in dims):
        raise Unsupported(f"it averages over dims {dims}; on a (batch, features) input any dim but the features mixes "
                          "the samples of a batch, so the output is not a function of one input: use dim=-1")
    bias = getattr(module, "bias", None)

    def build(width: int) -> list:
        return [Affine.create(np.eye(width) - np.full((width, width), 1.0 / width), bias, path)]

    return [WidthDependent(build, path)]


def _batch_lipnorm(module: Any, path: str) -> list:
    if getattr(module, "training", False):
        raise Unsupported("in training mode it uses batch statistics: call model.eval() before converting")
    if not hasattr(module, "vanilla_export"):
        raise Unsupported("a scripted BatchLipNorm cannot be read: script its vanilla_export() instead")
    # vanilla_export folds the running sums exactly as the eval forward does first (idempotent),
    # then returns the eval function as a ScaleBiasLayer
    return _scale_bias(module.vanilla_export(), path)


def _sll_dense(module: Any, path: str) -> list:
    """``x − 2 Wᵀ diag(t) σ(W x + b)`` as a residual layer, with the ``t`` its forward computes."""
    activation = convert_module(module.activation, child_path(path, "activation"))
    weight = _np(module.weight)
    t = _np(module.compute_t()).reshape(-1)
    branch = [Affine.create(weight, module.bias.reshape(-1), f"{path}/in"), *activation,
              Affine.create(-2.0 * weight.T * t[None, :], None, f"{path}/out")]
    return [Residual(tuple(branch), path)]


def _alpha(module: Any) -> float:
    return float(_attribute(module, "alpha").detach())


def _additive_residual(module: Any, path: str) -> list:
    """``α x + (1−α) fn(x)`` = ``α (x + ((1−α)/α) fn(x))`` with ``α = sigmoid(alpha)`` ∈ (0, 1)."""
    branch = convert_module(module.fn, child_path(path, "fn"))
    alpha = float(expit(_alpha(module)))  # sigmoid without overflow
    if not 0.0 < alpha < 1.0:
        raise Unsupported(f"its mixing weight sigmoid(alpha) = {alpha} rounds to 0 or 1 in float64")

    def build(width: int) -> list:
        mix = Affine.create((1.0 - alpha) / alpha * np.eye(width), None, f"{path}/(1-a)/a")
        return [Residual(tuple(branch) + (mix,), path), Affine.create(alpha * np.eye(width), None, f"{path}/a")]

    return [WidthDependent(build, path)]


def _prescaled_residual(module: Any, path: str) -> list:
    """``(x + fn(α x)) / (1 + |α|)``."""
    branch = convert_module(module.fn, child_path(path, "fn"))
    alpha = _alpha(module)

    def build(width: int) -> list:
        pre = Affine.create(alpha * np.eye(width), None, f"{path}/a")
        post = Affine.create(np.eye(width) / (1.0 + abs(alpha)), None, f"{path}/1/(1+|a|)")
        return [Residual((pre,) + tuple(branch), path), post]

    return [WidthDependent(build, path)]


# ------------------------------------------------------------------------------ registration
def _register() -> None:
    for name in ("linear.SpectralLinear", "linear.FrobeniusLinear"):
        register_torch_converter(f"{DEEL}.{name}", _affine)
    for name in ("GroupSort", "GroupSort2", "FullSort"):
        register_torch_converter(f"{DEEL}.activation.{name}", _deel_groupsort)
    register_torch_converter(f"{DEEL}.activation.MaxMin", _deel_maxmin)
    register_torch_converter(f"{DEEL}.module.Sequential", _container)
    register_torch_converter(f"{DEEL}.normalization.ScaleBiasLayer", _scale_bias)
    register_torch_converter(f"{DEEL}.normalization.LayerCentering", _layer_centering)
    for name in ("BatchLipNorm", "BatchCentering"):
        register_torch_converter(f"{DEEL}.normalization.{name}", _batch_lipnorm)
    registry.register_torch_type("prelu", f"{DEEL}.activation.LPReLU", _checked_reader("prelu", _lprelu, _lprelu_width))
    registry.register_torch_type("householder", f"{DEEL}.activation.HouseHolder",
                                 _checked_reader("householder", _householder, _householder_width))

    for name in ("OrthoLinear", "UnitNormLinear"):
        register_torch_converter(f"{ORTHOGONIUM}.linear.ortho_linear.{name}", _affine)
    register_torch_converter(f"{ORTHOGONIUM}.conv.SLL.sll_layer.SDPBasedLipschitzDense", _sll_dense)
    register_torch_converter(f"{ORTHOGONIUM}.residual.AdditiveResidual", _additive_residual)
    register_torch_converter(f"{ORTHOGONIUM}.residual.PrescaledAdditiveResidual", _prescaled_residual)
    registry.register_torch_type("maxmin", f"{ORTHOGONIUM}.custom_activations.MaxMin",
                                 _checked_reader("maxmin", _orthogonium_maxmin, _any_width))
    registry.register_torch_type("leaky_relu", f"{ORTHOGONIUM}.custom_activations.Abs",
                                 _checked_reader("leaky_relu", _abs, _any_width))


_register()
