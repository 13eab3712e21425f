"""Lower bounds on convolutional networks: Jacobians, the matrix-free search, max pools.

References are independent of :mod:`lipsdp.lower`: Jacobians from
``torch.autograd.functional.jacobian`` of the float64 torch model, spectral
norms by SVD, the product of the layers' exact spectral norms (an upper bound
of the true constant) and the certified upper bounds of :func:`lipsdp.estimate`.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lipsdp  # noqa: E402
from lipsdp import lower  # noqa: E402
from lipsdp.activation_registry import rule_from_spec  # noqa: E402
from lipsdp.errors import NotApplicableError  # noqa: E402
from lipsdp.network import ActivationLayer, Affine, Implicit, Network, Residual  # noqa: E402
from lipsdp.pooling import MaxPool  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tiny convolutions: thread start-up dominates

RTOL = 1e-10
FAST = dict(n_starts=3, steps=40, n_samples=96)  # small searches keep the file fast


# ----------------------------------------------------------------------------- random CNNs
def _conv(rng: np.random.Generator, dims: int, c_in: int, size: int):
    """A random Conv1d/Conv2d that fits an input of spatial ``size`` (every padding mode)."""
    kernel = int(rng.integers(1, min(3, size) + 1))
    padding = int(rng.integers(0, 2))
    mode = str(rng.choice(["zeros", "circular", "reflect"])) if 0 < padding < size else "zeros"
    stride = int(rng.integers(1, 3)) if size > 3 else 1
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, int(rng.integers(1, 3)), kernel, stride=stride,
                                                   padding=padding, padding_mode=mode,
                                                   bias=bool(rng.integers(0, 2)))
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(rng.normal(size=conv.weight.shape) / np.sqrt(c_in * kernel**dims)))
        if conv.bias is not None:
            conv.bias.copy_(torch.as_tensor(rng.normal(size=conv.bias.shape)))
    return conv


def _batchnorm(rng: np.random.Generator, channels: int):
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(rng.normal(size=channels)))
        bn.running_var.copy_(torch.as_tensor(rng.uniform(0.5, 2.0, size=channels)))
        bn.weight.copy_(torch.as_tensor(rng.normal(size=channels)))
        bn.bias.copy_(torch.as_tensor(rng.normal(size=channels)))
    return bn


def _activation(rng: np.random.Generator):
    return [nn.ReLU(), nn.LeakyReLU(0.1), nn.Tanh()][int(rng.integers(0, 3))]


def _random_cnn(seed: int):
    """``(model, input_shape)``: a tiny random float64 CNN in eval mode.

    1–2 convolutions (strides, paddings zeros/circular/reflect), optional BatchNorm2d,
    AvgPool2d, MaxPool2d (overlapping or not), ReLU/LeakyReLU/Tanh, Flatten, Linear.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dims = 2 if seed % 4 else 1
    size = int(rng.integers(4, 7))
    shape = (int(rng.integers(1, 3)),) + (size,) * dims
    layers, probe = [], torch.zeros((1,) + shape, dtype=torch.float64)

    def output():
        return nn.Sequential(*layers).double().eval()(torch.zeros((1,) + shape, dtype=torch.float64))

    for _ in range(int(rng.integers(1, 3))):
        layers.append(_conv(rng, dims, probe.shape[1], probe.shape[-1]))
        if dims == 2 and rng.random() < 0.3:
            layers.append(_batchnorm(rng, layers[-1].out_channels))
        layers.append(_activation(rng))
        probe = output()
        if dims == 2 and probe.shape[-1] >= 3 and rng.random() < 0.5:
            layers.append([nn.AvgPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(3, stride=1)][int(rng.integers(0, 3))])
            probe = output()
    layers += [nn.Flatten(), nn.Linear(probe[0].numel(), int(rng.integers(1, 4)))]
    model = nn.Sequential(*layers).double().eval()
    return model, shape


def _torch_jacobian(model, shape, x: np.ndarray) -> np.ndarray:
    """``J(x)`` of the float64 torch model by autograd (rows of ``x``): ``(s, n_out, n_in)``."""
    def f(z):
        return model(z.reshape((1,) + tuple(shape))).reshape(-1)

    return np.stack([torch.autograd.functional.jacobian(f, torch.as_tensor(row)).numpy() for row in x])


def _norm_product(net: Network) -> float:
    """Product of the layers' exact constants: ``‖W‖₂`` (SVD of the dense matrix), slope bound, ``√m``."""
    total = 1.0
    for layer in net.layers:
        if isinstance(layer, Affine):
            dense = layer.weight.to_dense() if layer.structured else layer.weight
            total *= np.linalg.norm(dense, 2)
        elif isinstance(layer, ActivationLayer):
            lo, hi = layer.activation.slope_bounds(1)
            total *= max(abs(float(lo[0])), abs(float(hi[0])))
        elif isinstance(layer, MaxPool):
            total *= layer.lipschitz_constant()
    return total


def _matrix_free(monkeypatch, narrow: bool = True) -> None:
    """Force the matrix-free path (and power iteration when ``narrow`` is False)."""
    monkeypatch.setattr(lower, "_DENSE_MAX_MACS", -1)
    if not narrow:
        monkeypatch.setattr(lower, "_NARROW_MAX", 0)


# ----------------------------------------------------------------------------- (a) Jacobians
@pytest.mark.parametrize("seed", range(16))
def test_jacobians_match_torch_autograd(seed):
    model, shape = _random_cnn(seed)
    net = Network.from_torch(model, input_shape=shape)
    x = np.random.default_rng(seed).normal(size=(3, net.input_dim))
    expected = _torch_jacobian(model, shape, x)
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(lower.jacobians(net, x), expected, rtol=0, atol=1e-10 * scale)
    # forward mode through the operators, and through the dense matrices (max pools included)
    _, forward = lower._propagate(net.layers, x, None)
    np.testing.assert_allclose(forward, expected, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(lower.jacobians(net.densified(), x), expected, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(lower.jacobian_norms(net, x), np.linalg.norm(expected, 2, axis=(1, 2)), rtol=1e-9)


def _fixed_cnn(kind: str):
    """Hand-made CNNs with every layer kind at once (overlapping max pools, all padding modes)."""
    torch.manual_seed(7)
    if kind == "2d":
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=1, padding=1, padding_mode="reflect"), nn.BatchNorm2d(3), nn.LeakyReLU(0.2),
            nn.MaxPool2d(3, stride=1), nn.Conv2d(3, 2, 2, stride=2, padding=1, padding_mode="circular"), nn.Tanh(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        shape = (2, 7, 7)
    else:
        model = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv1d(2, 2, 2, padding=1,
                              padding_mode="circular"), nn.Tanh(), nn.Flatten(), nn.Linear(10, 12))
        shape = (1, 8)
    model = model.double().eval()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    return model, shape


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_jacobians_of_fixed_cnns_match_torch_autograd(kind):
    model, shape = _fixed_cnn(kind)
    net = Network.from_torch(model, input_shape=shape)
    x = np.random.default_rng(0).normal(size=(4, net.input_dim))
    expected = _torch_jacobian(model, shape, x)
    np.testing.assert_allclose(lower.jacobians(net, x), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lower._propagate(net.layers, x, None)[1], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lower.jacobians(net.densified(), x), expected, rtol=0, atol=1e-12)
    # the matrix-free maps directly: J v and Jᵀ w against the dense Jacobians (batched points, k vectors each)
    lin = lower._Linearization(net.layers, x)
    rng = np.random.default_rng(1)
    t, g = rng.normal(size=(4, 3, net.input_dim)), rng.normal(size=(4, 3, net.output_dim))
    np.testing.assert_allclose(lin.jvp(t), np.einsum("smn,skn->skm", expected, t), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lin.vjp(g), np.einsum("smn,skm->skn", expected, g), rtol=0, atol=1e-12)


def test_jacobian_of_a_residual_block_with_a_conv():
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular").double()
    net_conv = Network.from_torch(nn.Sequential(conv), input_shape=(2, 4, 4))
    branch = (net_conv.layers[0], ActivationLayer(rule_from_spec("tanh")),
              Affine.create(rng.normal(size=(32, 32)) / 6))
    net = Network([Residual(branch), Affine.create(rng.normal(size=(3, 32)))])
    x = rng.normal(size=(2, 32))
    _, forward = lower._propagate(net.layers, x, None)
    np.testing.assert_allclose(lower.jacobians(net, x), forward, rtol=0, atol=1e-12)
    eps, e = 1e-6, np.eye(32)
    numeric = np.stack([(net(x[:1] + eps * e[i]) - net(x[:1] - eps * e[i]))[0] / (2 * eps) for i in range(32)], axis=1)
    np.testing.assert_allclose(forward[0], numeric, atol=1e-7)
    lin = lower._Linearization(net.layers, x)
    t, g = rng.normal(size=(2, 2, 32)), rng.normal(size=(2, 2, 3))
    np.testing.assert_allclose(lin.jvp(t), np.einsum("smn,skn->skm", forward, t), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lin.vjp(g), np.einsum("smn,skm->skn", forward, g), rtol=0, atol=1e-12)


def test_group_activation_and_implicit_layer_after_a_conv(monkeypatch):
    rng = np.random.default_rng(4)
    torch.manual_seed(4)
    conv = Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 2, stride=2)).double(), input_shape=(1, 4, 4)).layers[0]
    implicit = Implicit.create(0.2 * rng.normal(size=(4, 4)), rng.normal(size=(4, 8)), rule_from_spec("tanh"),
                               b=rng.normal(size=4))
    net = Network([conv, ActivationLayer(rule_from_spec("maxmin")), implicit, Affine.create(rng.normal(size=(2, 4)))])
    x = rng.normal(size=(2, 16))
    eps, e = 1e-6, np.eye(16)
    numeric = np.stack([(net(x + eps * e[i]) - net(x - eps * e[i])) / (2 * eps) for i in range(16)], axis=2)
    np.testing.assert_allclose(lower.jacobians(net, x), numeric, atol=1e-7)
    np.testing.assert_allclose(lower._propagate(net.layers, x, None)[1], numeric, atol=1e-7)
    lin = lower._Linearization(net.layers, x)
    t = rng.normal(size=(2, 3, 16))
    np.testing.assert_allclose(lin.jvp(t), np.einsum("smn,skn->skm", numeric, t), atol=1e-6)
    _matrix_free(monkeypatch)
    lb = lower.gradient_lower_bound(net, **FAST)
    assert lb.value == pytest.approx(np.linalg.norm(lower.jacobians(net, lb.x[None])[0], 2), rel=1e-10)


def test_structured_row_norms_match_the_dense_rows():
    model, shape = _random_cnn(5)
    net = Network.from_torch(model, input_shape=shape)
    layer = next(l for l in net.layers if isinstance(l, Affine) and l.structured)
    norms, bias = lower._row_norms(layer)
    dense = np.linalg.norm(layer.weight.to_dense(), axis=1)
    picked = np.round(np.linspace(0, layer.out_dim - 1, min(layer.out_dim, lower._SIGMA_ROWS))).astype(int)
    np.testing.assert_allclose(norms, dense[np.unique(picked)], rtol=1e-12)
    np.testing.assert_array_equal(bias, layer.bias[np.unique(picked)])


# ----------------------------------------------------------------------------- (b) matrix-free search
@pytest.mark.parametrize("narrow", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 6, 9])
def test_matrix_free_value_is_a_rayleigh_quotient_at_its_point(monkeypatch, seed, narrow):
    model, shape = _random_cnn(seed)
    net = Network.from_torch(model, input_shape=shape)
    _matrix_free(monkeypatch, narrow)
    lb = lower.gradient_lower_bound(net, seed=seed, **FAST)
    assert lb.direction is not None
    jac = _torch_jacobian(model, shape, lb.x[None])[0]
    sigma = np.linalg.norm(jac, 2)
    assert lb.value == pytest.approx(np.linalg.norm(jac @ lb.direction) / np.linalg.norm(lb.direction), rel=RTOL)
    assert lb.value <= sigma * (1 + RTOL)
    # narrow side: the exact top singular vector; power iteration: converged at the reported point
    assert lb.value >= sigma * (1 - (RTOL if narrow else 1e-6))
    assert lb.value <= _norm_product(net) * (1 + 1e-9)


@pytest.mark.parametrize("narrow", [True, False])
def test_both_paths_find_the_norm_of_a_single_convolution(monkeypatch, narrow):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect")).double()
    net = Network.from_torch(model, input_shape=(2, 5, 5))
    sigma = np.linalg.norm(_torch_jacobian(model, (2, 5, 5), np.zeros((1, 50)))[0], 2)
    assert lower.gradient_lower_bound(net, **FAST).value == pytest.approx(sigma, rel=1e-12)
    _matrix_free(monkeypatch, narrow)
    assert lower.gradient_lower_bound(net, **FAST).value == pytest.approx(sigma, rel=1e-8)


@pytest.mark.parametrize("kind, rounds", [("2d", 100 // 20 * 12), ("1d", 100 // 4)])
def test_matrix_free_search_never_loses_the_sampled_best(monkeypatch, kind, rounds):
    """Max pools: hill climbing (12 candidates per start and round); a chain: the smooth ascent (1 per step)."""
    model, shape = _fixed_cnn(kind)
    net = Network.from_torch(model, input_shape=shape)
    _matrix_free(monkeypatch)
    sampled = lower.gradient_lower_bound(net, n_starts=3, steps=0, n_samples=96, seed=4)
    searched = lower.gradient_lower_bound(net, n_starts=3, steps=100, n_samples=96, seed=4)
    assert searched.value >= sampled.value * (1 - RTOL)
    assert searched.n_evaluations == sampled.n_evaluations + 3 * rounds


def test_matrix_free_surrogate_gradient_matches_the_dense_chain():
    model, shape = _fixed_cnn("1d")
    net = Network.from_torch(model, input_shape=shape)
    dense = net.densified()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, net.input_dim))
    free = lower._FreeSmoothChain(net, lower._chain_rules(net), rng)
    reference = lower._SmoothChain(dense, lower._elementwise_rules(dense))
    for tau in (0.5, 0.05):
        grad, norms = free.surrogate_gradient(x, tau)  # first step: exact top pairs (narrow side)
        grad_ref, norms_ref = reference.surrogate_gradient(x, tau)
        np.testing.assert_allclose(grad, grad_ref, rtol=0, atol=1e-10 * np.abs(grad_ref).max())
        np.testing.assert_allclose(norms, norms_ref, rtol=1e-10)
        free.warm = None


# ----------------------------------------------------------------------------- (c) soundness on random CNNs
SEEDS = range(100, 150)


def _upper(model, shape, method: str) -> float:
    try:
        return lipsdp.estimate(model, method=method, input_shape=shape).value
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"lipsdp.estimate(method={method!r}) on CNNs is not available yet: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("seed", SEEDS)
def test_lower_bound_is_attained_and_below_upper_bounds(monkeypatch, seed):
    model, shape = _random_cnn(seed)
    net = Network.from_torch(model, input_shape=shape)
    if seed % 2:  # half the nets through the matrix-free path
        _matrix_free(monkeypatch)
    lb = lower.gradient_lower_bound(net, n_starts=3, steps=20, n_samples=64, seed=seed)
    sigma = np.linalg.norm(_torch_jacobian(model, shape, lb.x[None])[0], 2)
    assert lb.value == pytest.approx(sigma, rel=1e-9)  # ‖J(x)‖ of the torch model at the returned point
    product = _norm_product(net)
    assert lb.value <= product * (1 + 1e-9)
    fd = lower.finite_difference_lower_bound(net, n_pairs=64, seed=seed)
    assert 0 <= fd.value <= product * (1 + 1e-6)
    # certified upper bounds (skipped, with the reason, while the CNN norm bounds are unavailable)
    assert lb.value <= _upper(model, shape, "naive") * (1 + 1e-9)
    assert lb.value <= _upper(model, shape, "lipsdp-neuron") * (1 + 1e-7)


# ----------------------------------------------------------------------------- (d) max pools
@pytest.mark.parametrize("free", [False, True])
def test_max_pool_spike_reaches_the_exact_constant(monkeypatch, free):
    net = Network.from_torch(nn.MaxPool2d(3, stride=1), input_shape=(1, 6, 6))
    pool = net.layers[0]
    assert isinstance(pool, MaxPool) and pool.lipschitz_constant() == 3.0
    if free:
        _matrix_free(monkeypatch)
    lb = lower.gradient_lower_bound(net, n_starts=4, steps=20, n_samples=256)
    assert 3.0 * (1 - 1e-9) <= lb.value <= 3.0 * (1 + 1e-12)


def test_max_pool_network_built_directly():
    net = Network([MaxPool.create((2, 5, 5), 2, stride=1)])
    lb = lower.gradient_lower_bound(net, n_starts=4, steps=20, n_samples=256)
    assert 2.0 * (1 - 1e-9) <= lb.value <= 2.0 * (1 + 1e-12)  # m = 4 windows share an inner input


# ----------------------------------------------------------------------------- exact pattern search
def test_exact_pattern_bound_on_a_tiny_conv_net():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double()
    net = Network.from_torch(model, input_shape=(1, 4))
    pb = lower.exact_pattern_bound(net)
    found = lower.gradient_lower_bound(net, n_starts=4, steps=40, n_samples=128).value
    assert found <= pb.max_realizable * (1 + 1e-9) <= pb.max_all_patterns * (1 + 2e-9)
    assert pb.max_realizable <= _norm_product(net) * (1 + 1e-9)
    jac = _torch_jacobian(model, (1, 4), pb.x[None])[0]
    assert pb.max_realizable == pytest.approx(np.linalg.norm(jac, 2), rel=1e-9)


def test_exact_pattern_bound_refuses_max_pools():
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1)).double()
    with pytest.raises(NotApplicableError, match="max pool"):
        lower.exact_pattern_bound(Network.from_torch(model, input_shape=(1, 3, 3)))
