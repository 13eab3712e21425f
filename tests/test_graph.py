"""The signal graph and the ℓ2 program built from it: sparse structure, known answers, slack sizing.

The graph stores each ``P_k`` as a CSR matrix and the ℓ2 program computes only the non-zero block
of ``F⁰ = −CᵀC``; these tests check both against dense constructions from first principles.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lipsdp
from lipsdp import formulations as fm
from lipsdp.activation_registry import rule_from_spec
from lipsdp.banded_certificate import banded_form
from lipsdp.decompose import _component_labels, block_components
from lipsdp.graph import ActivationGroup, build_graph, canonical_csr
from lipsdp.bound_methods import MAX_CLOSED_FORM_SLACK, closed_form_slacks, eclipse_fast_multipliers
from lipsdp.network import ActivationLayer, Affine, Implicit, Network, Residual
from lipsdp.rounding import UNIT_ROUNDOFF
from lipsdp.sdp import LMIBlock, QuadTerm, selector, symmetric_basis


def _chain(widths, seed=0, activation="relu") -> Network:
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0.0, 1.2 / np.sqrt(widths[k]), (widths[k + 1], widths[k])) for k in range(len(widths) - 1)]
    return Network.from_weights(ws, None, activation)


def _residual(seed=0) -> Network:
    rng = np.random.default_rng(seed)
    relu = ActivationLayer(rule_from_spec("relu"))
    branch = (Affine.create(rng.normal(size=(5, 4))), relu, Affine.create(rng.normal(size=(4, 5))))
    return Network([Affine.create(rng.normal(size=(4, 3)), rng.normal(size=4)), relu, Residual(branch),
                    ActivationLayer(rule_from_spec("tanh")), Residual(branch), Affine.create(rng.normal(size=(2, 4)))])


def _is_canonical(mat) -> bool:
    return sp.isspmatrix_csr(mat) and mat.has_canonical_format and bool(np.all(mat.data != 0))


def test_chain_pre_maps_are_the_weights_on_the_previous_layer():
    """``P_k = W_k E_{k−1}``: the weight on the previous group's outputs, zero elsewhere (so nnz is linear in depth)."""
    widths = [3, 5, 4, 6, 2]
    net = _chain(widths, 1)
    graph = build_graph(net)
    starts = np.r_[0, np.cumsum(widths[:-1])]
    assert graph.dim == sum(widths[:-1])
    for k, (group, w) in enumerate(zip(graph.groups, net.weights)):
        assert _is_canonical(group.pre) and group.offset == starts[k + 1]
        expected = np.zeros((w.shape[0], graph.dim))
        expected[:, starts[k]:starts[k] + w.shape[1]] = w
        np.testing.assert_array_equal(group.pre.toarray(), expected)
    expected_out = np.zeros((2, graph.dim))
    expected_out[:, starts[-2]:] = net.weights[-1]
    np.testing.assert_array_equal(graph.output, expected_out)


@pytest.mark.parametrize("make", [lambda: _chain([3, 6, 6, 2], 2, "tanh"), _residual], ids=["chain", "residual"])
def test_graph_forward_matches_the_network(make):
    net = make()
    x = np.random.default_rng(3).normal(size=(7, net.input_dim))
    np.testing.assert_allclose(build_graph(net).forward(x), net(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: _chain([3, 6, 6, 2], 2), _residual], ids=["chain", "residual"])
def test_lifts_and_constant_equal_their_dense_definitions(make):
    """``G_k = [P_k; E_k]`` and ``F⁰ = −CᵀC`` (dense ndarray) exactly as the dense formulas give them."""
    graph = build_graph(make())
    sdp = fm.lipsdp_l2(graph, "neuron")
    (block,) = sdp.blocks
    d = graph.dim
    assert type(block.constant) is np.ndarray and block.constant.shape == (d, d)
    np.testing.assert_array_equal(block.constant, -graph.output.T @ graph.output)
    for group, term in zip(graph.groups, block.terms[1:]):
        select = np.zeros((group.width, d))
        select[np.arange(group.width), group.offset + np.arange(group.width)] = 1.0
        assert _is_canonical(term.lift)
        np.testing.assert_array_equal(term.lift.toarray(), np.vstack([group.pre.toarray(), select]))


def test_activation_group_stores_any_pre_as_canonical_csr():
    dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, -0.0]])
    group = ActivationGroup(dense, np.zeros(2), 3, rule_from_spec("relu"))
    assert _is_canonical(group.pre) and group.pre.nnz == 2
    np.testing.assert_array_equal(group.pre.toarray(), dense)
    stored_zero = sp.csr_matrix((np.array([0.0, 3.0]), np.array([0, 2]), np.array([0, 2])), shape=(1, 3))
    assert canonical_csr(stored_zero).nnz == 1 and stored_zero.nnz == 2  # the caller's matrix is not modified


def test_implicit_layer_pre_holds_its_self_coupling():
    """An implicit group's ``P_k`` has ``W`` on its own outputs and ``U`` times the incoming signal."""
    rng = np.random.default_rng(4)
    w_in, u = rng.normal(size=(3, 2)), rng.normal(size=(4, 3))
    w_self = 0.2 * np.eye(4)
    net = Network([Affine.create(w_in), ActivationLayer(rule_from_spec("relu")),
                   Implicit.create(w_self, u, rule_from_spec("relu")), Affine.create(rng.normal(size=(1, 4)))])
    graph = build_graph(net)
    group = graph.groups[1]
    expected = np.zeros((4, graph.dim))
    expected[:, 2:5] = u
    expected[:, 5:9] = w_self
    np.testing.assert_array_equal(group.pre.toarray(), expected)


def test_constant_coupling_joins_components():
    """Two decoupled terms are one component once ``F⁰`` couples them (taken from ``F⁰``'s non-zeros)."""
    terms = (QuadTerm(selector(2, 4, 0), symmetric_basis(2), np.arange(3)),
             QuadTerm(selector(2, 4, 2), symmetric_basis(2), np.arange(3, 6)))
    apart = LMIBlock(4, np.zeros((4, 4)), terms)
    coupled = np.zeros((4, 4))
    coupled[1, 2] = coupled[2, 1] = 0.5
    assert [p.tolist() for p in block_components(apart)] == [[0, 1], [2, 3]]
    assert [p.tolist() for p in block_components(LMIBlock(4, coupled, terms))] == [[0, 1, 2, 3]]
    coord, rows = _component_labels(LMIBlock(4, coupled, terms))
    assert coord.tolist() == [0] * 4 and [r.tolist() for r in rows] == [[0, 0], [0, 0]]


def test_closed_form_slacks_follow_the_certificate_used():
    """First slack ``16 N m u``: ``m = p + 2`` for a banded block, ``N + 1`` for a dense one; ×100 up to the cap."""
    deep = fm.lipsdp_l2(build_graph(_chain([24] * 60 + [2])), "neuron")  # N = 1440, banded
    banded = banded_form(deep.blocks[0])
    assert banded is not None
    n = deep.size
    slacks = closed_form_slacks(deep)
    assert slacks[0] == pytest.approx(16 * n * (banded.bandwidth + 2) * UNIT_ROUNDOFF, rel=1e-12)
    assert slacks[0] < 16 * n * (n + 1) * UNIT_ROUNDOFF / 10  # the dense rule would be far looser
    np.testing.assert_allclose(np.diff(np.log10(slacks[:-1])), 2.0)
    assert slacks[-1] == MAX_CLOSED_FORM_SLACK and all(s < MAX_CLOSED_FORM_SLACK for s in slacks[:-1])
    small = fm.lipsdp_l2(build_graph(_chain([40, 50, 50, 3])), "neuron")  # dense certificate
    assert banded_form(small.blocks[0]) is None
    assert closed_form_slacks(small)[0] == max(1e-10, 16 * small.size * (small.size + 1) * UNIT_ROUNDOFF)


def test_eclipse_fast_certifies_at_the_banded_first_slack_and_stays_close():
    """The smaller first slack still certifies, and the certified bound is within ``depth · slack`` (relative)
    of the uncertified greedy point (slack 0)."""
    net = _chain([24] * 60 + [2], 5)
    bound = lipsdp.estimate(net, method="eclipse-fast")
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    first = closed_form_slacks(sdp)[0]
    assert bound.details["closed_form_slack"] == first
    work, normalisation = fm.normalise_chain(net)
    rho0, _ = eclipse_fast_multipliers(work, 0.0)
    uncertified = np.sqrt(rho0) * normalisation.product
    assert uncertified <= bound.value <= uncertified * (1 + 60 * first)
