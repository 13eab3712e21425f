"""The structured interior-point solver (lipsdp/ipm.py) against the reference SDP solver (CVXOPT).

Both certified values are sound upper bounds of the same SDP optimum, so the
structured one must (i) match CVXOPT's within a relative 1e-6 and (ii) never
lie below it by more than the certification slack.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lipsdp.activation_registry import rule_from_spec
import lipsdp
from lipsdp import formulations as fm
from lipsdp.errors import SolverFailedError
from lipsdp.graph import build_graph
from lipsdp.ipm import ipm_solve, solve_with_ipm
from lipsdp.sdp import SDP, LMIBlock, QuadTerm, identity_basis, selector
from lipsdp.solver_registry import resolve_solver

from conftest import load_anchor_weights, random_network

REL_TOL = 1e-6  # certified values: structured vs reference
BELOW_TOL = 1e-6  # both values are certified upper bounds; the reference may itself sit ~1e-7 above the optimum


def _check_pair(ours: float, ref: float) -> None:
    assert ours >= ref * (1 - BELOW_TOL) - 1e-12, (ours, ref)
    assert abs(ours - ref) <= REL_TOL * max(abs(ref), 1e-12) + 1e-12, (ours, ref)


def _both(net, method="lipsdp-neuron"):
    ours = lipsdp.estimate(net, method=method, solver="ipm")
    try:  # the reference with an absolute gap tolerance that also suits tiny optima
        ref = lipsdp.estimate(net, method=method, solver="cvxopt", abstol=1e-14, reltol=1e-10, feastol=1e-10)
    except SolverFailedError:
        ref = lipsdp.estimate(net, method=method, solver="cvxopt")
    assert ours.solver == "ipm" and ref.solver == "cvxopt"
    return float(ours), float(ref)


@pytest.mark.parametrize("seed", range(100))
def test_random_nets_match_cvxopt(seed):
    net = random_network(1000 + seed, max_hidden=3, max_width=8)
    ours, ref = _both(net)
    _check_pair(ours, ref)


@pytest.mark.parametrize("seed", range(24))
def test_random_maxmin_chains_match_cvxopt(seed):
    """MaxMin chains without cross multipliers: the ipm solves the per-layer split blocks, CVXOPT the one block."""
    from lipsdp.group_activations import maxmin

    rng = np.random.default_rng(4000 + seed)
    widths = [int(rng.integers(2, 7))] + [2 * int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 4)))]
    widths.append(int(rng.integers(1, 4)))
    ws = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    _check_pair(*_both(lipsdp.Network.from_weights(ws, None, maxmin(cross_terms="none"))))


@pytest.mark.parametrize("seed", range(8))
def test_layer_granularity_matches(seed):
    net = random_network(2000 + seed, max_hidden=2, max_width=6)
    _check_pair(*_both(net, "lipsdp-layer"))


def test_wider_random_net_raw_objective():
    """On a mid-size net the raw optimum itself agrees with CVXOPT to ~1e-8."""
    rng = np.random.default_rng(7)
    widths = [12, 40, 40, 30, 5]
    ws = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    work, _ = fm.normalise_chain(lipsdp.Network.from_weights(ws))
    sdp = fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")
    from lipsdp.solver_registry import solve_with_cvxopt

    a = solve_with_ipm(sdp)
    b = solve_with_cvxopt(sdp)
    assert abs(a.objective - b.objective) <= 1e-7 * abs(b.objective)
    assert a.info["iterations"] < 40


def test_split_products_leave_the_solve_unchanged(monkeypatch):
    """Above the split threshold (d ≈ 270: every dense d × d product) the two-thread products give
    the single-thread optimum (the halves round alike, up to BLAS blocking)."""
    from lipsdp import runtime

    rng = np.random.default_rng(11)
    widths = [30, 120, 120, 5]
    ws = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    work, _ = fm.normalise_chain(lipsdp.Network.from_weights(ws))
    sdp = fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")
    assert 2.0 * sdp.blocks[0].dim ** 3 >= runtime.SPLIT_MIN_FLOPS
    assert runtime.worth_a_second_thread([sdp.blocks[0].dim])
    split = solve_with_ipm(sdp)
    monkeypatch.setattr(runtime, "SPLIT_MIN_FLOPS", float("inf"))
    plain = solve_with_ipm(sdp)
    assert abs(split.objective - plain.objective) <= 1e-8 * abs(plain.objective)
    assert abs(split.info["iterations"] - plain.info["iterations"]) <= 1


@pytest.mark.parametrize("widths, shared", [([10, 50, 50, 10], False), ([30, 120, 120, 5], True)])
def test_small_solves_stay_on_one_thread(widths, shared, monkeypatch):
    """The second thread is asked for only when the blocks hold enough dense work to share
    (LMI 110: no; 270: yes), and the answer is the same either way."""
    import lipsdp.ipm as ipm_module
    from lipsdp import runtime

    asked = []
    real = ipm_module.split_products

    def recording(enabled=True):
        asked.append(enabled)
        return real(enabled)

    monkeypatch.setattr(ipm_module, "split_products", recording)
    rng = np.random.default_rng(4)
    ws = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    work, _ = fm.normalise_chain(lipsdp.Network.from_weights(ws))
    sdp = fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")
    chosen = solve_with_ipm(sdp)
    assert asked == [shared]
    monkeypatch.setattr(runtime, "PARALLEL_MIN_WORK", 0.0 if not shared else float("inf"))
    other = solve_with_ipm(sdp)
    assert asked == [shared, not shared]
    assert abs(chosen.objective - other.objective) <= 1e-8 * abs(other.objective)


@pytest.mark.parametrize("name", ["random_weights.mat", "mnist_weights.mat"])
def test_anchor_nets(name):
    weights = load_anchor_weights("lipsdp", name)
    net = lipsdp.Network.from_weights(weights)
    _check_pair(*_both(net))


def test_is_the_default_where_it_applies_and_reference_names_stay():
    net = random_network(5, max_hidden=2, max_width=6)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    assert resolve_solver(None, sdp).name == "ipm"
    assert resolve_solver("cvxpy:SCS", sdp).name == "cvxpy:SCS"
    assert resolve_solver("cvxopt", sdp).name == "cvxopt"
    assert lipsdp.estimate(net).solver == "ipm"


def test_automatic_choice_does_not_import_cvxpy():
    """Picking the structured solver must not pay cvxpy's import (seconds): availability is checked lazily."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, lipsdp; "
            "b = lipsdp.estimate(lipsdp.Network.from_weights([np.eye(3), np.ones((1, 3))])); "
            "print(b.solver, 'cvxpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ipm", "False"]


# ----------------------------------------------------------------------------- failure modes
def _one_block(constant, terms, n_vars, nonneg, objective):
    block = LMIBlock(constant.shape[0], constant, tuple(terms), "test")
    return SDP(n_vars, np.asarray(objective, float), [block], np.asarray(nonneg, bool), 0, np.sqrt)


def test_infeasible_sdp_raises_typed_error():
    """F(y) = diag(y, −1) ⪰ 0 has no solution."""
    const = np.diag([0.0, -1.0])
    term = QuadTerm(selector(1, 2, 0), identity_basis(1), np.array([0]), +1.0)
    sdp = _one_block(const, [term], 1, [True], [1.0])
    with pytest.raises(SolverFailedError) as info:
        ipm_solve(sdp, max_iters=60)
    assert info.value.status in {"infeasible", "stalled", "max-iterations", "numerical", "ill-conditioned"}


def test_unbounded_sdp_raises_typed_error():
    """min −y s.t. diag(y, 1) + y·0 ⪰ 0 with y free upward: unbounded below? (min −y, y ≥ 0 only)."""
    const = np.diag([1.0, 1.0])
    term = QuadTerm(selector(1, 2, 0), identity_basis(1), np.array([0]), +1.0)
    sdp = _one_block(const, [term], 1, [True], [-1.0])
    with pytest.raises(SolverFailedError) as info:
        ipm_solve(sdp, max_iters=60)
    assert info.value.status in {"infeasible", "stalled", "max-iterations", "numerical", "ill-conditioned"}


def test_iteration_limit_raises_typed_error():
    net = random_network(11, max_hidden=3, max_width=8)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    with pytest.raises(SolverFailedError) as info:
        ipm_solve(sdp, max_iters=2)
    assert info.value.status == "max-iterations"


def test_costed_variable_in_no_constraint_is_reported():
    const = np.eye(2)
    term = QuadTerm(selector(1, 2, 0), identity_basis(1), np.array([0]), +1.0)
    sdp = _one_block(const, [term], 2, [True, False], [1.0, 1.0])
    with pytest.raises(SolverFailedError) as info:
        ipm_solve(sdp)
    assert info.value.status == "infeasible"


def test_lifted_operators_match_dense_coefficients():
    """Σ y_i A_i from the lifted form equals the generic sparse coefficients."""
    from lipsdp.ipm import _Block

    net = random_network(21, max_hidden=3, max_width=7)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    blk = sdp.blocks[0]
    lifted = _Block(blk, sdp.n_vars)
    y = np.random.default_rng(0).normal(size=sdp.n_vars)
    dense = (blk.coefficients(sdp.n_vars) @ y).reshape(blk.dim, blk.dim, order="F")
    assert np.allclose(lifted.op(y), 0.5 * (dense + dense.T), atol=1e-12)
    # (Σ y_i A_i) Y from G Y and Q(y), for a symmetric Y
    sym_y = np.random.default_rng(2).normal(size=(blk.dim, blk.dim))
    sym_y = sym_y + sym_y.T
    assert np.allclose(lifted.op_times(lifted.apply(sym_y), lifted.small(y)), lifted.op(y) @ sym_y, atol=1e-10)
    # 𝒜(K) = Kᵀ vec(K) for a random (non-symmetric) K, and 𝒜(P S) from the rows of G P and G Sᵀ
    rng = np.random.default_rng(1)
    k = rng.normal(size=(blk.dim, blk.dim))
    ref = np.asarray(blk.coefficients(sdp.n_vars).T @ k.ravel(order="F")).ravel()
    assert np.allclose(lifted.adj_rows(lifted.lift, lifted.apply(k)), ref, atol=1e-10)
    p, s = rng.normal(size=(2, blk.dim, blk.dim))
    ref_ps = np.asarray(blk.coefficients(sdp.n_vars).T @ (p @ s).ravel(order="F")).ravel()
    assert np.allclose(lifted.adj_rows(lifted.apply(p), lifted.apply(s.T)), ref_ps, atol=1e-10)
    assert sp.issparse(lifted.entry_to_var)


def test_unmirrored_entries_act_through_their_symmetric_part():
    """A term whose small matrix is stored one-sided (q at (0, 1) only) acts as sym(A): op, 𝒜, Schur."""
    from lipsdp.ipm import _Block

    rng = np.random.default_rng(3)
    d = 4
    lift = rng.normal(size=(2, d))
    basis = sp.csc_matrix(([1.5], ([0 + 1 * 2], [0])), shape=(4, 1))  # Q[0, 1] = 1.5, Q[1, 0] = 0
    blk = LMIBlock(d, np.eye(d), (QuadTerm(lift, basis, np.array([0]), +1.0),), "one-sided")
    lifted = _Block(blk, 1)
    a = 1.5 * np.outer(lift[0], lift[1])
    a_sym = 0.5 * (a + a.T)
    assert np.allclose(lifted.op(np.array([1.0])), a_sym, atol=1e-12)
    k = rng.normal(size=(d, d))
    assert np.allclose(lifted.adj_rows(lifted.lift, lifted.apply(k)), [np.sum(a_sym * k)], atol=1e-12)
    x = np.eye(d) + 0.1 * np.ones((d, d))
    m = np.zeros((1, 1))
    lifted.schur_factored(lifted.factor_gram(lifted.lifted(x), signed=True), lifted.factor_gram(lifted.lifted(x)), m)
    assert np.isclose(m[0, 0], np.trace(a_sym @ x @ a_sym @ x), rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh", "maxmin", "maxmin_chain"])
@pytest.mark.parametrize("granularity", ["neuron", "layer"])
@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("reduction", ["runs", "sparse"])
def test_factored_schur_complement_is_exact(activation, granularity, spread, reduction, monkeypatch):
    """M_ij = tr(A_i X A_j Z⁻¹) from the factored lifted form equals the brute-force trace.

    ``spread``: the block's variables sit at the even indices of a program twice as
    large, so the rows/columns it adds into are not a contiguous range.  ``reduction``:
    the factor sums by strided runs, or by the sparse product kept for many runs.
    """
    import lipsdp.ipm as ipm_module
    from lipsdp.ipm import _Block

    if reduction == "sparse":
        monkeypatch.setattr(ipm_module, "_MAX_FACTOR_RUNS", 0)

    if activation.startswith("maxmin"):
        from lipsdp.group_activations import maxmin

        activation = maxmin(cross_terms="none" if activation == "maxmin_chain" else "s")
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(6, 4)), rng.normal(size=(2, 6))]
    net = lipsdp.Network.from_weights(ws, None, activation)
    sdp = fm.lipsdp_l2(build_graph(net), granularity)
    blk, n = sdp.blocks[0], sdp.n_vars
    if spread:
        terms = tuple(QuadTerm(t.lift, t.basis, 2 * np.asarray(t.variables), t.sign) for t in blk.terms)
        blk, n = LMIBlock(blk.dim, blk.constant, terms, blk.name), 2 * n
    d = blk.dim
    lifted = _Block(blk, n)
    k = blk.coefficients(n).toarray()
    mats = [k[:, i].reshape(d, d, order="F") for i in range(n)]
    x = rng.normal(size=(d, d))
    x = x @ x.T + np.eye(d)
    zi = rng.normal(size=(d, d))
    zi = zi @ zi.T + np.eye(d)
    brute = np.array([[np.trace(mats[i] @ x @ mats[j] @ zi) for j in range(n)] for i in range(n)])
    ours = np.zeros((n, n))
    lifted.schur_factored(lifted.factor_gram(lifted.lifted(x), signed=True), lifted.factor_gram(lifted.lifted(zi)), ours)
    assert np.allclose(ours, brute, rtol=1e-10, atol=1e-10 * np.abs(brute).max())


def test_factor_runs_sum_each_variables_factors():
    """Summing rows over runs of equally many factors equals a grouped sum, for random counts
    (single-factor variables, one wide variable, interleaved runs)."""
    from lipsdp.ipm import _factor_runs, _sum_factor_runs

    rng = np.random.default_rng(11)
    for _ in range(40):
        counts = np.repeat(rng.integers(1, 6, size=rng.integers(1, 12)), rng.integers(1, 5, size=1))
        counts = np.r_[counts, rng.integers(1, 70, size=rng.integers(0, 2))]
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        k = rng.normal(size=(int(counts.sum()), 7))
        runs = _factor_runs(counts)
        assert sum(n for _, n, _ in runs) == counts.size
        assert np.allclose(_sum_factor_runs(k, runs), np.add.reduceat(k, starts, axis=0), rtol=1e-12, atol=1e-12)


def test_batched_lanczos_bounds_the_smallest_eigenvalue():
    """Batched Ritz values never lie below λ_min by more than their slack, and are close to it."""
    from lipsdp.ipm import _lanczos_smallest, _min_eigs_scaled

    rng = np.random.default_rng(11)
    mats = []
    for _ in range(6):
        a = rng.normal(size=(150, 150))
        mats.append(0.5 * (a + a.T))
    exact = np.array([np.linalg.eigvalsh(m)[0] for m in mats])
    stack = np.stack(mats)
    ritz, vecs = _lanczos_smallest(lambda v: np.matmul(stack, v[:, :, None])[:, :, 0], rng.normal(size=(6, 150)),
                                   max_steps=60, tol=1e-4)
    assert np.all(ritz >= exact - 3e-3 * np.abs(exact))  # a Ritz value minus its 2e-3 slack
    assert np.all(ritz <= exact + 0.05 * np.abs(exact))  # and converged to a few per cent
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    # through the scaled interface: L⁻¹ dM L⁻ᵀ with L the Cholesky factor of an SPD matrix;
    # four equal-sized blocks (explicit scaled matrices) and two of another size (triangular solves)
    los, dms, want = [], [], []
    for size in (140, 140, 140, 140, 120, 120):
        b = rng.normal(size=(size, size))
        spd = b @ b.T + size * np.eye(size)
        lo = np.linalg.cholesky(spd)
        dm = rng.normal(size=(size, size))
        dm = dm + dm.T
        los.append(lo)
        dms.append(dm)
        want.append(np.linalg.eigvalsh(np.linalg.solve(lo, np.linalg.solve(lo, dm).T))[0])
    got = np.array(_min_eigs_scaled(los, dms))
    assert np.all(got >= np.array(want) - 3e-3 * np.abs(want))
    assert np.allclose(got, want, rtol=0.05), (got, want)
    # the inverse factors kept between the predictor's and the corrector's call give the same values
    inverses, starts = {}, {}
    first = _min_eigs_scaled(los, dms, inverses)
    assert len(inverses) == 1
    assert _min_eigs_scaled(los, dms, inverses) == first == list(got)
    # warm starts from the previous Ritz vectors: a perturbed direction is still bounded and close
    _min_eigs_scaled(los, dms, None, starts)
    assert sorted(starts) == list(range(6))
    dms2 = [dm + 0.05 * np.diag(rng.normal(size=dm.shape[0])) for dm in dms]
    want2 = np.array([np.linalg.eigvalsh(np.linalg.solve(lo, np.linalg.solve(lo, dm).T))[0]
                      for lo, dm in zip(los, dms2)])
    warm = np.array(_min_eigs_scaled(los, dms2, None, starts))
    assert np.all(warm >= want2 - 3e-3 * np.abs(want2))
    assert np.allclose(warm, want2, rtol=0.05), (warm, want2)


def test_banded_schur_solver_matches_dense():
    """A narrow-banded SPD Schur complement is solved by the banded Cholesky path exactly like densely."""
    from lipsdp.ipm import _SchurSolver

    rng = np.random.default_rng(12)
    n, bw = 400, 20
    a = rng.normal(size=(n, n))
    m = a @ a.T
    mask = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= bw
    m = m * mask + 50 * n * np.eye(n)  # banded and diagonally dominant (SPD)
    rhs = rng.normal(size=n)
    solver = _SchurSolver(m, bw)
    assert solver.band is not None
    assert np.allclose(m @ solver.solve(rhs), rhs, rtol=1e-10, atol=1e-10 * np.abs(rhs).max())
    dense = _SchurSolver(m, n - 1)
    assert dense.band is None and dense.lo is not None
    assert np.allclose(solver.solve(rhs), dense.solve(rhs), rtol=1e-10, atol=1e-14)


def test_implied_bounds_are_detected_only_when_provable():
    """y_i ≥ 0 leaves the LP cone only when a diagonal entry reached by y_i alone implies it."""
    from lipsdp.ipm import _Block, _implied_nonnegative

    # LipSDP-Neuron (ReLU): −2λ_j on every hidden diagonal and ρ on the inputs imply every bound
    net = random_network(31, max_hidden=3, max_width=7)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    blocks = [_Block(b, sdp.n_vars) for b in sdp.blocks]
    nonneg = np.asarray(sdp.nonneg, bool)
    assert nonneg.any() and np.array_equal(_implied_nonnegative(blocks, nonneg), nonneg)
    # diag(y0, y0 + y1) with F⁰ = diag(−1, 0): y0 ≥ 1 > 0 is implied, y1 (shares its only diagonal) is not
    basis = identity_basis(1)
    terms = [QuadTerm(selector(1, 2, 0), basis, np.array([0]), +1.0),
             QuadTerm(selector(1, 2, 1), basis, np.array([0]), +1.0),
             QuadTerm(selector(1, 2, 1), basis, np.array([1]), +1.0)]
    two = _one_block(np.diag([-1.0, 0.0]), terms, 2, [True, True], [1.0, 1.0])
    got = _implied_nonnegative([_Block(b, 2) for b in two.blocks], np.array([True, True]))
    assert got.tolist() == [True, False]
    # a positive constant on the diagonal (y0 ≥ −1 only) implies nothing
    loose = _one_block(np.diag([1.0, 0.0]), terms[:1], 2, [True, False], [1.0, 0.0])
    assert not _implied_nonnegative([_Block(b, 2) for b in loose.blocks], np.array([True, False])).any()
    # and the solve with the bound in the cone (y1) keeps it: min y0 + y1 → y = (1, 0)
    res = ipm_solve(two)
    assert res.y[1] >= -1e-9 and abs(res.y[0] - 1.0) < 1e-6


@pytest.mark.parametrize("d", [1, 5, 264])
def test_inverse_from_cholesky_factor(d):
    """The full symmetric inverse from a factor whose upper triangle is exactly zero."""
    from lipsdp.ipm import _chol, _inv_from_chol, _lower_inverse

    a = np.random.default_rng(d).normal(size=(d, d))
    s = a @ a.T + d * np.eye(d)
    lo = _chol(s)
    assert np.all(np.triu(lo, 1) == 0)
    inv = _inv_from_chol(lo)
    assert np.array_equal(inv, inv.T)
    assert np.allclose(inv @ s, np.eye(d), atol=1e-12)
    li = _lower_inverse(lo)
    assert np.all(np.triu(li, 1) == 0) and np.allclose(li @ lo, np.eye(d), atol=1e-12)


def test_single_precision_block_computes_the_same_products():
    """A float32 copy of a block returns float32 results equal to the float64 ones up to float32 rounding."""
    from lipsdp.ipm import _Block

    net = random_network(5, max_hidden=3, max_width=12)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    full = _Block(sdp.blocks[0], sdp.n_vars)
    single = full.cast(np.float32)
    rng = np.random.default_rng(4)
    d = full.dim
    y = rng.normal(size=(d, d))
    y = y @ y.T + np.eye(d)
    dy = rng.normal(size=sdp.n_vars)
    scale = np.abs(full.op(dy)).max()
    pairs = [
        (full.apply(y), single.apply(y.astype(np.float32))),
        (full.lifted(y), single.lifted(y.astype(np.float32))),
        (full.op(dy), single.op(dy)),
        (full.op_times(full.apply(y), full.small(dy)), single.op_times(single.apply(y.astype(np.float32)), single.small(dy))),
        (full.factor_gram(full.lifted(y)), single.factor_gram(single.lifted(y.astype(np.float32)))),
    ]
    for ref, low in pairs:
        assert low.dtype == np.float32
        assert np.allclose(low, ref, rtol=1e-4, atol=1e-4 * max(np.abs(ref).max(), scale))
    assert full.lift.dtype == np.float64 and full.apply(y).dtype == np.float64  # the original is untouched


@pytest.mark.parametrize("seed", range(4))
def test_deep_sigmoid_chains_match_cvxopt_and_stay_above_lower_bounds(seed):
    """Deep sigmoid chains (slopes in [0, 1/4]) have bounds of order 4^-depth: with the slopes
    normalised the ipm solves them and agrees with CVXOPT; the bound stays above a lower bound."""
    from lipsdp.lower import gradient_lower_bound

    if "cvxpy:CVXOPT" not in lipsdp.solvers():
        pytest.skip("cvxpy:CVXOPT not available")
    rng = np.random.default_rng(40 + seed)
    sizes = [int(rng.integers(4, 30))] + [int(rng.integers(8, 24))] * int(rng.integers(4, 7)) + [int(rng.integers(1, 4))]
    weights = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
    net = lipsdp.Network.from_weights(weights, activation="sigmoid")
    ours = lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm")
    ref = lipsdp.estimate(net, method="lipsdp-neuron", solver="cvxpy:CVXOPT")
    assert abs(ours.value - ref.value) <= 1e-6 * ref.value, (ours.value, ref.value)
    assert ours.value >= gradient_lower_bound(net, n_starts=4, steps=40).value * (1 - 1e-9)


def test_slope_normalisation_moves_the_slope_into_the_next_weight():
    """normalise_chain: a sigmoid layer becomes slopes [0, 1] with 1/4 in the bound's product; the
    ReLU layer and the GroupSort-free chain are left alone; multipliers lift back to a certificate."""
    from lipsdp.activations import SlopeRestricted
    from lipsdp.certificate import certify

    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))]
    acts = [rule_from_spec("sigmoid"), rule_from_spec("relu")]
    net = lipsdp.Network.from_weights(weights, None, acts)
    work, norm = fm.normalise_chain(net)
    assert isinstance(work.activations[0], SlopeRestricted) and work.activations[0].beta == 1.0
    assert work.activations[0].alpha == 0.0 and work.activations[1] is acts[1]
    norms = np.array([np.linalg.norm(w, 2) for w in weights])
    assert norm.product == pytest.approx(float(np.prod(norms)) * 0.25, rel=1e-12)
    x = rng.normal(size=6)
    assert np.allclose(work.activations[0].forward(x), acts[0].forward(x) / 0.25)
    sdp_hat = fm.lipsdp_l2(build_graph(work), "neuron")
    res = solve_with_ipm(sdp_hat)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    cert = certify(sdp, norm.lift_multipliers(res.y, sdp_hat.var_layer))
    assert cert.value == pytest.approx(sdp_hat.bound(res.y[0]) * norm.product, rel=1e-6)


def test_factor_gram_into_kept_memory(monkeypatch):
    """Grams formed in a _GramWork equal the freshly allocated ones, in float64 and in float32, and
    the float32 views use the same memory as the float64 ones (no new pages at the switch)."""
    from lipsdp import ipm
    from lipsdp.ipm import _Block, _gram_work

    monkeypatch.setattr(ipm, "_MAX_GATHER", 0)  # the Gram path (these factor rows would be gathered)

    net = random_network(6, max_hidden=3, max_width=12)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    full = _Block(sdp.blocks[0], sdp.n_vars)
    single = full.cast(np.float32)
    (work_x, work_z), = _gram_work([full])
    rng = np.random.default_rng(7)
    y = rng.normal(size=(full.dim, full.dim))
    y = y @ y.T + np.eye(full.dim)
    for signed in (True, False):
        ref = full.factor_gram(full.lifted(y), signed)
        kept = full.factor_gram(full.lifted(y), signed, work_x)
        np.testing.assert_allclose(kept, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        low = single.factor_gram(single.lifted(y.astype(np.float32)), signed, work_x)
        assert low.dtype == np.float32 and np.shares_memory(low, kept)
        np.testing.assert_allclose(low, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert not np.shares_memory(work_x.arrays(np.float64)[2], work_z.arrays(np.float64)[2])


@pytest.mark.parametrize("seed", range(6))
def test_single_precision_phase_leaves_the_optimum(seed):
    """Starting in float32 (the default) reaches the float64-only optimum, with float64 results."""
    net = random_network(300 + seed, max_hidden=4, max_width=40)
    work, _ = fm.normalise_chain(net)
    sdp = fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")
    mixed = ipm_solve(sdp, tol=1e-8)
    double = ipm_solve(sdp, tol=1e-8, single_until=0.0)
    assert abs(mixed.dual_objective - double.dual_objective) <= 1e-7 * abs(double.dual_objective)
    assert mixed.y.dtype == np.float64 and all(x.dtype == np.float64 for x in mixed.X)
    assert mixed.iterations <= double.iterations + 2


def test_a_failed_single_precision_factorisation_continues_in_double(monkeypatch):
    """A float32 Cholesky failure hands the iterate to the float64 phase instead of failing the solve."""
    from lipsdp import ipm

    net = random_network(7, max_hidden=3, max_width=30)
    work, _ = fm.normalise_chain(net)
    sdp = fm.lipsdp_l2(fm.reduce_graph(build_graph(work)), "neuron")
    reference = ipm_solve(sdp, tol=1e-8, single_until=0.0)
    real_chol = ipm._chol
    failed = []

    def chol(a):  # the first float32 factorisation fails
        if a.dtype == np.float32 and not failed:
            failed.append(True)
            return None
        return real_chol(a)

    monkeypatch.setattr(ipm, "_chol", chol)
    res = ipm_solve(sdp, tol=1e-8, single_until=1e-3)
    assert failed
    assert abs(res.dual_objective - reference.dual_objective) <= 1e-7 * abs(reference.dual_objective)


@pytest.mark.parametrize("a1, a2", [(0.0, 1.0), (-2.0, 3.5), (1.0, -1.0)])
def test_several_blocks_sharing_a_free_multiplier(a1, a2):
    """min t s.t. [[t, x − a_b], [x − a_b, 1]] ⪰ 0 for b = 1, 2 (x free): t* = ((a1 − a2)/2)², x* = (a1 + a2)/2.

    Two LMI blocks coupled only through the free x, whose off-diagonal coefficient enters as the
    difference of two rank-one terms, ``x(e₁e₂ᵀ + e₂e₁ᵀ) = x/2 [(e₁+e₂)(e₁+e₂)ᵀ − (e₁−e₂)(e₁−e₂)ᵀ]``.
    """
    s = np.sqrt(0.5)
    blocks = []
    for a in (a1, a2):
        terms = (QuadTerm(selector(1, 2, 0), identity_basis(1), np.array([0]), +1.0),
                 QuadTerm(sp.csr_matrix([[s, s]]), identity_basis(1), np.array([1]), +1.0),
                 QuadTerm(sp.csr_matrix([[s, -s]]), identity_basis(1), np.array([1]), -1.0))
        blocks.append(LMIBlock(2, np.array([[0.0, -a], [-a, 1.0]]), terms))
    sdp = SDP(2, np.array([1.0, 0.0]), blocks, np.array([True, False]), 0, np.sqrt)
    result = solve_with_ipm(sdp, tol=1e-9)
    t_opt, x_opt = ((a1 - a2) / 2) ** 2, (a1 + a2) / 2
    assert abs(result.objective - t_opt) <= 1e-7 * max(1.0, t_opt)
    assert abs(result.y[1] - x_opt) <= 1e-4 * max(1.0, abs(x_opt))
    for block in blocks:
        assert np.linalg.eigvalsh(block.evaluate(result.y))[0] >= -1e-7


@pytest.mark.parametrize("seed", range(8))
def test_gathered_schur_complement_equals_the_factor_gram_one(seed, monkeypatch):
    """The chunked, gathered Schur complement (factor rows with few non-zeros) equals the one from the
    R × R factor Grams, with several chunks on two threads; factor rows wider than ``_MAX_GATHER``
    (GroupSort(4) with the limit lowered to 2) take the Gram path."""
    from lipsdp import ipm
    from lipsdp.runtime import split_products

    kind = ("relu", "tanh", "maxmin", "groupsort")[seed % 4]
    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(2, 7))] + [2 * int(rng.integers(1, 5))] * int(rng.integers(1, 4)) + [3]
    weights = [rng.normal(size=(b, a)) for a, b in zip(widths, widths[1:])]
    if kind == "groupsort":
        widths[1:-1] = [4 * w for w in widths[1:-1]]
        weights = [rng.normal(size=(b, a)) for a, b in zip(widths, widths[1:])]
    act = rule_from_spec("groupsort:4" if kind == "groupsort" else kind)
    net = lipsdp.Network.from_weights(weights, None, act)
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    monkeypatch.setattr(ipm, "_GRAM_REUSE_MAX", 0)  # small blocks would keep their Grams instead
    if kind == "groupsort":
        monkeypatch.setattr(ipm, "_MAX_GATHER", 2)
    blocks = [ipm._Block(b, sdp.n_vars) for b in sdp.blocks]
    assert all((blk.factor_gather is None) == (kind == "groupsort") for blk in blocks if blk.n_factors)
    u, v = [], []
    for blk in blocks:
        a, b = rng.normal(size=(2, blk.dim, blk.dim))
        u.append(blk.lifted(a @ a.T))
        v.append(blk.lifted(b @ b.T))
    monkeypatch.setattr(ipm, "_GATHER_CHUNK_BYTES", 8 * 24)  # a few factor rows per chunk
    with split_products():
        gathered = ipm._schur_complement(blocks, u, v, sdp.n_vars)
    for blk in blocks:
        blk.__dict__["factor_gather"] = None  # every block through the factor Grams
    reference = ipm._schur_complement(blocks, u, v, sdp.n_vars)
    assert np.allclose(gathered, reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())


@pytest.mark.parametrize("seed", range(8))
def test_structured_corrector_product_equals_the_dense_one(seed):
    """``ΔX ΔZ_y`` by the lift's panels, ``(Gᵀ Q(Δy) (G ΔX))ᵀ``, equals the dense product with
    ``ΔZ_y = Σ Δy_i A_i`` for every activation family (mirrored entries make ``Q`` symmetric).
    Whole solves through it are compared with CVXOPT by the tests above."""
    from lipsdp import ipm
    from lipsdp.runtime import transpose_copy

    kind = ("relu", "tanh", "maxmin", "groupsort")[seed % 4]
    rng = np.random.default_rng(100 + seed)
    widths = [int(rng.integers(2, 7))] + [4 * int(rng.integers(1, 4))] * int(rng.integers(1, 4)) + [3]
    weights = [rng.normal(size=(b, a)) for a, b in zip(widths, widths[1:])]
    net = lipsdp.Network.from_weights(weights, None, rule_from_spec("groupsort:4" if kind == "groupsort" else kind))
    sdp = fm.lipsdp_l2(build_graph(net), "neuron")
    for blk in (ipm._Block(b, sdp.n_vars) for b in sdp.blocks):
        dx = rng.normal(size=(blk.dim, blk.dim))
        dx += dx.T
        dy = rng.normal(size=sdp.n_vars)
        structured = transpose_copy(blk.op_times(blk.apply(dx), blk.small(dy)))
        dense = dx @ blk.op(dy)
        assert np.allclose(structured, dense, rtol=1e-12, atol=1e-12 * np.abs(dense).max())
