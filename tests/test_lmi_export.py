"""lmi.to_plain: exact export, witnesses checked without a solver, and lipsdp re-certification."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lmi
from lipsdp.nn import Residual
from lmi import functional as LF

PARAMS = lmi.parameterizations()
NETWORK_LEVEL = ["gershgorin", "ldlt", "sandwich"]
LINEAR_BASELINES = ["aol", "cayley", "spectral"]



pytestmark = pytest.mark.usefixtures("torch_single_thread")

def _trained(name, dims, gamma, steps=50, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = lmi.lipschitz_mlp(dims, gamma, parameterization=name, dtype=dtype)
    X = torch.randn(64, dims[0], dtype=dtype)
    Y = 3.0 * gamma * torch.randn(64, dims[-1], dtype=dtype)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(steps):
        loss = nn.functional.mse_loss(m(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("dims", [[3, 7, 2], [6, 4, 9, 3], [2, 5], [8, 3, 3, 3, 1]])
def test_to_plain_is_equivalent(name, dims):
    m = _trained(name, dims, 2.0, steps=10)
    plain = lmi.to_plain(m)
    assert isinstance(plain, nn.Sequential)
    assert all(isinstance(mod, (nn.Linear, nn.ReLU, Residual)) for mod in plain)
    assert isinstance(plain[0], nn.Linear) and isinstance(plain[-1], nn.Linear)
    x = 3 * torch.randn(200, dims[0], dtype=torch.float64)
    torch.testing.assert_close(plain(x), m(x), atol=1e-6, rtol=0)
    # training mode gives the same function too
    m.train()
    torch.testing.assert_close(plain(x), m(x).detach(), atol=1e-6, rtol=0)


def test_to_plain_keeps_activation_module():
    m = lmi.lipschitz_mlp([3, 5, 2], 1.0, parameterization="sandwich", activation="tanh", dtype=torch.float64)
    plain = lmi.to_plain(m)
    assert isinstance(plain[1], nn.Tanh)
    x = torch.randn(10, 3, dtype=torch.float64)
    m.eval()
    torch.testing.assert_close(plain(x), m(x), atol=1e-6, rtol=0)


def test_sll_export_with_tanh_is_equivalent_and_certified():
    m = lmi.lipschitz_mlp([3, 5, 2], 1.0, parameterization="sll", activation="tanh", dtype=torch.float64).eval()
    plain = lmi.to_plain(m)
    x = torch.randn(20, 3, dtype=torch.float64)
    torch.testing.assert_close(plain(x), m(x), atol=1e-10, rtol=0)
    assert float(lipsdp.estimate(plain)) <= 1.0 * (1 + 1e-6)


@pytest.mark.parametrize("name", NETWORK_LEVEL + LINEAR_BASELINES)
@pytest.mark.parametrize("gamma", [0.1, 1.0, 10.0, 100.0])
def test_witness_certifies_gamma_without_solver(name, gamma):
    m = _trained(name, [4, 9, 6, 3], gamma)
    ok, v = lmi.check_witness(m)
    assert ok, v
    rho, lams = lmi.witness(m)
    assert rho == pytest.approx(gamma ** 2)
    assert all((lam >= 0).all() for lam in lams)


def test_witness_is_not_trivially_satisfied():
    """Scaling the last weight up by 1 % must break the sandwich witness (it is tight)."""
    m = _trained("sandwich", [4, 9, 6, 3], 1.0)
    rho, lams = lmi.witness(m)
    Ws = [W for W, _ in lmi.plain_weights(m)]
    assert LF.lmi_max_eig(Ws, lams, rho) <= 1e-9
    Ws[-1] = 1.01 * Ws[-1]
    assert LF.lmi_max_eig(Ws, lams, rho) > 1e-6


def test_sandwich_closed_form_export():
    torch.manual_seed(5)
    gamma = 3.0
    m = lmi.lipschitz_mlp([4, 7, 5, 2], gamma, parameterization="sandwich", dtype=torch.float64)
    with torch.no_grad():
        for layer in m.layers[:-1]:
            layer.d.copy_(torch.randn_like(layer.d))
    facs = m.factors()
    n0, nL = m.dims[0], m.dims[-1]
    A_prev, psi_prev = torch.eye(n0, dtype=torch.float64), math.sqrt(gamma / 2) * torch.ones(n0, dtype=torch.float64)
    expected = []
    for k, (A, B, psi) in enumerate(facs):
        if psi is None:  # last layer: Psi_L = sqrt(2/gamma) I
            psi = math.sqrt(2 / gamma) * torch.ones(nL, dtype=torch.float64)
        W = 2 * torch.diag(1 / psi) @ B @ A_prev.T @ torch.diag(psi_prev)
        expected.append(W)
        A_prev, psi_prev = A, psi
    got = [W for W, _ in lmi.plain_weights(m)]
    for W, E in zip(got, expected):
        torch.testing.assert_close(W, E)
    # witness Lambda_k = gamma Psi_k^2
    rho, lams = lmi.witness(m)
    for lam, (_, _, psi) in zip(lams, facs[:-1]):
        torch.testing.assert_close(lam, gamma * psi ** 2)


@pytest.mark.parametrize("name", ["ldlt", "gershgorin"])
def test_inverted_gamma_would_fail(name):
    """The certificate is for gamma, not 1/gamma: the witness fails at rho = 1/gamma^2
    for gamma = 10, and at gamma = 0.1 the plain net's exact Jacobian never exceeds 0.1."""
    m = _trained(name, [3, 8, 8, 2], 10.0, steps=80)
    rho, lams = lmi.witness(m)
    Ws = [W for W, _ in lmi.plain_weights(m)]
    assert LF.lmi_max_eig(Ws, lams, rho) <= 1e-9
    assert LF.lmi_max_eig(Ws, lams, 1.0 / rho) > 0
    small = _trained(name, [3, 8, 8, 2], 0.1, steps=80)
    J = lmi.jacobian_norms(lmi.to_plain(small), torch.randn(256, 3, dtype=torch.float64))
    assert float(J.detach().max()) <= 0.1 * (1 + 1e-9)


import lipsdp  # noqa: E402  (the solver half; these tests cross-check lmi against it)


@pytest.mark.parametrize("name", NETWORK_LEVEL + LINEAR_BASELINES + ["sll"])
@pytest.mark.parametrize("gamma", [0.1, 1.0, 10.0, 100.0])
def test_lipsdp_certifies_exported_model(name, gamma):
    dims = [[5, 12, 3], [4, 10, 7, 2], [6, 3, 8, 4], [2, 9, 5, 3]][[0.1, 1.0, 10.0, 100.0].index(gamma)]
    for steps in (0, 50):
        m = _trained(name, dims, gamma, steps=steps, seed=steps)
        plain = lmi.to_plain(m)
        b = lipsdp.estimate(plain, method="lipsdp-neuron")
        assert float(b) <= gamma * (1 + 1e-6), (name, gamma, steps, float(b))
        lb = lmi.empirical_lipschitz(m, steps=20)
        assert lb <= float(b) * (1 + 1e-6)
        if name in LINEAR_BASELINES:  # layer-wise: product of layer bounds (naive) <= gamma
            assert float(lipsdp.estimate(plain, method="naive")) <= gamma * (1 + 1e-6)
            assert max(m.layer_bounds()) <= 1 + 1e-9


@pytest.mark.parametrize("gamma", [0.1, 10.0])
def test_sll_layerwise_bound_and_export(gamma):
    """SLL is certified per block (T - V V^T >= 0), and LipSDP on the residual export certifies gamma too."""
    m = _trained("sll", [4, 6, 5, 2], gamma, steps=50)
    assert m.lmi_violation() <= 1e-9
    assert m.layer_bounds() == [1.0] * len(m.layer_bounds())
    plain = lmi.to_plain(m)
    b = float(lipsdp.estimate(plain, method="lipsdp-neuron"))
    lb = lmi.empirical_lipschitz(m, steps=20)
    assert b <= gamma * (1 + 1e-6)
    assert lb <= b * (1 + 1e-6)


def test_network_level_tighter_than_naive_product():
    """For the network-level parameterizations the product of layer norms of the
    exported weights typically exceeds gamma, yet LipSDP certifies gamma."""
    m = _trained("sandwich", [4, 16, 16, 3], 1.0, steps=100)
    plain = lmi.to_plain(m)
    naive = float(lipsdp.estimate(plain, method="naive"))
    sdp = float(lipsdp.estimate(plain, method="lipsdp-neuron"))
    assert sdp <= 1.0 * (1 + 1e-6)
    assert naive >= sdp
