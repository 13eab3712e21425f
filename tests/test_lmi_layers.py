"""lmi layers and networks: the LMI holds by construction, before and after training."""
from __future__ import annotations

import math

import pytest
import torch

import lmi
from lmi import functional as LF

PARAMS = lmi.parameterizations()
NETWORK_LEVEL = ["gershgorin", "ldlt", "sandwich"]
GAMMAS = [0.1, 1.0, 10.0, 100.0]



pytestmark = pytest.mark.usefixtures("torch_single_thread")

def _random_dims(seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(1, 4, (1,), generator=g))  # 1..3 hidden layers
    return [int(torch.randint(1, 13, (1,), generator=g)) for _ in range(depth + 2)]


def _tol(dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-5


def _steps(model, n_steps=50, lr=0.05, seed=0):
    """Take optimiser steps on a random regression target that wants a large slope."""
    g = torch.Generator().manual_seed(seed)
    dt = model.log_gamma.dtype
    X = torch.randn(64, model.dims[0], generator=g, dtype=dt)
    Y = 50.0 * torch.randn(64, model.dims[-1], generator=g, dtype=dt)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(n_steps):
        loss = torch.nn.functional.mse_loss(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_registry_sorted_and_complete():
    assert lmi.parameterizations() == sorted(lmi.parameterizations())
    assert set(lmi.parameterizations()) == {"sandwich", "ldlt", "gershgorin", "sll", "aol", "cayley", "spectral"}


def test_unknown_parameterization_is_typed():
    with pytest.raises(lmi.UnknownParameterizationError) as ei:
        lmi.lipschitz_mlp([2, 3, 1], 1.0, parameterization="nope")
    assert isinstance(ei.value, ValueError)
    assert "sandwich" in str(ei.value)


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lmi_holds_at_init_and_after_training(name, gamma, dtype):
    torch.manual_seed(PARAMS.index(name) * 100 + int(gamma * 10))
    dims = _random_dims(int(gamma * 7) + len(name))
    m = lmi.lipschitz_mlp(dims, gamma, parameterization=name, dtype=dtype)
    assert m.lmi_violation() <= _tol(dtype)
    _steps(m)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert m.lmi_violation() <= _tol(dtype)
    assert m.lipschitz_bound() == pytest.approx(gamma)


@pytest.mark.parametrize("name", PARAMS)
def test_empirical_lower_bound_below_gamma(name):
    torch.manual_seed(1)
    for gamma in (0.1, 10.0):
        m = lmi.lipschitz_mlp([3, 10, 7, 2], gamma, parameterization=name, dtype=torch.float64)
        _steps(m, 50)
        lb = lmi.empirical_lipschitz(m, n_starts=32, steps=40)
        assert 0.0 < lb <= gamma * (1 + 1e-9)


@pytest.mark.parametrize("name", PARAMS)
def test_bound_scales_as_gamma_not_inverse(name):
    """The inverted-gamma bug (bound 1/gamma) is caught two ways: a gamma = 0.1
    model never exceeds 0.1, and a gamma = 10 model can be trained past slope 1."""
    torch.manual_seed(0)
    small = lmi.lipschitz_mlp([1, 16, 16, 1], 0.1, parameterization=name, dtype=torch.float64)
    x = torch.linspace(-1, 1, 64, dtype=torch.float64).unsqueeze(1)
    y = 5.0 * x
    _fit(small, x, y, steps=150)
    assert lmi.empirical_lipschitz(small, steps=30) <= 0.1 * (1 + 1e-9)

    big = lmi.lipschitz_mlp([1, 16, 16, 1], 10.0, parameterization=name, dtype=torch.float64)
    _fit(big, x, y, steps=300)
    big.eval()
    with torch.no_grad():
        slope = float((big(x[-1:]) - big(x[:1])).abs() / 2.0)
    assert slope > 1.5, f"{name}: gamma=10 model only reaches slope {slope}"
    assert lmi.empirical_lipschitz(big, steps=30) <= 10.0 * (1 + 1e-9)


@pytest.mark.parametrize("name", NETWORK_LEVEL)
def test_gamma_enters_linearly_with_zero_biases(name):
    """With zero biases and ReLU, f_gamma = (gamma / gamma') f_gamma' for the same
    free parameters: the bound is gamma, not 1/gamma (LDL^T/Gershgorin check)."""
    torch.manual_seed(3)
    m1 = lmi.lipschitz_mlp([4, 8, 6, 3], 1.0, parameterization=name, dtype=torch.float64)
    with torch.no_grad():
        for mod in m1.modules():
            if hasattr(mod, "bias") and isinstance(mod.bias, torch.nn.Parameter):
                mod.bias.zero_()
    m10 = lmi.lipschitz_mlp([4, 8, 6, 3], 10.0, parameterization=name, dtype=torch.float64)
    sd = {k: v for k, v in m1.state_dict().items() if k != "log_gamma"}
    m10.load_state_dict(sd, strict=False)
    m1.eval(), m10.eval()
    x = torch.randn(20, 4, dtype=torch.float64)
    torch.testing.assert_close(m10(x), 10.0 * m1(x))


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("scale", [0.0, 1e-4, 1e3])
def test_gradients_finite_at_extreme_parameters(name, scale):
    torch.manual_seed(0)
    m = lmi.lipschitz_mlp([5, 6, 4, 3], 2.0, parameterization=name, dtype=torch.float64)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "log" in n or n.endswith(".q") or n.endswith(".d"):
                continue
            p.mul_(scale)
    x = torch.randn(16, 5, dtype=torch.float64)
    m.train()
    out = m(x)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for n, p in m.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    assert m.lmi_violation() <= 1e-9


@pytest.mark.parametrize("name", PARAMS)
def test_extreme_log_parameters(name):
    """Large multipliers / scalings (log-parameters at +-8) keep outputs, grads and the LMI sane."""
    torch.manual_seed(0)
    m = lmi.lipschitz_mlp([5, 6, 4, 3], 1.0, parameterization=name, dtype=torch.float64)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ("log_lambda" in n or "log_s0" in n or n.endswith(".q") or n.endswith(".d")):
                p.copy_(8.0 * torch.sign(torch.randn_like(p)))
    x = torch.randn(16, 5, dtype=torch.float64)
    out = m(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.lmi_violation() <= 1e-8


@pytest.mark.parametrize("name", PARAMS)
def test_learnable_gamma(name):
    m = lmi.lipschitz_mlp([3, 5, 2], 2.0, parameterization=name, learn_gamma=True, dtype=torch.float64)
    assert isinstance(m.log_gamma, torch.nn.Parameter)
    _steps(m, 20)
    assert m.log_gamma.grad is not None
    g = m.lipschitz_bound()
    assert g != pytest.approx(2.0)
    assert m.lmi_violation() <= 1e-9
    assert lmi.empirical_lipschitz(m, steps=20) <= g * (1 + 1e-9)


@pytest.mark.parametrize("name", PARAMS)
def test_no_lazy_parameters_and_dtypes(name):
    for dt in (torch.float32, torch.float64):
        m = lmi.lipschitz_mlp([4, 5, 3], 1.0, parameterization=name, dtype=dt)
        n_before = sum(p.numel() for p in m.parameters())
        assert all(p.dtype == dt for p in m.parameters())
        assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in m.parameters())
        out = m(torch.randn(2, 4, dtype=dt))
        assert out.dtype == dt and out.shape == (2, 3)
        assert sum(p.numel() for p in m.parameters()) == n_before
    m = lmi.lipschitz_mlp([4, 5, 3], 1.0, parameterization=name).double()
    assert m(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", PARAMS)
def test_caching_eval_and_invalidation(name):
    torch.manual_seed(0)
    m = lmi.lipschitz_mlp([4, 6, 3], 1.0, parameterization=name, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    m.eval()
    y0 = m(x)
    c0 = m._cache
    assert c0 is not None
    m(x)
    assert m._cache is c0  # reused
    # an in-place parameter update in eval mode invalidates through the version counter
    with torch.no_grad():
        next(iter(m.layers.parameters()) if hasattr(m, "layers") else m.parameters()).add_(0.1)
    y1 = m(x)
    assert m._cache is not c0
    assert not torch.allclose(y0, y1)
    # load_state_dict invalidates
    other = lmi.lipschitz_mlp([4, 6, 3], 1.0, parameterization=name, dtype=torch.float64)
    other.eval()
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(m(x), other(x))
    # train() clears and training mode recomputes every call (gradients flow)
    m.train()
    assert m._cache is None
    m(x).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("name", ["sandwich", "ldlt", "gershgorin", "aol"])
def test_other_slope_restricted_activations(name, activation):
    torch.manual_seed(0)
    m = lmi.lipschitz_mlp([3, 8, 2], 2.0, parameterization=name, activation=activation, dtype=torch.float64)
    _steps(m, 20)
    assert m.lmi_violation() <= 1e-9
    assert lmi.empirical_lipschitz(m, steps=20) <= 2.0 * (1 + 1e-9)


# ---------------------------------------------------------------- sandwich identities
@pytest.mark.parametrize("p,q", [(3, 5), (6, 2), (4, 4), (1, 7)])
def test_cayley_gives_AAt_plus_BBt_identity(p, q):
    torch.manual_seed(p * 10 + q)
    X = torch.randn(q, q, dtype=torch.float64)
    Y = torch.randn(p, q, dtype=torch.float64)
    C, D = LF.cayley(X, Y)
    A, B = C.T, D.T
    torch.testing.assert_close(A @ A.T + B @ B.T, torch.eye(q, dtype=torch.float64))


@pytest.mark.parametrize("p,q", [(3, 5), (6, 2)])
def test_sandwich_layer_is_one_lipschitz_with_psi_witness(p, q):
    torch.manual_seed(0)
    layer = lmi.SandwichLinear(p, q, dtype=torch.float64)
    with torch.no_grad():
        layer.d.copy_(torch.randn(q))
    A, B, psi = layer.factors()
    W1 = math.sqrt(2) * B / psi.unsqueeze(1)
    W2 = math.sqrt(2) * A.T * psi.unsqueeze(0)
    assert LF.lmi_max_eig([W1, W2], [psi ** 2], 1.0) <= 1e-10
    x = torch.randn(7, p, dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.relu(x @ W1.T + layer.bias) @ W2.T)


def test_semi_orthogonal_and_contraction():
    torch.manual_seed(0)
    for out, inp in [(3, 7), (7, 3), (5, 5)]:
        P = torch.randn(max(out, inp), min(out, inp), dtype=torch.float64)
        W = LF.semi_orthogonal(P, out, inp)
        assert W.shape == (out, inp)
        k = min(out, inp)
        G = W @ W.T if out <= inp else W.T @ W
        torch.testing.assert_close(G, torch.eye(k, dtype=torch.float64))
        V = 10 * torch.randn(out, inp, dtype=torch.float64)
        Wt, Linv = LF.contraction(V, 0.5)
        torch.testing.assert_close(torch.eye(out, dtype=torch.float64) - Wt @ Wt.T, 0.5 * Linv @ Linv.T)
        assert torch.linalg.matrix_norm(Wt, ord=2) < 1


def test_gershgorin_rowsum_dominates():
    torch.manual_seed(0)
    V = torch.randn(6, 9, dtype=torch.float64)
    q = torch.randn(6, dtype=torch.float64)
    t = LF.sll_diag(V, q)
    assert torch.linalg.eigvalsh(torch.diag(t) - V @ V.T).min() >= -1e-10
    W = LF.aol_scale(V.T)
    assert torch.linalg.matrix_norm(W, ord=2) <= 1 + 1e-12


@pytest.mark.parametrize("cls", [lmi.AOLLinear, lmi.CayleyLinear, lmi.SpectralLinear, lmi.GershgorinLinear])
def test_standalone_linear_layers_are_contractions(cls):
    torch.manual_seed(0)
    for out, inp in [(3, 8), (8, 3)]:
        layer = cls(inp, out, dtype=torch.float64)
        assert torch.linalg.matrix_norm(layer.weight(), ord=2) <= 1 + 1e-12


def test_sll_block_lmi_and_lipschitz():
    torch.manual_seed(0)
    blk = lmi.SLLBlock(6, 9, dtype=torch.float64)
    assert blk.lmi_min_eig() >= -1e-12
    x = torch.randn(100, 6, dtype=torch.float64)
    y = x + 1e-3 * torch.randn_like(x)
    ratio = (blk(x) - blk(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max() <= 1 + 1e-9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PARAMS)
def test_cuda(name):
    m = lmi.lipschitz_mlp([4, 8, 3], 2.0, parameterization=name, device="cuda")
    x = torch.randn(5, 4, device="cuda")
    out = m(x)
    out.sum().backward()
    assert out.device.type == "cuda"
    m.eval()
    plain = lmi.to_plain(m)
    torch.testing.assert_close(plain(x), m(x), atol=1e-5, rtol=1e-5)
    m64 = lmi.lipschitz_mlp([4, 8, 3], 2.0, parameterization=name, device="cuda", dtype=torch.float64)
    assert m64.lmi_violation() <= 1e-9


def _fit(model, x, y, steps: int, lr: float = 0.02) -> None:
    """Adam on the mean squared error of ``model(x)`` against ``y``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
