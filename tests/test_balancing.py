"""Balancing a chain at ECLipsE's feasible point, and repairing an optimum by blending with it."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from conftest import random_network
from lipsdp import bound_methods as bm
from lipsdp import formulations as fm
from lipsdp.certificate import certify
from lipsdp.errors import CertificationError, SolverFailedError
from lipsdp.graph import build_graph
from lipsdp.lower import gradient_lower_bound


def deep_chain(depth: int, width: int, seed: int, gain: float = 1.2) -> lipsdp.Network:
    """ReLU chain with weights N(0, gain²/width): its LipSDP multipliers spread over many orders."""
    rng = np.random.default_rng(seed)
    dims = [width] * depth + [3]
    weights = [rng.normal(0.0, gain / np.sqrt(dims[k]), (dims[k + 1], dims[k])) for k in range(depth)]
    return lipsdp.Network.from_weights(weights, activation="relu")


DELTA = 1e-8  # a violation that raising ρ by TIGHT_INFLATION does not repair on these chains


def program(net: lipsdp.Network):
    return fm.lipsdp_l2(build_graph(net), "neuron")


@pytest.mark.parametrize("seed", range(12))
def test_balancing_maps_the_eclipse_point_to_ones(seed):
    net = random_network(7000 + seed, max_hidden=4, activations=("relu",))
    work, _ = fm.normalise_chain(net)
    rho, ells = bm.eclipse_fast_multipliers(work)
    factors = fm.balancing_factors(rho, ells)
    # ECLipsE-Fast's ReLU rule is homogeneous in each weight, so on the balanced chain its point is all ones
    rho_b, ells_b = bm.eclipse_fast_multipliers(work.scaled(1.0 / factors))
    assert rho_b == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(ells_b, 1.0, rtol=1e-9)


def test_balancing_factors_refuse_degenerate_points():
    assert fm.balancing_factors(0.0, [1.0]) is None
    assert fm.balancing_factors(1.0, [1.0, 0.0]) is None
    assert fm.balancing_factors(np.nan, [1.0]) is None
    np.testing.assert_allclose(fm.balancing_factors(4.0, []), [2.0])


def is_balanced(net: lipsdp.Network) -> bool:
    work, normalisation = fm.normalise_chain(net)
    return bm._balanced_chain(work, normalisation)[0] is not work


@pytest.mark.parametrize("seed", range(16))
def test_balanced_solve_has_the_unbalanced_value(seed, monkeypatch):
    net = random_network(7100 + seed, max_hidden=4)
    monkeypatch.setattr(bm, "BALANCE_MIN_SPREAD", 1.0)  # balance even these shallow chains
    assert is_balanced(net)
    balanced = lipsdp.estimate(net, method="lipsdp-neuron")
    monkeypatch.setattr(bm, "_balanced_chain", lambda work, normalisation: (work, normalisation))
    plain = lipsdp.estimate(net, method="lipsdp-neuron")
    assert balanced.value == pytest.approx(plain.value, rel=1e-6), net.summary()
    lower = gradient_lower_bound(net, n_starts=3, steps=20, seed=seed).value
    assert balanced.value >= lower * (1 - 1e-9)


def test_shallow_chains_keep_the_norm_scaling():
    assert not is_balanced(deep_chain(3, 12, 0))


@pytest.mark.parametrize("seed", range(3))
def test_deep_chain_is_certified_tight_and_above_the_lower_bound(seed, monkeypatch):
    """24 layers: in norm-normalised coordinates the ipm fails on these chains (SolverFailedError today);
    balanced, it certifies without a second solve and without raising ρ by more than 1e-7."""
    net = deep_chain(24, 12, seed)
    assert is_balanced(net)
    balanced = lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm")
    assert balanced.details["margin_retry"] == 0.0  # certified without a second solve
    assert balanced.details["inflation"] <= 1e-7
    lower = gradient_lower_bound(net, n_starts=3, steps=30, seed=seed).value
    assert balanced.value >= lower * (1 - 1e-9)
    monkeypatch.setattr(bm, "_balanced_chain", lambda work, normalisation: (work, normalisation))
    try:
        plain = lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm").value
    except SolverFailedError:
        return
    assert balanced.value <= plain * (1 + 1e-6)  # never looser (the unbalanced solve can stop early)


@pytest.mark.parametrize("seed", range(1, 6))
def test_blend_repairs_a_violated_point_at_a_bounded_cost(seed):
    net = deep_chain(10, 8, seed)
    sdp = program(net)
    y = bm.solve(sdp, "ipm").y
    interior = bm.eclipse_point(net, sdp, bm.INTERIOR_SLACK)
    certify(sdp, interior, max_inflation=0.0)  # the point the blend relies on is strictly feasible
    # shrink every hidden multiplier: F(y) loses definiteness in the deep layers, which ρ reaches weakly
    violated = y.copy()
    hidden = np.ones(sdp.n_vars, bool)
    hidden[sdp.rho] = False
    violated[hidden] *= 1 - DELTA
    with pytest.raises(CertificationError):
        certify(sdp, violated, max_inflation=bm.TIGHT_INFLATION)
    cert, weight = bm._blend_with_interior(sdp, violated, interior)
    assert cert is not None and weight > 0
    assert cert.rho <= violated[sdp.rho] * (1 + 1.01 * bm.INTERIOR_COSTS[-1] + 1e-9)
    certify(sdp, cert.y, max_inflation=0.0)  # what it returns passes the certificate as it stands


def test_blend_refuses_a_point_that_is_not_interior():
    net = deep_chain(6, 6, 0)
    sdp = program(net)
    y = bm.solve(sdp, "ipm").y
    bad = y.copy()
    bad[sdp.rho] *= 0.5  # infeasible, and a "blend" with itself cannot fix that
    assert bm._blend_with_interior(sdp, bad, bad) == (None, 0.0)
    assert bm._blend_with_interior(sdp, bad, None) == (None, 0.0)
