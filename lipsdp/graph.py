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
QCs (MATH §1, §5, §7).  For a feed-forward chain this is exactly LipSDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import Activation
from .errors import NotApplicableError
from .network import ActivationLayer, Affine, Implicit, Network, Residual


@dataclass(frozen=True, eq=False)
class ActivationGroup:
    """One activation acting on ``Δv = pre @ z`` (plus ``bias`` for evaluation).

    Attributes
    ----------
    pre
        (m, dim) matrix mapping ``z`` to the pre-activation.
    bias
        Constant part of the pre-activation (evaluation only).
    offset
        Index in ``z`` of the group's first output.
    activation
        The activation rule.
    post
        (m, dim) matrix mapping ``z`` to the group's output increment; None (the
        default): the outputs are the coordinates ``offset …`` of ``z``.  Set by
        :func:`lipsdp.formulations.restrict_to_invariants`.
    """

    pre: np.ndarray
    bias: np.ndarray
    offset: int
    activation: Activation
    name: str = ""
    post: np.ndarray | None = None

    @property
    def width(self) -> int:
        return self.pre.shape[0]

    def outputs(self, dim: int) -> np.ndarray:
        """Selector ``E_k`` (m, dim) of the group's outputs (or the ``post`` map)."""
        if self.post is not None:
            return self.post
        e = np.zeros((self.width, dim))
        e[np.arange(self.width), self.offset + np.arange(self.width)] = 1.0
        return e

    def lift(self, dim: int) -> np.ndarray:
        """``G_k = [P_k; E_k]`` (2m, dim): maps ``z`` to ``[Δv; Δφ]``."""
        return np.vstack([self.pre, self.outputs(dim)])


@dataclass(frozen=True, eq=False)
class SignalGraph:
    """Network as ``z``-linear maps (see module docstring)."""

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
            v = z @ g.pre.T + g.bias
            z[:, g.offset : g.offset + g.width] = g.activation.forward_batch(v)
        return z @ self.output.T + self.output_bias


class _Builder:
    """Accumulates groups while walking the layers; signals are (L, c) with value L z + c."""

    def __init__(self, input_dim: int):
        self.dim = input_dim
        self.groups: list[tuple[np.ndarray, np.ndarray, int, Activation, str]] = []
        self.implicit = False

    def pad(self, mat: np.ndarray) -> np.ndarray:
        return np.hstack([mat, np.zeros((mat.shape[0], self.dim - mat.shape[1]))]) if mat.shape[1] < self.dim else mat

    def new_group(self, pre: np.ndarray, bias: np.ndarray, activation: Activation, name: str, self_block=None):
        m = pre.shape[0]
        offset = self.dim
        self.dim += m
        pre = self.pad(pre)
        if self_block is not None:
            pre[:, offset : offset + m] += self_block
        self.groups.append((pre, bias, offset, activation, name))
        out = np.zeros((m, self.dim))
        out[:, offset:] = np.eye(m)
        return out, np.zeros(m)

    def walk(self, layers, L: np.ndarray, c: np.ndarray):
        for layer in layers:
            L = self.pad(L)
            if isinstance(layer, Affine):
                L, c = layer.weight @ L, layer.weight @ c + layer.bias
            elif isinstance(layer, ActivationLayer):
                layer.activation.check_width(L.shape[0])
                L, c = self.new_group(L, c, layer.activation, layer.name)
            elif isinstance(layer, Residual):
                L_b, c_b = self.walk(layer.branch, L, c)
                L, c = self.pad(L) + L_b, c + c_b
            elif isinstance(layer, Implicit):
                self.implicit = True
                x_part = layer.U @ L
                E, _ = self.new_group(x_part, layer.U @ c + layer.b, layer.activation, layer.name, self_block=layer.W)
                L_x = self.pad(L)
                L, c = layer.C @ E + layer.D @ L_x, layer.D @ c
            else:  # pragma: no cover - Network validates layer types
                raise TypeError(f"unknown layer {layer!r}")
        return self.pad(L), c


def build_graph(network: Network) -> SignalGraph:
    """Compile a :class:`Network` into its :class:`SignalGraph`."""
    b = _Builder(network.input_dim)
    L, c = b.walk(network.layers, np.eye(network.input_dim), np.zeros(network.input_dim))
    groups = tuple(
        ActivationGroup(b.pad(pre), bias, off, a, name) for pre, bias, off, a, name in b.groups
    )
    return SignalGraph(network.input_dim, b.dim, groups, b.pad(L), c, b.implicit)
