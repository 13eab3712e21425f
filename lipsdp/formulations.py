"""SDP builders: one function per formulation; they build, they never solve.

ℓ2 LipSDP on a signal graph (docs/formulations.md §1, generalised in :mod:`lipsdp.graph`)::

    F(ρ, μ) = ρ E₀ᵀE₀ − CᵀC − Σ_k G_kᵀ Q_k(μ_k) G_k ⪰ 0   ⇒   L₂ ≤ √ρ,

with ``G_k = [P_k; E_k]`` and ``Q_k`` the activation's QC (one multiplier per
neuron or per layer).  On a feed-forward chain this LMI is block tridiagonal (cliques of
two consecutive layers, docs/formulations.md §2), which :mod:`lipsdp.chordal` exploits.  Exact reductions (docs/formulations.md §4) are in
:func:`reduce_graph` and :func:`normalise_chain`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from .activations import QCBasis, SlopeRestricted
from .graph import ActivationGroup, SignalGraph
from .network import Network
from .sdp import SDP, LMIBlock, QuadTerm, add_principal, as_index, identity_basis, selector


def lipsdp_l2(graph: SignalGraph, granularity: str = "neuron") -> SDP:
    """LipSDP (ℓ2) on any signal graph: ``min ρ`` s.t. the one-block LMI above.

    Groups whose rule asks for it (``cross_terms="exact"``) and slope-restricted
    groups with fixed-slope neurons (``α_i = β_i``) are first restricted to
    their invariant subspace (:func:`restrict_to_invariants`): the LMI is then
    ``Nᵀ F(ρ, μ) N ⪰ 0`` with every increment written as ``z = N ζ``.  A
    fixed-slope neuron's QC holds with equality, so it vanishes on that
    subspace and the neuron gets no multiplier (left in, it would be a free
    multiplier whose optimum is only approached as it tends to infinity).

    Parameters
    ----------
    graph
        The network's signal graph.
    granularity
        ``"neuron"`` (LipSDP-Neuron: one multiplier per neuron or group) or
        ``"layer"`` (LipSDP-Layer: one per activation layer).
    """
    graph, bases = restricted_qc_bases(graph, granularity)
    d, n0 = graph.dim, graph.input_dim
    terms = [QuadTerm(selector(n0, d, 0), identity_basis(n0), np.array([0]), +1.0)]
    var_layer = [0]
    groups = {"rho": slice(0, 1)}
    nonneg = [True]
    n_vars = 1
    for k, (group, basis) in enumerate(zip(graph.groups, bases), start=1):
        groups[f"qc{k}"] = slice(n_vars, n_vars + basis.size)
        if basis.size == 0:  # every neuron of the group has a fixed slope: nothing to multiply
            continue
        idx = np.arange(n_vars, n_vars + basis.size)
        terms.append(QuadTerm(group.lift(d), basis.coefficients, idx, -1.0))
        nonneg.extend(basis.nonneg.tolist())
        var_layer.extend([k] * basis.size)
        n_vars += basis.size
    # F⁰ = −CᵀC is zero outside the columns C touches (never written there): the block's constant support
    support = np.flatnonzero(np.any(graph.output != 0, axis=0))
    block = LMIBlock(d, _negative_output_gram(graph.output), tuple(terms), "lipsdp", constant_support=support)
    c = np.zeros(n_vars)
    c[0] = 1.0
    return SDP(
        n_vars, c, [block], np.array(nonneg), 0, _sqrt_bound, np.array(var_layer), groups,
        {"formulation": f"lipsdp-{granularity}", "norm": 2},
    )


def _negative_output_gram(output: np.ndarray) -> np.ndarray:
    """``F⁰ = −CᵀC`` (dense, dim × dim), computed on the columns ``C`` touches only.

    Entries outside those columns are exactly zero; inside, each is the same
    product of columns of ``C`` as in the full product.  A chain's ``C`` touches
    its last layer only, so the work is ``O(n_out · n_l²)`` and only that block
    of the (otherwise untouched, lazily allocated) zero matrix is written.
    """
    d = output.shape[1]
    cols = np.flatnonzero(np.any(output != 0, axis=0))
    constant = np.zeros((d, d))
    part = output[:, cols]
    add_principal(constant, as_index(cols), -part.T @ part)
    return constant


def restricted_qc_bases(graph: SignalGraph, granularity: str) -> tuple[SignalGraph, list[QCBasis]]:
    """``graph`` restricted to its invariant subspace, and each group's QC basis there.

    Shared by the ℓ2 and ℓ∞ programs: groups that ask for it (``cross_terms="exact"``)
    and fixed-slope neurons are restricted (:func:`restrict_to_invariants`), and a
    fixed-slope neuron's multiplier is dropped (its QC vanishes on that subspace); a
    basis may then be empty.
    """
    shared = {}

    def qc_basis(group: ActivationGroup) -> QCBasis:
        """The group's QC basis; plain slope-restricted rules with equal bounds share one (bases are never
        modified): their basis is ``slope_qc_basis`` of the bounds alone (``SlopeRestricted.qc_basis``)."""
        rule = group.activation
        if type(rule).qc_basis is not SlopeRestricted.qc_basis or type(rule).slope_bounds is not SlopeRestricted.slope_bounds:
            return rule.qc_basis(group.width, granularity)
        key = tuple(bound.tobytes() for bound in rule.slope_bounds(group.width))
        if key not in shared:
            shared[key] = rule.qc_basis(group.width, granularity)
        return shared[key]

    # restrict_to_invariants re-coordinatises a group only when its rule asks for the invariant subspace or
    # it has fixed-slope neurons (_output_map); with neither anywhere it returns the graph as it is
    if graph.basis is not None or not any(
            g.activation.restrict_to_invariants or fixed_slope_neurons(g.activation, g.width) is not None
            for g in graph.groups):
        return graph, [qc_basis(group) for group in graph.groups]
    fixed = fixed_slope_masks(graph)
    graph = restrict_to_invariants(graph, fixed_slopes=True)
    bases = []
    for group, mask in zip(graph.groups, fixed):
        basis = qc_basis(group)
        bases.append(basis if mask is None else _without_neurons(basis, mask))
    return graph, bases


def _without_neurons(basis: QCBasis, drop: np.ndarray) -> QCBasis:
    """The QC basis with every entry on ``[Δv_i; Δφ_i]`` of the neurons in ``drop`` removed.

    Columns that become zero (a dropped neuron's own multiplier, or a layer
    multiplier whose neurons are all dropped) are removed too.
    """
    m = drop.size
    n2 = 2 * m
    coef = basis.coefficients.tocoo()
    gone = np.r_[drop, drop]
    keep = ~(gone[coef.row % n2] | gone[coef.row // n2])
    kept = sp.csc_matrix((coef.data[keep], (coef.row[keep], coef.col[keep])), shape=coef.shape)
    used = np.diff(kept.indptr) > 0
    return QCBasis(kept[:, used], np.asarray(basis.nonneg)[used])


def _sqrt_bound(rho: float) -> float:
    return float(np.sqrt(max(rho, 0.0)))


# ----------------------------------------------------------------------------- reductions
@dataclass(frozen=True)
class Normalisation:
    """``W_k = c_k · Ŵ_k`` (``‖Ŵ_k‖₂ = 1`` from :func:`normalise_chain`; any ``c_k > 0`` after
    :meth:`rescaled`), and slope-restricted activations ``φ_k = β_k ψ_k``;
    ``bound(net) = Π_k c_k β_k · bound(normalised net)`` (``slopes[k-1] = β_k``, 1 where not scaled)."""

    factors: np.ndarray
    slopes: np.ndarray | None = None

    @property
    def product(self) -> float:
        """``P = Π_k c_k · Π_k β_k``: the normalised network computes ``f / P``."""
        return float(np.prod(self.factors) * (1.0 if self.slopes is None else np.prod(self.slopes)))

    def lift_multipliers(self, y: np.ndarray, var_layer: np.ndarray, norm=2) -> np.ndarray:
        """Multipliers of the normalised SDP → multipliers of the original one (docs/formulations.md §4).

        With ``s_j = Π_{k≤j} c_k β_k`` (``s_0 = 1``), the increments of the two
        networks are related by ``z_j = s_j ẑ_j`` and ``Δy = P Δŷ``, and the QC of
        layer ``j`` at ``(z_j, v_j)`` is ``s_j²`` times the normalised one (a
        slope QC is homogeneous of degree two; dividing ``φ`` by ``β`` divides it
        by ``β²``).  The LMI is homogeneous of degree ``d`` in the output map
        (``d = 2`` for the ℓ2 program, whose output enters as ``CᵀC``; ``d = 1`` for
        the ℓ∞ program, whose output enters as ``Cᵀc t``), so a multiplier of
        layer ``j`` (``j = 0``: ρ and τ) is ``P^d / s_j²`` times the normalised one.

        Parameters
        ----------
        y
            Multipliers of the normalised program.
        var_layer
            Layer of each multiplier (the program's ``var_layer``).
        norm
            2 (the ℓ2 program, ``d = 2``) or ``inf`` (the ℓ∞ program, ``d = 1``).
        """
        degree = 2 if norm == 2 else 1
        slopes = np.ones(self.factors.size - 1) if self.slopes is None else self.slopes
        gains = self.factors * np.r_[slopes, 1.0]  # c_k β_k (no activation after the last layer)
        s = np.r_[1.0, np.cumprod(gains[:-1])]  # s_j, j = 0 … l−1
        rest = np.cumprod(gains[::-1])[::-1]  # P / s_j as a product, so P^d itself is never formed
        return y * (rest**degree * s ** (degree - 2))[var_layer]

    def rescaled(self, extra: np.ndarray) -> "Normalisation":
        """The normalisation followed by ``Ŵ_k = c'_k · W̃_k`` (``extra = c'``): factors multiply."""
        return Normalisation(self.factors * np.asarray(extra, float), self.slopes)


def balancing_factors(rho: float, layer_multipliers) -> np.ndarray | None:
    """Weight factors ``c`` that map a feasible point of a normalised chain's LMI to all-ones multipliers.

    Given a feasible point with ``ρ`` and the multipliers ``ρ ℓ_k`` of hidden layer
    ``k`` (the ECLipsE point: :func:`lipsdp.bound_methods.eclipse_fast_multipliers`),
    dividing ``W_k`` by ``c_k`` maps it (by :meth:`Normalisation.lift_multipliers`
    with ``P = Π c_k``, ``s_j = Π_{k≤j} c_k``: ``ρ = P² ρ̂``, ``λ_j = P² λ̂_j / s_j²``)
    to ``ρ̂ = 1`` and ``λ̂_j = 1`` when ``s_j = ℓ_j^{−1/2}`` and ``P = √ρ``:

        c_1 = s_1,  c_k = s_k / s_{k−1} (1 < k < l),  c_l = √ρ / s_{l−1}.

    The SDP is the same up to this scaling of its multipliers (docs/formulations.md §4);
    what changes is its conditioning.  Weights divided by their norms still leave a
    deep chain's optimal multipliers spread over many orders of magnitude (a layer's
    norm overstates its gain on the cone of slope-restricted increments), which makes
    interior-point methods stall or stop on a loose point; a feasible point of the
    same LMI measures the gains that matter.

    Returns ``None`` when the point gives no finite positive factors.
    """
    ells = np.asarray(layer_multipliers, float)
    if not (np.isfinite(rho) and rho > 0 and np.all(np.isfinite(ells)) and np.all(ells > 0)):
        return None
    s = ells**-0.5
    factors = np.r_[s[:1], s[1:] / s[:-1], np.sqrt(rho) / s[-1:]] if s.size else np.array([np.sqrt(rho)])
    return factors if np.all(np.isfinite(factors)) and np.all(factors > 0) else None


def normalise_chain(net: Network) -> tuple[Network, Normalisation]:
    """Divide each weight of a chain by its spectral norm (exact for the SDP, docs/formulations.md §4) and each
    slope-restricted activation by its upper slope (exact as well, shown below).

    An activation with slopes in ``[α, β]`` (scalar ``β > 0``) is ``β ψ`` with ``ψ`` in
    ``[α/β, 1]``; ``β`` moves into the next weight.  With ``Δz = β Δẑ`` the slope
    constraint ``(Δz − αΔv)(βΔv − Δz) ≥ 0`` is ``β²`` times ``(Δẑ − (α/β)Δv)(Δv − Δẑ) ≥ 0``
    and every other term of the LMI is unchanged, so the SDP is the same up to the
    scaling of its multipliers (:meth:`Normalisation.lift_multipliers`), but its data
    are of order one: a deep sigmoid chain (β = 1/4) otherwise has multipliers spread
    over ``4^{2l}``, which the solvers cannot resolve (bench/NOTES.md).

    Raises nothing for zero layers: a zero weight keeps factor 1 (the bound is 0 anyway).
    """
    factors = np.array([np.linalg.norm(w, 2) for w in net.weights])
    factors = np.where(factors > 0, factors, 1.0)
    scaled = net.scaled(1.0 / factors)
    slopes = np.array([_upper_slope(a) for a in net.activations])
    if not np.any(slopes != 1.0):
        return scaled, Normalisation(factors)
    acts = [a if b == 1.0 else _divided(a, b) for a, b in zip(net.activations, slopes)]
    return Network.from_weights(scaled.weights, scaled.biases, acts), Normalisation(factors, slopes)


def _upper_slope(activation) -> float:
    """``β`` of a slope-restricted activation with one positive upper slope, else 1 (left as is)."""
    if not isinstance(activation, SlopeRestricted) or np.ndim(activation.beta) != 0 or np.ndim(activation.alpha) != 0:
        return 1.0
    beta = float(activation.beta)
    return beta if beta > 0 else 1.0


def _divided(activation: SlopeRestricted, beta: float) -> SlopeRestricted:
    """``φ / β`` (slopes ``[α/β, 1]``)."""
    fn, der = activation.fn, activation.derivative
    return replace(activation, alpha=float(activation.alpha) / beta, beta=1.0, name=f"{activation.name}/{beta:g}",
                   fn=None if fn is None else (lambda v: fn(v) / beta),
                   derivative=None if der is None else (lambda v: der(v) / beta))


def _reads_columns_below(mat: sp.spmatrix, n: int) -> bool:
    """Whether the sparse ``mat`` has a stored entry in one of its first ``n`` columns."""
    cols = mat.indices if mat.format == "csr" else mat.tocsr().indices
    return bool(cols.size) and int(cols.min()) < n


def reduce_graph(graph: SignalGraph, rtol: float = 1e-13) -> SignalGraph:
    """Exact input/output reduction by thin SVDs (docs/formulations.md §4).

    The input increment only enters through the columns ``R = [P_k[:, :n₀]; C[:, :n₀]]``
    and through ``−ρ‖Δx₀‖²``; components of ``Δx₀`` in ``null(R)`` only help,
    so ``Δx₀ = V_r u`` with the top right singular vectors ``V_r`` of ``R``.  The
    output enters only through ``CᵀC``, which ``S_r V_rᵀ`` (SVD of ``C``) preserves.
    """
    n0 = graph.input_dim
    # a group that does not read the input adds only zero rows to R (dropped below): skip its slice
    reads = [_reads_columns_below(g.pre, n0) for g in graph.groups]
    pieces = [g.pre[:, :n0].toarray() for g, r in zip(graph.groups, reads) if r]
    pieces.append(graph.output[:, :n0])
    r_mat = np.vstack(pieces)
    _, s, vt = np.linalg.svd(r_mat[np.any(r_mat != 0, axis=1)] if np.any(r_mat) else r_mat[:1], full_matrices=False)
    rank = int(np.sum(s > rtol * (s[0] if s.size else 0.0))) if s.size and s[0] > 0 else 0
    rank = max(rank, 1)
    v = vt[:rank].T  # n0 × r
    shift = n0 - rank

    def map_cols(mat):  # dense or sparse (a group's P_k): the input columns → u, the rest unchanged
        if sp.issparse(mat):
            return sp.hstack([sp.csr_matrix(mat[:, :n0].toarray() @ v), mat[:, n0:]], format="csr")
        return np.hstack([mat[:, :n0] @ v, mat[:, n0:]])

    # with full rank, the map of a P_k that does not read the input is P_k itself (no column is removed)
    groups = tuple(
        ActivationGroup(g.pre if shift == 0 and not r else map_cols(g.pre), g.bias, g.offset - shift, g.activation,
                        g.name, None if g.post is None else map_cols(g.post))
        for g, r in zip(graph.groups, reads)
    )
    out = map_cols(graph.output)
    _, so, vot = np.linalg.svd(out, full_matrices=False)
    keep = so > rtol * (so[0] if so.size and so[0] > 0 else 1.0)
    out_red = (so[keep, None] * vot[keep]) if np.any(keep) else np.zeros((1, out.shape[1]))
    if out_red.shape[0] >= out.shape[0]:
        out_red = out
    return SignalGraph(rank, graph.dim - shift, groups, out_red, np.zeros(out_red.shape[0]), graph.implicit,
                       graph.basis)


def fixed_slope_neurons(activation, m: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fixed, slope)`` for a slope-restricted rule with fixed-slope neurons (``α_i = β_i``), else None.

    ``fixed`` is the boolean mask of those neurons and ``slope`` their exact
    slope (0 elsewhere): ``Δφ_i = slope_i · Δv_i`` for every pair of inputs.
    """
    bounds = activation.slope_bounds(m)  # None for rules that are not slope-restricted
    if bounds is None:
        return None
    alpha, beta = bounds
    fixed = alpha == beta
    if not np.any(fixed):
        return None
    return fixed, np.where(fixed, beta, 0.0)


def _restrictable(group: ActivationGroup) -> bool:
    """A group may be re-coordinatised when its outputs are plain coordinates that it does not feed itself."""
    return group.post is None and group.pre[:, group.offset:group.offset + group.width].nnz == 0


def fixed_slope_masks(graph: SignalGraph) -> list:
    """Per group: the mask of fixed-slope neurons that ``restrict_to_invariants(graph, fixed_slopes=True)``
    eliminates, or None."""
    if graph.basis is not None:
        return [None] * len(graph.groups)
    out = []
    for g in graph.groups:
        found = fixed_slope_neurons(g.activation, g.width) if _restrictable(g) else None
        out.append(None if found is None else found[0])
    return out


def _output_map(group: ActivationGroup, fixed_slopes: bool):
    """``(gain, K)`` with ``Δφ = diag(gain)·Δv + K w`` (gain None: ``Δφ = Δv + K w``), or None (no restriction)."""
    if not _restrictable(group):
        return None
    if group.activation.restrict_to_invariants:
        return None, group.activation.invariant_directions(group.width).toarray()
    found = fixed_slope_neurons(group.activation, group.width) if fixed_slopes else None
    if found is None:
        return None
    fixed, slope = found
    return slope, np.eye(group.width)[:, ~fixed]  # fixed neurons: Δφ_i = slope_i Δv_i; the others stay free


def restrict_to_invariants(graph: SignalGraph, fixed_slopes: bool = False) -> SignalGraph:
    """Pose the graph on the subspace of increments that respect the activations' linear invariants.

    A rule with ``restrict_to_invariants`` (GroupSort/MaxMin/Householder with
    ``cross_terms="exact"``) guarantees ``Δφ_k = Δv_k + K_k w_k`` for some
    ``w_k`` (``K_k = invariant_directions``, exact entries).  With
    ``fixed_slopes=True`` a slope-restricted group with fixed-slope neurons
    (``α_i = β_i = c_i``) is treated alike: ``Δφ_k = diag(c)·Δv_k + K_k w_k``
    with ``c`` zero on the free neurons and ``K_k`` selecting them.  Replacing
    the group's outputs by the new coordinates ``w_k`` gives ``z = N ζ`` with
    ``ζ = (Δx₀, …, w_k, …)``, built by forward substitution in group order:
    the outputs of group ``k`` are ``diag(c) P_k N + K_k S_k`` (``S_k`` selects ``w_k``).
    Every real increment is ``N ζ`` for some ``ζ``, so ``Nᵀ F N ⪰ 0`` proves
    the same bound as ``F ⪰ 0`` would, while the S/P/γ terms of docs/formulations.md §5 (and
    the QCs of fixed-slope neurons) vanish identically on ``range(N)`` (they
    are what the restriction replaces).
    Implicit groups (self-coupled outputs) and rules without the flag keep
    their coordinates.  The input stays the first ``n₀`` coordinates, so
    ``E₀ N = E₀`` and the ρ/τ terms are unchanged.

    Certification: :func:`lipsdp_l2` and :func:`lipsdp.linf.linf_sdp` apply this
    restriction themselves, so :func:`lipsdp.certificate.certify` checks the
    subspace LMI built from the original (unreduced, unnormalised) network.
    That is a complete proof: it shows ``(Nζ)ᵀ F (Nζ) ≥ 0`` for every ``ζ``,
    and every real increment is ``Nζ`` for some ``ζ``.

    Notes
    -----
    No SVD is involved: ``K`` has integer (GroupSort, fixed slopes) or stored
    (Householder ``v``) entries, and the rows of ``N`` are ``diag(c) P_k N + K_k S_k``.
    Those rows, the new lifts ``P_k N`` and the output ``C N`` are float64
    products of weight matrices (and slopes) (as in residual graphs, e.g. ``W₃W₂``); their rounding
    (relative ~ depth·width·u per entry) is an assumption of the certificate, outside
    the assembly error model of :mod:`lipsdp.certificate`, like every weight
    product in a graph.
    """
    if graph.basis is not None:
        return graph
    maps = [_output_map(g, fixed_slopes) for g in graph.groups]
    if all(m is None for m in maps):
        return graph
    n0 = graph.input_dim
    new_widths = [g.width if m is None else m[1].shape[1] for g, m in zip(graph.groups, maps)]
    dim = n0 + sum(new_widths)
    basis = np.zeros((graph.dim, dim))
    basis[:n0, :n0] = np.eye(n0)
    col = n0
    groups = []
    for g, mapping, q in zip(graph.groups, maps, new_widths):
        out_rows = slice(g.offset, g.offset + g.width)
        if mapping is not None:
            gain, kernel = mapping
            pre = g.pre.toarray() @ basis  # N is dense: a dense (BLAS) product, rounded as the Notes say
            basis[out_rows] = pre if gain is None else gain[:, None] * pre
            basis[out_rows, col:col + q] += kernel
        else:  # unrestricted group: its outputs get fresh coordinates (self-coupling allowed)
            basis[out_rows, col:col + q] = np.eye(q)
            pre = None
        groups.append((g, pre, col))
        col += q
    new_groups = tuple(
        ActivationGroup(g.pre.toarray() @ basis if pre is None else pre, g.bias, c, g.activation, g.name, basis[g.offset:g.offset + g.width])
        for g, pre, c in groups
    )
    return SignalGraph(n0, dim, new_groups, graph.output @ basis, graph.output_bias, graph.implicit, basis)
