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

A module whose weights are computed by ``torch.nn.utils.parametrize`` (another
library's constrained layer) is matched by the class it was built from, not by the
``Parametrized…`` class torch creates; it must be in eval mode, and it is read
without side effects: if computing its weight changes its own state (a power
iteration run on every call), the state is restored and the network states that it
was read at its current state (see :func:`note`).  A converter may return a
:class:`WidthDependent` placeholder for a module whose layers depend on the width
it acts on; it is resolved once the widths are known.

torch is never imported at module level: lipsdp imports without it.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from . import activation_registry as registry
from .errors import InvalidWeightsError, UnsupportedLayerError
from .network import ActivationLayer, Affine, Implicit, Network, Residual

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


@dataclass(frozen=True, eq=False)
class WidthDependent:
    """A converter's placeholder for layers that depend on the width they act on.

    ``build(width) -> list`` of lipsdp layers, called by :func:`network_from_torch` once
    the width reaching ``name`` is known (e.g. a sort over the whole layer).
    """

    build: Callable[[int], list]
    name: str


#: notes of the conversion in progress (None outside :func:`network_from_torch`)
_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("lipsdp_torch_io_notes", default=None)


def note(text: str) -> None:
    """Record what the model's description assumed or observed (it becomes one of the network's assumptions).

    Converters call it, e.g. for a module read at its current state while its forward
    changes that state.  Outside :func:`network_from_torch` (a bare :func:`convert_module`)
    there is no network to carry it and it is dropped.
    """
    notes = _NOTES.get()
    if notes is not None and text not in notes:
        notes.append(str(text))


@contextlib.contextmanager
def _collecting_notes() -> Iterator[list]:
    notes: list = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def torch_converters() -> list[str]:
    """Qualified type names that :func:`network_from_torch` converts (activations included)."""
    return sorted(set(_CONVERTERS) | set(registry.torch_type_names()))


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


def _is_parametrized(module: Any) -> bool:
    """True for an eager module whose tensors ``torch.nn.utils.parametrize`` computes."""
    from torch.nn.utils import parametrize

    return not hasattr(module, "_c") and parametrize.is_parametrized(module)


def type_name(module: Any) -> str:
    """The qualified type the converters are keyed by (a parametrized module's original class)."""
    if _is_parametrized(module):
        original = type(module).__bases__[0]  # torch builds Parametrized<Class>(Class)
        return f"{original.__module__}.{original.__qualname__}"
    return registry.qualified_type_name(module)


def _has_hooks(module: Any) -> bool:
    """True for an eager module with forward hooks, which may change its weights or output at call time."""
    return not hasattr(module, "_c") and bool(getattr(module, "_forward_pre_hooks", None)
                                              or getattr(module, "_forward_hooks", None))


def _walk(module: Any, path: str, layers: list, unsupported: list) -> None:
    qualified = type_name(module)
    kind = module_type_name(module)
    if _has_hooks(module):  # e.g. torch.nn.utils.spectral_norm recomputes .weight in a pre-forward hook
        unsupported.append((path, f"{kind} (it has forward hooks, which may change its weight or output when "
                                  "called, e.g. torch.nn.utils.spectral_norm/weight_norm: use "
                                  "torch.nn.utils.parametrizations instead, or remove the hooks)"))
        return
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
            unsupported.append((path, _unsupported_reason(module, kind, qualified)))
            return
        layers.extend(_convert(fn, module, path))
    except (Unsupported, registry.UnreadableModule) as exc:
        unsupported.append((path, f"{kind} ({exc})"))
    except UnsupportedLayerError as exc:
        unsupported.extend(exc.unsupported)


def _unsupported_reason(module: Any, kind: str, qualified: str) -> str:
    if hasattr(module, "_c") and qualified.rsplit(".", 1)[-1].startswith("Parametrized"):
        return (f"{kind} (a TorchScript module with parametrized weights: TorchScript does not say which class it was "
                "built from; script the model after replacing such layers by nn.Linear holding their weights, "
                "e.g. deel-torchlip's vanilla_export())")
    if kind == qualified.rsplit(".", 1)[-1] and qualified.startswith("torch."):
        return kind
    return f"{kind} ({qualified})"


def _convert(fn: Converter, module: Any, path: str) -> list:
    """``fn(module, path)``; a parametrized module is read in eval mode and left exactly as it was.

    Computing a parametrized weight may update the module's state (a power iteration on
    every call): the state is then restored, so reading has no side effect, and a note
    says that the module was read at its current state, with how much its weight moves
    from one call to the next.
    """
    if not _is_parametrized(module):
        return fn(module, path)
    import torch

    if module.training:
        raise Unsupported("its weight is computed by a parametrization, which may differ or update itself in "
                          "training mode: call model.eval() before converting")
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        with torch.no_grad():
            layers = fn(module, path)
            changed = _state_changed(module, before)
            drift = _weight_drift(layers, fn(module, path)) if changed else 0.0
    finally:
        if _state_changed(module, before):
            module.load_state_dict(before)
    if changed:
        note(f"{path or '<root>'} ({type_name(module)}) updates its own state every time its weight is computed, "
             f"eval mode included, so its output may change from one call to the next (its weight moved by "
             f"{drift:.2g}, relative, in one more call): certified at its current state, the weight its next call "
             "uses; the module was left unchanged")
    return layers


def _state_changed(module: Any, before: dict) -> bool:
    after = module.state_dict()
    return any(not bool((after[k] == v).all()) for k, v in before.items())


def _weight_drift(first: list, second: list) -> float:
    """Largest relative change between the weights of two readings of the same module."""
    drift = 0.0
    for a, b in zip(first, second):
        if isinstance(a, Affine) and isinstance(b, Affine):
            scale = max(float(np.max(np.abs(a.weight))), np.finfo(float).tiny)
            drift = max(drift, float(np.max(np.abs(a.weight - b.weight))) / scale)
    return drift


def resolve_width_dependent(layers: list, width: int | None = None) -> tuple[list, int | None]:
    """``layers`` with every :class:`WidthDependent` built at the width reaching it, and the output width.

    Raises
    ------
    UnsupportedLayerError
        A width-dependent module that no earlier layer gives a width.
    """
    out: list = []
    for layer in layers:
        if isinstance(layer, WidthDependent):
            if width is None:
                reason = ("its layers depend on the width of its input, which no earlier layer fixes: "
                          "put a Linear layer before it")
                raise UnsupportedLayerError([(layer.name, reason)], supported_modules())
            try:
                built = layer.build(width)
            except (Unsupported, registry.UnreadableModule) as exc:
                raise UnsupportedLayerError([(layer.name, str(exc))], supported_modules()) from None
            built, width = resolve_width_dependent(built, width)
            out.extend(built)
            continue
        if isinstance(layer, Residual):
            branch, _ = resolve_width_dependent(list(layer.branch), width)
            layer = Residual(tuple(branch), layer.name)
        out.append(layer)
        if isinstance(layer, (Affine, Implicit)):
            width = layer.out_dim
    return out, width


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
        neighbouring Linear layers; Identity, Flatten and Dropout are skipped;
        ``assumptions`` holds the converters' notes (see :func:`note`).

    Raises
    ------
    UnsupportedLayerError
        Lists every unsupported module (path and type), including BatchNorm in
        training mode.
    InvalidWeightsError, ShapeMismatchError
        NaN/Inf weights; layers whose widths do not chain.
    """
    with _collecting_notes() as notes:
        layers = convert_module(module, "")
    layers, _ = resolve_width_dependent(layers)
    return Network(layers, assumptions=notes)


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
    if registry.in_training_mode(module, "dropout", 2):
        raise Unsupported("in training mode it drops units at random: call model.eval() before converting")
    return []


def _batchnorm(module: Any, path: str) -> list:
    """Eval-mode BatchNorm1d as ``Affine(diag(s), t)``, ``s = γ/√(σ²+ε)``, ``t = β − μ s``."""
    if registry.in_training_mode(module, "batch_norm", 5):
        raise Unsupported("in training mode it normalises by batch statistics: call model.eval() before converting "
                          "(and trace it again after eval(): tracing records the mode)")
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
