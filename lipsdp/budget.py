"""Size guard: refuse an SDP too large for this machine before any of it is built.

Every SDP method holds dense ``d × d`` float64 matrices, where ``d`` (the LMI
size) is the input width plus the width of every activation group (for a
feed-forward chain ``n₀ + Σ hidden widths``; docs/formulations.md §1): the LMI constants of the
reduced and the original program, the signal graph's lifts and, for the
certificate, ``F``, ``|F|`` and a Cholesky factor.  (A closed form on a chain whose
LMI the banded certificate takes holds band arrays of ``(p + 1) × d`` instead,
:data:`BANDED_MATRICES` of them: linear in depth.)  The solvers add their own
work on top:

* ``ipm`` (:mod:`lipsdp.ipm`): X, Z, their factors, the step, the lifted
  ``G X Gᵀ`` / ``G Z⁻¹ Gᵀ`` and the factor Grams (the lift has about two rows
  per ReLU neuron, so those are about ``(2d)²``), plus the dense Schur
  complement over the ``m`` multipliers;
* CVXOPT (native or through cvxpy): the coefficient matrix of the LMI in
  vectorised form, ``d² × m``, which its KKT set-up holds densely;
* SCS through cvxpy: about a hundred ``d × d`` matrices' worth of sparse data;
* Clarabel through cvxpy: a dense KKT block over the ``d(d+1)/2`` entries of the
  PSD cone, about ``d⁴`` numbers;
* ``firstorder``: a few dense ``d × d`` matrices.

Contract: the constants (:data:`SOLVER_COSTS`) are upper estimates of each path's
peak resident memory (fitted to measured peaks and rounded up), so an estimate
errs on the large side; the times are rough and only reported, never used to
refuse.  The LMI is taken as one block: the decoupled blocks of a MaxMin chain
(which ``ipm`` solves one by one) are not credited.

:func:`check_size` compares the estimate with a budget — a fraction of the
memory available now (``/proc/meminfo`` and the cgroup limit, else psutil,
else the physical memory, else :data:`DEFAULT_AVAILABLE_BYTES`), or the
caller's ``max_memory_gb`` — and raises
:class:`~lipsdp.errors.ProblemTooLargeError` naming the size, the estimate and
the cheaper methods that fit.  ``naive`` needs no SDP and is never refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidOptionError, ProblemTooLargeError
from .network import ActivationLayer, Affine, Implicit, Network, Residual

GIB = 2**30
#: fraction of the available memory one estimate may use
MEMORY_FRACTION = 0.75
#: assumed available memory when the machine does not say
DEFAULT_AVAILABLE_BYTES = 8 * GIB

_FLOAT = 8  # bytes per float64
#: dense d×d matrices of any SDP path: LMI constants, graph lifts, certificate (F, |F|, Cholesky factor)
FLOOR_MATRICES = 16
#: seconds per d³ of a closed form and its certificate (a few Cholesky factorisations)
CERTIFY_SECONDS_PER_D3 = 1e-9
#: band-storage arrays ``(p + 1) × d`` of a closed form on a banded chain LMI, whose certificate never
#: forms a dense d×d matrix (:mod:`lipsdp.banded_certificate`): F, |F|, the factor, the lifts' band images
BANDED_MATRICES = 32


def _ipm_cost(d: int, m: int) -> tuple[float, float]:
    # iterates, lifts and factor Grams, dense Schur complement and its factor
    return 44.0 * d * d + 2.0 * m * m, 1e-8 * d**3


def _firstorder_cost(d: int, m: int) -> tuple[float, float]:
    return 8.0 * d * d, 1e-8 * d**3


def _cvxopt_cost(d: int, m: int) -> tuple[float, float]:
    # the vectorised coefficient matrix, d² × m, held densely by CVXOPT's KKT set-up; Schur complement
    return 1.5 * d * d * m + m * m, 2e-6 * d * d * m


def _scs_cost(d: int, m: int) -> tuple[float, float]:
    # cvxpy's canonicalisation and SCS's sparse factorisation of the vectorised cone
    return 120.0 * d * d, 4e-7 * d**3


def _clarabel_cost(d: int, m: int) -> tuple[float, float]:
    # a dense KKT block over the d(d+1)/2 entries of the PSD cone, and its factor
    return float(d) ** 4, 5e-11 * float(d) ** 6


#: extra float64 numbers and seconds of each back end on one program (d, m), on top of the floor.
#: MOSEK is not measured here and is assumed to need what CVXOPT needs.
SOLVER_COSTS = {"ipm": _ipm_cost, "firstorder": _firstorder_cost, "cvxopt": _cvxopt_cost, "mosek": _cvxopt_cost,
                "scs": _scs_cost, "clarabel": _clarabel_cost}


@dataclass(frozen=True)
class SizeEstimate:
    """What one estimate would need.

    Attributes
    ----------
    method, solver
        The method and the back end the estimate assumes (``"closed-form"`` for ECLipsE-Fast).
    lmi_size
        Size ``d`` of the largest LMI block that is built (the largest chunk with ``split``).
    n_vars
        Number of multipliers ``m`` of that program.
    memory_bytes
        Estimated peak memory.
    seconds
        Rough wall-clock time (all programs together).
    """

    method: str
    solver: str
    lmi_size: int
    n_vars: int
    memory_bytes: float
    seconds: float

    def describe(self) -> str:
        """One line: size, memory and time."""
        how = "its closed form" if self.solver == "closed-form" else f"solver {self.solver}"
        return (f"builds an LMI of size {self.lmi_size} with {self.n_vars} multipliers; with {how} that needs "
                f"an estimated {_gib(self.memory_bytes)} of memory and {_duration(self.seconds)}")


# ----------------------------------------------------------------------------- sizes
def group_widths(net: Network) -> list[int]:
    """Widths of the activation groups of ``net`` in signal-graph order (no graph is built)."""
    widths, _ = _walk(net.layers, net.input_dim)
    return widths


def _walk(layers: Sequence, width: int) -> tuple[list[int], int]:
    widths: list[int] = []
    for layer in layers:
        if isinstance(layer, Affine):
            width = layer.out_dim
        elif isinstance(layer, ActivationLayer):
            widths.append(width)
        elif isinstance(layer, Residual):
            inner, _ = _walk(layer.branch, width)
            widths.extend(inner)
        elif isinstance(layer, Implicit):
            widths.append(layer.W.shape[0])
            width = layer.out_dim
    return widths, width


def _program_size(n_in: int, widths: Sequence[int], granularity: str, norm) -> tuple[int, int]:
    """``(d, m)`` of the LipSDP program on a graph with input width ``n_in`` and groups ``widths``.

    ℓ∞ adds the scalar ``t`` to the LMI and one ``τ`` per input coordinate (docs/formulations.md §6).  Per
    neuron: one multiplier per neuron (ReLU-type rules; a group rule has as many); per layer:
    at most two per group.
    """
    d = n_in + sum(widths)
    m = 1 + (sum(widths) if granularity == "neuron" else 2 * len(widths))
    if norm != 2:
        d, m = d + 1, m + n_in
    return int(d), int(m)


# ----------------------------------------------------------------------------- cost models
def _back_end(solver: str | None, d: int, m: int, chain: bool = False) -> tuple[str, str]:
    """``(cost model key, label)`` of the back end that solves a program of size ``d`` with ``m`` multipliers.

    The automatic choice is followed as :func:`lipsdp.solver_registry.solve` makes it: licensed MOSEK,
    else ``ipm`` where it applies (up to :data:`lipsdp.ipm.AUTOMATIC_MAX_SIZE`), else ``firstorder``
    for a ``chain`` (one-block ℓ2), else CVXOPT.  A back end without a cost model (registered
    elsewhere) has key ``""``: only the pipeline's own matrices are counted.
    """
    if solver is None or solver == "auto":
        from .solver_registry import mosek_problem

        if mosek_problem() is None:
            return "mosek", "mosek (automatic)"
        from .ipm import AUTOMATIC_MAX_SIZE, MAX_BLOCK, MAX_VARS  # beyond them: firstorder (chains), CVXOPT

        if m <= MAX_VARS and d <= min(MAX_BLOCK, AUTOMATIC_MAX_SIZE):
            return "ipm", "ipm (automatic)"
        if chain:
            return "firstorder", "firstorder (automatic: too large for ipm)"
        return "cvxopt", "cvxopt (automatic: too large for ipm)"
    key = solver.split(":", 1)[1].lower() if solver.lower().startswith("cvxpy:") else solver.lower()
    return (key if key in SOLVER_COSTS else ""), solver


def _program_cost(d: int, m: int, back_end: str) -> tuple[float, float]:
    """``(bytes, seconds)`` of one program of size ``d`` with ``m`` multipliers on ``back_end``."""
    floor, seconds = FLOOR_MATRICES * d * d, CERTIFY_SECONDS_PER_D3 * d**3
    if back_end in SOLVER_COSTS:
        numbers, solve_seconds = SOLVER_COSTS[back_end](d, m)
        floor, seconds = floor + numbers, seconds + solve_seconds
    return _FLOAT * floor, seconds


def _chain_half_bandwidth(n_in: int, widths: Sequence[int]) -> int:
    """Half-bandwidth of a chain's one-block LMI in layer order: its largest consecutive pair of layers, less 1."""
    layers = [n_in, *widths]
    return max(a + b for a, b in zip(layers, layers[1:])) - 1 if len(layers) > 1 else n_in - 1


def _closed_form_cost(d: int, p: int) -> tuple[float, float]:
    """``(bytes, seconds)`` of a closed form on a chain LMI of size ``d`` and half-bandwidth ``p``: in band
    storage when the banded certificate takes it (:func:`lipsdp.banded_certificate.banded_width`'s rule),
    else like any dense program."""
    from .banded_certificate import MAX_BAND_FRACTION, MIN_BANDED_SIZE

    if d < MIN_BANDED_SIZE or p > MAX_BAND_FRACTION * d:
        return _program_cost(d, 0, "")
    return _FLOAT * BANDED_MATRICES * d * (p + 1), CERTIFY_SECONDS_PER_D3 * d * (p + 1) ** 2


def _chunks(net: Network, split: int) -> list[tuple[int, list[int], bool]]:
    """``(input width, hidden widths, has a zero weight)`` of each multi-layer chunk of ``split`` layers."""
    ws = net.weights
    out = []
    for lo in range(0, len(ws), split):
        part = ws[lo : lo + split]
        if len(part) > 1:  # a single layer is bounded by its norm (no SDP)
            out.append((part[0].shape[1], [w.shape[0] for w in part[:-1]], any(not np.any(w) for w in part)))
    return out


def estimate_cost(net: Network, method: str, norm=2, solver: str | None = None,
                  options: dict | None = None) -> SizeEstimate | None:
    """What ``estimate(net, method, norm, solver, **options)`` would need; None when no SDP is built.

    None for ``naive``, for methods this module does not model (registered elsewhere), and for
    a chain with a zero weight matrix (the pipeline answers 0 without an SDP).
    """
    options = options or {}
    from .bound_methods import has_zero_layer, method_spec

    spec = method_spec(method)
    granularity = spec.multipliers
    if granularity is None:
        return None
    split = options.get("split")
    if norm == 2 and split is not None and net.is_feedforward:
        programs = [(n_in, widths) for n_in, widths, zero in _chunks(net, int(split)) if not zero]
        repeats = 1
    elif has_zero_layer(net):  # ℓ∞ normalises every chain, so it shortcuts too
        return None
    else:
        programs = [(net.input_dim, group_widths(net))]
        # ℓ∞: one program per output row unless one functional is asked for
        single = options.get("output_row") is not None or options.get("rows") is not None
        repeats = 1 if norm == 2 or single else net.output_dim
    if not programs:
        return None
    sizes = [_program_size(n_in, widths, granularity, norm) for n_in, widths in programs]
    d, m = max(sizes)
    chain = norm == 2 and net.is_feedforward  # the first-order back end takes one-block ℓ2 chains (or chunks)
    back_end, label = _back_end(solver, d, m, chain) if spec.uses_solver else ("", "closed-form")
    if chain and not spec.uses_solver:
        costs = [_closed_form_cost(dd, _chain_half_bandwidth(n_in, widths))
                 for (dd, _), (n_in, widths) in zip(sizes, programs)]
    else:
        costs = [_program_cost(dd, mm, back_end) for dd, mm in sizes]
    memory = max(c[0] for c in costs)
    seconds = repeats * sum(c[1] for c in costs)
    return SizeEstimate(method, label, d, m, memory, seconds)


# ----------------------------------------------------------------------------- budget
def available_memory() -> float:
    """Bytes of memory available to this process now (see the module docstring for the sources)."""
    limits = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    if limits:
        return float(min(limits))
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float(DEFAULT_AVAILABLE_BYTES)


def _meminfo_available() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> float | None:
    """Limit minus usage of this process's cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = float(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and float(limit) < 2**60:  # v1 reports "no limit" as a huge number
            return max(float(limit) - usage, 0.0)
    return None


def check_max_memory(max_memory_gb) -> None:
    """Refuse a ``max_memory_gb`` that is not a positive finite number (InvalidOptionError)."""
    if max_memory_gb is None:
        return
    ok = isinstance(max_memory_gb, (int, float, np.integer, np.floating)) and not isinstance(max_memory_gb, bool)
    if not ok or not math.isfinite(float(max_memory_gb)) or float(max_memory_gb) <= 0:
        raise InvalidOptionError(
            f"max_memory_gb must be a positive number of GiB (or None for {MEMORY_FRACTION:.0%} of the memory "
            f"available), got {max_memory_gb!r}"
        )


def memory_budget(max_memory_gb: float | None = None) -> tuple[float, str]:
    """``(bytes, where it comes from)``: ``max_memory_gb`` GiB, else a fraction of the available memory."""
    check_max_memory(max_memory_gb)
    if max_memory_gb is not None:
        return float(max_memory_gb) * GIB, "max_memory_gb"
    available = available_memory()
    return MEMORY_FRACTION * available, f"{MEMORY_FRACTION:.0%} of the {_gib(available)} available"


def check_size(net: Network, method: str, norm=2, solver: str | None = None, options: dict | None = None,
               max_memory_gb: float | None = None) -> SizeEstimate | None:
    """Raise :class:`ProblemTooLargeError` if ``method`` on ``net`` needs more memory than the budget.

    Returns the estimate (None when no SDP is built).  Nothing large is allocated.
    """
    cost = estimate_cost(net, method, norm, solver, options)
    if cost is None:
        return None
    budget, source = memory_budget(max_memory_gb)
    if cost.memory_bytes <= budget:
        return cost
    cheaper = ", ".join(cheaper_methods(net, norm, budget, exclude=method))
    raise ProblemTooLargeError(
        f"{method} on this network ({_net_label(net)}) {cost.describe()}, more than the budget of "
        f"{_gib(budget)} ({source}). Cheaper methods that fit: {cheaper}. "
        f"To try anyway, raise the budget with max_memory_gb=..."
    )


def cheaper_methods(net: Network, norm, budget: float, exclude: str = "") -> list[str]:
    """Methods (with options) whose estimate fits ``budget`` bytes on ``net``; ``naive`` always."""
    out = ["naive"]
    candidates = ["eclipse-fast", "lipsdp-layer"] if norm == 2 and net.is_feedforward else ["lipsdp-layer"]
    for name in candidates:
        if name == exclude or (name == "eclipse-fast" and not _slope_restricted(net)):
            continue
        cost = estimate_cost(net, name, norm)
        if cost is None or cost.memory_bytes <= budget:
            out.append(name)
    if norm == 2 and net.is_feedforward:
        out.extend(f"{name} with split={k}" for name, k in _fitting_splits(net, budget))
    return out


def _slope_restricted(net: Network) -> bool:
    """Whether ECLipsE-Fast applies: every activation of the chain is slope-restricted."""
    return all(act.slope_bounds(w.shape[0]) is not None for w, act in zip(net.weights, net.activations))


def _fitting_splits(net: Network, budget: float) -> list[tuple[str, int]]:
    """The largest ``split=k`` (2 ≤ k < number of layers) that fits, for per-neuron and per-layer LipSDP."""
    out = []
    for name in ("lipsdp-neuron", "lipsdp-layer"):
        for k in range(len(net.weights) - 1, 1, -1):
            cost = estimate_cost(net, name, 2, options={"split": k})
            if cost is None or cost.memory_bytes <= budget:
                out.append((name, k))
                break
    return out


# ----------------------------------------------------------------------------- formatting
def _net_label(net: Network) -> str:
    widths = group_widths(net)
    shown = ", ".join(map(str, widths[:6])) + (", …" if len(widths) > 6 else "")
    return f"input width {net.input_dim}, activation widths [{shown}]"


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.3g} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"~{max(seconds, 0.01):.2g} s"
    if seconds < 7200:
        return f"~{seconds / 60:.3g} min"
    return f"~{seconds / 3600:.3g} h"
