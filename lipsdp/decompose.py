"""Exact decomposition of an LMI block into the blocks it is made of.

A block ``F(y) = F⁰ + Σ_t s_t G_tᵀ Q_t(y) G_t`` may be block diagonal after a
permutation for every ``y``: its *aggregate sparsity pattern* (the union of the
patterns of ``F⁰`` and of every ``g_a g_bᵀ`` with ``(Q_t)_{ab}`` not identically
zero) splits into connected components ``I_1, …, I_p``.  Then

    F(y) ⪰ 0   ⟺   F(y)[I_c, I_c] ⪰ 0  for every c,

because ``F(y)`` is the direct sum of those principal sub-matrices.  This is an
exact reformulation (same variables, same optimum), and a large one for the
MaxMin/GroupSort "chain" QCs (docs/formulations.md §5 without cross multipliers): there the
layers do not couple, and an ``L``-layer, width-``n`` net gives ``L`` blocks of
size ``n`` instead of one of size ``Ln`` — an interior-point iteration then
costs ``O(L n³)`` instead of ``O(L³ n³)``.

The pattern is taken from absolute values, so cancellations between terms are
never relied on: the components found are decoupled whatever ``y`` is.
"""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .banded_certificate import constant_pattern
from .sdp import SDP, LMIBlock, QuadTerm


def _component_labels(block: LMIBlock) -> tuple[np.ndarray, list[np.ndarray]]:
    """Component label of every coordinate, and of every lift row of each term (−1: unused row).

    The graph has one node per coordinate and one per lift row of each term;
    a lift row is joined to the coordinates it touches, and two rows are
    joined when some ``Q_j`` pairs them.  Coordinates are in one component iff
    they are linked through that graph (or through ``F⁰``).  Rows that no
    ``Q_j`` uses are left out (they contribute nothing to ``F``).  The edges
    come from the lifts' non-zeros and from the non-zeros of ``F⁰``
    (:func:`~lipsdp.banded_certificate.constant_pattern`, which finds the rows
    that hold any before it looks for them: a chain's ``F⁰`` fills its last layer only).

    A row whose non-zeros fill a contiguous range of columns ``lo … hi`` (a dense
    weight row, a selector row) is joined to ``lo`` only, and the range is joined as
    the path ``lo – lo+1 – … – hi`` of coordinates: the same components, with one
    edge per row instead of one per entry (every edge of the path joins two
    coordinates that the row joins anyway).  Other rows get an edge per entry.
    """
    d = block.dim
    rows, cols, used_rows, sizes = [], [], [], []
    f0_rows, f0_cols = constant_pattern(block)
    rows.append(f0_rows)
    cols.append(f0_cols)
    cover = np.zeros(d + 1, dtype=np.int64)  # difference array of the contiguous rows' column ranges
    offset = d
    for term in block.terms:
        structure = term.structure
        g = structure.lift
        r = g.shape[0]
        a, b, _ = structure.used_pairs()
        used = np.zeros(r, bool)
        used[a] = used[b] = True
        lo, hi, count = structure.row_extent
        touching = used & (count > 0)
        ranged = touching & (hi - lo + 1 == count)
        np.add.at(cover, lo[ranged], 1)
        np.add.at(cover, hi[ranged], -1)
        rows.append(offset + np.flatnonzero(ranged))  # row node — its first coordinate
        cols.append(lo[ranged])
        scattered = touching & ~ranged
        if np.any(scattered):
            g_rows = np.repeat(np.arange(r), np.diff(g.indptr))
            on = scattered[g_rows] & (g.data != 0)
            rows.append(offset + g_rows[on])  # row node — coordinate
            cols.append(g.indices[on])
        rows.append(offset + a)  # row node — row node
        cols.append(offset + b)
        used_rows.append(used)
        sizes.append(r)
        offset += r
    path = np.flatnonzero(np.cumsum(cover[:-1]) > 0)  # c with (c, c + 1) inside some row's range
    rows.append(path)
    cols.append(path + 1)
    i = np.concatenate(rows).astype(np.int64)
    j = np.concatenate(cols).astype(np.int64)
    graph = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(offset, offset)).tocsr()
    _, labels = connected_components(graph, directed=False)
    # renumber by first coordinate so components come in coordinate order
    coord = labels[:d]
    _, first = np.unique(coord, return_index=True)
    in_order = coord[np.sort(first)]  # the coordinates' labels in order of first appearance
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)  # labels of row nodes alone: −1
    remap[in_order] = np.arange(in_order.size)
    term_labels, offset = [], d
    for used, r in zip(used_rows, sizes):
        lab = remap[labels[offset:offset + r]]
        term_labels.append(np.where(used, lab, -1))
        offset += r
    return remap[coord], term_labels


def block_components(block: LMIBlock) -> list[np.ndarray]:
    """Index sets (sorted, in order of their first coordinate) of the decoupled components of ``block``."""
    coord, _ = _component_labels(block)
    return [np.flatnonzero(coord == c) for c in range(int(coord.max()) + 1)]


def _restrict_term(term: QuadTerm, lift: sp.csr_matrix, basis: sp.coo_matrix, rows: np.ndarray,
                   position: np.ndarray) -> QuadTerm | None:
    """The term's contribution to one component: its lift ``rows`` (all inside the component), with
    columns renumbered by ``position`` (coordinate → index within the component).  ``lift`` and
    ``basis`` are the term's lift (CSR) and basis (COO), converted once by the caller."""
    if rows.size == 0:
        return None
    g = lift[rows].tocoo()
    ok = g.data != 0
    new_lift = sp.csr_matrix((g.data[ok], (g.row[ok], position[g.col[ok]])),
                             shape=(rows.size, int(position.max()) + 1))
    r = term.rank
    new_row = np.full(r, -1, dtype=np.int64)
    new_row[rows] = np.arange(rows.size)
    a, b = new_row[basis.row % r], new_row[basis.row // r]
    keep = (a >= 0) & (b >= 0) & (basis.data != 0)
    if not np.any(keep):
        return None
    r_new = rows.size
    new_basis = sp.csc_matrix((basis.data[keep], (a[keep] + r_new * b[keep], basis.col[keep])),
                              shape=(r_new * r_new, basis.shape[1]))
    return QuadTerm(new_lift, new_basis, np.asarray(term.variables), term.sign)


# split_block's answers, per block object (blocks are frozen: one estimate asks for the same split
# when choosing its margin and again in the solver)
_split_cache: "weakref.WeakKeyDictionary[LMIBlock, object]" = weakref.WeakKeyDictionary()
_WHOLE = object()  # cached answer "the block does not split"


def split_block(block: LMIBlock) -> list[LMIBlock]:
    """``block`` as the list of its decoupled principal sub-blocks (itself when it does not split).

    Sub-blocks on which ``F`` is a constant PSD matrix (no variable reaches
    them, e.g. coordinates nothing couples to) are dropped: they hold for every
    ``y``.  A constant block that is not PSD is kept, so the solver reports the
    program infeasible.  Computed once per block object.
    """
    parts = _split_cache.get(block)
    if parts is None:
        parts = _split_block(block)
        # "does not split" is stored as a marker (a value holding the block would keep its key alive)
        _split_cache[block] = _WHOLE if parts == [block] else tuple(parts)
        return parts
    return [block] if parts is _WHOLE else list(parts)


def _split_block(block: LMIBlock) -> list[LMIBlock]:
    """The body of :func:`split_block`."""
    coord, term_labels = _component_labels(block)
    n_comp = int(coord.max()) + 1
    if n_comp <= 1:
        return [block]
    out = []
    constant = np.asarray(block.constant, float)
    converted = [(sp.csr_matrix(term.lift), sp.coo_matrix(term.basis)) for term in block.terms]
    for c in range(n_comp):
        index = np.flatnonzero(coord == c)
        position = np.full(block.dim, -1, dtype=np.int64)
        position[index] = np.arange(index.size)
        terms = tuple(t for t in (_restrict_term(term, lift, basis, np.flatnonzero(lab == c), position)
                                  for term, (lift, basis), lab in zip(block.terms, converted, term_labels))
                      if t is not None)
        sub = constant[np.ix_(index, index)]
        if not terms and np.linalg.eigvalsh(0.5 * (sub + sub.T))[0] >= 0:
            continue
        out.append(LMIBlock(index.size, sub, terms, f"{block.name}[{c}]"))
    return out


def split_decoupled_blocks(sdp: SDP) -> SDP:
    """The same program with every LMI block split into its decoupled components (see module docstring)."""
    parts = [split_block(block) for block in sdp.blocks]
    if all(len(p) == 1 and p[0] is block for p, block in zip(parts, sdp.blocks)):
        return sdp
    blocks = [part for p in parts for part in p]
    return SDP(sdp.n_vars, sdp.objective, blocks, sdp.nonneg, sdp.rho, sdp.bound, sdp.var_layer, sdp.groups,
               dict(sdp.meta, split_blocks=len(blocks)))


def rho_reaches_every_block(sdp: SDP) -> bool:
    """True if the variable ρ enters every decoupled block of ``sdp``.

    Certification repairs a slightly violated LMI by raising ρ; a decoupled
    block without ρ (a middle layer of a MaxMin chain) cannot be repaired that
    way, so callers solve with a small margin there instead.
    """
    return all(block_uses(block, sdp.rho) for block in split_decoupled_blocks(sdp).blocks)


def block_uses(block: LMIBlock, variable: int) -> bool:
    """True if ``variable`` has a non-zero coefficient in some term of ``block`` (structurally)."""
    for term in block.terms:
        _, _, used = term.structure.used_pairs()
        if np.any(np.asarray(term.variables)[used] == variable):
            return True
    return False
