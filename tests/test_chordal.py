"""The chordal (block-tridiagonal) barrier solver, lipsdp/chordal.py, against the ipm and lower bounds."""

import numpy as np
import pytest
import scipy.sparse as sp

import lipsdp
from lipsdp import formulations as fm
from lipsdp.certificate import certify
from lipsdp.chordal import chain_structure, chordal_solve
from lipsdp.errors import InvalidOptionError, NotApplicableError, SolverFailedError
from lipsdp.graph import build_graph
from lipsdp.lower import gradient_lower_bound
from lipsdp.runtime import blas_threads
from lipsdp.sdp import SDP, LMIBlock, QuadTerm, identity_basis, selector
from lipsdp.solver_registry import solve

REL_TOL = 1e-6
SLOPE_RESTRICTED = ("relu", "leaky_relu", "prelu", "elu", "softplus", "tanh", "hardtanh", "sigmoid", "hardsigmoid")
GROUPS = ("maxmin", "groupsort")


def _chain(seed: int) -> lipsdp.Network:
    """A random chain: 2–12 weight layers, widths 1–16 (smaller in deeper chains, to stay fast)."""
    rng = np.random.default_rng(7000 + seed)
    depth = int(rng.integers(2, 13))
    top = 16 if depth == 2 else (8 if depth <= 4 else 4)
    widths = [int(rng.integers(1, top + 1)) for _ in range(depth + 1)]
    scale = float(np.exp(rng.uniform(-1.0, 1.0)))
    weights = [scale * rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(depth)]
    activation = SLOPE_RESTRICTED[seed % len(SLOPE_RESTRICTED)]
    return lipsdp.Network.from_weights(weights, None, activation)


def _group_chain(seed: int) -> lipsdp.Network:
    rng = np.random.default_rng(8000 + seed)
    depth = int(rng.integers(2, 6))
    hidden = [2 * int(rng.integers(1, 5)) for _ in range(depth - 1)]  # pairs for MaxMin/GroupSort
    widths = [int(rng.integers(1, 7))] + hidden + [int(rng.integers(1, 4))]
    weights = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(depth)]
    return lipsdp.Network.from_weights(weights, None, GROUPS[seed % len(GROUPS)])


def _agree(net: lipsdp.Network, **options) -> float:
    ours = lipsdp.estimate(net, method="lipsdp-neuron", solver="chordal", **options)
    ref = lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm", **options)
    assert ours.solver == "chordal" and ref.solver == "ipm"
    assert abs(ours.value - ref.value) <= REL_TOL * ref.value + 1e-12, (ours.value, ref.value)
    return ours.value


@pytest.mark.parametrize("seed", range(54))
def test_random_chains_agree_with_ipm_and_lie_above_a_lower_bound(seed):
    net = _chain(seed)
    value = _agree(net)
    lower = gradient_lower_bound(net, n_starts=4, steps=30, seed=seed).value
    assert value >= lower * (1 - 1e-12), (value, lower)


@pytest.mark.parametrize("seed", range(6))
def test_group_activation_chains_agree_with_ipm(seed):
    """MaxMin/GroupSort with the per-pair QCs (no invariant-subspace restriction) keep the chain structure."""
    net = _group_chain(seed)
    value = _agree(net, cross_terms="none")
    assert value >= gradient_lower_bound(net, n_starts=4, steps=30, seed=seed).value * (1 - 1e-12)


def _deep_sdp(depth: int, width: int):
    rng = np.random.default_rng(depth * 1000 + width)
    weights = [1.2 * rng.normal(size=(width, width)) / np.sqrt(width) for _ in range(depth)]
    net = lipsdp.Network.from_weights(weights, None, "relu")
    work, _ = fm.normalise_chain(net)
    return fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")


def test_deep_chain_converges_to_strictly_feasible_multipliers():
    sdp = _deep_sdp(24, 4)
    with blas_threads(1):
        res = chordal_solve(sdp, tol=1e-8)
    z = sdp.blocks[0].evaluate(res.y)
    # every iterate is interior: the last one is PSD up to rounding, and certifies without a real repair
    assert np.linalg.eigvalsh(z)[0] > -1e-14 * np.abs(z).max()
    assert certify(sdp, res.y, max_inflation=1e-9).value > 0
    assert res.gap_bound <= 1e-8 * res.objective
    assert np.all(res.y[sdp.nonneg] > 0)


def test_structure_detection_of_a_chain():
    sdp = _deep_sdp(5, 3)
    structure = chain_structure(sdp)
    assert structure.n_blocks == 5  # the input and the four hidden layers
    assert np.all(structure.widths == 3)
    assert structure.var_clique[0] == 0  # ρ lives on the input block
    assert set(structure.var_clique[1:]) == {0, 1, 2, 3}


def _two_var_sdp(constant: np.ndarray, lifts: list) -> SDP:
    d = constant.shape[0]
    terms = tuple(QuadTerm(sp.csr_matrix(g), identity_basis(g.shape[0]), np.array([i]), +1.0)
                  for i, g in enumerate(lifts))
    c = np.zeros(len(lifts))
    c[0] = 1.0
    return SDP(len(lifts), c, [LMIBlock(d, constant, terms)], np.ones(len(lifts), bool), 0, np.sqrt)


def test_non_chain_sdps_raise_typed_errors():
    # a term coupling blocks 0 and 2 (three blocks): not block tridiagonal
    lift = np.zeros((1, 3))
    lift[0, [0, 2]] = 1.0
    sdp = _two_var_sdp(-np.eye(3) * 0.1, [selector(1, 3, 0).toarray(), selector(1, 3, 1).toarray(), lift])
    with pytest.raises(NotApplicableError):
        chain_structure(sdp)
    with pytest.raises(NotApplicableError):
        solve(sdp, solver="chordal")
    two_blocks = SDP(1, np.ones(1), [LMIBlock(1, np.zeros((1, 1)), ()), LMIBlock(1, np.zeros((1, 1)), ())],
                     np.ones(1, bool), 0, np.sqrt)
    with pytest.raises(NotApplicableError):
        chain_structure(two_blocks)


def test_residual_network_is_posed_on_coarser_blocks():
    """A skip connection couples non-adjacent layers; the detected blocks merge them, and the LMI is
    still block tridiagonal in those blocks."""
    from lipsdp.network import Affine, Residual

    rng = np.random.default_rng(0)
    relu = lipsdp.Network.from_weights([np.eye(3), np.eye(3)], None, "relu").layers[1]
    branch = [Affine.create(rng.normal(size=(3, 3))), relu, Affine.create(rng.normal(size=(3, 3)))]
    net = lipsdp.Network([Affine.create(rng.normal(size=(3, 3))), relu, Residual(branch),
                          Affine.create(rng.normal(size=(2, 3)))])
    _agree(net)


def test_restricted_group_chain_is_refused():
    """GroupSort on its invariant subspace re-coordinatises the layers: the LMI is not a chain."""
    net = _group_chain(1)
    with pytest.raises(NotApplicableError):
        lipsdp.estimate(net, method="lipsdp-neuron", solver="chordal", cross_terms="exact")


def test_infeasible_lmi_is_typed():
    # Z = diag(ρ, −1): no multiplier reaches the second coordinate
    sdp = _two_var_sdp(np.diag([0.0, -1.0]), [selector(1, 2, 0).toarray()])
    with pytest.raises(SolverFailedError) as info:
        chordal_solve(sdp)
    assert info.value.status == "infeasible"


def test_iteration_limit_and_options_are_typed():
    sdp = _deep_sdp(4, 4)
    with pytest.raises(SolverFailedError) as info:
        chordal_solve(sdp, max_iters=3)
    assert info.value.status == "max-iterations"
    with pytest.raises(InvalidOptionError):
        solve(sdp, solver="chordal", tolerance=1e-6)


def test_layerwise_method_solves_the_one_block_form():
    net = _chain(3)
    one = lipsdp.estimate(net, method="lipsdp-neuron")
    layerwise = lipsdp.estimate(net, method="lipsdp-neuron-layerwise")
    assert layerwise.value == pytest.approx(one.value, rel=1e-9)
    chordal = lipsdp.estimate(net, method="lipsdp-neuron-layerwise", solver="chordal")
    assert chordal.value == pytest.approx(one.value, rel=REL_TOL)
