"""Lower bounds on the ℓ2 Lipschitz constant of a network.

Every number returned here is a *true* lower bound: either the spectral norm
``‖J(x)‖₂`` of the Jacobian at an actual point ``x`` (the Lipschitz constant is
the supremum of these over the points where ``f`` is differentiable), or a
ratio ``‖f(x) − f(y)‖ / ‖x − y‖`` at an actual pair.

* :func:`gradient_lower_bound` — multi-scale random sampling, then ascent on a
  smoothed surrogate of ``‖J(x)‖`` (feed-forward elementwise nets) or hill
  climbing along the top singular direction (any net);
* :func:`finite_difference_lower_bound` — ratios at random close pairs;
* :func:`exact_pattern_bound` — enumeration of the activation patterns of tiny
  piecewise-linear nets: the true constant and the maximum over all slope
  choices (a lower bound for LipSDP-Neuron).

Convolutional networks (structured :class:`~lipsdp.operators.LinearOperator`
weights, :class:`~lipsdp.pooling.MaxPool` layers) are handled two ways: small
ones through their dense matrices (:meth:`~lipsdp.network.Network.densified`),
large ones matrix-free (:class:`_Linearization`: Jacobian-vector products
forward, vector-Jacobian products backward, so ``J(x)`` is never formed
unless one of its sides is narrow).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

import numpy as np
from scipy.optimize import linprog

from . import activations as act
from .errors import InvalidOptionError, NotApplicableError, ProblemTooLargeError
from .network import ActivationLayer, Affine, Implicit, Network, Residual
from .pooling import MaxPool

_CHUNK = 64  # points per batched Jacobian evaluation

# Structured networks: the dense algorithm runs on ``net.densified()`` only when its dense weights and one chunk of
# dense Jacobians each fit in ``_DENSE_MAX_BYTES`` and one dense Jacobian costs at most ``_DENSE_MAX_MACS``
# multiply-adds (that algorithm evaluates thousands of Jacobians); otherwise the matrix-free path runs.
_DENSE_MAX_BYTES = 200 * 2**20
_DENSE_MAX_MACS = 1_000_000
#: matrix-free: the whole Jacobian (through its narrow side) when ``min(n_in, n_out)`` is at most this,
#: else power iteration
_NARROW_MAX = 64
#: matrix-free: memory for the tangents and recorded derivatives of one chunk of points
_FREE_CHUNK_BYTES = 128 * 2**20
#: power iteration on ``JᵀJ``: iterations and relative tolerance while searching, and at the reported point
_POWER_SEARCH = (20, 1e-6)
_POWER_FINAL = (100, 1e-12)
#: power iteration per step of the matrix-free smooth ascent, warm-started from the previous step
_POWER_ASCENT = (2, 1e-6)
#: rows of a structured layer whose norms :func:`_sampling_sigmas` computes (evenly spaced over the flat output)
_SIGMA_ROWS = 64


@dataclass(frozen=True)
class LowerBound:
    """A lower bound ``value = ‖J(x)‖₂`` (or a difference quotient) at ``x``.

    Attributes
    ----------
    value
        The bound.
    x
        The point where it is attained (for finite differences: the first point
        of the best pair).
    n_evaluations
        Number of Jacobian (or function-pair) evaluations spent.
    method
        ``"gradient"`` or ``"finite-difference"``.
    direction
        The unit input direction ``v`` with ``value = ‖J(x) v‖₂`` when the
        matrix-free path found the bound (a Rayleigh quotient of ``J(x)ᵀJ(x)``:
        ``≤ ‖J(x)‖₂``); None when ``value`` is the SVD norm ``‖J(x)‖₂`` itself.
    """

    value: float
    x: np.ndarray
    n_evaluations: int
    method: str = "gradient"
    direction: np.ndarray | None = None

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class PatternBound:
    """Result of :func:`exact_pattern_bound`.

    Attributes
    ----------
    max_all_patterns
        ``max ‖W_l D_{l−1} … D_1 W_1‖₂`` over every diagonal ``D`` with entries in
        ``{α_i, β_i}``: an upper bound on the true constant and a lower bound on
        LipSDP-Neuron.
    max_realizable
        The same maximum over the patterns that occur for some input: the true
        Lipschitz constant of the piecewise-linear network.
    n_patterns, n_realizable
        ``2^N`` and the number of realizable patterns.
    x
        An input inside the region of the best realizable pattern, where
        ``‖J(x)‖₂ = max_realizable``.
    """

    max_all_patterns: float
    max_realizable: float
    n_patterns: int
    n_realizable: int
    x: np.ndarray | None = None


# ----------------------------------------------------------------------------- Jacobians
def spectral_norms(jac: np.ndarray) -> np.ndarray:
    """``‖J_s‖₂`` for a stack ``(s, m, n)`` of matrices (via the smaller Gram matrix)."""
    if jac.shape[1] <= jac.shape[2]:
        gram = jac @ np.swapaxes(jac, 1, 2)
    else:
        gram = np.swapaxes(jac, 1, 2) @ jac
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))


def top_singular_pair(jac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top left and right singular vectors ``(v, u)`` of each matrix of a stack ``(s, m, n)``."""
    if jac.shape[1] <= jac.shape[2]:
        v = np.linalg.eigh(jac @ np.swapaxes(jac, 1, 2))[1][:, :, -1]
        u = np.einsum("smn,sm->sn", jac, v)
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
    else:
        u = np.linalg.eigh(np.swapaxes(jac, 1, 2) @ jac)[1][:, :, -1]
        v = np.einsum("smn,sn->sm", jac, u)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    return v, u


def _start(jac: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """Materialise the identity Jacobian (``None``) for the points ``y``."""
    if jac is not None:
        return jac
    return np.broadcast_to(np.eye(y.shape[1]), (y.shape[0], y.shape[1], y.shape[1]))


def _activation_jacobian(rule: act.Activation, v: np.ndarray) -> np.ndarray:
    """Stack ``(s, m, m)`` of activation Jacobians, or ``(s, m)`` diagonals for elementwise rules."""
    if rule.elementwise:
        return rule.elementwise_derivative(v)
    return np.stack([rule.jacobian(row) for row in v])


def _apply(rule_jac: np.ndarray, jac: np.ndarray) -> np.ndarray:
    return rule_jac[:, :, None] * jac if rule_jac.ndim == 2 else rule_jac @ jac


def _implicit_jacobian(layer: Implicit, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output and Jacobian ``C (I − Dφ W)⁻¹ Dφ U + D`` of an equilibrium layer."""
    z = layer.equilibrium(y)
    pre = z @ layer.W.T + y @ layer.U.T + layer.b
    dphi = _activation_jacobian(layer.activation, pre)
    dphi = np.stack([np.diag(d) for d in dphi]) if dphi.ndim == 2 else dphi
    eye = np.eye(layer.W.shape[0])
    jz = np.linalg.solve(eye - dphi @ layer.W, dphi @ layer.U)
    return z @ layer.C.T + y @ layer.D.T, layer.C @ jz + layer.D


def _operator_columns(layer: Affine, jac: np.ndarray | None, n_points: int) -> np.ndarray:
    """``W J`` for a structured weight: ``matvec`` on the stacked columns of ``J`` (``(s, width, n_in)``).

    ``jac`` None (the identity): ``W``'s dense matrix, broadcast over the points.
    """
    if jac is None:
        dense = layer.weight.to_dense()
        return np.broadcast_to(dense, (n_points,) + dense.shape)
    s, width, n_in = jac.shape
    columns = np.swapaxes(jac, 1, 2).reshape(s * n_in, width)
    return np.swapaxes(layer.weight.matvec(columns).reshape(s, n_in, -1), 1, 2)


def _select_rows(jac: np.ndarray | None, y: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Jacobian of a max pool after ``jac``: output ``o`` copies row ``chosen[s, o]`` of ``J_s``."""
    return np.take_along_axis(_start(jac, y), chosen[:, :, None], axis=1)


def _propagate(layers: Sequence, y: np.ndarray, jac: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward values and Jacobians (``None`` = identity) through ``layers``."""
    for layer in layers:
        if isinstance(layer, Affine) and layer.structured:
            jac = _operator_columns(layer, jac, y.shape[0])
            y = layer(y)
        elif isinstance(layer, Affine):
            jac = np.broadcast_to(layer.weight, (y.shape[0],) + layer.weight.shape) if jac is None else layer.weight @ jac
            y = layer(y)
        elif isinstance(layer, MaxPool):
            chosen = layer.selected_inputs(y)
            jac = _select_rows(jac, y, chosen)
            y = np.take_along_axis(y, chosen, axis=1)
        elif isinstance(layer, ActivationLayer):
            jac = _apply(_activation_jacobian(layer.activation, y), _start(jac, y))
            y = layer(y)
        elif isinstance(layer, Residual):
            jac = _start(jac, y)
            y_branch, j_branch = _propagate(layer.branch, y, jac)
            y, jac = y + y_branch, jac + j_branch
        elif isinstance(layer, Implicit):
            y, j_layer = _implicit_jacobian(layer, y)
            jac = j_layer @ _start(jac, y) if jac is not None else j_layer
        else:
            raise NotApplicableError(f"lower bounds: unknown layer type {type(layer).__name__}")
    return y, jac


def jacobians(net: Network, x: np.ndarray) -> np.ndarray:
    """Jacobians ``J(x_s)`` at the rows of ``x``: shape ``(s, n_out, n_in)``.

    Feed-forward nets of elementwise activations multiply ``W_l D … D W_1``
    from the narrower end; structured (convolutional) nets apply their
    operators to the identity from the narrower end (:class:`_Linearization`);
    other nets use forward-mode propagation.
    """
    x = np.atleast_2d(np.asarray(x, float))
    if net.is_structured:  # in chunks of points: the tangents through wide feature maps dominate the memory
        chunk = _points_per_chunk(net, min(net.input_dim, net.output_dim))
        return np.concatenate([_Linearization(net.layers, x[i : i + chunk]).jacobians()
                               for i in range(0, len(x), chunk)])
    rules = _elementwise_rules(net)
    if rules is not None:
        weights, slopes, y = net.weights, [], x
        for w, b, rule in zip(weights, net.biases, rules):
            z = y @ w.T + b
            slopes.append(rule.elementwise_derivative(z))
            y = rule.forward(z)
        return chain_product(weights, slopes) if slopes else np.array(np.broadcast_to(weights[0], (len(x),) + weights[0].shape))
    _, jac = _propagate(net.layers, x, None)
    return np.array(_start(jac, x))


def jacobian_norms(net: Network, x: np.ndarray) -> np.ndarray:
    """``‖J(x_s)‖₂`` at the rows of ``x`` (computed in chunks)."""
    x = np.atleast_2d(np.asarray(x, float))
    return np.concatenate([spectral_norms(jacobians(net, x[i : i + _CHUNK])) for i in range(0, len(x), _CHUNK)])


def _exact_norm(net: Network, x: np.ndarray) -> float:
    """``‖J(x)‖₂`` at one point, by SVD (the reported value)."""
    return float(np.linalg.norm(jacobians(net, x[None])[0], 2))


# ------------------------------------------------------------------- slope utilities
def _two_slopes(rule: act.Activation, m: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(slope for v < 0, slope for v > 0)`` if ``rule`` is piecewise linear with a kink at 0.

    That is exactly the elementwise, positively homogeneous rules (``φ(cv) = cφ(v)`` for
    ``c > 0``: ReLU, LeakyReLU, PReLU, the identity), whose slopes are ``φ(−1)·(−1)`` and ``φ(1)``.
    """
    if not rule.elementwise or not getattr(rule, "positively_homogeneous", False) or rule.fn is None:
        return None
    return -rule.forward(-np.ones((1, m)))[0], rule.forward(np.ones((1, m)))[0]


def _elementwise_rules(net: Network) -> list[act.SlopeRestricted] | None:
    """The hidden activations if ``net`` is a feed-forward chain of evaluable elementwise rules with dense weights."""
    return None if net.is_structured else _chain_rules(net)


def _chain_rules(net: Network) -> list[act.SlopeRestricted] | None:
    """The hidden activations if ``net`` is a feed-forward chain of evaluable elementwise rules (any weights)."""
    if not net.is_feedforward:
        return None
    rules = list(net.activations)
    ok = all(r.elementwise and r.fn is not None and r.derivative is not None for r in rules)
    return rules if ok else None


def chain_product(weights: Sequence[np.ndarray], slopes: Sequence[np.ndarray]) -> np.ndarray:
    """Stack of ``W_l D_{l−1} … D_1 W_1`` for slope vectors ``slopes[k]`` of shape ``(s, n_k)``.

    Multiplies from the narrower end (output or input) to save work.
    """
    s = slopes[0].shape[0] if slopes else 1
    if weights[-1].shape[0] <= weights[0].shape[1]:
        jac = np.broadcast_to(weights[-1], (s,) + weights[-1].shape)
        for w, d in zip(weights[-2::-1], slopes[::-1]):
            jac = (jac * d[:, None, :]) @ w
    else:
        jac = np.broadcast_to(weights[0], (s,) + weights[0].shape)
        for w, d in zip(weights[1:], slopes):
            jac = w @ (d[:, :, None] * jac)
    return np.array(jac)


# -------------------------------------------------------------- gradient lower bound
def _sampling_sigmas(net: Network) -> np.ndarray:
    """Standard deviations of the sampled inputs: from well inside to far outside the bias scale."""
    n0 = net.input_dim
    dists = []
    for layer in net.layers:
        if isinstance(layer, Affine) and np.any(layer.bias):
            norms, bias = _row_norms(layer)
            rows = norms > 0  # a zero row's output is constant: it has no kink to reach
            dists.append(np.abs(bias[rows]) / norms[rows])
    dists = [d for d in dists if d.size]
    hyper = float(np.median(np.concatenate(dists))) / np.sqrt(n0) if dists else 1.0
    hyper = min(max(hyper, 1e-150), 1e150)  # keep the sampled inputs and their squares finite
    lo, hi = 0.01 * min(1.0, hyper), 100.0 * max(1.0, hyper)
    return np.geomspace(lo, hi, 9)


def _row_norms(layer: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Norms ``‖W_i‖`` of rows of ``W`` and their biases ``b_i``.

    Every row of a dense ``W``; for a structured one, :data:`_SIGMA_ROWS` rows
    evenly spaced over the flat output (``Wᵀ e_i`` by one batched ``rmatvec``),
    enough for the median that :func:`_sampling_sigmas` takes.
    """
    if not layer.structured:
        return np.linalg.norm(layer.weight, axis=1), layer.bias
    picked = np.unique(np.round(np.linspace(0, layer.out_dim - 1, min(layer.out_dim, _SIGMA_ROWS))).astype(int))
    unit = np.zeros((picked.size, layer.out_dim))
    unit[np.arange(picked.size), picked] = 1.0
    return np.linalg.norm(layer.weight.rmatvec(unit), axis=1), layer.bias[picked]


def _sample(net: Network, n: int, rng: np.random.Generator) -> np.ndarray:
    sigmas = _sampling_sigmas(net)
    scale = sigmas[rng.integers(len(sigmas), size=n)]
    x = rng.standard_normal((n, net.input_dim)) * scale[:, None]
    x[0] = 0.0
    return x


class _Best:
    """Best value and point seen so far, over all evaluations."""

    def __init__(self, n0: int):
        self.value, self.x, self.evaluations = -np.inf, np.zeros(n0), 0
        self.direction: np.ndarray | None = None  # matrix-free: the input direction of ``value``

    def update(self, x: np.ndarray, norms: np.ndarray, directions: np.ndarray | None = None) -> None:
        self.evaluations += len(norms)
        i = int(np.argmax(norms))
        if norms[i] > self.value:
            self.value, self.x = float(norms[i]), np.array(x[i])
            self.direction = None if directions is None else np.array(directions[i])


class _SmoothChain:
    """Feed-forward elementwise network with smoothed slopes for the ascent surrogate.

    Piecewise-linear activations get ``s₋ + (s₊ − s₋)·sigmoid(z/τ)``; smooth
    ones keep their derivative (second derivative by central differences).
    """

    def __init__(self, net: Network, rules: list[act.SlopeRestricted]):
        self.weights, self.biases, self.rules = net.weights, net.biases, rules
        self.kinks = [_two_slopes(r, w.shape[0]) for r, w in zip(rules, self.weights)]

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        zs, y = [], x
        for w, b, rule in zip(self.weights, self.biases, self.rules):
            z = y @ w.T + b
            zs.append(z)
            y = rule.forward(z)
        return zs

    def true_slopes(self, zs: list[np.ndarray]) -> list[np.ndarray]:
        return [r.elementwise_derivative(z) for r, z in zip(self.rules, zs)]

    def smooth_slopes(self, zs: list[np.ndarray], tau: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Smoothed slopes and their derivatives w.r.t. the pre-activations."""
        slopes, curvature = [], []
        for rule, kink, z in zip(self.rules, self.kinks, zs):
            if kink is None:
                eps = 1e-5 * (1.0 + np.abs(z))
                slopes.append(rule.elementwise_derivative(z))
                curvature.append((rule.elementwise_derivative(z + eps) - rule.elementwise_derivative(z - eps)) / (2 * eps))
            else:
                neg, pos = kink
                width = tau * (np.std(z, axis=1, keepdims=True) + 1e-12)
                sig = 0.5 * (1.0 + np.tanh(0.5 * z / width))
                slopes.append(neg + (pos - neg) * sig)
                curvature.append((pos - neg) * sig * (1 - sig) / width)
        return slopes, curvature

    def surrogate_gradient(self, x: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of ``‖J_τ(x)‖₂`` w.r.t. ``x`` and the true ``‖J(x)‖₂`` (rows of ``x``)."""
        hidden = self.pre_activations(x)
        true = self.true_slopes(hidden)
        smooth, curv = self.smooth_slopes(hidden, tau)
        v, u = top_singular_pair(chain_product(self.weights, smooth))
        # h_k: pre-activation of layer k along u; g_k: back-propagated v at post-activation k
        hs, h = [], u @ self.weights[0].T
        for w, d in zip(self.weights[1:], smooth):
            hs.append(h)
            h = (d * h) @ w.T
        gs, g = [], v @ self.weights[-1]
        for w, d in zip(self.weights[-2:0:-1], smooth[:0:-1]):
            gs.append(g)
            g = (d * g) @ w
        gs.append(g)
        gs = gs[::-1]
        t = np.zeros_like(hs[-1])
        for k in range(len(hidden) - 1, -1, -1):
            t = (t + gs[k] * hs[k] * curv[k]) @ self.weights[k]
            if k > 0:
                t = t * true[k - 1]
        return t, spectral_norms(chain_product(self.weights, true))


def _smooth_ascent(chain: _SmoothChain, x: np.ndarray, steps: int, lr: float, best: _Best) -> np.ndarray:
    """Normalised gradient ascent on the smoothed surrogate, annealing τ from 0.5 to 0.005.

    Returns the best point of each start.
    """
    radius = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    own_x, own = x.copy(), np.full(len(x), -np.inf)
    for step, tau in enumerate(np.geomspace(0.5, 0.005, steps)):
        grad, norms = chain.surrogate_gradient(x, tau)
        best.update(x, norms)
        improved = norms > own
        own_x[improved], own[improved] = x[improved], norms[improved]
        size = lr * radius * 0.5 * (1 + np.cos(np.pi * step / steps))
        x = x + size * grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-300)
    return own_x


def _pattern_candidates(chain: _SmoothChain, x: np.ndarray, k_top: int) -> np.ndarray:
    """Points just across the hyperplanes of the ``k_top`` neurons whose flip should help most.

    With ``σ = vᵀ J u`` (top singular pair of ``J(x)``), changing the slope of
    neuron ``i`` by ``Δd_i`` changes ``σ`` by ``Δd_i g_i h_i`` to first order
    (``h``: ``u`` pushed forward, ``g``: ``v`` pulled back).  Each candidate
    steps along ``∇z_i`` to just past ``z_i = 0``.  Shape ``(s, k, n_0)``.
    """
    hidden = chain.pre_activations(x)
    slopes = chain.true_slopes(hidden)
    partial, jac = [], np.broadcast_to(chain.weights[0], (len(x),) + chain.weights[0].shape)
    for w, d in zip(chain.weights[1:], slopes):
        partial.append(jac)
        jac = w @ (d[:, :, None] * jac)
    v, u = top_singular_pair(jac)
    gs, g = [], v @ chain.weights[-1]
    for w, d in zip(chain.weights[-2:0:-1], slopes[:0:-1]):
        gs.append(g)
        g = (d * g) @ w
    gs = (gs + [g])[::-1]
    grads = np.concatenate(partial, axis=1)  # (s, N, n0): ∇z_i
    z = np.concatenate(hidden, axis=1)
    flip = np.concatenate([neg + pos - d for (neg, pos), d in zip(chain.kinks, slopes)], axis=1) - np.concatenate(slopes, axis=1)
    gain = np.concatenate([gk * np.einsum("snm,sm->sn", p, u) for gk, p in zip(gs, partial)], axis=1) * flip
    pick = np.argsort(-gain, axis=1)[:, :k_top]
    rows = np.arange(len(x))[:, None]
    gz, zz = grads[rows, pick], z[rows, pick]
    scale = np.maximum(np.sum(gz**2, axis=2), 1e-300)
    step = (zz + np.sign(zz) * (1e-7 * np.abs(zz) + 1e-9)) / scale
    return x[:, None, :] - step[:, :, None] * gz


def _region_walk(chain: _SmoothChain, x: np.ndarray, steps: int, best: _Best, k_top: int = 16) -> None:
    """Greedy walk to neighbouring linear regions while ``‖J‖₂`` grows (piecewise-linear nets)."""
    n_hidden = sum(w.shape[0] for w in chain.weights[:-1])
    k_top = min(k_top, n_hidden)
    chunk = max(1, int(4e6 // (n_hidden * x.shape[1])))
    for lo in range(0, len(x), chunk):
        xs = x[lo : lo + chunk]
        current = spectral_norms(chain_product(chain.weights, chain.true_slopes(chain.pre_activations(xs))))
        for _ in range(steps):
            cand = _pattern_candidates(chain, xs, k_top)
            flat = cand.reshape(-1, xs.shape[1])
            norms = spectral_norms(chain_product(chain.weights, chain.true_slopes(chain.pre_activations(flat))))
            best.update(flat, norms)
            norms = norms.reshape(len(xs), -1)
            pick = np.argmax(norms, axis=1)
            top = norms[np.arange(len(xs)), pick]
            better = top > current * (1 + 1e-12)
            if not np.any(better):
                break
            xs = np.where(better[:, None], cand[np.arange(len(xs)), pick], xs)
            current = np.where(better, top, current)


def _hill_climb(net: Network, x: np.ndarray, steps: int, lr: float, best: _Best, rng: np.random.Generator) -> None:
    """Move each point along ±(top right singular vector) or a random direction if it helps."""
    radius = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    current = jacobian_norms(net, x)
    best.update(x, current)
    factors = np.array([1.0, 0.1, 0.01])
    for step in range(steps):
        u = top_singular_pair(jacobians(net, x))[1]
        r = rng.standard_normal(x.shape)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        dirs = np.stack([u, -u, r, -r], axis=1)  # (s, 4, n)
        shift = lr * radius[:, :, None] * factors[None, :, None]  # (s, 3, 1)
        cand = x[:, None, None, :] + dirs[:, :, None, :] * shift[:, None, :, :]
        flat = cand.reshape(-1, x.shape[1])
        norms = jacobian_norms(net, flat).reshape(len(x), -1)
        best.update(flat, norms.ravel())
        pick = np.argmax(norms, axis=1)
        better = norms[np.arange(len(x)), pick] > current
        x = np.where(better[:, None], flat.reshape(len(x), -1, x.shape[1])[np.arange(len(x)), pick], x)
        current = np.where(better, norms[np.arange(len(x)), pick], current)


def _diverse_starts(x: np.ndarray, norms: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Half the starts: best points of distinct values of ``‖J‖`` (distinct regions); half: random."""
    return x[_diverse_indices(norms, n, rng)]


def _diverse_indices(norms: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the points :func:`_diverse_starts` picks."""
    order = np.argsort(norms)[::-1]
    _, first = np.unique(np.round(norms[order] / max(norms.max(), 1e-300), 9), return_index=True)
    distinct = order[np.sort(first)]
    chosen = list(distinct[: (n + 1) // 2])
    rest = np.setdiff1d(np.arange(len(norms)), chosen)
    chosen += list(rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False))
    return np.array(chosen, dtype=int)


# ------------------------------------------------------------------ matrix-free Jacobians
def _record(layers: Sequence, y: np.ndarray) -> tuple[np.ndarray, list]:
    """Forward pass through ``layers`` at the rows of ``y``, recording what each layer's derivative needs.

    Steps: ``("affine", layer)`` (its weight), ``("diagonal", φ'(z))`` of shape ``(s, m)``,
    ``("dense", J)`` of shape ``(s, m, n)`` (group activations, implicit layers), ``("select", chosen, n)``
    (max pool: the flat input index of each output), ``("residual", steps)`` (the branch).
    The values are the network's own (the same layer calls as :meth:`Network.__call__`).
    """
    steps: list = []
    for layer in layers:
        if isinstance(layer, Affine):
            steps.append(("affine", layer))
            y = layer(y)
        elif isinstance(layer, ActivationLayer):
            slopes = _activation_jacobian(layer.activation, y)
            steps.append(("diagonal" if slopes.ndim == 2 else "dense", slopes))
            y = layer(y)
        elif isinstance(layer, MaxPool):
            chosen = layer.selected_inputs(y)
            steps.append(("select", chosen, layer.in_dim))
            y = np.take_along_axis(y, chosen, axis=1)
        elif isinstance(layer, Residual):
            y_branch, branch = _record(layer.branch, y)
            steps.append(("residual", branch))
            y = y + y_branch
        elif isinstance(layer, Implicit):
            y, j_layer = _implicit_jacobian(layer, y)
            steps.append(("dense", j_layer))
        else:
            raise NotApplicableError(f"lower bounds: unknown layer type {type(layer).__name__}")
    return y, steps


def _affine_forward(layer: Affine, t: np.ndarray) -> np.ndarray:
    """``W`` on the last axis of ``t`` (``(s, k, n) -> (s, k, m)``)."""
    flat = t.reshape(-1, t.shape[-1])
    out = layer.weight.matvec(flat) if layer.structured else flat @ layer.weight.T
    return out.reshape(t.shape[:-1] + (-1,))


def _affine_backward(layer: Affine, g: np.ndarray) -> np.ndarray:
    """``Wᵀ`` on the last axis of ``g`` (``(s, k, m) -> (s, k, n)``)."""
    flat = g.reshape(-1, g.shape[-1])
    out = layer.weight.rmatvec(flat) if layer.structured else flat @ layer.weight
    return out.reshape(g.shape[:-1] + (-1,))


def _scatter(g: np.ndarray, chosen: np.ndarray, n_in: int) -> np.ndarray:
    """Adjoint of the max pool selection: output ``o``'s cotangent is added to input ``chosen[s, o]``."""
    s, k, n_out = g.shape
    rows = np.arange(s * k)[:, None] * n_in + np.repeat(chosen, k, axis=0)
    return np.bincount(rows.ravel(), weights=g.reshape(-1), minlength=s * k * n_in).reshape(s, k, n_in)


def _jvp(steps: list, t: np.ndarray) -> np.ndarray:
    """``J(x_s) t_{s,k}`` for tangents ``t`` of shape ``(s, k, n_in)``."""
    for step in steps:
        kind = step[0]
        if kind == "affine":
            t = _affine_forward(step[1], t)
        elif kind == "diagonal":
            t = t * step[1][:, None, :]
        elif kind == "dense":
            t = t @ np.swapaxes(step[1], 1, 2)
        elif kind == "select":
            t = np.take_along_axis(t, step[1][:, None, :], axis=2)
        else:
            t = t + _jvp(step[1], t)
    return t


def _vjp(steps: list, g: np.ndarray) -> np.ndarray:
    """``J(x_s)ᵀ g_{s,k}`` for cotangents ``g`` of shape ``(s, k, n_out)``."""
    for step in reversed(steps):
        kind = step[0]
        if kind == "affine":
            g = _affine_backward(step[1], g)
        elif kind == "diagonal":
            g = g * step[1][:, None, :]
        elif kind == "dense":
            g = g @ step[1]
        elif kind == "select":
            g = _scatter(g, step[1], step[2])
        else:
            g = g + _vjp(step[1], g)
    return g


class _Linearization:
    """The Jacobians ``J(x_s)`` of a network at the rows of ``x``, as maps (matrix-free).

    ``jvp`` applies ``J(x_s)`` to tangent vectors by forward propagation
    (operators' ``matvec``, activation slopes, max pool selections, residual
    sums); ``vjp`` applies ``J(x_s)ᵀ`` backwards (``rmatvec`` and the same
    diagonals and selections transposed).  Both act on ``(s, k, width)``
    arrays: ``k`` vectors per point.
    """

    def __init__(self, layers: Sequence, x: np.ndarray):
        self.n_points, self.in_dim = x.shape
        output, self.steps = _record(layers, x)
        self.out_dim = output.shape[1]

    @staticmethod
    def from_steps(steps: list, n_points: int, in_dim: int, out_dim: int) -> "_Linearization":
        """A linearization from recorded steps (see :func:`_record`), e.g. with other activation slopes."""
        lin = object.__new__(_Linearization)
        lin.steps, lin.n_points, lin.in_dim, lin.out_dim = steps, n_points, in_dim, out_dim
        return lin

    def jvp(self, t: np.ndarray) -> np.ndarray:
        return _jvp(self.steps, t)

    def vjp(self, g: np.ndarray) -> np.ndarray:
        return _vjp(self.steps, g)

    def jacobians(self) -> np.ndarray:
        """The dense ``(s, n_out, n_in)`` stack, from its narrower side (``min(n_in, n_out)`` passes)."""
        if self.out_dim <= self.in_dim:
            eye = np.broadcast_to(np.eye(self.out_dim), (self.n_points, self.out_dim, self.out_dim))
            return self.vjp(eye)
        eye = np.broadcast_to(np.eye(self.in_dim), (self.n_points, self.in_dim, self.in_dim))
        return np.swapaxes(self.jvp(eye), 1, 2)


def _layer_walk(layers: Sequence):
    """Every layer, residual branches opened."""
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _layer_walk(layer.branch)


def _points_per_chunk(net: Network, k: int) -> int:
    """Points per matrix-free chunk: ``k`` tangents per point through the widest layer, plus the recorded
    derivatives, within :data:`_FREE_CHUNK_BYTES`."""
    widest, recorded = net.input_dim, 0
    for layer in _layer_walk(net.layers):
        if isinstance(layer, (Affine, MaxPool, Implicit)):
            widest = max(widest, layer.out_dim)
        if isinstance(layer, (MaxPool, ActivationLayer)):
            recorded += widest if isinstance(layer, MaxPool) or layer.activation.elementwise else widest**2
        elif isinstance(layer, Implicit):
            recorded += layer.out_dim * layer.in_dim
    per_point = 8 * (recorded + 3 * max(k, 1) * widest)
    return int(max(1, _FREE_CHUNK_BYTES // per_point))


def _unit_rows(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``v`` normalised; a zero (or non-finite) row is replaced by a random unit vector."""
    v = np.array(v, dtype=float)
    norms = np.linalg.norm(v, axis=1)
    bad = ~(np.isfinite(norms) & (norms > 0))
    if np.any(bad):
        v[bad] = rng.standard_normal((int(bad.sum()), v.shape[1]))
        norms[bad] = np.linalg.norm(v[bad], axis=1)
    return v / norms[:, None]


def _power_iteration(lin: _Linearization, v: np.ndarray, iterations: int,
                     tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power iteration on ``J(x_s)ᵀJ(x_s)`` from the unit rows ``v`` (von Mises), all points together.

    Returns ``(‖J v‖₂, v, J v)`` for the final unit iterates ``v``: each value is ``J(x_s)`` applied to
    an actual vector, hence ``≤ ‖J(x_s)‖₂``, and nondecreasing over the iterations.  Stops after
    ``iterations`` products or when no value changed by more than ``tol`` (relative) in one step.
    """
    previous, iterations = np.zeros(len(v)), max(1, iterations)
    for step in range(iterations):
        image = lin.jvp(v[:, None, :])[:, 0]
        values = np.linalg.norm(image, axis=1)
        if step == iterations - 1 or np.all(np.abs(values - previous) <= tol * values):
            break
        previous = values
        back = lin.vjp(image[:, None, :])[:, 0]
        norms = np.linalg.norm(back, axis=1)
        stuck = ~(np.isfinite(norms) & (norms > 0))  # Jᵀ J v = 0: v keeps its value 0
        v = np.where(stuck[:, None], v, back / np.where(stuck, 1.0, norms)[:, None])
    return values, v, image


def _top_pairs(lin: _Linearization, rng: np.random.Generator, warm: np.ndarray | None,
               power: tuple[int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(‖J v‖₂, v, J v / ‖J v‖₂)`` per point, ``v`` a unit vector close to the top right singular vector.

    ``min(n_in, n_out) ≤`` :data:`_NARROW_MAX`: ``J`` is formed through its narrow side and ``v`` is its
    top right singular vector (the value is ``‖J‖₂`` up to rounding); otherwise power iteration
    (``power``: iterations, tolerance) from ``warm`` (rows) or random vectors.
    """
    if min(lin.in_dim, lin.out_dim) <= _NARROW_MAX:
        jac = lin.jacobians()
        v = _unit_rows(top_singular_pair(jac)[1], rng)
        image = np.einsum("smn,sn->sm", jac, v)
        values = np.linalg.norm(image, axis=1)
    else:
        start = rng.standard_normal((lin.n_points, lin.in_dim)) if warm is None else warm
        values, v, image = _power_iteration(lin, _unit_rows(start, rng), *power)
    return values, v, image / np.where(values > 0, values, 1.0)[:, None]


def _free_norms(net: Network, x: np.ndarray, rng: np.random.Generator, warm: np.ndarray | None = None,
                power: tuple[int, float] = _POWER_SEARCH) -> tuple[np.ndarray, np.ndarray]:
    """``(‖J(x_s) v_s‖₂, v_s)`` at the rows of ``x`` (see :func:`_top_pairs`), in chunks of points."""
    narrow = min(net.input_dim, net.output_dim) <= _NARROW_MAX
    chunk = _points_per_chunk(net, min(net.input_dim, net.output_dim) if narrow else 1)
    values, vectors = np.empty(len(x)), np.empty(x.shape)
    for lo in range(0, len(x), chunk):
        hi = min(lo + chunk, len(x))
        lin = _Linearization(net.layers, x[lo:hi])
        values[lo:hi], vectors[lo:hi], _ = _top_pairs(lin, rng, None if warm is None else warm[lo:hi], power)
    return values, vectors


def _rayleigh(net: Network, x: np.ndarray, v: np.ndarray) -> float:
    """``‖J(x) v‖₂ / ‖v‖₂`` in float64: one Jacobian-vector product at the point ``x``."""
    image = _Linearization(net.layers, x[None, :]).jvp(v[None, None, :])[0, 0]
    return float(np.linalg.norm(image) / np.linalg.norm(v))


def _free_hill_climb(net: Network, x: np.ndarray, u: np.ndarray, current: np.ndarray, rounds: int, lr: float,
                     best: _Best, rng: np.random.Generator) -> None:
    """Matrix-free :func:`_hill_climb`: move each point along ±``u`` (its top right singular vector) or a random
    direction, at three step sizes, when that raises ``‖J‖``; candidates' power iterations start from ``u``."""
    radius = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    factors = np.array([1.0, 0.1, 0.01])
    n_cand = 4 * len(factors)
    for _ in range(rounds):
        r = _unit_rows(rng.standard_normal(x.shape), rng)
        dirs = np.stack([u, -u, r, -r], axis=1)  # (s, 4, n)
        shift = lr * radius[:, :, None] * factors[None, :, None]  # (s, 3, 1)
        flat = (x[:, None, None, :] + dirs[:, :, None, :] * shift[:, None, :, :]).reshape(-1, x.shape[1])
        norms, vecs = _free_norms(net, flat, rng, warm=np.repeat(u, n_cand, axis=0))
        best.update(flat, norms, vecs)
        norms = norms.reshape(len(x), n_cand)
        pick = np.argmax(norms, axis=1)
        top = norms[np.arange(len(x)), pick]
        better = top > current
        chosen = np.arange(len(x)) * n_cand + pick
        x = np.where(better[:, None], flat[chosen], x)
        u = np.where(better[:, None], vecs[chosen], u)
        current = np.where(better, top, current)


class _FreeSmoothChain(_SmoothChain):
    """:class:`_SmoothChain` of a feed-forward chain with structured weights, matrix-free.

    The surrogate gradient is the same formula, each product with ``W_k`` or ``W_kᵀ`` an operator
    call.  The top singular pairs of ``J_τ(x)`` (smoothed slopes) and ``J(x)`` (true slopes) come
    from a few power iterations (:data:`_POWER_ASCENT`) on both slope sets at once, warm-started
    from the previous step's vectors (set :attr:`warm` before the first step): the points move
    little per step.  The values are Rayleigh quotients ``‖J(x) v‖₂ ≤ ‖J(x)‖₂``.
    """

    def __init__(self, net: Network, rules: list[act.SlopeRestricted], rng: np.random.Generator):
        super().__init__(net, rules)
        self.net, self.affine, self.rng = net, net.layers[::2], rng
        self.warm: np.ndarray | None = None  # last right singular vectors: smoothed rows, then true rows

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        zs, y = [], x
        for layer, rule in zip(self.affine, self.rules):
            z = layer(y)
            zs.append(z)
            y = rule.forward(z)
        return zs

    def _linearization(self, slopes: list[np.ndarray]) -> _Linearization:
        steps: list = [("affine", self.affine[0])]
        for layer, d in zip(self.affine[1:], slopes):
            steps += [("diagonal", d), ("affine", layer)]
        return _Linearization.from_steps(steps, len(slopes[0]), self.net.input_dim, self.net.output_dim)

    def surrogate_gradient(self, x: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of ``‖J_τ(x)‖₂`` w.r.t. ``x`` and the value ``‖J(x) v‖₂`` (rows of ``x``, chunked)."""
        side = min(self.net.input_dim, self.net.output_dim)
        chunk = max(1, _points_per_chunk(self.net, side if side <= _NARROW_MAX else 1) // 2)  # two slope sets
        warm = self.warm if self.warm is not None and len(self.warm) == 2 * len(x) else None
        self.warm = np.empty((2 * len(x), x.shape[1]))
        grads, norms = np.empty(x.shape), np.empty(len(x))
        for lo in range(0, len(x), chunk):
            hi = min(lo + chunk, len(x))
            rows = np.r_[lo:hi, len(x) + lo : len(x) + hi]  # smoothed, then true, of these points
            grads[lo:hi], norms[lo:hi], self.warm[rows] = self._chunk_gradient(
                x[lo:hi], tau, None if warm is None else warm[rows])
        return grads, norms

    def _chunk_gradient(self, x: np.ndarray, tau: float, warm: np.ndarray | None):
        hidden = self.pre_activations(x)
        true = self.true_slopes(hidden)
        smooth, curv = self.smooth_slopes(hidden, tau)
        both = self._linearization([np.concatenate([a, b]) for a, b in zip(smooth, true)])
        if warm is None:
            values, right, left = _top_pairs(both, self.rng, None, _POWER_SEARCH)
        else:
            values, right, image = _power_iteration(both, _unit_rows(warm, self.rng), *_POWER_ASCENT)
            left = image / np.where(values > 0, values, 1.0)[:, None]
        s = len(x)
        u, v = right[:s], left[:s]
        # h_k: pre-activation of layer k along u; g_k: v pulled back to the output of activation k
        hs, h = [], _affine_forward(self.affine[0], u)
        for layer, d in zip(self.affine[1:], smooth):
            hs.append(h)
            h = _affine_forward(layer, d * h)
        gs, g = [], _affine_backward(self.affine[-1], v)
        for layer, d in zip(self.affine[-2:0:-1], smooth[:0:-1]):
            gs.append(g)
            g = _affine_backward(layer, d * g)
        gs = (gs + [g])[::-1]
        t = np.zeros_like(hs[-1])
        for k in range(len(hidden) - 1, -1, -1):
            t = _affine_backward(self.affine[k], t + gs[k] * hs[k] * curv[k])
            if k > 0:
                t = t * true[k - 1]
        return t, values[s:], right


def _matrix_free_lower_bound(net: Network, n_starts: int, steps: int, seed: int, lr: float,
                             n_samples: int | None) -> LowerBound:
    """:func:`gradient_lower_bound` without dense matrices (see its docstring)."""
    rng = np.random.default_rng(seed)
    best = _Best(net.input_dim)
    x = _sample(net, n_samples or max(1024, 32 * n_starts), rng)
    norms, vecs = _free_norms(net, x, rng)
    best.update(x, norms, vecs)
    picked = _diverse_indices(norms, max(1, n_starts), rng)
    rules = _chain_rules(net)
    if steps > 0 and rules is not None and len(net.layers) > 1:
        chain = _FreeSmoothChain(net, rules, rng)
        chain.warm = np.concatenate([vecs[picked], vecs[picked]])
        _smooth_ascent(chain, x[picked], max(1, steps // 4), lr, best)
    elif steps > 0 and not (len(net.layers) == 1 and isinstance(net.layers[0], Affine)):  # else J is constant
        _free_hill_climb(net, x[picked], vecs[picked], norms[picked], max(1, steps // 20), lr, best, rng)
    # the reported pair (x, v): v recomputed at x (power iteration polished from the search's v, if any)
    warm = None if best.direction is None else best.direction[None]
    candidates = [_free_norms(net, best.x[None], rng, warm=warm, power=_POWER_FINAL)[1][0]]
    candidates += [] if best.direction is None else [best.direction]
    values = [_rayleigh(net, best.x, v) for v in candidates]
    i = int(np.argmax(values))
    return LowerBound(values[i], best.x, best.evaluations, "gradient", candidates[i])


def _use_dense(net: Network) -> bool:
    """Whether a structured net goes through :meth:`Network.densified` (see :data:`_DENSE_MAX_BYTES`)."""
    layers = list(_layer_walk(net.layers))
    entries = sum(l.out_dim * l.in_dim for l in layers if isinstance(l, Affine))
    widest = max([net.input_dim] + [l.out_dim for l in layers if isinstance(l, (Affine, MaxPool, Implicit))])
    # the elementwise chain multiplies from the narrower end; other nets propagate the n_in columns forward
    columns = min(net.input_dim, net.output_dim) if _chain_rules(net) is not None else net.input_dim
    return (8 * entries <= _DENSE_MAX_BYTES and 8 * _CHUNK * widest * columns <= _DENSE_MAX_BYTES
            and columns * entries <= _DENSE_MAX_MACS)


def gradient_lower_bound(
    net: Network,
    n_starts: int = 20,
    steps: int = 200,
    seed: int = 0,
    lr: float = 0.05,
    n_samples: int | None = None,
) -> LowerBound:
    """Lower bound ``max_x ‖J(x)‖₂`` found by sampling and ascent.

    1. Sample ``n_samples`` inputs at scales from well inside to far outside the
       bias scale (so that many linear regions are visited) and keep the
       ``n_starts`` with the largest ``‖J(x)‖₂``.
    2. Feed-forward nets of elementwise activations: normalised gradient ascent
       on ``‖J_τ(x)‖₂`` where kinks are smoothed with width τ (annealed), which
       makes the gradient informative for piecewise-linear nets; other nets:
       hill climbing along the top right singular vector of ``J(x)`` and random
       directions.

    The returned value is ``‖J(x)‖₂`` (SVD, float64) at the best point found, a
    true lower bound on the ℓ2 Lipschitz constant.

    Structured (convolutional) networks run this on :meth:`Network.densified`
    when that is cheap (:func:`_use_dense`).  Otherwise the search runs
    matrix-free (:class:`_Linearization`): at every sampled point, ``‖J(x)‖₂``
    and its top right singular vector ``v`` come from ``J`` formed through its
    narrow side (at most :data:`_NARROW_MAX` Jacobian-vector or
    vector-Jacobian products) or from power iteration on ``JᵀJ`` (von Mises);
    then a feed-forward elementwise chain gets ``max(1, steps // 4)`` steps of
    the same smoothed ascent (:class:`_FreeSmoothChain`, no region walk), any
    other net ``max(1, steps // 20)`` rounds of hill climbing along ``±v`` or
    a random direction (12 candidates per start and round).  The value
    returned is the Rayleigh quotient ``‖J(x) v‖₂ / ‖v‖₂`` at the best pair
    ``(x, v)`` found (``v`` polished by power iteration at ``x``), evaluated in
    float64: ``≤ ‖J(x)‖₂``, a true lower bound too, never an extrapolation;
    ``LowerBound.direction`` holds ``v``.

    Parameters
    ----------
    net
        Any :class:`~lipsdp.network.Network` whose activations can be evaluated.
    n_starts
        Number of ascent starting points.
    steps
        Ascent iterations per start (hill climbing uses ``steps // 4``).
    seed
        Seed of the random generator.
    lr
        Step size relative to ``max(‖x‖, 1)``.
    n_samples
        Random samples of the first stage (default ``max(1024, 32 n_starts)``).

    Returns
    -------
    LowerBound
    """
    if net.is_structured:
        if not _use_dense(net):
            return _matrix_free_lower_bound(net, n_starts, steps, seed, lr, n_samples)
        net = net.densified()
    rng = np.random.default_rng(seed)
    best = _Best(net.input_dim)
    x = _sample(net, n_samples or max(1024, 32 * n_starts), rng)
    norms = jacobian_norms(net, x)
    best.update(x, norms)
    starts = _diverse_starts(x, norms, max(1, n_starts), rng)
    rules = _elementwise_rules(net)
    if steps > 0 and rules is not None and len(net.weights) > 1:
        chain = _SmoothChain(net, rules)
        ends = _smooth_ascent(chain, starts, steps, lr, best)
        if all(k is not None for k in chain.kinks):
            _region_walk(chain, ends, max(1, steps // 4), best)
    elif steps > 0 and (len(net.layers) > 1 or net.has_max_pool):
        _hill_climb(net, starts, max(1, steps // 4), lr, best, rng)
    return LowerBound(_exact_norm(net, best.x), best.x, best.evaluations, "gradient")


def finite_difference_lower_bound(
    net: Network, n_pairs: int = 2000, seed: int = 0, relative_step: float = 1e-3
) -> LowerBound:
    """``max ‖f(x) − f(y)‖₂ / ‖x − y‖₂`` over random close pairs.

    ``x`` is sampled as in :func:`gradient_lower_bound`; ``y = x + δ e`` with a
    random unit vector ``e`` and ``δ = relative_step · max(‖x‖, 1)``.  Every
    ratio is a true lower bound (up to float64 rounding of ``f``).
    """
    rng = np.random.default_rng(seed)
    x = _sample(net, n_pairs, rng)
    e = rng.standard_normal(x.shape)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y = x + relative_step * np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0) * e
    ratios = np.linalg.norm(_evaluate(net, x) - _evaluate(net, y), axis=1) / np.linalg.norm(x - y, axis=1)
    i = int(np.argmax(ratios))
    return LowerBound(float(ratios[i]), x[i], 2 * n_pairs, "finite-difference")


def _evaluate(net: Network, x: np.ndarray) -> np.ndarray:
    """``net(x)``; a structured net in chunks of rows, so that wide feature maps stay within memory."""
    if not net.is_structured:
        return net(x)
    chunk = _points_per_chunk(net, 0)
    return np.concatenate([net(x[i : i + chunk]) for i in range(0, len(x), chunk)])


# -------------------------------------------------------------- exact pattern search
_MAX_NEURONS = 16
_BATCH = 4096
#: default refusal threshold of :func:`exact_pattern_bound` on :func:`region_bound`: the search solves
#: about one LP per region and per pruned branch, so time grows with the regions (pass
#: ``max_regions=None`` to lift it)
DEFAULT_MAX_REGIONS = 2**14


def region_bound(input_dim: int, widths: Sequence[int]) -> int:
    """Upper bound on the activation patterns with interior of a feed-forward piecewise-linear net.

    Within a region of the earlier layers, the pre-activations of hidden layer ``l`` are affine in
    the input with rank ``r ≤ min(n₀, n₁, …, n_{l−1})``, so its ``n_l`` kinks cut that region into at
    most ``Σ_{j≤r} C(n_l, j)`` pieces (Zaslavsky; Serra et al. 2018); the product over layers, capped
    at ``2^N``, bounds the regions :func:`exact_pattern_bound` enumerates (exact for one hidden layer
    in general position).

    Parameters
    ----------
    input_dim
        ``n₀``.
    widths
        Hidden widths ``n₁, …, n_L``.
    """
    bound, rank = 1, input_dim
    for width in widths:
        bound *= sum(comb(width, j) for j in range(min(rank, width) + 1))
        rank = min(rank, width)
    return min(bound, 2 ** sum(widths))


def _pattern_setup(net: Network) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Weights, slope boxes ``(α, β)`` and kink slopes ``(s₋, s₊)``; refuse unsuitable nets."""
    if not net.is_feedforward:
        raise NotApplicableError(f"exact_pattern_bound needs a feed-forward network; got {net.summary()}")
    weights = list(net.weights)
    widths = [w.shape[0] for w in weights[:-1]]
    if sum(widths) > _MAX_NEURONS:
        raise NotApplicableError(
            f"exact_pattern_bound enumerates 2^N patterns; N = {sum(widths)} hidden neurons exceeds {_MAX_NEURONS}"
        )
    kinks, boxes = [], []
    for rule, m in zip(net.activations, widths):
        kink = _two_slopes(rule, m)
        if kink is None:
            raise NotApplicableError(
                f"exact_pattern_bound needs piecewise-linear two-slope activations (ReLU, LeakyReLU); got {rule.describe()}"
            )
        kinks.append(kink)
        boxes.append(rule.slope_bounds(m))
    return weights, boxes, kinks


def _split(flat: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(widths)[:-1], axis=1)


def _max_all_patterns(weights: list[np.ndarray], boxes: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Max of ``‖W_l D … W_1‖₂`` over all vertices of the slope box, in batches."""
    widths = [w.shape[0] for w in weights[:-1]]
    lo = np.concatenate([b[0] for b in boxes])
    hi = np.concatenate([b[1] for b in boxes])
    n = lo.size
    best, best_slopes = -np.inf, None
    for start in range(0, 2**n, _BATCH):
        idx = np.arange(start, min(2**n, start + _BATCH))
        bits = (idx[:, None] >> np.arange(n)) & 1
        slopes = lo + bits * (hi - lo)
        norms = spectral_norms(chain_product(weights, _split(slopes, widths)))
        i = int(np.argmax(norms))
        if norms[i] > best:
            best, best_slopes = norms[i], slopes[i : i + 1]
    return float(np.linalg.norm(chain_product(weights, _split(best_slopes, widths))[0], 2))


class _RegionSearch:
    """DFS over neuron signs, keeping only sign patterns whose region has interior.

    Every node of the search carries a *witness*: a point strictly inside its
    region.  A new hyperplane whose normal is independent of those on the
    current path cuts the region for sure (the witness moves along the
    orthogonal direction to either side); a dependent one keeps the witness on
    its side, and an LP (Chebyshev-ball radius, capped at 1) decides the other
    side and supplies its witness.  Leaves are the realizable patterns, each
    with an input where it occurs.
    """

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], kinks: list, tol: float = 1e-9,
                 bar=None):
        self.weights, self.biases, self.kinks, self.tol = weights, biases, kinks, tol
        self.rows: list[np.ndarray] = []
        self.rhs: list[float] = []
        self.basis: list[np.ndarray] = []
        self.witnesses: list[np.ndarray] = []
        self.n_lp = 0
        # progress: the share of the 2^N sign patterns decided (realized, or cut off with their subtree)
        self.bar = bar
        widths = [w.shape[0] for w in weights[:-1]]
        self.offsets, self.n_neurons = np.cumsum([0] + widths[:-1]), sum(widths)

    def _decided(self, k: int, i: int) -> None:
        """Count the patterns below neuron ``i`` of layer ``k`` (one side) as decided."""
        if self.bar is not None:
            self.bar.update(2 ** int(self.n_neurons - self.offsets[k] - i - 1))

    def run(self) -> np.ndarray:
        """Witness inputs, one per realizable pattern (rows)."""
        self._layer(0, self.weights[0], self.biases[0], np.zeros(self.weights[0].shape[1]))
        return np.array(self.witnesses)

    def _layer(self, k: int, A: np.ndarray, c: np.ndarray, x: np.ndarray) -> None:
        if k == len(self.kinks):
            self.witnesses.append(x)
            if self.bar is not None:
                self.bar.update(1)
            return
        self._neuron(k, A, c, 0, np.empty(len(c)), x)

    def _neuron(self, k: int, A: np.ndarray, c: np.ndarray, i: int, slopes: np.ndarray, x: np.ndarray) -> None:
        if i == len(c):
            w, b = self.weights[k + 1], self.biases[k + 1]
            self._layer(k + 1, w @ (slopes[:, None] * A), w @ (slopes * c) + b, x)
            return
        norm = np.linalg.norm(A[i])
        neg, pos = self.kinks[k]
        if norm <= 1e-12:  # constant pre-activation: only the sign of c matters
            for sign, slope in ((1.0, pos[i]), (-1.0, neg[i])):
                if sign * c[i] >= -self.tol:
                    slopes[i] = slope
                    self._neuron(k, A, c, i + 1, slopes, x)
                else:
                    self._decided(k, i)
            return
        direction, offset = A[i] / norm, c[i] / norm
        fresh = self._new_basis_vector(direction)
        for sign, slope in ((1.0, pos[i]), (-1.0, neg[i])):
            self.rows.append(-sign * direction)
            self.rhs.append(sign * offset)
            inside = self._witness(x, direction, offset, sign, fresh)
            if inside is not None:
                slopes[i] = slope
                self.basis.extend([] if fresh is None else [fresh])
                self._neuron(k, A, c, i + 1, slopes, inside)
                del self.basis[len(self.basis) - (0 if fresh is None else 1) :]
            else:
                self._decided(k, i)
            self.rows.pop()
            self.rhs.pop()

    def _new_basis_vector(self, direction: np.ndarray) -> np.ndarray | None:
        """Orthonormalised ``direction`` if it is independent of the path's normals, else None."""
        residual = direction.copy()
        for q in self.basis:
            residual -= (q @ residual) * q
        size = np.linalg.norm(residual)
        return residual / size if size > 1e-9 else None

    def _margin(self, x: np.ndarray) -> float:
        return float(np.min(np.array(self.rhs) - np.array(self.rows) @ x))

    def _witness(self, x: np.ndarray, direction: np.ndarray, offset: float, sign: float, fresh: np.ndarray | None):
        """A point strictly inside the current constraints (the last one new), or None."""
        if fresh is not None:
            # move along a direction that leaves every earlier constraint unchanged
            target = sign * max(1.0, abs(direction @ x + offset))
            moved = x + (target - (direction @ x + offset)) / (direction @ fresh) * fresh
            if self._margin(moved) > self.tol:
                return moved
        elif self._margin(x) > self.tol:
            return x
        return self._lp_point()

    def _lp_point(self) -> np.ndarray | None:
        """Centre of the largest ball (radius ≤ 1) inside the constraints, if its radius > tol (HiGHS)."""
        self.n_lp += 1
        n = self.rows[0].size
        a_ub = np.hstack([np.array(self.rows), np.ones((len(self.rows), 1))])
        cost = np.zeros(n + 1)
        cost[-1] = -1.0
        res = linprog(cost, A_ub=a_ub, b_ub=np.array(self.rhs), bounds=[(None, None)] * n + [(None, 1.0)], method="highs")
        if res.status != 0 or -res.fun <= self.tol:
            return None
        return res.x[:n]


def exact_pattern_bound(net: Network, *, max_regions: int | None = DEFAULT_MAX_REGIONS,
                        progress: bool | None = False) -> PatternBound:
    """Exact activation-pattern bounds of a tiny piecewise-linear network.

    Parameters
    ----------
    net
        Feed-forward network whose hidden activations are piecewise linear with
        two slopes and a kink at 0 (ReLU, LeakyReLU), at most 16 hidden neurons.
    max_regions
        Refuse, before any work, a network whose :func:`region_bound` exceeds this
        (each region costs about one linear program); None: no limit.
    progress
        Show a tqdm bar of the sign patterns decided (None: only on a terminal).

    Returns
    -------
    PatternBound
        ``max_all_patterns`` (every slope choice, a lower bound for
        LipSDP-Neuron) and ``max_realizable`` (patterns met by some input: the
        true Lipschitz constant).

    Raises
    ------
    NotApplicableError
        Not feed-forward, other activations, more than 16 hidden neurons, or a max pool.
    ProblemTooLargeError
        More than ``max_regions`` possible regions.
    """
    net = _pattern_network(net)
    weights, boxes, kinks = _pattern_setup(net)
    widths = [w.shape[0] for w in weights[:-1]]
    regions = region_bound(net.input_dim, widths)
    _check_regions(regions, max_regions, net.input_dim, widths)
    if not widths:
        value = float(np.linalg.norm(weights[0], 2))
        return PatternBound(value, value, 1, 1, np.zeros(net.input_dim))
    from tqdm.auto import tqdm

    with tqdm(total=2 ** sum(widths), desc=f"exact: up to {regions} regions", unit="pattern",
              disable=None if progress is None else not progress, leave=False) as bar:
        witnesses = _RegionSearch(weights, list(net.biases), kinks, bar=bar).run()
    best = witnesses[int(np.argmax(jacobian_norms(net, witnesses)))]
    return PatternBound(_max_all_patterns(weights, boxes), _exact_norm(net, best), 2 ** sum(widths), len(witnesses), best)


def _pattern_network(net: Network) -> Network:
    """``net`` with dense weights for the pattern search (a tiny conv net is densified after the checks)."""
    if net.has_max_pool:
        raise NotApplicableError(
            "exact_pattern_bound enumerates the patterns of a chain Linear, activation, …, Linear; a max pool is "
            "another piecewise-linear layer it does not enumerate: use the method 'lower' (gradient_lower_bound)"
        )
    if net.is_structured:
        _pattern_setup(net)  # refuse unsuitable nets before any dense matrix is written out
        net = net.densified()
    return net


def _check_regions(regions: int, max_regions: int | None, input_dim: int, widths: Sequence[int]) -> None:
    """Raise ProblemTooLargeError when ``regions`` exceeds ``max_regions`` (None: no limit)."""
    if max_regions is not None and (isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer))):
        raise InvalidOptionError(f"max_regions must be a whole number or None, got {max_regions!r}")
    if max_regions is None or regions <= max_regions:
        return
    raise ProblemTooLargeError(
        f"exact_pattern_bound: up to {regions} linear regions to enumerate ({sum(widths)} hidden neurons, widths "
        f"{list(widths)}, input width {input_dim}), each found by about one linear program: over the limit "
        f"max_regions={max_regions}. Pass max_regions=None (or a larger number) to run it anyway (CLI: "
        "--max-regions none), or use the method 'lower'"
    )
