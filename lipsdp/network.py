"""``Network``: an immutable, float64 description of a network to certify.

A network is a sequence of layers:

* :class:`Affine` ``x ↦ W x + b``, ``W`` a dense matrix or a structured operator
  (:mod:`lipsdp.operators`: convolutions, average pooling, per-channel scaling, their
  compositions) acting on flat vectors (a ``(C, H, W)`` feature map flattened C-major);
* :class:`ActivationLayer` ``x ↦ φ(x)`` with an activation rule from
  :mod:`lipsdp.activations`;
* :class:`Residual` ``x ↦ x + branch(x)`` where ``branch`` is itself a
  sequence of layers (e.g. ``φ(W x)`` or ``W₂ φ(W₁ x)``);
* :class:`Implicit` equilibrium layers ``z = φ(W z + U x + b)``, output
  ``C z + D x`` (see :mod:`lipsdp.graph`);
* :class:`~lipsdp.pooling.MaxPool` max pooling (not linear; its constant is in
  :mod:`lipsdp.pooling`).

Consecutive affine layers are merged (this folds eval-mode BatchNorm into the
neighbouring Linear), and so is an activation layer whose every neuron has one
fixed slope ``β`` (identity, ``LeakyReLU(1)``): it is the linear map ``β·I``.  Their
QC holds with equality, so LipSDP's multiplier would have to run to −∞; folded,
the network is the same function without that degenerate constraint.  Biases
never change a global Lipschitz bound, but they are kept for evaluation (lower
bounds).

``Network.assumptions`` lists what a description assumed that its source did not
say (e.g. the activation of a state-dict file, named by the user) and where a
rule certifies a function that differs, by a stated amount, from the module read
(torch's Softplus threshold); every result carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from . import activations as act
from .errors import InvalidWeightsError, ShapeMismatchError
from .operators import LinearOperator, compose
from .pooling import MaxPool


def as_matrix(value: Any, what: str) -> np.ndarray:
    """A read-only float64 copy of a 2-D array, checked for NaN/Inf.

    Raises
    ------
    ShapeMismatchError
        Not 2-D (a 1-D array is refused: a row and a column vector are different maps).
    InvalidWeightsError
        Complex, non-numeric, NaN or Inf entries.
    """
    arr = _to_numpy(value, what)
    if arr.ndim == 1:
        raise ShapeMismatchError(
            f"{what}: got a 1-D array of length {arr.size}; give a 2-D (out, in) matrix, e.g. "
            f"w.reshape(1, -1) for one output or w.reshape(-1, 1) for one input"
        )
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{what}: expected a matrix, got an array of shape {arr.shape}")
    return _finite(arr, what)


def as_vector(value: Any, n: int, what: str) -> np.ndarray:
    """A read-only float64 vector of length ``n`` (zeros if ``value`` is None)."""
    if value is None:
        arr = np.zeros(n)
    else:
        arr = _to_numpy(value, what).reshape(-1)
    if arr.shape != (n,):
        raise ShapeMismatchError(f"{what}: expected length {n}, got shape {arr.shape}")
    return _finite(arr, what)


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, imported lazily elsewhere
        if getattr(value, "is_complex", lambda: False)():
            raise InvalidWeightsError(f"{what} is complex; lipsdp bounds real networks")
        value = value.detach().cpu().double().numpy()
    raw = np.asarray(value)
    if np.iscomplexobj(raw):
        raise InvalidWeightsError(f"{what} is complex; lipsdp bounds real networks (take .real only if that is the model)")
    if raw.dtype.kind not in "biuf":
        raise InvalidWeightsError(f"{what} has non-numeric entries (dtype {raw.dtype})")
    return np.array(raw, dtype=np.float64, copy=True)


def _finite(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InvalidWeightsError(f"{what} contains {bad} NaN/Inf value(s)")
    arr.setflags(write=False)
    return arr


def is_operator(weight: Any) -> bool:
    """True for a structured :class:`~lipsdp.operators.LinearOperator` weight (a conv, a pooling, a composition)."""
    return isinstance(weight, LinearOperator)


def max_abs_entry(weight: Any) -> float:
    """Largest ``|coefficient|`` of a dense matrix or a structured operator (0 for an empty one)."""
    if is_operator(weight):
        return float(weight.max_abs_entry())
    return float(np.max(np.abs(weight))) if weight.size else 0.0


def scale_weight(weight: Any, factor: float) -> Any:
    """``factor · W`` for a dense matrix or an operator (exact when ``factor`` is a power of two)."""
    return weight.scaled(factor) if is_operator(weight) else factor * weight


def compose_weights(first: Any, second: Any) -> Any:
    """The linear map ``second ∘ first``: a dense product, or a structured one (:func:`lipsdp.operators.compose`)."""
    if is_operator(first) or is_operator(second):
        return compose(first, second)
    return second @ first


@dataclass(frozen=True, eq=False)
class Affine:
    """``x ↦ W x + b`` with ``W`` of shape (out, in): a dense matrix or a structured operator.

    A structured ``W`` (:class:`~lipsdp.operators.LinearOperator`: convolution, pooling, their
    compositions) acts on flat vectors, a ``(C, H, W)`` feature map flattened C-major as
    ``torch.flatten`` does; ``b`` is then the full flat bias (a conv's channel bias broadcast over
    positions).  Methods that need a matrix call :meth:`Network.densified`.
    """

    weight: Any
    bias: np.ndarray
    name: str = ""

    @staticmethod
    def create(weight: Any, bias: Any = None, name: str = "") -> "Affine":
        w = weight if is_operator(weight) else as_matrix(weight, f"weight of {name or 'affine layer'}")
        b = as_vector(bias, w.shape[0], f"bias of {name or 'affine layer'}")
        return Affine(w, b, name)

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def structured(self) -> bool:
        """True when the weight is a structured operator rather than a dense matrix."""
        return is_operator(self.weight)

    @property
    def in_shape(self) -> tuple:
        return tuple(self.weight.in_shape) if self.structured else (self.in_dim,)

    @property
    def out_shape(self) -> tuple:
        return tuple(self.weight.out_shape) if self.structured else (self.out_dim,)

    def then(self, other: "Affine") -> "Affine":
        """The composition ``other ∘ self`` as one affine layer."""
        weight = compose_weights(self.weight, other.weight)
        return Affine.create(weight, other.apply_linear(self.bias) + other.bias, other.name or self.name)

    def apply_linear(self, x: np.ndarray) -> np.ndarray:
        """``W x`` for a vector or for the rows of ``x`` (no bias)."""
        if self.structured:
            return self.weight.matvec(x)
        return x @ self.weight.T

    def densified(self, max_bytes: int | None = None) -> "Affine":
        """The same layer with a dense weight (:meth:`LinearOperator.to_dense`; ProblemTooLargeError when too large)."""
        if not self.structured:
            return self
        dense = self.weight.to_dense() if max_bytes is None else self.weight.to_dense(max_bytes=max_bytes)
        return Affine.create(dense, self.bias, self.name)

    def describe(self) -> str:
        return self.weight.describe() if self.structured else f"Affine({self.in_dim}->{self.out_dim})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.apply_linear(x) + self.bias


@dataclass(frozen=True, eq=False)
class ActivationLayer:
    """``x ↦ φ(x)`` for an activation rule ``φ``."""

    activation: act.Activation
    name: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.activation.forward_batch(x)


@dataclass(frozen=True, eq=False)
class Residual:
    """``x ↦ x + branch(x)``; the branch must map width n back to width n."""

    branch: tuple
    name: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x
        for layer in self.branch:
            y = layer(y)
        return x + y


@dataclass(frozen=True, eq=False)
class Implicit:
    """Equilibrium layer ``z = φ(W z + U x + b)``, output ``y = C z + D x``.

    ``C`` and ``D`` default to ``z`` alone (``C = I``, ``D = 0``).
    """

    W: np.ndarray
    U: np.ndarray
    b: np.ndarray
    activation: act.Activation
    C: np.ndarray
    D: np.ndarray
    name: str = ""
    max_iter: int = 500
    tol: float = 1e-12

    @staticmethod
    def create(W, U, activation, b=None, C=None, D=None, name: str = "") -> "Implicit":
        W = as_matrix(W, f"W of {name or 'implicit layer'}")
        U = as_matrix(U, f"U of {name or 'implicit layer'}")
        n = W.shape[0]
        if W.shape != (n, n) or U.shape[0] != n:
            raise ShapeMismatchError(f"implicit layer {name!r}: W must be square and U must have {n} rows (got {W.shape}, {U.shape})")
        b = as_vector(b, n, f"b of {name or 'implicit layer'}")
        C = np.eye(n) if C is None else C
        C = as_matrix(C, f"C of {name or 'implicit layer'}")
        D = np.zeros((C.shape[0], U.shape[1])) if D is None else D
        D = as_matrix(D, f"D of {name or 'implicit layer'}")
        if C.shape[1] != n or D.shape != (C.shape[0], U.shape[1]):
            raise ShapeMismatchError(f"implicit layer {name!r}: C must be (p, {n}) and D (p, {U.shape[1]})")
        activation.check_width(n)
        return Implicit(W, U, b, activation, C, D, name)

    @property
    def in_dim(self) -> int:
        return self.U.shape[1]

    @property
    def out_dim(self) -> int:
        return self.C.shape[0]

    def equilibrium(self, x: np.ndarray) -> np.ndarray:
        """Solve ``z = φ(W z + U x + b)`` (rows of ``x``) by the iteration its well-posedness certificate proves convergent.

        See :func:`lipsdp.equilibrium.solve_equilibrium`; raises
        :class:`~lipsdp.errors.IllPosedError` for a layer without a certificate
        whose damped iteration does not converge.
        """
        from .equilibrium import solve_equilibrium

        return solve_equilibrium(self, x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.equilibrium(x) @ self.C.T + x @ self.D.T


Layer = Affine | ActivationLayer | Residual | Implicit | MaxPool


def _rules(layers: Iterable[Layer]) -> list:
    """Every activation rule of ``layers`` (inside residual branches and implicit layers too)."""
    found = []
    for layer in layers:
        if isinstance(layer, ActivationLayer):
            found.append(layer.activation)
        elif isinstance(layer, Implicit):
            found.append(layer.activation)
        elif isinstance(layer, Residual):
            found.extend(_rules(layer.branch))
    return found


def _dims(layers: Sequence[Layer], in_dim: int | None, where: str) -> tuple[int | None, int | None]:
    """Check that layer shapes chain; return (input width, output width)."""
    cur = in_dim
    first = None
    for layer in layers:
        if isinstance(layer, (Affine, Implicit, MaxPool)):
            if cur is not None and layer.in_dim != cur:
                raise ShapeMismatchError(
                    f"{where}: layer {layer.name or type(layer).__name__} expects input width {layer.in_dim}, "
                    f"but the previous layer outputs {cur}"
                )
            if first is None and cur is None:
                first = layer.in_dim
            cur = layer.out_dim
        elif isinstance(layer, ActivationLayer):
            if cur is not None:
                layer.activation.check_width(cur)
        elif isinstance(layer, Residual):
            b_in, b_out = _dims(layer.branch, cur, f"{where}/{layer.name or 'residual'}")
            width = cur if cur is not None else b_in
            if b_out is not None and width is not None and b_out != width:
                raise ShapeMismatchError(
                    f"residual block {layer.name!r}: branch maps width {width} to {b_out}; it must preserve the width"
                )
            if first is None and cur is None:
                first = width
            cur = width
        else:
            from .errors import UnsupportedLayerError

            raise UnsupportedLayerError([(where, f"{type(layer).__name__} is not a lipsdp layer (Affine, "
                                                 "ActivationLayer, Residual, Implicit, MaxPool)")])
    return (first if in_dim is None else in_dim), cur


def _flat_layers(layers: Iterable[Layer]) -> list:
    """Every layer, residual branches opened."""
    found = []
    for layer in layers:
        found.append(layer)
        if isinstance(layer, Residual):
            found.extend(_flat_layers(layer.branch))
    return found


def _densified(layers: Iterable[Layer], max_bytes: int | None) -> list:
    out = []
    for layer in layers:
        if isinstance(layer, Affine):
            layer = layer.densified(max_bytes)
        elif isinstance(layer, Residual):
            layer = Residual(tuple(_densified(layer.branch, max_bytes)), layer.name)
        out.append(layer)
    return out


def _fixed_slope(layer: Layer) -> float | None:
    """``β`` when ``layer`` is an activation layer equal to ``x ↦ β x`` (one fixed slope), else None."""
    if not isinstance(layer, ActivationLayer) or not layer.activation.elementwise:
        return None
    alpha, beta = getattr(layer.activation, "alpha", None), getattr(layer.activation, "beta", None)
    if alpha is None or np.ndim(alpha) != 0 or np.ndim(beta) != 0 or float(alpha) != float(beta):
        return None
    return float(beta)


def _canonical(layers: Iterable[Layer]) -> tuple:
    """Merge consecutive affine layers and fold fixed-slope activations (recursively inside residual branches)."""
    out: list[Layer] = []
    for layer in layers:
        if isinstance(layer, Residual):
            layer = Residual(_canonical(layer.branch), layer.name)
        slope = _fixed_slope(layer)
        if slope is not None and out and isinstance(out[-1], Affine):
            previous = out[-1]
            out[-1] = Affine.create(scale_weight(previous.weight, slope), slope * previous.bias, previous.name)
            continue
        if isinstance(layer, Affine) and out and isinstance(out[-1], Affine):
            out[-1] = out[-1].then(layer)
        else:
            out.append(layer)
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Network:
    """An immutable network description (float64 weights).

    Build one with :meth:`from_weights`, :meth:`from_torch` or
    :func:`lipsdp.io.load_network`.
    """

    layers: tuple
    input_dim: int = field(init=False)
    output_dim: int = field(init=False)
    stated: tuple = ()

    def __init__(self, layers: Iterable[Layer], assumptions: Iterable[str] = ()):
        """``layers`` in order; ``assumptions``: what the source did not say and was assumed (see module docstring)."""
        layers = _canonical(layers)
        if not layers:
            raise ShapeMismatchError("a network needs at least one layer")
        in_dim, out_dim = _dims(layers, None, "network")
        if in_dim is None:
            raise ShapeMismatchError("the network has no layer that fixes its input width (add a Linear layer)")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_dim", int(in_dim))
        object.__setattr__(self, "output_dim", int(out_dim))
        object.__setattr__(self, "stated", tuple(str(a) for a in assumptions))

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the description assumed: the source's stated assumptions, then each rule's caveat."""
        caveats = []
        for rule in _rules(self.layers):
            if rule.caveat and rule.caveat not in caveats:
                caveats.append(rule.caveat)
        return self.stated + tuple(caveats)

    # ------------------------------------------------------------------ builders
    @staticmethod
    def from_weights(weights: Sequence[Any], biases: Sequence[Any] | None = None, activation: Any = "relu", *,
                     names: Sequence[str] | None = None, assumptions: Iterable[str] = ()) -> "Network":
        """Feed-forward ``W_l φ(… φ(W_1 x + b_1) …) + b_l``.

        Parameters
        ----------
        weights
            Matrices of shape (out, in), first layer first.
        biases
            Optional vectors (default zeros).
        activation
            Spec string (``"relu"``, ``"leaky_relu:0.2"``; see
            :func:`lipsdp.activation_registry.activation_names`), an
            :class:`~lipsdp.activations.Activation`, or a list of those, one per hidden layer.
        names
            Names of the affine layers for messages (default ``layer1, layer2, …``),
            e.g. the keys of the file they were read from.
        assumptions
            What the caller assumed that its source did not say (kept in every result).
        """
        weights = list(weights)
        if not weights:
            raise ShapeMismatchError("from_weights needs at least one weight matrix")
        biases = [None] * len(weights) if biases is None else list(biases)
        if names is not None and len(names) != len(weights):
            raise ShapeMismatchError(f"{len(weights)} weight matrices but {len(names)} names")
        if len(biases) != len(weights):
            raise ShapeMismatchError(f"{len(weights)} weight matrices but {len(biases)} bias vectors")
        n_hidden = len(weights) - 1
        acts = list(activation) if isinstance(activation, (list, tuple)) else [activation] * n_hidden
        if len(acts) != n_hidden:
            raise ShapeMismatchError(f"{n_hidden} hidden layers but {len(acts)} activations")
        from .activation_registry import rule_from_spec

        layers: list[Layer] = []
        for k, (w, b) in enumerate(zip(weights, biases)):
            layers.append(Affine.create(w, b, names[k] if names else f"layer{k + 1}"))
            if k < n_hidden:
                layers.append(ActivationLayer(rule_from_spec(acts[k]), f"act{k + 1}"))
        return Network(layers, assumptions)

    @staticmethod
    def from_torch(module: Any, input_shape: Any = None) -> "Network":
        """Describe a torch model (see :func:`lipsdp.torch_io.network_from_torch`; CNNs need ``input_shape``)."""
        from .torch_io import network_from_torch

        return network_from_torch(module, input_shape)

    # ----------------------------------------------------------------- structure
    @property
    def is_feedforward(self) -> bool:
        """True for ``Affine, Act, Affine, …, Affine`` (the LipSDP chain)."""
        kinds = [isinstance(l, Affine) for l in self.layers]
        if not kinds or not kinds[0] or not kinds[-1]:
            return False
        return all(
            (isinstance(l, Affine) if i % 2 == 0 else isinstance(l, ActivationLayer)) for i, l in enumerate(self.layers)
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(C, H, W)`` when the first layer is a convolution (or pooling), else ``(n,)``."""
        first = self.layers[0]
        if isinstance(first, Residual):
            first = next((l for l in first.branch if isinstance(l, (Affine, MaxPool))), None)
        shape = getattr(first, "in_shape", None)
        return tuple(shape) if shape is not None else (self.input_dim,)

    @property
    def is_structured(self) -> bool:
        """True when some layer is a structured operator (convolution, pooling) or a max pool."""
        return any(isinstance(l, MaxPool) or (isinstance(l, Affine) and l.structured) for l in _flat_layers(self.layers))

    @property
    def has_max_pool(self) -> bool:
        return any(isinstance(l, MaxPool) for l in _flat_layers(self.layers))

    def densified(self, max_bytes: int | None = None) -> "Network":
        """The same network with every structured weight written out as a dense matrix.

        Raises
        ------
        ProblemTooLargeError
            A layer whose dense matrix would exceed ``max_bytes`` (default: see
            :meth:`lipsdp.operators.LinearOperator.to_dense`).
        """
        if not self.is_structured:
            return self
        return Network(_densified(self.layers, max_bytes), self.stated)

    def _require_feedforward(self, what: str) -> None:
        if not self.is_feedforward:
            from .errors import NotApplicableError

            raise NotApplicableError(f"{what} needs a feed-forward chain Linear, activation, …, Linear; this network is {self.summary()}")

    @property
    def weights(self) -> tuple[np.ndarray, ...]:
        """Weight matrices of a feed-forward network."""
        self._require_feedforward("weights")
        return tuple(l.weight for l in self.layers[::2])

    @property
    def biases(self) -> tuple[np.ndarray, ...]:
        self._require_feedforward("biases")
        return tuple(l.bias for l in self.layers[::2])

    @property
    def activations(self) -> tuple[act.Activation, ...]:
        self._require_feedforward("activations")
        return tuple(l.activation for l in self.layers[1::2])

    @property
    def widths(self) -> tuple[int, ...]:
        """``(n_0, n_1, …, n_l)`` of a feed-forward network."""
        ws = self.weights
        return (ws[0].shape[1],) + tuple(w.shape[0] for w in ws)

    def summary(self) -> str:
        parts = []
        for l in self.layers:
            if isinstance(l, (Affine, MaxPool)):
                parts.append(l.describe())
            elif isinstance(l, ActivationLayer):
                parts.append(l.activation.describe())
            elif isinstance(l, Residual):
                parts.append("Residual[" + ", ".join(type(b).__name__ for b in l.branch) + "]")
            else:
                parts.append(type(l).__name__)
        return " -> ".join(parts)

    def __repr__(self) -> str:
        return f"Network({self.summary()})"

    # ---------------------------------------------------------------- evaluation
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate on the rows of ``x`` (float64)."""
        y = np.atleast_2d(np.asarray(x, float))
        if y.shape[1] != self.input_dim:
            raise ShapeMismatchError(f"input has width {y.shape[1]}, the network expects {self.input_dim}")
        for layer in self.layers:
            y = layer(y)
        return y

    def scaled(self, factors: Sequence[float]) -> "Network":
        """Feed-forward network with ``W_k`` multiplied by ``factors[k]`` (biases too)."""
        ws, bs = self.weights, self.biases
        if len(factors) != len(ws):
            raise ShapeMismatchError(f"{len(ws)} layers but {len(factors)} factors")
        return Network.from_weights([c * w for c, w in zip(factors, ws)], [c * b for c, b in zip(factors, bs)], list(self.activations))
