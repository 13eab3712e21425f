"""LipSDP-RR: the baseline that rewrites MaxMin as a residual ReLU network (docs/formulations.md §5).

Per pair ``(a, b)`` of pre-activations, with two ReLUs on ``W̃ (a, b) = (b − a, a − b)``,

    max(a, b) = b + ReLU(a − b),      min(a, b) = b − ReLU(b − a),

i.e. ``MaxMin(v) = H v + G ReLU(W̃ v)`` (for the ``(min, max)`` order of docs/formulations.md §5:
``W̃ = [[−1, 1], [1, −1]]``, ``G = diag(−1, 1)``, ``H = [[0, 1], [0, 1]]``; the
rows of ``G``, ``H`` follow the rule's output order).  In lipsdp layers:
``Affine([I; H])``, ``Residual([Affine([W̃, 0]), ReLU, Affine([0; G])])``,
``Affine([0, I])`` (the outer affine layers merge with their neighbours), then
plain LipSDP with ReLU slope QCs.  On one MaxMin on R² this gives √2, where
the truth (and the GroupSort QC) gives 1.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .activation_registry import rule_from_spec
from . import activations as act
from .errors import NotApplicableError
from .group_activations import GroupSort
from .bound_methods import LIPSDP_OPTIONS, register_method, run_lipsdp
from .network import ActivationLayer, Affine, Implicit, Network, Residual


def maxmin_as_residual_relu(rule: GroupSort, m: int, name: str = "") -> list:
    """Layers computing ``rule`` (a GroupSort with group size 2) on width ``m`` with ReLUs."""
    idx = rule.groups(m)
    relu_w = np.zeros((m, m))
    G = np.zeros((m, m))
    H = np.zeros((m, m))
    for j, (p0, p1) in enumerate(idx):
        # inputs a = v[p0], b = v[p1]; ReLU r1 = relu(b − a) (unit 2j), r2 = relu(a − b) (unit 2j+1)
        r1, r2 = 2 * j, 2 * j + 1
        relu_w[r1, p0], relu_w[r1, p1] = -1.0, 1.0
        relu_w[r2, p0], relu_w[r2, p1] = 1.0, -1.0
        pos_max, pos_min = (p0, p1) if rule.descending else (p1, p0)
        H[pos_max, p1] = H[pos_min, p1] = 1.0
        G[pos_max, r2] = 1.0
        G[pos_min, r1] = -1.0
    eye = np.eye(m)
    zeros = np.zeros((m, m))
    return [
        Affine.create(np.vstack([eye, H]), name=f"{name}/lift"),
        Residual(
            (
                Affine.create(np.hstack([relu_w, zeros]), name=f"{name}/rr-in"),
                ActivationLayer(rule_from_spec("relu"), f"{name}/rr-relu"),
                Affine.create(np.vstack([zeros, G]), name=f"{name}/rr-out"),
            ),
            f"{name}/rr",
        ),
        Affine.create(np.hstack([zeros, eye]), name=f"{name}/select"),
    ]


def _rewrite(layers, width: int | None):
    out = []
    for layer in layers:
        if isinstance(layer, Affine):
            width = layer.out_dim
            out.append(layer)
        elif isinstance(layer, ActivationLayer):
            rule = layer.activation
            if isinstance(rule, GroupSort):
                if int(rule.group_size) != 2:
                    raise NotApplicableError(
                        f"lipsdp-rr rewrites MaxMin (GroupSort with group size 2) only, not {rule.describe()}"
                    )
                out.extend(maxmin_as_residual_relu(rule, width, layer.name))
            elif rule.slope_bounds(width) is None:
                raise NotApplicableError(f"lipsdp-rr has no residual-ReLU rewrite of {rule.describe()}")
            else:
                out.append(layer)
        elif isinstance(layer, Residual):
            branch, _ = _rewrite(layer.branch, width)
            out.append(Residual(tuple(branch), layer.name))
        elif isinstance(layer, Implicit):
            raise NotApplicableError("lipsdp-rr does not rewrite implicit layers; use lipsdp-neuron")
        else:  # pragma: no cover - Network validates the layer types
            raise NotApplicableError(f"lipsdp-rr: unknown layer {layer!r}")
    return out, width


def residual_relu_network(net: Network) -> Network:
    """``net`` with every MaxMin layer replaced by its residual-ReLU rewrite (same function)."""
    layers, _ = _rewrite(net.layers, net.input_dim)
    return Network(layers)


@register_method("lipsdp-rr", "baseline: MaxMin rewritten as residual ReLU, then LipSDP-Neuron (Pauli et al. 2024)",
                 norms=(2, np.inf), options=LIPSDP_OPTIONS, multipliers="neuron")
def _lipsdp_rr(net: Network, *, norm=2, solver=None, reduce=True, **options):
    bound = run_lipsdp(residual_relu_network(net), "neuron", "lipsdp-rr", norm=norm, solver=solver, reduce=reduce,
                       **options)
    return replace(bound, method="lipsdp-rr")  # also for split=k, whose composed label would differ
