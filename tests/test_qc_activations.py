"""GroupSort / MaxMin / Householder QCs (docs/formulations.md §5): soundness, closed forms, anchors, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

import lipsdp
from lipsdp import activation_registry as registry
from lipsdp.errors import InvalidActivationError
from lipsdp.group_activations import GroupSort, Householder, group_indices
from conftest import load_anchor_weights

SOLVER = "cvxopt"


def _rules():
    for entry in registry.entries():  # every registered activation, with its example parameters
        yield from entry.example_rules()
    yield GroupSort(2)
    yield GroupSort(3, "split")
    yield GroupSort(4, cross_terms="sp")
    yield GroupSort(2, cross_terms="s", descending=False)
    yield Householder(np.array([1.0, -2.0]))
    yield Householder(np.array([0.3, 0.1, -1.0]), "split", cross_terms="s")


@pytest.mark.parametrize("rule", list(_rules()), ids=lambda r: r.describe())
@pytest.mark.parametrize("granularity", ["neuron", "layer"])
def test_qc_holds_on_sampled_pairs(rule, granularity):
    """≥ 10⁴ pairs, random feasible multipliers: [Δv; Δφ]ᵀ Q(μ) [Δv; Δφ] ≥ 0."""
    rng = np.random.default_rng(0)
    m = 12
    basis = rule.qc_basis(m, granularity)
    n = 12_000
    x = rng.normal(size=(n, m)) * rng.exponential(size=(n, 1))
    y = x + rng.normal(size=(n, m)) * rng.exponential(size=(n, 1))
    y[: n // 4] = x[: n // 4] + 1e-3 * rng.normal(size=(n // 4, m))  # close pairs too
    for _ in range(5):
        mu = rng.normal(size=basis.size) * 10
        mu[basis.nonneg] = np.abs(mu[basis.nonneg])
        q = rule.qc_value(x, y, mu, granularity)
        scale = np.sum((x - y) ** 2, axis=1) * np.max(np.abs(mu))
        assert np.min(q / scale) >= -1e-10


def test_every_registered_activation_is_tested():
    tested = {rule.spec.split(":")[0] for rule in _rules() if rule.spec}
    assert tested == set(registry.activation_names())


def test_p_is_redundant_given_gamma_and_s():
    """p-matrix = s-matrix + 2·γ-matrix (so P can be set to 0 without loss)."""
    b = GroupSort(3, cross_terms="sp").qc_basis(3, "neuron")
    cols = b.coefficients.toarray()
    lam, gam, s, p = cols.T
    np.testing.assert_allclose(p, s + 2 * gam)


@pytest.mark.parametrize("g, grouping", [(2, "consecutive"), (3, "split"), (4, "consecutive"), (4, "split")])
def test_forward_and_jacobian(g, grouping):
    rule = GroupSort(g, grouping)
    rng = np.random.default_rng(g)
    v = rng.normal(size=(5, 4 * g))
    out = rule.forward_batch(v)
    idx = group_indices(4 * g, g, grouping)
    for row_in, row_out in zip(v, out):
        for grp in idx:
            np.testing.assert_allclose(row_out[grp], np.sort(row_in[grp])[::-1])
        jac = rule.jacobian(row_in)
        np.testing.assert_allclose(jac @ row_in, rule.forward(row_in))


def test_maxmin_convention_of_the_anchors():
    mm = registry.rule_from_spec("maxmin")
    np.testing.assert_allclose(mm.forward(np.array([1.0, 3.0, 5.0, -2.0])), [3.0, 1.0, 5.0, -2.0])


def test_householder_forward():
    v = np.array([3.0, 4.0])
    rule = Householder(v)
    u = v / 5
    z = np.array([[1.0, 1.0], [-1.0, 0.5]])
    out = rule.forward_batch(z)
    np.testing.assert_allclose(out[0], z[0])
    np.testing.assert_allclose(out[1], z[1] - 2 * (u @ z[1]) * u)
    assert np.allclose(np.linalg.norm(out, axis=1), np.linalg.norm(z, axis=1))


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("g", [2, 3, 4])
@pytest.mark.parametrize("width_groups, depth", [(1, 1), (2, 2), (3, 3)])
def test_orthogonal_groupsort_net_is_exactly_one(g, width_groups, depth):
    n = g * width_groups
    ws = [ortho_group.rvs(n, random_state=10 * g + k) for k in range(depth + 1)]
    net = lipsdp.Network.from_weights(ws, activation=GroupSort(g))
    b = lipsdp.estimate(net, solver=SOLVER)
    assert b.value == pytest.approx(1.0, abs=2e-6)
    assert b.value >= 1.0 - 1e-9


def test_orthogonal_householder_net_is_one():
    ws = [ortho_group.rvs(6, random_state=k) for k in range(3)]
    net = lipsdp.Network.from_weights(ws, activation=Householder(np.array([1.0, 2.0, -0.5])))
    assert lipsdp.estimate(net, solver=SOLVER).value == pytest.approx(1.0, abs=2e-6)


def test_rr_on_one_maxmin_is_sqrt2_and_new_qc_is_one():
    net = lipsdp.Network([lipsdp.Affine.create(np.eye(2)), lipsdp.ActivationLayer(GroupSort(2))])
    assert lipsdp.estimate(net, method="lipsdp-rr", solver=SOLVER).value == pytest.approx(np.sqrt(2), rel=1e-6)
    assert lipsdp.estimate(net, solver=SOLVER).value == pytest.approx(1.0, abs=1e-6)


def test_rr_rewrite_is_the_same_function():
    from lipsdp.rr import residual_relu_network

    rng = np.random.default_rng(3)
    for rule in (GroupSort(2), GroupSort(2, "split", descending=False)):
        net = lipsdp.Network.from_weights([rng.normal(size=(6, 3)), rng.normal(size=(4, 6)), rng.normal(size=(2, 4))],
                                          [rng.normal(size=6), rng.normal(size=4), rng.normal(size=2)], rule)
        x = rng.normal(size=(50, 3))
        np.testing.assert_allclose(residual_relu_network(net)(x), net(x), atol=1e-12)


# ----------------------------------------------------------------------------- published anchors
def _maxmin_net(name, cross="none"):
    return lipsdp.Network.from_weights(load_anchor_weights("maxmin", name, key="W"),
                                       activation=GroupSort(2, cross_terms=cross))


@pytest.mark.parametrize("name, published", [("weights_l2_2fc_16.mat", 22.594),
                                             ("weights_l2_5fc_32.mat", 224.53)])
def test_published_maxmin_anchor(name, published):
    b = lipsdp.estimate(_maxmin_net(name))  # default solver (cvxopt: same value, several times slower)
    assert b.value == pytest.approx(published, rel=1e-3)


@pytest.mark.parametrize("name, published", [("weights_l2_18fc_32.mat", 17432), ("weights_l2_18fc_128.mat", 24271)])
def test_published_maxmin_anchor_18_layers(name, published):
    """Seconds with the default solver: the chain QCs decouple per layer and the ipm solves 18 small blocks."""
    b = lipsdp.estimate(_maxmin_net(name))
    assert b.solver == "ipm"
    assert b.value == pytest.approx(published, rel=1e-3)


def test_file_activation_name_maxmin():
    net = lipsdp.Network.from_weights(load_anchor_weights("maxmin", "weights_l2_2fc_16.mat", key="W"),
                                      activation="maxmin")
    assert isinstance(net.activations[0], GroupSort)


def test_relu_anchor_does_not_regress():
    net = lipsdp.Network.from_weights(load_anchor_weights("lipsdp", "random_weights.mat"), activation="relu")
    assert lipsdp.estimate(net).value == pytest.approx(36.482, rel=1e-3)


# ----------------------------------------------------------------------------- bad input
def test_groupsort_width_not_divisible():
    with pytest.raises(InvalidActivationError, match="not divisible by 3"):
        lipsdp.Network.from_weights([np.ones((4, 2)), np.ones((1, 4))], activation=GroupSort(3))


def test_householder_zero_vector():
    with pytest.raises(InvalidActivationError, match="zero norm"):
        Householder(np.zeros(2))


def test_bad_group_parameters():
    with pytest.raises(InvalidActivationError):
        GroupSort(0)
    with pytest.raises(InvalidActivationError):
        GroupSort(2, grouping="interleaved")
