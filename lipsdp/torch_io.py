"""Read torch models into a :class:`lipsdp.network.Network`.

``network_from_torch`` walks an ``nn.Sequential`` (nested Sequentials are
flattened; module paths are the dotted names torch uses, e.g. ``"0"`` or
``"3.1"``) and converts each module by its *exact type*, keyed by the fully
qualified class name (:func:`lipsdp.activation_registry.qualified_type_name`,
which also resolves TorchScript modules to the class they were compiled from):

* activations go to the one activation registry (:mod:`lipsdp.activation_registry`),
  which reads every constructor argument that changes the function;
* structural modules (Linear, Flatten, BatchNorm1d, lipsdp.nn.Residual, …) to a
  converter ``fn(module, path) -> list of lipsdp layers`` registered with
  :func:`register_torch_converter`.

A subclass or a same-named class of another library is not matched: it is
reported.  Every unsupported module is collected and reported in one
:class:`~lipsdp.errors.UnsupportedLayerError`.

torch is never imported at module level: lipsdp imports without it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import activation_registry as registry
from .errors import InvalidWeightsError, UnsupportedLayerError
from .network import ActivationLayer, Affine, Network

Converter = Callable[[Any, str], list]

_CONVERTERS: dict[str, Converter] = {}
_CONTAINERS = {"torch.nn.modules.container.Sequential"}


class Unsupported(Exception):
    """Raised by a converter to report its module as unsupported, with a reason.

    The walker catches it and lists ``(path, reason)`` in the final
    :class:`~lipsdp.errors.UnsupportedLayerError`.
    """


def register_torch_converter(module_type: type | str, fn: Converter) -> None:
    """Convert modules of exactly ``module_type`` with ``fn(module, path)``.

    Activations are not registered here but in :mod:`lipsdp.activation_registry`.

    Parameters
    ----------
    module_type
        The module class, or its fully qualified name (``"torch.nn.modules.linear.Linear"``).
        Subclasses are not matched: register them on their own.
    fn
        ``fn(module, path) -> list`` of lipsdp layers (``Affine``,
        ``ActivationLayer``, ``Residual``, ``Implicit``).  Return ``[]`` to skip
        the module.  Raise :class:`Unsupported` (reason) or
        :class:`~lipsdp.errors.UnsupportedLayerError` (for nested modules) to
        have the module listed as unsupported.
    """
    key = module_type if isinstance(module_type, str) else f"{module_type.__module__}.{module_type.__qualname__}"
    _CONVERTERS[key] = fn


def torch_converters() -> list[str]:
    """Qualified type names that :func:`network_from_torch` converts (activations included)."""
    return sorted(set(_CONVERTERS) | set(registry._BY_TORCH_TYPE))


def supported_modules() -> str:
    """Short names of every convertible module type, for error messages."""
    return ", ".join(sorted({name.rsplit(".", 1)[-1] for name in torch_converters()}))


def module_type_name(module: Any) -> str:
    """Short class name of a module, for messages (``original_name`` for TorchScript modules)."""
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
        raise UnsupportedLayerError(unsupported, supported_modules())
    return layers


def _walk(module: Any, path: str, layers: list, unsupported: list) -> None:
    qualified = registry.qualified_type_name(module)
    kind = module_type_name(module)
    if qualified in _CONTAINERS:
        for name, child in module.named_children():
            _walk(child, child_path(path, name), layers, unsupported)
        return
    try:
        fn = _CONVERTERS.get(qualified)  # structural first: nn.Identity is skipped, not an identity activation
        if fn is None and registry.entry_for_module(module) is not None:
            layers.append(ActivationLayer(registry.rule_from_module(module), path))
            return
        if fn is None:
            unsupported.append((path, kind if kind == qualified.rsplit(".", 1)[-1] and qualified.startswith("torch.")
                                else f"{kind} ({qualified})"))
            return
        layers.extend(fn(module, path))
    except (Unsupported, registry.UnreadableModule) as exc:
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
    """A float64 copy of a module's tensor (None when absent); complex tensors are refused, not cast."""
    value = getattr(module, name, None)
    if value is None:
        return None
    if value.is_complex():
        raise InvalidWeightsError(f"{name} of a {module_type_name(module)} is complex; lipsdp bounds real networks")
    return value.detach().cpu().double().numpy()


# ----------------------------------------------------------------------- converters
def _linear(module: Any, path: str) -> list:
    return [Affine.create(_tensor(module, "weight"), _tensor(module, "bias"), path)]


def _skip(module: Any, path: str) -> list:
    return []


def _dropout(module: Any, path: str) -> list:
    if getattr(module, "training", False):
        raise Unsupported("in training mode it drops units at random: call model.eval() before converting")
    return []


def _batchnorm(module: Any, path: str) -> list:
    """Eval-mode BatchNorm1d as ``Affine(diag(s), t)``, ``s = γ/√(σ²+ε)``, ``t = β − μ s``."""
    if getattr(module, "training", False):
        raise Unsupported("in training mode: call model.eval() before converting")
    mean, var = _tensor(module, "running_mean"), _tensor(module, "running_var")
    if mean is None or var is None:
        raise Unsupported("without running statistics (track_running_stats=False)")
    eps = registry.read_hyperparameter(module, "eps", "batch_norm", 7)
    gamma = _tensor(module, "weight")
    beta = _tensor(module, "bias")
    gamma = np.ones_like(mean) if gamma is None else gamma
    beta = np.zeros_like(mean) if beta is None else beta
    scale = gamma / np.sqrt(var + eps)
    return [Affine.create(np.diag(scale), beta - mean * scale, path)]


def _register_builtins() -> None:
    register_torch_converter("torch.nn.modules.linear.Linear", _linear)
    for name in ("linear.Identity", "flatten.Flatten"):
        register_torch_converter(f"torch.nn.modules.{name}", _skip)
    for name in ("Dropout", "Dropout1d", "AlphaDropout"):
        register_torch_converter(f"torch.nn.modules.dropout.{name}", _dropout)
    register_torch_converter("torch.nn.modules.batchnorm.BatchNorm1d", _batchnorm)


_register_builtins()
