"""Issue 17: an implicit layer that lipsdp certifies as well posed must also evaluate.

The damped iteration ``z ← ½z + ½φ(Wz + u)`` that both forward passes used
diverges on layers that :func:`lipsdp.wellposed.check_well_posed` certifies
(monotone certificate ``2Λ − ΛW − WᵀΛ ≻ 0`` with a large skew-symmetric part of
``W``).  These tests check that every certified layer now converges, in numpy and
torch alike, to the one equilibrium; that the lipsdp bound of such a model
dominates finite differences of its forward pass; and that a layer without a
certificate whose iteration diverges is refused.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import lipsdp  # noqa: E402
from lipsdp import nn as lnn  # noqa: E402
from lipsdp.activations import Activation  # noqa: E402
from lipsdp.equilibrium import iterate, splitting  # noqa: E402
from lipsdp.errors import IllPosedError  # noqa: E402
from lipsdp.network import Implicit, Network  # noqa: E402
from lipsdp.torch_io import convert_module  # noqa: E402
from lipsdp.wellposed import certificate_kind, check_well_posed  # noqa: E402

#: monotone activations (slopes in [α, β] with α ≥ 0, β ≤ 1): 2I − W − Wᵀ ≻ 0 certifies them with Λ = I
MONOTONE = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, lambda: nn.LeakyReLU(0.2), nn.ELU]


def _skew_dominated(rng: np.random.Generator, n: int, skew: float) -> np.ndarray:
    """``W`` with ``W + Wᵀ ≺ 1.8 I`` (so ``Λ = I`` is a monotone certificate) but ``‖W‖₂ ≫ 1``."""
    a = rng.normal(size=(n, n)) / np.sqrt(n)
    b = rng.normal(size=(n, n)) / np.sqrt(n)
    return 0.9 * np.eye(n) - 0.5 * a.T @ a + skew * (b - b.T)


def _diagonally_scaled(rng: np.random.Generator, n: int, pair: bool) -> np.ndarray:
    """``D⁻¹ W₀ D`` with ``‖W₀‖₂ = 0.9``: a contraction in the ``D²``-norm although ``‖W‖₂ ≫ 1``.

    ``pair=True`` keeps ``D`` constant on the pairs of MaxMin, so ``D²`` is a
    group multiplier ``blkdiag(λ_j I)``.
    """
    w0 = rng.normal(size=(n, n))
    w0 *= 0.9 / np.linalg.norm(w0, 2)
    d = np.exp(rng.uniform(-1.5, 1.5, size=n // 2 if pair else n))
    d = np.repeat(d, 2) if pair else d
    return w0 * d[None, :] / d[:, None]


def _module(W: np.ndarray, activation: nn.Module, rng: np.random.Generator, n_in: int = 3) -> lnn.Implicit:
    n = W.shape[0]
    module = lnn.Implicit(n_in, n, activation=activation).double()
    with torch.no_grad():
        module.W.copy_(torch.from_numpy(W))
        module.U.copy_(torch.from_numpy(rng.normal(size=(n, n_in))))
        module.b.copy_(torch.from_numpy(rng.normal(size=n)))
    return module


def _layer(module: lnn.Implicit) -> Implicit:
    (layer,) = convert_module(module)
    return layer


def _residual(layer: Implicit, x: np.ndarray, z: np.ndarray) -> float:
    """``max |φ(Wz + Ux + b) − z|``."""
    return float(np.abs(layer.activation.forward_batch(z @ layer.W.T + x @ layer.U.T + layer.b) - z).max())


def _damped_converges(layer: Implicit, x: np.ndarray, max_iter: int = 500) -> bool:
    """The iteration both forward passes ran before this fix: ``z ← ½z + ½φ(Wz + u)``."""
    u = x @ layer.U.T + layer.b
    z = np.zeros_like(u)
    for _ in range(max_iter):
        z_new = layer.activation.forward_batch(z @ layer.W.T + u)
        if np.max(np.abs(z_new - z)) <= 1e-10 * (1 + np.max(np.abs(z_new))):
            return True
        z = 0.5 * z + 0.5 * z_new
    return False


def _certified_case(index: int) -> tuple[lnn.Implicit, str]:
    """Random certified layers: monotone ones with a dominant skew part, MaxMin and a non-monotone slope."""
    rng = np.random.default_rng(100 + index)
    n = int(rng.integers(3, 9))
    if index % 8 == 6:
        return _module(_diagonally_scaled(rng, 2 * (n // 2 + 1), pair=True), lnn.MaxMin(), rng), "group"
    if index % 8 == 7:
        return _module(_diagonally_scaled(rng, n, pair=False), nn.LeakyReLU(-0.5), rng), "contraction"
    W = _skew_dominated(rng, n, rng.uniform(0.5, 4.0))
    return _module(W, MONOTONE[index % len(MONOTONE)](), rng), "monotone"


@pytest.mark.parametrize("index", range(24))
def test_certified_layers_converge_to_the_same_equilibrium_in_numpy_and_torch(index):
    module, kind = _certified_case(index)
    layer = _layer(module)
    check_well_posed(layer)  # raises if not certified: every case here is
    assert certificate_kind(layer) == kind
    x = 3.0 * np.random.default_rng(index).normal(size=(16, 3))
    z_numpy = layer.equilibrium(x)
    assert _residual(layer, x, z_numpy) <= 1e-10 * (1 + np.abs(z_numpy).max())
    for training in (False, True):  # certificate first / damped iteration first
        z_torch = module.train(training)(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(z_torch, z_numpy, rtol=0, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_counterexamples_of_the_damped_iteration_now_evaluate(seed, activation):
    rng = np.random.default_rng(seed)
    module = _module(_skew_dominated(rng, 6, 2.0), activation(), rng)
    layer = _layer(module)
    check_well_posed(layer)
    x = rng.normal(size=(4, 3))
    assert np.linalg.norm(layer.W, 2) > 3 and not _damped_converges(layer, x)  # the old forward failed here
    z = layer.equilibrium(x)
    assert _residual(layer, x, z) <= 1e-10 * (1 + np.abs(z).max())
    for training in (False, True):  # training: the damped iteration fails, then the certified one runs
        np.testing.assert_allclose(module.train(training)(torch.from_numpy(x)).detach().numpy(), z, rtol=0, atol=1e-8)


def test_relu_equilibrium_is_the_one_consistent_activation_pattern():
    """Known answer: for ReLU, ``z = D(Wz + u)`` for the pattern ``D`` of the signs of ``Wz + u``."""
    rng = np.random.default_rng(7)
    n = 6
    layer = _layer(_module(_skew_dominated(rng, n, 3.0), nn.ReLU(), rng))
    check_well_posed(layer)
    x = rng.normal(size=(5, 3))
    z = layer.equilibrium(x)
    u = x @ layer.U.T + layer.b
    for row in range(x.shape[0]):
        solutions = []
        for pattern in itertools.product([0.0, 1.0], repeat=n):
            d = np.diag(pattern)
            cand = np.linalg.solve(np.eye(n) - d @ layer.W, d @ u[row])
            pre = layer.W @ cand + u[row]
            if np.all(np.where(np.array(pattern) > 0, pre >= -1e-12, pre <= 1e-12)):
                solutions.append(cand)
        assert solutions  # well posed: the equilibrium exists …
        for cand in solutions:  # … and is unique
            np.testing.assert_allclose(z[row], cand, rtol=0, atol=1e-9)


def test_splitting_converges_without_the_newton_acceleration():
    """The Peaceman–Rachford contraction alone reaches the equilibrium (Newton only speeds it up)."""
    rng = np.random.default_rng(3)
    layer = _layer(_module(_skew_dominated(rng, 7, 3.0), nn.Tanh(), rng))
    split = splitting(layer, check_well_posed(layer))
    assert split.rate < 1 and split.newton is not None
    x = rng.normal(size=(6, 3))
    u = x @ layer.U.T + layer.b
    z_plain = iterate(dataclasses.replace(split, newton=None), u, 1e-12)
    assert _residual(layer, x, z_plain) <= 1e-10 * (1 + np.abs(z_plain).max())
    np.testing.assert_allclose(z_plain, layer.equilibrium(x), rtol=0, atol=1e-9)


def test_lipsdp_bound_dominates_finite_differences_of_the_forward():
    rng = np.random.default_rng(11)
    torch.manual_seed(0)
    implicit = _module(_skew_dominated(rng, 6, 2.0), nn.Tanh(), rng, n_in=4)
    model = nn.Sequential(nn.Linear(3, 4), implicit, nn.Linear(6, 2)).double().eval()
    layer = _layer(implicit)
    assert not _damped_converges(layer, rng.normal(size=(4, 4)))
    bound = float(lipsdp.estimate(model))
    x = torch.from_numpy(rng.normal(size=(400, 3)))
    e = torch.from_numpy(rng.normal(size=(400, 3)))
    y = x + 1e-4 * e / e.norm(dim=1, keepdim=True)
    with torch.no_grad():
        ratios = (model(x) - model(y)).norm(dim=1) / (x - y).norm(dim=1)
    lower = float(ratios.max())
    assert 0 < lower <= bound * (1 + 1e-9)


def test_uncertified_divergent_layer_is_refused_in_numpy_and_torch():
    """``z = relu(2z + u)`` has no solution for ``u > 0``: no certificate, and the iteration diverges."""
    rng = np.random.default_rng(0)
    module = _module(2.0 * np.eye(3), nn.ReLU(), rng)
    with torch.no_grad():
        module.U.abs_()
        module.b.abs_()
    x = np.abs(rng.normal(size=(2, 3)))
    with pytest.raises(IllPosedError, match="not well posed.*did not converge"):
        _layer(module).equilibrium(x)
    with pytest.raises(IllPosedError, match="not well posed.*did not converge"):
        module(torch.from_numpy(x))
    with pytest.raises(IllPosedError):
        Network([_layer(module)])(x)


def test_torch_certificate_follows_the_weights():
    """The cached certificate is keyed by content: changing W in place re-certifies (here: refuses)."""
    rng = np.random.default_rng(5)
    module = _module(_skew_dominated(rng, 4, 2.0), nn.ReLU(), rng).eval()
    x = torch.from_numpy(np.abs(rng.normal(size=(3, 3))))
    before = module(x).detach().clone()
    saved = module.W.detach().clone()
    with torch.no_grad():
        module.W.copy_(2.0 * torch.eye(4))
        module.U.abs_()
        module.b.abs_()
    with pytest.raises(IllPosedError):
        module(x)
    with torch.no_grad():
        module.W.copy_(saved)
    assert torch.isfinite(module(x)).all() and before.shape == (3, 4)


def test_float32_input_gives_float32_output_and_gradients():
    rng = np.random.default_rng(2)
    module = _module(_skew_dominated(rng, 5, 2.0), nn.Tanh(), rng).float()
    x = torch.randn(4, 3, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad is not None and module.W.grad is not None and torch.isfinite(module.W.grad).all()
    reference = _layer(module).equilibrium(x.detach().double().numpy())
    np.testing.assert_allclose(y.detach().double().numpy(), reference, rtol=0, atol=1e-5)


@dataclasses.dataclass(frozen=True, eq=False)
class _Swap(Activation):
    """``(v₁, v₂) ↦ (v₂, v₁)``: 1-Lipschitz in ℓ2 but not elementwise."""

    kind = "test-swap"

    def forward_batch(self, v):
        return np.asarray(v, float)[..., ::-1].copy()

    forward = forward_batch

    def lipschitz_constant(self, norm=2) -> float:
        return 1.0


def test_non_elementwise_activation_is_not_certified_with_a_diagonal_weight():
    """``z = swap(Wz + u)`` with ``W = [[0, 1], [½, 0]]`` reads ``z₂ = z₂ + u₁``: no solution.

    A diagonal ``Λ`` satisfies ``Λ − WᵀΛW ≻ 0`` (``λ₂ > λ₁ > λ₂/4``), but that only
    proves a contraction for elementwise maps; the swap gets ``Λ = λI`` and is refused.
    The same ``W`` with an elementwise 1-Lipschitz activation stays certified.
    """
    W = np.array([[0.0, 1.0], [0.5, 0.0]])
    with pytest.raises(IllPosedError, match="not elementwise"):
        check_well_posed(Implicit.create(W, np.eye(2), _Swap()))
    elementwise = _layer(_module(W, nn.LeakyReLU(-1.0), np.random.default_rng(0)))
    assert certificate_kind(elementwise) == "contraction"
    check_well_posed(elementwise)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.Softplus])
def test_certified_error_bounds_dominate_the_true_error(activation):
    """Along plain steps of the iteration, both certified bounds stay above ``‖z − z*‖_∞``."""
    rng = np.random.default_rng(21)
    layer = _layer(_module(_skew_dominated(rng, 6, 2.5), activation(), rng))
    split = splitting(layer, check_well_posed(layer))
    x = 2.0 * rng.normal(size=(8, 3))
    u = x @ layer.U.T + layer.b
    exact = iterate(split, u, 1e-13)
    v = split.start(u)
    for _ in range(40):
        tv = split.step(v, u)
        error = np.abs(split.output(v) - exact).max(axis=1)
        contraction = split.scale * np.linalg.norm((tv - v) @ split.factor, axis=1) / (1 - split.rate)
        assert np.all(contraction >= error - 1e-11)
        assert np.all(split.equation_bound(v, u) >= error - 1e-11)
        v = tv


@pytest.mark.parametrize("w", [0.5, -0.5])
def test_error_bounds_are_exact_on_a_scalar_relu_layer(w):
    """Known answer: ``z = relu(w z + u)``, ``u > 0``, has ``z* = u / (1 − w)``; all iterates stay in ``v > 0``.

    There ``e = v − w v − u = (1 − w)(v − v*)`` and ``m = 1 − w``, so ``‖e‖/m`` is
    the error exactly.  The iteration is ``v − v* ↦ ρ(v − v*)`` with
    ``ρ = w/(2 − w)``, so ``|T(v) − v| = (1 − ρ)|v − v*|`` and the contraction bound
    ``|T(v) − v|/(1 − |ρ|)`` is the error times ``(1 − ρ)/(1 − |ρ|)`` (exact for ``ρ > 0``).
    """
    module = _module(np.array([[w]]), nn.ReLU(), np.random.default_rng(0), n_in=1)
    with torch.no_grad():
        module.U.fill_(1.0)
        module.b.fill_(0.0)
    layer = _layer(module)
    split = splitting(layer, check_well_posed(layer))
    u = np.array([[1.0], [3.0]])
    exact = u / (1 - w)
    rho = w / (2 - w)
    np.testing.assert_allclose(split.rate, abs(rho), rtol=1e-12)
    np.testing.assert_allclose(iterate(split, u, 1e-13), exact, rtol=1e-12)
    v = split.start(u)
    for _ in range(5):
        tv = split.step(v, u)
        error = np.abs(split.output(v) - exact)[:, 0]
        contraction = split.scale * np.linalg.norm((tv - v) @ split.factor, axis=1) / (1 - split.rate)
        np.testing.assert_allclose(split.equation_bound(v, u), error, rtol=1e-9)
        np.testing.assert_allclose(contraction, error * (1 - rho) / (1 - abs(rho)), rtol=1e-9)
        v = tv


def test_a_rule_known_by_its_slope_bounds_only_is_still_certified():
    """Certification needs W and the slope bounds, not the function (weights read without one)."""
    from lipsdp.activations import SlopeRestricted

    rng = np.random.default_rng(4)
    layer = Implicit.create(_skew_dominated(rng, 5, 2.0), rng.normal(size=(5, 2)), SlopeRestricted(0.0, 1.0))
    assert check_well_posed(layer).shape == (5, 5)
