"""Known answers: spectral norms, published anchors, the unsound-"Network" counterexample."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from conftest import load_anchor_weights

SDP_METHODS = ("lipsdp-neuron", "lipsdp-layer", "eclipse-fast", "lipsdp-neuron-layerwise")


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2), (6, 6)])
@pytest.mark.parametrize("method", ("naive",) + SDP_METHODS)
def test_one_linear_layer_is_its_spectral_norm(shape, method):
    w = np.random.default_rng(sum(shape)).normal(size=shape)
    sigma = np.linalg.norm(w, 2)
    b = lipsdp.estimate(lipsdp.Network.from_weights([w]), method=method)
    assert sigma * (1 - 1e-12) <= b.value <= sigma * (1 + 1e-6)


def _anchor_net(name: str) -> lipsdp.Network:
    return lipsdp.Network.from_weights(load_anchor_weights("lipsdp", name), activation="relu")


@pytest.mark.parametrize(
    "name, method, options, published",
    [
        ("random_weights.mat", "lipsdp-neuron", {}, 36.482),
        ("random_weights.mat", "lipsdp-layer", {}, 39.839),
        ("random_weights.mat", "lipsdp-neuron", {"split": 2}, 37.668),
        ("random_weights.mat", "naive", {}, 43.306),
        ("mnist_weights.mat", "lipsdp-neuron", {}, 24.366),
        ("mnist_weights.mat", "naive", {}, 31.50),
    ],
)
def test_published_anchor_values(name, method, options, published):
    b = lipsdp.estimate(_anchor_net(name), method=method, **options)
    assert b.value == pytest.approx(published, rel=1e-3)


def test_anchor_layerwise_form_equals_one_block_form():
    net = _anchor_net("random_weights.mat")
    one_block = lipsdp.estimate(net, method="lipsdp-neuron")
    layerwise = lipsdp.estimate(net, method="lipsdp-neuron-layerwise")
    assert layerwise.value == pytest.approx(one_block.value, rel=1e-6)


def test_lipsdp_network_counterexample_stays_above_true_constant():
    """docs/formulations.md §1: "LipSDP-Network" reports 0.901 on this net; a linear region has Jacobian norm 1.804."""
    w1 = np.array([[0.5614, 0.2222], [0.3716, 1.3489], [0.4522, 1.3218]])
    b1 = np.array([-0.6138, -0.5221, -0.1218])
    w2 = np.array([[0.1637, -0.6522, 1.2441]])
    net = lipsdp.Network.from_weights([w1, w2], [b1, np.zeros(1)], "relu")
    from lipsdp.lower import exact_pattern_bound

    exact = exact_pattern_bound(net)
    assert exact.max_realizable == pytest.approx(1.804, abs=1e-3)
    for method in SDP_METHODS + ("naive",):
        assert lipsdp.estimate(net, method=method).value >= exact.max_realizable * (1 - 1e-9)
    assert "lipsdp-network" not in lipsdp.methods()


@pytest.mark.parametrize("depth", [1, 4, 8])
@pytest.mark.parametrize("method", SDP_METHODS)
def test_scalar_sigmoid_chain_is_exact(depth, method):
    """A width-1 sigmoid chain without biases has L = Π|w_k| / 4^depth (every slope 1/4 at x = 0),
    and the SDP is exact on it.  Deep chains test the slope normalisation: without it the
    multipliers spread over 4^(2·depth) and the solvers stalled or returned loose bounds."""
    ws = [np.array([[w]]) for w in np.random.default_rng(depth).uniform(0.5, 2.0, size=depth + 1)]
    net = lipsdp.Network.from_weights(ws, activation="sigmoid")
    true = float(np.prod([abs(w[0, 0]) for w in ws])) / 4**depth
    b = lipsdp.estimate(net, method=method)
    assert true * (1 - 1e-9) <= b.value <= true * (1 + 1e-6), (b.value, true)

