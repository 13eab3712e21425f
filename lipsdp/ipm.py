"""A structure-exploiting primal-dual interior-point solver for :class:`~lipsdp.sdp.SDP`.

The program solved is the SDP of :mod:`lipsdp.sdp`,

    (D)  minimise cᵀy  s.t.  Z_b = F⁰_b + Σ_i y_i A_{b,i} ⪰ 0 (each block b),  y_N ≥ 0,

together with its Lagrange dual

    (P)  maximise −Σ_b ⟨F⁰_b, X_b⟩  s.t.  Σ_b ⟨A_{b,i}, X_b⟩ + [i ∈ N] x_i = c_i,  X_b ⪰ 0, x ≥ 0.

Every data matrix is low rank and *factored*: each term of a block
contributes ``A_i = Σ_e q_e g_{a_e} g_{b_e}ᵀ`` where ``g_a`` are rows of the
term's lift ``G`` and the ``(a_e, b_e, q_e)`` are the few non-zeros of the
small matrix ``Q_i`` (for LipSDP-Neuron: 3–4 entries per neuron, ``n₀`` for
ρ).  Stacking all lifts of a block into ``G`` (``r × d``), every quantity the
method needs lives in the lifted space:

* the HKM Schur complement ``M_ij = tr(A_i X A_j Z⁻¹)``: each variable's small
  matrix is eigen-factored once, ``A_i = Σ_k s_k h_k h_kᵀ`` with ``h_k = Gᵀw_k``
  (rank 2 per ReLU neuron, n₀ for ρ), so with ``U = G X Gᵀ``, ``V = G Z⁻¹ Gᵀ``
  and the sparse ``W = [w_k]``, ``M = Σ_{k∈i,l∈j} s_k s_l (WUWᵀ ∘ WVWᵀ)_{kl}`` —
  one Hadamard product reduced over variables (the SDPT3/DSDP technique for
  low-rank data): O(r d² + R²) per iteration instead of O(m d³).  Where every
  ``w_k`` has at most a few non-zeros (ReLU-type neurons: two), the rows of
  ``WUWᵀ`` and ``WVWᵀ`` are gathered from ``U`` and ``V`` a chunk of variables at
  a time and reduced at once, so no R × r or R × R array is formed;
* ``𝒜(K)_i = ⟨A_i, K⟩ = Σ_e q_e (G K)[b_e] · G[a_e]``;
* ``Σ_i Δy_i A_i = Gᵀ Q(Δy) G`` with a sparse ``Q``.

``G`` is kept as *row groups*: selector rows (picking coordinates, free) and
dense panels supported on a few columns (the weight matrices), so ``G Y`` is
a handful of BLAS-3 products.

The method is the infeasible primal-dual path-following method with the
HKM direction and Mehrotra's predictor-corrector (as in SDPT3), an LP cone for
the non-negative multipliers, separate primal and dual step lengths, and
dense LAPACK factorisations of the (at most a few thousand wide) blocks.
Failures raise :class:`~lipsdp.errors.SolverFailedError` with a status:
``"max-iterations"``, ``"stalled"``, ``"ill-conditioned"``,
``"infeasible"`` (primal or dual infeasibility detected), ``"numerical"``.

Cost per iteration: about ten dense d×d BLAS-3 products (the HKM direction
``ΔX = sym((σμI − XΔZ − ΔX_pΔZ_p)Z⁻¹) − X``, Cholesky of X and Z, Z⁻¹, the
lifted ``U``, ``V``) plus Lanczos step lengths; 20–30 iterations.  The dense
primal matrices limit it to blocks of a few thousand rows (timings in
bench/NOTES.md).  Small blocks (d < 1200) run BLAS single-threaded: threading
overhead dominates there, badly so on a shared machine.  Two cores are used
instead by computing independent halves of an iteration at once
(:func:`~lipsdp.runtime.in_parallel`): the X and the Z side of the lifts, of the
factor Grams and of the Cholesky factors of the step, and the predictor's step
lengths beside the corrector's second-order terms; large products are split in
row halves (:func:`~lipsdp.runtime.matmul`).  The early iterations, far from the
optimum, run in float32 (``single_until``: twice the BLAS speed and half the
memory traffic; the multipliers, the Schur complement and all measures stay
float64), the rest in float64 from the iterate reached, which leaves the iteration
count as it is (bench/NOTES.md).

Many blocks (:func:`solve_with_ipm` first splits every LMI block into its
decoupled components, :mod:`lipsdp.decompose`: a MaxMin chain gives one block
per layer) share one Schur complement, accumulated block by block over the
variables each block uses; when those index ranges are narrow (chains: layer
k meets layers k ± 1) the Schur complement is banded and factored with a
banded Cholesky, and the step lengths of equal-sized blocks come from one
batched Lanczos run.

The returned multipliers are only approximately feasible; the pipeline
(:func:`lipsdp.bound_methods.solve_and_certify`) certifies them in float64 and
repairs ρ, so a certified bound never relies on this solver's accuracy.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .errors import InvalidOptionError, SolverFailedError
from .runtime import (blas_threads, in_parallel, matmul, sparse_times_dense, split_products,
                      threads_for_size, transpose_copy, worth_a_second_thread)
from .runtime import heap_reuse as glibc_heap_reuse
from .sdp import SDP, add_principal, as_index

# step lengths: dense eigenvalues up to this block size (ARPACK's Python call-backs cost more below it)
_DENSE_EIG_MAX = 100

# many blocks of one size up to this: explicit scaled matrices and one batched Lanczos for all of them
_BATCH_EIG_MAX = 512
# Lanczos step lengths: at most this many steps, at least this many before testing convergence
_LANCZOS_STEPS = 40
_LANCZOS_MIN_STEPS = 4
_LANCZOS_TOL = 3e-3
_PREDICTOR_LANCZOS_TOL = 3e-2  # the predictor's step lengths only set the centring parameter σ
_RITZ_SLACK = 2e-3  # Ritz values over-estimate λ_min: lower them by this relative amount

# the SDPT3 starting point ξI, ηI shrunk by these factors: our programs are normalised (optimal
# multipliers of order one), so the shrunk start lies closer to the central path (fewer iterations)
_START_X_SCALE = 0.3
_START_Z_SCALE = 0.03

# the early iterations run in float32 until the relative gap and infeasibilities are below this
_SINGLE_PRECISION_UNTIL = 0.1

# factor Grams up to this many entries (32 MB in float64) are formed in memory kept for the solve
_GRAM_REUSE_MAX = 4_000_000
# the Schur reduction sums factor runs by strided slices up to this many runs, else by a sparse product
_MAX_FACTOR_RUNS = 16
# factor rows with at most this many non-zeros (ReLU-type neurons: 2) form the Schur complement by gathers,
# a chunk of rows at a time (:meth:`_Block.schur_gathered`)
_MAX_GATHER = 4
# rows of the lifted matrices gathered per chunk (bytes): a chunk's temporaries stay in cache-sized pieces
_GATHER_CHUNK_BYTES = 1 << 23


# ----------------------------------------------------------------------------- lifted block data
@dataclass
class _Group:
    """Rows ``start:stop`` of the stacked lift: ``panel @ Y[cols]`` (``panel`` None: a selector)."""

    start: int
    stop: int
    cols: object  # slice or int array
    panel: np.ndarray | None  # dense rows of the lift on the columns ``cols`` (a weight matrix)


class _Block:
    """One LMI block in lifted form (see the module docstring).

    Attributes
    ----------
    dim
        ``d``, the block's size.
    constant
        ``F⁰`` (d × d, symmetrised).
    groups, lift, lift_rows
        The stacked lift ``G`` (``lift_rows`` × d) as row groups (:class:`_Group`), and densely.
    entry_left, entry_right, entry_coef, entry_var
        The entries ``e`` of every data matrix, ``A_i = Σ_{e: entry_var = i} q_e g_a g_bᵀ`` with
        ``a = entry_left``, ``b = entry_right``, ``q = entry_coef`` (mirrored: ``(a, b)`` and
        ``(b, a)`` both present), sorted by variable.
    entry_to_var, var_from_entry
        The 0/1 matrix (entries × variables) assigning each entry its variable, and its transpose
        (sums over a variable's entries).
    factors, factors_signed, factor_signs, factor_var, n_factors
        Each variable's small matrix eigen-factored, ``A_i = Σ_k s_k h_k h_kᵀ`` with ``h_k = Gᵀw_k``:
        the rows ``w_k`` (sparse, ``n_factors`` × ``lift_rows``), the same times ``s_k``, the ``s_k``
        and the variable of each factor (:meth:`_factorise`).
    """

    def __init__(self, block, n_vars: int):
        self.dim = d = block.dim
        self.constant = 0.5 * (np.asarray(block.constant, float) + np.asarray(block.constant, float).T)
        groups: list[_Group] = []
        ea, eb, eq, ev = [], [], [], []
        r = 0
        for term in block.terms:
            g = sp.csr_matrix(term.lift, dtype=float)
            g.sum_duplicates()
            g.eliminate_zeros()
            rt = g.shape[0]
            nnz = np.diff(g.indptr)
            first = g.indptr[:-1]
            is_sel = (nnz == 1) & (g.data[np.minimum(first, max(g.nnz - 1, 0))] == 1.0) if g.nnz else np.zeros(rt, bool)
            local_to_global = np.empty(rt, dtype=np.int64)
            sel_rows = np.flatnonzero(is_sel)
            gen_rows = np.flatnonzero(~is_sel & (nnz > 0))
            zero_rows = np.flatnonzero(nnz == 0)
            if sel_rows.size:
                cols = g.indices[first[sel_rows]]
                local_to_global[sel_rows] = r + np.arange(sel_rows.size)
                groups.append(_Group(r, r + sel_rows.size, as_index(cols), None))
                r += sel_rows.size
            if gen_rows.size:
                sub = g[gen_rows]
                cols = np.unique(sub.indices)
                dense = sub[:, cols].toarray()
                local_to_global[gen_rows] = r + np.arange(gen_rows.size)
                groups.append(_Group(r, r + gen_rows.size, as_index(cols), dense))
                r += gen_rows.size
            local_to_global[zero_rows] = -1
            q = sp.coo_matrix(term.basis)
            a_loc, b_loc = q.row % rt, q.row // rt
            keep = (q.data != 0) & (local_to_global[a_loc] >= 0) & (local_to_global[b_loc] >= 0)
            ea.append(local_to_global[a_loc[keep]])
            eb.append(local_to_global[b_loc[keep]])
            eq.append(term.sign * q.data[keep])
            ev.append(np.asarray(term.variables)[q.col[keep]])
        self.lift_rows = r
        self.groups = groups
        # entries of the dense panels: G Y costs 2·panel_entries·k flops for Y of k columns
        self.panel_entries = sum(g.panel.size for g in groups if g.panel is not None)
        self.entry_left = np.concatenate(ea).astype(np.int64) if ea else np.zeros(0, np.int64)
        self.entry_right = np.concatenate(eb).astype(np.int64) if eb else np.zeros(0, np.int64)
        self.entry_coef = np.concatenate(eq) if eq else np.zeros(0)
        self.entry_var = np.concatenate(ev).astype(np.int64) if ev else np.zeros(0, np.int64)
        self._mirror_entries()
        order = np.argsort(self.entry_var, kind="stable")
        self.entry_left, self.entry_right = self.entry_left[order], self.entry_right[order]
        self.entry_coef, self.entry_var = self.entry_coef[order], self.entry_var[order]
        n_e = self.entry_left.size
        self.var_starts = np.flatnonzero(np.r_[True, np.diff(self.entry_var) != 0]) if n_e else np.zeros(0, np.int64)
        self.n_vars = n_vars
        self.entry_to_var = sp.csr_matrix((np.ones(n_e), (np.arange(n_e), self.entry_var)), shape=(n_e, n_vars))
        self.var_from_entry = self.entry_to_var.T.tocsr()
        self._q_pattern = self._small_pattern()  # shared with the float32 copy (:meth:`cast`)
        self.dtype = np.dtype(np.float64)  # of the dense data and of every result (see :meth:`cast`)
        self.lift = self.apply(np.eye(d))  # dense r × d (rows of the lift)
        self.vars_used = np.unique(self.entry_var)
        self._factorise()

    def cast(self, dtype) -> "_Block":
        """The same block with its dense data (lift, panels, constant, factor matrices) in ``dtype``:
        every product of the copy is computed in that precision (float32: twice the BLAS speed)."""
        out = copy.copy(self)
        out.dtype = np.dtype(dtype)
        out.constant = self.constant.astype(dtype)
        out.lift = self.lift.astype(dtype)
        out.groups = [_Group(g.start, g.stop, g.cols, None if g.panel is None else g.panel.astype(dtype))
                      for g in self.groups]
        out.factors = self.factors.astype(dtype)
        out.factors_signed = self.factors_signed.astype(dtype)
        return out

    def _mirror_entries(self) -> None:
        """Make the entry list symmetric: ``(a, b, q, i)`` present ⇔ ``(b, a, q, i)`` present.

        The block's data matrices are ``A_i = sym(Σ_e q_e g_a g_bᵀ)``; an
        off-diagonal entry without its mirror is replaced by two halves.  Then
        ``Σ_e q_e g_aᵀ K g_b = ⟨A_i, K⟩`` for any K, symmetric or not, which the
        adjoint products (:meth:`adj_rows`) rely on.  LipSDP's terms are
        symmetric already (nothing changes for them).
        """
        if not self.entry_left.size:
            return
        scale = np.abs(self.entry_coef).max()
        key = lambda a, b, q, v: set(zip(a.tolist(), b.tolist(), np.round(q / scale, 12).tolist(), v.tolist()))
        left, right, coef, var = self.entry_left, self.entry_right, self.entry_coef, self.entry_var
        if key(left, right, coef, var) == key(right, left, coef, var):
            return
        off = self.entry_left != self.entry_right
        q = np.where(off, 0.5 * self.entry_coef, self.entry_coef)
        self.entry_left, self.entry_right = np.r_[left, right[off]], np.r_[right, left[off]]
        self.entry_coef, self.entry_var = np.r_[q, q[off]], np.r_[self.entry_var, self.entry_var[off]]

    def _factor_entries(self):
        """The eigen-factors of every variable's small matrix ``Q_i`` (rows ``idx_i`` of the lift).

        Returns ``(rows, cols, vals, signs, variables)``: the non-zeros of ``W``
        (factor, lifted row, value), and per factor its eigenvalue and variable,
        factors ordered by variable.  Eigenvalues below ``1e-13`` of the largest
        of their matrix are dropped.
        """
        n_e = self.entry_left.size
        if not n_e:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0), np.zeros(0), empty
        owner = np.cumsum(np.r_[True, np.diff(self.entry_var) != 0]) - 1  # variable rank of each entry
        n_var = int(owner[-1]) + 1
        # the sorted lifted rows each variable touches: unique (variable, row) keys
        keys = np.unique(np.r_[owner * self.lift_rows + self.entry_left, owner * self.lift_rows + self.entry_right])
        key_var, key_row = keys // self.lift_rows, keys % self.lift_rows
        first_key = np.searchsorted(key_var, np.arange(n_var))
        size = np.diff(np.r_[first_key, keys.size])
        pa = np.searchsorted(keys, owner * self.lift_rows + self.entry_left) - first_key[owner]
        pb = np.searchsorted(keys, owner * self.lift_rows + self.entry_right) - first_key[owner]
        f_var, f_pos, f_lam, f_vec = [], [], [], []  # per size: kept factors (variable rank, order, value, vector)
        for m in np.unique(size):
            members = np.flatnonzero(size == m)
            slot = np.full(n_var, -1)
            slot[members] = np.arange(members.size)
            e = np.flatnonzero(size[owner] == m)
            small = np.zeros((members.size, m, m))
            np.add.at(small, (slot[owner[e]], pa[e], pb[e]), self.entry_coef[e])
            small = 0.5 * (small + small.transpose(0, 2, 1))
            diagonal = np.count_nonzero(small - np.einsum("vii->vi", small)[:, :, None] * np.eye(m), axis=(1, 2)) == 0
            lam = np.empty((members.size, m))
            vec = np.empty((members.size, m, m))
            lam[diagonal] = np.einsum("vii->vi", small[diagonal])
            vec[diagonal] = np.eye(m)
            if np.any(~diagonal):
                lam[~diagonal], vec[~diagonal] = np.linalg.eigh(small[~diagonal])
            keep = np.abs(lam) > 1e-13 * np.maximum(np.max(np.abs(lam), axis=1, keepdims=True), 1e-300)
            v_idx, k_idx = np.nonzero(keep)
            f_var.append(members[v_idx])
            f_pos.append(k_idx)
            f_lam.append(lam[v_idx, k_idx])
            f_vec.append(vec[v_idx, :, k_idx])  # (factors, m): eigenvector entries on the variable's rows
        f_var, f_pos, f_lam = np.concatenate(f_var), np.concatenate(f_pos), np.concatenate(f_lam)
        order = np.lexsort((f_pos, f_var))  # factors by variable, then eigenvalue order
        rank = np.empty(order.size, np.int64)
        rank[order] = np.arange(order.size)
        rows, cols, vals = [], [], []
        offset = 0
        for vecs in f_vec:
            ids = offset + np.arange(vecs.shape[0])  # this size's factors, numbered as concatenated
            offset += vecs.shape[0]
            rr, cc = np.nonzero(vecs)
            rows.append(rank[ids[rr]])
            cols.append(key_row[first_key[f_var[ids[rr]]] + cc])
            vals.append(vecs[rr, cc])
        variables = self.entry_var[self.var_starts][f_var[order]].astype(np.int64)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), f_lam[order], variables

    def _factorise(self) -> None:
        """Eigen-factor each variable's small matrix: ``A_i = Σ_k s_k h_k h_kᵀ`` with ``h_k = Gᵀ w_k``.

        ``W`` (R × r, sparse) stacks the ``w_k`` (R = Σ_i rank Q_i, e.g. 2 per
        ReLU neuron instead of 3–4 entries), so the Schur complement is one
        Hadamard product ``(W U Wᵀ) ∘ (W V Wᵀ)`` reduced over variables.  The
        small matrices are gathered by size and eigen-decomposed as stacks; a
        diagonal one keeps its unit vectors exactly (W stays as sparse as Q).
        """
        rows_w, cols_w, vals_w, self.factor_signs, self.factor_var = self._factor_entries()
        self.n_factors = count = self.factor_signs.size
        self.factors = sp.csr_matrix((vals_w, (rows_w, cols_w)), shape=(count, self.lift_rows))
        self.f_starts = np.flatnonzero(np.r_[True, np.diff(self.factor_var) != 0]) if count else np.zeros(0, np.int64)
        counts = np.diff(np.r_[self.f_starts, count]) if count else np.zeros(0, np.int64)
        self.f_runs = _factor_runs(counts)
        # rows s_k w_kᵀ: W_s U W_sᵀ carries s_k s_l
        self.factors_signed = sp.csr_matrix(sp.diags(self.factor_signs) @ self.factors)
        self.used_index = as_index(self.factor_var[self.f_starts]) if count else slice(0, 0)

    def factor_gram(self, lifted: np.ndarray, signed: bool = False,
                    work: "_GramWork | None" = None) -> np.ndarray | None:
        """``W L Wᵀ`` (R × R) of a symmetric lifted ``L = G Y Gᵀ``: the Gram matrix ``h_kᵀ Y h_l`` of
        the factors, times ``s_k s_l`` when ``signed``; None for a block without variables.

        With ``work`` the product and its temporaries are written into that memory (the
        result is overwritten by the next call with the same ``work``); else into new memory.
        """
        if not self.n_factors:
            return None
        w = self.factors_signed if signed else self.factors
        work = work or _GramWork(self.n_factors, self.lift_rows, lifted.dtype.itemsize)
        t, t_transposed, gram = work.arrays(lifted.dtype)
        sparse_times_dense(w, lifted, t)  # R × r
        # sparse × dense wants the dense factor C-contiguous
        return sparse_times_dense(w, transpose_copy(t, out=t_transposed), gram)

    @functools.cached_property
    def factor_gather(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The factor rows ``w_k`` as ``(columns, values)``, each ``K × R`` (``K`` the largest number of
        non-zeros in a row; padding: column 0, value 0), or None when ``K`` exceeds ``_MAX_GATHER`` or
        the Grams are small enough to live in memory kept for the solve (``_GRAM_REUSE_MAX``), where
        the Gram path is the faster one (bench/NOTES.md)."""
        if max(self.n_factors, self.lift_rows) ** 2 <= _GRAM_REUSE_MAX:
            return None
        w = self.factors
        counts = np.diff(w.indptr)
        width = int(counts.max()) if counts.size else 0
        if width == 0 or width > _MAX_GATHER:
            return None
        cols = np.zeros((width, w.shape[0]), np.int64)
        vals = np.zeros((width, w.shape[0]))
        for j in range(width):
            has = counts > j
            at = w.indptr[:-1][has] + j
            cols[j, has] = w.indices[at]
            vals[j, has] = w.data[at]
        return cols, vals

    @functools.cached_property
    def factor_sum_t(self) -> sp.csr_matrix:
        """``factor_sum`` transposed (#used variables × R), in CSR: row sums over a variable's factors."""
        return sp.csr_matrix(self.factor_sum.T)

    def gram_rows(self, lifted: np.ndarray, rows: slice, signed: bool) -> np.ndarray:
        """Rows ``rows`` of the factor Gram ``W L Wᵀ`` (times ``s_k s_l`` when ``signed``), by gathers:
        ``(W L)_k = Σ_j v_jk L[c_jk]`` and ``(W L Wᵀ)_kl = Σ_j v_jl (W L)_k[c_jl]`` (:attr:`factor_gather`)."""
        cols, vals = self.factor_gather
        vals = (vals * self.factor_signs) if signed else vals
        vals = vals.astype(lifted.dtype, copy=False)
        part = np.take(lifted, cols[0, rows], axis=0)
        part *= vals[0, rows, None]
        for j in range(1, cols.shape[0]):
            part += vals[j, rows, None] * np.take(lifted, cols[j, rows], axis=0)
        gram = np.take(part, cols[0], axis=1)
        gram *= vals[0]
        for j in range(1, cols.shape[0]):
            gram += vals[j] * np.take(part, cols[j], axis=1)
        return gram

    def schur_gathered(self, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
        """Add the HKM Schur complement of this block into ``out`` from its lifted ``u = G X Gᵀ`` and
        ``v = G Z⁻¹ Gᵀ`` without the R × R factor Grams: rows of both Grams (:meth:`gram_rows`) a chunk
        of variables at a time, their product reduced over the variables' factors at once.  The
        chunks are shared between two threads (:func:`~lipsdp.runtime.in_parallel`)."""
        if not self.n_factors:
            return
        starts = np.r_[self.f_starts, self.n_factors]
        n_used = self.f_starts.size
        per_chunk = max(1, int(_GATHER_CHUNK_BYTES // (8 * max(u.shape[0], self.n_factors))))
        # a chunk starts at the variable that holds factor row 0, per_chunk, 2·per_chunk, …: whole variables
        firsts = np.unique(np.searchsorted(self.f_starts, np.arange(0, self.n_factors, per_chunk), side="right") - 1)
        bounds = np.r_[firsts, n_used].tolist()
        red = np.empty((n_used, n_used))
        total = self.factor_sum_t

        def run(chunks):
            for a, b in chunks:
                rows = slice(int(starts[a]), int(starts[b]))
                k = self.gram_rows(u, rows, True)
                k *= self.gram_rows(v, rows, False)
                by_var = total[a:b, rows] @ k  # (variables a..b) × R
                red[a:b] = np.asarray(total @ by_var.T).T
        chunks = list(zip(bounds[:-1], bounds[1:]))
        half = len(chunks) // 2
        in_parallel(lambda: run(chunks[:half]), lambda: run(chunks[half:]))
        red += red.T
        red *= 0.5
        add_principal(out, self.used_index, red)

    def schur_factored(self, wuw: np.ndarray | None, wvw: np.ndarray | None, out: np.ndarray) -> None:
        """Add the HKM Schur complement ``M_ij = Σ_{k∈i, l∈j} s_k s_l (h_kᵀXh_l)(h_lᵀZ⁻¹h_k)`` into ``out``
        from the factor Grams of X (signed) and Z⁻¹ (:meth:`factor_gram`; both symmetric, so
        ``(W V Wᵀ)_{lk} = (W V Wᵀ)_{kl}``).  ``wuw`` is overwritten."""
        if wuw is None:
            return
        wuw *= wvw
        self.reduce_factors(wuw, out)

    @functools.cached_property
    def factor_sum(self) -> sp.csr_matrix:
        """(R × #used variables) 0/1 matrix summing each variable's factors: :meth:`reduce_factors`'
        path for blocks of more than ``_MAX_FACTOR_RUNS`` runs, built on first use."""
        counts = np.diff(np.r_[self.f_starts, self.n_factors])
        owner = np.repeat(np.arange(counts.size), counts)
        count = self.n_factors
        return sp.csr_matrix((np.ones(count), (np.arange(count), owner)), shape=(count, counts.size))

    def reduce_factors(self, k: np.ndarray, out: np.ndarray) -> None:
        """Add ``M_ij = Σ_{k∈i, l∈j} K_kl`` (symmetric R × R ``K``, signs included) into ``out``.

        Only the rows and columns of the variables this block uses are touched
        (many small blocks share one n × n Schur complement).
        """
        if len(self.f_runs) <= _MAX_FACTOR_RUNS:
            red = _sum_factor_runs(_sum_factor_runs(k, self.f_runs).T, self.f_runs).T
        else:
            red = np.asarray(self.factor_sum.T @ np.asarray(self.factor_sum.T @ k).T)
        red += red.T
        red *= 0.5
        add_principal(out, self.used_index, red)

    def diagonal_coefficients(self, chunk_bytes: int = 1 << 25) -> sp.csc_matrix:
        """Sparse (n_vars × d) matrix of the diagonals: entry (i, p) is ``A_i[p, p] = Σ_{e∈i} q_e G[a_e, p] G[b_e, p]``.

        Exact zeros (structurally absent coefficients, or sums that cancel exactly) are dropped.
        """
        rows, cols, vals = [], [], []
        step = max(1, chunk_bytes // (8 * max(self.dim, 1)))
        for s in range(0, self.entry_left.size, step):
            e = slice(s, min(s + step, self.entry_left.size))
            prod = self.entry_coef[e, None] * self.lift[self.entry_left[e]] * self.lift[self.entry_right[e]]
            r, c = np.nonzero(prod)
            rows.append(self.entry_var[e][r])
            cols.append(c)
            vals.append(prod[r, c])
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
        out = sp.csc_matrix((cat(vals, float), (cat(rows, np.int64), cat(cols, np.int64))), shape=(self.n_vars, self.dim))
        out.sum_duplicates()
        out.eliminate_zeros()
        return out

    # -- lifted linear algebra
    def apply(self, y: np.ndarray) -> np.ndarray:
        """``G @ y`` for ``y`` of shape (d, k)."""
        out = np.empty((self.lift_rows, y.shape[1]), dtype=self.dtype)
        for g in self.groups:
            part = y[g.cols]
            if g.panel is None:
                out[g.start:g.stop] = part
            else:
                matmul(g.panel, part, out=out[g.start:g.stop])
        return out

    def apply_t(self, b: np.ndarray) -> np.ndarray:
        """``Gᵀ @ b`` for ``b`` of shape (r, k)."""
        out = np.zeros((self.dim, b.shape[1]), dtype=self.dtype)
        for g in self.groups:
            part = b[g.start:g.stop]
            if g.panel is None:
                if isinstance(g.cols, slice):
                    out[g.cols] += part
                else:
                    np.add.at(out, g.cols, part)
            else:
                out[g.cols] += matmul(g.panel.T, part)  # cols is a slice or unique (np.unique): fancy += is safe
        return out

    def lifted(self, y: np.ndarray, gy: np.ndarray | None = None) -> np.ndarray:
        """``G Y Gᵀ`` (r × r) for symmetric ``Y``; ``gy`` = ``G Y`` if already known.

        Symmetric up to rounding only, and not symmetrised (an r × r transpose-add):
        the Schur complement symmetrises what it accumulates, and ``𝒜`` reads the
        entries ``q_e L[b_e, a_e]`` directly, where an asymmetry of rounding size
        is harmless.
        """
        if gy is None:
            gy = self.apply(y)
        return self.apply(gy.T)

    def _small_pattern(self) -> tuple:
        """The CSR pattern of ``Q(dy)`` (:meth:`small`) and, per entry e, the slot it adds into."""
        q = sp.csr_matrix((np.arange(1, self.entry_left.size + 1, dtype=float), (self.entry_left, self.entry_right)),
                          shape=(self.lift_rows, self.lift_rows))
        q.has_canonical_format = False
        q.sum_duplicates()
        # entry k of the pattern sums the entries e with slot[e] == k
        slot = np.empty(self.entry_left.size, np.int64)
        order = np.lexsort((self.entry_right, self.entry_left))
        keys = self.entry_left[order] * self.lift_rows + self.entry_right[order]
        first = np.r_[True, keys[1:] != keys[:-1]]
        slot[order] = np.cumsum(first) - 1
        return q.indptr, q.indices, slot, q.nnz

    def small(self, dy: np.ndarray) -> sp.csr_matrix:
        """Sparse ``Q(dy)`` (r × r) with ``Σ_i dy_i A_i = Gᵀ Q(dy) G``, on the pattern built once."""
        indptr, indices, slot, nnz = self._q_pattern
        data = np.bincount(slot, weights=self.entry_coef * dy[self.entry_var], minlength=nnz)
        data = data.astype(self.dtype, copy=False)
        return sp.csr_matrix((data, indices, indptr), shape=(self.lift_rows, self.lift_rows))

    def op(self, dy: np.ndarray, q: sp.csr_matrix | None = None) -> np.ndarray:
        """Dense ``Σ_i dy_i A_i = Gᵀ Q(dy) G`` (d × d); ``q`` = ``Q(dy)`` if already built."""
        out = self.apply_t(np.asarray((self.small(dy) if q is None else q) @ self.lift))
        return 0.5 * (out + out.T)

    def op_times(self, gy: np.ndarray, q: sp.csr_matrix) -> np.ndarray:
        """``(Σ_i dy_i A_i) Y = Gᵀ Q (G Y)`` (C-contiguous, d × k) from ``gy = G Y`` and ``q = Q(dy)``.

        The weight panels multiply only their own columns, Σ_h d·r_h·|C_h| flops
        instead of the d³ of a dense product (784-1024³-10: about a fifth).  For
        symmetric ``Y`` this is ``(Y ΔZ_y)ᵀ``.
        """
        return self.apply_t(np.asarray(q @ gy))

    def adj_lifted(self, lifted: np.ndarray) -> np.ndarray:
        """``𝒜(Y)`` from the lifted ``G Y Gᵀ``."""
        return self.var_from_entry @ (self.entry_coef * lifted[self.entry_right, self.entry_left])

    def adj_rows(self, left: np.ndarray, right: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``Σ_e q_e left[a_e] · right[b_e]`` for each variable (rows of two r × d matrices).

        With ``left = G P`` and ``right = G Sᵀ`` this is ``𝒜(P S) = ⟨A_i, P S⟩``
        (``g_aᵀ P S g_b`` summed; the entries are mirrored, :meth:`_mirror_entries`,
        so P S need not be symmetric and ``𝒜(K) = 𝒜(Kᵀ) = adj_rows(G, G K)``).
        """
        n_e = self.entry_left.size
        vals = np.empty(n_e)
        for s in range(0, n_e, chunk):
            e = slice(s, min(s + chunk, n_e))
            vals[e] = np.einsum("ij,ij->i", left[self.entry_left[e]], right[self.entry_right[e]])
        return self.var_from_entry @ (self.entry_coef * vals)


def _factor_runs(counts: np.ndarray) -> list:
    """Runs of consecutive variables with equally many factors: ``(first factor, variables, factors
    per variable)`` (the factors of each variable are consecutive, variables in order)."""
    runs = []
    start = 0
    for g in counts.tolist():
        if runs and runs[-1][2] == g:
            runs[-1][1] += 1
        else:
            runs.append([start, 1, g])
        start += g
    return [tuple(r) for r in runs]


def _sum_factor_runs(k: np.ndarray, runs: list) -> np.ndarray:
    """Rows of ``k`` summed over each variable's factors (:func:`_factor_runs`): one strided slice
    per factor position of a run, added whole (faster than a reshape-and-sum or a sparse product)."""
    out = np.empty((sum(n for _, n, _ in runs), k.shape[1]), dtype=k.dtype)
    pos = 0
    for start, n, g in runs:
        dst = out[pos:pos + n]
        if n == 1:
            np.sum(k[start:start + g], axis=0, out=dst[0])
        else:
            stop = start + n * g
            if g == 1:
                dst[...] = k[start:stop]
            else:
                np.add(k[start:stop:g], k[start + 1:stop:g], out=dst)
                for t in range(2, g):
                    dst += k[start + t:stop:g]
        pos += n
    return out


class _GramWork:
    """Memory for one side's factor Gram of one block (:meth:`_Block.factor_gram`), kept for a whole solve.

    Three arrays (``W L``, its transpose, the Gram), sized for ``itemsize`` (float64
    by default) and viewed in the precision of the current phase, so that the
    float32 phase and the float64 phase use the same pages: a fresh R × R array each iteration
    would be faulted in again page by page (see :func:`~lipsdp.runtime.sparse_times_dense`).
    """

    def __init__(self, big: int, small: int, itemsize: int = 8):
        self.shapes = ((big, small), (small, big), (big, big))
        self.raw = [np.empty(a * b * itemsize, np.uint8) for a, b in self.shapes]

    def arrays(self, dtype) -> tuple:
        """The three arrays in ``dtype`` (float32 views use the first half of the memory)."""
        size = np.dtype(dtype).itemsize
        return tuple(raw[:a * b * size].view(dtype).reshape(a, b) for raw, (a, b) in zip(self.raw, self.shapes))


def _gram_work(blocks: list) -> list:
    """Per block, the (X side, Z side) :class:`_GramWork`, or (None, None) where the Grams are large
    enough (``_GRAM_REUSE_MAX``) that fresh memory costs little next to the product."""
    out = []
    for blk in blocks:
        keep = blk.n_factors and max(blk.n_factors, blk.lift_rows) ** 2 <= _GRAM_REUSE_MAX
        out.append((_GramWork(blk.n_factors, blk.lift_rows), _GramWork(blk.n_factors, blk.lift_rows)) if keep
                   else (None, None))
    return out


# ----------------------------------------------------------------------------- helpers

def _factorable_step(mats, dirs, step):
    """``M + step·D`` for each block, shrinking ``step`` by 0.8 (≤ 30 times) until all Cholesky
    factorisations succeed; returns the new matrices, their factors (None where one still fails)
    and the step used.  Iterates and directions are exactly symmetric (every one is built as a sum
    of exactly symmetric terms), hence so are the new matrices."""
    for _ in range(30):
        new = [m + step * d for m, d in zip(mats, dirs)]
        factors = [_chol(a) for a in new]
        if all(f is not None for f in factors):
            break
        step *= 0.8
    return new, factors, step

def _chol(a: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor with an exactly zero upper triangle (which :func:`_inv_from_chol` and
    :func:`_lower_inverse` rely on), or None when ``a`` is not numerically positive definite."""
    try:
        return la.cholesky(a, lower=True, check_finite=False)
    except la.LinAlgError:
        return None


def _inv_from_chol(lo: np.ndarray) -> np.ndarray:
    """``(L Lᵀ)⁻¹`` from a factor of :func:`_chol`.

    LAPACK ``potri`` writes the lower triangle of the inverse and leaves the upper
    one as it was in ``lo``, exactly zero; so ``inv + invᵀ`` with the diagonal
    put back is the full inverse, in one pass (``np.tril`` copies cost more than
    ``potri`` itself at d = 264).
    """
    inv, info = la.lapack.get_lapack_funcs("potri", (lo,))(lo, lower=1)
    if info != 0:
        raise SolverFailedError("inverting a block failed (singular iterate)", "numerical")
    full = inv + inv.T
    np.fill_diagonal(full, np.diagonal(inv))
    return full


def _dense_min_eig(lo: np.ndarray, dm: np.ndarray) -> float:
    """Smallest eigenvalue of ``L⁻¹ dM L⁻ᵀ``, densely (small blocks)."""
    return float(la.eigvalsh(_scaled(lo, dm), subset_by_index=[0, 0], check_finite=False, driver="evr")[0])


def _scaled(lo: np.ndarray, dm: np.ndarray) -> np.ndarray:
    """``L⁻¹ dM L⁻ᵀ`` (symmetrised), explicitly."""
    t = la.solve_triangular(lo, dm, lower=True, check_finite=False)
    t = la.solve_triangular(lo, t.T, lower=True, check_finite=False)
    return 0.5 * (t + t.T)


def _lanczos_smallest(matvec, start: np.ndarray, max_steps: int = _LANCZOS_STEPS, tol: float = _LANCZOS_TOL,
                      floor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Smallest Ritz values and vectors of a stack of symmetric operators, by Lanczos.

    ``matvec`` maps a stack of vectors (B × n) to the operators applied to them;
    ``start`` (B × n) are the starting vectors (a previous Ritz vector makes a
    good one: the directions of consecutive steps are alike).  Full
    re-orthogonalisation (twice).  A run stops once the residual bound
    ``|β_j s_j|`` of its smallest Ritz pair is below ``tol · max(|θ|, floor)``:
    callers turn θ into a step length ``-1/θ`` capped at 1, so eigenvalues above
    ``-floor`` need no more accuracy than ``floor`` gives them.

    A Ritz value can only over-estimate λ_min, i.e. propose too long a step
    (callers verify every step by a Cholesky factorisation); the values are
    lowered by a relative slack ``_RITZ_SLACK`` towards the true λ_min.

    Returns
    -------
    values, vectors
        Slack-lowered smallest Ritz values (B,) and their unit Ritz vectors (B × n).
    """
    b, n = start.shape
    k = min(n, max_steps)
    basis = np.empty((b, k, n))
    alpha = np.zeros((b, k))
    beta = np.zeros((b, k))
    v = start / np.maximum(np.linalg.norm(start, axis=1, keepdims=True), 1e-300)
    scale = np.full(b, 1e-300)  # largest |α| of each run so far: breakdown is judged against it
    for j in range(k):
        basis[:, j] = v
        w = matvec(v)
        a_j = np.einsum("ij,ij->i", v, w)
        alpha[:, j] = a_j
        np.maximum(scale, np.abs(a_j), out=scale)
        done = basis[:, :j + 1]
        done_t = done.transpose(0, 2, 1)
        w3 = w[:, None, :]
        for _ in range(2):
            w3 -= np.matmul(np.matmul(w3, done_t), done)  # b × 1 × n
        nrm = np.sqrt(np.einsum("ij,ij->i", w, w))
        beta[:, j] = nrm
        broken = nrm <= 1e-12 * scale
        any_broken = broken.any()
        if j + 1 == k or (any_broken and broken.all()) or (j + 1 >= _LANCZOS_MIN_STEPS and (j + 1) % 2 == 0):
            theta, vecs = _tridiagonal_smallest(alpha[:, :j + 1], beta[:, :j])
            resid = np.abs(nrm * vecs[:, -1])
            if j + 1 == k or np.all(broken | (resid <= tol * np.maximum(np.abs(theta), floor))):
                break
        if any_broken:
            v = np.where(broken[:, None], 0.0, w / np.where(broken, 1.0, nrm)[:, None])
        else:
            v = w / nrm[:, None]
    ritz = np.matmul(vecs[:, None, :], basis[:, :vecs.shape[1]])[:, 0]
    return theta - _RITZ_SLACK * np.abs(theta), ritz


def _tridiagonal_smallest(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of a stack of symmetric tridiagonal matrices (diagonals ``alpha``, ``beta``)."""
    b, m = alpha.shape
    tri = np.zeros((b, m, m))
    idx = np.arange(m)
    tri[:, idx, idx] = alpha
    tri[:, idx[:-1], idx[1:]] = beta
    tri[:, idx[1:], idx[:-1]] = beta
    val, vec = np.linalg.eigh(tri)
    return val[:, 0], vec[:, :, 0]


def _lower_inverse(lo: np.ndarray) -> np.ndarray:
    """``L⁻¹`` of a lower-triangular factor of :func:`_chol` (LAPACK ``trtri``; the upper triangle
    stays as in ``lo``, exactly zero)."""
    inv, info = la.lapack.get_lapack_funcs("trtri", (lo,))(lo, lower=1)
    if info != 0:
        raise SolverFailedError("a Cholesky factor is singular", "numerical")
    return inv


@functools.lru_cache(maxsize=16)
def _start_noise(count: int, n: int) -> np.ndarray:
    """Fixed pseudo-random ``count × n`` vectors of norm about 1 (read-only; a generator costs more to
    create than a step-length problem of a small block takes to solve)."""
    out = np.random.default_rng(12345 + n).standard_normal((count, n)) / np.sqrt(n)
    out.setflags(write=False)
    return out


def _start_vectors(idx: list, n: int, starts: dict | None) -> np.ndarray:
    """Starting vectors of the blocks ``idx``: their last Ritz vectors plus a little noise (random at first)."""
    out = _start_noise(len(idx), n).copy()
    if starts is not None:
        for row, i in enumerate(idx):
            prev = starts.get(i)
            if prev is not None:
                out[row] = prev + 0.05 * out[row]
    return out


def _min_eigs_scaled(los: list, dms: list, inverses: dict | None = None, starts: dict | None = None,
                     tol: float = _LANCZOS_TOL) -> list:
    """Smallest eigenvalue of ``L⁻¹ dM L⁻ᵀ`` for every block (``L`` lower Cholesky factors).

    Dense below ``_DENSE_EIG_MAX``; otherwise Lanczos (:func:`_lanczos_smallest`),
    one batched run for all blocks of one size.  Groups of more than two
    mid-sized blocks (``≤ _BATCH_EIG_MAX``, e.g. a split MaxMin chain) run on
    explicit ``L⁻¹ dM L⁻ᵀ``, formed with stacked matrix products from inverse
    factors kept in ``inverses`` (keyed by the group), so the predictor and the
    corrector of one iteration invert each factor once.  Other groups (one
    block's X and Z side, say) apply ``v ↦ L⁻¹ (dM (L⁻ᵀ v))`` with two
    triangular solves per member.  ``starts`` (block index → vector) carries
    each block's last Ritz vector between calls, as the next starting vector.
    """
    out = [None] * len(los)
    groups: dict = {}
    for i, lo in enumerate(los):
        d = lo.shape[0]
        if d <= _DENSE_EIG_MAX:
            out[i] = _dense_min_eig(lo, dms[i])
        else:
            groups.setdefault(d, []).append(i)
    for n, idx in groups.items():
        if len(idx) > 2 and n <= _BATCH_EIG_MAX:
            gkey = tuple(idx)
            inv = None if inverses is None else inverses.get(gkey)
            if inv is None:
                inv = np.stack([_lower_inverse(los[i]) for i in idx])
                if inverses is not None:
                    inverses[gkey] = inv
            t = np.matmul(np.matmul(inv, np.stack([dms[i] for i in idx])), inv.transpose(0, 2, 1))
            t += t.transpose(0, 2, 1)
            t *= 0.5

            def matvec(v, t=t):
                return np.matmul(t, v[:, :, None])[:, :, 0]
        else:
            ops = []
            for i in idx:
                lt = np.asfortranarray(los[i])
                ops.append((lt, dms[i], la.get_blas_funcs("trsv", (lt,))))

            def matvec(v, ops=ops):
                out_v = np.empty_like(v)
                for row, (lt, dm, trsv) in enumerate(ops):
                    w = trsv(lt, v[row], lower=1, trans=1)  # L⁻ᵀ v
                    out_v[row] = trsv(lt, dm @ w, lower=1, trans=0)  # L⁻¹ dM L⁻ᵀ v
                return out_v
        vals, vecs = _lanczos_smallest(matvec, _start_vectors(idx, n, starts), tol=tol)
        for row, i in enumerate(idx):
            out[i] = float(vals[row])
            if starts is not None:
                starts[i] = vecs[row]
    return out


def _steps_psd(los: list, dms: list, inverses: dict | None = None, starts: dict | None = None,
               tol: float = _LANCZOS_TOL) -> list:
    """Largest steps keeping each ``M_b + α dM_b`` PSD (``inf`` where dM_b ⪰ 0)."""
    return [np.inf if lam >= 0 else -1.0 / lam for lam in _min_eigs_scaled(los, dms, inverses, starts, tol)]


def _implied_nonnegative(blocks, candidates: np.ndarray) -> np.ndarray:
    """The variables among ``candidates`` whose bound ``y_i ≥ 0`` an LMI block already implies.

    That is so when some block has a diagonal entry p that only y_i reaches,
    ``Z_pp = F⁰_pp + y_i A_i[p, p]`` with ``A_i[p, p] > 0 ≥ F⁰_pp``: then
    ``Z ⪰ 0 ⇒ Z_pp ≥ 0 ⇒ y_i ≥ −F⁰_pp / A_i[p, p] ≥ 0``.  Dropping the bound from
    the LP cone leaves the feasible set as it is; it spares the method a cone
    whose complementarity slows it down (LipSDP-Neuron: the −2λ_j diagonal of
    every hidden neuron and the ρ I of the inputs imply all of its bounds, and
    fewer iterations are needed).  "Only y_i" is decided on exact zeros
    of the other coefficients, so a rounding-size coefficient keeps the bound.
    """
    implied = np.zeros(candidates.size, bool)
    for blk in blocks:
        diag = blk.diagonal_coefficients()  # CSC, n × d
        counts = np.diff(diag.indptr)
        for p in np.flatnonzero(counts == 1):
            i = diag.indices[diag.indptr[p]]
            if candidates[i] and diag.data[diag.indptr[p]] > 0 and blk.constant[p, p] <= 0:
                implied[i] = True
    return implied


def _schur_bandwidth(blocks, n: int) -> int:
    """Half-bandwidth of the Schur complement: a block couples only the variables it uses.

    For chains split into per-layer blocks (:mod:`lipsdp.decompose`) the variables
    of layer k meet only those of layers k ± 1, so the n × n Schur complement is
    banded and its Cholesky factorisation costs O(n·bw²) instead of O(n³).
    """
    bw = 0
    for blk in blocks:
        if blk.vars_used.size:
            bw = max(bw, int(blk.vars_used[-1] - blk.vars_used[0]))
    return min(bw, max(n - 1, 0))


class _SchurSolver:
    """Solves with the Schur complement ``M`` (scaled to unit diagonal).

    Banded Cholesky when ``M`` is narrow-banded, dense Cholesky otherwise, and
    for a near-singular ``M`` (free multipliers, degenerate optimum) a pivoted
    LU of the slightly regularised matrix with iterative refinement on the
    true one.  Raises :class:`SolverFailedError` (``"ill-conditioned"``) when
    none of these works.
    """

    def __init__(self, m: np.ndarray, bandwidth: int):
        n = m.shape[0]
        self.m = m
        self.scale = np.sqrt(np.maximum(np.diag(m), 1e-300))
        self.band = self.lo = self.lu = None
        inv_scale = 1.0 / self.scale
        if n > 200 and 4 * bandwidth < n:
            ab = np.zeros((bandwidth + 1, n))  # lower band storage: ab[i, j] = M[j + i, j] (scaled)
            for i in range(bandwidth + 1):
                ab[i, :n - i] = np.diagonal(m, -i) * inv_scale[i:] * inv_scale[:n - i]
            try:
                self.band = la.cholesky_banded(ab, lower=True, check_finite=False)
                return
            except la.LinAlgError:
                self.band = None
        ms = m * inv_scale[:, None]
        ms *= inv_scale[None, :]
        self.lo = _chol(ms)
        if self.lo is not None:
            return
        try:
            self.lu = la.lu_factor(ms + 1e-12 * np.eye(n), check_finite=False)
        except (la.LinAlgError, ValueError) as exc:
            raise SolverFailedError("the Schur complement is singular", "ill-conditioned") from exc
        if not np.all(np.isfinite(self.lu[0])) or np.min(np.abs(np.diag(self.lu[0]))) == 0:
            raise SolverFailedError("the Schur complement is singular", "ill-conditioned")

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        b = rhs / self.scale
        if self.band is not None:
            return la.cho_solve_banded((self.band, True), b, check_finite=False) / self.scale
        if self.lo is not None:
            return la.cho_solve((self.lo, True), b, check_finite=False) / self.scale
        sol = la.lu_solve(self.lu, b, check_finite=False)
        for _ in range(3):
            sol += la.lu_solve(self.lu, b - (self.m @ (sol / self.scale)) / self.scale, check_finite=False)
        return sol / self.scale


def _schur_complement(blocks: list, u: list, v: list, n: int, work: list | None = None) -> np.ndarray:
    """The n × n HKM Schur complement summed over the blocks, from their lifted ``u = G X Gᵀ`` and
    ``v = G Z⁻¹ Gᵀ``: by gathers where a block allows it (:meth:`_Block.schur_gathered`), else from
    the factor Grams of the X and the Z side, computed at once (:func:`~lipsdp.runtime.in_parallel`)
    into ``work`` (per block, the two sides' :class:`_GramWork`) where given, else into new arrays
    freed on return (each is R × R)."""
    m = np.zeros((n, n))
    gathered = [blk.factor_gather is not None for blk in blocks]
    for blk, uu, vv, g in zip(blocks, u, v, gathered):
        if g:
            blk.schur_gathered(uu, vv, m)
    if all(gathered):
        return m
    work = work or [(None, None)] * len(blocks)
    blocks, u, v, work = zip(*[(b, uu, vv, wk) for b, uu, vv, wk, g in zip(blocks, u, v, work, gathered) if not g])
    wuw, wvw = in_parallel(lambda: [blk.factor_gram(uu, True, wk[0]) for blk, uu, wk in zip(blocks, u, work)],
                           lambda: [blk.factor_gram(vv, False, wk[1]) for blk, vv, wk in zip(blocks, v, work)])
    for k, blk in enumerate(blocks):
        blk.schur_factored(wuw[k], wvw[k], m)
        wuw[k] = wvw[k] = None
    return m


def _step_lp(x: np.ndarray, dx: np.ndarray) -> float:
    neg = dx < 0
    return float(np.min(-x[neg] / dx[neg])) if np.any(neg) else np.inf


@dataclass
class IPMResult:
    y: np.ndarray
    X: list
    status: str
    iterations: int
    primal_objective: float
    dual_objective: float
    rel_gap: float
    primal_infeasibility: float
    dual_infeasibility: float
    history: list


# ----------------------------------------------------------------------------- the method
@dataclass
class _Problem:
    """What a solve keeps fixed: the cost, the lifted blocks (float64), the LP cone and the workspaces."""

    n: int  # variables
    cost: np.ndarray
    norm_cost: float
    blocks: list  # float64 :class:`_Block`s
    lp_vars: np.ndarray  # the variables whose bound y_i ≥ 0 the LP cone keeps (those the LMIs do not imply)
    implied: np.ndarray  # the variables whose bound an LMI implies (clamped to ≥ 0 on return)
    unused: np.ndarray  # variables that appear nowhere (cost 0): fixed at 0 through the Schur complement
    gram_work: list
    barrier_order: int  # Σ block sizes + LP size (μ = gap / this)
    bandwidth: int  # of the Schur complement
    norm_constant: float = 1.0  # max(1, ‖F⁰_b‖_F) in the starting precision (set by :func:`_start`)

    @classmethod
    def build(cls, sdp: SDP) -> "_Problem":
        n = sdp.n_vars
        cost = np.asarray(sdp.objective, float)
        blocks = [_Block(b, n) for b in sdp.blocks]
        nonneg = np.asarray(sdp.nonneg, bool)
        used = np.zeros(n, bool)
        for blk in blocks:
            used[blk.vars_used] = True
        used[nonneg] = True
        implied = _implied_nonnegative(blocks, nonneg)
        lp_vars = np.flatnonzero(nonneg & ~implied)
        if not np.all(used | (cost == 0)):
            raise SolverFailedError("a variable with a non-zero cost appears in no constraint: the SDP is unbounded",
                                    "infeasible")
        return cls(n, cost, float(np.linalg.norm(cost)), blocks, lp_vars, implied, ~used, _gram_work(blocks),
                   sum(b.dim for b in blocks) + lp_vars.size, _schur_bandwidth(blocks, n))


@dataclass
class _State:
    """The iterate ``(X, x_l; y, Z, z_l)`` and what one iteration hands to the next."""

    blocks: list  # the problem's blocks in the working precision (float32 copies in the early phase)
    X: list
    Z: list
    y: np.ndarray
    x_l: np.ndarray
    z_l: np.ndarray
    low: bool  # in the float32 phase
    to_double: bool = False  # leave the float32 phase before the next iteration
    fy: list | None = None  # F(y), updated by each dual step
    lx: list | None = None  # Cholesky factors of X and Z when the last step computed them
    lz: list | None = None
    dual_feasible: bool = False  # Z is F(y) itself (after a full dual step)
    stall: int = 0
    ritz: dict | None = None  # last Ritz vectors of the step-length problems: the next starting vectors


@dataclass
class _Linearisation:
    """One iteration's residuals and lifted products: ``rd = F(y) − Z`` (None once dual feasible),
    ``gx = G X``, ``u = G X Gᵀ``, ``zinv = Z⁻¹``, ``gzi = G Z⁻¹``, ``v = G Z⁻¹ Gᵀ``; after
    :meth:`release_lifted` only ``𝒜(Z⁻¹)`` of ``v`` is kept (``adj_zinv``)."""

    rd: list
    rd_l: np.ndarray
    gx: list
    u: list | None
    zinv: list
    gzi: list
    v: list | None
    adj_zinv: list | None = None

    def release_lifted(self, blocks) -> None:
        """Keep ``𝒜(Z⁻¹)`` per block (all the search direction reads of ``v``) and drop the r × r
        ``u`` and ``v``: once the Schur complement is formed, the direction's temporaries need not
        coexist with them (784-1024³-10: 2 × 384 MB in float64)."""
        self.adj_zinv = [blk.adj_lifted(vv) for blk, vv in zip(blocks, self.v)]
        self.u = self.v = None


@dataclass
class _Measures:
    pobj: float
    dobj: float
    gap: float
    mu: float
    rel_gap: float
    pinf: float
    dinf: float

    @property
    def score(self) -> float:
        return max(self.rel_gap, self.pinf, self.dinf)


def _start(prob: _Problem, y0: np.ndarray | None, single_until: float) -> _State:
    """SDPT3's scaled identities ``ξI, ηI`` shrunk by ``_START_X_SCALE``, ``_START_Z_SCALE``; in float32
    when ``single_until > 0``."""
    c = prob.cost
    X, Z = [], []
    for blk in prob.blocks:
        # crude ‖A_i‖_F estimate: Σ|q| ‖g_a‖‖g_b‖
        gn = np.linalg.norm(blk.lift, axis=1)
        a_f = blk.var_from_entry @ (np.abs(blk.entry_coef) * gn[blk.entry_left] * gn[blk.entry_right])
        a_f = np.asarray(a_f).ravel()
        d = blk.dim
        xi = max(10.0, np.sqrt(d), d * float(np.max((1 + np.abs(c)) / (1 + a_f))))
        eta = max(10.0, np.sqrt(d), float(np.linalg.norm(blk.constant)), float(np.max(a_f, initial=0.0)))
        eta = min(eta, 1e3 * max(1.0, np.sqrt(d)))
        xi, eta = _START_X_SCALE * xi, _START_Z_SCALE * eta
        X.append(xi * np.eye(d))
        Z.append(eta * np.eye(d))
    low = single_until > 0
    blocks = prob.blocks
    if low:
        blocks = [blk.cast(np.float32) for blk in prob.blocks]
        X = [x.astype(np.float32) for x in X]
        Z = [z.astype(np.float32) for z in Z]
    prob.norm_constant = max(1.0, max(float(np.linalg.norm(b.constant)) for b in blocks))
    n_l = prob.lp_vars.size
    y = np.zeros(prob.n) if y0 is None else np.array(y0, float)
    x_l = np.full(n_l, max(10.0, np.sqrt(n_l))) if n_l else np.zeros(0)
    z_l = np.full(n_l, max(10.0, np.sqrt(n_l))) if n_l else np.zeros(0)
    if y0 is not None and n_l:
        z_l = np.maximum(y[prob.lp_vars], 1e-3 * (1 + np.abs(y[prob.lp_vars])))
    return _State(blocks, X, Z, y, x_l, z_l, low, ritz={})


def _switch_to_double(prob: _Problem, st: _State) -> None:
    """Leave the float32 phase: the same iterate in float64, ``F(y)`` recomputed (and factored as Z
    when dual feasible; if it lost definiteness, Z is kept separate again)."""
    st.low, st.to_double, st.blocks = False, False, prob.blocks
    st.X = [x.astype(np.float64) for x in st.X]
    st.Z = [z.astype(np.float64) for z in st.Z]
    st.fy, st.lx, st.lz = [blk.constant + blk.op(st.y) for blk in st.blocks], None, None
    if st.dual_feasible:
        st.lz = [_chol(f) for f in st.fy]
        if any(lo is None for lo in st.lz):
            st.dual_feasible, st.lz = False, None


def _residuals(prob: _Problem, st: _State) -> _Linearisation | None:
    """The dual residuals, the Cholesky factors of X and Z and the lifted products of both sides
    (computed at once, :func:`~lipsdp.runtime.in_parallel`); None when a factorisation fails."""
    if st.fy is None:
        st.fy = [blk.constant + blk.op(st.y) for blk in st.blocks]
    if st.dual_feasible:  # Z is F(y) itself (the residual would only be rounding)
        st.Z = st.fy
        rd = [None] * len(st.blocks)
        st.z_l = st.y[prob.lp_vars].copy()
    else:
        rd = [f - z for f, z in zip(st.fy, st.Z)]
    rd_l = st.y[prob.lp_vars] - st.z_l
    if st.lz is None:
        st.lz = [_chol(z) for z in st.Z]
    if st.lx is None:
        st.lx = [_chol(x) for x in st.X]
    if any(lo is None for lo in st.lz) or any(lo is None for lo in st.lx):
        return None

    def x_side():  # G X, G X Gᵀ (on the worker thread at once with the Z side)
        gx_ = [blk.apply(x) for blk, x in zip(st.blocks, st.X)]
        return gx_, [blk.lifted(x, g) for blk, x, g in zip(st.blocks, st.X, gx_)]

    def z_side():  # Z⁻¹, G Z⁻¹, G Z⁻¹ Gᵀ
        zinv_ = [_inv_from_chol(lo) for lo in st.lz]
        gzi_ = [blk.apply(zi) for blk, zi in zip(st.blocks, zinv_)]
        return zinv_, gzi_, [blk.lifted(zi, g) for blk, zi, g in zip(st.blocks, zinv_, gzi_)]

    (gx, u), (zinv, gzi, v) = in_parallel(x_side, z_side)
    return _Linearisation(rd, rd_l, gx, u, zinv, gzi, v)


def _measures(prob: _Problem, st: _State, lin: _Linearisation) -> _Measures:
    """Objectives, complementarity gap and the relative gap and infeasibilities the stopping test uses."""
    c, lp = prob.cost, prob.lp_vars
    ax = sum(blk.adj_lifted(uu) for blk, uu in zip(st.blocks, lin.u))
    rp = c - ax
    if lp.size:
        rp[lp] -= st.x_l
    pobj = -sum(float(np.vdot(b.constant, x)) for b, x in zip(st.blocks, st.X))
    dobj = float(c @ st.y)
    gap = sum(float(np.vdot(x, z)) for x, z in zip(st.X, st.Z)) + float(st.x_l @ st.z_l)
    # truly relative (LipSDP optima of normalised nets can be ≪ 1): |c|ᵀ|y| guards against a zero optimum
    denom = max(abs(pobj) + abs(dobj), 1e-12 * (1.0 + float(np.abs(c) @ np.abs(st.y))), 1e-300)
    rel_gap = max(abs(dobj - pobj), gap) / denom
    pinf = float(np.linalg.norm(rp)) / (1 + prob.norm_cost)
    dinf = (np.sqrt(sum(float(np.vdot(r, r)) for r in lin.rd if r is not None) + float(lin.rd_l @ lin.rd_l))
            / (1 + prob.norm_constant))
    return _Measures(pobj, dobj, gap, gap / prob.barrier_order, rel_gap, pinf, dinf)


def _stopping(prob: _Problem, st: _State, ms: _Measures, it: int, max_iters: int, tol: float) -> str | None:
    """``"optimal"`` (converged in float64), ``"max-iterations"``, ``"numerical"`` (objectives not
    finite), ``"infeasible"`` (the iterates diverge), or None to go on."""
    if not st.low and ms.rel_gap <= tol and ms.pinf <= tol and ms.dinf <= tol:
        return "optimal"
    if it == max_iters:
        return "max-iterations"
    xnorm = max(float(np.linalg.norm(x)) for x in st.X)
    if not np.isfinite(ms.dobj) or not np.isfinite(ms.pobj):
        return "numerical"
    if np.linalg.norm(st.y) > 1e12 * (1 + prob.norm_cost) or xnorm > 1e14:
        return "infeasible"
    return None


def _schur_solver(prob: _Problem, st: _State, lin: _Linearisation):
    """The factored Schur complement ``M_ij = tr(A_i X A_j Z⁻¹)`` (+ LP cone, + 1 for unused
    variables) as a solve function; :class:`SolverFailedError` when it is too ill-conditioned."""
    m = _schur_complement(st.blocks, lin.u, lin.v, prob.n, prob.gram_work)
    if prob.lp_vars.size:
        m[prob.lp_vars, prob.lp_vars] += st.x_l / st.z_l
    if np.any(prob.unused):
        m[prob.unused, prob.unused] += 1.0
    return _SchurSolver(m, prob.bandwidth).solve


class _Newton:
    """The HKM search direction of one iteration, predictor and corrector, and its step lengths."""

    def __init__(self, prob: _Problem, st: _State, lin: _Linearisation, solve_m):
        self.prob, self.st, self.lin, self.solve_m = prob, st, lin, solve_m
        # the dual-residual part of W Z⁻¹ (W = σμI − X Rd − corr) and its 𝒜, shared by predictor and corrector
        self.rd_wz = [None if r is None else -matmul(matmul(x, r), zi) for x, r, zi in zip(st.X, lin.rd, lin.zinv)]
        self.rd_rhs = np.zeros(prob.n)
        for blk, wz in zip(st.blocks, self.rd_wz):
            if wz is not None:
                self.rd_rhs += blk.adj_rows(blk.lift, blk.apply(wz))
        self.inverses = {}  # inverse factors of this iteration's X and Z (batched step lengths)

    def corrector_terms(self, dy, dx, dz):
        """The second-order terms ``corr = ΔX_p ΔZ_p`` of the predictor step (per block) and
        ``𝒜(corr Z⁻¹) = Σ_e q_e (G corr)[a_e] · (G Z⁻¹)[b_e]``.

        Once the iterate is dual feasible ``ΔZ_p = Gᵀ Q(Δy_p) G`` (``Q`` symmetric,
        :meth:`_Block._mirror_entries`), so ``corrᵀ = ΔZ_p ΔX_p = Gᵀ Q (G ΔX_p)``: two products
        with the lift's panels instead of a dense d × d × d one."""
        corr = []
        for blk, rd, a, b in zip(self.st.blocks, self.lin.rd, dx, dz):
            if rd is None and 2 * blk.panel_entries < blk.dim**2:  # 4·P·d flops against 2·d³
                corr.append(transpose_copy(blk.op_times(blk.apply(a), blk.small(dy))))
            else:
                corr.append(matmul(a, b))
        corr_rhs = np.zeros(self.prob.n)
        for k, blk in enumerate(self.st.blocks):
            corr_rhs += blk.adj_rows(blk.apply(corr[k]), self.lin.gzi[k])
        return corr, corr_rhs

    def direction(self, sig_mu, corr_x, corr_rhs, corr_l):
        """Δ for target σμ with corrector terms (ΔX_p ΔZ_p, 𝒜(ΔX_p ΔZ_p Z⁻¹), Δx_p Δz_p) or None."""
        st, lin, lp = self.st, self.lin, self.prob.lp_vars
        n_l = lp.size
        rhs = self.rd_rhs - self.prob.cost  # W = σμI − X Rd − corr;  rhs += 𝒜(W Z⁻¹)
        if corr_rhs is not None:
            rhs -= corr_rhs
        if sig_mu:
            for k, blk in enumerate(st.blocks):
                rhs += sig_mu * lin.adj_zinv[k]
        if n_l:
            t = sig_mu / st.z_l - st.x_l * lin.rd_l / st.z_l
            if corr_l is not None:
                t -= corr_l / st.z_l
            rhs[lp] += t
        dy = self.solve_m(rhs)
        dz, dx, dzys = [], [], []
        for k, blk in enumerate(st.blocks):
            q = blk.small(dy)
            dzy = blk.op(dy, q)
            dzys.append(dzy)
            dzk = dzy if lin.rd[k] is None else lin.rd[k] + dzy
            # ΔX = sym((σμI − X ΔZ − corr) Z⁻¹) − X  with  ΔZ = Rd + ΔZ_y:
            #    = sym(−X Rd Z⁻¹ − (X ΔZ_y + corr) Z⁻¹) + σμZ⁻¹ − X
            # only sym(·) of the product is used and sym(Kᵀ) = sym(K): form the transpose
            # Z⁻¹ (ΔZ_y X + corrᵀ), whose factors are both C-contiguous (a split product)
            dzx = blk.op_times(lin.gx[k], q)  # ΔZ_y X = (X ΔZ_y)ᵀ
            if corr_x is not None:
                dzx += corr_x[k].T
            dxk = matmul(lin.zinv[k], dzx)
            np.negative(dxk, out=dxk)
            if self.rd_wz[k] is not None:
                dxk += self.rd_wz[k]
            dxk = 0.5 * (dxk + dxk.T) - st.X[k]
            if sig_mu:
                dxk += sig_mu * lin.zinv[k]
            dz.append(dzk)
            dx.append(dxk)
        dzl = lin.rd_l + dy[lp] if n_l else np.zeros(0)
        dxl = (sig_mu - st.x_l * st.z_l - st.x_l * dzl - (corr_l if corr_l is not None else 0.0)) / st.z_l \
            if n_l else np.zeros(0)
        return dy, dx, dz, dxl, dzl, dzys

    def steps(self, dx, dz, dxl, dzl, tol):
        """Step lengths of X (blocks 0..B-1 of one Lanczos call) and Z (blocks B..2B-1)."""
        st = self.st
        both = _steps_psd(st.lx + st.lz, dx + dz, self.inverses, st.ritz, tol)
        ap = min(both[:len(st.blocks)] + [_step_lp(st.x_l, dxl)])
        ad = min(both[len(st.blocks):] + [_step_lp(st.z_l, dzl)])
        return ap, ad

    def predictor_corrector(self, ms: _Measures):
        """Mehrotra's predictor-corrector: the affine direction and its step lengths give the centring
        σ = (gap_aff / gap)^e; the corrector direction for σμ with the second-order terms.  Returns
        ``(dy, dx, dz, dxl, dzl, dzys, σ, α_p, α_d)``."""
        st = self.st
        dy, dx, dz, dxl, dzl, _ = self.direction(0.0, None, None, None)
        # independent, so computed at once: the predictor's step lengths (Lanczos, mostly
        # Python-level work) and the corrector's second-order terms (dense products)
        (ap, ad), (corr_x, corr_rhs) = in_parallel(lambda: self.steps(dx, dz, dxl, dzl, _PREDICTOR_LANCZOS_TOL),
                                                   lambda: self.corrector_terms(dy, dx, dz))
        ap1, ad1 = min(1.0, ap), min(1.0, ad)
        gap_aff = sum(float(np.vdot(x + ap1 * a, z + ad1 * b)) for x, a, z, b in zip(st.X, dx, st.Z, dz))
        if st.x_l.size:
            gap_aff += float((st.x_l + ap1 * dxl) @ (st.z_l + ad1 * dzl))
        expon = max(1.0, 3 * min(ap1, ad1) ** 2)
        sigma = min(1.0, max(0.0, gap_aff / ms.gap)) ** expon
        corr_l = dxl * dzl if st.x_l.size else None
        dy, dx, dz, dxl, dzl, dzys = self.direction(sigma * ms.mu, corr_x, corr_rhs, corr_l)
        ap, ad = self.steps(dx, dz, dxl, dzl, _LANCZOS_TOL)
        return dy, dx, dz, dxl, dzl, dzys, sigma, ap, ad


def _take_step(st: _State, direction, sigma: float, ap: float, ad: float, verbose: bool) -> str | None:
    """Move to the new iterate with step lengths ``γα`` (backed off until X and Z factor), counting
    collapsed steps; ``"numerical"``/``"stalled"`` when it fails in float64 (in float32 it asks for
    the switch to float64 instead, ``"retry"``), else None."""
    dy, dx, dz, dxl, dzl, dzys = direction
    gamma = 0.9 + 0.09 * min(min(ap, 1.0), min(ad, 1.0))
    ap = min(1.0, gamma * ap)
    ad = min(1.0, gamma * ad)
    if verbose:
        print(f"    sigma {sigma:.2e}  step primal {ap:.3f} dual {ad:.3f}")
    (newx, st.lx, ap), (newz, st.lz, ad) = in_parallel(lambda: _factorable_step(st.X, dx, ap),
                                                       lambda: _factorable_step(st.Z, dz, ad))
    if any(lo is None for lo in st.lx) or any(lo is None for lo in st.lz):
        if st.low:  # the iterate is unchanged: go on in float64 from it
            st.to_double = True
            return "retry"
        return "numerical"
    if max(ap, ad) < 1e-8:
        st.stall += 5
    elif min(ap, ad) < 1e-3:
        st.stall += 1
    else:
        st.stall = 0
    if st.stall >= 10 and st.low:
        st.to_double, st.stall = True, 0  # collapsed steps in float32: go on in float64
    elif st.stall >= 10:
        return "stalled"
    st.X = newx
    st.y = st.y + ad * dy
    st.fy = [f + ad * g for f, g in zip(st.fy, dzys)]
    # once dual feasible, Z was F(y) and both moved by α_d ΔZ_y: newz equals fy entry by entry
    st.Z = st.fy if st.dual_feasible else newz
    if ad == 1.0 and not st.dual_feasible:
        # after a full dual step the dual residual is only rounding: Z = F(y) from now on
        st.dual_feasible = True
        st.Z = st.fy
        st.lz = None
    if st.x_l.size:
        st.x_l = st.x_l + ap * dxl
        st.z_l = st.z_l + ad * dzl
    return None


_FAILURES = {
    "max-iterations": "did not converge in {max_iters} iterations",
    "stalled": "stalled (step lengths collapsed)",
    "ill-conditioned": "the Schur complement became too ill-conditioned",
    "infeasible": "the iterates diverged: the SDP looks primal or dual infeasible",
    "numerical": "numerical trouble (lost positive definiteness)",
}


def ipm_solve(sdp: SDP, *, tol: float = 1e-9, accept_tol: float = 1e-7, max_iters: int = 80,
              verbose: bool = False, y0: np.ndarray | None = None,
              single_until: float = _SINGLE_PRECISION_UNTIL) -> IPMResult:
    """Primal-dual HKM predictor-corrector on ``sdp`` (see module docstring).

    Parameters
    ----------
    tol
        Target relative gap and relative primal/dual infeasibility.
    accept_tol
        If progress stalls, the iterate is still returned when all three
        measures are below this (otherwise :class:`SolverFailedError`).
    max_iters
        Iteration limit.
    y0
        Optional starting multipliers (need not be feasible).
    single_until
        The iterations run in float32 (the dense matrices, products and
        factorisations; multipliers, Schur complement and measures stay
        float64) until the relative gap and infeasibilities are all below this,
        or a float32 factorisation fails; then in float64 from the iterate
        reached, with ``F(y)`` recomputed.  0 runs in float64 throughout.

    Raises
    ------
    SolverFailedError
        With ``status`` one of ``"max-iterations"``, ``"stalled"``,
        ``"ill-conditioned"``, ``"infeasible"``, ``"numerical"``.

    Notes
    -----
    One iteration runs the phases in order on the iterate (:class:`_State`): precision
    switch (:func:`_switch_to_double`), residuals and lifted products (:func:`_residuals`),
    measures (:func:`_measures`), stopping test (:func:`_stopping`), Schur complement
    (:func:`_schur_solver`), search direction and step lengths (:class:`_Newton`), step
    (:func:`_take_step`).  In float32 a failed factorisation switches to float64 instead
    of ending the solve.
    """
    prob = _Problem.build(sdp)
    st = _start(prob, y0, single_until)
    history, best, status = [], None, None
    t0 = time.perf_counter()
    for it in range(max_iters + 1):
        lin = newton = None  # drop the last iteration's temporaries before this one makes its own
        if st.to_double:
            _switch_to_double(prob, st)
        lin = _residuals(prob, st)
        if lin is None:  # an iterate lost positive definiteness
            if st.low:
                st.to_double = True
                continue
            raise SolverFailedError("an iterate lost positive definiteness (numerical trouble)", "numerical")
        ms = _measures(prob, st, lin)
        history.append((it, ms.pobj, ms.dobj, ms.rel_gap, ms.pinf, ms.dinf, time.perf_counter() - t0))
        if verbose:
            print(f"{it:3d} pobj {ms.pobj:+.10e} dobj {ms.dobj:+.10e} gap {ms.rel_gap:.2e} pinf {ms.pinf:.2e} "
                  f"dinf {ms.dinf:.2e} t {time.perf_counter() - t0:.2f}s")
        if st.low:  # precision switch (this iteration's step is still taken in float32)
            st.to_double = ms.score < single_until
        if best is None or ms.score < best[0]:
            # the iterates are never written in place (each step makes new ones): keep references
            best = (ms.score, st.y.copy(), [x.astype(np.float64, copy=False) for x in st.X], it, ms)
        status = _stopping(prob, st, ms, it, max_iters, tol)
        if status is not None:
            break
        try:
            solve_m = _schur_solver(prob, st, lin)
        except SolverFailedError:
            status = "ill-conditioned"
            break
        lin.release_lifted(st.blocks)
        newton = _Newton(prob, st, lin, solve_m)
        try:
            *direction, sigma, ap, ad = newton.predictor_corrector(ms)
        except (la.LinAlgError, ValueError) as exc:
            if st.low:
                st.to_double = True
                continue
            status = "numerical"
            if verbose:
                print("numerical failure:", exc)
            break
        status = _take_step(st, direction, sigma, ap, ad, verbose)
        if status == "retry":
            status = None
            continue
        if status is not None:
            break

    score, yb, xb, itb, ms = best
    if status != "optimal":
        if score > accept_tol:
            what = _FAILURES.get(status, str(status)).format(max_iters=max_iters)
            raise SolverFailedError(f"ipm {what}; best iterate: rel. gap {ms.rel_gap:.2e}, primal inf. "
                                    f"{ms.pinf:.2e}, dual inf. {ms.dinf:.2e}", status)
        status = "optimal"
    yb[prob.implied] = np.maximum(yb[prob.implied], 0.0)  # > 0 at any interior iterate; guards against rounding
    return IPMResult(yb, xb, status, itb, ms.pobj, ms.dobj, ms.rel_gap, ms.pinf, ms.dinf, history)


# ----------------------------------------------------------------------------- registry hook
def solve_with_ipm(sdp: SDP, tol: float = 1e-7, accept_tol: float = 1e-7, max_iters: int = 80,
                   verbose: bool = False, heap_reuse: bool = False, **unknown):
    """The ``"ipm"`` back end: :func:`ipm_solve` wrapped as a :class:`~lipsdp.solver_registry.SolveResult`.

    Any other keyword option raises :class:`~lipsdp.errors.InvalidOptionError` (a misspelt
    tolerance must not be ignored silently).

    ``heap_reuse=True`` raises glibc's mmap and trim thresholds for the duration of the
    solve (:class:`lipsdp.runtime.heap_reuse`), so the iteration's large temporaries are
    served from the heap instead of fresh pages.  It is off by default because glibc has
    no call that reads the thresholds back: on exit they are set to glibc's initial
    values, and glibc's own adaptive threshold stays off for the rest of the process.
    BLAS threads are limited for the solve and restored on exit (:class:`lipsdp.runtime.blas_threads`).

    ``tol = 1e-7`` (relative gap, measured against |primal| + |dual| objective, and
    relative infeasibilities).  The bound comes from the dual iterate ``y``, which
    converges well ahead of the gap, so a tighter tolerance would cost iterations
    without moving ``cᵀy`` (bench/NOTES.md).  The answer is certified and
    repaired in float64 afterwards either way, so the tolerance only decides how close
    to the optimum the certified bound lies, never whether it is one.
    """
    from .decompose import split_decoupled_blocks
    from .solver_registry import SolveResult, unknown_options_message

    if unknown:
        raise InvalidOptionError(unknown_options_message(unknown, "solver 'ipm'",
                                                         ("tol", "accept_tol", "max_iters", "verbose",
                                                          "heap_reuse")))
    start = time.perf_counter()
    sdp = split_decoupled_blocks(sdp)  # exact: decoupled sub-blocks (MaxMin/GroupSort chains) become blocks
    threads = threads_for_size(max(b.dim for b in sdp.blocks))
    two_threads = threads == 1 and worth_a_second_thread(b.dim for b in sdp.blocks)
    with blas_threads(threads), split_products(two_threads), glibc_heap_reuse(enabled=heap_reuse):
        res = ipm_solve(sdp, tol=tol, accept_tol=accept_tol, max_iters=max_iters, verbose=verbose)
    elapsed = time.perf_counter() - start
    return SolveResult(res.y, "optimal", float(sdp.objective @ res.y), "ipm", elapsed,
                       {"iterations": res.iterations, "rel_gap": res.rel_gap, "primal_infeasibility":
                        res.primal_infeasibility, "dual_infeasibility": res.dual_infeasibility})


def _available() -> str | None:
    return None


#: most multipliers the ipm takes (its Schur complement is held densely)
MAX_VARS = 20000
#: largest LMI block the ipm takes, once split into its decoupled components
MAX_BLOCK = 8000
#: largest total LMI size the automatic choice gives this solver (see :func:`register`)
AUTOMATIC_MAX_SIZE = 4096


def _applies(sdp: SDP) -> bool:
    """At most :data:`MAX_VARS` variables and blocks of at most :data:`MAX_BLOCK` rows once split into
    their decoupled components (a deep MaxMin chain is one huge block made of small ones)."""
    if sdp.n_vars > MAX_VARS:
        return False
    if all(b.dim <= MAX_BLOCK for b in sdp.blocks):
        return True
    from .decompose import split_decoupled_blocks

    return all(b.dim <= MAX_BLOCK for b in split_decoupled_blocks(sdp).blocks)


def register() -> None:
    from .solver_registry import SolverSpec, register_solver

    # beyond AUTOMATIC_MAX_SIZE an iteration's dense d×d products take minutes: the automatic choice
    # hands one-block chains to the first-order solver there (explicit solver="ipm" still runs)
    register_solver(SolverSpec("ipm", solve_with_ipm, _available, priority=60, applies=_applies,
                               max_size=AUTOMATIC_MAX_SIZE))
