"""Structural shortcuts behind the fast eclipse-fast certificate.

The band assembly (:class:`lipsdp.banded_certificate.BandedBlock`) writes each term as a
dense clique product and adds its subdiagonals in place; the decomposition
(:mod:`lipsdp.decompose`) joins a row whose columns form a contiguous range by a path of
coordinates; ``LMIBlock.constant_support`` lets the constant's pattern be read on a
sub-block.  Each must give exactly what the plain definition gives, on blocks with
scattered and contiguous column supports, duplicated basis entries and stored zeros.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

import lipsdp
from lipsdp import banded_certificate as bc
from lipsdp.bound_methods import _graph_builder
from lipsdp.decompose import block_components
from lipsdp.sdp import LMIBlock, QuadTerm, symmetric_basis


def _random_block(rng, dim: int = 48, n_terms: int = 7, window: int = 8) -> tuple[LMIBlock, int]:
    """A block of terms on small random column windows: scattered or contiguous lifts, dense or
    sparse (with a stored zero), bases with duplicated columns, both signs, and a constant."""
    terms, n_vars = [], 0
    for _ in range(n_terms):
        r = int(rng.integers(1, 5))
        start = int(rng.integers(0, dim - window))
        g = np.zeros((r, dim))
        for i in range(r):
            k = int(rng.integers(1, window + 1))
            if rng.random() < 0.5:
                g[i, start:start + k] = rng.standard_normal(k)
            else:
                g[i, rng.choice(np.arange(start, start + window), size=k, replace=False)] = rng.standard_normal(k)
        lift = g
        if rng.random() < 0.5:
            lift = sp.csr_matrix(g)
            lift.data[0] = 0.0  # a stored zero: structure, not value
        basis = symmetric_basis(r)
        basis = sp.hstack([basis, basis[:, : int(rng.integers(0, basis.shape[1] + 1))]]).tocsc()  # duplicates
        terms.append(QuadTerm(lift, basis, np.arange(n_vars, n_vars + basis.shape[1]), float(rng.choice([-1, 1]))))
        n_vars += basis.shape[1]
    constant = np.zeros((dim, dim))
    i = int(rng.integers(0, dim - 3))
    corner = rng.standard_normal((3, 3))
    constant[i:i + 3, i:i + 3] = corner + corner.T
    return LMIBlock(dim, constant, tuple(terms)), n_vars


def _lower_band(f: np.ndarray, bandwidth: int) -> np.ndarray:
    n = f.shape[0]
    ab = np.zeros((bandwidth + 1, n))
    for d in range(bandwidth + 1):
        ab[d, : n - d] = np.diag(f, -d)
    return ab


@pytest.mark.parametrize("min_group", [1, 3, 64])  # clique products in many row groups, or in one
@pytest.mark.parametrize("seed", range(12))
def test_band_assembly_of_scattered_and_duplicated_terms_equals_the_dense_one(seed, min_group, monkeypatch):
    monkeypatch.setattr(bc, "_MIN_GROUP_COLUMNS", min_group)
    rng = np.random.default_rng(seed)
    block, n_vars = _random_block(rng)
    bandwidth = bc.half_bandwidth(block)
    banded = bc.BandedBlock(block, bandwidth)
    for _ in range(3):
        y = rng.standard_normal(n_vars) * (rng.random(n_vars) < 0.7)
        dense, dense_abs = block.evaluate(y), block.evaluate_abs(y)
        scale = max(np.max(np.abs(dense_abs)), 1e-300)
        np.testing.assert_allclose(banded.evaluate(y), _lower_band(dense, bandwidth), rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(banded.evaluate(y, absolute=True), _lower_band(dense_abs, bandwidth), rtol=0,
                                   atol=1e-13 * scale)


@pytest.mark.parametrize("seed", range(25))
def test_components_match_the_aggregate_sparsity_pattern(seed):
    rng = np.random.default_rng(100 + seed)
    block, _ = _random_block(rng, dim=40, n_terms=int(rng.integers(1, 6)))
    pattern = np.abs(block.constant) > 0
    for term in block.terms:
        g = np.abs(sp.csr_matrix(term.lift).toarray()) > 0
        q = sp.coo_matrix(term.basis)
        r = term.rank
        coupled = np.zeros((r, r), bool)
        coupled[q.row[q.data != 0] % r, q.row[q.data != 0] // r] = True
        pattern |= (g.T.astype(int) @ coupled.astype(int) @ g.astype(int)) > 0
    n, labels = connected_components(sp.csr_matrix(pattern | pattern.T), directed=False)
    found = block_components(block)
    assert sorted(tuple(c) for c in found) == sorted(tuple(np.flatnonzero(labels == k)) for k in range(n))


def test_constant_support_gives_the_pattern_of_the_whole_constant():
    rng = np.random.default_rng(7)
    ws = [rng.standard_normal((n, m)) for m, n in zip([6, 9, 5, 7], [9, 5, 7, 3])]
    block = _graph_builder("neuron")(lipsdp.Network.from_weights(ws, activation="relu")).blocks[0]
    assert block.constant_support is not None
    plain = LMIBlock(block.dim, block.constant, block.terms, block.name)  # no support: the whole matrix is read
    for got, expected in zip(bc.constant_pattern(block), bc.constant_pattern(plain)):
        np.testing.assert_array_equal(got, expected)
    assert bc.constant_pattern(plain)[0].size > 0


def test_eclipse_fast_on_a_deep_chain_uses_the_band_and_certifies():
    rng = np.random.default_rng(3)
    widths = [12] * 101
    ws = [rng.standard_normal((n, m)) / np.sqrt(m) for m, n in zip(widths[:-1], widths[1:])]
    net = lipsdp.Network.from_weights(ws, activation="relu")
    block = _graph_builder("neuron")(net).blocks[0]
    assert block.dim >= bc.MIN_BANDED_SIZE and bc.banded_form(block) is not None
    bound = lipsdp.estimate(net, method="eclipse-fast")
    naive = lipsdp.estimate(net, method="naive")
    assert 0 < bound.value <= naive.value * (1 + 1e-9)
