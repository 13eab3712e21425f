"""A barrier interior-point solver for one-block SDPs with block-tridiagonal (chain) sparsity.

The program is the SDP of :mod:`lipsdp.sdp` with a single LMI block,

    minimise cᵀy  s.t.  Z(y) = F⁰ + Σ_i y_i A_i ⪰ 0,  y_i ≥ 0 (i ∈ N),

whose aggregate sparsity is *block tridiagonal*: the coordinates split into
consecutive blocks ``0 … K−1`` (for a feed-forward chain: the input and the
hidden layers), every term of the block lives on two consecutive blocks (a
*clique* ``(c, c+1)``), and every variable belongs to the terms of one clique.
LipSDP-Neuron and LipSDP-Layer of a chain have this form (docs/formulations.md §2:
the chain LMI is block tridiagonal); so does a network whose skip connections only
merge neighbouring layers into larger blocks.

Method: the log-barrier (dual) path-following method,

    minimise  φ_μ(y) = cᵀy/μ − log det Z(y) − Σ_{i∈N} log y_i,   μ ↓ 0,

with damped Newton steps (Nesterov & Nemirovski's self-concordance theory;
the dual-scaling view of Benson, Ye & Zhang, "Solving large-scale sparse
semidefinite programs for combinatorial optimization", SIAM J. Optim. 2000).
Every iterate is strictly feasible, so the returned multipliers satisfy
``Z(y) ≻ 0`` and the pipeline's float64 certificate needs no repair; at a
centred point the duality gap is at most ``ν μ (1 + δ)`` with ``ν = K_dim + |N|``
the barrier parameter and ``δ`` the Newton decrement.

Everything runs on the blocks, never on a dense ``N × N`` matrix
(Andersen, Dahl & Vandenberghe, "Logarithmic barriers for sparse matrix
cones", Optim. Methods Softw. 2013, for chordal patterns in general):

* ``Z = L D Lᵀ`` by the block Schur recursion ``S₀ = D₀``,
  ``T_k = S_{k−1}⁻¹ E_kᵀ``, ``S_k = D_k − E_k T_k`` (no fill-in); ``log det Z = Σ log det S_k``;
* the gradient ``tr(A_i Z⁻¹)`` needs ``Z⁻¹`` only on the pattern (the projected
  inverse ``Σ``), from the backward recursion ``Σ_{K−1} = S_{K−1}⁻¹``,
  ``Σ_{k+1,k} = −Σ_{k+1,k+1} T_{k+1}ᵀ``, ``Σ_{kk} = S_k⁻¹ + T_{k+1} Σ_{k+1,k+1} T_{k+1}ᵀ``;
* the Hessian ``H_ij = tr(A_i Z⁻¹ A_j Z⁻¹)`` is dense, so Newton systems are
  solved by preconditioned conjugate gradients: a product ``H v = 𝒜*(Z⁻¹ 𝒜(v) Z⁻¹)``
  is the directional derivative of the projected inverse along ``−𝒜(v)``
  (forward-mode differentiation of both recursions);
* the preconditioner is ``P = B + ΦΦᵀ`` (Woodbury): near the optimum ``Z`` is nearly
  singular on the range of the low-rank primal solution, and the part of ``H``
  from ``Σ_U = Q (QᵀZQ)⁻¹ Qᵀ`` (``Q``: the top eigenvectors of ``Z⁻¹`` by subspace
  iteration with block solves) is the dense low-rank ``ΦΦᵀ`` that couples all
  cliques; ``B`` holds the exact diagonal blocks by clique of the rest, which is
  PSD because ``Z⁻¹ ⪰ Σ_U``.

Each of these costs ``O(Σ_k n_k³)`` (plus ``O(N r²)`` for ``r`` coarse vectors): linear
in the depth of a chain.  A dual barrier method takes several times the Newton
steps of a primal-dual one (:mod:`lipsdp.ipm`), so this solver is only used when
named (``solver="chordal"``).

Failures raise :class:`~lipsdp.errors.SolverFailedError` with status
``"max-iterations"``, ``"stalled"``, ``"infeasible"`` or ``"numerical"``; a program
without the structure raises :class:`~lipsdp.errors.NotApplicableError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .errors import InvalidOptionError, NotApplicableError, SolverFailedError
from .runtime import blas_threads, threads_for_size
from .sdp import SDP

# fraction of the way to the boundary a step may go (y ≥ 0 and Z ≻ 0)
_STEP_TO_BOUNDARY = 0.95
# Armijo constant and back-tracking factor of the line search on φ_μ
_ARMIJO = 1e-4
_BACKTRACK = 0.5
# a point counts as centred when its Newton decrement is below this
_CENTRED = 0.5
# μ is multiplied by this after each centring
_MU_FACTOR = 0.15
# entries of F⁰ off the block-tridiagonal pattern up to this fraction of its largest are rounding
_CONSTANT_ROUNDING = 1e-12
# smallest and largest number of eigenvectors of Z⁻¹ in the coarse space of the preconditioner
_MIN_COARSE = 12
_MAX_COARSE = 48
# multipliers beyond this (relative to the cost) in phase I: the LMI is taken to be infeasible (as the ipm does)
_DIVERGED = 1e12
# a full Newton step is doubled at most up to this length while the barrier keeps falling
_MAX_EXTRAPOLATION = 1024.0
# relative residual of the conjugate gradients (tightened as the decrement falls)
_CG_TOL = 1e-3


class _NotPositive(Exception):
    """A block Schur complement is not positive definite (the point is outside the cone)."""


# ----------------------------------------------------------------------------- structure
@dataclass
class _Term:
    """One term ``sign · Gᵀ Q(y) G`` restricted to its clique ``(clique, clique+1)``."""

    clique: int
    lift: np.ndarray  # r × w dense, w = width of the clique
    qt: sp.csr_matrix  # (k, r²): row j = vec(Q_j)ᵀ, so vec Q(y) = qtᵀ y[variables]
    a: np.ndarray  # entry e of the basis: Q_{var[e]}[a[e], b[e]] = data[e]
    b: np.ndarray
    data: np.ndarray
    var: np.ndarray  # local variable index (0 … k−1) of each entry
    variables: np.ndarray
    sign: float

    @property
    def rank(self) -> int:
        return self.lift.shape[0]

    def small(self, v: np.ndarray) -> sp.csr_matrix:
        """Sparse ``Q(v)`` (r × r)."""
        w = v[self.variables][self.var] * self.data
        r = self.rank
        return sp.csr_matrix((w, (self.a, self.b)), shape=(r, r))


@dataclass
class ChainStructure:
    """Blocks, cliques and clique-local terms of a one-block SDP with block-tridiagonal sparsity.

    Attributes
    ----------
    offsets
        Block boundaries: block ``k`` is coordinates ``offsets[k]:offsets[k+1]``.
    terms
        The LMI's terms restricted to their cliques.
    constant_diag, constant_sub
        ``F⁰``'s diagonal blocks ``D⁰_k`` and sub-diagonal blocks ``E⁰_k`` (block ``(k, k−1)``).
    var_clique
        The clique of each variable.
    """

    offsets: np.ndarray
    terms: list
    constant_diag: list
    constant_sub: list
    var_clique: np.ndarray

    @property
    def n_blocks(self) -> int:
        return self.offsets.size - 1

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def clique_slices(self, c: int) -> tuple[slice, slice]:
        """Local coordinates of blocks ``c`` and ``c+1`` inside clique ``c``."""
        n = self.widths
        return slice(0, n[c]), slice(n[c], n[c] + (n[c + 1] if c + 1 < self.n_blocks else 0))


def _column_support(lift) -> np.ndarray:
    return np.unique(sp.csr_matrix(lift).indices)


def chain_structure(sdp: SDP) -> ChainStructure:
    """Detect the block-tridiagonal structure of ``sdp`` (see the module docstring).

    Raises
    ------
    NotApplicableError
        For several LMI blocks, a term spanning more than two consecutive
        blocks, a constant outside the block-tridiagonal pattern, or a variable
        that appears in terms of different cliques.
    """
    if len(sdp.blocks) != 1:
        raise NotApplicableError(f"the chordal solver takes one LMI block, this SDP has {len(sdp.blocks)}")
    block = sdp.blocks[0]
    d = block.dim
    supports = [_column_support(t.lift) for t in block.terms]
    cuts = {0, d}
    for s in supports:
        if s.size:
            cuts.update((int(s[0]), int(s[-1]) + 1))
    offsets = np.array(sorted(cuts))
    n_blocks = offsets.size - 1
    block_of = np.repeat(np.arange(n_blocks), np.diff(offsets))
    terms = []
    var_clique = np.full(sdp.n_vars, -1)
    for t, s in zip(block.terms, supports):
        if not s.size:
            continue
        first, last = int(block_of[s[0]]), int(block_of[s[-1]])
        if last - first > 1:
            raise NotApplicableError(
                f"a term of the LMI couples blocks {first}…{last}: not block tridiagonal (the chordal solver takes "
                f"feed-forward chains whose layers are not re-coordinatised; use solver='ipm')")
        clique = min(first, max(n_blocks - 2, 0))
        lo = offsets[clique]
        hi = offsets[min(clique + 2, n_blocks)]
        lift = sp.csr_matrix(t.lift)[:, lo:hi].toarray()
        coo = t.basis.tocoo()
        r = lift.shape[0]
        variables = np.asarray(t.variables)
        for v in variables:
            if var_clique[v] not in (-1, clique):
                raise NotApplicableError(f"variable {v} appears in two cliques: not a chain SDP for the chordal solver")
            var_clique[v] = clique
        qt = sp.csr_matrix(t.basis.T)
        terms.append(_Term(clique, lift, qt, coo.row % r, coo.row // r, coo.data.astype(float), coo.col,
                           variables, float(t.sign)))
    constant = np.asarray(block.constant, float)
    diag, sub = [], []
    # F⁰ must lie on the pattern (diagonal and sub-diagonal blocks) up to rounding: the exact output
    # reduction (an SVD) leaves entries of order u·‖F⁰‖ elsewhere, which the solver drops (the
    # certificate is checked on the original program anyway)
    rows, cols = np.nonzero(np.abs(constant) > _CONSTANT_ROUNDING * np.max(np.abs(constant), initial=0.0))
    if rows.size and np.any(np.abs(block_of[rows] - block_of[cols]) > 1):
        raise NotApplicableError("the LMI's constant is not block tridiagonal: not a chain SDP for the chordal solver")
    for k in range(n_blocks):
        bk = slice(offsets[k], offsets[k + 1])
        diag.append(0.5 * (constant[bk, bk] + constant[bk, bk].T))
        if k:
            bp = slice(offsets[k - 1], offsets[k])
            sub.append(0.5 * (constant[bk, bp] + constant[bp, bk].T))
    if np.any(var_clique < 0) and np.any(sdp.objective[var_clique < 0] != 0):
        raise SolverFailedError("a variable with a non-zero cost appears in no constraint: the SDP is unbounded",
                                "infeasible")
    return ChainStructure(offsets, terms, diag, [None] + sub, var_clique)


def applies(sdp: SDP) -> bool:
    """True when :func:`chain_structure` accepts ``sdp``."""
    try:
        chain_structure(sdp)
    except (NotApplicableError, SolverFailedError):
        return False
    return True


# ----------------------------------------------------------------------------- block matrices
class _ChainOperator:
    """The linear map ``y ↦ Σ y_i A_i`` and its adjoint on block-tridiagonal matrices.

    A block-tridiagonal symmetric matrix is held as ``(diag, sub)``: lists of the
    diagonal blocks and of the blocks ``(k, k−1)`` (``sub[0]`` is None).
    ``shift``: an extra variable multiplying the identity (phase I), or None.
    """

    def __init__(self, structure: ChainStructure, n_vars: int):
        self.s = structure
        self.n_vars = n_vars
        self.n = structure.widths

    def zeros(self):
        n = self.n
        return [np.zeros((a, a)) for a in n], [None] + [np.zeros((n[k], n[k - 1])) for k in range(1, n.size)]

    def add_clique(self, diag, sub, c: int, local: np.ndarray) -> None:
        first, second = self.s.clique_slices(c)
        diag[c] += local[first, first]
        if second.stop > second.start:
            diag[c + 1] += local[second, second]
            sub[c + 1] += local[second, first]

    def apply(self, v: np.ndarray, constant: bool = False, shift: float = 0.0):
        """``(diag, sub)`` of ``Σ v_i A_i`` (plus ``F⁰`` when ``constant``, plus ``shift·I``)."""
        diag, sub = self.zeros()
        if constant:
            diag = [x.copy() for x in self.s.constant_diag]
            sub = [None] + [x.copy() for x in self.s.constant_sub[1:]]
        for t in self.s.terms:
            if not np.any(v[t.variables]):
                continue
            q = t.small(v)
            local = t.lift.T @ np.asarray(q @ t.lift)
            if t.sign != 1.0:
                local *= t.sign
            self.add_clique(diag, sub, t.clique, local)
        if shift:
            for x in diag:
                x[np.diag_indices_from(x)] += shift
        return diag, sub

    def clique_matrix(self, diag, sub, c: int) -> np.ndarray:
        """The principal submatrix of a block-tridiagonal matrix on clique ``c``."""
        first, second = self.s.clique_slices(c)
        if second.stop == second.start:
            return diag[c]
        return np.block([[diag[c], sub[c + 1].T], [sub[c + 1], diag[c + 1]]])

    def lifted(self, diag, sub) -> list:
        """``G_t P_c G_tᵀ`` for each term (``P`` block tridiagonal, restricted to the term's clique)."""
        cache = {}
        out = []
        for t in self.s.terms:
            if t.clique not in cache:
                cache[t.clique] = self.clique_matrix(diag, sub, t.clique)
            pc = cache[t.clique]
            out.append(t.lift @ pc @ t.lift.T)
        return out

    def adjoint(self, diag, sub) -> np.ndarray:
        """``𝒜*(P)_i = ⟨A_i, P⟩`` for a symmetric block-tridiagonal ``P`` (entries off the pattern unused)."""
        g = np.zeros(self.n_vars)
        for t, u in zip(self.s.terms, self.lifted(diag, sub)):
            np.add.at(g, t.variables, t.sign * (t.qt @ u.ravel(order="F")))
        return g


# ----------------------------------------------------------------------------- factor and inverse
class _Factor:
    """Block ``L D Lᵀ`` of a block-tridiagonal ``Z`` and its projected inverse (module docstring)."""

    def __init__(self, diag, sub):
        self.diag, self.sub = diag, sub
        K = len(diag)
        s_inv, t, logdet = [None] * K, [None] * K, 0.0
        s = diag[0]
        for k in range(K):
            if k:
                t[k] = s_inv[k - 1] @ sub[k].T
                s = diag[k] - sub[k] @ t[k]
            try:
                chol = la.cholesky(0.5 * (s + s.T), lower=True, check_finite=False)
            except la.LinAlgError:
                raise _NotPositive() from None
            d = np.diag(chol)
            if not np.all(d > 0) or not np.all(np.isfinite(d)):
                raise _NotPositive()
            logdet += 2.0 * float(np.sum(np.log(d)))
            inv_l = la.solve_triangular(chol, np.eye(chol.shape[0]), lower=True, check_finite=False)
            s_inv[k] = inv_l.T @ inv_l
        self.s_inv, self.t, self.logdet = s_inv, t, logdet
        self._sigma = None

    def inverse(self):
        """``(diag, sub)`` of ``Z⁻¹`` on the block-tridiagonal pattern."""
        if self._sigma is None:
            K = len(self.diag)
            sd, ss = [None] * K, [None] * K
            sd[K - 1] = self.s_inv[K - 1]
            for k in range(K - 2, -1, -1):
                t = self.t[k + 1]
                ss[k + 1] = -sd[k + 1] @ t.T
                sd[k] = self.s_inv[k] - t @ ss[k + 1]
            self._sigma = ([0.5 * (x + x.T) for x in sd], ss)
        return self._sigma

    def times(self, b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``Z b`` for ``b`` (N × R)."""
        K = len(self.diag)
        parts = [b[offsets[k]:offsets[k + 1]] for k in range(K)]
        out = [self.diag[k] @ parts[k] for k in range(K)]
        for k in range(1, K):
            out[k] += self.sub[k] @ parts[k - 1]
            out[k - 1] += self.sub[k].T @ parts[k]
        return np.vstack(out)

    def solve(self, b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``Z⁻¹ b`` for ``b`` (N × R) by the block ``L D Lᵀ`` factors (``L_{k,k−1} = T_kᵀ``)."""
        K = len(self.diag)
        w = [b[offsets[k]:offsets[k + 1]] for k in range(K)]
        for k in range(1, K):
            w[k] = w[k] - self.t[k].T @ w[k - 1]
        x = [None] * K
        x[K - 1] = self.s_inv[K - 1] @ w[K - 1]
        for k in range(K - 2, -1, -1):
            x[k] = self.s_inv[k] @ w[k] - self.t[k + 1] @ x[k + 1]
        return np.vstack(x)

    def inverse_derivative(self, ddiag, dsub):
        """``d/dt`` of the projected inverse of ``Z + t B`` at 0, i.e. ``−P(Z⁻¹ B Z⁻¹)``, for ``B = (ddiag, dsub)``."""
        K = len(self.diag)
        sd, ss = self.inverse()
        ds, dt = [None] * K, [None] * K
        ds[0] = ddiag[0]
        for k in range(1, K):
            dt[k] = self.s_inv[k - 1] @ (dsub[k].T - ds[k - 1] @ self.t[k])
            ds[k] = ddiag[k] - dsub[k] @ self.t[k] - self.sub[k] @ dt[k]
        dsd, dss = [None] * K, [None] * K
        dsd[K - 1] = -self.s_inv[K - 1] @ ds[K - 1] @ self.s_inv[K - 1]
        for k in range(K - 2, -1, -1):
            t, dtk = self.t[k + 1], dt[k + 1]
            dss[k + 1] = -dsd[k + 1] @ t.T - sd[k + 1] @ dtk.T
            # Σ_kk = S_k⁻¹ − T Σ_{k+1,k}:  dΣ_kk = −S⁻¹ dS S⁻¹ − dT Σ_{k+1,k} − T dΣ_{k+1,k}
            x = -self.s_inv[k] @ ds[k] @ self.s_inv[k] - dtk @ ss[k + 1] - t @ dss[k + 1]
            dsd[k] = 0.5 * (x + x.T)
        return dsd, dss


# ----------------------------------------------------------------------------- Newton systems
class _Barrier:
    """``φ(y) = cᵀy/μ − log det(Z(y) + t I) − Σ_N log y_i`` and its derivatives.

    In phase I the last entry of the variable vector is ``t`` (objective ``t``);
    in phase II there is no ``t`` and the objective is ``cᵀy``.
    """

    def __init__(self, op: _ChainOperator, c: np.ndarray, nonneg: np.ndarray, phase_one: bool):
        self.op, self.c, self.nonneg, self.phase_one = op, c, nonneg, phase_one
        self.n = op.n_vars + (1 if phase_one else 0)
        self.basis = None  # the last coarse-space eigenvectors (warm start)
        self.rank = _MIN_COARSE

    def split(self, x: np.ndarray):
        return (x[:-1], float(x[-1])) if self.phase_one else (x, 0.0)

    def objective(self, x: np.ndarray) -> float:
        return float(x[-1]) if self.phase_one else float(self.c @ x)

    def cost(self) -> np.ndarray:
        if self.phase_one:
            out = np.zeros(self.n)
            out[-1] = 1.0
            return out
        return self.c

    def factor(self, x: np.ndarray) -> _Factor:
        y, t = self.split(x)
        return _Factor(*self.op.apply(y, constant=True, shift=t))

    def value(self, x: np.ndarray, mu: float, fac: _Factor) -> float:
        y, _ = self.split(x)
        return self.objective(x) / mu - fac.logdet - float(np.sum(np.log(y[self.nonneg])))

    def adjoint(self, diag, sub) -> np.ndarray:
        g = self.op.adjoint(diag, sub)
        if self.phase_one:
            g = np.append(g, sum(float(np.trace(x)) for x in diag))
        return g

    def gradient(self, x: np.ndarray, mu: float, fac: _Factor) -> np.ndarray:
        y, _ = self.split(x)
        g = self.cost() / mu - self.adjoint(*fac.inverse())
        g[: y.size][self.nonneg] -= 1.0 / y[self.nonneg]
        return g

    def hessian_times(self, x: np.ndarray, fac: _Factor, v: np.ndarray) -> np.ndarray:
        y, _ = self.split(x)
        vy, vt = self.split(v)
        dsd, dss = fac.inverse_derivative(*self.op.apply(vy, shift=vt))
        hv = -self.adjoint(dsd, dss)
        hv[: y.size][self.nonneg] += vy[self.nonneg] / y[self.nonneg] ** 2
        return hv

    def preconditioner(self, x: np.ndarray, fac: _Factor):
        """``P = B + ΦΦᵀ``, applied by the Woodbury formula.

        ``ΦΦᵀ`` is the Hessian's part from ``Σ_U = Q (QᵀZQ)⁻¹ Qᵀ`` (:meth:`coarse_space`) and
        ``B`` the exact diagonal blocks by clique of the rest, ``tr(A_i Σ A_j Σ) − tr(A_i Σ_U A_j Σ_U)
        = tr(A_i Σ_r A_j Σ_r) + 2 tr(A_i Σ_U A_j Σ_r)`` with ``Σ_r = Σ − Σ_U ⪰ 0`` (``Z⁻¹ ⪰ Σ_U`` for any
        ``Q``), so ``B ⪰ 0`` and ``P ≻ 0``; plus the diagonal of the ``log y`` barrier.
        """
        y, _ = self.split(x)
        op = self.op
        sd, ss = fac.inverse()
        diagonal = np.zeros(self.n)
        diagonal[: y.size][self.nonneg] = 1.0 / y[self.nonneg] ** 2
        by_clique: dict[int, list] = {}
        for t in op.s.terms:
            by_clique.setdefault(t.clique, []).append(t)
        factors = []
        phi, u, lam = self.coarse_space(fac)
        offsets = op.s.offsets
        for c, terms in by_clique.items():
            sig = op.clique_matrix(sd, ss, c)
            lo = offsets[c]
            uc = u[lo:lo + sig.shape[0]]
            sig_u = (uc * lam) @ uc.T
            sig_r = sig - sig_u
            variables = np.unique(np.concatenate([t.variables for t in terms]))
            pos = {int(v): i for i, v in enumerate(variables)}
            m = np.zeros((variables.size, variables.size))
            for t1 in terms:
                loc1 = np.array([pos[int(v)] for v in t1.variables])[t1.var]
                p1 = sp.csr_matrix((np.ones(loc1.size), (loc1, np.arange(loc1.size))),
                                   shape=(variables.size, loc1.size))
                for t2 in terms:
                    loc2 = np.array([pos[int(v)] for v in t2.variables])[t2.var]
                    p2 = sp.csr_matrix((np.ones(loc2.size), (loc2, np.arange(loc2.size))),
                                       shape=(variables.size, loc2.size))
                    k = (_pair_block(t1, t2, sig_r, sig_r) + _pair_block(t1, t2, sig_u, sig_r)
                         + _pair_block(t1, t2, sig_r, sig_u))
                    m += t1.sign * t2.sign * np.asarray(p1 @ (p2 @ k.T).T)
            m = 0.5 * (m + m.T)
            # when the coarse space holds (nearly) all of Z⁻¹ on the clique the remainder vanishes: a relative
            # regularisation by ΦΦᵀ's diagonal keeps the block definite (free multipliers have no log-barrier term)
            reg = 1e-10 * np.sum(phi[variables] ** 2, axis=1)
            m[np.diag_indices_from(m)] += diagonal[variables] + np.where(reg > 0, reg, 1e-300)
            factors.append((variables, _robust_cholesky(m)))
        rest = np.setdiff1d(np.arange(self.n), np.concatenate([f[0] for f in factors]) if factors else [])
        scale = np.ones(rest.size)
        if self.phase_one and rest.size:
            # t multiplies I: its own Hessian entry is ‖Z⁻¹‖_F², bounded below by the pattern's part
            tt = sum(float(np.vdot(a, a)) for a in sd) + 2 * sum(float(np.vdot(b, b)) for b in ss[1:])
            scale[rest == self.n - 1] = tt
        scale = np.where(diagonal[rest] > 0, diagonal[rest], scale)

        def block_solve(r: np.ndarray) -> np.ndarray:
            z = np.empty_like(r)
            for variables, chol in factors:
                z[variables] = la.cho_solve(chol, r[variables], check_finite=False)
            z[rest] = r[rest] / scale[:, None] if r.ndim == 2 else r[rest] / scale
            return z

        binv_phi = block_solve(phi)
        cap = _robust_cholesky(np.eye(phi.shape[1]) + phi.T @ binv_phi)

        def apply(r: np.ndarray) -> np.ndarray:
            z = block_solve(r)
            return z - binv_phi @ la.cho_solve(cap, phi.T @ z, check_finite=False)

        return apply

    def coarse_space(self, fac: _Factor) -> np.ndarray:
        """``Φ`` with ``ΦΦᵀ`` the part of the Hessian from the top eigenpairs ``(λ_p, u_p)`` of ``Z⁻¹``.

        With ``Z⁻¹ = Σ_p λ_p u_p u_pᵀ + (rest)``, the Hessian ``tr(A_i Z⁻¹ A_j Z⁻¹)`` contains
        ``Σ_{p,q} λ_p λ_q (u_pᵀ A_i u_q)(u_qᵀ A_j u_p)``: near the optimum ``Z`` is nearly singular
        on the range of the (low-rank) primal solution and this dense low-rank part dominates,
        coupling all cliques.  Column ``(p, q)``, ``p ≤ q``, of ``Φ`` is ``√(λ_p λ_q)·(u_pᵀ A_i u_q)_i``
        (times √2 for ``p < q``).  The eigenpairs come from subspace iteration with ``Z⁻¹``
        (block solves), warm-started from the previous Newton step's vectors.
        """
        offsets = self.op.s.offsets
        dim = int(offsets[-1])
        rank = min(dim, self.rank)
        q = self.basis if self.basis is not None and self.basis.shape[1] == rank else None
        if q is None:
            q = np.random.default_rng(0).standard_normal((dim, rank))
        for _ in range(2):
            q, _ = np.linalg.qr(fac.solve(q, offsets))
        small = q.T @ fac.times(q, offsets)  # QᵀZQ: Σ_U = Q (QᵀZQ)⁻¹ Qᵀ ⪯ Z⁻¹
        z, vec = np.linalg.eigh(0.5 * (small + small.T))
        if not np.all(np.isfinite(z)) or not z[-1] > 0:
            raise SolverFailedError("the iterate's LMI lost definiteness (numerical)", "numerical")
        z = np.maximum(z, 1e-15 * z[-1])  # rounding near the boundary of the cone (a preconditioner only)
        lam, u = 1.0 / z, q @ vec
        self.basis = u
        significant = int(np.count_nonzero(lam > 1e-3 * lam[0])) if lam.size else 0
        self.rank = int(min(_MAX_COARSE, dim, max(_MIN_COARSE, 2 * significant + 4)))
        iu, ju = np.triu_indices(rank)
        weight = np.sqrt(lam[iu] * lam[ju]) * np.where(iu == ju, 1.0, np.sqrt(2.0))
        phi = np.zeros((self.n, iu.size))
        for t in self.op.s.terms:
            lo = offsets[t.clique]
            gu = t.lift @ u[lo:lo + t.lift.shape[1]]
            pair = t.data[:, None] * gu[t.a][:, iu] * gu[t.b][:, ju]
            np.add.at(phi, t.variables[t.var], t.sign * pair)
        if self.phase_one:
            phi[-1] = np.where(iu == ju, 1.0, 0.0)
        return phi * weight, u, lam


def _pair_block(t1: _Term, t2: _Term, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Entry pairs of ``tr(A_i L A_j R)`` for the terms' basis entries (``L``, ``R`` on their clique).

    With ``U = G₁ L G₂ᵀ`` and ``V = G₂ R G₁ᵀ``: ``tr(Q_i U Q_j V) = Σ q₁ q₂ U[b₁, a₂] V[b₂, a₁]``.
    """
    u = t1.lift @ left @ t2.lift.T
    v = u.T if right is left else t2.lift @ right @ t1.lift.T
    return (t1.data[:, None] * t2.data[None, :]) * u[np.ix_(t1.b, t2.a)] * v[np.ix_(t2.b, t1.a)].T


def _robust_cholesky(m: np.ndarray):
    """Cholesky factor of the (in exact arithmetic PSD) ``m``; rounding that made it indefinite is
    removed by clipping its eigenvalues at a tiny multiple of the largest magnitude (the result only
    preconditions, so any positive definite matrix keeps the method correct)."""
    try:
        return la.cho_factor(m, lower=True, check_finite=False)
    except la.LinAlgError:
        pass
    if not np.all(np.isfinite(m)):
        raise SolverFailedError("the Newton matrix is not finite", "numerical")
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    top = float(np.max(np.abs(w), initial=0.0)) or 1.0
    w = np.maximum(w, 1e-12 * top)
    return la.cho_factor((v * w) @ v.T + 1e-14 * top * np.eye(w.size), lower=True, check_finite=False)


def _pcg(matvec, precond, rhs: np.ndarray, tol: float, max_iters: int) -> tuple[np.ndarray, int]:
    """Preconditioned conjugate gradients for the SPD system ``H x = rhs``; returns ``(x, iterations)``."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = precond(r)
    p = z.copy()
    rz = float(r @ z)
    target = tol * np.sqrt(max(rz, 0.0))
    for it in range(1, max_iters + 1):
        hp = matvec(p)
        php = float(p @ hp)
        if not php > 0:
            return x if it > 1 else z, it
        alpha = rz / php
        x += alpha * p
        r -= alpha * hp
        z = precond(r)
        rz_new = float(r @ z)
        if np.sqrt(max(rz_new, 0.0)) <= target:
            return x, it
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, max_iters


# ----------------------------------------------------------------------------- the method
@dataclass
class ChordalResult:
    """Multipliers (``Z(y) ≻ 0``), objective and convergence record of :func:`chordal_solve`."""

    y: np.ndarray
    objective: float
    gap_bound: float
    iterations: int
    cg_iterations: int
    history: list


def _max_step(x: np.ndarray, dx: np.ndarray, nonneg: np.ndarray, cap: float = 1.0) -> float:
    """Largest ``α ≤ cap`` keeping the non-negative entries positive (times the fraction to the boundary)."""
    neg = nonneg & (dx < 0)
    if not np.any(neg):
        return cap
    return min(cap, _STEP_TO_BOUNDARY * float(np.min(-x[neg] / dx[neg])))


def _newton_step(barrier: _Barrier, x: np.ndarray, mu: float, fac: _Factor, cg_tol: float, cg_max: int):
    """One Newton step on φ_μ (direction by PCG, back-tracking line search).

    Returns ``(x, factor, Newton decrement, CG iterations, step)``; step 0 when the line search failed.
    """
    g = barrier.gradient(x, mu, fac)
    precond = barrier.preconditioner(x, fac)
    dx, cg_its = _pcg(lambda v: barrier.hessian_times(x, fac, v), precond, -g, cg_tol, cg_max)
    dec2 = float(-g @ dx)
    if not dec2 > 0:  # an inexact direction that is no descent direction: fall back to the preconditioned gradient
        dx = -precond(g)
        dec2 = float(-g @ dx)
    x, fac, alpha = _line_search(barrier, x, dx, mu, fac, dec2)
    return x, fac, np.sqrt(max(dec2, 0.0)), cg_its, alpha


def _start(op: _ChainOperator, sdp: SDP, nonneg: np.ndarray) -> tuple[np.ndarray, float]:
    """A starting ``y`` (1 on non-negative multipliers, 0 elsewhere) and a ``t`` with ``Z(y) + tI ≻ 0``.

    ``t`` is one plus Gershgorin's bound ``−λ_min(Z) ≤ max_i (Σ_{j≠i} |Z_ij| − Z_ii)``.
    """
    y = np.where(nonneg, 1.0, 0.0)
    diag, sub = op.apply(y, constant=True)
    K = len(diag)
    radius = []
    for k in range(K):
        row = np.sum(np.abs(diag[k]), axis=1) - np.abs(np.diag(diag[k])) - np.diag(diag[k])
        if k:
            row = row + np.sum(np.abs(sub[k]), axis=1)
        if k + 1 < K:
            row = row + np.sum(np.abs(sub[k + 1]), axis=0)
        radius.append(float(np.max(row)) if row.size else 0.0)
    return y, max(radius) + 1.0


def chordal_solve(sdp: SDP, *, tol: float = 1e-8, accept_tol: float = 1e-5, max_iters: int = 300,
                  cg_max: int | None = None, verbose: bool = False) -> ChordalResult:
    """Barrier path-following on a block-tridiagonal one-block SDP (module docstring).

    Parameters
    ----------
    tol
        Stop when the duality-gap bound ``ν μ (1 + δ)`` of a centred point (``δ < 1/2``) is below
        ``tol · max(|cᵀy|, 1e-12)``.
    accept_tol
        When the iterations stop short of ``tol`` (limit, stalled line search, numerical
        breakdown near the boundary), the last centred point is returned if its gap bound
        is below this; otherwise :class:`SolverFailedError`.
    max_iters
        Limit on the Newton steps of both phases together.
    cg_max
        Limit on the conjugate-gradient iterations per Newton step (default: the number of variables + 1).
    verbose
        Print one line per centring.

    Raises
    ------
    NotApplicableError
        When the SDP does not have the chain structure (:func:`chain_structure`).
    SolverFailedError
        ``"infeasible"`` (phase I finds no strictly feasible point), ``"max-iterations"``,
        ``"stalled"`` (the line search cannot decrease the barrier) or ``"numerical"``.
    """
    structure = chain_structure(sdp)
    op = _ChainOperator(structure, sdp.n_vars)
    c = np.asarray(sdp.objective, float)
    nonneg = np.asarray(sdp.nonneg, bool).copy()
    unused = structure.var_clique < 0
    cg_max = cg_max or sdp.n_vars + 2
    history = []
    total_cg = 0
    iters = 0
    t0 = time.perf_counter()

    # ---- phase I: minimise t over Z(y) + tI ≻ 0 until t < 0 (then Z(y) ≻ 0)
    y, t = _start(op, sdp, nonneg)
    if np.any(unused):
        nonneg_used = nonneg & ~unused
    else:
        nonneg_used = nonneg
    barrier = _Barrier(op, c, nonneg_used, phase_one=True)
    x = np.append(y, t)
    x[:-1][unused] = 0.0
    try:
        fac = barrier.factor(x)
    except _NotPositive as exc:
        raise SolverFailedError("the chordal solver's starting point is not interior (numerical)", "numerical") from exc
    mu = max(abs(t), 1.0) / (structure.offsets[-1] + 1)
    nu_one = float(structure.offsets[-1] + np.count_nonzero(nonneg_used))
    while x[-1] >= 0:
        if iters >= max_iters:
            raise SolverFailedError(f"chordal solver: no strictly feasible point after {iters} Newton steps "
                                    f"(phase I at t = {x[-1]:.3e})", "max-iterations")
        x, fac, dec, cg_its, alpha = _newton_step(barrier, x, mu, fac, _CG_TOL, cg_max)
        iters += 1
        total_cg += cg_its
        history.append(("I", iters, float(x[-1]), mu, dec, cg_its, alpha))
        if verbose:
            print(f"I  {iters:3d} t {x[-1]:+.4e} mu {mu:.2e} dec {dec:.2e} cg {cg_its} step {alpha:.3f}")
        if alpha == 0.0:
            raise SolverFailedError("chordal solver: phase I stalled; the LMI looks infeasible", "infeasible")
        if np.linalg.norm(x[:-1]) > _DIVERGED * (1.0 + np.linalg.norm(c)):
            raise SolverFailedError("chordal solver: the multipliers diverge in phase I while Z(y) stays indefinite; "
                                    "the LMI looks infeasible", "infeasible")
        if dec < _CENTRED:
            # at a centred point min t ≥ t − ν μ (1 + δ): a positive bound proves Z(y) ⪰ 0 has no solution
            if x[-1] - nu_one * mu * (1.0 + dec) > 0 or mu < 1e-14:
                raise SolverFailedError(f"chordal solver: the LMI has no strictly feasible point (phase I: "
                                        f"min t ≥ {x[-1] - nu_one * mu * (1.0 + dec):.3e})", "infeasible")
            mu *= _MU_FACTOR
    y = x[:-1].copy()

    # ---- phase II: minimise cᵀy along the central path
    barrier = _Barrier(op, c, nonneg_used, phase_one=False)
    fac = barrier.factor(y)
    nu = float(structure.offsets[-1] + np.count_nonzero(nonneg_used))
    mu = max(abs(float(c @ y)), 1e-12) / nu
    stall = 0
    best = None  # (gap estimate, y) at the last centred point
    status = None
    while status is None:
        if iters >= max_iters:
            status = "max-iterations"
            break
        cg_tol = min(_CG_TOL, 1e-2 * np.sqrt(mu * nu / max(abs(float(c @ y)), 1e-300)))
        try:
            y, fac, dec, cg_its, alpha = _newton_step(barrier, y, mu, fac, cg_tol, cg_max)
        except SolverFailedError:
            status = "numerical"
            break
        iters += 1
        total_cg += cg_its
        history.append(("II", iters, float(c @ y), mu, dec, cg_its, alpha))
        if verbose:
            print(f"II {iters:3d} obj {c @ y:+.12e} mu {mu:.2e} dec {dec:.2e} cg {cg_its} step {alpha:.3f} "
                  f"t {time.perf_counter() - t0:.2f}s")
        if not np.all(np.isfinite(y)):
            raise SolverFailedError("chordal solver: the iterate is not finite", "numerical")
        stall = stall + 1 if alpha == 0.0 else 0
        if dec < _CENTRED:
            gap = nu * mu * (1.0 + dec)  # at a centred point the duality gap is at most this
            best = (gap, y.copy())
            if gap <= tol * max(abs(float(c @ y)), 1e-12):
                break
            mu *= _MU_FACTOR
        elif stall >= 3:
            status = "stalled"
    if status is not None:
        # no progress to ``tol``: the last centred point is returned when its gap meets ``accept_tol``
        if best is None or best[0] > accept_tol * max(abs(float(c @ best[1])), 1e-12):
            what = {"max-iterations": f"did not converge in {max_iters} Newton steps",
                    "stalled": "stalled (the line search failed)",
                    "numerical": "broke down numerically"}[status]
            gap_text = "none centred" if best is None else f"{best[0]:.2e}"
            raise SolverFailedError(f"chordal solver {what} at objective {c @ y:.10e} (duality-gap estimate "
                                    f"{gap_text})", status)
        gap, y = best
    y = y.copy()
    y[unused] = 0.0
    return ChordalResult(y, float(c @ y), gap, iters, total_cg, history)


def _line_search(barrier: _Barrier, x: np.ndarray, dx: np.ndarray, mu: float, fac: _Factor, dec2: float):
    """Back-tracking (Armijo) on φ_μ along ``dx`` inside the cone; ``(x, factor, step)`` (step 0: failed)."""
    nonneg = np.zeros(barrier.n, bool)
    nonneg[: barrier.op.n_vars][barrier.nonneg] = True
    alpha = _max_step(x, dx, nonneg)
    phi0 = barrier.value(x, mu, fac)
    for _ in range(60):
        trial = x + alpha * dx
        try:
            new_fac = barrier.factor(trial)
        except _NotPositive:
            alpha *= _BACKTRACK
            continue
        value = barrier.value(trial, mu, new_fac)
        if value <= phi0 - _ARMIJO * alpha * dec2:
            if alpha == 1.0 and dec2 > 1.0:
                limit = _max_step(x, dx, nonneg, _MAX_EXTRAPOLATION)
                return _extrapolate(barrier, x, dx, mu, trial, new_fac, value, limit)
            return trial, new_fac, alpha
        alpha *= _BACKTRACK
    return x, fac, 0.0


def _extrapolate(barrier: _Barrier, x, dx, mu, best, best_fac, best_value, limit: float):
    """Double a full Newton step while φ_μ keeps falling (far from the centre, where the barrier is
    nearly flat, Newton's unit step is short); returns ``(x, factor, step)``."""
    alpha = 1.0
    while 2 * alpha <= limit:
        trial = x + 2 * alpha * dx
        try:
            fac = barrier.factor(trial)
        except _NotPositive:
            break
        value = barrier.value(trial, mu, fac)
        if not value < best_value:
            break
        alpha, best, best_fac, best_value = 2 * alpha, trial, fac, value
    return best, best_fac, alpha


# ----------------------------------------------------------------------------- registry hook
def solve_with_chordal(sdp: SDP, tol: float = 1e-8, accept_tol: float = 1e-5, max_iters: int = 300,
                       verbose: bool = False, **unknown):
    """The ``"chordal"`` back end: :func:`chordal_solve` as a :class:`~lipsdp.solver_registry.SolveResult`.

    Any other keyword option raises :class:`~lipsdp.errors.InvalidOptionError`.
    """
    from .solver_registry import SolveResult, unknown_options_message

    if unknown:
        raise InvalidOptionError(unknown_options_message(unknown, "solver 'chordal'", _OPTIONS))
    start = time.perf_counter()
    structure = chain_structure(sdp)
    # the dense work is on cliques (two blocks): small matrices run single-threaded BLAS
    with blas_threads(threads_for_size(2 * int(np.max(structure.widths)))):
        res = chordal_solve(sdp, tol=tol, accept_tol=accept_tol, max_iters=max_iters, verbose=verbose)
    return SolveResult(res.y, "optimal", res.objective, "chordal", time.perf_counter() - start,
                       {"iterations": res.iterations, "cg_iterations": res.cg_iterations, "gap_bound": res.gap_bound})


_OPTIONS = ("tol", "accept_tol", "max_iters", "verbose")


def _available() -> str | None:
    return None  # NumPy and SciPy only


def register() -> None:
    """Register ``"chordal"`` (named explicitly only: see :func:`lipsdp.solver_registry._automatic_candidates`)."""
    from .solver_registry import SolverSpec, register_solver

    register_solver(SolverSpec("chordal", solve_with_chordal, _available, priority=-1, applies=applies,
                               options=_OPTIONS))
