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
from .errors import InputShapeRequiredError, InvalidWeightsError, ShapeMismatchError, UnsupportedLayerError
from .network import ActivationLayer, Affine, Implicit, Network, Residual
from .pooling import MaxPool

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


@dataclass(frozen=True, eq=False)
class ShapeDependent:
    """A converter's placeholder for layers that depend on the *shape* of the feature map they act on.

    ``build(shape) -> list`` of lipsdp layers, where ``shape`` is ``(C, H, W)``, ``(C, L)`` or
    ``(n,)``: convolutions, pooling, BatchNorm over channels.  The shape comes from the
    ``input_shape`` given to :func:`network_from_torch` and the layers before.
    """

    build: Callable[[tuple], list]
    name: str


@dataclass(frozen=True, eq=False)
class Flattened:
    """Marks ``nn.Flatten``: the feature map becomes one flat vector (the same numbers, C-major)."""

    name: str


@dataclass(frozen=True, eq=False)
class Unflattened:
    """Marks ``nn.Unflatten(1, shape)``: the flat vector is read as a feature map of ``shape`` (the same numbers)."""

    shape: tuple
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


def _needs_shape(path: str) -> InputShapeRequiredError:
    return InputShapeRequiredError(
        f"the layer at {path!r} is a convolution or pooling layer: its matrix, and so the bound, depends on the "
        "size of the image it sees, which the model does not store. Pass input_shape=(C, H, W) (or (C, L) for "
        "Conv1d), e.g. lipsdp.estimate(model, input_shape=(1, 28, 28)) or `--input-shape 1,28,28` on the command line"
    )


def _check_width(layer, shape: tuple | None) -> None:
    """The flat size reaching ``layer`` must be its input width; a Linear must see a flat vector."""
    if shape is None:
        return
    if isinstance(layer, Affine) and not layer.structured and len(shape) > 1:
        raise UnsupportedLayerError([(layer.name, f"Linear applied to a feature map of shape {tuple(shape)}: torch "
                                                  "applies it to the last axis only; put nn.Flatten() before it")],
                                    supported_modules())
    if int(np.prod(shape)) != layer.in_dim:
        raise ShapeMismatchError(
            f"layer {layer.name!r} expects an input of size {layer.in_dim}, but the input shape "
            f"{tuple(shape)} has {int(np.prod(shape))} numbers"
        )


def _check_grouping(layer, shape: tuple | None) -> None:
    """A group activation (MaxMin, GroupSort) groups consecutive flat entries: on a feature map that is not its
    channels, so the rule would certify another function; refused."""
    if shape is not None and len(shape) > 1 and not layer.activation.elementwise:
        raise UnsupportedLayerError([(layer.name, f"{layer.activation.describe()} on a feature map of shape "
                                                  f"{tuple(shape)}: which entries it groups (channels or positions) "
                                                  "is not modelled; flatten first or use an elementwise activation")],
                                    supported_modules())


def resolve_placeholders(layers: list, shape: tuple | None = None) -> tuple[list, tuple | None]:
    """``layers`` with every placeholder built at the shape reaching it, and the output shape.

    :class:`WidthDependent` modules get the flat width, :class:`ShapeDependent` ones the feature map's
    shape, :class:`Flattened` makes it flat.  ``shape`` is None until a layer fixes it (a dense input
    without a stated shape).

    Raises
    ------
    UnsupportedLayerError
        A width-dependent module that no earlier layer gives a width; a Linear on an unflattened map.
    InputShapeRequiredError
        A convolution or pooling layer and no ``input_shape``.
    ShapeMismatchError
        A stated input shape that does not fit the first layer.
    """
    out: list = []
    for layer in layers:
        if isinstance(layer, Flattened):
            shape = None if shape is None else (int(np.prod(shape)),)
            continue
        if isinstance(layer, Unflattened):
            if shape is not None and int(np.prod(shape)) != int(np.prod(layer.shape)):
                raise ShapeMismatchError(f"layer {layer.name!r} unflattens {int(np.prod(layer.shape))} numbers into "
                                         f"{layer.shape}, but its input of shape {tuple(shape)} has "
                                         f"{int(np.prod(shape))}")
            shape = tuple(layer.shape)
            continue
        if isinstance(layer, (WidthDependent, ShapeDependent)):
            if shape is None:
                if isinstance(layer, ShapeDependent):
                    raise _needs_shape(layer.name)
                reason = ("its layers depend on the width of its input, which no earlier layer fixes: "
                          "put a Linear layer before it")
                raise UnsupportedLayerError([(layer.name, reason)], supported_modules())
            argument = tuple(shape) if isinstance(layer, ShapeDependent) else int(np.prod(shape))
            try:
                built = layer.build(argument)
            except (Unsupported, registry.UnreadableModule) as exc:
                raise UnsupportedLayerError([(layer.name, str(exc))], supported_modules()) from None
            built, shape = resolve_placeholders(built, shape)
            out.extend(built)
            continue
        if isinstance(layer, Residual):
            branch, _ = resolve_placeholders(list(layer.branch), shape)
            layer = Residual(tuple(branch), layer.name)
        if isinstance(layer, ActivationLayer):
            _check_grouping(layer, shape)
        if isinstance(layer, (Affine, Implicit, MaxPool)):
            _check_width(layer, shape)
            shape = tuple(layer.out_shape) if isinstance(layer, (Affine, MaxPool)) else (layer.out_dim,)
        out.append(layer)
    return out, shape


def network_from_torch(module: Any, input_shape: Any = None) -> Network:
    """Describe a torch model as a :class:`~lipsdp.network.Network`.

    Parameters
    ----------
    module
        An ``nn.Sequential`` (possibly nested, possibly TorchScript) or a single
        supported module such as ``nn.Linear``.
    input_shape
        Shape of one input without the batch axis, e.g. ``(1, 28, 28)``: required
        when the model has convolutions or pooling (their matrices depend on it);
        optional for dense models (checked against the first layer).

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
    InputShapeRequiredError
        A convolution or pooling layer and no ``input_shape``.
    """
    shape = parse_input_shape(input_shape)
    with _collecting_notes() as notes:
        layers = convert_module(module, "")
    layers, _ = resolve_placeholders(layers, shape)
    return Network(layers, assumptions=notes)


def parse_input_shape(input_shape: Any) -> tuple | None:
    """``input_shape`` as a tuple of positive ints (None stays None)."""
    if input_shape is None:
        return None
    try:
        shape = tuple(int(v) for v in (input_shape if isinstance(input_shape, (tuple, list)) else [input_shape]))
        valid = all(float(v) == int(v) for v in (input_shape if isinstance(input_shape, (tuple, list)) else [input_shape]))
    except (TypeError, ValueError):
        shape, valid = (), False
    if not valid or not shape or min(shape) < 1 or len(shape) > 3:
        raise ShapeMismatchError(f"input_shape must be 1 to 3 positive integers such as (1, 28, 28), "
                                 f"without the batch axis; got {input_shape!r}")
    return shape


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
    """Eval-mode BatchNorm as ``x ↦ s ⊙ x + t`` per channel, ``s = γ/√(σ²+ε)``, ``t = β − μ s``.

    On a flat input (BatchNorm1d after Linear) a dense ``diag(s)``; on a feature map ``(C, …)``
    a per-channel :class:`~lipsdp.operators.DiagonalOperator`, which folds into the neighbouring
    convolution when the network is built (:meth:`lipsdp.operators.LinearOperator.compose`).
    """
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
    shift = beta - mean * scale

    def build(shape: tuple) -> list:
        if len(shape) == 1:
            return [Affine.create(np.diag(scale), shift, path)]
        if shape[0] != scale.size:
            raise Unsupported(f"it normalises {scale.size} channels but its input has {shape[0]}")
        from .operators import DiagonalOperator

        positions = int(np.prod(shape[1:]))
        return [Affine.create(DiagonalOperator(scale, shape), np.repeat(shift, positions), path)]

    return [ShapeDependent(build, path)]


def _attributes(module: Any, names: tuple) -> dict:
    """Hyper-parameters read from the module (eager or scripted); a traced module does not keep them."""
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise Unsupported(f"cannot read its {', '.join(missing)} (a traced module keeps no hyper-parameters): "
                          "save the model with torch.jit.script")
    return {n: getattr(module, n) for n in names}


def _conv(module: Any, path: str) -> list:
    """Conv1d/Conv2d as a structured :class:`~lipsdp.operators.ConvOperator` plus its bias broadcast over positions."""
    from .operators import ConvOperator

    _attributes(module, ("weight", "stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"))
    operator = ConvOperator.reader(module)
    bias = _tensor(module, "bias")

    def build(shape: tuple) -> list:
        op = operator(shape)
        positions = int(np.prod(op.out_shape[1:]))
        return [Affine.create(op, None if bias is None else np.repeat(bias, positions), path)]

    return [ShapeDependent(build, path)]


def _avg_pool(module: Any, path: str) -> list:
    from .operators import avg_pool_operator

    a = _attributes(module, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"))
    divisor = getattr(module, "divisor_override", None)

    def build(shape: tuple) -> list:
        op = avg_pool_operator(shape, a["kernel_size"], a["stride"], a["padding"], a["count_include_pad"],
                               a["ceil_mode"], divisor)
        return [Affine.create(op, None, path)]

    return [ShapeDependent(build, path)]


def _adaptive_avg_pool(module: Any, path: str) -> list:
    from .operators import global_avg_pool_operator

    size = _attributes(module, ("output_size",))["output_size"]
    sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    if any(v != 1 for v in sizes):
        raise Unsupported(f"output_size={size!r}: only global average pooling (output size 1) is supported")

    def build(shape: tuple) -> list:
        return [Affine.create(global_avg_pool_operator(shape), None, path)]

    return [ShapeDependent(build, path)]


def _max_pool(module: Any, path: str) -> list:
    a = _attributes(module, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
    if getattr(module, "return_indices", False):
        raise Unsupported("return_indices=True returns a tuple, not a tensor")

    def build(shape: tuple) -> list:
        if len(shape) < 2:
            raise Unsupported(f"it needs a feature map (C, L) or (C, H, W), got a flat input of shape {shape}")
        return [MaxPool.create(shape, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"],
                               name=path)]

    return [ShapeDependent(build, path)]


def _flatten(module: Any, path: str) -> list:
    a = _attributes(module, ("start_dim", "end_dim"))
    if (a["start_dim"], a["end_dim"]) != (1, -1):
        raise Unsupported(f"start_dim={a['start_dim']}, end_dim={a['end_dim']}: only the default Flatten "
                          "(start_dim=1, end_dim=-1) keeps one flat vector per sample")
    return [Flattened(path)]


def _unflatten(module: Any, path: str) -> list:
    a = _attributes(module, ("dim", "unflattened_size"))
    if a["dim"] != 1:
        raise Unsupported(f"dim={a['dim']}: only nn.Unflatten(1, shape), which reads each sample's flat vector as a "
                          "feature map, is supported")
    return [Unflattened(tuple(int(v) for v in a["unflattened_size"]), path)]


def _register_builtins() -> None:
    register_torch_converter("torch.nn.modules.linear.Linear", _linear)
    register_torch_converter("torch.nn.modules.linear.Identity", _skip)
    register_torch_converter("torch.nn.modules.flatten.Flatten", _flatten)
    register_torch_converter("torch.nn.modules.flatten.Unflatten", _unflatten)
    for name in ("Conv1d", "Conv2d"):
        register_torch_converter(f"torch.nn.modules.conv.{name}", _conv)
    for name in ("AvgPool1d", "AvgPool2d"):
        register_torch_converter(f"torch.nn.modules.pooling.{name}", _avg_pool)
    for name in ("AdaptiveAvgPool1d", "AdaptiveAvgPool2d"):
        register_torch_converter(f"torch.nn.modules.pooling.{name}", _adaptive_avg_pool)
    for name in ("MaxPool1d", "MaxPool2d"):
        register_torch_converter(f"torch.nn.modules.pooling.{name}", _max_pool)
    for name in ("Dropout", "Dropout1d", "AlphaDropout"):
        register_torch_converter(f"torch.nn.modules.dropout.{name}", _dropout)
    for name in ("BatchNorm1d", "BatchNorm2d"):
        register_torch_converter(f"torch.nn.modules.batchnorm.{name}", _batchnorm)


_register_builtins()
