"""Linear invariants of group activations, the exact subspace SDP, and the residual anchor (docs/formulations.md §5)."""

from __future__ import annotations

import numpy as np
import pytest

from lipsdp.activation_registry import rule_from_spec
import lipsdp
from lipsdp.certificate import certify
from lipsdp.errors import InvalidActivationError
from lipsdp.formulations import lipsdp_l2, restrict_to_invariants
from lipsdp.graph import build_graph
from lipsdp.group_activations import GroupSort, Householder, with_cross_terms
from lipsdp.lower import finite_difference_lower_bound, gradient_lower_bound
from lipsdp.network import ActivationLayer, Affine, Network, Residual
from lipsdp.solver_registry import solve
from conftest import load_anchor_weights

RULES = [GroupSort(2), GroupSort(3, "split"), GroupSort(4), Householder(np.array([1.0, -2.0])),
         Householder(np.array([0.3, 0.1, -1.0]), "split")]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.describe())
def test_invariants_hold_and_directions_span_them(rule):
    """A[Δv; Δφ] = 0 on sampled pairs; Δφ − Δv ∈ range(K); rank(A) + cols(K) = m."""
    rng = np.random.default_rng(1)
    m = 12
    a = rule.linear_invariants(m).toarray()
    k = rule.invariant_directions(m).toarray()
    v1, v2 = rng.normal(size=(2, 500, m)) * rng.exponential(size=(2, 500, 1))
    dv, dphi = v1 - v2, rule.forward_batch(v1) - rule.forward_batch(v2)
    assert np.max(np.abs(np.hstack([dv, dphi]) @ a.T)) <= 1e-12 * np.max(np.abs(dv))
    coef = np.linalg.lstsq(k, (dphi - dv).T, rcond=None)[0]
    assert np.max(np.abs(k @ coef - (dphi - dv).T)) <= 1e-12 * np.max(np.abs(dv))
    assert np.linalg.matrix_rank(a) + k.shape[1] == m
    assert np.max(np.abs(a[:, m:] @ k)) <= 1e-15


def test_slope_rules_have_no_invariant():
    assert rule_from_spec("relu").linear_invariants(4) is None
    assert not rule_from_spec("relu").restrict_to_invariants


def test_exact_rule_has_lambda_only_and_restriction_shrinks_the_lmi():
    rule = GroupSort(2, cross_terms="exact")
    basis = rule.qc_basis(8)
    assert basis.size == 4 and basis.nonneg.all()
    net = Network.from_weights([np.ones((8, 3)), np.ones((2, 8))], activation=rule)
    graph = build_graph(net)
    small = restrict_to_invariants(graph)
    assert small.dim == 3 + 4 and small.basis.shape == (graph.dim, small.dim)
    # the γ/s/p QC terms vanish identically on the subspace
    for g_old, g_new in zip(graph.groups, small.groups):
        lift = g_old.lift(graph.dim) @ small.basis
        np.testing.assert_allclose(lift, g_new.lift(small.dim).toarray(), atol=1e-14)
        q = GroupSort(2, cross_terms="sp").qc_basis(8).coefficients.toarray()
        for j in range(q.shape[1]):
            if j % 4 == 0:
                continue  # λ columns
            qj = q[:, j].reshape(16, 16, order="F")
            assert np.max(np.abs(lift.T @ qj @ lift)) <= 1e-12


def _random_group_net(seed: int, rule, residual: bool = False) -> Network:
    rng = np.random.default_rng(seed)
    n = 4 if rule.group_size in (2, 4) else 6
    if residual:
        layers = [Affine.create(rng.normal(size=(n, 3)))]
        for _ in range(2):
            layers.append(Residual((Affine.create(rng.normal(size=(n, n)) / 2, rng.normal(size=n)),
                                    ActivationLayer(rule))))
        layers.append(Affine.create(rng.normal(size=(2, n))))
        return Network(layers)
    ws = [rng.normal(size=(n, 3)), rng.normal(size=(n, n)), rng.normal(size=(2, n))]
    return Network.from_weights(ws, [rng.normal(size=w.shape[0]) for w in ws], rule)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("residual", [False, True])
def test_exact_is_at_least_as_tight_as_none_and_sound(seed, residual):
    rule = [GroupSort(2), GroupSort(3), Householder(np.array([1.0, 0.5]))][seed % 3]
    net = _random_group_net(seed, rule, residual)
    none = lipsdp.estimate(net).value
    exact = lipsdp.estimate(net, cross_terms="exact")
    assert exact.value <= none * (1 + 1e-6)
    lower = max(gradient_lower_bound(net, n_starts=4, steps=20).value, finite_difference_lower_bound(net, 500).value)
    assert exact.value >= lower * (1 - 1e-9)


def test_exact_certificate_lives_on_the_subspace_of_the_original_graph():
    """Solve on the restricted program of the normalised net; certify on the restricted program of the net."""
    net = with_cross_terms(_random_group_net(3, GroupSort(2), residual=True), "exact")
    sdp = lipsdp_l2(build_graph(net))
    assert sdp.size < build_graph(net).dim
    result = solve(sdp, "cvxopt")
    cert = certify(sdp, result.y)
    assert cert.value == pytest.approx(lipsdp.estimate(net).value, rel=1e-5)


def test_with_cross_terms_rejects_unknown_value():
    with pytest.raises(InvalidActivationError):
        with_cross_terms(_random_group_net(0, GroupSort(2)), "bogus")


# ----------------------------------------------------------------------------- residual anchor
def _res_weights():
    return load_anchor_weights("maxmin", "resweights_5_32.mat", key="W")


def _core(ws, cross):
    """x₁ ↦ x₄ with x_{k+1} = x_k + MaxMin(W_k x_k): the part the published SDP certifies."""
    return Network([Residual((Affine.create(w), ActivationLayer(GroupSort(2, cross_terms=cross)))) for w in ws[1:-1]])


def _split_bound(ws, cross):
    """Published construction: L_core · ‖W₁‖₂ · ‖W₅‖₂ (identity input and output for the core SDP)."""
    return lipsdp.estimate(_core(ws, cross)).value * np.linalg.norm(ws[0], 2) * np.linalg.norm(ws[-1], 2)


def _full(ws, cross="none"):
    return Network([Affine.create(ws[0])] + list(_core(ws, cross).layers) + [Affine.create(ws[-1])])


def test_residual_anchor_split_without_cross_terms():
    assert _split_bound(_res_weights(), "none") == pytest.approx(33.04, rel=1e-3)


@pytest.fixture(scope="module")
def residual_lower():
    ws = _res_weights()
    return gradient_lower_bound(_full(ws), n_starts=8, steps=40).value


def test_residual_anchor_split_with_exact_cross_terms(residual_lower):
    value = _split_bound(_res_weights(), "exact")
    assert value <= 29.755 * (1 + 1e-3)
    assert value >= residual_lower


@pytest.mark.slow
def test_residual_anchor_end_to_end(residual_lower):
    ws = _res_weights()
    end_to_end = lipsdp.estimate(_full(ws)).value
    assert residual_lower <= end_to_end <= _split_bound(ws, "none")
    assert end_to_end == pytest.approx(23.175, rel=1e-3)
    exact = lipsdp.estimate(_full(ws), cross_terms="exact").value
    assert residual_lower <= exact <= min(end_to_end, _split_bound(ws, "exact")) * (1 + 1e-6)
