"""Property-based soundness fuzzing (issue 17): random small nets, every method, solver and lmi model.

The property checked on every case is *soundness*: a number that lipsdp returns as
a certified upper bound is never below a lower bound measured on the same function.

Two kinds of case come from an integer seed (so any failure is reproduced by its seed):

* **network cases** (:func:`make_network_case`, :func:`check_network_case`): a random
  small network (depth 1–4, widths 1–8 compatible with group sizes, activations drawn
  from every example of :mod:`lipsdp.activation_registry` — one per net, mixed per
  layer, or per-neuron slope bounds —, per-layer weight scales ``e^U(−3, 3)``, some
  residual or implicit layers, some tiny piecewise-linear nets for exact enumeration,
  some built as torch modules and read by ``Network.from_torch``) with a method, a
  norm and a solver drawn so that every registered method and every solver usable
  here is covered;
* **lmi cases** (:func:`lmi_combinations`, :func:`check_lmi_case`): an lmi
  parameterization × a registry example activation × γ × dtype, at initialisation and
  after Adam steps that *maximise* difference quotients.

Outcomes (:class:`Outcome`): ``passed`` (a bound at or above every lower bound),
``typed_error`` (a :class:`lipsdp.errors.LipSDPError`: a refusal the library
explains; counted, allowed), ``violation`` (a certified bound below a lower bound,
or an lmi model whose measured quotient exceeds its γ) and ``untyped_error`` (any
other exception: a crash). The last two are failures.

Lower bounds (all true lower bounds of the function evaluated in float64):

* ℓ2: :func:`lipsdp.lower.gradient_lower_bound`, :func:`lipsdp.lower.finite_difference_lower_bound`,
  ``exact_pattern_bound(net).max_realizable`` on tiny piecewise-linear nets, and the
  difference quotients of :func:`difference_quotient` (far pairs, close pairs, dense
  line scans, pairs straddling the first layer's kinks);
* ℓ∞: :func:`lipsdp.linf.linf_lower_bound` and the same quotients in the ∞-norm
  (the ℓ∞ constant is the largest over output rows, as the ℓ∞ methods report it).

A bound is a violation when ``bound < lower · (1 − REL_TOL)``; ``REL_TOL = 1e-7``
absorbs the float64 rounding of the bound's certificate and of the forward passes.
Each quotient's numerator is also reduced by ``QUOTIENT_ROUNDING · u · (‖f(x)‖ + ‖f(y)‖)``
(``u`` the unit round-off), so that the rounding of large outputs divided by a
small ``‖x − y‖`` is never mistaken for a slope.
"""

from __future__ import annotations

import copy
import math
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit

import lipsdp
from lipsdp import activation_registry as registry
from lipsdp.activations import SlopeRestricted
from lipsdp.errors import LipSDPError
from lipsdp.network import ActivationLayer, Affine, Implicit, Network, Residual

REL_TOL = 1e-7
QUOTIENT_ROUNDING = 64.0
UNIT_ROUNDOFF = 2.0**-53
#: a model's measured quotient may exceed its γ by this much (float64 forward rounding)
LMI_GAMMA_TOL = 1e-6
LMI_GAMMAS = (0.05, 1.0, 20.0)
LMI_DTYPES = ("float32", "float64")
LMI_STEPS = 30
LMI_INPUTS = 3

PASSED, TYPED, VIOLATION, UNTYPED = "passed", "typed_error", "violation", "untyped_error"
STATUSES = (PASSED, TYPED, VIOLATION, UNTYPED)
FAILURES = (VIOLATION, UNTYPED)

#: methods whose value needs no solver: they are run with solver=None only (a drawn
#: solver would be ignored and only multiply the families)
SOLVER_FREE = ("naive", "eclipse-fast")
#: relative draw weight of solvers that are slow on the fuzzed sizes (others weigh 1)
SLOW_SOLVER_WEIGHT = {"scs": 0.25, "cvxpy:SCS": 0.25, "firstorder": 0.5}
#: torch's Softplus differs from the smooth softplus lipsdp certifies (its documented
#: threshold caveat), so nets evaluated through torch modules do not use it
TORCH_EXCLUDED = ("softplus",)


@dataclass(frozen=True)
class Outcome:
    """The result of one fuzz case.

    Attributes
    ----------
    kind
        ``"net"`` or ``"lmi"``.
    family
        ``(activation, method, norm, solver)``; for lmi cases ``(activation,
        parameterization, "2", "-")``.
    status
        One of :data:`STATUSES`.
    seed
        Reproduces the case (see ``reproducer``).
    bound, lower
        The certified bound and the best lower bound (NaN when not reached).
    lower_source
        Which lower bound was the best.
    detail
        The error or violation, with a reproducer.
    note
        A remark on a passed case that is not a failure (an lmi bound above its γ,
        a lower-bound routine that returned a non-finite value).
    """

    kind: str
    family: tuple
    status: str
    seed: int
    bound: float = float("nan")
    lower: float = float("nan")
    lower_source: str = ""
    detail: str = ""
    note: str = ""


# ------------------------------------------------------------------------------ activations
@lru_cache(maxsize=None)
def activation_pool() -> tuple[tuple[str, object], ...]:
    """``(entry name, rule)`` of every example of every registered activation."""
    return tuple((e.name, rule) for e in registry.entries() for rule in e.example_rules())


def group_size(rule) -> int:
    """The width a layer of ``rule`` must be a multiple of (1 for elementwise rules)."""
    return 1 if rule.elementwise else int(rule.group_size)


def per_neuron_rule(rng: np.random.Generator, m: int) -> SlopeRestricted:
    """A rule with per-neuron slope bounds: two-slope kinks at 0 (exactly enumerable) or smooth.

    The piecewise-linear kind has slope ``s₋`` below 0 and ``s₊`` above; the smooth kind is
    ``a v + (b − a) softplus(v)``, with slopes strictly inside ``[a, b]``.
    """
    lo = rng.uniform(-1.5, 1.0, size=m)
    hi = lo + rng.uniform(0.0, 2.0, size=m)
    if rng.random() < 0.5:
        neg, pos = (lo, hi) if rng.random() < 0.5 else (hi, lo)
        return SlopeRestricted(lo, hi, "per-neuron-pl", lambda v: np.where(v > 0, pos * v, neg * v),
                               lambda v: np.where(v > 0, pos, neg) * np.ones_like(v), positively_homogeneous=True)
    return SlopeRestricted(lo, hi, "per-neuron-smooth", lambda v: lo * v + (hi - lo) * np.logaddexp(0.0, v),
                           lambda v: lo + (hi - lo) * expit(v))


def _rule_makers(rng: np.random.Generator, n_hidden: int, pool: Sequence, mixed: bool = True,
                 per_neuron: bool = True) -> tuple[str, list]:
    """The family label and, per hidden layer, ``(group size, width -> rule)``.

    One pool rule for every layer (labelled by its registry entry), or when allowed a
    pool rule per layer (``"mixed"``) or :func:`per_neuron_rule` (``"per-neuron"``).
    """
    u = rng.random()
    if per_neuron and u < 0.1:
        return "per-neuron", [(1, lambda m: per_neuron_rule(rng, m))] * n_hidden
    picks = [pool[int(rng.integers(len(pool)))] for _ in range(n_hidden if mixed and u < 0.25 else 1)]
    label = picks[0][0] if len({name for name, _ in picks}) == 1 else "mixed"
    picks = picks * n_hidden if len(picks) == 1 else picks
    return label, [(group_size(rule), lambda m, rule=rule: rule) for _, rule in picks]


def _width(rng: np.random.Generator, g: int, max_width: int) -> int:
    """A width in ``[1, max_width]`` that is a multiple of ``g`` (``g`` itself when ``g > max_width``)."""
    return g * int(rng.integers(1, max(1, max_width // g) + 1))


# ------------------------------------------------------------------------------ networks
@dataclass
class NetworkCase:
    """A drawn network and what to run on it (see :func:`make_network_case`)."""

    seed: int
    net: Network
    activation: str
    shape: str
    method: str
    norm: object
    solver: str | None
    model: object = None  # the torch module the net was read from, if any
    options: dict = field(default_factory=dict)  # the arguments of make_network_case besides the seed

    @property
    def family(self) -> tuple:
        solver = self.solver or ("none" if self.method in SOLVER_FREE else "auto")
        return (self.activation, self.method, norm_label(self.norm), solver)

    def function(self) -> Callable[[np.ndarray], np.ndarray]:
        """The function whose Lipschitz constant is bounded, evaluated in float64 (the torch module if any)."""
        if self.model is None:
            return self.net
        import torch

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()

        return run

    def reproducer(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"import sys; sys.path.insert(0, 'bench'); import fuzzing; "
                f"print(fuzzing.check_network_case(fuzzing.make_network_case({self.seed}{args})))")


def norm_label(norm) -> str:
    return "2" if norm == 2 else "inf"


def _weight(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Gaussian ``rows × cols`` scaled by ``e^U(−3, 3)/√cols``; sometimes a zero or repeated row."""
    w = float(np.exp(rng.uniform(-3, 3))) * rng.standard_normal((rows, cols)) / math.sqrt(cols)
    u = rng.random()
    if u < 0.05:
        w[rng.integers(rows)] = 0.0
    elif u < 0.1 and rows > 1:
        w[1] = w[0]
    return w


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.zeros(n) if rng.random() < 0.15 else float(np.exp(rng.uniform(-2, 1))) * rng.standard_normal(n)


def _chain(rng: np.random.Generator, makers: list, n0: int, p: int, max_width: int):
    """Weights, biases and rules of a feed-forward chain with the given hidden rules."""
    rules, widths = [], [n0]
    for g, make in makers:
        m = _width(rng, g, max_width)
        rules.append(make(m))
        widths.append(m)
    widths.append(p)
    weights = [_weight(rng, widths[k + 1], widths[k]) for k in range(len(widths) - 1)]
    biases = [_bias(rng, widths[k + 1]) for k in range(len(widths) - 1)]
    return weights, biases, rules


def _residual(rng: np.random.Generator, makers: list, n0: int, p: int, max_width: int) -> Network:
    """``Affine → Residual(Affine → φ [→ Affine]) × k → Affine`` with the drawn rules."""
    g = math.lcm(*[g for g, _ in makers])
    n = _width(rng, g, max_width)
    layers = [Affine.create(_weight(rng, n, n0), _bias(rng, n))]
    for k, (gk, make) in enumerate(makers):
        if rng.random() < 0.5:
            branch = (Affine.create(_weight(rng, n, n), _bias(rng, n)), ActivationLayer(make(n)))
        else:
            h = _width(rng, gk, max_width)
            branch = (Affine.create(_weight(rng, h, n), _bias(rng, h)), ActivationLayer(make(h)),
                      Affine.create(_weight(rng, n, h), _bias(rng, n)))
        layers.append(Residual(branch, f"block{k}"))
    layers.append(Affine.create(_weight(rng, p, n), _bias(rng, p)))
    return Network(layers)


def _implicit(rng: np.random.Generator, makers: list, n0: int, p: int, max_width: int) -> Network:
    """One equilibrium layer ``z = φ(Wz + Ux + b)`` with ``‖W‖₂ · Lip(φ) < 1`` (well posed)."""
    g, make = makers[0]
    n = _width(rng, g, max_width)
    rule = make(n)
    a = rng.standard_normal((n, n))
    contraction = rng.uniform(0.3, 0.9) / max(rule.lipschitz_constant(2), 1e-12)
    w = contraction * a / max(np.linalg.norm(a, 2), 1e-300)
    layer = Implicit.create(w, _weight(rng, n, n0), rule, b=_bias(rng, n), C=_weight(rng, p, n), D=_weight(rng, p, n0))
    return Network([layer])


def _torch_chain(weights, biases, rules):
    """The chain as a float64 ``nn.Sequential`` (Linear, registry module, …, Linear)."""
    import torch
    import torch.nn as nn

    modules = []
    for k, (w, b) in enumerate(zip(weights, biases)):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        if k < len(rules):
            modules.append(registry.module_from_spec(registry.spec_of(rules[k])).double())
    return nn.Sequential(*modules).eval()


def _piecewise_linear(pool: Sequence) -> list:
    """The pool's rules with two-slope kinks at 0 (what exact enumeration handles)."""
    return [(name, rule) for name, rule in pool if rule.elementwise and getattr(rule, "positively_homogeneous", False)]


def _tiny_piecewise_linear(rng: np.random.Generator, max_neurons: int, pool: Sequence, per_neuron: bool):
    """A chain of ≤ ``max_neurons`` hidden neurons with two-slope kinks at 0 (exact enumeration applies)."""
    n_hidden = int(rng.integers(1, 3))
    per_layer = max(1, max_neurons // n_hidden)
    if per_neuron and rng.random() < 0.2:
        label, makers = "per-neuron", [(1, lambda m: _pl_per_neuron(rng, m))] * n_hidden
    else:
        name, rule = pool[int(rng.integers(len(pool)))]
        label, makers = name, [(1, lambda m, rule=rule: rule)] * n_hidden
    return label, _chain(rng, makers, int(rng.integers(1, 4)), int(rng.integers(1, 4)), per_layer)


def _pl_per_neuron(rng: np.random.Generator, m: int) -> SlopeRestricted:
    """:func:`per_neuron_rule`, redrawn until it is the piecewise-linear kind."""
    while True:
        rule = per_neuron_rule(rng, m)
        if rule.positively_homogeneous:
            return rule


def _draw_method(rng: np.random.Generator) -> tuple[str, object, str | None]:
    """A registered method, one of its norms, and a usable solver (None: the automatic choice)."""
    from lipsdp.bound_methods import method_spec

    method = str(rng.choice(lipsdp.methods()))
    norms = method_spec(method).norms
    norm = norms[int(rng.integers(len(norms)))]
    if method in SOLVER_FREE:
        return method, norm, None
    choices = [None] + usable_solvers()
    weights = np.array([2.0] + [SLOW_SOLVER_WEIGHT.get(s, 1.0) for s in choices[1:]])
    return method, norm, choices[int(rng.choice(len(choices), p=weights / weights.sum()))]


@lru_cache(maxsize=None)
def _usable_solvers() -> tuple[str, ...]:
    return tuple(lipsdp.solvers())


def usable_solvers() -> list[str]:
    """The solvers usable here (``lipsdp.solvers()``: MOSEK only with a working licence)."""
    return list(_usable_solvers())


#: ``make_network_case(solver=DRAW)``: draw the solver (any other value, None included, is used as given)
DRAW = "draw"


def make_network_case(seed: int, max_width: int = 8, max_exact_neurons: int = 8, *, entry: str | None = None,
                      solver: str | None = DRAW) -> NetworkCase:
    """The network case of ``seed`` (deterministic for a given registry and solver set).

    Parameters
    ----------
    seed
        Determines everything that is drawn.
    max_width
        Largest layer width.
    max_exact_neurons
        Largest number of hidden neurons of the tiny piecewise-linear nets.
    entry
        Only that registry entry's example activations (no mixed or per-neuron nets).
    solver
        A solver for the SDP methods (None: the automatic choice) instead of a drawn one.
    """
    case = _draw_network_case(seed, max_width, max_exact_neurons, entry, solver)
    case.options = {"max_width": max_width, "max_exact_neurons": max_exact_neurons, "entry": entry, "solver": solver}
    return case


def _draw_network_case(seed: int, max_width: int, max_exact_neurons: int, entry: str | None,
                       solver: str | None) -> NetworkCase:
    """The body of :func:`make_network_case`."""
    rng = np.random.default_rng([17, seed])
    method, norm, drawn = _draw_method(rng)
    solver = drawn if solver == DRAW or method in SOLVER_FREE else solver
    pool = activation_pool() if entry is None else tuple(item for item in activation_pool() if item[0] == entry)
    mixing = entry is None
    n0, p = int(rng.integers(1, max_width + 1)), int(rng.integers(1, max_width + 1))
    u = rng.random()
    if u < 0.15 and _piecewise_linear(pool):  # tiny nets for exact enumeration
        tiny_pool = _piecewise_linear(pool)
        label, (weights, biases, rules) = _tiny_piecewise_linear(rng, max_exact_neurons, tiny_pool, mixing)
        return NetworkCase(seed, Network.from_weights(weights, biases, rules), label, "tiny-pl", method, norm, solver)
    n_hidden = int(rng.integers(1, 5))
    torch_pool = [item for item in pool if item[0] not in TORCH_EXCLUDED and registry.entry(item[0]).make_module]
    if 0.15 <= u < 0.3 and torch_pool:
        label, makers = _rule_makers(rng, n_hidden, torch_pool, mixing, per_neuron=False)
        weights, biases, rules = _chain(rng, makers, n0, p, max_width)
        model = _torch_chain(weights, biases, rules)
        return NetworkCase(seed, Network.from_torch(model), label, "torch", method, norm, solver, model)
    label, makers = _rule_makers(rng, n_hidden, pool, mixing, mixing)
    if u < 0.45:
        return NetworkCase(seed, _residual(rng, makers[:3], n0, p, max_width), label, "residual", method, norm, solver)
    if u < 0.5:
        return NetworkCase(seed, _implicit(rng, makers, n0, p, max_width), label, "implicit", method, norm, solver)
    weights, biases, rules = _chain(rng, makers, n0, p, max_width)
    shape = "chain"
    if u < 0.6:
        # nonnegative weights: for monotone activations the bounds are nearly tight (true constant ‖W_l…W_1‖
        # where every neuron has slope 1), so certification slack of any size is visible
        weights, biases, shape = [np.abs(w) for w in weights], [np.abs(b) for b in biases], "nonnegative"
    return NetworkCase(seed, Network.from_weights(weights, biases, rules), label, shape, method, norm, solver)


# ------------------------------------------------------------------------------ lower bounds
def _quotients(f: Callable, x: np.ndarray, y: np.ndarray, ord) -> np.ndarray:
    """Rounding-discounted ``‖f(x) − f(y)‖ / ‖x − y‖`` row by row (see module docstring)."""
    fx, fy = f(x), f(y)
    num = np.linalg.norm(fx - fy, ord=ord, axis=1)
    size = np.linalg.norm(fx, ord=ord, axis=1) + np.linalg.norm(fy, ord=ord, axis=1)
    slack = QUOTIENT_ROUNDING * UNIT_ROUNDOFF * size
    den = np.linalg.norm(x - y, ord=ord, axis=1)
    ok = den > 0
    return np.where(ok, np.maximum(num - slack, 0.0) / np.where(ok, den, 1.0), 0.0)


def _directions(rng: np.random.Generator, shape: tuple, ord) -> np.ndarray:
    """Unit directions: Gaussian for ℓ2, random sign vectors for ℓ∞ (the extreme points of its ball)."""
    if ord == 2:
        d = rng.standard_normal(shape)
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)
    return rng.choice([-1.0, 1.0], size=shape)


def _radius(x: np.ndarray, ord) -> np.ndarray:
    """``max(‖x_i‖, 1)`` per row, as a column: the scale of close-pair steps."""
    return np.maximum(np.linalg.norm(x, ord=ord, axis=1, keepdims=True), 1.0)


def _first_affine(net: Network) -> Affine | None:
    layer = net.layers[0]
    return layer if isinstance(layer, Affine) else None


def _scales(net: Network) -> np.ndarray:
    """Input scales from well inside to far outside the first layer's hyperplane distances."""
    first = _first_affine(net)
    hyper = 1.0
    if first is not None:
        norms = np.linalg.norm(first.weight, axis=1)
        live = (norms > 0) & (first.bias != 0)  # rows that define a hyperplane away from the origin
        if np.any(live):
            hyper = float(np.median(np.abs(first.bias[live]) / norms[live]))
    return np.geomspace(0.01 * min(1.0, hyper), 100.0 * max(1.0, hyper), 7)


def _kink_points(net: Network, rng: np.random.Generator, n: int, sigma: np.ndarray) -> np.ndarray:
    """Points on hyperplanes where a first-layer pre-activation sits at a kink.

    Elementwise kinks are taken at the levels 0, ±1, ±3 and 6 (ReLU/LeakyReLU/ELU/PReLU,
    Hardtanh, Hardsigmoid, ReLU6); group activations switch where two pre-activations are equal.
    """
    first = _first_affine(net)
    if first is None:
        return np.zeros((0, net.input_dim))
    w, b = first.weight, first.bias
    x = rng.standard_normal((n, net.input_dim)) * sigma[rng.integers(len(sigma), size=n)][:, None]
    i = rng.integers(w.shape[0], size=n)
    normal, offset = w[i], b[i] - rng.choice([0.0, 0.0, 1.0, -1.0, 3.0, -3.0, 6.0], size=n)
    if w.shape[0] > 1:
        pairs = rng.random(n) < 0.3
        j = (i + 1 + rng.integers(w.shape[0] - 1, size=n)) % w.shape[0]
        normal = np.where(pairs[:, None], w[i] - w[j], normal)
        offset = np.where(pairs, b[i] - b[j], offset)
    sq = np.sum(normal**2, axis=1)
    t = np.where(sq > 0, (np.sum(normal * x, axis=1) + offset) / np.where(sq > 0, sq, 1.0), 0.0)
    return x - t[:, None] * normal


def difference_quotient(f: Callable, net: Network, rng: np.random.Generator, ord=2, n: int = 64) -> float:
    """Largest rounding-discounted difference quotient of ``f`` over structured pairs.

    Far pairs at every scale of :func:`_scales`, close pairs ``y = x + δ d`` with
    ``δ/max(‖x‖, 1) ∈ {1e-1, …, 1e-5}``, consecutive points of dense line scans (which
    straddle every kink the line crosses, in any layer), and pairs ``p ± δ d`` around
    points ``p`` on first-layer kink hyperplanes.
    """
    n0 = net.input_dim
    sigma = _scales(net)
    pick = lambda k: sigma[rng.integers(len(sigma), size=k)][:, None]  # noqa: E731
    xs, ys = [], []
    xs.append(rng.standard_normal((n, n0)) * pick(n))
    ys.append(rng.standard_normal((n, n0)) * pick(n))
    base = rng.standard_normal((5 * n, n0)) * pick(5 * n)
    steps = np.repeat(10.0 ** -np.arange(1, 6), n)[:, None] * _radius(base, ord)
    xs.append(base)
    ys.append(base + steps * _directions(rng, base.shape, ord))
    for _ in range(4):
        start = rng.standard_normal(n0) * pick(1)[0]
        line = start + np.linspace(-3, 3, 2 * n + 1)[:, None] * pick(1)[0] * _directions(rng, (1, n0), ord)
        xs.append(line[:-1])
        ys.append(line[1:])
    kinks = _kink_points(net, rng, n, sigma)
    if len(kinks):
        delta = 10.0 ** rng.uniform(-5, -1, size=(len(kinks), 1)) * _radius(kinks, ord)
        d = _directions(rng, kinks.shape, ord)
        xs.append(kinks - delta * d)
        ys.append(kinks + delta * d)
    return float(np.max(_quotients(f, np.vstack(xs), np.vstack(ys), ord)))


def _exact_applies(net: Network, max_neurons: int) -> bool:
    """Feed-forward with ≤ ``max_neurons`` hidden neurons of two-slope kinks at 0."""
    if not net.is_feedforward:
        return False
    return (sum(w.shape[0] for w in net.weights[:-1]) <= max_neurons
            and all(r.elementwise and getattr(r, "positively_homogeneous", False) for r in net.activations))


def lower_bounds(case: NetworkCase, max_exact_neurons: int = 8) -> dict[str, float]:
    """Every lower bound of :mod:`lipsdp.lower` that applies, and :func:`difference_quotient`, by name."""
    from lipsdp.linf import linf_lower_bound
    from lipsdp.lower import exact_pattern_bound, finite_difference_lower_bound, gradient_lower_bound

    net, seed = case.net, case.seed
    rng = np.random.default_rng([71, seed])
    if case.norm != 2:
        return {"linf_lower_bound": linf_lower_bound(net, n_points=128, seed=seed),
                "quotients": difference_quotient(case.function(), net, rng, np.inf)}
    found = {
        "gradient": gradient_lower_bound(net, n_starts=4, steps=30, n_samples=256, seed=seed).value,
        "finite_difference": finite_difference_lower_bound(net, n_pairs=256, seed=seed).value,
        "quotients": difference_quotient(case.function(), net, rng, 2),
    }
    if _exact_applies(net, max_exact_neurons):
        found["exact_pattern"] = exact_pattern_bound(net).max_realizable
    return found


# ------------------------------------------------------------------------------ checking
def _untyped(kind: str, family: tuple, seed: int, where: str, exc: BaseException, reproducer: str) -> Outcome:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return Outcome(kind, family, UNTYPED, seed,
                   detail=f"{where}: {type(exc).__name__}: {exc}\n{tb}\nreproduce: {reproducer}")


def compare(kind: str, family: tuple, seed: int, bound: float, lowers: dict[str, float], reproducer: str,
            context: str = "", note: str = "") -> Outcome:
    """``passed`` when ``bound ≥ max(lowers) · (1 − REL_TOL)``, else a ``violation`` (described with ``context``).

    A non-finite lower bound proves nothing: it is left out of the comparison and named
    in the outcome's ``note`` (a defect of the lower-bound routine, not of the bound).
    """
    bad = sorted(k for k, v in lowers.items() if not np.isfinite(v))
    finite = {k: float(v) for k, v in lowers.items() if np.isfinite(v)} or {"none": 0.0}
    if bad:
        note = "; ".join(filter(None, [note, f"non-finite lower bound(s): {', '.join(bad)}; reproduce: {reproducer}"]))
    source = max(finite, key=finite.__getitem__)
    lower = finite[source]
    ok = bool(np.isfinite(bound) and bound >= lower * (1 - REL_TOL))
    detail = "" if ok else (f"certified {bound!r} < lower bound {lower!r} ({source}; all: {lowers}) {context}\n"
                            f"reproduce: {reproducer}")
    return Outcome(kind, family, PASSED if ok else VIOLATION, seed, bound, lower, source, detail, note)


def check_network_case(case: NetworkCase, max_exact_neurons: int = 8) -> Outcome:
    """Run the case's method and compare its bound with every lower bound (see module docstring)."""
    family, repro = case.family, case.reproducer()
    try:
        bound = lipsdp.estimate(case.net, method=case.method, norm=case.norm, solver=case.solver)
    except LipSDPError as exc:
        return Outcome("net", family, TYPED, case.seed, detail=f"{type(exc).__name__}: {str(exc)[:200]}")
    except Exception as exc:  # every other exception from a public call is a failure
        return _untyped("net", family, case.seed, "estimate", exc, repro)
    try:
        lowers = lower_bounds(case, max_exact_neurons)
    except LipSDPError as exc:
        return Outcome("net", family, TYPED, case.seed, bound.value,
                       detail=f"lower bound: {type(exc).__name__}: {str(exc)[:200]}")
    except Exception as exc:
        return _untyped("net", family, case.seed, "lower bounds", exc, repro)
    return compare("net", family, case.seed, float(bound.value), lowers, repro,
                   f"[{case.shape}, {case.net.summary()}]")


# ------------------------------------------------------------------------------ lmi
@lru_cache(maxsize=None)
def lmi_activations() -> tuple[tuple[str, int], ...]:
    """``(spec, group size)`` of every registry example that has a torch module."""
    out = []
    for e in registry.entries():
        if e.make_module is None:
            continue
        for rule in e.example_rules():
            out.append((registry.spec_of(rule), group_size(rule)))
    return tuple(out)


def lmi_combinations() -> list[tuple[str, str, float, str]]:
    """Every ``(parameterization, activation spec, γ, dtype)`` of the acceptance criterion."""
    import lmi

    return [(p, spec, g, dt) for p in lmi.parameterizations() for spec, _ in lmi_activations()
            for g in LMI_GAMMAS for dt in LMI_DTYPES]


@lru_cache(maxsize=None)
def _lmi_order() -> tuple[tuple[str, str, float, str], ...]:
    """:func:`lmi_combinations` in a fixed shuffled order, so that any run of seeds samples all of them evenly."""
    combos = lmi_combinations()
    return tuple(combos[i] for i in np.random.default_rng(17).permutation(len(combos)))


def _float64_quotients(model, x, y) -> float:
    """Largest rounding-discounted quotient of a torch model over pairs, evaluated in float64."""
    import torch

    model64 = copy.deepcopy(model).double().eval()

    def f(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model64(torch.from_numpy(np.ascontiguousarray(v))).numpy()

    return float(np.max(_quotients(f, x, y, 2)))


def _lmi_pairs(rng: np.random.Generator, n0: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Far and close pairs at several scales (float64)."""
    x = rng.standard_normal((n, n0)) * np.geomspace(0.1, 10, n)[:, None]
    d = _directions(rng, x.shape, 2) * 10.0 ** rng.uniform(-4, 0, size=(n, 1)) * _radius(x, 2)
    far = rng.standard_normal((n, n0)) * np.geomspace(0.1, 10, n)[:, None]
    return np.vstack([x, x]), np.vstack([x + d, far])


def _maximise_quotients(model, x: np.ndarray, y: np.ndarray, dtype, steps: int, seed: int):
    """``steps`` Adam steps on the parameters *and* the pairs that increase the quotients; the final pairs."""
    import torch

    torch.manual_seed(seed)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    yt = torch.tensor(y, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam(list(model.parameters()) + [xt, yt], lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        gap = torch.linalg.vector_norm(xt - yt, dim=1).clamp_min(1e-12)
        q = torch.linalg.vector_norm(model(xt) - model(yt), dim=1) / gap
        (-(q.max() + q.mean())).backward()
        opt.step()
    model.eval()
    return xt.detach().double().numpy(), yt.detach().double().numpy()


def lmi_model(parameterization: str, spec: str, gamma: float, dtype: str, seed: int = 0):
    """The lmi model ``LMI_INPUTS → w → w → 2`` of a combination, ``w`` a multiple of the group size.

    Raises what ``lmi.lipschitz_mlp`` raises.
    """
    import lmi
    import torch

    g = dict(lmi_activations())[spec]
    width = g * math.ceil(4 / g)
    torch.manual_seed(seed)
    return lmi.lipschitz_mlp([LMI_INPUTS, width, width, 2], gamma, parameterization=parameterization,
                             activation=registry.module_from_spec(spec), dtype=getattr(torch, dtype))


def lmi_accepts(parameterization: str, spec: str) -> bool:
    """Whether the parameterization builds a model with the activation (False on a typed refusal).

    Any other exception propagates: a refusal must be a :class:`~lipsdp.errors.LipSDPError`.
    """
    try:
        lmi_model(parameterization, spec, 1.0, "float64")
    except LipSDPError:
        return False
    return True


def check_lmi_case(parameterization: str, spec: str, gamma: float, dtype: str, seed: int = 0,
                   steps: int = LMI_STEPS) -> list[Outcome]:
    """The lmi property at initialisation and after ``steps`` quotient-maximising Adam steps.

    For an accepted activation, at each stage: the model's quotients (float64 copy)
    are at most ``γ (1 + LMI_GAMMA_TOL)``, and ``lipsdp.estimate(lmi.to_plain(model))``
    is at least the quotients of the exported plain network. A refusal at construction
    (a :class:`~lipsdp.errors.LipSDPError`, e.g. ``ActivationNotCoveredError``) is one
    ``typed_error`` outcome.

    Returns
    -------
    list of Outcome
        One per stage (``init``, ``trained``), or one for a refusal or crash.
    """
    import torch

    family = (spec, parameterization, "2", "-")
    repro = (f"import sys; sys.path.insert(0, 'bench'); import fuzzing; "
             f"print(fuzzing.check_lmi_case({parameterization!r}, {spec!r}, {gamma!r}, {dtype!r}, {seed}))")
    try:
        model = lmi_model(parameterization, spec, gamma, dtype, seed)
    except LipSDPError as exc:
        return [Outcome("lmi", family, TYPED, seed, detail=f"{type(exc).__name__}: {str(exc)[:200]}")]
    except Exception as exc:
        return [_untyped("lmi", family, seed, "lipschitz_mlp", exc, repro)]
    x, y = _lmi_pairs(np.random.default_rng([23, seed]), LMI_INPUTS)
    outcomes = []
    for stage in ("init", "trained"):
        try:
            if stage == "trained":
                x, y = _maximise_quotients(model, x, y, getattr(torch, dtype), steps, seed)
            outcomes.append(_lmi_stage(model, x, y, family, seed, f"{stage}, {repro}"))
        except LipSDPError as exc:
            outcomes.append(Outcome("lmi", family, TYPED, seed,
                                    detail=f"{stage}: {type(exc).__name__}: {str(exc)[:200]}"))
        except Exception as exc:
            outcomes.append(_untyped("lmi", family, seed, stage, exc, repro))
    return outcomes


def _lmi_stage(model, x: np.ndarray, y: np.ndarray, family: tuple, seed: int, repro: str) -> Outcome:
    """Check one stage: quotients ≤ γ(1 + tol), and the certified bound of the plain export ≥ its quotients.

    The model's quotients are measured on a float64 copy (its weights recomputed in float64
    from its parameters: the function the proof is about); the exported network keeps the
    model's dtype, and its certified bound or quotients above γ are noted, not failures.
    """
    import lmi

    gamma = float(copy.deepcopy(model).double().lipschitz_bound())
    model_q = _float64_quotients(model, x, y)
    plain = lmi.to_plain(model)
    plain_q = _float64_quotients(plain, x, y)
    bound = float(lipsdp.estimate(plain).value)
    if model_q > gamma * (1 + LMI_GAMMA_TOL):
        return Outcome("lmi", family, VIOLATION, seed, gamma, model_q, "model quotient",
                       f"quotient {model_q!r} of the model exceeds its gamma {gamma!r}; reproduce: {repro}")
    limit = gamma * (1 + LMI_GAMMA_TOL)
    notes = [f"{what} {value!r} above gamma {gamma!r}" for what, value in
             (("certified bound", bound), ("quotient of the exported network", plain_q)) if value > limit]
    return compare("lmi", family, seed, bound, {"plain quotient": plain_q}, repro, note="; ".join(notes))


# ------------------------------------------------------------------------------ dispatch
def lmi_combination_of_seed(seed: int, lmi_every: int) -> tuple[str, str, float, str] | None:
    """The lmi combination of ``seed`` (every ``lmi_every``-th seed, cycling), or None for a network seed."""
    if not lmi_every or seed % lmi_every != lmi_every - 1:
        return None
    combos = _lmi_order()
    return combos[(seed // lmi_every) % len(combos)]


def family_of_seed(seed: int, lmi_every: int = 5) -> tuple[str, tuple]:
    """``(kind, family)`` of the case of ``seed`` without running it (for reporting time-outs)."""
    combo = lmi_combination_of_seed(seed, lmi_every)
    if combo is not None:
        return "lmi", (combo[1], combo[0], "2", "-")
    try:
        return "net", make_network_case(seed).family
    except Exception:  # the generator's own failure is reported when the case runs
        return "net", ("generator", "-", "-", "-")


def run_seed(seed: int, lmi_every: int = 5) -> list[Outcome]:
    """The case(s) of ``seed``: every ``lmi_every``-th seed is an lmi combination (cycling), the rest networks."""
    combo = lmi_combination_of_seed(seed, lmi_every)
    if combo is not None:
        return check_lmi_case(*combo, seed=seed)
    try:
        case = make_network_case(seed)
    except LipSDPError as exc:  # the generator only builds valid nets: a refusal here is the library's
        return [Outcome("net", ("generator", "-", "-", "-"), TYPED, seed, detail=f"{type(exc).__name__}: {exc}")]
    except Exception as exc:
        return [_untyped("net", ("generator", "-", "-", "-"), seed, "make_network_case", exc,
                         f"fuzzing.make_network_case({seed})")]
    return [check_network_case(case)]
