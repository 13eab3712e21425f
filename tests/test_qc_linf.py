"""ℓ∞ bounds per output row (docs/formulations.md §6): closed form, options, soundness, API."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from lipsdp.errors import NotApplicableError, ShapeMismatchError
from lipsdp.group_activations import GroupSort
from lipsdp.linf import linf_lower_bound
from conftest import load_anchor_weights


def test_no_hidden_layer_is_the_row_l1_norm():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5))
    net = lipsdp.Network.from_weights([w])
    b = lipsdp.estimate(net, norm="inf")
    expected = np.abs(w).sum(axis=1)
    for i in range(3):
        assert b.details["per_row"][str(i)] == pytest.approx(expected[i], rel=1e-6)
        assert b.details["per_row"][str(i)] >= expected[i] * (1 - 1e-12)
    assert b.value == pytest.approx(expected.max(), rel=1e-6)
    one = lipsdp.estimate(net, norm="inf", output_row=1)
    assert list(one.details["per_row"]) == ["1"] and one.value == pytest.approx(expected[1], rel=1e-6)
    diff = lipsdp.estimate(net, norm="inf", rows=(0, 2))
    assert diff.value == pytest.approx(np.abs(w[0] - w[2]).sum(), rel=1e-6)


def test_bad_row_options():
    net = lipsdp.Network.from_weights([np.ones((2, 3))])
    with pytest.raises(ShapeMismatchError):
        lipsdp.estimate(net, norm="inf", output_row=5)
    with pytest.raises(NotApplicableError):
        lipsdp.estimate(net, norm="inf", rows=(1, 1))
    with pytest.raises(NotApplicableError):
        lipsdp.estimate(net, norm="inf", rows=(0, 1), output_row=0)


def _random_net(seed: int, activation):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(4, 6)) / 2, rng.normal(size=(3, 4))]
    return lipsdp.Network.from_weights(ws, [rng.normal(size=w.shape[0]) for w in ws], activation)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("activation", ["relu", GroupSort(2), GroupSort(2, cross_terms="exact")],
                         ids=["relu", "maxmin", "maxmin-exact"])
def test_linf_bound_is_above_the_finite_difference_bound(seed, activation):
    net = _random_net(seed, activation)
    b = lipsdp.estimate(net, norm="inf")
    lower = linf_lower_bound(net)
    assert lower > 0 and b.value >= lower * (1 - 1e-9)
    naive = lipsdp.estimate(net, method="naive", norm="inf").value
    assert b.value <= naive * (1 + 1e-6)
    row = lipsdp.estimate(net, norm="inf", rows=(0, 1))
    assert row.value >= linf_lower_bound(net, rows=(0, 1)) * (1 - 1e-9)


def test_exact_cross_terms_tighten_linf():
    net = _random_net(7, GroupSort(2))
    none = lipsdp.estimate(net, norm="inf").value
    exact = lipsdp.estimate(net, norm="inf", cross_terms="exact").value
    assert linf_lower_bound(net) <= exact <= none * (1 + 1e-6)


def test_compare_with_linf_norm():
    net = _random_net(1, GroupSort(2))
    table = lipsdp.compare(net, methods=["naive", "lipsdp-neuron", "lower", "exact"], norm="inf")
    assert list(table["method"]) == ["naive", "lipsdp-neuron", "lower"]
    assert set(table["norm"]) == {"inf"}
    values = dict(zip(table["method"], table["value"]))
    assert values["lower"] <= values["lipsdp-neuron"] <= values["naive"] * (1 + 1e-6)
    assert (table["gap"] >= 1 - 1e-9).all()
    l2 = lipsdp.compare(net, methods=["naive"])
    assert list(l2["norm"]) == ["2"]


@pytest.mark.slow
def test_linf_anchor_first_row():
    ws = load_anchor_weights("maxmin", "weights_linf_2fc_16.mat", key="W")
    net = lipsdp.Network.from_weights(ws, activation=GroupSort(2))
    b = lipsdp.estimate(net, norm="inf", output_row=0)
    naive = lipsdp.estimate(net, method="naive", norm="inf").value
    assert linf_lower_bound(net, output_row=0) <= b.value <= naive


@pytest.mark.parametrize("seed", range(12))
def test_linf_lower_bound_never_exceeds_the_exact_constant_of_a_monotone_net(seed):
    """Non-negative weights and hardsigmoid (slope 1/6 on [-3, 3]): the ℓ∞ constant is exactly
    ‖(1/6)^k W_l ⋯ W_1‖₁ when every pre-activation can sit in the linear piece.  The net's output
    is about 0.5 while its constant is ~1e-7, the regime where a difference quotient's cancellation
    error exceeds the gap to the constant (fuzz seed 34021 found such a "lower bound" above it)."""
    rng = np.random.default_rng(900 + seed)
    widths = [3, 4, 4, 1]
    weights = [0.05 * rng.uniform(size=(widths[k + 1], widths[k])) for k in range(len(widths) - 1)]
    net = lipsdp.Network.from_weights(weights, None, "hardsigmoid")
    product = weights[0]
    for w in weights[1:]:
        product = w @ (product / 6.0)
    exact = float(np.sum(np.abs(product)))
    assert linf_lower_bound(net) <= exact * (1 + 1e-12)
    assert linf_lower_bound(net) >= exact * (1 - 1e-9)  # the points near 0 are in the linear pieces
