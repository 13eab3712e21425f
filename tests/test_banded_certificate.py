"""The banded (clique-by-clique) certificate of deep chains (lipsdp/banded_certificate.py).

It must agree with the dense certificate (same verdicts, same certified ρ̂ up to
its smaller shift), never certify an indefinite matrix — in particular not a
"violated completion", a block-tridiagonal matrix whose every clique block is
PSD while the whole is not — and be used exactly where its thresholds say.
"""


import numpy as np
import pytest
import scipy.linalg as la

import lipsdp
import lipsdp.certificate as certify_module
import lipsdp.banded_certificate as bc
from lipsdp.banded_certificate import BandedBlock, banded_form, half_bandwidth, is_provably_psd_banded
from lipsdp.errors import CertificationError
from lipsdp.formulations import lipsdp_l2
from lipsdp.graph import build_graph
from lipsdp.lower import gradient_lower_bound
from lipsdp.bound_methods import eclipse_fast_multipliers
from lipsdp.network import Network
from lipsdp.sdp import LMIBlock



def chain(widths, seed, activation="relu", gain=1.2):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0.0, gain / np.sqrt(widths[k]), (widths[k + 1], widths[k])) for k in range(len(widths) - 1)]
    return Network.from_weights(weights, activation=activation)


def closed_form_point(net, slack):
    """ECLipsE-Fast's strictly feasible point of ``net``'s one-block LMI (no normalisation)."""
    sdp = lipsdp_l2(build_graph(net))
    rho, ells = eclipse_fast_multipliers(net, slack)
    y = np.zeros(sdp.n_vars)
    y[sdp.rho] = rho
    for k, ell in enumerate(ells, start=1):
        y[sdp.groups[f"qc{k}"]] = rho * ell
    return sdp, y


def to_band(a, bandwidth):
    n = a.shape[0]
    ab = np.zeros((bandwidth + 1, n))
    for d in range(bandwidth + 1):
        ab[d, : n - d] = np.diagonal(a, -d)
    return ab


def band_of(block):
    return BandedBlock(block, half_bandwidth(block))


@pytest.fixture
def always_banded(monkeypatch):
    """Route every block through the band (thresholds off), to compare on small, fast chains."""
    monkeypatch.setattr(bc, "MIN_BANDED_SIZE", 0)
    monkeypatch.setattr(bc, "MAX_BAND_FRACTION", 1.0)


@pytest.fixture
def never_banded(monkeypatch):
    monkeypatch.setattr(bc, "MIN_BANDED_SIZE", 10**12)


# ------------------------------------------------------------------------------- structure
def test_half_bandwidth_of_a_chain_is_its_widest_consecutive_layer_pair():
    widths = [3, 7, 2, 9, 4, 1]  # hidden layers 7, 2, 9, 4: pairs (3,7) (7,2) (2,9) (9,4)
    block = lipsdp_l2(build_graph(chain(widths, 0))).blocks[0]
    assert half_bandwidth(block) == max(a + b for a, b in zip(widths[:-2], widths[1:-1])) - 1
    # and the numbers agree: nothing of F lies outside that band, something lies on its edge
    f = np.abs(block.evaluate_abs(np.ones(lipsdp_l2(build_graph(chain(widths, 0))).n_vars)))
    i, j = np.nonzero(f)
    assert np.max(np.abs(i - j)) == half_bandwidth(block)


@pytest.mark.parametrize("seed", range(5))
def test_band_assembly_equals_the_dense_assembly(seed):
    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(2, 9))] + list(rng.integers(2, 9, size=int(rng.integers(3, 8)))) + [3]
    net = chain(widths, seed, activation=str(rng.choice(["relu", "leaky_relu:0.1", "tanh"])))
    sdp = lipsdp_l2(build_graph(net))
    block = sdp.blocks[0]
    banded = band_of(block)
    y = np.abs(rng.normal(size=sdp.n_vars))
    p = banded.bandwidth
    f, f_abs = block.evaluate(y), block.evaluate_abs(y)
    np.testing.assert_allclose(banded.evaluate(y), to_band(f, p), rtol=1e-13, atol=1e-13 * np.abs(f).max())
    np.testing.assert_allclose(banded.evaluate(y, absolute=True), to_band(np.maximum(f_abs, f_abs.T), p), rtol=1e-13)
    slope = banded.evaluate(y, constant=False)
    np.testing.assert_allclose(slope, to_band(f - 0.5 * (block.constant + block.constant.T), p),
                               rtol=1e-12, atol=1e-12 * np.abs(f).max())


# ------------------------------------------------------------------------------- agreement with the dense certificate
def _certified_rho(sdp, y, monkeypatch, banded):
    monkeypatch.setattr(bc, "MIN_BANDED_SIZE", 0 if banded else 10**12)
    monkeypatch.setattr(bc, "MAX_BAND_FRACTION", 1.0)
    try:
        return certify_module.certify(sdp, y).rho
    except CertificationError:
        return None


def _random_chain(rng, seed):
    depth = int(rng.integers(3, 13))
    width = int(rng.integers(2, 13))
    widths = [int(rng.integers(1, 9))] + [width] * (depth - 1) + [int(rng.integers(1, 5))]
    activation = str(rng.choice(["relu", "leaky_relu:0.2", "tanh", "sigmoid"]))
    return chain(widths, seed, activation)


@pytest.mark.parametrize("seed", range(40))
def test_banded_and_dense_certificates_agree_on_random_chains(seed, monkeypatch):
    rng = np.random.default_rng(1000 + seed)
    net = _random_chain(rng, seed)
    sdp, y = closed_form_point(net, slack=1e-6)
    dense = _certified_rho(sdp, y, monkeypatch, banded=False)
    banded = _certified_rho(sdp, y, monkeypatch, banded=True)
    assert dense is not None and banded is not None
    # the band's shift is smaller (γ_{p+2} for γ_{n+1}): never a larger ρ̂, and the same to 1e-6
    assert banded <= dense * (1 + 1e-12)
    assert banded >= dense * (1 - 1e-6)
    # and the exact matrix at the band's ρ̂ is PSD up to float64's own resolution
    y_cert = y.copy()
    y_cert[sdp.rho] = banded
    f = sdp.blocks[0].evaluate(y_cert)
    d = 1 / np.sqrt(np.maximum(np.diag(f), 1e-300))
    assert la.eigvalsh(f * d[:, None] * d[None, :])[0] >= -1e-13


def _scaled_min_eigenvalue(sdp, y):
    """λ_min of the unit-diagonal scaling of F(y) (float64 eigvalsh: the reference the tests judge by)."""
    f = sdp.blocks[0].evaluate(y)
    d = 1 / np.sqrt(np.maximum(np.diag(f), 1e-300))
    return la.eigvalsh(f * d[:, None] * d[None, :])[0]


@pytest.mark.parametrize("seed", range(15))
def test_banded_and_dense_certificates_agree_on_perturbed_multipliers(seed, monkeypatch):
    rng = np.random.default_rng(2000 + seed)
    net = _random_chain(rng, seed)
    sdp, y = closed_form_point(net, slack=1e-6)
    k = int(rng.integers(1, len(net.weights)))
    perturbed = {"rho halved": (sdp.rho, 0.5), f"layer {k} multipliers / 10": (sdp.groups[f"qc{k}"], 0.1),
                 "rho - 1e-8": (sdp.rho, 1 - 1e-8), "rho - 1e-5": (sdp.rho, 1 - 1e-5)}
    for name, (index, factor) in perturbed.items():
        z = y.copy()
        z[index] *= factor
        dense = _certified_rho(sdp, z, monkeypatch, banded=False)
        banded = _certified_rho(sdp, z, monkeypatch, banded=True)
        repaired = z.copy()
        repaired[sdp.rho] *= 1 + 1e-3  # the most the certificate's repair may raise ρ
        truth = _scaled_min_eigenvalue(sdp, repaired)
        if truth < -1e-9:  # violated beyond repair: both refuse
            assert dense is None and banded is None, name
        elif truth > 1e-9 or name == "rho - 1e-8":  # clearly repairable: both certify, the same ρ̂
            assert dense is not None and banded is not None, name
            assert banded <= dense * (1 + 1e-12) and banded >= dense * (1 - 1e-6), name
        if banded is not None:  # whatever the case, what the band certifies is PSD
            z[sdp.rho] = banded
            assert _scaled_min_eigenvalue(sdp, z) >= -1e-13, name
    z = y.copy()
    z[sdp.groups[f"qc{k}"]] *= 0.1
    assert _scaled_min_eigenvalue(sdp, z) < -1e-9  # the test does see violated multipliers


# ------------------------------------------------------------------------------- never an indefinite matrix
def violated_completion(n_blocks, width, coupling, seed):
    """``T(c) ⊗ I`` conjugated by random orthogonal blocks: tridiagonal in blocks, unit diagonal blocks and
    off-diagonal blocks ``c·Q_kᵀQ_{k+1}``.  Each clique ``(k, k+1)`` is PSD for ``c ≤ 1``; the whole matrix is PSD
    only for ``c ≤ 1/(2 cos(π/(m+1)))`` (``m`` blocks)."""
    rng = np.random.default_rng(seed)
    m = n_blocks
    t = np.eye(m) + coupling * (np.eye(m, k=1) + np.eye(m, k=-1))
    q = la.block_diag(*[la.qr(rng.normal(size=(width, width)))[0] for _ in range(m)])
    a = q.T @ np.kron(t, np.eye(width)) @ q
    scale = 10.0 ** rng.uniform(-3, 3, size=m * width)  # any diagonal scaling: a congruence
    return 0.5 * (a + a.T) * scale[:, None] * scale[None, :]


@pytest.mark.parametrize("seed", range(4))
def test_a_violated_completion_fails(seed):
    m, width = 40, 6
    threshold = 1 / (2 * np.cos(np.pi / (m + 1)))
    bandwidth = 2 * width - 1
    for coupling, psd in ((0.9, False), (threshold * 1.001, False), (threshold * 0.99, True)):
        a = violated_completion(m, width, coupling, seed)
        for k in range(m - 1):  # every clique block is PSD
            clique = a[k * width:(k + 2) * width, k * width:(k + 2) * width]
            assert la.eigvalsh(clique)[0] >= -1e-9 * np.abs(clique).max()
        ab = to_band(a, bandwidth)
        assert is_provably_psd_banded(ab, np.abs(ab), max_rank=1) is psd
        # the same matrix as an LMI block with a constant only, through the automatic routing
        block = LMIBlock(a.shape[0], a, ())
        assert half_bandwidth(block) == bandwidth
        line = certify_module.block_line(block, np.zeros(1), None)
        assert isinstance(line, certify_module._BandedLine) == (a.shape[0] >= bc.MIN_BANDED_SIZE)
        assert line.passes(0.0) is psd


@pytest.mark.parametrize("seed", range(3))
def test_a_matrix_with_smallest_eigenvalue_minus_1e12_scale_fails(seed):
    rng = np.random.default_rng(seed)
    n, bandwidth = 900, 15
    b = np.zeros((n, n))
    for start in range(0, n - bandwidth, bandwidth // 2):
        x = rng.normal(size=(bandwidth + 1, bandwidth + 1))
        b[start:start + bandwidth + 1, start:start + bandwidth + 1] += x @ x.T
    scale = np.linalg.norm(b, 2)
    low = la.eigvalsh(b)[0]
    violated = b - (low + 1e-12 * scale) * np.eye(n)
    assert la.eigvalsh(violated)[0] < 0
    ab = to_band(violated, bandwidth)
    assert not is_provably_psd_banded(ab, np.abs(ab), max_rank=1)
    comfortable = b - (low - 1e-6 * scale) * np.eye(n)  # λ_min = 1e-6·scale: proved
    ab = to_band(comfortable, bandwidth)
    assert is_provably_psd_banded(ab, np.abs(ab), max_rank=1)


def test_non_finite_negative_and_dead_rows():
    a = violated_completion(10, 3, 0.4, 0)
    ab = to_band(a, 5)
    assert is_provably_psd_banded(ab, np.abs(ab), 1)
    bad = ab.copy()
    bad[2, 7] = np.nan
    assert not is_provably_psd_banded(bad, np.abs(ab), 1)
    negative = ab.copy()
    negative[0, 4] = -1.0
    assert not is_provably_psd_banded(negative, np.abs(ab), 1)
    # a zero row and column is dropped (F is PSD iff the rest is); a zero diagonal with an off-diagonal entry fails
    dead = la.block_diag(a[:12, :12], np.zeros((1, 1)), a[12:, 12:])
    dab = to_band(dead, 5)
    assert is_provably_psd_banded(dab, np.abs(dab), 1)
    dead[12, 11] = dead[11, 12] = 1e-3 * dead[11, 11]
    dab = to_band(dead, 5)
    assert not is_provably_psd_banded(dab, np.abs(dab), 1)


# ------------------------------------------------------------------------------- upper bounds stay upper bounds
@pytest.mark.parametrize("seed, depth, width", [(0, 96, 12), (1, 72, 16), (2, 60, 20)])
def test_certified_bounds_of_deep_chains_are_above_lower_bounds(seed, depth, width, monkeypatch):
    net = chain([width] * depth + [2], seed, activation="relu", gain=1.2)
    used = []
    original = certify_module._BandedLine.passes
    monkeypatch.setattr(certify_module._BandedLine, "passes", lambda self, rho: used.append(rho) or original(self, rho))
    upper = lipsdp.estimate(net, method="eclipse-fast")
    assert used, "the deep chain's LMI was expected to be certified in band storage"
    lower = gradient_lower_bound(net, n_starts=4, steps=40, seed=seed)
    naive = lipsdp.estimate(net, method="naive")
    assert lower.value <= float(upper) <= float(naive) * (1 + 1e-9)


# ------------------------------------------------------------------------------- the thresholds
def test_threshold_switch_on_both_sides():
    deep = lipsdp_l2(build_graph(chain([8] * 140 + [2], 0))).blocks[0]  # N = 1112, p = 15
    assert deep.dim >= bc.MIN_BANDED_SIZE
    assert banded_form(deep) is not None
    assert isinstance(certify_module.block_line(deep, np.zeros(deep.dim), None), certify_module._BandedLine)
    small = lipsdp_l2(build_graph(chain([8] * 10 + [2], 0))).blocks[0]  # too small to pay
    assert small.dim < bc.MIN_BANDED_SIZE and banded_form(small) is None
    assert type(certify_module.block_line(small, np.zeros(small.dim), None)) is certify_module._DenseLine
    wide = lipsdp_l2(build_graph(chain([500, 600, 2], 0))).blocks[0]  # large but its band is the whole matrix
    assert wide.dim >= bc.MIN_BANDED_SIZE and half_bandwidth(wide) > bc.MAX_BAND_FRACTION * wide.dim
    assert banded_form(wide) is None


def test_certificate_is_the_same_number_either_side_of_the_threshold(monkeypatch):
    net = chain([10] * 110 + [3], 5)
    monkeypatch.setattr(bc, "MIN_BANDED_SIZE", 10**12)
    dense = lipsdp.estimate(net, method="eclipse-fast")
    monkeypatch.setattr(bc, "MIN_BANDED_SIZE", 0)
    banded = lipsdp.estimate(net, method="eclipse-fast")
    assert float(banded) <= float(dense) * (1 + 1e-12)
    assert float(banded) >= float(dense) * (1 - 1e-6)
