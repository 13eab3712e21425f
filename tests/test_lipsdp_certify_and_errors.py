"""Certification repairs or refuses; every typed error names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from conftest import random_network
from lipsdp import errors
from lipsdp.certificate import certify
from lipsdp.formulations import lipsdp_l2
from lipsdp.graph import build_graph
from lipsdp.solver_registry import resolve_solver, solve


def _solved(seed: int):
    net = random_network(seed, max_hidden=2, max_width=5)
    sdp = lipsdp_l2(build_graph(net), "neuron")
    return sdp, solve(sdp, "cvxopt")


@pytest.mark.parametrize("support", ["contiguous", "scattered"])
def test_term_assembly_equals_the_dense_product(support):
    """Dense-panel and sparse-selector lifts assemble sign·GᵀQ(y)G and |G|ᵀ|Q(y)||G| exactly (up to
    rounding) on contiguous and scattered column supports; a term whose variables are zero adds nothing."""
    import scipy.sparse as sp

    from lipsdp.sdp import LMIBlock, QuadTerm, identity_basis, selector, symmetric_basis

    rng = np.random.default_rng(5)
    d, r = 40, 12
    cols = np.arange(8, 8 + 2 * r) if support == "contiguous" else np.sort(rng.choice(d, 2 * r, replace=False))
    panel = np.zeros((2 * r, d))
    panel[:r, cols[:r]] = rng.normal(size=(r, r))  # weight rows
    panel[r + np.arange(r), cols[r:]] = 1.0  # selector rows beside them
    dense_term = QuadTerm(sp.csr_matrix(panel), symmetric_basis(2 * r)[:, :30], np.arange(30), -1.0)
    sel_term = QuadTerm(selector(30, d, 5), identity_basis(30), np.array([30]), +1.0)
    y = rng.normal(size=31)
    for term in (dense_term, sel_term):
        g = term.lift.toarray() if sp.issparse(term.lift) else term.lift
        q = term.small_matrix(y).toarray()
        assert np.allclose(term.evaluate(y), term.sign * g.T @ q @ g, rtol=0, atol=1e-12)
        assert np.allclose(term.evaluate(y, absolute=True), np.abs(g).T @ np.abs(q) @ np.abs(g), rtol=0, atol=1e-12)
    block = LMIBlock(d, np.eye(d), (dense_term, sel_term))
    y_sel_only = np.zeros(31)
    y_sel_only[30] = 2.0
    assert np.array_equal(block.evaluate(y_sel_only), 0.5 * (np.eye(d) + sel_term.evaluate(y_sel_only)
                                                                 + (np.eye(d) + sel_term.evaluate(y_sel_only)).T))
    assert not np.any(dense_term.evaluate(y_sel_only))


@pytest.mark.parametrize("seed", range(5))
def test_slightly_infeasible_multipliers_are_repaired_by_raising_rho(seed):
    sdp, result = _solved(seed)
    optimum = certify(sdp, result.y)
    y = result.y.copy()
    y[sdp.rho] *= 1 - 1e-6  # below the optimum: the LMI is violated
    repaired = certify(sdp, y)
    assert repaired.inflation > 0
    assert repaired.value >= optimum.value * (1 - 1e-8)
    f = sdp.blocks[0].evaluate(repaired.y)
    assert np.linalg.eigvalsh(f)[0] >= -1e-12 * np.abs(f).max()


@pytest.mark.parametrize("seed", range(3))
def test_multipliers_that_cannot_be_repaired_are_refused(seed):
    sdp, result = _solved(10 + seed)
    with pytest.raises(errors.CertificationError, match="not a certified bound"):
        certify(sdp, np.zeros_like(result.y) + np.eye(sdp.n_vars)[sdp.rho] * result.y[sdp.rho])
    bad = result.y.copy()
    bad[1] = np.nan
    with pytest.raises(errors.CertificationError, match="not finite"):
        certify(sdp, bad)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")  # cvxpy's warning is the point of the test
def test_an_inaccurate_solve_is_never_a_bound():
    net = random_network(7, max_hidden=3, max_width=8)
    with pytest.raises(errors.SolverFailedError) as info:
        lipsdp.estimate(net, solver="scs", max_iters=3)
    assert info.value.status in {"optimal_inaccurate", "infeasible_inaccurate", "unbounded_inaccurate", "user_limit",
                                 "infeasible", "unbounded"}


def test_unknown_method_lists_the_known_ones():
    net = random_network(0)
    with pytest.raises(errors.UnknownMethodError, match="lipsdp-network") as info:
        lipsdp.estimate(net, method="lipsdp-network")
    assert "lipsdp-neuron" in str(info.value)


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(errors.UnknownSolverError, match="gurobi") as info:
        lipsdp.estimate(random_network(0), solver="gurobi")
    assert "cvxopt" in str(info.value)


def test_mosek_without_licence_is_a_licence_error_naming_usable_solvers():
    from lipsdp.solver_registry import mosek_problem

    if mosek_problem() is None:
        pytest.skip("MOSEK is licensed here")
    with pytest.raises(errors.SolverUnavailableError) as info:
        resolve_solver("mosek")
    assert "cvxopt" in str(info.value)
    if "licen" in mosek_problem().lower():
        assert isinstance(info.value, errors.LicenseError)


@pytest.mark.mosek
def test_mosek_solves_when_licensed():
    from lipsdp.solver_registry import mosek_problem

    if mosek_problem() is not None:
        pytest.skip(mosek_problem())
    net = random_network(3)
    assert lipsdp.estimate(net, solver="mosek").value == pytest.approx(lipsdp.estimate(net).value, rel=1e-5)


def test_nan_weights_are_rejected_with_the_layer_named():
    w = np.ones((3, 2))
    w[1, 1] = np.nan
    with pytest.raises(errors.InvalidWeightsError, match="layer1"):
        lipsdp.Network.from_weights([w, np.ones((1, 3))])


def test_shape_mismatch_names_the_layer():
    with pytest.raises(errors.ShapeMismatchError, match="layer2.*expects input width 4.*outputs 3"):
        lipsdp.Network.from_weights([np.ones((3, 2)), np.ones((1, 4))])


def test_bad_slope_bounds_are_rejected():
    from lipsdp.activations import SlopeRestricted

    with pytest.raises(errors.InvalidActivationError, match="alpha <= beta"):
        SlopeRestricted(1.0, 0.0, "backwards")
    act = SlopeRestricted(np.zeros(3), np.ones(3), "per-neuron")
    with pytest.raises(errors.InvalidActivationError, match="length 3.*width is 4"):
        lipsdp.Network.from_weights([np.ones((4, 2)), np.ones((1, 4))], activation=act)


def test_chain_only_methods_refuse_residual_networks():
    from lipsdp.network import ActivationLayer, Affine, Residual
    from lipsdp.activation_registry import rule_from_spec

    net = lipsdp.Network([
        Affine.create(np.eye(2)),
        Residual((Affine.create(np.ones((2, 2))), ActivationLayer(rule_from_spec("relu")), Affine.create(np.eye(2)))),
        Affine.create(np.ones((1, 2))),
    ])
    with pytest.raises(errors.NotApplicableError, match="feed-forward"):
        lipsdp.estimate(net, method="eclipse-fast")


def test_per_neuron_slope_bounds_tighten_the_bound():
    """Slopes of neurons 3-5 in [0, 1/2] ⇔ slope [0, 1] with their outgoing weights halved (exact for the SDP)."""
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=(6, 3)), rng.normal(size=(2, 6))]
    from lipsdp.activation_registry import rule_from_spec
    from lipsdp.activations import SlopeRestricted

    full = lipsdp.estimate(lipsdp.Network.from_weights(weights, activation="relu")).value
    beta = np.array([1, 1, 1, 0.5, 0.5, 0.5])
    tight_act = SlopeRestricted(np.zeros(6), beta, "relu-local", rule_from_spec("relu").fn, rule_from_spec("relu").derivative)
    tight = lipsdp.estimate(lipsdp.Network.from_weights(weights, activation=tight_act)).value
    halved = lipsdp.estimate(lipsdp.Network.from_weights([weights[0], weights[1] * beta])).value
    assert tight < full
    assert tight == pytest.approx(halved, rel=1e-6)
