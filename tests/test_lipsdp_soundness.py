"""Soundness on many random networks: upper bounds are ordered and above lower bounds."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from conftest import random_network
from lipsdp.lower import exact_pattern_bound, gradient_lower_bound

N_NETS = 200
BATCH = 20
REL = 1e-6  # relative tolerance between two certified SDP values (solver accuracy)


@pytest.mark.parametrize("start", range(0, N_NETS, BATCH))
def test_upper_bounds_are_ordered_and_above_lower_bounds(start):
    for seed in range(start, start + BATCH):
        net = random_network(seed)
        naive = lipsdp.estimate(net, method="naive").value
        layer = lipsdp.estimate(net, method="lipsdp-layer")
        neuron = lipsdp.estimate(net, method="lipsdp-neuron")
        eclipse = lipsdp.estimate(net, method="eclipse-fast").value
        lower = gradient_lower_bound(net, n_starts=4, steps=30, seed=seed).value
        context = f"seed {seed}: {net.summary()}"
        assert naive >= layer.value * (1 - REL), context
        assert layer.value >= neuron.value * (1 - REL), context
        assert eclipse >= neuron.value * (1 - REL), context
        assert neuron.value >= lower * (1 - 1e-9), context
        for b in (layer, neuron):
            assert b.value >= b.raw_value * (1 - 1e-6), context  # certification never lowers the bound
            assert b.certificate_margin >= -1e-9 * max(1.0, b.value**2), context


@pytest.mark.parametrize("seed", range(40))
def test_neuron_bound_covers_every_activation_pattern_on_tiny_relu_nets(seed):
    net = random_network(1000 + seed, max_hidden=2, max_width=6, activations=("relu", "leaky_relu"))
    if sum(net.widths[1:-1]) > 16:
        pytest.skip("too many hidden neurons for enumeration")
    exact = exact_pattern_bound(net)
    neuron = lipsdp.estimate(net, method="lipsdp-neuron").value
    assert exact.max_realizable <= exact.max_all_patterns * (1 + 1e-12)
    # LipSDP-Neuron's QC covers every diagonal slope matrix in the box, realizable or not
    assert neuron >= exact.max_all_patterns * (1 - 1e-7)


@pytest.mark.parametrize("seed", range(12))
def test_layerwise_form_has_the_same_optimum(seed):
    net = random_network(2000 + seed, max_hidden=3, max_width=6)
    one_block = lipsdp.estimate(net, method="lipsdp-neuron").value
    layerwise = lipsdp.estimate(net, method="lipsdp-neuron-layerwise").value
    assert layerwise == pytest.approx(one_block, rel=1e-5)


@pytest.mark.parametrize("seed", range(12))
def test_exact_reductions_do_not_change_the_value(seed):
    rng = np.random.default_rng(3000 + seed)
    n0, n1, n2 = int(rng.integers(5, 12)), int(rng.integers(1, 4)), int(rng.integers(2, 6))
    # n0 > n1: the input SVD reduction really removes dimensions; several outputs for the output reduction
    weights = [rng.normal(size=(n1, n0)), rng.normal(size=(n2, n1)), rng.normal(size=(4, n2))]
    net = lipsdp.Network.from_weights(weights, activation=str(rng.choice(["relu", "tanh", "leaky_relu"])))
    for method in ("lipsdp-neuron", "lipsdp-layer"):
        reduced = lipsdp.estimate(net, method=method, reduce=True).value
        plain = lipsdp.estimate(net, method=method, reduce=False).value
        assert reduced == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_homogeneity_of_each_layer(seed):
    net = random_network(4000 + seed, max_hidden=2, max_width=6)
    rng = np.random.default_rng(seed)
    base = lipsdp.estimate(net, method="lipsdp-neuron").value
    k = int(rng.integers(0, len(net.weights)))
    c = float(rng.choice([-3.0, 0.25, 7.0]))
    factors = [1.0] * len(net.weights)
    factors[k] = c
    scaled = lipsdp.estimate(net.scaled(factors), method="lipsdp-neuron").value
    assert scaled == pytest.approx(abs(c) * base, rel=1e-6)
