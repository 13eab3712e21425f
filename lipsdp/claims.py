"""Check a claimed Lipschitz constant: "is my model really γ-Lipschitz?".

:func:`check_claim` sets lipsdp's certified upper bound and a gradient lower bound of
the model side by side with the claimed γ and gives one of three verdicts:

* ``"holds"``: the certified bound is at most γ, so the claim is proved;
* ``"refuted"``: the lower bound, a Jacobian norm reached at an input, exceeds γ, so
  the claim is false;
* ``"not proved"``: γ lies between the two; lipsdp proves only the certified bound.

It also says where an excess comes from: the largest singular value of every linear
layer (float64 SVD) and the Lipschitz constant of every activation, with the share
each layer contributes to the product's excess over γ.  These factors explain the
bound; they are not the certificate (the certified bound is).

:func:`add_claim_columns` adds a claim's columns to a :func:`lipsdp.compare` table
(``lipsdp check-claim`` on the command line runs :func:`check_claim`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidOptionError
from .bound_methods import LipschitzBound
from .network import ActivationLayer, Affine, Network, Residual
from .pooling import MaxPool

VERDICTS = ("holds", "not proved", "refuted")
#: relative excess under which the text calls it "of the order of float32 rounding"
FLOAT32_SCALE = 1e-5
#: a light lower-bound search by default (it can only refute a claim; more starts search harder)
DEFAULT_LOWER_OPTIONS = {"n_starts": 4, "steps": 50}


@dataclass(frozen=True)
class LayerFactor:
    """One layer's factor in the product of layer constants.

    Attributes
    ----------
    name, kind
        The layer's name (the torch path) and what it is (``"linear 64->256"``, ``"maxmin[split]"``).
    factor
        Largest singular value (linear layers, float64 SVD), Lipschitz constant (activations),
        or ``1 + `` the product of its branch (residual layers); NaN for implicit layers.
    share
        Fraction of the product's excess over 1 that this layer contributes,
        ``max(log factor, 0) / Σ max(log factor_j, 0)`` (0 when no layer exceeds 1).
    """

    name: str
    kind: str
    factor: float
    share: float = 0.0


@dataclass(frozen=True)
class ClaimCheck:
    """The result of :func:`check_claim` (``str()`` gives the report).

    Attributes
    ----------
    claimed
        The claimed Lipschitz constant γ.
    certified
        lipsdp's certified upper bound (``bound.value``).
    lower
        A lower bound (the largest Jacobian norm found), or NaN when not computed.
    verdict
        ``"holds"``, ``"not proved"`` or ``"refuted"`` (see the module docstring).
    layers
        The :class:`LayerFactor` of each top-level layer.
    bound
        The :class:`~lipsdp.bound_methods.LipschitzBound` behind ``certified``.
    assumptions
        What the model's description assumed (e.g. a module read at its current state).
    """

    claimed: float
    certified: float
    lower: float
    verdict: str
    layers: tuple[LayerFactor, ...]
    bound: LipschitzBound = field(repr=False)
    assumptions: tuple[str, ...] = ()

    @property
    def margin(self) -> float:
        """``claimed − certified``: room left under the claim (negative: the certified bound exceeds it)."""
        return self.claimed - self.certified

    @property
    def relative_excess(self) -> float:
        """``certified / claimed − 1`` (positive when the certified bound exceeds the claim)."""
        return self.certified / self.claimed - 1.0

    @property
    def product(self) -> float:
        """Product of the layer factors (what a layer-by-layer argument gives)."""
        return float(np.prod([layer.factor for layer in self.layers]))

    def as_dict(self) -> dict:
        """JSON-ready fields (NaN as None)."""
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        return {
            "claimed": self.claimed, "certified": self.certified, "lower": clean(self.lower),
            "verdict": self.verdict, "margin": self.margin, "relative_excess": self.relative_excess,
            "method": self.bound.method, "solver": self.bound.solver, "product_of_layers": clean(self.product),
            "layers": [{"name": l.name, "kind": l.kind, "factor": clean(l.factor), "share": l.share}
                       for l in self.layers],
            "assumptions": list(self.assumptions),
        }

    def __str__(self) -> str:
        return "\n".join([self._headline(), *self._layer_lines(), *self._excess_lines(),
                          *(f"assumed: {text}" for text in self.assumptions)])

    def _headline(self) -> str:
        lower = "not computed" if not math.isfinite(self.lower) else f"{self.lower:.9g}"
        head = (f"claimed L <= {self.claimed:.9g}; certified L <= {self.certified:.9g} ({self.bound.method}, "
                f"solver {self.bound.solver}); largest gradient norm found: {lower}")
        if self.verdict == "holds":
            return (f"{head}\nthe claim holds: proved with {self.margin:.3g} to spare "
                    f"({-self.relative_excess:.3g} relative)")
        if self.verdict == "refuted":
            return (f"{head}\nthe claim is false: the model's Jacobian norm reaches {self.lower:.9g} > "
                    f"{self.claimed:.9g} at an input")
        return (f"{head}\nthe claim is not proved: the certified bound exceeds it by {-self.margin:.3g} "
                f"({self.relative_excess:.3g} relative), and no input was found where it fails")

    def _layer_lines(self) -> list[str]:
        lines = ["layer factors (largest singular value of each linear layer, Lipschitz constant of each activation; "
                 "they explain the bound, the certificate is the bound):"]
        explain = self.verdict != "holds"
        for layer in self.layers:
            share = f"  {100 * layer.share:.0f}% of the product above 1" if explain and layer.share > 0 else ""
            deviation = f" (1 {'+' if layer.factor >= 1 else '-'} {abs(layer.factor - 1):.2g})" \
                if math.isfinite(layer.factor) and 0 < abs(layer.factor - 1) < 1e-3 else ""
            lines.append(f"  {layer.name or '-':>12}  {layer.kind:<22} {layer.factor:.9g}{deviation}{share}")
        return lines

    def _excess_lines(self) -> list[str]:
        if self.verdict == "holds":
            return []
        product = self.product
        lines = [f"product of the layer factors: {product:.9g} "
                 f"({product / self.claimed - 1:+.3g} relative to the claim)"]
        worst = max((l.factor for l in self.layers if l.kind.startswith("linear")), default=float("nan"))
        if 0 < self.relative_excess < FLOAT32_SCALE and math.isfinite(worst) and 0 < worst - 1 < FLOAT32_SCALE:
            lines.append(f"every linear layer's largest singular value is within {worst - 1:.2g} of 1, the order of "
                         "float32 rounding of orthogonal weights: the excess comes from the stored weights, "
                         "not from the architecture")
        return lines


# ------------------------------------------------------------------------------ factors
def _kind(layer: Any) -> str:
    if isinstance(layer, Affine):
        return f"linear {layer.in_dim}->{layer.out_dim}" + (f" ({layer.describe()})" if layer.structured else "")
    if isinstance(layer, ActivationLayer):
        return layer.activation.describe()
    if isinstance(layer, Residual):
        return "residual"
    return type(layer).__name__.lower()


def _factor(layer: Any) -> float:
    """Largest singular value, activation or max-pool constant, or 1 + branch product (NaN for implicit layers).

    A structured operator's factor is its certified norm bound (exact for circular convolutions).
    """
    if isinstance(layer, Affine) and layer.structured:
        mantissa, exponent = layer.weight.norm_bound()
        return float(np.ldexp(mantissa, exponent))
    if isinstance(layer, Affine):
        return float(np.linalg.norm(layer.weight, 2)) if layer.weight.size else 0.0
    if isinstance(layer, MaxPool):
        return layer.lipschitz_constant(2)
    if isinstance(layer, ActivationLayer):
        return float(layer.activation.lipschitz_constant(2))
    if isinstance(layer, Residual):
        return 1.0 + float(np.prod([_factor(b) for b in layer.branch]))
    return float("nan")  # Implicit: no closed-form layer constant


def layer_factors(net: Network) -> tuple[LayerFactor, ...]:
    """The :class:`LayerFactor` of every top-level layer of ``net``, with its share of the excess over 1."""
    factors = [_factor(layer) for layer in net.layers]
    logs = [max(math.log(f), 0.0) if math.isfinite(f) and f > 0 else 0.0 for f in factors]
    total = sum(logs)
    return tuple(LayerFactor(layer.name, _kind(layer), f, (g / total) if total > 0 else 0.0)
                 for layer, f, g in zip(net.layers, factors, logs))


# ------------------------------------------------------------------------------ check
def check_gamma(gamma: Any) -> float:
    """A claimed Lipschitz constant as a positive finite float (InvalidOptionError otherwise)."""
    if isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, numbers.Real):
        raise InvalidOptionError(f"gamma must be a positive number (the claimed Lipschitz constant), got {gamma!r}")
    value = float(gamma)
    if not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"gamma must be a positive finite number (the claimed Lipschitz constant), "
                                 f"got {value}")
    return value


#: relative margin a lower bound must clear to refute a claim: it is a float64 Jacobian norm, whose
#: rounding can put a claim that is exactly right (orthogonal weights, γ = 1) a few ulps below it
REFUTE_MARGIN = 1e-9


def refutes(lower: float, claimed: float) -> bool:
    """True when the lower bound exceeds the claim by more than its rounding (:data:`REFUTE_MARGIN`)."""
    return math.isfinite(lower) and lower > claimed * (1.0 + REFUTE_MARGIN)


def verdict(claimed: float, certified: float, lower: float) -> str:
    """``"holds"`` (certified ≤ claimed), ``"refuted"`` (lower > claimed beyond rounding) or ``"not proved"``."""
    if certified <= claimed:
        return "holds"
    if refutes(lower, claimed):
        return "refuted"
    return "not proved"


def check_claim(model: Any, gamma: float, method: str = "lipsdp-neuron", *, lower: bool = True,
                lower_options: dict | None = None, **estimate_options) -> ClaimCheck:
    """Check the claim "``model`` is ``gamma``-Lipschitz in the ℓ2 norm".

    Parameters
    ----------
    model
        Anything :func:`lipsdp.estimate` takes: a torch model (deel-torchlip and orthogonium
        models included), a :class:`~lipsdp.network.Network`, or a model file.
    gamma
        The claimed constant (e.g. 1 for a "1-Lipschitz" network).
    method
        The method giving the certified bound (default ``"lipsdp-neuron"``).
    lower
        Also search for a lower bound (:func:`lipsdp.lower.gradient_lower_bound`), which can
        refute the claim; skipped when the claim is proved.
    lower_options
        Keyword options of the lower bound (``n_starts``, ``steps``, ``seed``), over
        :data:`DEFAULT_LOWER_OPTIONS`.
    **estimate_options
        Passed to :func:`lipsdp.estimate` (``solver``, ``max_memory_gb``, method options).

    Returns
    -------
    ClaimCheck

    Raises
    ------
    InvalidOptionError
        ``gamma`` is not a positive finite number, or an unknown option.
    LipSDPError
        Whatever :func:`lipsdp.estimate` raises for this model.
    """
    from .api import as_network, estimate
    from .lower import gradient_lower_bound

    claimed = check_gamma(gamma)
    if lower_options is not None and not isinstance(lower_options, dict):
        raise InvalidOptionError(f"lower_options must be a dict of keyword options, got {lower_options!r}")
    net = as_network(model, estimate_options.pop("input_shape", None))
    if estimate_options.get("norm", 2) not in (2, "2", "l2"):
        raise InvalidOptionError("check_claim checks an ℓ2 claim (its lower bound and layer factors are ℓ2); "
                                 "for ℓ∞ use lipsdp.compare(model, norm='inf', claimed=gamma)")
    bound = estimate(net, method=method, **estimate_options)
    certified = float(bound.value)
    found = float("nan")
    if lower and certified > claimed:
        found = float(gradient_lower_bound(net, **{**DEFAULT_LOWER_OPTIONS, **(lower_options or {})}).value)
    return ClaimCheck(claimed, certified, found, verdict(claimed, certified, found), layer_factors(net), bound,
                      tuple(bound.assumptions or net.assumptions or ()))


# ------------------------------------------------------------------------------ compare and CLI
def add_claim_columns(table, gamma: float):
    """``table`` (from :func:`lipsdp.compare`) with columns ``claimed`` and ``claim``.

    ``claim`` per row: an upper bound ``"holds"`` (value ≤ γ) or ``"not proved"``; a lower bound
    or exact constant ``"refuted"`` (value > γ) or ``"consistent"``; ``""`` for a failed row.
    """
    from .api import LOWER_STATUSES

    claimed = check_gamma(gamma)
    out = table.copy()

    def claim(row) -> str:
        value = row["value"]
        if not np.isfinite(value):
            return ""
        if row["status"] in LOWER_STATUSES:
            return "refuted" if refutes(value, claimed) else "consistent"
        return "holds" if value <= claimed else "not proved"

    out["claimed"] = claimed
    out["claim"] = out.apply(claim, axis=1) if len(out) else []
    return out
