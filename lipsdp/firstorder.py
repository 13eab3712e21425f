"""A first-order solver for one-block ℓ2 LipSDP on feed-forward chains (``"firstorder"``).

The program is (see :func:`lipsdp.formulations.lipsdp_l2`)

    minimise ρ  s.t.  F(ρ, μ) = ρ E₀ᵀE₀ + F̃(μ) ⪰ 0,   F̃(μ) = −CᵀC − Σ_k G_kᵀ Q_k(μ_k) G_k.

Order ``z = (x₀, rest)`` and write ``F̃ = [[A, Bᵀ], [B, D]]``.  For fixed
multipliers with ``D(μ) ≻ 0`` the Schur complement gives the smallest feasible
ρ in closed form,

    ρ*(μ) = λ_max(Bᵀ D⁻¹ B − A),

so the SDP is the unconstrained (apart from ``D ≻ 0``) minimisation of the
convex function ``ρ*``.  With a top eigenvector ``v`` of ``BᵀD⁻¹B − A`` and
``u = D⁻¹Bv``, the vector ``w = (v, −u)`` satisfies ``wᵀF̃w = −ρ*`` and the
(sub)gradient is ``∂ρ*/∂μ_i = −wᵀ (∂F̃/∂μ_i) w``: for each term this is a sum of
products of entries of ``G_k w`` weighted by the few non-zeros of ``∂Q_k/∂μ_i``,
so all partial derivatives cost one pass over the lifts.  To soften the kink
of λ_max at (near) multiple top eigenvalues the gradient averages the top few
eigenvectors with soft-max weights of temperature ``smooth·ρ``.

Every iterate ``(ρ*(μ), μ)`` is a feasible point of the SDP (up to rounding,
which :func:`lipsdp.certificate.certify` accounts for), so the answer is an upper
bound of the SDP optimum; it is returned with status ``"feasible"``.

Structure used: a feed-forward chain, i.e. the coordinates after ``x₀`` are
the outputs of groups ``1…K`` in order, group ``k``'s lift is ``[P_k; E_k]``
with ``E_k`` the selector of its outputs and ``P_k`` supported on the previous
block, and ``CᵀC`` lives on the last block.  Then ``F̃`` is block tridiagonal
and assembled from dense ``W_k`` with sparse ``Q_k``.

Start: a greedy layer-by-layer feasible point (ECLipsE-Fast's rule written on
the SDP's own terms): with reference multipliers (non-negative ones 1, free
ones 0) scaled by one scalar ``s_k`` per layer, keep the running Schur
complement ``S_k = s T_bb − s² T_abᵀ (S_{k−1} + s T_aa)⁻¹ T_ab`` positive
definite with the largest smallest eigenvalue (``s`` stays below the value
where ``S_{k−1} + s T_aa`` stops being definite), then ``ρ = λ_max(S⁻¹ CᵀC)``.
For slope-restricted activations this is the ECLipsE-Fast point.

Then Adam on ``log μ`` (non-negative multipliers; free ones move additively
on the scale of their layer), rejecting and shrinking steps that lose
``D ≻ 0`` or increase ρ* too much; the best iterate is returned.  Stops at
``time_limit`` seconds or when the best value decreased by less than
``rel_tol`` (relative) over ``patience`` iterations.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .errors import LipSDPError, SolverFailedError
from .sdp import SDP


class _Chain:
    """The chain structure of a one-block ℓ2 LipSDP (raises ValueError when it is not one)."""

    def __init__(self, sdp: SDP):
        if len(sdp.blocks) != 1:
            raise ValueError("needs a single LMI block")
        if sdp.meta.get("norm", 2) != 2 or not str(sdp.meta.get("formulation", "")).startswith("lipsdp-"):
            raise ValueError(f"needs an ℓ2 LipSDP formulation, not {sdp.meta.get('formulation')!r}")
        if "layerwise" in str(sdp.meta.get("formulation", "")):
            raise ValueError("the layer-wise (multi-block) form is not supported")
        block = sdp.blocks[0]
        d = block.dim
        terms = block.terms
        if len(terms) < 2:
            raise ValueError("needs at least one activation group")
        t0 = terms[0]
        g0 = sp.csr_matrix(t0.lift)
        n0 = g0.shape[0]
        if (list(t0.variables) != [sdp.rho] or t0.sign != 1.0 or g0.nnz != n0
                or not np.array_equal(g0.indices, np.arange(n0)) or not np.all(g0.data == 1.0)):
            raise ValueError("the first term must be ρ·‖x₀‖²")
        q0 = t0.basis.tocoo()
        if not (q0.nnz == n0 and np.all(q0.data == 1.0) and np.array_equal(np.sort(q0.row), np.arange(n0) * (n0 + 1))):
            raise ValueError("the first term must be ρ·I")
        self.n0, self.d = n0, d
        self.offsets = [0]
        self.widths = [n0]
        self.weights, self.layers = [], []
        var_terms = np.zeros(sdp.n_vars, dtype=int)
        var_terms[sdp.rho] = -1
        seen = {sdp.rho}
        off = n0
        for k, term in enumerate(terms[1:], start=1):
            g = sp.csr_matrix(term.lift)
            m = g.shape[0] // 2
            if g.shape[0] != 2 * m:
                raise ValueError("activation lifts must be [P; E]")
            e = g[m:]
            if not (e.nnz == m and np.all(np.diff(e.indptr) == 1) and np.array_equal(e.indices, off + np.arange(m))
                    and np.all(e.data == 1.0)):
                raise ValueError("activation outputs must be consecutive coordinates (feed-forward chain)")
            p = g[:m].tocsc()
            lo, hi = self.offsets[-1], self.offsets[-1] + self.widths[-1]
            cols = np.nonzero(np.diff(p.indptr))[0]
            if cols.size and (cols.min() < lo or cols.max() >= hi):
                raise ValueError("pre-activations must depend on the previous layer only (feed-forward chain)")
            self.weights.append(p[:, lo:hi].toarray())
            coo = term.basis.tocoo()
            r = 2 * m
            ra, rb = coo.row % r, coo.row // r
            vars_ = np.asarray(term.variables)[coo.col]
            if np.intersect1d(np.asarray(term.variables), list(seen)).size:
                raise ValueError("a variable is shared between terms")
            seen.update(np.asarray(term.variables).tolist())
            var_terms[term.variables] = k
            self.layers.append(dict(m=m, sign=float(term.sign), ra=ra, rb=rb, vars=vars_, data=coo.data.astype(float),
                                    variables=np.asarray(term.variables)))
            self.offsets.append(off)
            self.widths.append(m)
            off += m
        if off != d:
            raise ValueError("coordinates beyond the chain's layers")
        const = np.asarray(block.constant, float)
        last = slice(self.offsets[-1], d)
        rest = const.copy()
        rest[last, last] = 0.0
        if np.any(rest):
            raise ValueError("the constant term must live on the last layer (−CᵀC)")
        self.k_last = -const[last, last]
        self.n_vars = sdp.n_vars
        self.rho = sdp.rho
        self.var_terms = var_terms
        self.nonneg = np.zeros(sdp.n_vars, bool)
        self.nonneg[np.asarray(sdp.nonneg, bool)] = True

    # ------------------------------------------------------------------ pieces of F̃(μ)
    def q_blocks(self, k: int, y: np.ndarray):
        """(Qvv, Qvφ, Qφφ) sparse for layer k (1-based), with the term's sign."""
        lay = self.layers[k - 1]
        m = lay["m"]
        q = sp.csr_matrix((lay["sign"] * lay["data"] * y[lay["vars"]], (lay["ra"], lay["rb"])), shape=(2 * m, 2 * m))
        return q[:m, :m], q[:m, m:], q[m:, m:]

    def layer_blocks(self, k: int, y: np.ndarray):
        """Dense contributions (T_aa, T_ab, T_bb) of layer k to blocks (k−1,k−1), (k−1,k), (k,k)."""
        w = self.weights[k - 1]
        qvv, qvf, qff = self.q_blocks(k, y)
        taa = w.T @ np.asarray(qvv @ w) if qvv.nnz else None
        tab = np.asarray(qvf.T @ w).T if qvf.nnz else None
        tbb = qff.toarray()
        return taa, tab, tbb

    def assemble(self, y: np.ndarray):
        """``A`` (n₀×n₀), ``B`` (rest×n₀) and ``D`` (rest×rest) of F̃(y), dense."""
        n0, d = self.n0, self.d
        f = np.zeros((d, d))
        for k in range(1, len(self.offsets)):
            a = slice(self.offsets[k - 1], self.offsets[k - 1] + self.widths[k - 1])
            b = slice(self.offsets[k], self.offsets[k] + self.widths[k])
            taa, tab, tbb = self.layer_blocks(k, y)
            if taa is not None:
                f[a, a] += taa
            if tab is not None:
                f[a, b] += tab
                f[b, a] += tab.T
            f[b, b] += tbb
        last = slice(self.offsets[-1], d)
        f[last, last] -= self.k_last
        return f[:n0, :n0], f[n0:, :n0], f[n0:, n0:]

    def lifted(self, w: np.ndarray):
        """``G_k w`` for every layer (w: d × p)."""
        out = []
        for k in range(1, len(self.offsets)):
            a0, b0 = self.offsets[k - 1], self.offsets[k]
            pw = self.weights[k - 1] @ w[a0:a0 + self.widths[k - 1]]
            out.append(np.vstack([pw, w[b0:b0 + self.widths[k]]]))
        return out

    def gradient(self, w: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``−Σ_p π_p w_pᵀ (∂F̃/∂y_i) w_p`` for all multipliers i (ρ's entry left 0)."""
        grad = np.zeros(self.n_vars)
        for lay, gw in zip(self.layers, self.lifted(w)):
            prod = (gw[lay["ra"]] * gw[lay["rb"]]) @ weights
            grad += -lay["sign"] * np.bincount(lay["vars"], weights=lay["data"] * prod, minlength=self.n_vars)
        return grad


class _Evaluation:
    __slots__ = ("rho", "grad", "vecs", "ok")


def _evaluate(chain: _Chain, y: np.ndarray, n_eig: int, smooth: float, v0=None, need_grad: bool = True):
    """ρ*(y) and its (smoothed) gradient; ``ok`` False when D(y) is not positive definite."""
    out = _Evaluation()
    a, b, dmat = chain.assemble(y)
    try:
        chol = la.cholesky(dmat, lower=True, overwrite_a=True, check_finite=False)
    except la.LinAlgError:
        out.ok = False
        return out
    if not np.all(np.isfinite(np.diag(chol))) or np.min(np.diag(chol)) <= 0:
        out.ok = False
        return out
    x = la.solve_triangular(chol, b, lower=True, check_finite=False)
    m = x.T @ x - a
    m = 0.5 * (m + m.T)
    if not np.all(np.isfinite(m)):  # over- or underflow in the Schur complement: treat as infeasible
        out.ok = False
        return out
    n0 = m.shape[0]
    p = min(n_eig, n0)
    vals, vecs = la.eigh(m, subset_by_index=[n0 - p, n0 - 1], check_finite=False)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    out.ok = True
    out.rho = float(vals[0])
    out.vecs = vecs
    if not need_grad:
        return out
    if smooth > 0 and p > 1:
        z = (vals - vals[0]) / max(smooth * abs(vals[0]), 1e-300)
        wts = np.exp(z)
        wts /= wts.sum()
    else:
        wts = np.zeros(p)
        wts[0] = 1.0
    keep = wts > 1e-8
    v = vecs[:, keep]
    u = la.solve_triangular(chol, la.solve_triangular(chol, b @ v, lower=True, check_finite=False),
                            lower=True, trans="T", check_finite=False)
    w = np.vstack([v, -u])
    out.grad = chain.gradient(w, wts[keep])
    return out


def greedy_start(chain: _Chain, delta: float = 1e-3, slack: float = 1e-6) -> tuple[np.ndarray, dict]:
    """Layer-by-layer feasible point (ECLipsE-Fast's rule on the SDP's terms); see the module docstring."""
    from scipy.optimize import minimize_scalar

    y_ref = np.where(chain.nonneg, 1.0, 0.0)
    y_ref[chain.rho] = 0.0
    s_run = np.eye(chain.n0)
    scales = []
    for k in range(1, len(chain.offsets)):
        taa, tab, tbb = chain.layer_blocks(k, y_ref)
        lam_s = la.eigvalsh(s_run, subset_by_index=[0, 0])[0]
        # largest s with S + s T_aa ≻ 0
        s_bd = np.inf
        if taa is not None:
            gen = la.eigh(-taa, s_run, eigvals_only=True, subset_by_index=[taa.shape[0] - 1, taa.shape[0] - 1])[0]
            if gen > 0:
                s_bd = 1.0 / gen
        n_ab = np.linalg.norm(tab, 2) if tab is not None else 0.0
        n_bb = max(np.linalg.norm(tbb, 2), 1e-300)
        n_aa = np.linalg.norm(taa, 2) if taa is not None else 0.0
        s0 = lam_s / max(n_ab**2 / n_bb, n_aa, 1e-300)
        s_hi = min(s0 * np.exp(8), (1 - delta) * s_bd)
        if not (np.isfinite(s0) and np.isfinite(s_hi) and s0 > 0 and s_hi > 0):
            raise SolverFailedError(
                f"firstorder: layer {k}'s data are out of float64's range for the greedy start (step scale {s0:.3g}); "
                "pose the SDP on a normalised network (lipsdp.estimate does)", "numerical-error")

        def schur(s: float):
            inner = s_run + (s * taa if taa is not None else 0.0)
            try:
                c = la.cho_factor(inner, lower=True, check_finite=False)
            except la.LinAlgError:
                return None
            out = s * tbb
            if tab is not None:
                out = out - s * s * tab.T @ la.cho_solve(c, tab, check_finite=False)
            out = 0.5 * (out + out.T)
            return out if np.all(np.isfinite(out)) else None  # overflow: no usable step

        def score(log_s: float) -> float:
            sk = schur(np.exp(log_s))
            return np.inf if sk is None else -la.eigvalsh(sk, subset_by_index=[0, 0], check_finite=False)[0]

        lo = np.log(min(s0, s_hi)) - 8
        res = minimize_scalar(score, bounds=(lo, np.log(s_hi)), method="bounded", options={"xatol": 1e-4})
        s = float(np.exp(res.x))
        if score(np.log(s_hi)) <= res.fun:
            s = s_hi
        sk = schur(s)
        if sk is None or not la.eigvalsh(sk, subset_by_index=[0, 0], check_finite=False)[0] > 0:
            raise SolverFailedError(f"firstorder: no positive definite greedy step at layer {k}", "start-failed")
        scales.append(s)
        s_run = sk
    rho = float(la.eigh(chain.k_last, s_run, eigvals_only=True, subset_by_index=[chain.k_last.shape[0] - 1] * 2,
                        check_finite=False)[0])
    if not np.isfinite(rho):
        raise SolverFailedError("firstorder: the greedy start's bound is not finite (data out of float64's range)",
                                "numerical-error")
    if not rho > 0:
        rho = 1e-12
    rho *= 1 + slack
    y = np.zeros(chain.n_vars)
    for k, s in enumerate(scales, start=1):
        idx = chain.layers[k - 1]["variables"]
        y[idx] = rho * s * y_ref[idx]
    y[chain.rho] = rho
    return y, {"scales": scales}


def solve_firstorder(sdp: SDP, time_limit: float = 240.0, max_iters: int = 100000, lr: float = 0.05,
                     rel_tol: float = 1e-6, patience: int = 20, n_eig: int = 8, smooth: float = 0.03,
                     smooth_min: float = 1e-4,
                     y0: np.ndarray | None = None, verbose: bool = False):
    """The ``"firstorder"`` back end (see the module docstring).

    Raises
    ------
    SolverFailedError
        When the SDP is not a one-block chain (status ``"not-applicable"``), the
        greedy start finds no positive definite step, or the data or iterates
        leave float64's range (status ``"numerical-error"``).
    """
    start = time.perf_counter()
    try:
        chain = _Chain(sdp)
    except ValueError as exc:
        raise SolverFailedError(f"firstorder does not apply: {exc}", "not-applicable") from exc
    try:
        return _descend(chain, start, time_limit, max_iters, lr, rel_tol, patience, n_eig, smooth, smooth_min, y0,
                        verbose)
    except LipSDPError:
        raise
    except (ValueError, ArithmeticError, la.LinAlgError) as exc:
        # LAPACK/scipy refusing non-finite data, or an optimisation bound that overflowed: the iterates left
        # float64's range, which no retry here repairs
        raise SolverFailedError(f"firstorder: numerical breakdown ({type(exc).__name__}: {exc}); "
                                "try the default solver", "numerical-error") from exc


def _descend(chain: _Chain, start: float, time_limit, max_iters, lr, rel_tol, patience, n_eig, smooth, smooth_min,
             y0, verbose):
    """Greedy start, then Adam on the multipliers (the body of :func:`solve_firstorder`)."""
    from .solver_registry import SolveResult

    if y0 is None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and reported by greedy_start
            y, start_info = greedy_start(chain)
    else:
        y, start_info = np.array(y0, float), {"scales": None}
    ev = _evaluate(chain, y, n_eig, smooth)
    if not ev.ok:
        raise SolverFailedError("firstorder: D(μ) is not positive definite at the start point", "start-failed")
    start_rho = ev.rho
    nn = chain.nonneg.copy()
    nn[chain.rho] = False
    free = ~chain.nonneg
    free[chain.rho] = False
    if np.any(y[nn] <= 0):  # log-parametrisation needs μ > 0
        y[nn] = np.maximum(y[nn], 1e-12 * max(np.max(y[nn]), 1e-300))
        ev = _evaluate(chain, y, n_eig, smooth)
        if not ev.ok:
            raise SolverFailedError("firstorder: D(μ) is not positive definite at the start point", "start-failed")
    # scale for free variables: mean non-negative multiplier of their layer
    layer_scale = np.ones(chain.n_vars)
    for lay in chain.layers:
        idx = lay["variables"]
        pos = idx[nn[idx]]
        layer_scale[idx] = np.mean(y[pos]) if pos.size else 1.0
    best_y, best_rho = y.copy(), ev.rho
    history = [ev.rho]
    m1 = np.zeros(chain.n_vars)
    m2 = np.zeros(chain.n_vars)
    b1, b2, eps = 0.9, 0.999, 1e-12
    step = lr
    it = rejected = it_base = 0
    status = "time-limit"
    cur = ev
    while it < max_iters:
        if time.perf_counter() - start > time_limit:
            status = "time-limit"
            break
        it += 1
        # gradient in the optimisation coordinates: log μ for μ ≥ 0, μ/scale for free ones
        g = np.zeros(chain.n_vars)
        g[nn] = cur.grad[nn] * y[nn]
        g[free] = cur.grad[free] * layer_scale[free]
        g /= max(abs(cur.rho), 1e-300)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        mh = m1 / (1 - b1 ** (it - it_base))
        vh = m2 / (1 - b2 ** (it - it_base))
        d = -mh / (np.sqrt(vh) + eps)
        while True:
            y_new = y.copy()
            y_new[nn] = y[nn] * np.exp(step * d[nn])
            y_new[free] = y[free] + step * d[free] * layer_scale[free]
            ev = _evaluate(chain, y_new, n_eig, smooth)
            if ev.ok and ev.rho <= cur.rho * (1 + 0.05):
                break
            rejected += 1
            step *= 0.5
            if step < 1e-8 * lr:
                break
        if not ev.ok or step < 1e-8 * lr:
            status = "stalled"
            break
        y, cur = y_new, ev
        y[chain.rho] = ev.rho
        if ev.rho < best_rho:
            best_rho, best_y = ev.rho, y.copy()
        history.append(best_rho)
        if verbose:
            print(f"it {it:4d}  rho* {ev.rho:.10g}  best {best_rho:.10g}  step {step:.3g}  "
                  f"t {time.perf_counter() - start:.1f}s")
        if len(history) > patience and history[-patience - 1] - best_rho <= rel_tol * abs(best_rho):
            if smooth <= smooth_min:
                status = "converged"
                break
            # continuation: sharpen the soft-max of the top eigenvalues and restart from the best point
            smooth = max(smooth / 3, smooth_min) if smooth / 3 > smooth_min * 1.5 else smooth_min
            y = best_y.copy()
            cur = _evaluate(chain, y, n_eig, smooth)
            history = [best_rho]
            m1[:] = 0
            m2[:] = 0
            it_base = it
            step = lr
            continue
        step = min(lr, step * 1.1)
    else:
        status = "max-iterations"
    best_y[chain.rho] = best_rho
    elapsed = time.perf_counter() - start
    return SolveResult(best_y, "feasible", float(best_rho), "firstorder", elapsed,
                       {"iterations": it, "start_value": start_rho, "stop": status, "rejected_steps": rejected,
                        "start": "greedy (ECLipsE-Fast rule)" if y0 is None else "given", "final_smooth": smooth})


def _available() -> str | None:
    return None


def applies_to_structure(sdp: SDP) -> bool:
    try:
        _Chain(sdp)
    except ValueError:
        return False
    return True


def register() -> None:
    from .solver_registry import SolverSpec, register_solver

    from .ipm import AUTOMATIC_MAX_SIZE

    # the automatic choice for one-block chains too large for the interior-point solver's dense iterations
    # (a CNN unrolled at MNIST size); below that the exact interior-point paths come first
    register_solver(SolverSpec("firstorder", solve_firstorder, _available, priority=55, applies=applies_to_structure,
                               min_size=AUTOMATIC_MAX_SIZE + 1))
