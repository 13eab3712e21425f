"""Well-posedness of implicit (equilibrium) layers ``z = φ(W z + U x + b)`` (docs/formulations.md §7).

An equilibrium layer only defines a function when, for every input, the
equation has exactly one solution.  Sufficient conditions, checked with a small
SDP in the multiplier of the activation and re-verified in float64 (Cholesky):

* monotone slope-restricted activations (slopes in ``[α, β]`` with ``α ≥ 0``;
  Revay, Wang & Manchester 2020): write ``z = B ẑ`` with ``B = diag(β)``, so
  ``ẑ = (φ/β)(W B ẑ + u)`` has slopes in ``[0, 1]``; well posed if some
  diagonal ``Λ ≻ 0`` has ``2Λ − ΛWB − BWᵀΛ ≻ 0`` (for ReLU/tanh: the classical
  ``2Λ − ΛW − WᵀΛ ≻ 0``);
* group activations (GroupSort, MaxMin, Householder: 1-Lipschitz and
  ``ΠΔφ = ΠΔv`` per group, docs/formulations.md §5): with ``T = blkdiag(λ_j I + γ_j Π_j) ≻ 0``,
  ``‖Δφ‖_T ≤ ‖Δv‖_T``, so ``T − WᵀTW ≻ 0`` makes ``z ↦ φ(Wz + u)`` a contraction
  in the ``T``-norm (Banach: exactly one equilibrium);
* any other elementwise activation with Lipschitz constant ``ℓ``: diagonal
  ``Λ ≻ 0`` with ``Λ − ℓ² WᵀΛW ≻ 0`` (contraction in the Λ-norm); an activation
  not known to be elementwise only gets ``Λ = λI`` (``ℓ‖W‖₂ < 1``), because a
  diagonal weight need not commute with it.

Each certificate is a contraction rate too: :mod:`lipsdp.equilibrium` derives
from it the iteration that evaluates the layer, so a layer certified here
always evaluates.  If no multiplier exists the layer is rejected with
:class:`IllPosedError`.  Results are cached by the layer's content (W and the
activation data the condition uses), failures included.

This check is not a bound, so it does not go through
:func:`lipsdp.bound_methods.solve_and_certify`: its answer is a strictly feasible
multiplier (positive definite with a float64-verified margin, plus a contraction
rate the evaluation uses), which raising ρ cannot repair.  The Lipschitz bound of
a network with implicit layers does go through that pipeline (docs/formulations.md §7).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from .errors import IllPosedError
from .network import Implicit, Network, Residual

#: certificates by layer content (see :func:`_content_key`): a torch module re-read at every
#: forward pass, or a copy of a layer, reuses its certificate; failures are kept too (their reason)
_CACHE: "OrderedDict[bytes, np.ndarray | str]" = OrderedDict()
_CACHE_SIZE = 256

#: SDP solvers tried in turn, and whether their "infeasible" ends the search: the first-order SCS first
#: (cheapest on these feasibility problems); every multiplier is verified in float64 whoever found it,
#: and a first-order "infeasible" is no proof
_SOLVERS = (("SCS", False), ("CVXOPT", True), ("CLARABEL", True))

_CONDITIONS = {
    "group": "T − WᵀTW ≻ 0 with T = blkdiag(λ_j I + γ_j Π_j) ≻ 0",
    "monotone": "2Λ − ΛW − WᵀΛ ≻ 0 (slopes scaled to [0, 1]) with diagonal Λ ≻ 0",
    "contraction": "Λ − ℓ²WᵀΛW ≻ 0 with diagonal Λ ≻ 0",
    "contraction-scalar": "ℓ‖W‖₂ < 1 (the activation is not elementwise, so Λ = λI)",
}


def _implicit_layers(layers):
    for layer in layers:
        if isinstance(layer, Implicit):
            yield layer
        elif isinstance(layer, Residual):
            yield from _implicit_layers(layer.branch)


def check_network_well_posed(net: Network) -> None:
    """Run :func:`check_well_posed` on every implicit layer of ``net``."""
    for layer in _implicit_layers(net.layers):
        check_well_posed(layer)


def _pd_margin(m: np.ndarray) -> float:
    m = 0.5 * (m + m.T)
    return float(np.linalg.eigvalsh(m)[0])


def certificate_kind(layer: Implicit) -> str:
    """Which condition of the module docstring certifies ``layer``.

    Returns
    -------
    str
        ``"group"``, ``"monotone"``, ``"contraction"`` (elementwise activation,
        diagonal Λ) or ``"contraction-scalar"`` (any other activation: its ℓ2
        Lipschitz constant only bounds ``‖Δφ‖_Λ`` for ``Λ = λI``).
    """
    from .group_activations import GroupActivation

    rule = layer.activation
    if isinstance(rule, GroupActivation):
        return "group"
    bounds = rule.slope_bounds(layer.W.shape[0])
    if bounds is not None and np.all(bounds[0] >= 0):
        return "monotone"
    # a diagonal weight only commutes with elementwise maps; never assume a rule is one
    return "contraction" if getattr(rule, "elementwise", False) and bounds is not None else "contraction-scalar"


def _content_key(layer: Implicit, kind: str) -> bytes:
    """Digest of everything the certificate depends on: W, the kind and the activation's data for it."""
    n = layer.W.shape[0]
    rule = layer.activation
    digest = hashlib.blake2b(digest_size=32)
    digest.update(kind.encode())
    digest.update(np.ascontiguousarray(layer.W, float).tobytes())
    digest.update(str(layer.W.shape).encode())
    if kind == "group":
        digest.update(np.ascontiguousarray(rule.groups(n)).tobytes())
        digest.update(np.ascontiguousarray(rule.preserved(), float).tobytes())
    elif kind == "monotone":
        digest.update(np.ascontiguousarray(rule.slope_bounds(n)[1], float).tobytes())
    else:
        digest.update(np.float64(rule.lipschitz_constant(2)).tobytes())
    return digest.digest()


def check_well_posed(layer: Implicit) -> np.ndarray:
    """Certify that ``layer`` is well posed; return the multiplier matrix (Λ or T).

    Raises
    ------
    IllPosedError
        If no multiplier of the kind described in the module docstring exists
        (or none can be verified in float64).
    """
    kind = certificate_kind(layer)
    key = _content_key(layer, kind)
    if key not in _CACHE:
        cert = _solve(layer, kind)
        if cert is not None:
            cert.setflags(write=False)  # shared by every caller with the same content
        _CACHE[key] = cert if cert is not None else _CONDITIONS[kind]
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    cert = _CACHE[key]
    if isinstance(cert, str):
        norm = np.linalg.norm(layer.W, 2)
        raise IllPosedError(
            f"{layer.name or 'implicit layer'} is not well posed: no multiplier satisfies {cert} for W "
            f"(‖W‖₂ = {norm:.4g}), so the equilibrium z = φ(Wz + Ux + b) may fail to exist or be unique. "
            "Scale W down (e.g. ‖W‖₂ < 1) or use a parameterisation that guarantees well-posedness."
        )
    return cert


def _solve(layer: Implicit, kind: str) -> np.ndarray | None:
    """A multiplier whose conditions hold with a float64-verified margin, or None."""
    import cvxpy as cp

    n = layer.W.shape[0]
    expr, value = _multiplier(layer, kind, cp)
    eye = np.eye(n)
    cons = [0.5 * (m + m.T) >> eye for m in _conditions(layer, kind, expr)]
    problem = cp.Problem(cp.Minimize(0), cons)
    for solver, final in _SOLVERS:
        if solver not in cp.installed_solvers():
            continue
        try:
            problem.solve(solver=solver)
        except Exception:
            continue
        if final and problem.status in ("infeasible", "infeasible_inaccurate"):
            return None
        mult = value() if problem.status in ("optimal", "optimal_inaccurate") else None
        if mult is not None and _verified(layer, kind, mult):
            return mult
    return None


def _verified(layer: Implicit, kind: str, mult: np.ndarray) -> bool:
    """The conditions hold in float64 with a margin, and so does the contraction the layer is evaluated by."""
    from .equilibrium import contraction_rate

    if not all(_pd_margin(m) > 1e-9 * max(1.0, np.abs(m).max()) for m in _conditions(layer, kind, mult)):
        return False
    return contraction_rate(layer, mult, kind) < 1.0


def _multiplier(layer: Implicit, kind: str, cp):
    """The multiplier of ``kind`` as a cvxpy expression, and a function returning its value (None: unsolved)."""
    n = layer.W.shape[0]
    if kind == "group":
        proj = layer.activation.preserved()
        basis = [(_sel(n, rows), _sel(n, rows, proj)) for rows in layer.activation.groups(n)]
        lam, gam = cp.Variable(len(basis)), cp.Variable(len(basis))

        def combine(lv, gv):
            return sum(lv[j] * eye_j + gv[j] * proj_j for j, (eye_j, proj_j) in enumerate(basis))

        return combine(lam, gam), lambda: None if lam.value is None else combine(lam.value, gam.value)
    if kind == "contraction-scalar":
        lam = cp.Variable()
        return lam * np.eye(n), lambda: None if lam.value is None else float(lam.value) * np.eye(n)
    lam = cp.Variable(n)
    return cp.diag(lam), lambda: None if lam.value is None else np.diag(lam.value)


def _conditions(layer: Implicit, kind: str, mult) -> list:
    """The matrices that must be positive definite (for a cvxpy expression or a float64 multiplier)."""
    W = np.asarray(layer.W, float)
    if kind == "group":
        return [mult, mult - W.T @ mult @ W]
    if kind == "monotone":
        wb = W * np.asarray(layer.activation.slope_bounds(W.shape[0])[1], float)[None, :]
        return [mult, 2 * mult - mult @ wb - wb.T @ mult]
    ell = float(layer.activation.lipschitz_constant(2))
    return [mult, mult - ell**2 * W.T @ mult @ W]


def _sel(n: int, rows: np.ndarray, block: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((n, n))
    out[np.ix_(rows, rows)] = np.eye(len(rows)) if block is None else block
    return out
