"""Soundness fuzzing (issue 17): no certified bound is ever below a lower bound.

Hypothesis draws seeds; ``bench/fuzzing.py`` turns each into a random small network
(activations from every registry example, mixed per layer and per-neuron, residual,
implicit, torch-built and tiny piecewise-linear nets, weight scales ``e^U(−3, 3)``)
with a method, a norm and a solver, and compares the certified bound with gradient
ascent, finite differences, float64 difference quotients (close pairs, line scans,
pairs straddling kinks) and, on tiny ReLU-like nets, exact pattern enumeration.
Typed errors (:class:`lipsdp.errors.LipSDPError`) are allowed; a bound below a lower
bound (relative tolerance ``fuzzing.REL_TOL = 1e-7``) or any other exception fails.

The lmi part checks every parameterization with every registry activation: refusals
are typed, and each accepted activation stays within γ and below lipsdp's certified
bound of the exported network, at initialisation and after 30 quotient-maximising
Adam steps (γ ∈ {0.05, 1, 20} × float32/float64 taken in turn).

The CI size is small; ``python bench/fuzz.py --n 10000`` runs the same generator at scale.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fuzzing  # noqa: E402
from lipsdp import activation_registry as registry  # noqa: E402

#: cases per solver (slow solvers fewer) and per registry entry
N_PER_SOLVER = 20
N_SLOW_SOLVER = 5
N_PER_ENTRY = 12
SLOW_SOLVERS = ("scs", "cvxpy:SCS", "firstorder")
MAX_WIDTH = 6


def _fuzz(n_examples: int, salt: str, **overrides) -> list[fuzzing.Outcome]:
    """Run ``n_examples`` network cases (seeds salted by ``salt``); fail on the first violation or crash."""
    outcomes: list[fuzzing.Outcome] = []
    offset = zlib.crc32(salt.encode())

    @settings(max_examples=n_examples, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**31 - 1))
    def check(seed: int) -> None:
        case = fuzzing.make_network_case(seed + offset, max_width=MAX_WIDTH, max_exact_neurons=MAX_WIDTH, **overrides)
        outcome = fuzzing.check_network_case(case, max_exact_neurons=MAX_WIDTH)
        outcomes.append(outcome)
        assert outcome.status not in fuzzing.FAILURES, outcome.detail

    check()
    return outcomes


def _passed(outcomes: list[fuzzing.Outcome]) -> list[fuzzing.Outcome]:
    return [o for o in outcomes if o.status == fuzzing.PASSED]


@pytest.mark.parametrize("solver", [None, *fuzzing.usable_solvers()])
def test_certified_bounds_with_each_solver_are_above_lower_bounds(solver, torch_single_thread):
    outcomes = _fuzz(N_SLOW_SOLVER if solver in SLOW_SOLVERS else N_PER_SOLVER, f"solver {solver}", solver=solver)
    passed = _passed(outcomes)
    assert passed, f"no case produced a bound: {[o.detail for o in outcomes]}"
    assert all(o.bound >= o.lower * (1 - fuzzing.REL_TOL) for o in passed)


@pytest.mark.parametrize("entry", [e.name for e in registry.entries()])
def test_certified_bounds_for_each_registry_activation_are_above_lower_bounds(entry, torch_single_thread):
    outcomes = _fuzz(N_PER_ENTRY, f"entry {entry}", entry=entry)
    assert {o.family[0] for o in outcomes} == {entry}
    passed = _passed(outcomes)
    assert passed, f"no case produced a bound: {[o.detail for o in outcomes]}"
    assert all(o.bound >= o.lower * (1 - fuzzing.REL_TOL) for o in passed)


def test_tiny_relu_nets_are_checked_against_exact_enumeration(torch_single_thread):
    """Seeds whose nets are tiny piecewise-linear chains: the exact constant is among the lower bounds."""
    seeds = [s for s in range(400) if fuzzing.make_network_case(s, MAX_WIDTH, MAX_WIDTH).shape == "tiny-pl"][:6]
    cases = [fuzzing.make_network_case(s, MAX_WIDTH, MAX_WIDTH, solver=None) for s in seeds]
    checked = 0
    for case in (c for c in cases if c.norm == 2):
        exact = fuzzing.lower_bounds(case, MAX_WIDTH)["exact_pattern"]
        outcome = fuzzing.check_network_case(case, MAX_WIDTH)
        assert outcome.status in (fuzzing.PASSED, fuzzing.TYPED), outcome.detail
        if outcome.status == fuzzing.PASSED:
            assert outcome.bound >= exact * (1 - fuzzing.REL_TOL)
            checked += 1
    assert checked, "no tiny ReLU-like net produced a bound to compare with its exact constant"


def test_difference_quotient_finds_the_slope_of_a_kinked_function():
    """The quotient search reaches the true constant of ``x ↦ 3·relu(x − 1)`` (a kink away from 0)."""
    import numpy as np
    from lipsdp.network import Network

    net = Network.from_weights([np.array([[1.0]]), np.array([[3.0]])], [np.array([-1.0]), np.array([0.0])], "relu")
    q = fuzzing.difference_quotient(net, net, np.random.default_rng(0), 2)
    assert 3.0 * (1 - 1e-6) <= q <= 3.0 * (1 + 1e-12)


def test_a_bound_below_a_lower_bound_is_reported_as_a_violation():
    """The comparison itself: a bound under the best lower bound (beyond REL_TOL) is a violation."""
    lowers = {"gradient": 2.0, "quotients": 1.5}
    assert fuzzing.compare("net", ("relu",), 0, 2.0 * (1 - 1e-6), lowers, "").status == fuzzing.VIOLATION
    assert fuzzing.compare("net", ("relu",), 0, 2.0 * (1 - 1e-9), lowers, "").status == fuzzing.PASSED


def test_non_finite_lower_bounds_are_left_out_and_noted():
    outcome = fuzzing.compare("net", ("relu",), 0, 1.0, {"gradient": 0.5, "finite_difference": float("nan")}, "")
    assert outcome.status == fuzzing.PASSED and outcome.lower == 0.5
    assert "finite_difference" in outcome.note


def test_finite_difference_lower_bound_is_finite_after_a_zero_layer():
    """Found by the fuzzer: a zero weight row made the sampling scale 1e300 and the lower bound NaN."""
    import numpy as np
    from lipsdp.lower import finite_difference_lower_bound
    from lipsdp.network import Network

    net = Network.from_weights([np.zeros((1, 1)), np.ones((1, 1))], [np.ones(1), np.zeros(1)], "relu")  # constant
    assert finite_difference_lower_bound(net).value == 0.0


def _lmi_parameterizations() -> list[str]:
    import lmi

    return lmi.parameterizations()


@pytest.mark.parametrize("parameterization", _lmi_parameterizations())
def test_lmi_models_stay_within_gamma_and_below_certified_bounds(parameterization, torch_single_thread):
    specs = [spec for spec, _ in fuzzing.lmi_activations()]
    accepted = [spec for spec in specs if fuzzing.lmi_accepts(parameterization, spec)]  # refusals must be typed
    assert "relu" in accepted, f"{parameterization} refuses ReLU"
    combos = list(itertools.product(fuzzing.LMI_GAMMAS, fuzzing.LMI_DTYPES))
    start = _lmi_parameterizations().index(parameterization)
    outcomes = []
    for k, spec in enumerate(accepted):
        gamma, dtype = combos[(start + k) % len(combos)]
        outcomes += fuzzing.check_lmi_case(parameterization, spec, gamma, dtype, seed=k)
    failures = [o.detail for o in outcomes if o.status in fuzzing.FAILURES]
    assert not failures, "\n".join(failures)
    passed = _passed(outcomes)
    assert len(passed) >= len(accepted), [o.detail for o in outcomes if o.status != fuzzing.PASSED]
    assert all(o.bound >= o.lower * (1 - fuzzing.REL_TOL) for o in passed)


def test_seeds_that_failed_at_scale_now_pass():
    """bench/fuzz.py --n 10000 found cvxpy's CVXOPT path raising a raw ZeroDivisionError (seed 897)."""
    outcome = fuzzing.check_network_case(fuzzing.make_network_case(897, max_width=8, max_exact_neurons=8, entry=None,
                                                                   solver="draw"))
    assert outcome.status in ("passed", "typed_error"), outcome
