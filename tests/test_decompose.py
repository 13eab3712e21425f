"""Exact block decomposition of LMIs (lipsdp/decompose.py).

MaxMin/GroupSort chains with ``cross_terms="none"`` give an LMI that is block
diagonal per layer: the split must reproduce ``F(y)`` (and the rounding bound
``|F|(y)``) exactly on every component, with exact zeros between components;
the solve through the split blocks must match the reference solver; and
certification must check each component, refusing a component that ρ cannot
reach when it is indefinite.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lipsdp
from lipsdp import formulations as fm
from lipsdp.certificate import certify
from lipsdp.decompose import block_components, rho_reaches_every_block, split_block, split_decoupled_blocks
from lipsdp.errors import CertificationError
from lipsdp.graph import build_graph
from lipsdp.group_activations import maxmin
from lipsdp.lower import gradient_lower_bound
from lipsdp.sdp import SDP, LMIBlock, QuadTerm, identity_basis, selector, symmetric_basis
from lipsdp.solver_registry import solve

WIDTHS = ([6, 8, 8, 2], [4, 6, 6, 6, 3])
SEEDS = (0, 1, 2)


def _chain(widths, seed, activation=None) -> lipsdp.Network:
    """A random feed-forward chain (default activation: MaxMin without cross terms)."""
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    return lipsdp.Network.from_weights(ws, None, maxmin(cross_terms="none") if activation is None else activation)


def _sdp(net, granularity="neuron") -> SDP:
    return fm.lipsdp_l2(build_graph(net), granularity)


def _rho_in(block: LMIBlock, rho: int) -> bool:
    return any(np.any(np.asarray(t.variables)[t.basis.tocoo().col] == rho) for t in block.terms)


# ---------------------------------------------------------------- exactness of the split


@pytest.mark.parametrize("granularity", ["neuron", "layer"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "-".join(map(str, w)))
def test_maxmin_split_reproduces_F_exactly(widths, seed, granularity):
    """Split blocks equal F(y)[I, I]; F(y) and |F|(y) vanish exactly off the diagonal blocks."""
    sdp = _sdp(_chain(widths, seed), granularity)
    (block,) = sdp.blocks
    parts = block_components(block)
    # one component per layer of coordinates: the input and every hidden layer, contiguous
    assert [len(p) for p in parts] == list(widths[:-1])
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(block.dim))
    for p in parts:
        np.testing.assert_array_equal(p, np.arange(p[0], p[0] + p.size))

    split = split_decoupled_blocks(sdp)
    assert split is not sdp and len(split.blocks) == len(parts) > 1
    assert split.n_vars == sdp.n_vars and split.rho == sdp.rho and split.meta["split_blocks"] == len(parts)
    assert sum(b.dim for b in split.blocks) == block.dim

    rng = np.random.default_rng(100 + seed)
    on_diagonal = np.zeros((block.dim, block.dim), bool)
    for p in parts:
        on_diagonal[np.ix_(p, p)] = True
    for _ in range(3):
        y = rng.standard_normal(sdp.n_vars)
        f, f_abs = block.evaluate(y), block.evaluate_abs(y)
        assert np.all(f[~on_diagonal] == 0.0) and np.all(f_abs[~on_diagonal] == 0.0)
        for sub, index in zip(split.blocks, parts):
            assert sub.dim == index.size
            full = f[np.ix_(index, index)]
            scale = np.max(np.abs(full))
            np.testing.assert_allclose(sub.evaluate(y), full, rtol=0, atol=1e-13 * scale)
            np.testing.assert_allclose(sub.evaluate_abs(y), f_abs[np.ix_(index, index)], rtol=0, atol=1e-13 * scale)
        # the eigenvalues of F are the union of those of the blocks (direct sum)
        eig_split = np.sort(np.concatenate([np.linalg.eigvalsh(b.evaluate(y)) for b in split.blocks]))
        np.testing.assert_allclose(eig_split, np.linalg.eigvalsh(f), atol=1e-10 * np.max(np.abs(f)))


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "-".join(map(str, w)))
def test_maxmin_rho_reaches_only_the_input_block(widths):
    """ρ enters exactly one component (the input one), so rho_reaches_every_block is False."""
    sdp = _sdp(_chain(widths, 0))
    split = split_decoupled_blocks(sdp)
    reached = [_rho_in(b, sdp.rho) for b in split.blocks]
    assert reached == [True] + [False] * (len(split.blocks) - 1)
    assert rho_reaches_every_block(sdp) is False


@pytest.mark.parametrize("activation", ["relu", "tanh", maxmin(cross_terms="s")], ids=["relu", "tanh", "maxmin_s"])
def test_coupled_chains_do_not_split(activation):
    """ReLU/tanh chains (and MaxMin with cross terms) are one component: the SDP comes back unchanged."""
    sdp = _sdp(_chain([6, 8, 8, 2], 0, activation))
    (block,) = sdp.blocks
    parts = block_components(block)
    assert len(parts) == 1
    np.testing.assert_array_equal(parts[0], np.arange(block.dim))
    assert split_block(block) == [block] and split_block(block)[0] is block
    assert split_decoupled_blocks(sdp) is sdp
    assert rho_reaches_every_block(sdp) is True


# ---------------------------------------------------------------- hand-made blocks


def _block_with_loose_coordinate(constant_22: float, extra_row: str = "none") -> LMIBlock:
    """dim 3: coordinates 0, 1 coupled by a free symmetric 2×2 multiplier (y[1..3]) and ρ·I on them; 2 untouched.

    ``extra_row`` adds a third lift row to the multiplier term that contributes
    nothing to F: ``"unused"`` — a row on coordinates 1 and 2 that ``Q`` never
    uses; ``"zero"`` — an all-zero row that ``Q`` pairs with row 0 (variable y[4]);
    ``"stored_zero"`` — no extra row, but the sparse lift stores an explicit 0 on coordinate 2.
    """
    basis2 = symmetric_basis(2).tocoo()
    if extra_row == "none":
        lift, r, k = selector(2, 3, 0), 2, 3
    elif extra_row == "stored_zero":
        lift, r, k = sp.csr_matrix(([1.0, 1.0, 0.0], ([0, 1, 1], [0, 1, 2])), shape=(2, 3)), 2, 3
        assert lift.nnz == 3  # the explicit zero is stored
    elif extra_row == "unused":
        lift, r, k = np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 1]]), 3, 3
    else:
        lift, r, k = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]), 3, 4
    a, b = basis2.row % 2, basis2.row // 2  # embed the 2×2 symmetric basis in an r×r one (rows/cols 0, 1)
    rows, cols, vals = list(a + r * b), list(basis2.col), list(basis2.data)
    if extra_row == "zero":
        rows += [0 + r * 2, 2 + r * 0]
        cols += [3, 3]
        vals += [1.0, 1.0]
    basis = sp.csc_matrix((vals, (rows, cols)), shape=(r * r, k))
    terms = (
        QuadTerm(lift, basis, np.arange(1, k + 1), +1.0),
        QuadTerm(selector(2, 3, 0), identity_basis(2), np.array([0]), +1.0),
    )
    constant = np.zeros((3, 3))
    constant[2, 2] = constant_22
    return LMIBlock(3, constant, terms, "hand")


@pytest.mark.parametrize("extra_row", ["none", "unused", "zero", "stored_zero"])
@pytest.mark.parametrize("constant_22", [0.0, 2.5])
def test_untouched_psd_coordinate_is_dropped(constant_22, extra_row):
    """A coordinate no term reaches, with PSD (zero or positive) constant, is dropped by split_block."""
    block = _block_with_loose_coordinate(constant_22, extra_row)
    parts = block_components(block)
    assert [p.tolist() for p in parts] == [[0, 1], [2]]
    out = split_block(block)
    assert len(out) == 1
    (sub,) = out
    assert sub.dim == 2 and len(sub.terms) == 2
    y = np.array([0.7, 1.3, -0.4, 2.1, -3.0])
    np.testing.assert_allclose(block.evaluate(y)[2], [0.0, 0.0, constant_22], rtol=0, atol=0)
    np.testing.assert_allclose(sub.evaluate(y), block.evaluate(y)[:2, :2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(sub.evaluate_abs(y), block.evaluate_abs(y)[:2, :2], rtol=0, atol=1e-15)


def test_untouched_negative_coordinate_is_kept():
    """A constant, not-PSD component (−1 on the loose coordinate) is kept so the program reads infeasible."""
    block = _block_with_loose_coordinate(-1.0)
    out = split_block(block)
    assert [b.dim for b in out] == [2, 1]
    loose = out[1]
    assert loose.terms == ()
    np.testing.assert_array_equal(loose.constant, [[-1.0]])
    y = np.array([0.7, 1.3, -0.4, 2.1])
    assert loose.evaluate(y)[0, 0] == -1.0
    sdp = SDP(4, np.eye(4)[0], [block], np.array([True, False, False, False]), 0, lambda r: float(np.sqrt(r)))
    split = split_decoupled_blocks(sdp)
    assert [b.dim for b in split.blocks] == [2, 1]
    assert rho_reaches_every_block(sdp) is False  # the kept constant block has no ρ
    with pytest.raises(CertificationError, match="rho does not reach"):
        certify(sdp, np.array([10.0, 5.0, 0.0, 5.0]))


def test_constant_coupling_joins_components():
    """An off-diagonal constant entry alone links two coordinates into one component."""
    base = _block_with_loose_coordinate(1.0)
    constant = np.array(base.constant)
    constant[0, 2] = constant[2, 0] = 0.5
    block = LMIBlock(3, constant, base.terms, "hand")
    assert [p.tolist() for p in block_components(block)] == [[0, 1, 2]]
    assert split_block(block)[0] is block


def test_split_when_another_block_is_dropped():
    """Every block is split even when another block disappears (equal block counts)."""
    a = LMIBlock(2, np.diag([0.0, -1.0]), (
        QuadTerm(selector(1, 2, 0), identity_basis(1), np.array([0]), +1.0),
        QuadTerm(selector(1, 2, 1), identity_basis(1), np.array([1]), +1.0)), "A")
    b = LMIBlock(2, np.eye(2), (), "B")  # two constant PSD components: dropped entirely
    sdp = SDP(2, np.array([1.0, 0.0]), [a, b], np.array([True, True]), 0, lambda r: float(np.sqrt(r)))
    assert len(split_block(a)) == 2 and split_block(b) == []
    assert [blk.dim for blk in split_decoupled_blocks(sdp).blocks] == [1, 1]


# ---------------------------------------------------------------- end to end


def test_ipm_on_split_maxmin_matches_reference():
    """The ipm (split) value matches cvxpy:CVXOPT within 1e-6, lies above a lower bound and below naive."""
    if "cvxpy:CVXOPT" not in lipsdp.solvers():
        pytest.skip("cvxpy:CVXOPT not available")
    net = _chain([4, 6, 6, 6, 3], 0)
    ours = lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm")
    ref = lipsdp.estimate(net, method="lipsdp-neuron", solver="cvxpy:CVXOPT")
    assert ours.solver == "ipm" and ref.solver == "cvxpy:CVXOPT"
    v, r = float(ours), float(ref)
    assert abs(v - r) <= 1e-6 * r, (v, r)
    assert v >= r * (1 - 1e-6), (v, r)
    assert ours.certificate_margin >= 0
    lower = gradient_lower_bound(net, n_starts=4, steps=40).value
    assert 0 < lower <= v, (lower, v)
    naive = float(lipsdp.estimate(net, method="naive"))
    assert v <= naive * (1 + 1e-9), (v, naive)
    assert v < 0.9 * naive  # LipSDP is strictly tighter than the product of norms on this net


def test_certify_checks_each_component():
    """certify passes at ipm multipliers; an indefinite middle block (no ρ) is refused whatever ρ is allowed."""
    sdp = _sdp(_chain([4, 6, 6, 6, 3], 1))
    split = split_decoupled_blocks(sdp)
    assert len(split.blocks) == 4
    y = solve(sdp.with_margin(1e-8), "ipm").y
    cert = certify(sdp, y)
    assert cert.inflation == 0.0 and cert.margin >= 0
    assert cert.value == pytest.approx(np.sqrt(y[sdp.rho]), rel=1e-12)

    bad = y.copy()
    bad[sdp.groups["qc1"]] = 0.0  # removes λ₁ from the first hidden block, which ρ does not reach
    eigs = [np.linalg.eigvalsh(b.evaluate(bad))[0] for b in split.blocks]
    assert eigs[1] < -1e-3, eigs  # the middle block is clearly indefinite ...
    assert eigs[0] > 0 and min(eigs[2:]) > 0, eigs  # ... and every other block is still PD
    assert not _rho_in(split.blocks[1], sdp.rho)
    for max_inflation in (1e-3, 1e6):
        with pytest.raises(CertificationError, match="rho does not reach.*cannot repair"):
            certify(sdp, bad, max_inflation=max_inflation)


def test_split_is_computed_once_per_block(monkeypatch):
    """A second request for the same block's split is answered from the cache, which does not keep
    the block alive."""
    import gc
    import weakref

    from lipsdp import decompose

    sdp = _sdp(_chain([6, 8, 8, 2], 0, maxmin(cross_terms="none")))
    (block,) = sdp.blocks
    calls = []
    real = decompose._split_block
    monkeypatch.setattr(decompose, "_split_block", lambda b: (calls.append(b), real(b))[1])
    first = split_block(block)
    second = split_block(block)
    assert len(calls) == 1 and len(first) > 1 and [p.dim for p in first] == [p.dim for p in second]
    assert all(a is b for a, b in zip(first, second))
    whole = _sdp(_chain([6, 8, 8, 2], 0, "relu")).blocks[0]  # does not split: itself, from the cache too
    assert split_block(whole) == [whole] and split_block(whole)[0] is whole
    constant = LMIBlock(2, np.eye(2), (), "C")  # a constant PSD block splits into nothing, cached or not
    assert split_block(constant) == [] and split_block(constant) == []
    probe = weakref.ref(block)
    del sdp, block, first, second
    calls.clear()
    gc.collect()
    assert probe() is None
