"""Well-posedness of implicit (equilibrium) layers ``z = φ(W z + U x + b)`` (MATH §7).

An equilibrium layer only defines a function when, for every input, the
equation has exactly one solution.  Sufficient conditions, checked with a small
SDP in the multiplier of the activation and re-verified in float64 (Cholesky):

* monotone slope-restricted activations (slopes in ``[α, β]`` with ``α ≥ 0``;
  Revay, Wang & Manchester 2020): write ``z = B ẑ`` with ``B = diag(β)``, so
  ``ẑ = (φ/β)(W B ẑ + u)`` has slopes in ``[0, 1]``; well posed if some
  diagonal ``Λ ≻ 0`` has ``2Λ − ΛWB − BWᵀΛ ≻ 0`` (for ReLU/tanh: the classical
  ``2Λ − ΛW − WᵀΛ ≻ 0``);
* group activations (GroupSort, MaxMin, Householder: 1-Lipschitz and
  ``ΠΔφ = ΠΔv`` per group, MATH §5): with ``T = blkdiag(λ_j I + γ_j Π_j) ≻ 0``,
  ``‖Δφ‖_T ≤ ‖Δv‖_T``, so ``T − WᵀTW ≻ 0`` makes ``z ↦ φ(Wz + u)`` a contraction
  in the ``T``-norm (Banach: exactly one equilibrium);
* any other activation with Lipschitz constant ``ℓ``: diagonal ``Λ ≻ 0`` with
  ``Λ − ℓ² WᵀΛW ≻ 0`` (contraction in a weighted norm).

If no multiplier exists the layer is rejected with :class:`IllPosedError`.
Results are cached per layer object.
"""

from __future__ import annotations

import weakref

import numpy as np

from .errors import IllPosedError
from .network import Implicit, Network, Residual

_CACHE: "weakref.WeakKeyDictionary[Implicit, np.ndarray]" = weakref.WeakKeyDictionary()


def _implicit_layers(layers):
    for layer in layers:
        if isinstance(layer, Implicit):
            yield layer
        elif isinstance(layer, Residual):
            yield from _implicit_layers(layer.branch)


def has_implicit(net: Network) -> bool:
    """True if ``net`` contains an equilibrium layer (also inside residual branches)."""
    return any(True for _ in _implicit_layers(net.layers))


def check_network_well_posed(net: Network) -> None:
    """Run :func:`check_well_posed` on every implicit layer of ``net``."""
    for layer in _implicit_layers(net.layers):
        check_well_posed(layer)


def _pd_margin(m: np.ndarray) -> float:
    m = 0.5 * (m + m.T)
    return float(np.linalg.eigvalsh(m)[0])


def check_well_posed(layer: Implicit) -> np.ndarray:
    """Certify that ``layer`` is well posed; return the multiplier matrix (Λ or T).

    Raises
    ------
    IllPosedError
        If no multiplier of the kind described in the module docstring exists
        (or none can be verified in float64).
    """
    if layer in _CACHE:
        return _CACHE[layer]
    from .group_activations import GroupActivation

    W = np.asarray(layer.W, float)
    n = W.shape[0]
    rule = layer.activation
    bounds = rule.slope_bounds(n)
    name = layer.name or "implicit layer"
    if isinstance(rule, GroupActivation):
        kind = "group"
        condition = "T − WᵀTW ≻ 0 with T = blkdiag(λ_j I + γ_j Π_j) ≻ 0"
    elif bounds is not None and np.all(bounds[0] >= 0):
        kind = "monotone"
        condition = "2Λ − ΛW − WᵀΛ ≻ 0 (slopes scaled to [0, 1]) with diagonal Λ ≻ 0"
    else:
        kind = "contraction"
        condition = "Λ − ℓ²WᵀΛW ≻ 0 with diagonal Λ ≻ 0"
    cert = _solve(layer, kind)
    if cert is None:
        norm = np.linalg.norm(W, 2)
        raise IllPosedError(
            f"{name} is not well posed: no multiplier satisfies {condition} for W (‖W‖₂ = {norm:.4g}), so the "
            "equilibrium z = φ(Wz + Ux + b) may fail to exist or be unique. Scale W down (e.g. ‖W‖₂ < 1) or "
            "use a parameterisation that guarantees well-posedness."
        )
    _CACHE[layer] = cert
    return cert


def _solve(layer: Implicit, kind: str) -> np.ndarray | None:
    import cvxpy as cp

    W = np.asarray(layer.W, float)
    n = W.shape[0]
    rule = layer.activation
    if kind == "group":
        idx = rule.groups(n)
        proj = rule.preserved()
        lam = cp.Variable(len(idx))
        gam = cp.Variable(len(idx))
        blocks = []
        for j, rows in enumerate(idx):
            e = np.zeros((n, len(rows)))
            e[rows, np.arange(len(rows))] = 1.0
            blocks.append(lam[j] * (e @ e.T) + gam[j] * (e @ proj @ e.T))
        T = sum(blocks)
        mats = [T, T - W.T @ T @ W]

        def value():
            t = sum(lam.value[j] * _sel(n, rows) + gam.value[j] * _sel(n, rows, proj) for j, rows in enumerate(idx))
            return t, [t, t - W.T @ t @ W]
    else:
        lam = cp.Variable(n)
        L = cp.diag(lam)
        if kind == "monotone":
            beta = np.asarray(rule.slope_bounds(n)[1], float)
            wb = W * beta[None, :]
            mats = [L, 2 * L - L @ wb - wb.T @ L]
        else:
            ell = float(rule.lipschitz_constant(2))
            mats = [L, L - ell**2 * W.T @ L @ W]

        def value():
            lv = np.diag(lam.value)
            if kind == "monotone":
                return lv, [lv, 2 * lv - lv @ wb - wb.T @ lv]
            return lv, [lv, lv - ell**2 * W.T @ lv @ W]

    eye = np.eye(n)
    cons = [0.5 * (m + m.T) >> eye for m in mats]
    problem = cp.Problem(cp.Minimize(0), cons)
    for solver in ("CLARABEL", "SCS"):
        if solver not in cp.installed_solvers():
            continue
        try:
            problem.solve(solver=solver)
        except Exception:
            continue
        if problem.status in ("infeasible", "infeasible_inaccurate"):
            return None
        if problem.status in ("optimal", "optimal_inaccurate") and lam.value is not None:
            mult, checks = value()
            if all(_pd_margin(m) > 1e-9 * max(1.0, np.abs(m).max()) for m in checks):
                return mult
    return None


def _sel(n: int, rows: np.ndarray, block: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((n, n))
    out[np.ix_(rows, rows)] = np.eye(len(rows)) if block is None else block
    return out
