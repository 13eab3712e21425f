"""The one activation registry: what each activation is, keyed by its torch type.

Every module that needs to know about activations asks this registry and keeps no
list of its own: the torch reader (:mod:`lipsdp.torch_io`), the model-file readers
(:mod:`lipsdp.io`, spec strings such as ``"leaky_relu:0.2"``), ``lmi``'s layers (which
activations a parameterization's proof covers), the error messages that list what
is supported, and the soundness tests (which iterate over :func:`entries`).

An :class:`ActivationEntry` holds

* ``name`` and ``parameters``: the spec string ``name[:p1[:p2…]]`` of files and the
  command line, with every constructor argument that changes the function;
* ``build(**params)``: the quadratic-constraint rule (:mod:`lipsdp.activations`,
  :mod:`lipsdp.group_activations`) of the activation with those parameters;
* ``torch_types``: the torch classes it reads, each with a reader that returns the
  parameters of a module (attributes of eager and scripted modules, constants of
  traced code); a module whose parameters cannot be read is refused, never assumed;
* ``make_module(**params)``: the torch module computing the same function;
* ``parameters_trainable``: True when the module's trainable parameters change the
  rule (PReLU's slopes), so properties read at one parameter value do not hold
  while it trains;
* ``examples``: parameter sets covering the entry's cases, which the soundness tests
  and ``bench/fuzz.py`` iterate over (a new entry inherits those tests through them).

Torch types are keyed by their fully qualified class name
(``"torch.nn.modules.activation.ReLU"``), resolved for eager, scripted and traced
modules alike (:func:`qualified_type_name`), so a different class that happens to
share a name (another library's ``MaxMin``) is never mistaken for ours.

Proof requirements (:class:`ProofNeeds`) state what a certificate needs of an
activation, e.g. :data:`SLOPE_IN_0_1` (elementwise, slopes in ``[0, 1]`` for every
parameter value) or :data:`ONE_LIPSCHITZ` (1-Lipschitz in ℓ2 for every parameter
value); :meth:`ProofNeeds.admits` answers for a torch module or a spec string.

torch is imported lazily: lipsdp imports without it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import activations as act
from . import group_activations as gact
from .errors import InvalidActivationError, UnknownNameError

#: largest jump of torch's Softplus at its linear threshold accepted as "the smooth softplus"
SOFTPLUS_MAX_JUMP = 1e-6


class UnreadableModule(Exception):
    """Raised by a reader when a module's function cannot be described (with the reason)."""


@dataclass(frozen=True)
class Parameter:
    """A constructor argument that changes the function: name, parser of its spec text, default."""

    name: str
    parse: Callable[[str], Any]
    default: Any


@dataclass(frozen=True)
class ActivationEntry:
    """One activation: its spec name and parameters, its QC rule, its torch types (see module docstring)."""

    name: str
    build: Callable[..., act.Activation]
    description: str
    parameters: tuple[Parameter, ...] = ()
    make_module: Callable[..., Any] | None = None
    parameters_trainable: bool = False
    torch_types: dict[str, Callable[[Any], dict]] = field(default_factory=dict)
    examples: tuple[dict, ...] = ({},)

    def example_rules(self) -> list[act.Activation]:
        """The rules of :attr:`examples` (for tests and fuzzing)."""
        return [self.rule(**params) for params in self.examples]

    def example_modules(self) -> list:
        """Torch modules of :attr:`examples` (for tests and fuzzing of readers and lmi)."""
        if self.make_module is None:
            return []
        return [self.make_module(**dict(rule.params)) for rule in self.example_rules()]

    def rule(self, **params) -> act.Activation:
        """The QC rule with the given parameters (defaults for the others), tagged with its spec."""
        full = {p.name: p.default for p in self.parameters}
        unknown = set(params) - set(full)
        if unknown:
            raise InvalidActivationError(f"activation {self.name!r} has no parameter(s) {sorted(unknown)}; "
                                         f"its parameters are {[p.name for p in self.parameters]}")
        full.update(params)
        rule = self.build(**full)
        object.__setattr__(rule, "spec", self.spec(full))
        return rule

    def spec(self, params: dict) -> str:
        """``name[:p1…]`` with the parameters up to the last one that differs from its default."""
        values = [params[p.name] for p in self.parameters]
        defaults = [p.default for p in self.parameters]
        while values and _same(values[-1], defaults[len(values) - 1]):
            values.pop()
        return ":".join([self.name] + [_format(v) for v in values])

    def parse(self, texts: list[str]) -> act.Activation:
        """The rule of a spec's parameter texts (positional, in the order of ``parameters``)."""
        if len(texts) > len(self.parameters):
            raise InvalidActivationError(
                f"activation {self.name!r} takes at most {len(self.parameters)} parameter(s) "
                f"({', '.join(p.name for p in self.parameters) or 'none'}), got {len(texts)}"
            )
        params = {}
        for p, text in zip(self.parameters, texts):
            try:
                params[p.name] = p.parse(text)
            except (TypeError, ValueError):
                raise InvalidActivationError(
                    f"activation {self.name!r}: parameter {p.name} must be a {getattr(p.parse, '__name__', 'value')}, "
                    f"got {text!r}"
                ) from None
        return self.rule(**params)


def _same(a: Any, b: Any) -> bool:
    a, b = np.ravel(np.asarray(a, dtype=object)), np.ravel(np.asarray(b, dtype=object))
    return a.shape == b.shape and bool(np.all(a == b))


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, np.ndarray):
        return ",".join(repr(float(x)) for x in value.ravel())
    return str(value)


def _boolean(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise ValueError(text)


_boolean.__name__ = "boolean"


def _vector(text: str) -> np.ndarray:
    return np.array([float(x) for x in str(text).split(",")])


_vector.__name__ = "comma-separated vector"


_ENTRIES: dict[str, ActivationEntry] = {}
_BY_TORCH_TYPE: dict[str, tuple[ActivationEntry, Callable[[Any], dict]]] = {}


def register(entry: ActivationEntry) -> ActivationEntry:
    """Add an activation to the registry (its spec name and every torch type it reads)."""
    if entry.name in _ENTRIES:
        raise ValueError(f"activation {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry
    for type_name, reader in entry.torch_types.items():
        _BY_TORCH_TYPE[type_name] = (entry, reader)
    return entry


def register_torch_type(name: str, type_name: str, reader: Callable[[Any], dict]) -> None:
    """Read modules of another library's type ``type_name`` (fully qualified) as activation ``name``.

    ``reader(module)`` returns the entry's parameters for that module (raise
    :class:`UnreadableModule` with the reason when it cannot); the type's own
    conventions (pairing, order) must be mapped onto the entry's parameters exactly.
    """
    e = entry(name)
    e.torch_types[type_name] = reader
    _BY_TORCH_TYPE[type_name] = (e, reader)


def entries() -> list[ActivationEntry]:
    """Every registered activation, sorted by name."""
    return [_ENTRIES[k] for k in sorted(_ENTRIES)]


def activation_names() -> list[str]:
    """Spec names accepted by :func:`rule_from_spec` (``--activation``, ``.npz`` files)."""
    return sorted(_ENTRIES)


def entry(name: str) -> ActivationEntry:
    """The entry of a spec name (:class:`~lipsdp.errors.UnknownNameError` lists the known ones)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _ENTRIES:
        raise UnknownActivationError(name, _ENTRIES)
    return _ENTRIES[key]


class UnknownActivationError(UnknownNameError):
    """An activation name that is not registered (see :func:`activation_names`)."""

    kind = "activation"


def torch_type_names() -> list[str]:
    """Fully qualified names of every torch type the registry reads."""
    return sorted(_BY_TORCH_TYPE)


def supported_torch_types() -> list[str]:
    """Short class names of the torch activation modules the registry reads (for messages)."""
    return sorted({t.rsplit(".", 1)[-1] for t in _BY_TORCH_TYPE})


# ------------------------------------------------------------------------------ specs
def rule_from_spec(spec: Any) -> act.Activation:
    """A rule from a spec string ``name[:p1[:p2…]]`` (e.g. ``"leaky_relu:0.2"``), or a rule unchanged.

    Raises
    ------
    UnknownActivationError
        Unknown name (the message lists the registered ones).
    InvalidActivationError
        Malformed or out-of-range parameters, or ``None``.
    """
    if isinstance(spec, act.Activation):
        return spec
    if spec is None:
        raise InvalidActivationError(
            f"no activation given; name one of {activation_names()} (e.g. 'relu' or 'leaky_relu:0.2')"
        )
    if not isinstance(spec, str):
        raise InvalidActivationError(
            f"an activation is a spec string such as 'relu' or 'leaky_relu:0.2', or a lipsdp rule; "
            f"got {type(spec).__name__}"
        )
    name, *texts = spec.split(":")
    return entry(name).parse(texts)


def spec_of(rule: act.Activation) -> str:
    """The spec string of a rule built by this registry (inverse of :func:`rule_from_spec`).

    Raises
    ------
    InvalidActivationError
        A rule that was not built from a registered activation (e.g. per-neuron slope bounds).
    """
    spec = getattr(rule, "spec", None)
    if not spec:
        raise InvalidActivationError(f"activation {rule.describe()} has no spec string: it cannot be saved by name")
    return spec


# ----------------------------------------------------------------------- torch types
def qualified_type_name(module: Any) -> str:
    """``package.module.Class`` of a torch module; for TorchScript, of the class it was compiled from."""
    c = getattr(module, "_c", None)
    qualified = getattr(c, "qualified_name", None) if c is not None else None
    if isinstance(qualified, str) and qualified.startswith("__torch__."):
        # scripted/traced modules: '__torch__.torch.nn.modules.activation.___torch_mangle_3.ReLU'
        return re.sub(r"\.___torch_mangle_\d+", "", qualified[len("__torch__."):])
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def entry_for_module(module: Any) -> ActivationEntry | None:
    """The entry reading ``module``'s exact type, or None when the type is not an activation we know."""
    found = _BY_TORCH_TYPE.get(qualified_type_name(module))
    return None if found is None else found[0]


def rule_from_module(module: Any) -> act.Activation:
    """The QC rule of a torch activation module, read from every argument that changes its function.

    Raises
    ------
    UnreadableModule
        Not a registered activation type, or its parameters cannot be read / are not covered
        (the message says why); :mod:`lipsdp.torch_io` lists it as an unsupported module.
    """
    found = _BY_TORCH_TYPE.get(qualified_type_name(module))
    if found is None:
        raise UnreadableModule("not an activation lipsdp knows")
    entry_, reader = found
    params = reader(module)
    try:
        return entry_.rule(**params)
    except InvalidActivationError as exc:
        raise UnreadableModule(str(exc)) from None


def module_from_spec(spec: Any):
    """A torch module computing the activation of a spec string (``None`` gives ReLU)."""
    if spec is None:
        spec = "relu"
    rule = rule_from_spec(spec)
    name, *_ = spec_of(rule).split(":")
    e = entry(name)
    if e.make_module is None:
        raise InvalidActivationError(f"activation {name!r} has no torch module")
    params = dict(getattr(rule, "params", {}))
    return e.make_module(**params)


# --------------------------------------------------------------------- what proofs need
@dataclass(frozen=True)
class ProofNeeds:
    """What a certificate needs of an activation, for every value of its trainable parameters.

    Parameters
    ----------
    description
        The property in words (used in error messages).
    test
        ``rule -> bool`` on the activation's QC rule.
    """

    description: str
    test: Callable[[act.Activation], bool]

    def admits(self, activation: Any) -> tuple[bool, str]:
        """``(ok, reason)`` for a torch module, a spec string or a rule."""
        if isinstance(activation, act.Activation) or isinstance(activation, str):
            try:
                rule = rule_from_spec(activation)
            except (InvalidActivationError, UnknownNameError) as exc:
                return False, str(exc)
            trainable = False
        else:
            e = entry_for_module(activation)
            if e is None:
                return False, (f"{type(activation).__name__} is not an activation lipsdp knows "
                               f"(known: {', '.join(supported_torch_types())})")
            try:
                rule = rule_from_module(activation)
            except UnreadableModule as exc:
                return False, f"{type(activation).__name__}: {exc}"
            trainable = e.parameters_trainable
        if trainable:
            return False, f"{rule.describe()}: its trainable parameters change the function, so no fixed property holds"
        if not self.test(rule):
            return False, f"{rule.describe()} is not {self.description}"
        return True, ""


def _slope_within(lo: float, hi: float) -> Callable[[act.Activation], bool]:
    def test(rule: act.Activation) -> bool:
        if not rule.elementwise:
            return False
        bounds = rule.slope_bounds(1) if np.ndim(getattr(rule, "alpha", 0)) == 0 else None
        return bounds is not None and bool(bounds[0][0] >= lo and bounds[1][0] <= hi)

    return test


#: elementwise with slopes in [0, 1]: the QC of LipSDP-based parameterizations (sandwich, LDLᵀ, …)
SLOPE_IN_0_1 = ProofNeeds("elementwise with slopes in [0, 1]", _slope_within(0.0, 1.0))
#: 1-Lipschitz in ℓ2: what a product of 1-Lipschitz layers needs (AOL, Cayley, spectral)
ONE_LIPSCHITZ = ProofNeeds("1-Lipschitz in the l2 norm", lambda rule: rule.lipschitz_constant(2) <= 1.0)


# ----------------------------------------------------------------------- torch readers
def read_hyperparameter(module: Any, attr: str, op: str, position: int) -> float:
    """A hyper-parameter: the attribute (eager/scripted), else the constant in traced code."""
    value = getattr(module, attr, None)
    if value is not None and not callable(value):
        return float(value)
    args = _traced_arguments(module, op)
    if args is not None and len(args) > position:
        try:
            return float(args[position])
        except ValueError:
            pass
    raise UnreadableModule(f"cannot read its {attr!r} (torch.{op}); save the model with torch.jit.script")


def _no_parameters(module: Any) -> dict:
    return {}


def _traced_arguments(module: Any, op: str) -> list[str] | None:
    """Arguments of ``torch.<op>(...)`` in a TorchScript module's code, as strings (None if absent)."""
    try:
        code = module.code
    except Exception:  # not TorchScript, or no code
        return None
    match = re.search(rf"torch\.{op}\(([^()]*)\)", code)
    return None if match is None else [a.strip() for a in match.group(1).split(",")]


def in_training_mode(module: Any, op: str, position: int) -> bool:
    """True when ``module`` computes its training-mode function.

    ``module.training`` for eager and scripted modules; a traced module keeps the flag it
    was traced with as a constant of its code (argument ``position`` of ``torch.<op>``),
    whatever ``.eval()`` says afterwards.
    """
    args = _traced_arguments(module, op)
    traced = args is not None and len(args) > position and args[position] == "True"
    return bool(getattr(module, "training", False)) or traced


def _eval_only(module: Any, op: str, position: int) -> None:
    if in_training_mode(module, op, position):
        raise UnreadableModule("in training mode its output is random: call model.eval() first "
                               "(and trace it again after eval(): tracing records the mode)")


def _torch_nn(name: str) -> str:
    return f"torch.nn.modules.activation.{name}"


def _nn(name: str):
    def make(**params):
        import torch.nn as nn

        return getattr(nn, name)(**params)

    return make


# -------------------------------------------------------------------- slope-restricted
def _slope_rule(name: str, alpha, beta, fn, derivative, params: dict, homogeneous: bool = False,
                caveat: str | None = None) -> act.SlopeRestricted:
    rule = act.SlopeRestricted(alpha, beta, name, fn, derivative, positively_homogeneous=homogeneous)
    object.__setattr__(rule, "params", params)
    object.__setattr__(rule, "caveat", caveat)
    return rule


def _relu(**_):
    return _slope_rule("relu", 0.0, 1.0, act.relu_fn, act.relu_derivative, {}, homogeneous=True)


def _leaky(negative_slope):
    a = float(negative_slope)
    if not math.isfinite(a):
        raise InvalidActivationError(f"leaky_relu: negative_slope must be finite, got {a}")
    return _slope_rule("leaky_relu", min(a, 1.0), max(a, 1.0), lambda v: np.where(v > 0, v, a * v),
                       lambda v: np.where(v > 0, 1.0, a), {"negative_slope": a}, homogeneous=True)


def _tanh(**_):
    return _slope_rule("tanh", 0.0, 1.0, np.tanh, act.tanh_derivative, {})


def _sigmoid(**_):
    return _slope_rule("sigmoid", 0.0, 0.25, act.sigmoid_fn, act.sigmoid_derivative, {})


def _elu(alpha):
    a = float(alpha)
    if not math.isfinite(a):
        raise InvalidActivationError(f"elu: alpha must be finite, got {a}")

    def f(v):
        return np.where(v > 0, v, a * np.expm1(np.minimum(v, 0)))

    def d(v):
        return np.where(v > 0, 1.0, a * np.exp(np.minimum(v, 0)))

    # derivative a·eˣ on x ≤ 0 (between 0 and a, reaching a at 0⁻) and 1 above
    return _slope_rule("elu", min(0.0, a), max(1.0, a), f, d, {"alpha": a})


def softplus_jump(beta: float, threshold: float) -> float:
    """Size of the jump of torch's Softplus at ``βx = threshold`` (it switches to ``x`` there).

    Below the threshold torch computes ``log(1 + e^{βx})/β``, above it ``x``; at the switch
    these differ by ``log(1 + e^{−t})/β``, which is also the largest difference between torch's
    function and the smooth softplus anywhere.
    """
    with np.errstate(over="ignore"):  # a subnormal beta gives an infinite jump: refused by the caller
        return float(np.logaddexp(0.0, -threshold) / beta)


def _softplus(beta, threshold):
    b, t = float(beta), float(threshold)
    if not (math.isfinite(b) and b > 0 and math.isfinite(t)):
        raise InvalidActivationError(f"softplus: beta must be positive and finite and threshold finite, got {b}, {t}")
    jump = softplus_jump(b, t)
    if jump > SOFTPLUS_MAX_JUMP:
        # log(1 + e^{−t})/β ≤ J  ⇔  t ≥ −log(e^{βJ} − 1)
        with np.errstate(over="ignore", divide="ignore"):  # an extreme beta has no useful hint: said below
            smallest = -np.log(np.expm1(SOFTPLUS_MAX_JUMP * b))
        hint = (f"use threshold >= {math.ceil(smallest):d} (jump <= {SOFTPLUS_MAX_JUMP:g})" if np.isfinite(smallest)
                else "no threshold makes its jump negligible at this beta")
        raise InvalidActivationError(
            f"softplus(beta={b:g}, threshold={t:g}) is discontinuous: torch switches to x at beta*x = {t:g} with a "
            f"jump of {jump:.3g}, so it has no finite Lipschitz constant; {hint}"
        )

    def f(v):
        return np.logaddexp(0.0, b * v) / b

    def d(v):
        return act.sigmoid_fn(b * v)

    caveat = (f"softplus(beta={b:g}, threshold={t:g}) is certified as the smooth softplus; torch's threshold "
              f"shortcut differs from it by at most {jump:.2g} (a jump of that size at beta*x = {t:g})")
    return _slope_rule("softplus", 0.0, 1.0, f, d, {"beta": b, "threshold": t}, caveat=caveat)


def _hardtanh(min_val, max_val):
    lo, hi = float(min_val), float(max_val)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidActivationError(f"hardtanh: need finite min_val < max_val, got {lo}, {hi}")
    return _slope_rule("hardtanh", 0.0, 1.0, lambda v: np.clip(v, lo, hi),
                       lambda v: ((v > lo) & (v < hi)).astype(float), {"min_val": lo, "max_val": hi})


def _hardsigmoid(**_):
    return _slope_rule("hardsigmoid", 0.0, 1.0 / 6.0, lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
                       lambda v: ((v > -3.0) & (v < 3.0)) / 6.0, {})


def _identity(**_):
    return _slope_rule("identity", 1.0, 1.0, lambda v: np.asarray(v, float), np.ones_like, {}, homogeneous=True)


def _prelu(weight):
    a = np.asarray(weight, float).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InvalidActivationError(f"prelu: slopes must be finite, got {a}")
    if a.size == 1:
        rule = _leaky(float(a[0]))
        object.__setattr__(rule, "name", "prelu")
        object.__setattr__(rule, "params", {"weight": float(a[0])})
        return rule
    # one slope per feature: per-neuron bounds (the layer width must equal num_parameters)
    return _slope_rule("prelu", np.minimum(a, 1.0), np.maximum(a, 1.0), lambda v: np.where(v > 0, v, a * v),
                       lambda v: np.where(v > 0, 1.0, a * np.ones_like(v)), {"weight": a}, homogeneous=True)


def _prelu_reader(module: Any) -> dict:
    weight = getattr(module, "weight", None)
    if weight is None:
        raise UnreadableModule("cannot read its slopes ('weight')")
    return {"weight": weight.detach().cpu().double().numpy().reshape(-1)}


def _make_prelu(weight):
    import torch
    import torch.nn as nn

    w = np.atleast_1d(np.asarray(weight, float))
    m = nn.PReLU(num_parameters=w.size)
    with torch.no_grad():
        m.weight.copy_(torch.as_tensor(w))
    return m


def _rrelu_reader(module: Any) -> dict:
    _eval_only(module, "rrelu", 3)
    lower = read_hyperparameter(module, "lower", "rrelu", 1)
    upper = read_hyperparameter(module, "upper", "rrelu", 2)
    return {"negative_slope": 0.5 * (lower + upper)}  # eval mode: the fixed slope (l + u)/2


def _softplus_reader(module: Any) -> dict:
    return {"beta": read_hyperparameter(module, "beta", "softplus", 1), "threshold": read_hyperparameter(module, "threshold", "softplus", 2)}


# ----------------------------------------------------------------------- group activations
def _lipsdp_nn(name: str) -> str:
    return f"lipsdp.nn.{name}"


def _grouping(text: str) -> str:
    if text not in ("consecutive", "split"):
        raise ValueError(text)
    return text


_grouping.__name__ = "grouping ('consecutive' or 'split')"


def _tag(rule: act.Activation, params: dict) -> act.Activation:
    object.__setattr__(rule, "params", params)
    return rule


def _maxmin(grouping):
    return _tag(gact.GroupSort(2, grouping, True), {"grouping": grouping})


def _groupsort(group_size, grouping, descending):
    if int(group_size) != group_size or group_size < 1:
        raise InvalidActivationError(f"groupsort: group size must be a positive integer, got {group_size}")
    return _tag(gact.GroupSort(int(group_size), grouping, bool(descending)),
                {"group_size": int(group_size), "grouping": grouping, "descending": bool(descending)})


def _householder(v, grouping):
    if v is None:
        raise InvalidActivationError("householder needs its reflection vector v (spec 'householder:0.6,-0.8')")
    return _tag(gact.Householder(np.asarray(v, float), grouping), {"v": np.asarray(v, float), "grouping": grouping})


def _required(module: Any, attr: str) -> Any:
    value = getattr(module, attr, None)
    if value is None:
        raise UnreadableModule(f"cannot read its {attr!r}; save the model with torch.jit.script, not trace")
    return value


def _group_reader(module: Any) -> dict:
    return {"grouping": str(_required(module, "grouping"))}


def _groupsort_reader(module: Any) -> dict:
    return {"group_size": int(_required(module, "group_size")), "grouping": str(_required(module, "grouping")),
            "descending": bool(_required(module, "descending"))}


def _householder_reader(module: Any) -> dict:
    v = _required(module, "v")
    return {"v": v.detach().cpu().double().numpy().reshape(-1), "grouping": str(_required(module, "grouping"))}


def _make_lipsdp_nn(name: str):
    def make(**params):
        from . import nn as lnn

        return getattr(lnn, name)(**params)

    return make


def _register_builtins() -> None:
    register(ActivationEntry("relu", _relu, "ReLU, slopes in [0, 1]", make_module=_nn("ReLU"),
                             torch_types={_torch_nn("ReLU"): _no_parameters}))
    register(ActivationEntry(
        "leaky_relu", _leaky, "LeakyReLU(negative_slope), slopes between negative_slope and 1",
        (Parameter("negative_slope", float, 0.01),), make_module=_nn("LeakyReLU"),
        torch_types={_torch_nn("LeakyReLU"): lambda m: {"negative_slope": read_hyperparameter(m, "negative_slope", "leaky_relu", 1)},
                     _torch_nn("RReLU"): _rrelu_reader},
        examples=({}, {"negative_slope": 0.2}, {"negative_slope": -0.5}, {"negative_slope": 2.0})))
    register(ActivationEntry("tanh", _tanh, "tanh, slopes in [0, 1]", make_module=_nn("Tanh"),
                             torch_types={_torch_nn("Tanh"): _no_parameters}))
    register(ActivationEntry("sigmoid", _sigmoid, "logistic sigmoid, slopes in [0, 1/4]", make_module=_nn("Sigmoid"),
                             torch_types={_torch_nn("Sigmoid"): _no_parameters}))
    register(ActivationEntry(
        "elu", _elu, "ELU(alpha), slopes in [min(0, alpha), max(1, alpha)]", (Parameter("alpha", float, 1.0),),
        make_module=_nn("ELU"), torch_types={_torch_nn("ELU"): lambda m: {"alpha": read_hyperparameter(m, "alpha", "elu", 1)}},
        examples=({}, {"alpha": 0.5}, {"alpha": 2.0})))
    register(ActivationEntry(
        "softplus", _softplus, "Softplus(beta, threshold), slopes in [0, 1] (refused when the threshold jump is not negligible)",
        (Parameter("beta", float, 1.0), Parameter("threshold", float, 20.0)), make_module=_nn("Softplus"),
        torch_types={_torch_nn("Softplus"): _softplus_reader},
        examples=({}, {"beta": 3.0, "threshold": 30.0}, {"beta": 0.5})))
    register(ActivationEntry(
        "hardtanh", _hardtanh, "Hardtanh(min_val, max_val) and ReLU6, slopes in [0, 1]",
        (Parameter("min_val", float, -1.0), Parameter("max_val", float, 1.0)), make_module=_nn("Hardtanh"),
        torch_types={_torch_nn("Hardtanh"): lambda m: {"min_val": read_hyperparameter(m, "min_val", "hardtanh", 1),
                                                       "max_val": read_hyperparameter(m, "max_val", "hardtanh", 2)},
                     _torch_nn("ReLU6"): lambda m: {"min_val": 0.0, "max_val": 6.0}},
        examples=({}, {"min_val": 0.0, "max_val": 6.0})))
    register(ActivationEntry("hardsigmoid", _hardsigmoid, "Hardsigmoid, slopes in [0, 1/6]", make_module=_nn("Hardsigmoid"),
                             torch_types={_torch_nn("Hardsigmoid"): _no_parameters}))
    register(ActivationEntry("identity", _identity, "the identity (slope exactly 1)", make_module=_nn("Identity"),
                             torch_types={"torch.nn.modules.linear.Identity": _no_parameters}))
    register(ActivationEntry(
        "prelu", _prelu, "PReLU with its current slopes (one, or one per feature)",
        (Parameter("weight", _vector, 0.25),), make_module=_make_prelu, parameters_trainable=True,
        torch_types={_torch_nn("PReLU"): _prelu_reader},
        examples=({}, {"weight": -0.3}, {"weight": 1.7})))
    register(ActivationEntry(
        "maxmin", _maxmin, "MaxMin on pairs, output (max, min); 1-Lipschitz", (Parameter("grouping", _grouping, "consecutive"),),
        make_module=_make_lipsdp_nn("MaxMin"), torch_types={_lipsdp_nn("MaxMin"): _group_reader},
        examples=({}, {"grouping": "split"})))
    register(ActivationEntry(
        "groupsort", _groupsort, "GroupSort(group_size), sorts each group; 1-Lipschitz",
        (Parameter("group_size", int, 2), Parameter("grouping", _grouping, "consecutive"),
         Parameter("descending", _boolean, True)),
        make_module=_make_lipsdp_nn("GroupSort"), torch_types={_lipsdp_nn("GroupSort"): _groupsort_reader},
        examples=({}, {"group_size": 3, "grouping": "split"}, {"group_size": 4, "descending": False})))
    register(ActivationEntry(
        "householder", _householder, "Householder reflection per group (v = reflection vector); 1-Lipschitz",
        (Parameter("v", _vector, None), Parameter("grouping", _grouping, "consecutive")),
        make_module=_make_lipsdp_nn("Householder"), torch_types={_lipsdp_nn("Householder"): _householder_reader},
        examples=({"v": np.array([1.0, -2.0])}, {"v": np.array([0.3, 0.1, -1.0]), "grouping": "split"})))


_register_builtins()
