"""Read torch models into a :class:`lipsdp.network.Network`.

``network_from_torch`` walks an ``nn.Sequential`` (nested Sequentials are
flattened; module paths are the dotted names torch uses, e.g. ``"0"`` or
``"3.1"``) and converts each module with a *converter*: a function
``fn(module, path) -> list of lipsdp layers`` registered by the module's type
name with :func:`register_torch_converter`.  Dispatch uses
``getattr(m, "original_name", type(m).__name__)`` so TorchScript modules
(``torch.jit.script`` / ``torch.jit.trace`` of a Sequential) convert like the
eager ones.  Every unsupported module is collected and reported in one
:class:`~lipsdp.errors.UnsupportedLayerError`.

torch is never imported at module level: lipsdp imports without it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import numpy as np

from . import activations as act
from .errors import UnsupportedLayerError
from .network import ActivationLayer, Affine, Network

Converter = Callable[[Any, str], list]

_CONVERTERS: dict[str, Converter] = {}
_CONTAINERS = {"Sequential"}


class Unsupported(Exception):
    """Raised by a converter to report its module as unsupported, with a reason.

    The walker catches it and lists ``(path, reason)`` in the final
    :class:`~lipsdp.errors.UnsupportedLayerError`.
    """


def register_torch_converter(type_name: str, fn: Converter) -> None:
    """Convert modules whose type name is ``type_name`` with ``fn(module, path)``.

    Parameters
    ----------
    type_name
        The class name of the module (``"Linear"``, ``"MaxMin"``...); for
        TorchScript modules this is their ``original_name``.
    fn
        ``fn(module, path) -> list`` of lipsdp layers (``Affine``,
        ``ActivationLayer``, ``Residual``, ``Implicit``).  Return ``[]`` to skip
        the module.  Raise :class:`Unsupported` (reason) or
        :class:`~lipsdp.errors.UnsupportedLayerError` (for nested modules) to
        have the module listed as unsupported.
    """
    _CONVERTERS[type_name] = fn


def torch_converters() -> list[str]:
    """Type names that :func:`network_from_torch` can convert."""
    return sorted(_CONVERTERS)


def module_type_name(module: Any) -> str:
    """Type name used for dispatch (``original_name`` for TorchScript modules)."""
    return getattr(module, "original_name", type(module).__name__)


def child_path(path: str, name: str) -> str:
    """Dotted path of child ``name`` of the module at ``path``."""
    return f"{path}.{name}" if path else name


# ------------------------------------------------------------------------------ walker
def convert_module(module: Any, path: str = "") -> list:
    """Lipsdp layers of ``module`` (a container or a single supported module).

    Raises
    ------
    UnsupportedLayerError
        Listing *every* unsupported module below ``module``.
    """
    layers: list = []
    unsupported: list[tuple[str, str]] = []
    _walk(module, path, layers, unsupported)
    if unsupported:
        raise UnsupportedLayerError(unsupported)
    return layers


def _walk(module: Any, path: str, layers: list, unsupported: list) -> None:
    kind = module_type_name(module)
    if kind in _CONTAINERS:
        for name, child in module.named_children():
            _walk(child, child_path(path, name), layers, unsupported)
        return
    fn = _CONVERTERS.get(kind)
    if fn is None:
        unsupported.append((path, kind))
        return
    try:
        layers.extend(fn(module, path))
    except Unsupported as exc:
        unsupported.append((path, f"{kind} ({exc})"))
    except UnsupportedLayerError as exc:
        unsupported.extend(exc.unsupported)


def network_from_torch(module: Any) -> Network:
    """Describe a torch model as a :class:`~lipsdp.network.Network`.

    Parameters
    ----------
    module
        An ``nn.Sequential`` (possibly nested, possibly TorchScript) or a single
        supported module such as ``nn.Linear``.

    Returns
    -------
    Network
        Float64 copy of the weights; eval-mode BatchNorm is folded into the
        neighbouring Linear layers; Identity, Flatten and Dropout are skipped.

    Raises
    ------
    UnsupportedLayerError
        Lists every unsupported module (path and type), including BatchNorm in
        training mode.
    InvalidWeightsError, ShapeMismatchError
        NaN/Inf weights; layers whose widths do not chain.
    """
    return Network(convert_module(module, ""))


# ------------------------------------------------------------------- attribute access
def _tensor(module: Any, name: str):
    value = getattr(module, name, None)
    return None if value is None else value.detach().cpu().double().numpy()


def _traced_constants(module: Any, op: str) -> list[str] | None:
    """Arguments of ``torch.<op>(...)`` in a traced module's code, as strings."""
    try:
        code = module.code
    except Exception:  # not a TorchScript module, or no code
        return None
    match = re.search(rf"torch\.{op}\(([^()]*)\)", code)
    return None if match is None else [a.strip() for a in match.group(1).split(",")]


def _scalar(module: Any, attr: str, op: str, position: int, default: float) -> float:
    """A module hyper-parameter: attribute, else constant in traced code, else default."""
    value = getattr(module, attr, None)
    if value is not None:
        return float(value)
    args = _traced_constants(module, op)
    if args is not None and len(args) > position:
        try:
            return float(args[position])
        except ValueError:
            pass
    warnings.warn(
        f"could not read {attr!r} of a {module_type_name(module)} module; assuming the default {default}",
        stacklevel=3,
    )
    return float(default)


# ----------------------------------------------------------------------- converters
def _linear(module: Any, path: str) -> list:
    return [Affine.create(_tensor(module, "weight"), _tensor(module, "bias"), path)]


def _skip(module: Any, path: str) -> list:
    return []


def _activation(factory: Callable[[Any], act.Activation]) -> Converter:
    def convert(module: Any, path: str) -> list:
        return [ActivationLayer(factory(module), path)]

    return convert


def _batchnorm(module: Any, path: str) -> list:
    """Eval-mode BatchNorm1d as ``Affine(diag(s), t)``, ``s = γ/√(σ²+ε)``, ``t = β − μ s``."""
    if getattr(module, "training", False):
        raise Unsupported("in training mode: call model.eval() before converting")
    mean, var = _tensor(module, "running_mean"), _tensor(module, "running_var")
    if mean is None or var is None:
        raise Unsupported("without running statistics (track_running_stats=False)")
    eps = _scalar(module, "eps", "batch_norm", 7, 1e-5)
    gamma = _tensor(module, "weight")
    beta = _tensor(module, "bias")
    gamma = np.ones_like(mean) if gamma is None else gamma
    beta = np.zeros_like(mean) if beta is None else beta
    scale = gamma / np.sqrt(var + eps)
    return [Affine.create(np.diag(scale), beta - mean * scale, path)]


def _register_builtins() -> None:
    for name in ("Linear",):
        register_torch_converter(name, _linear)
    for name in ("Identity", "Flatten", "Dropout"):
        register_torch_converter(name, _skip)
    register_torch_converter("BatchNorm1d", _batchnorm)
    register_torch_converter("ReLU", _activation(lambda m: act.relu()))
    register_torch_converter("Tanh", _activation(lambda m: act.tanh()))
    register_torch_converter("Sigmoid", _activation(lambda m: act.sigmoid()))
    register_torch_converter(
        "LeakyReLU", _activation(lambda m: act.leaky_relu(_scalar(m, "negative_slope", "leaky_relu", 1, 0.01)))
    )
    register_torch_converter("ELU", _activation(lambda m: act.elu(_scalar(m, "alpha", "elu", 1, 1.0))))
    register_torch_converter(
        "Softplus",
        _activation(
            lambda m: act.softplus(_scalar(m, "beta", "softplus", 1, 1.0), _scalar(m, "threshold", "softplus", 2, 20.0))
        ),
    )


_register_builtins()
