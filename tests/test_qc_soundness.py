"""Soundness of the new QCs on random MaxMin / GroupSort / Householder / residual / implicit nets."""

from __future__ import annotations

import numpy as np
import pytest

import lipsdp
from lipsdp.errors import IllPosedError, InvalidActivationError
from lipsdp.group_activations import GroupSort, Householder
from lipsdp.lower import finite_difference_lower_bound, gradient_lower_bound
from lipsdp.network import ActivationLayer, Affine, Implicit, Network, Residual


def _rule(kind: int):
    return [GroupSort(2), GroupSort(3), GroupSort(4), Householder(np.array([1.0, -0.5, 2.0, 0.3])),
            GroupSort(2, "split")][kind]


def _net(seed: int) -> tuple[Network, str]:
    """Random small net: feed-forward, residual or implicit, with a group activation."""
    rng = np.random.default_rng(seed)
    rule = _rule(seed % 5)
    g = rule.group_size
    n = g * int(rng.integers(1, 3)) if g > 2 else 2 * int(rng.integers(1, 4))
    n0, p = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    scale = float(np.exp(rng.uniform(-1, 1)))
    shape = ["feedforward", "residual", "implicit"][(seed // 5) % 3]
    w = lambda a, b: scale * rng.normal(size=(a, b)) / np.sqrt(b)  # noqa: E731
    if shape == "feedforward":
        ws = [w(n, n0), w(n, n), w(p, n)]
        return Network.from_weights(ws, [rng.normal(size=x.shape[0]) for x in ws], rule), shape
    if shape == "residual":
        layers = [Affine.create(w(n, n0), rng.normal(size=n))]
        for _ in range(2):
            layers.append(Residual((Affine.create(w(n, n), rng.normal(size=n)), ActivationLayer(rule))))
        return Network(layers + [Affine.create(w(p, n))]), shape
    a = rng.normal(size=(n, n))
    layer = Implicit.create(0.6 * a / np.linalg.norm(a, 2), w(n, n0), rule, b=rng.normal(size=n),
                            C=w(p, n), D=w(p, n0))
    return Network([layer]), shape


def _difference_quotients(net: Network, seed: int, n: int = 400) -> float:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, net.input_dim)) * rng.exponential(size=(n, 1))
    y = x + 1e-3 * rng.normal(size=x.shape)
    return float(np.max(np.linalg.norm(net(x) - net(y), axis=1) / np.linalg.norm(x - y, axis=1)))


@pytest.mark.parametrize("seed", range(60))
def test_certified_bound_is_above_lower_bounds(seed):
    net, shape = _net(seed)
    b = lipsdp.estimate(net)
    lower = max(gradient_lower_bound(net, n_starts=4, steps=20, n_samples=256).value,
                finite_difference_lower_bound(net, 400).value, _difference_quotients(net, seed))
    assert b.value >= lower * (1 - 1e-9), (shape, net.summary())
    if shape != "implicit":
        assert b.value <= lipsdp.estimate(net, method="naive").value * (1 + 1e-6)


def test_implicit_fixed_point_is_reached():
    net, _ = _net(10)  # implicit
    layer = net.layers[0]
    x = np.random.default_rng(0).normal(size=(5, layer.in_dim))
    z = layer.equilibrium(x)
    np.testing.assert_allclose(z, layer.activation.forward_batch(z @ layer.W.T + x @ layer.U.T + layer.b), atol=1e-10)


@pytest.mark.parametrize("g", [2, 3, 4])
@pytest.mark.parametrize("n_groups, depth", [(1, 2), (3, 3)])
def test_orthogonal_nets_are_exactly_one_with_exact_cross_terms(g, n_groups, depth):
    from scipy.stats import ortho_group

    n = g * n_groups
    ws = [ortho_group.rvs(n, random_state=100 * g + k) for k in range(depth + 1)]
    net = Network.from_weights(ws, activation=GroupSort(g, cross_terms="exact"))
    assert lipsdp.estimate(net).value == pytest.approx(1.0, abs=2e-6)
    # row-orthonormal first layer (wide hidden layer): still exactly 1
    wide = Network.from_weights([ortho_group.rvs(2 * n, random_state=g)[:, :n], ortho_group.rvs(2 * n, random_state=7)],
                                activation=GroupSort(g))
    assert lipsdp.estimate(wide).value == pytest.approx(1.0, abs=2e-6)


def test_ill_posed_implicit_layer_is_rejected():
    w = 3.0 * np.eye(4)
    net = Network([Implicit.create(w, np.ones((4, 2)), GroupSort(2))])
    with pytest.raises(IllPosedError, match="not well posed"):
        lipsdp.estimate(net)


# ----------------------------------------------------------------------------- torch
def _torch_model():
    torch = pytest.importorskip("torch")
    from torch import nn

    from lipsdp import nn as lnn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8), lnn.MaxMin(), nn.Linear(8, 6), lnn.GroupSort(3), nn.Linear(6, 6), nn.ReLU(),
        lnn.Residual(nn.Sequential(nn.Linear(6, 6), lnn.Householder(torch.tensor([1.0, 2.0, -1.0])))),
        lnn.Implicit(6, 4, activation=lnn.MaxMin(), scale=0.5), nn.Linear(4, 3),
    ).double()


def test_torch_model_of_lipsdp_nn_modules_converts_and_certifies():
    torch = pytest.importorskip("torch")
    model = _torch_model()
    net = Network.from_torch(model)
    x = np.random.default_rng(0).normal(size=(64, 5))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x), expected, atol=1e-10, rtol=0)
    b = lipsdp.estimate(model)
    exact = lipsdp.estimate(model, cross_terms="exact")
    lower = max(gradient_lower_bound(net, n_starts=4, steps=20).value, _difference_quotients(net, 1))
    assert lower <= exact.value <= b.value * (1 + 1e-6)
    assert b.value <= lipsdp.estimate(model, solver="cvxopt").value * (1 + 1e-5)


def test_torch_modules_reject_bad_input():
    pytest.importorskip("torch")
    import torch

    from lipsdp import nn as lnn

    with pytest.raises(InvalidActivationError):
        lnn.GroupSort(3)(torch.zeros(2, 4))
    with pytest.raises(InvalidActivationError):
        lnn.Householder(torch.zeros(3))
