"""The signal graph: every network as "linear maps + activation groups".

All increments of a network are linear functions of one stacked vector

    z = (Δx₀, Δφ₁, …, Δφ_K)

(input increment and the output increments of each activation group).  Group
``k`` sees the pre-activation increment ``Δv_k = P_k z`` and the output is
``Δy = C z``.  Feed-forward, residual (``x + φ(Wx)``, ``x + W₂φ(W₁x)``) and
implicit layers (``z_k = φ(W z_k + U x)``: ``P_k`` then has a block on the
group's own outputs) are all of this form, so one S-procedure covers them:

    ‖C z‖² − ρ‖Δx₀‖² + Σ_k [P_k z; E_k z]ᵀ Q_k [P_k z; E_k z] ≤ 0  ∀z
    ⇒  ‖Δy‖ ≤ √ρ ‖Δx₀‖,

where ``E_k`` selects the group's outputs from ``z`` and ``Q_k`` are valid
QCs (docs/formulations.md §1, §5, §7).  For a feed-forward chain this is exactly LipSDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .activations import Activation
from .errors import NotApplicableError
from .network import ActivationLayer, Affine, Implicit, Network, Residual
from .sdp import selector


def canonical_csr(mat) -> sp.csr_matrix:
    """``mat`` (dense or sparse) as a float CSR matrix with sorted indices and no stored zeros.

    Structural consumers (:mod:`lipsdp.decompose`, the banded certificate) read the
    support of a lift from its stored indices, so a stored zero would widen it.
    A matrix already in that form is returned as is (not copied).
    """
    if sp.isspmatrix_csr(mat) and mat.dtype == float and mat.has_canonical_format and np.all(mat.data != 0):
        return mat
    out = sp.csr_matrix(mat, dtype=float, copy=True)
    out.sum_duplicates()  # also sorts the indices
    out.eliminate_zeros()
    return out


@dataclass(frozen=True, eq=False)
class ActivationGroup:
    """One activation acting on ``Δv = pre @ z`` (plus ``bias`` for evaluation).

    Attributes
    ----------
    pre
        (m, dim) matrix mapping ``z`` to the pre-activation, stored as a CSR matrix
        (:func:`canonical_csr`; a dense matrix given is converted): a chain's
        ``P_k`` touches only the previous group's outputs, so the graph's memory
        grows linearly with depth.
    bias
        Constant part of the pre-activation (evaluation only).
    offset
        Index in ``z`` of the group's first output.
    activation
        The activation rule.
    post
        (m, dim) matrix (dense or sparse) mapping ``z`` to the group's output
        increment; None (the default): the outputs are the coordinates
        ``offset …`` of ``z``.  Set by :func:`lipsdp.formulations.restrict_to_invariants`.
    """

    pre: sp.csr_matrix
    bias: np.ndarray
    offset: int
    activation: Activation
    name: str = ""
    post: np.ndarray | sp.spmatrix | None = None

    def __post_init__(self):
        object.__setattr__(self, "pre", canonical_csr(self.pre))

    @property
    def width(self) -> int:
        return self.pre.shape[0]

    def outputs(self, dim: int) -> np.ndarray | sp.spmatrix:
        """Selector ``E_k`` (m, dim, sparse) of the group's outputs (or the ``post`` map)."""
        if self.post is not None:
            return self.post
        return selector(self.width, dim, self.offset)

    def lift(self, dim: int) -> sp.csr_matrix:
        """``G_k = [P_k; E_k]`` (2m, dim, CSR as :func:`canonical_csr`): maps ``z`` to ``[Δv; Δφ]``."""
        if self.post is None and self.pre.shape[1] == dim:
            # E_k selects the coordinates offset …: its rows hold one unit entry each, so the two
            # canonical CSR matrices stack by concatenating their arrays
            m, pre = self.width, self.pre
            stacked = sp.csr_matrix((np.r_[pre.data, np.ones(m)], np.r_[pre.indices, self.offset + np.arange(m)],
                                     np.r_[pre.indptr, pre.indptr[-1] + 1 + np.arange(m)]), shape=(2 * m, dim))
            return canonical_csr(stacked)
        return canonical_csr(sp.vstack([self.pre, sp.csr_matrix(self.outputs(dim))], format="csr"))


@dataclass(frozen=True, eq=False)
class SignalGraph:
    """Network as ``z``-linear maps (see module docstring).

    ``output`` (the map ``C``, outputs × dim) is dense: it has as many rows as the network has outputs.
    """

    input_dim: int
    dim: int
    groups: tuple
    output: np.ndarray
    output_bias: np.ndarray
    implicit: bool = False
    basis: np.ndarray | None = None  # z = basis @ ζ for a graph restricted to invariants

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the network through the graph (explicit graphs only)."""
        if self.implicit or self.basis is not None:
            raise NotApplicableError("graph.forward evaluates explicit, unrestricted graphs only; use Network")
        x = np.atleast_2d(np.asarray(x, float))
        z = np.zeros((x.shape[0], self.dim))
        z[:, : self.input_dim] = x
        for g in self.groups:
            v = np.asarray(g.pre @ z.T).T + g.bias
            z[:, g.offset : g.offset + g.width] = g.activation.forward_batch(v)
        return z @ self.output.T + self.output_bias


@dataclass(frozen=True)
class _Panel:
    """A matrix over ``z`` that is zero outside the columns ``start … start + values.shape[1] − 1``.

    The walk keeps every signal ``L z + c`` in this form, so no signal is ever
    padded to the full width of ``z`` (a chain's signals touch one group each).
    """

    values: np.ndarray
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.values.shape[1]

    @staticmethod
    def identity(m: int, start: int) -> "_Panel":
        return _Panel(np.eye(m), start)

    def times(self, weight: np.ndarray) -> "_Panel":
        """``weight @ L``."""
        return _Panel(weight @ self.values, self.start)

    def plus(self, other: "_Panel") -> "_Panel":
        """``L + other`` on the union of the two column ranges."""
        start, stop = min(self.start, other.start), max(self.stop, other.stop)
        out = np.zeros((self.values.shape[0], stop - start))
        out[:, self.start - start : self.stop - start] += self.values
        out[:, other.start - start : other.stop - start] += other.values
        return _Panel(out, start)

    def dense(self, dim: int) -> np.ndarray:
        out = np.zeros((self.values.shape[0], dim))
        out[:, self.start : self.stop] = self.values
        return out

    def csr(self, dim: int) -> sp.csr_matrix:
        m, width = self.values.shape
        if width and np.all(self.values != 0):  # a dense panel (a weight product): every entry stored, row by row
            return sp.csr_matrix((self.values.ravel().copy(), np.tile(np.arange(self.start, self.stop), m),
                                  np.arange(0, m * width + 1, width)), shape=(m, dim))
        rows, cols = np.nonzero(self.values)  # row-major: the CSR order
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=self.values.shape[0]))]
        return sp.csr_matrix((self.values[rows, cols], cols + self.start, indptr), shape=(self.values.shape[0], dim))


class _Builder:
    """Accumulates groups while walking the layers; signals are (L, c) with value L z + c (L a :class:`_Panel`)."""

    def __init__(self, input_dim: int):
        self.dim = input_dim
        self.groups: list[tuple[_Panel, np.ndarray, int, Activation, str]] = []
        self.implicit = False

    def new_group(self, pre: _Panel, bias: np.ndarray, activation: Activation, name: str, self_block=None):
        m = pre.values.shape[0]
        offset = self.dim
        self.dim += m
        if self_block is not None:
            pre = pre.plus(_Panel(np.asarray(self_block, float), offset))
        self.groups.append((pre, bias, offset, activation, name))
        return _Panel.identity(m, offset), np.zeros(m)

    def walk(self, layers, L: _Panel, c: np.ndarray):
        for layer in layers:
            if isinstance(layer, Affine):
                L, c = L.times(layer.weight), layer.weight @ c + layer.bias
            elif isinstance(layer, ActivationLayer):
                layer.activation.check_width(L.values.shape[0])
                L, c = self.new_group(L, c, layer.activation, layer.name)
            elif isinstance(layer, Residual):
                L_b, c_b = self.walk(layer.branch, L, c)
                L, c = L.plus(L_b), c + c_b
            elif isinstance(layer, Implicit):
                self.implicit = True
                E, _ = self.new_group(L.times(layer.U), layer.U @ c + layer.b, layer.activation, layer.name,
                                      self_block=layer.W)
                L, c = E.times(layer.C).plus(L.times(layer.D)), layer.D @ c
            else:  # pragma: no cover - Network validates layer types
                raise TypeError(f"unknown layer {layer!r}")
        return L, c


def build_graph(network: Network) -> SignalGraph:
    """Compile a :class:`Network` into its :class:`SignalGraph` (sparse ``P_k``, memory linear in depth)."""
    b = _Builder(network.input_dim)
    L, c = b.walk(network.layers, _Panel.identity(network.input_dim, 0), np.zeros(network.input_dim))
    groups = tuple(ActivationGroup(pre.csr(b.dim), bias, off, a, name) for pre, bias, off, a, name in b.groups)
    return SignalGraph(network.input_dim, b.dim, groups, L.dense(b.dim), c, b.implicit)
