"""Lower bounds: sound (never above the truth), tight on tiny nets, exact pattern search."""

from __future__ import annotations

import numpy as np
import pytest

from lipsdp.activation_registry import rule_from_spec
from lipsdp import activations as act
from lipsdp.errors import NotApplicableError
from lipsdp.lower import (
    exact_pattern_bound,
    finite_difference_lower_bound,
    gradient_lower_bound,
    jacobian_norms,
    jacobians,
)
from lipsdp.network import ActivationLayer, Affine, Implicit, Network, Residual

RTOL = 1e-9


def _net(seed: int, dims, activation="relu", bias_scale=1.0) -> Network:
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(len(dims) - 1)]
    bs = [bias_scale * rng.normal(size=d) for d in dims[1:]]
    return Network.from_weights(ws, bs, activation)


def _product(net: Network) -> float:
    return float(np.prod([np.linalg.norm(w, 2) for w in net.weights]))


def _numeric_jacobian(net: Network, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    cols = [(net(x + h * e) - net(x - h * e))[0] / (2 * h) for e in np.eye(x.size)]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus", "elu", "leaky_relu"])
def test_jacobian_matches_finite_differences(activation):
    net = _net(3, (4, 6, 5, 3), activation)
    x = np.random.default_rng(0).normal(size=4)
    np.testing.assert_allclose(jacobians(net, x[None])[0], _numeric_jacobian(net, x), atol=1e-7)


def test_jacobian_of_residual_and_implicit_layers():
    rng = np.random.default_rng(1)
    branch = (Affine.create(rng.normal(size=(3, 3))), ActivationLayer(rule_from_spec("tanh")), Affine.create(rng.normal(size=(3, 3))))
    implicit = Implicit.create(0.3 * rng.normal(size=(4, 4)) / 2, rng.normal(size=(4, 3)), rule_from_spec("tanh"), b=rng.normal(size=4))
    net = Network([Affine.create(rng.normal(size=(3, 2)), rng.normal(size=3)), Residual(branch), implicit,
                   Affine.create(rng.normal(size=(2, 4)))])
    x = rng.normal(size=2)
    np.testing.assert_allclose(jacobians(net, x[None])[0], _numeric_jacobian(net, x), atol=1e-6)
    lb = gradient_lower_bound(net, n_starts=4, steps=8)
    assert np.isclose(lb.value, np.linalg.norm(jacobians(net, lb.x[None])[0], 2))


@pytest.mark.parametrize("seed", range(12))
def test_lower_bounds_below_product_of_norms(seed):
    rng = np.random.default_rng(100 + seed)
    depth = int(rng.integers(1, 4))
    dims = [int(rng.integers(1, 9)) for _ in range(depth + 2)]
    activation = ["relu", "tanh", "leaky_relu", "sigmoid", "elu", "softplus"][seed % 6]
    net = _net(seed, dims, activation, bias_scale=float(rng.uniform(0, 3)))
    grad = gradient_lower_bound(net, n_starts=6, steps=40, seed=seed)
    fd = finite_difference_lower_bound(net, n_pairs=300, seed=seed)
    # each value is attained: it is ‖J‖ at the returned point, ≤ the product of norms
    assert np.isclose(grad.value, jacobian_norms(net, grad.x[None])[0], rtol=1e-10)
    assert grad.value <= _product(net) * (1 + RTOL)
    assert fd.value <= _product(net) * (1 + RTOL)


def test_one_linear_layer_gives_the_spectral_norm():
    w = np.random.default_rng(0).normal(size=(3, 5))
    net = Network.from_weights([w], [np.ones(3)])
    sigma = np.linalg.norm(w, 2)
    pb = exact_pattern_bound(net)
    assert pb.max_all_patterns == pytest.approx(sigma, rel=1e-12)
    assert pb.max_realizable == pytest.approx(sigma, rel=1e-12)
    assert gradient_lower_bound(net, n_starts=2, steps=5).value == pytest.approx(sigma, rel=1e-12)
    assert finite_difference_lower_bound(net, n_pairs=20).value <= sigma * (1 + RTOL)


def test_math_counterexample_net():
    """docs/formulations.md §1: a linear region of this 2-3-1 ReLU net has Jacobian norm 1.804."""
    w1 = [[0.5614, 0.2222], [0.3716, 1.3489], [0.4522, 1.3218]]
    b1 = [-0.6138, -0.5221, -0.1218]
    w2 = [[0.1637, -0.6522, 1.2441]]
    net = Network.from_weights([w1, w2], [b1, [0.0]])
    pb = exact_pattern_bound(net)
    assert pb.max_realizable == pytest.approx(1.8038, abs=1e-4)
    assert pb.n_patterns == 8 and pb.n_realizable == 7  # three lines cut the plane into 7 regions
    assert gradient_lower_bound(net).value == pytest.approx(pb.max_realizable, rel=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_exact_patterns_bracket_and_gradient_is_sound(seed):
    rng = np.random.default_rng(seed)
    dims = [int(rng.integers(2, 4))] + [int(rng.integers(2, 5)) for _ in range(int(rng.integers(1, 3)))] + [int(rng.integers(1, 3))]
    activation = "relu" if seed % 2 == 0 else rule_from_spec("leaky_relu:0.1")
    net = _net(seed, dims, activation)
    pb = exact_pattern_bound(net)
    assert pb.max_realizable <= pb.max_all_patterns * (1 + 1e-12)
    assert pb.max_all_patterns <= _product(net) * (1 + 1e-12)
    assert 1 <= pb.n_realizable <= pb.n_patterns == 2 ** sum(dims[1:-1])
    # the witness really lies in the best region
    assert jacobian_norms(net, pb.x[None])[0] == pytest.approx(pb.max_realizable, rel=1e-10)
    # dense sampling never beats the true constant
    x = rng.normal(size=(4000, dims[0])) * rng.choice([0.1, 1.0, 10.0, 100.0], size=(4000, 1))
    assert jacobian_norms(net, x).max() <= pb.max_realizable * (1 + RTOL)
    grad = gradient_lower_bound(net, seed=seed)
    fd = finite_difference_lower_bound(net, n_pairs=500, seed=seed)
    assert grad.value <= pb.max_realizable * (1 + RTOL)
    assert fd.value <= pb.max_realizable * (1 + RTOL)
    assert fd.value <= grad.value * (1 + 1e-3) or fd.value <= pb.max_realizable * (1 + RTOL)


def test_gradient_bound_is_tight_on_tiny_nets():
    ratios = []
    for seed in range(12):
        rng = np.random.default_rng(1000 + seed)
        dims = [int(rng.integers(2, 4)), int(rng.integers(2, 6)), int(rng.integers(1, 3))]
        net = _net(seed, dims, "relu")
        ratios.append(gradient_lower_bound(net, seed=seed).value / exact_pattern_bound(net).max_realizable)
    ratios = np.array(ratios)
    assert np.all(ratios <= 1 + RTOL)
    assert np.median(ratios) >= 1 - 1e-9  # exact on most one-hidden-layer nets
    assert ratios.min() >= 0.9


def test_homogeneous_net_all_patterns_are_realizable():
    """Without biases and with an input as wide as the hidden layer, every pattern occurs."""
    rng = np.random.default_rng(5)
    net = Network.from_weights([rng.normal(size=(4, 4)), rng.normal(size=(2, 4))])
    pb = exact_pattern_bound(net)
    assert pb.n_realizable == 16
    assert pb.max_realizable == pytest.approx(pb.max_all_patterns, rel=1e-12)


def test_exact_pattern_bound_refuses():
    with pytest.raises(NotApplicableError, match="piecewise-linear"):
        exact_pattern_bound(_net(0, (2, 3, 1), "tanh"))
    with pytest.raises(NotApplicableError, match="17"):
        exact_pattern_bound(_net(0, (2, 9, 8, 1), "relu"))
    residual = Network([Affine.create(np.eye(2)), Residual((Affine.create(np.eye(2)), ActivationLayer(rule_from_spec("relu"))))])
    with pytest.raises(NotApplicableError, match="feed-forward"):
        exact_pattern_bound(residual)


def test_lower_bound_below_certified_upper_bound():
    lipsdp = pytest.importorskip("lipsdp")
    net = _net(7, (4, 5, 4, 3), "relu")
    upper = lipsdp.estimate(net, method="lipsdp-neuron").value
    assert gradient_lower_bound(net).value <= upper * (1 + 1e-7)
    assert exact_pattern_bound(net).max_all_patterns <= upper * (1 + 1e-7)
