"""Estimation methods, registered by name: each turns a Network into a certified bound.

``naive``            product of layer norms (residual: Π (1 + ‖branch‖));
``lipsdp-layer``     LipSDP with one multiplier per activation layer;
``lipsdp-neuron``    LipSDP with one multiplier per neuron (``split=k``: chunks of k layers;
                     ``cross_terms="exact"``: GroupSort/Householder QCs on the invariant subspace);
``lipsdp-neuron-layerwise``  LipSDP-Neuron of a chain as its one block-tridiagonal (chordal) LMI (docs/formulations.md §2);
``eclipse-fast``     ECLipsE-Fast's greedy closed-form feasible point of docs/formulations.md §2.

Every SDP-based value passes :func:`lipsdp.certificate.certify` on the *original*
network (multipliers of the reduced problem are mapped back exactly; the
network is first rescaled exactly by powers of two, :func:`power_of_two_rescaling`,
so weights near float64's limits neither underflow nor overflow), so the
reported value is a certified upper bound.  A bound that is not a normal
float64 number is refused with :class:`~lipsdp.errors.NumericalRangeError`,
never rounded to 0 or inf.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg as la

from . import formulations as fm
from .banded_certificate import banded_width
from .bound import LipschitzBound
from .certificate import certify, extreme_eigenvalue, spectral_norm_bound
from .decompose import rho_reaches_every_block, split_decoupled_blocks
from .errors import CertificationError, NotApplicableError, NumericalRangeError, UnknownMethodError
from .graph import build_graph
from .network import ActivationLayer, Affine, Implicit, Network, Residual, is_operator, max_abs_entry
from .operators import max_row_abs_sum_bound
from .pooling import MaxPool
from .rounding import UNIT_ROUNDOFF
from .runtime import blas_threads, threads_for_size
from .scaled import Scaled, from_float, one_plus, shifted, times
from .sdp import SDP
from .solver_registry import solve


MARGIN_RETRY = 1e-8  # relative margin ε of the re-solve when a degenerate optimum cannot be certified


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    ``options`` maps each norm to the keyword options the method consumes itself (every other
    option goes to the solver; ``None``: not declared, passed on unchecked); ``uses_solver`` is
    False for closed forms, which then take no solver options; ``multipliers`` is the
    granularity (``"neuron"``/``"layer"``) of the LipSDP program the method builds, None when it
    builds none (the size guard, :mod:`lipsdp.budget`, estimates that program); ``structured``
    is True for a method that works on structured operators (convolutions) and max pools itself,
    the others are given the densified network, split at its max pools (:func:`run_method`).
    """

    name: str
    run: Callable[..., LipschitzBound]
    description: str
    norms: tuple = (2,)
    options: dict | None = None
    uses_solver: bool = True
    multipliers: str | None = None
    structured: bool = False


_METHODS: dict[str, MethodSpec] = {}

#: the options of the LipSDP programs, by norm (``output_row``/``rows`` pick ℓ∞ functionals)
LIPSDP_OPTIONS = {2: ("split", "cross_terms"), np.inf: ("cross_terms", "output_row", "rows")}


def register_method(name: str, description: str, norms: tuple = (2,), options: dict | None = None,
                    uses_solver: bool = True, multipliers: str | None = None, structured: bool = False):
    """Decorator registering ``fn(net, *, norm, solver, reduce, **options) -> LipschitzBound``.

    ``options``: per norm, the option names ``fn`` takes itself (see :class:`MethodSpec`).
    """

    def wrap(fn):
        _METHODS[name] = MethodSpec(name, fn, description, norms, options, uses_solver, multipliers, structured)
        return fn

    return wrap


def run_method(spec: MethodSpec, net: Network, *, norm=2, solver=None, reduce=True, **options) -> LipschitzBound:
    """The one entry from a network to a method's certified bound.

    A method that is not ``structured`` sees dense matrices only: a network with max pools is
    bounded piece by piece between them and the pieces' bounds are multiplied by each pool's
    constant (:func:`split_at_pooling`), and convolutions are written out as matrices
    (:meth:`Network.densified`, ProblemTooLargeError when one would not fit).
    """
    if not spec.structured:
        if net.has_max_pool:
            return split_at_pooling(spec, net, norm=norm, solver=solver, reduce=reduce, **options)
        net = net.densified()
    return spec.run(net, norm=norm, solver=solver, reduce=reduce, **options)


def methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def method_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise UnknownMethodError(name, _METHODS)
    return _METHODS[name]


# ------------------------------------------------------------------------------- naive
def _layer_norm(w, norm) -> Scaled:
    """Certified upper bound of ``‖W‖₂`` (:func:`lipsdp.certificate.spectral_norm_bound`) or of the induced ∞-norm.

    A structured operator (a convolution) certifies its own norms without a matrix
    (:meth:`lipsdp.operators.LinearOperator.norm_bound`, docs/cnn.md).
    """
    if is_operator(w):
        return w.norm_bound() if norm == 2 else w.inf_norm_bound()
    return spectral_norm_bound(w) if norm == 2 else max_row_abs_sum_bound(w)


def naive_product(layers, norm=2) -> Scaled:
    """Product of layer norms as ``(mantissa, exponent)``; a residual block costs ``1 + bound(branch)``."""
    total: Scaled = (0.5, 1)
    for layer in layers:
        if isinstance(layer, Affine):
            total = times(total, _layer_norm(layer.weight, norm))
        elif isinstance(layer, ActivationLayer):
            total = times(total, from_float(layer.activation.lipschitz_constant(norm)))
        elif isinstance(layer, Residual):
            total = times(total, one_plus(naive_product(layer.branch, norm)))
        elif isinstance(layer, MaxPool):
            total = times(total, from_float(layer.lipschitz_constant(norm)))
        elif isinstance(layer, Implicit):
            raise NotApplicableError("the naive bound does not apply to implicit layers; use lipsdp-neuron")
    return total


def naive_bound(layers, norm=2) -> float:
    """Product of certified layer norms (rounded up); a residual block costs ``1 + bound(branch)``.

    Raises
    ------
    NumericalRangeError
        If the product is outside float64's normal range (it would round to 0 or inf).
    """
    return as_float(naive_product(layers, norm), "the naive bound (product of the layer norms)", layers)


def as_float(value: Scaled, what: str, layers=()) -> float:
    """``m · 2^e`` as a float, or :class:`NumericalRangeError` when it would under- or overflow."""
    mantissa, e = value
    if mantissa == 0:
        return 0.0
    result = float(np.ldexp(mantissa, e)) if -1100 < e < 1100 else (0.0 if e < 0 else np.inf)
    if np.isfinite(result) and result >= np.finfo(float).tiny:
        return result
    decimal = (np.log2(mantissa) + e) * np.log10(2.0)
    side = "below the smallest normal" if e < 0 else "above the largest"
    raise NumericalRangeError(
        f"{what} is about 1e{decimal:.1f}, {side} float64 number, so it cannot be returned as a float. "
        f"The weights are out of scale{_weight_scales(layers)}: multiply a layer's weights by a power of two "
        f"2^s (exact), estimate again, and read this network's bound as 2^-s times the result."
    )


def _weight_scales(layers) -> str:
    """`` (largest |entry| per affine layer: …)`` for messages, or empty."""
    scales = [f"{layer.name or f'affine {k}'}: {max_abs_entry(layer.weight):.3g}"
              for k, layer in enumerate(layers) if isinstance(layer, Affine) and layer.out_dim * layer.in_dim]
    return f" (largest |entry| per affine layer: {', '.join(scales)})" if scales else ""


@register_method("naive", "product of spectral norms (ℓ∞: of induced ∞-norms); convolutions by FFT",
                 norms=(2, np.inf), options={2: (), np.inf: ()}, uses_solver=False, structured=True)
def _naive(net: Network, *, norm=2, solver=None, reduce=True, **options) -> LipschitzBound:
    start = time.perf_counter()
    value = naive_bound(net.layers, norm)  # every factor certified, every product rounded up
    return LipschitzBound(value=value, raw_value=value, method="naive", solver="none", status="closed-form",
                          solve_time=time.perf_counter() - start, norm=norm)


# ------------------------------------------------------------------------------- SDP pipeline
def _zero_bound(method: str, start: float, norm) -> LipschitzBound:
    return LipschitzBound(value=0.0, raw_value=0.0, method=method, solver="none", status="closed-form",
                          solve_time=time.perf_counter() - start, certificate_margin=0.0, norm=norm)


def has_zero_layer(net: Network) -> bool:
    """True for a feed-forward chain with an all-zero weight matrix (its constant is 0, no SDP needed)."""
    return net.is_feedforward and any(not np.any(w) for w in net.weights)


def solve_and_certify(net: Network, method: str, build_reduced, build_original, *, solver=None, reduce=True,
                      closed_form=None, transfer=None, norm=2, **options) -> LipschitzBound:
    """Shared pipeline: rescale → reduce → build → solve (or closed form) → map back → certify.

    A feed-forward chain is first rescaled exactly by powers of two
    (:func:`power_of_two_rescaling`), so weights near float64's under- or
    overflow range are certified as well; the certified bound is scaled back
    exactly (or refused with :class:`NumericalRangeError` when it is not a
    normal float64 number).

    Parameters
    ----------
    build_reduced
        ``(network, reduce) -> SDP`` on the normalised network.
    build_original
        ``network -> SDP`` on the network as given (used for the certificate).
    closed_form
        Optional ``(normalised network, reduced SDP, slack) -> y``: multipliers
        without a solver, strictly feasible by a relative margin of about
        ``slack`` (tried with :func:`closed_form_slacks` until one certifies).
    transfer
        Optional ``(y, reduced SDP, original SDP) -> y'`` when the certificate is
        checked on a different (equivalent) formulation than the one solved.
    norm
        2 for the ℓ2 programs (bound ``√ρ``), ``inf`` for an ℓ∞ row program of
        :mod:`lipsdp.linf` (bound ``ρ``); it decides how the multipliers of the
        normalised chain are lifted back (:meth:`~lipsdp.formulations.Normalisation.lift_multipliers`).
    """
    start = time.perf_counter()
    if has_zero_layer(net):
        return _zero_bound(method, start, norm)
    # small LMIs run BLAS single-threaded (restored on exit: the pool's previous limits come back)
    with blas_threads(threads_for_size(_size_hint(net))):
        return _solve_and_certify(net, method, build_reduced, build_original, start, solver=solver, reduce=reduce,
                                  closed_form=closed_form, transfer=transfer, norm=norm, **options)


def _size_hint(net: Network) -> int:
    """An upper estimate of the LMI size: the input width plus every layer's output width."""
    return int(net.input_dim + sum(getattr(layer, "out_dim", 0) for layer in net.layers))


def power_of_two_rescaling(net: Network) -> tuple[Network, int]:
    """An exactly rescaled copy of ``net`` and ``E`` with ``bound(net) = 2^E · bound(copy)``.

    Affine layers are multiplied by powers of two so that their largest entry
    is in ``[1/2, 1)``: every layer of a feed-forward chain, the first and the
    last layer (when affine) of any other network.  The last rescaled layer is
    also multiplied by ``2^{−s}``, ``s`` the rounded ``log₂`` of a cheap estimate of
    the copy's gain (:func:`_log2_gain`), so that the copy's bound is of order one.

    Why this is exact: multiplying by a power of two is exact in float64
    (checked: a layer whose entries would leave the range is refused), and the
    LipSDP value is homogeneous in each weight of a chain (docs/formulations.md §4,
    :func:`lipsdp.formulations.normalise_chain`) and in the first and last
    layer of any network (a change of the input or output variable): the
    copy's LMI is congruent to the original's by a diagonal of powers of two,
    so its certificate proves the original's bound ``2^E`` times its value.
    Biases do not enter the SDP and are kept.

    Raises
    ------
    NumericalRangeError
        If a layer's entries span more than float64's exponent range, so no
        power of two brings all of them into it.
    """
    layers = list(net.layers)
    affine = [i for i, layer in enumerate(layers) if isinstance(layer, Affine)]
    chosen = affine if net.is_feedforward else sorted({i for i in (0, len(layers) - 1) if i in affine})
    if not chosen:
        return net, 0
    exponents = {i: -int(np.frexp(np.max(np.abs(layers[i].weight)))[1]) for i in chosen}
    scaled = {i: np.ldexp(layers[i].weight, e) for i, e in exponents.items()}
    gain = _log2_gain([Affine(scaled[i], layer.bias, layer.name) if i in scaled else layer
                       for i, layer in enumerate(layers)])
    if np.isfinite(gain):
        exponents[chosen[-1]] -= int(np.round(gain))
        scaled[chosen[-1]] = np.ldexp(layers[chosen[-1]].weight, exponents[chosen[-1]])
    for i, e in exponents.items():
        _check_exact(layers[i], scaled[i], e, i)
        layers[i] = Affine.create(scaled[i], layers[i].bias, layers[i].name)
    if not any(exponents.values()):
        return net, 0
    return Network(layers), -int(sum(exponents.values()))


def _check_exact(layer: Affine, scaled: np.ndarray, exponent: int, index: int) -> None:
    """Refuse a power-of-two rescaling that lost entries to under- or overflow."""
    if np.array_equal(np.ldexp(scaled, -exponent), layer.weight):
        return
    nonzero = np.abs(layer.weight[layer.weight != 0])
    raise NumericalRangeError(
        f"{layer.name or f'layer {index}'}: its weights span more than float64's exponent range (largest "
        f"|entry| {nonzero.max():.3g}, smallest non-zero {nonzero.min():.3g}), so they cannot be rescaled exactly "
        f"for the certificate; entries that small relative to the largest do not change the bound at float64 "
        f"precision: set them to zero and estimate again"
    )


def _log2_gain(layers) -> float:
    """A cheap estimate of ``log₂`` of the network's gain (only its order of magnitude matters).

    ``‖W‖_F/√rank ≤ ‖W‖₂`` per affine layer, the Lipschitz constant per
    activation, ``1 + gain`` per residual block; implicit layers count as 1.
    """
    total = 0.0
    with np.errstate(divide="ignore"):  # a zero layer (or zero slope) gives −inf: no useful estimate, as the caller expects
        for layer in layers:
            if isinstance(layer, Affine):
                total += np.log2(np.linalg.norm(layer.weight) / np.sqrt(max(min(layer.weight.shape), 1)))
            elif isinstance(layer, ActivationLayer):
                total += np.log2(layer.activation.lipschitz_constant(2))
            elif isinstance(layer, Residual):
                total += np.logaddexp2(0.0, _log2_gain(layer.branch))
    return float(total)


#: largest relative slack of a closed-form point (see :func:`closed_form_slacks`)
MAX_CLOSED_FORM_SLACK = 1e-4


def closed_form_slacks(sdp: SDP) -> list[float]:
    """Relative slacks tried in turn for a closed-form point on the LMI of ``sdp``.

    The certificate (:func:`lipsdp.certificate.certify`, block by decoupled block)
    shifts the unit-diagonal matrix by about ``γ_m · N`` (Rump's trace term, ``N``
    the block's order), with ``m = N + 1`` for a dense Cholesky and ``m = p + 2``
    for the banded one of half-bandwidth ``p`` (:func:`lipsdp.banded_certificate.banded_width`
    decides which a block gets).  A point built with relative slack ``s`` has a
    margin of about ``s/2`` there, so the first slack is ``16 N m u`` (the largest
    over the blocks, at least 1e-10); each retry is 100 times larger, up to
    :data:`MAX_CLOSED_FORM_SLACK`.
    """
    work = 0
    for block in split_decoupled_blocks(sdp).blocks:
        bandwidth = banded_width(block)
        inner = block.dim + 1 if bandwidth is None else bandwidth + 2
        work = max(work, block.dim * inner)
    slack = max(1e-10, 16 * work * UNIT_ROUNDOFF)
    out = []
    while slack < MAX_CLOSED_FORM_SLACK:
        out.append(slack)
        slack *= 100
    return out + [MAX_CLOSED_FORM_SLACK]


def _solve_and_certify(net: Network, method: str, build_reduced, build_original, start: float, *, solver, reduce,
                       closed_form, transfer, norm, **options) -> LipschitzBound:
    """The body of :func:`solve_and_certify` (inside its thread and heap settings)."""
    original = net
    net, exponent = power_of_two_rescaling(net)
    normalisation = None
    work = net
    if reduce and net.is_feedforward:
        work, normalisation = fm.normalise_chain(net)
        if closed_form is None and norm == 2:
            work, normalisation = _balanced_chain(work, normalisation)
    sdp_red = build_reduced(work, reduce)
    sdp_orig = build_original(net)

    def to_original(y, program):
        """Multipliers of ``program`` (on ``work``) → those of ``sdp_orig``, and the bound they claim."""
        raw = program.bound(float(y[program.rho]))
        if normalisation is not None:
            y = normalisation.lift_multipliers(y, program.var_layer, norm)
            raw *= normalisation.product  # ℓ2: √ρ scales by P; ℓ∞: ρ itself scales by P
        if transfer is not None:
            y = transfer(y, program, sdp_orig)
        return y, raw

    def attempt(program, slack: float = 0.0):
        if closed_form is not None:
            y = closed_form(work, program, slack)
            solver_name, status, solver_time = "closed-form", "closed-form", 0.0
        else:
            result = solve(program, solver, **options)
            y, solver_name, status, solver_time = result.y, result.solver, result.status, result.solve_time
        return (*to_original(y, program), solver_name, status, solver_time)

    def interior_point():
        """ECLipsE's point built with a slack (strictly feasible) on the original program, or None."""
        if normalisation is None or norm != 2 or transfer is not None:
            return None
        try:
            y = eclipse_point(work, sdp_red, INTERIOR_SLACK)
        except (NotApplicableError, KeyError, la.LinAlgError):
            return None
        return to_original(y, sdp_red)[0]

    if closed_form is not None:
        cert, raw, solver_name, status, solver_time, extra = _certify_closed_form(attempt, sdp_red, sdp_orig)
    else:
        cert, raw, solver_name, status, solver_time, extra = _certify_solution(attempt, sdp_red, sdp_orig,
                                                                               interior_point)
    value = as_float(shifted(cert.value, exponent), f"the certified {method} bound", original.layers)
    return LipschitzBound(
        value=value, raw_value=float(np.ldexp(raw, exponent)), method=method, solver=solver_name, status=status,
        solve_time=time.perf_counter() - start, certificate_margin=cert.margin, norm=norm,
        details={"inflation": cert.inflation, "lmi_size": sdp_red.size, "n_vars": sdp_red.n_vars,
                 "solver_time": solver_time, "power_of_two_exponent": exponent, **extra},
    )


#: ECLipsE's multipliers (ρ included) must span more than this factor in the norm-normalised chain before
#: the chain is balanced: below it (shallow chains) the norms already scale the program well
BALANCE_MIN_SPREAD = 100.0


def _balanced_chain(work: Network, normalisation: fm.Normalisation) -> tuple[Network, fm.Normalisation]:
    """``work`` rescaled by :func:`lipsdp.formulations.balancing_factors` at ECLipsE's point (exact).

    Left as it is when that point does not exist (activations without slope bounds,
    a step without a positive definite Schur complement) or when its multipliers
    span less than :data:`BALANCE_MIN_SPREAD`.
    """
    try:
        rho, ells = eclipse_fast_multipliers(work)
    except (NotApplicableError, la.LinAlgError):
        return work, normalisation
    multipliers = rho * np.r_[1.0, ells]
    if not multipliers.max() > BALANCE_MIN_SPREAD * multipliers.min():
        return work, normalisation
    factors = fm.balancing_factors(rho, ells)
    if factors is None:
        return work, normalisation
    return work.scaled(1.0 / factors), normalisation.rescaled(factors)


def eclipse_point(work: Network, sdp: SDP, slack: float) -> np.ndarray:
    """ECLipsE-Fast's point (:func:`eclipse_fast_multipliers`) as multipliers ``y`` of ``sdp`` (built on ``work``).

    With ``slack > 0`` the point is strictly feasible for the one-block LMI of a chain.
    """
    rho, ells = eclipse_fast_multipliers(work, slack)
    y = np.zeros(sdp.n_vars)
    y[sdp.rho] = rho
    for k, ell in enumerate(ells, start=1):
        y[sdp.groups[f"qc{k}"]] = rho * ell
    return y


#: relative slack of the strictly feasible point that repairs an uncertifiable optimum (:func:`_certify_solution`)
INTERIOR_SLACK = 1e-3
#: largest relative increase of ρ by the plain repair before the blend with an interior point is tried
TIGHT_INFLATION = 1e-7
#: relative increases of ρ allowed to the blend, tried in turn (each a weight ``t``, :func:`_blend_with_interior`)
INTERIOR_COSTS = (1e-10, 1e-9, 1e-8, 1e-7)


def _blend_with_interior(sdp_orig: SDP, y: np.ndarray, interior: np.ndarray | None):
    """The certificate of the first ``(1 − t) y + t · interior`` that certifies, with ``t``; else ``(None, 0)``.

    ``F`` is affine in the multipliers, so ``F((1 − t) y + t y₁) = (1 − t) F(y) + t F(y₁)``: a
    strictly feasible ``y₁`` lifts a slightly indefinite ``F(y)`` in every direction at
    once, including those that raising ρ alone barely reaches (deep chains, whose ρ
    enters only the first layer's block).  ``t`` is chosen so that ρ grows by at most
    each of :data:`INTERIOR_COSTS` in turn (relative); a blend that would cost more is
    not tried (the caller re-solves instead).  The result goes through the same certificate.
    """
    if interior is None:
        return None, 0.0
    rho, rho_interior = float(y[sdp_orig.rho]), float(interior[sdp_orig.rho])
    if not (rho > 0 and np.isfinite(rho_interior)):
        return None, 0.0
    excess = max(rho_interior / rho - 1.0, 1.0)
    for cost in INTERIOR_COSTS:
        t = cost / excess
        try:
            return certify(sdp_orig, (1.0 - t) * y + t * interior, max_inflation=1e-9), t
        except CertificationError:
            continue
    return None, 0.0


def _certify_solution(attempt, sdp_red, sdp_orig, interior_point=lambda: None):
    """Solve, map back and certify (:func:`_repaired`); when no repair certifies the optimum, re-solve
    with ``F ⪰ εI`` and certify that."""
    margin = MARGIN_RETRY * max(1.0, float(np.max(np.abs(sdp_red.blocks[0].constant))))
    if not rho_reaches_every_block(sdp_red):
        # A decoupled block that ρ does not reach (MaxMin/GroupSort chains) cannot be repaired by
        # raising ρ, and a singular optimum leaves it slightly indefinite: solve with F ⪰ εI at once.
        y, raw, solver_name, status, solver_time = attempt(sdp_red.with_margin(margin))
        return certify(sdp_orig, y), raw, solver_name, status, solver_time, {"margin_retry": margin}
    y, raw, solver_name, status, solver_time = attempt(sdp_red)
    cert, extra = _repaired(sdp_orig, y, interior_point)
    if cert is not None:
        return cert, raw, solver_name, status, solver_time, {"margin_retry": 0.0, **extra}
    # The optimum is often degenerate (F singular in directions ρ cannot reach) and the solver's
    # rounding leaves it slightly indefinite there: re-solve with F ⪰ εI, whose answer is strictly
    # feasible, then certify that (the value moves by O(ε) of the normalised problem).
    y, raw, solver_name, status, solver_time2 = attempt(sdp_red.with_margin(margin))
    return (certify(sdp_orig, y), raw, solver_name, status, solver_time + solver_time2,
            {"margin_retry": margin})


def _repaired(sdp_orig: SDP, y: np.ndarray, interior_point) -> tuple:
    """``(certificate, details)`` of ``y`` by the cheapest repair that works, or ``(None, {})``.

    In order of what they cost the bound: raising ρ by at most :data:`TIGHT_INFLATION`;
    blending with a strictly feasible point (:func:`_blend_with_interior`, at most
    ``INTERIOR_COSTS[-1]``; ``interior_point()`` is only called here); raising ρ by at
    most ``1e-3``.
    """
    try:
        return certify(sdp_orig, y, max_inflation=TIGHT_INFLATION), {}
    except CertificationError:
        pass
    cert, weight = _blend_with_interior(sdp_orig, y, interior_point())
    if cert is not None:
        return cert, {"interior_weight": weight}
    try:
        return certify(sdp_orig, y), {}
    except CertificationError:
        return None, {}


def _certify_closed_form(attempt, sdp_red, sdp_orig):
    """Certify a closed-form point, built with the relative slacks of :func:`closed_form_slacks` in turn.

    A closed form on the boundary of the feasible set (ECLipsE-Fast's Schur
    complements are exactly singular) is PSD only up to rounding, and its null
    direction may be one that raising ρ barely reaches (deep nets), so it is
    built strictly feasible by a small relative margin; the smallest margin
    whose point certifies is used (the bound grows by about depth × slack).
    """
    failure = None
    for slack in closed_form_slacks(sdp_orig):
        y, raw, solver_name, status, solver_time = attempt(sdp_red, slack)
        try:
            return certify(sdp_orig, y), raw, solver_name, status, solver_time, {"closed_form_slack": slack}
        except CertificationError as exc:
            failure = exc
    raise CertificationError(
        f"the closed-form point could not be certified in float64 even when built with a relative slack of "
        f"{MAX_CLOSED_FORM_SLACK:g} ({failure}); the network's LMI is too ill-conditioned for a closed form: "
        f"use lipsdp-neuron"
    )


def _graph_builder(granularity: str):
    def build(network: Network, reduce: bool = False):
        graph = build_graph(network)
        if reduce:
            graph = fm.reduce_graph(graph)
        return fm.lipsdp_l2(graph, granularity)

    return build


def run_lipsdp(net: Network, granularity: str, method: str, *, norm=2, solver=None, reduce=True, split=None,
               cross_terms=None, **options) -> LipschitzBound:
    """LipSDP on any network, through :func:`solve_and_certify` (the ℓ∞ rows and ``split=k`` included).

    Parameters
    ----------
    net
        The network (dense; feed-forward, residual or implicit).
    granularity
        ``"neuron"`` or ``"layer"`` multipliers.
    method
        The name recorded in the result.
    norm
        2, or ``inf`` for the row programs of :func:`lipsdp.linf.lipsdp_linf`.
    split
        Bound chunks of ``split`` weight layers and multiply (ℓ2 only).
    cross_terms
        E.g. ``"exact"``: overrides the GroupSort/Householder rules' choice.
    **options
        The ℓ∞ row options, then the solver's.

    Raises
    ------
    IllPosedError
        For an implicit layer without a well-posedness certificate.
    """
    from .wellposed import check_network_well_posed

    if cross_terms is not None:
        from .group_activations import with_cross_terms

        net = with_cross_terms(net, cross_terms)
    check_network_well_posed(net)  # IllPosedError for an implicit layer without a well-posedness certificate
    if norm != 2:
        from .linf import lipsdp_linf

        return lipsdp_linf(net, granularity, method, solver=solver, reduce=reduce, **options)
    if split is not None:
        return _split(net, granularity, method, int(split), solver=solver, reduce=reduce, **options)
    build = _graph_builder(granularity)
    return solve_and_certify(net, method, build, build, solver=solver, reduce=reduce, **options)


@register_method("lipsdp-neuron", "LipSDP with one multiplier per neuron (Fazlyab et al. 2019); split=k for chunks",
                 norms=(2, np.inf), options=LIPSDP_OPTIONS, multipliers="neuron")
def _lipsdp_neuron(net: Network, *, norm=2, solver=None, reduce=True, **options):
    return run_lipsdp(net, "neuron", "lipsdp-neuron", norm=norm, solver=solver, reduce=reduce, **options)


@register_method("lipsdp-layer", "LipSDP with one multiplier per activation layer", norms=(2, np.inf),
                 options=LIPSDP_OPTIONS, multipliers="layer")
def _lipsdp_layer(net: Network, *, norm=2, solver=None, reduce=True, **options):
    return run_lipsdp(net, "layer", "lipsdp-layer", norm=norm, solver=solver, reduce=reduce, **options)


def _split(net: Network, granularity: str, method: str, k: int, *, solver=None, reduce=True, **options):
    """Bound chunks of ``k`` weight layers separately and multiply (docs/formulations.md §1, "Split")."""
    if k < 1:
        raise NotApplicableError(f"split must be a positive number of layers, got {k}")
    ws, bs, acts = net.weights, net.biases, net.activations
    parts, joints = [], []
    for lo in range(0, len(ws), k):
        hi = min(lo + k, len(ws))
        chunk = Network.from_weights(ws[lo:hi], bs[lo:hi], list(acts[lo : hi - 1]))
        if hi - lo == 1:
            parts.append(lambda chunk=chunk: _naive(chunk))
        else:
            parts.append(lambda chunk=chunk: run_lipsdp(chunk, granularity, method, solver=solver, reduce=reduce,
                                                        **options))
        if hi < len(ws):
            joints.append(acts[hi - 1].lipschitz_constant(2))
    return composed_bound(f"{method} (split={k})", parts, joints, net.layers, 2, {"split": k})


def composed_bound(label: str, parts: list, joints: list, layers, norm, details: dict) -> LipschitzBound:
    """``Π bound(part) · Π joint``, rounded up: a composition bounded piece by piece.

    ``parts`` are thunks returning the pieces' bounds in order; ``joints[i]`` is the Lipschitz
    constant of what sits between piece ``i`` and ``i + 1`` (an activation, a max pool).
    The product is kept as (mantissa, exponent) like :func:`naive_product`.
    """
    start = time.perf_counter()
    value: Scaled = from_float(1.0)
    raw = 1.0
    margins, solvers_used, statuses = [], set(), set()
    for i, part in enumerate(parts):
        bound = part()
        value = times(value, from_float(bound.value))
        raw *= bound.raw_value
        statuses.add(bound.status)
        if bound.solver != "none":
            solvers_used.add(bound.solver)
        if not np.isnan(bound.certificate_margin):
            margins.append(bound.certificate_margin)
        if i < len(joints):
            value = times(value, from_float(joints[i]))
            raw *= joints[i]
    value = as_float(value, f"the {label} bound", layers)
    return LipschitzBound(value=value, raw_value=raw, method=label, solver="+".join(sorted(solvers_used)) or "none",
                          status=combined_status(statuses), solve_time=time.perf_counter() - start,
                          certificate_margin=min(margins) if margins else float("nan"), norm=norm, details=details)


def combined_status(statuses) -> str:
    """The status of a bound assembled from parts: ``"feasible"`` if some part is only a feasible
    point, ``"closed-form"`` if every part is (or there is none), else ``"optimal"``."""
    statuses = set(statuses)
    if "feasible" in statuses:
        return "feasible"
    return "closed-form" if statuses <= {"closed-form"} else "optimal"


def _pooling_segments(net: Network) -> tuple[list, list]:
    """The top-level layers between max pools, and the pools."""
    segments, pools, current = [], [], []
    for layer in net.layers:
        if isinstance(layer, MaxPool):
            segments.append(current)
            pools.append(layer)
            current = []
        elif isinstance(layer, (Residual, Implicit)) and Network([layer]).has_max_pool:
            raise NotApplicableError("a max pool inside a residual branch is bounded by 'naive' only")
        else:
            current.append(layer)
    segments.append(current)
    return segments, pools


def _as_chain(layers: list, in_dim: int) -> Network | None:
    """``layers`` as a network that starts and ends with an affine layer (identity maps added); None if empty."""
    if not layers:
        return None
    if not isinstance(layers[0], Affine):
        layers = [Affine.create(np.eye(in_dim), None, "identity")] + layers
    if not isinstance(layers[-1], Affine):
        width = Network(layers).output_dim
        layers = layers + [Affine.create(np.eye(width), None, "identity")]
    return Network(layers)


def split_at_pooling(spec: MethodSpec, net: Network, *, norm=2, solver=None, reduce=True, **options):
    """A bound of a network with max pools: each piece between them by ``spec``, times each pool's constant.

    ``f = g_K ∘ pool_K ∘ … ∘ pool_1 ∘ g_0``, so ``L(f) ≤ Π L(g_k) · Π L(pool_k)``
    (:mod:`lipsdp.pooling` gives the pool's constant, √m in ℓ2).
    """
    segments, pools = _pooling_segments(net)
    parts = []
    width = net.input_dim
    for k, segment in enumerate(segments):
        chain = _as_chain(segment, width)
        if chain is None:
            parts.append(lambda: LipschitzBound(value=1.0, raw_value=1.0, method="identity", solver="none",
                                                status="closed-form", solve_time=0.0, norm=norm))
        else:
            parts.append(lambda chain=chain: run_method(spec, chain, norm=norm, solver=solver, reduce=reduce,
                                                        **options))
        if k < len(pools):
            width = pools[k].out_dim
    joints = [pool.lipschitz_constant(norm) for pool in pools]
    return composed_bound(f"{spec.name} (split at {len(pools)} max pool(s))", parts, joints, net.layers, norm,
                          {"split_at_pooling": len(pools)})


@register_method("lipsdp-neuron-layerwise",
                 "LipSDP-Neuron of a feed-forward chain as its one block-tridiagonal (chordal) LMI",
                 options={2: ()}, multipliers="neuron")
def _lipsdp_layerwise(net: Network, *, norm=2, solver=None, reduce=True, **options):
    """LipSDP-Neuron of a chain, posed as the one LMI whose sparsity is block tridiagonal.

    The layer-wise form of docs/formulations.md §2 (blocks of size n_{k−1}+n_k coupled by free
    n_k×n_k matrices) has the same optimum as the one-block LMI, whose aggregate sparsity is
    exactly those cliques; the coupling matrices only add variables.  So this method solves the
    one-block program (any solver; ``solver="chordal"`` works on its cliques, :mod:`lipsdp.chordal`)
    and is never slower than ``lipsdp-neuron`` on a chain.
    """
    net._require_feedforward("lipsdp-neuron-layerwise")
    fixed = [k for k, (w, a) in enumerate(zip(net.weights, net.activations), start=1)
             if fm.fixed_slope_neurons(a, w.shape[0]) is not None]
    if fixed:
        # eliminating a fixed-slope neuron (the only way to give it no free multiplier) re-coordinatises
        # the chain, and the LMI is no longer block tridiagonal in the layers
        raise NotApplicableError(
            f"lipsdp-neuron-layerwise cannot pose neurons with a fixed slope (alpha = beta; activation layer(s) "
            f"{fixed}) layer by layer; use lipsdp-neuron, which restricts the SDP to their exact linear invariant"
        )
    build = _graph_builder("neuron")
    return solve_and_certify(net, "lipsdp-neuron-layerwise", build, build, solver=solver, reduce=reduce, **options)


# ------------------------------------------------------------------------------- ECLipsE-Fast
def eclipse_fast_multipliers(net: Network, slack: float = 0.0) -> tuple[float, list[float]]:
    """Greedy closed-form feasible point of docs/formulations.md §2 with ``Λ_k = ℓ_k I`` (ECLipsE-Fast).

    Starting from ``P₀ = (1 − s) I``, each step keeps the layer block of docs/formulations.md §2,
    ``[[P_{k−1} + 2ℓ Wᵀ A W, −ℓ Wᵀ S], [−ℓ S W, 2ℓ I − R_k]]``, PSD by taking
    ``R_k`` as its Schur complement,

        R_k = 2ℓ I − ℓ² S W (P_{k−1} + 2ℓ Wᵀ A W)⁻¹ Wᵀ S,   A = diag(αβ), S = diag(α+β),

    with ``ℓ_k`` maximising ``λ_min(R_k)`` (closed form ``ℓ = 1/λ_max(S W P⁻¹ Wᵀ S)``
    when ``αβ = 0``, as in Xu & Sivaranjani 2024 up to their QC's factor 2; a
    scalar search otherwise, keeping the 2αβ term), and passes ``P_k = (1 − s) R_k``
    on.  Finally ``ρ = λ_max(W_l P_{l−1}⁻¹ W_lᵀ)`` and every multiplier is scaled by ρ.

    With ``s = 0`` (the published rule) every block is exactly singular: the
    point lies on the boundary of the feasible set, and its null direction can
    be one that raising ρ barely reaches (deep nets), so rounding alone makes
    it uncertifiable.  With ``s > 0`` the one-block LMI satisfies
    ``F/ρ ⪰ diag(s I, s R_1, …, s R_{l−1}) ≻ 0`` (the blocks sum to ``F/ρ``
    minus those leftovers ``R_k − P_k``), a relative margin of about ``s/2``
    after scaling to unit diagonal, at a cost of about ``(depth) · s`` in the bound.

    Returns
    -------
    rho, ells
        ``ρ`` (bound² of the network) and the per-layer ``ℓ_k`` (before scaling by ρ).

    Raises
    ------
    NotApplicableError
        For an activation without slope bounds, or when a step has no positive
        definite Schur complement in float64 (a degenerate or extremely
        ill-conditioned layer).
    """
    q = (1.0 - slack) * np.eye(net.input_dim)
    ells = []
    # every matrix here is of a layer's width: BLAS threads only pay from threads_for_size's size up
    with blas_threads(threads_for_size(max(max(w.shape) for w in net.weights))):
        for w, act in zip(net.weights[:-1], net.activations):
            bounds = act.slope_bounds(w.shape[0])
            if bounds is None:
                raise NotApplicableError(f"eclipse-fast needs slope-restricted activations, not {act.describe()}")
            ell, r_next = _eclipse_step(q, w, *bounds)
            ells.append(ell)
            q = (1.0 - slack) * r_next
        w_last = net.weights[-1]
        rho = la.eigvalsh(w_last @ la.solve(q, w_last.T, assume_a="pos"))[-1]
    return float(rho), ells


def _eclipse_step(q: np.ndarray, w: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> tuple[float, np.ndarray]:
    """``(ℓ_k, R_k)`` of one ECLipsE-Fast step from ``P_{k−1} = q`` (see :func:`eclipse_fast_multipliers`).

    ``M(p) = S W p⁻¹ Wᵀ S`` is formed as ``XᵀX`` with ``X = L⁻¹ Wᵀ S`` from the Cholesky
    factor ``p = L Lᵀ`` (symmetric by construction).  ``M(q)`` gives the closed-form start
    ``ℓ = 1/λ_max(M(q))``, and when ``αβ = 0`` (ReLU-like slopes) the inner matrix
    ``q + 2ℓ Wᵀ A W`` is ``q`` itself at every ``ℓ``, so ``R_k = 2ℓ I − ℓ² M(q)`` needs no
    other factorisation.  Only ``αβ ≠ 0`` runs the scalar search (and imports scipy.optimize).
    The step exists when ``R_k`` is positive definite (its Cholesky factorisation succeeds).
    """
    ab, s = alpha * beta, alpha + beta
    sw_t = (s[:, None] * w).T
    eye = np.eye(w.shape[0])
    no_step = NotApplicableError("eclipse-fast found no positive definite step for this network; use lipsdp-neuron")

    def inverse_gram(p: np.ndarray):
        """``M(p)``, or None when ``p`` is not positive definite."""
        try:
            x = la.solve_triangular(la.cholesky(p, lower=True), sw_t, lower=True)
        except la.LinAlgError:
            return None
        return x.T @ x

    def schur(ell: float, m: np.ndarray) -> np.ndarray:
        r = 2 * ell * eye - ell**2 * m
        return 0.5 * (r + r.T)

    def r_next(ell: float):
        m = inverse_gram(q + 2 * ell * (w.T * ab) @ w)
        return None if m is None else schur(ell, m)

    def search(ell: float) -> float:
        """``ℓ`` maximising ``λ_min(R(ℓ))`` from the start ``ell`` (Brent on ``log ℓ``), if it improves on it."""
        from scipy.optimize import minimize_scalar  # a heavy import, needed by this search only

        def score(log_ell: float) -> float:
            r = r_next(np.exp(log_ell))
            return np.inf if r is None else -extreme_eigenvalue(r)

        with np.errstate(invalid="ignore"):  # score is +inf where no step exists; Brent's parabola then gives NaN
            res = minimize_scalar(score, bracket=(np.log(ell) - 1, np.log(ell)), tol=1e-6)
        return float(np.exp(res.x)) if np.isfinite(res.fun) and res.fun < score(np.log(ell)) else ell

    def positive_definite(r) -> bool:
        if r is None or not np.all(np.isfinite(r)):
            return False
        try:
            la.cholesky(r, lower=True, check_finite=False)
        except la.LinAlgError:
            return False
        return True

    m = inverse_gram(q)
    if m is None:
        raise no_step
    ell = 1.0 / max(extreme_eigenvalue(m, largest=True), 1e-300)
    if np.any(ab != 0):
        ell = search(ell)
        r = r_next(ell)
    else:  # αβ = 0: the inner matrix is q at every ℓ
        r = schur(ell, m)
    if not positive_definite(r):
        raise no_step
    return ell, r


@register_method("eclipse-fast", "ECLipsE-Fast (Xu & Sivaranjani 2024): closed-form feasible point, certified",
                 options={2: ()}, uses_solver=False, multipliers="neuron")
def _eclipse_fast(net: Network, *, norm=2, solver=None, reduce=True, **options):
    """ECLipsE-Fast's closed-form point (:func:`eclipse_fast_multipliers`), certified like every SDP method.

    The point is built with the smallest relative slack of
    :func:`closed_form_slacks` whose float64 certificate succeeds.  It raises
    :class:`~lipsdp.errors.CertificationError` when even the largest slack
    cannot be certified (an LMI so ill-conditioned that float64 cannot
    separate it from singular: e.g. a layer whose Schur complement loses all
    precision), and :class:`~lipsdp.errors.NotApplicableError` when a step has
    no positive definite Schur complement at all.
    """
    net._require_feedforward("eclipse-fast")
    build = _graph_builder("neuron")
    return solve_and_certify(net, "eclipse-fast", build, build, reduce=reduce, closed_form=eclipse_point)
