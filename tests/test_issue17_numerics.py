"""Issue 17: numerical soundness of the solve/certify road.

* ECLipsE-Fast's closed form is exactly singular; on deep nets rounding made it uncertifiable.
* Neurons with a fixed slope (α_i = β_i) had a free multiplier whose optimum is at infinity.
* The first-order solver let scipy's ``ValueError`` on non-finite data escape.
* Weights near float64's under/overflow range gave 0.0 (below the true constant) or inf.
* The naive bound's full SVD took minutes on wide layers.
"""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
import lipsdp.bound_methods as methods_module
from lipsdp.activations import SlopeRestricted
from lipsdp.certificate import spectral_norm_bound
from lipsdp.errors import NotApplicableError, NumericalRangeError, SolverFailedError
from lipsdp.firstorder import solve_firstorder
from lipsdp.lower import gradient_lower_bound
from lipsdp.network import Network


SDP_METHODS = ("lipsdp-neuron", "lipsdp-layer", "eclipse-fast")


def _deep_relu(seed: int, width: int, depth: int = 16, n_in: int | None = None, n_out: int | None = None) -> Network:
    """``depth`` ReLU layers with weights N(0, 1.2²/width): deep, so ECLipsE-Fast's null direction barely reaches ρ."""
    rng = np.random.default_rng(seed)
    widths = [n_in or width] + [width] * (depth - 1) + [n_out or width]
    return Network.from_weights(
        [rng.normal(0, 1.2 / np.sqrt(width), (widths[k + 1], widths[k])) for k in range(depth)], activation="relu"
    )


def _published_eclipse_fast(weights) -> float:
    """ECLipsE-Fast as published for ReLU (Xu & Sivaranjani 2024, their QC scaled by 1/2), uncertified."""
    x = np.eye(weights[0].shape[1])
    for w in weights[:-1]:
        m = w @ np.linalg.solve(x, w.T)
        ell = 2.0 / np.linalg.eigvalsh(m)[-1]
        x = ell * np.eye(w.shape[0]) - ell**2 * m / 4
    w = weights[-1]
    return float(np.sqrt(np.linalg.eigvalsh(w @ np.linalg.solve(x, w.T))[-1]))


# ----------------------------------------------------------------------------------- 1. ECLipsE-Fast
def test_eclipse_fast_certifies_deep_random_relu_nets_above_lipsdp_neuron():
    """Old code: CertificationError on most of these (the closed form is exactly singular)."""
    for seed in range(10):
        net = _deep_relu(seed, 12)
        eclipse = lipsdp.estimate(net, method="eclipse-fast")
        neuron = lipsdp.estimate(net, method="lipsdp-neuron")
        lower = gradient_lower_bound(net, n_starts=2, steps=20, seed=seed).value
        assert eclipse.status == "closed-form"
        assert eclipse.value >= neuron.value * (1 - 1e-9), seed
        assert neuron.value >= lower * (1 - 1e-9), seed


@pytest.mark.parametrize("n_in, n_out", [(64, 64), (10, 1), (3, 10)])
def test_eclipse_fast_certifies_the_reported_wide_deep_net_at_its_published_value(n_in, n_out):
    net = _deep_relu(n_in + n_out, 64, n_in=n_in, n_out=n_out)
    bound = lipsdp.estimate(net, method="eclipse-fast")
    published = _published_eclipse_fast(net.weights)
    # the slack that makes the point strictly feasible costs far less than 1e-6 of the value
    assert published * (1 - 1e-9) <= bound.value <= published * (1 + 1e-6)
    assert bound.value >= gradient_lower_bound(net, n_starts=2, steps=20).value


# ----------------------------------------------------------------------------------- 2. fixed slopes
def _slope_net(seed: int, all_fixed: bool) -> tuple[Network, list[np.ndarray], list[np.ndarray]]:
    """A 3-6-5-2 net whose neurons are ReLU or linear with a fixed slope c_i ∈ [−1.5, 1.5] (per-neuron arrays)."""
    rng = np.random.default_rng(seed)
    widths = [3, 6, 5, 2]
    weights = [rng.normal(size=(widths[k + 1], widths[k])) for k in range(3)]
    acts, slopes = [], []
    for m in widths[1:-1]:
        fixed = np.ones(m, bool) if all_fixed else rng.random(m) < 0.5
        fixed[0] = True
        c = np.where(fixed, rng.uniform(-1.5, 1.5, m), 0.0)
        if not all_fixed:
            fixed[-1], c[-1] = True, 0.0  # a constant neuron too
        alpha, beta = np.where(fixed, c, 0.0), np.where(fixed, c, 1.0)

        def fn(v, fixed=fixed, c=c):
            return np.where(fixed, c * v, np.maximum(v, 0.0))

        def der(v, fixed=fixed, c=c):
            return np.where(fixed, c, (v > 0).astype(float))

        acts.append(SlopeRestricted(alpha=alpha, beta=beta, name="mixed", fn=fn, derivative=der))
        slopes.append(c)
    return Network.from_weights(weights, activation=acts), weights, slopes


@pytest.mark.parametrize("seed", range(4))
def test_fixed_slope_neurons_certify_with_the_default_solver(seed):
    """Old code: the free multiplier of a fixed-slope neuron made the solvers fail."""
    net, _, _ = _slope_net(seed, all_fixed=False)
    values = {m: lipsdp.estimate(net, method=m).value for m in SDP_METHODS}
    lower = gradient_lower_bound(net, n_starts=4, steps=30, seed=seed).value
    assert values["eclipse-fast"] >= values["lipsdp-neuron"] * (1 - 1e-9)
    assert values["lipsdp-layer"] >= values["lipsdp-neuron"] * (1 - 1e-6)
    assert values["lipsdp-neuron"] >= lower * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_all_fixed_per_neuron_slopes_give_the_spectral_norm_of_the_product(seed):
    net, weights, slopes = _slope_net(seed, all_fixed=True)
    product = weights[0]
    for w, c in zip(weights[1:], slopes):
        product = w @ (c[:, None] * product)
    exact = np.linalg.norm(product, 2)
    for method in ("lipsdp-neuron", "lipsdp-layer"):
        value = lipsdp.estimate(net, method=method).value
        assert exact * (1 - 1e-12) <= value <= exact * (1 + 1e-6), method
    assert lipsdp.estimate(net, method="eclipse-fast").value >= exact * (1 - 1e-12)


def test_layerwise_form_refuses_fixed_slope_neurons():
    net, _, _ = _slope_net(0, all_fixed=False)
    with pytest.raises(NotApplicableError, match="lipsdp-neuron"):
        lipsdp.estimate(net, method="lipsdp-neuron-layerwise")


# ----------------------------------------------------------------------------------- 3. first-order solver
@pytest.mark.parametrize("scale", [1e-150, 1e150, 1e300])
def test_firstorder_maps_numerical_breakdown_to_solver_failed(scale):
    """Old code: a raw ValueError from scipy (non-finite data or optimisation bounds)."""
    rng = np.random.default_rng(0)
    net = Network.from_weights([scale * rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))])
    unnormalised = methods_module._graph_builder("neuron")(net, False)
    with pytest.raises(SolverFailedError, match="firstorder"):
        solve_firstorder(unnormalised, time_limit=5.0, max_iters=50)


def test_firstorder_certifies_a_badly_scaled_net_through_estimate():
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(8, 4)) / 2, rng.normal(size=(8, 8)) / 3, rng.normal(size=(3, 8)) / 3]
    net = Network.from_weights([1e-150 * weights[0]] + weights[1:], activation="relu")
    reference = lipsdp.estimate(Network.from_weights(weights, activation="relu"), method="lipsdp-neuron").value
    first_order = lipsdp.estimate(net, solver="firstorder", time_limit=10.0, max_iters=200)
    assert first_order.value >= 1e-150 * reference * (1 - 1e-6)
    assert first_order.value <= 1e-150 * reference * 1.05


# ----------------------------------------------------------------------------------- 4. weight scales
def _two_layer(scale_first: float = 1.0, scale_second: float = 1.0) -> Network:
    rng = np.random.default_rng(3)
    return Network.from_weights([scale_first * rng.normal(size=(8, 4)), scale_second * rng.normal(size=(3, 8))])


@pytest.mark.parametrize("method", ("naive",) + SDP_METHODS)
@pytest.mark.parametrize("shift", [-560, 560])
def test_power_of_two_weight_scales_scale_the_bound_exactly(method, shift):
    """Old code: 0.0 (below the true constant, ≈ 2^-560 · 8) or a CertificationError for 2^560."""
    base = lipsdp.estimate(_two_layer(), method=method).value
    scaled = lipsdp.estimate(_two_layer(2.0**shift), method=method).value
    assert scaled == np.ldexp(base, shift)


@pytest.mark.parametrize("method", ("naive",) + SDP_METHODS)
@pytest.mark.parametrize("scale", [1e-170, 1e170])
def test_extreme_weight_scales_stay_above_the_true_constant(method, scale):
    """ReLU is positively homogeneous, so the constant of the scaled net is scale × the base net's."""
    base = _two_layer()
    lower = gradient_lower_bound(base, n_starts=4, steps=30).value
    value = lipsdp.estimate(_two_layer(scale), method=method).value
    assert np.isfinite(value)
    assert value >= scale * lower * (1 - 1e-9)
    assert value <= scale * lipsdp.estimate(base, method="naive").value * (1 + 1e-9)


@pytest.mark.parametrize("method", ("naive",) + SDP_METHODS)
@pytest.mark.parametrize("scale", [1e-160, 1e-170, 1e170])
def test_bounds_outside_float64_are_refused_not_rounded(method, scale):
    """Old code: 0.0 for the tiny nets (a positive constant!), inf or a CertificationError for the huge one."""
    with pytest.raises(NumericalRangeError, match="layer1"):
        lipsdp.estimate(_two_layer(scale, scale), method=method)


def test_linf_naive_bound_is_kept_in_range():
    value = lipsdp.estimate(_two_layer(1e-170), method="naive", norm=np.inf).value
    base = lipsdp.estimate(_two_layer(), method="naive", norm=np.inf).value
    assert value == pytest.approx(1e-170 * base, rel=1e-12)


# ----------------------------------------------------------------------------------- 5. spectral norms
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (40, 7), (300, 420), (520, 330)])
@pytest.mark.parametrize("scale", [1.0, 1e-200, 1e200])
def test_spectral_norm_bound_is_certified_and_within_1e_minus_6(shape, scale):
    w = np.random.default_rng(sum(shape)).normal(size=shape)
    sigma = np.linalg.norm(w, 2)
    mantissa, exponent = spectral_norm_bound(scale * w)
    bound = np.ldexp(mantissa, exponent) / scale
    assert sigma <= bound <= sigma * (1 + 1e-6)


def test_naive_bound_of_wide_layers_needs_no_svd(monkeypatch):
    """Old code: ``np.linalg.norm(W, 2)``, a full SVD (minutes on 4 layers of 5000 × 5000)."""
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=(400, 400)) / 30 for _ in range(2)]
    exact = np.prod([np.linalg.norm(w, 2) for w in weights])

    real_norm = np.linalg.norm

    def norm_without_svd(x, ord=None, *args, **kwargs):
        if ord == 2 and np.ndim(x) == 2:
            raise AssertionError("the naive bound must not compute a full SVD of a wide layer")
        return real_norm(x, ord, *args, **kwargs)

    def no_svd(*args, **kwargs):
        raise AssertionError("the naive bound must not compute a full SVD of a wide layer")

    monkeypatch.setattr(np.linalg, "norm", norm_without_svd)
    monkeypatch.setattr(np.linalg, "svd", no_svd)
    value = lipsdp.estimate(Network.from_weights(weights), method="naive").value
    assert exact <= value <= exact * (1 + 1e-6)


def test_lipschitz_bound_has_an_empty_assumptions_field_by_default():
    bound = lipsdp.estimate(_two_layer(), method="naive")
    assert bound.assumptions == ()
    assert list(type(bound).__dataclass_fields__)[-1] == "assumptions"


def test_naive_bound_of_orthogonal_layers_survives_lapacks_subset_driver():
    """The subset eigenvalue driver raised a raw LinAlgError on the Gram matrix of an SLL export (clustered spectrum)."""
    torch = pytest.importorskip("torch")
    import lmi

    torch.manual_seed(0)
    model = lmi.lipschitz_mlp([64, 32, 32, 10], 4.0, parameterization="sll", dtype=torch.float64)
    plain = lmi.to_plain(model)
    bound = lipsdp.estimate(plain, method="naive").value
    weights = [m.weight.detach().numpy() for m in plain.modules() if isinstance(m, torch.nn.Linear)]
    assert bound >= max(np.linalg.norm(w, 2) for w in weights)


@pytest.mark.parametrize("scale", [1e-170, 1e170, 2.0**-600])
def test_linf_bounds_of_extreme_weight_scales_scale_with_them(scale):
    """ℓ∞ path: a 1e-170 first layer raised CertificationError and 1e170 a raw OverflowError."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    base = lipsdp.estimate(lipsdp.Network.from_weights([w1, w2], activation="relu"), norm="inf").value
    scaled = lipsdp.estimate(lipsdp.Network.from_weights([scale * w1, w2], activation="relu"), norm="inf").value
    assert scaled == pytest.approx(scale * base, rel=1e-9)


def test_linf_fixed_slope_neurons_get_no_free_multiplier():
    """ℓ∞ kept a free multiplier for a neuron of slope 1 (PReLU weight 1): the solvers stalled."""
    torch = pytest.importorskip("torch")
    from lipsdp.linf import linf_lower_bound

    torch.manual_seed(0)
    prelu = torch.nn.PReLU(6)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([1.0, 0.1, 1.0, 0.3, 0.2, 1.0]))
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), prelu, torch.nn.Linear(6, 6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3)).double()
    net = lipsdp.Network.from_torch(model)
    assert lipsdp.estimate(net, norm="inf").value >= linf_lower_bound(net)
