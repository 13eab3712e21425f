"""Fourier-domain Lipschitz convolutions of lmi.conv: sandwich, Cayley-orthogonal and BRO.

Independent references: torch's own circular ``F.conv2d`` (for the Fourier maths and the
exports), dense Jacobians of the exports (singular values), lipsdp's certified bound of the
float64 export, lmi's solver-free LipSDP matrix at the sandwich witness, and adversarially
trained finite-difference quotients.
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import lipsdp  # noqa: E402
import lmi  # noqa: E402
from lipsdp.nn import MaxMin  # noqa: E402
from lmi import fourier as FT  # noqa: E402
from lmi import functional as LF  # noqa: E402
from lmi.conv import BROConv2d, CayleyConv2d, SandwichConv2d  # noqa: E402

GAMMAS = (0.1, 1.0, 10.0)
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: 1e-4, torch.float64: 1e-6}

#: layer x accepted activation, on tiny images with odd and even sides
CASES = {
    "sandwich-relu": lambda g, dt: SandwichConv2d(2, 3, (4, 5), activation="relu", gamma=g, dtype=dt),
    "sandwich-tanh": lambda g, dt: SandwichConv2d(2, 2, (5, 4), activation="tanh", gamma=g, dtype=dt),
    "sandwich-output": lambda g, dt: SandwichConv2d(3, 2, (5, 4), output=True, gamma=g, dtype=dt),
    "cayley-widen": lambda g, dt: CayleyConv2d(2, 3, (4, 5), gamma=g, dtype=dt),
    "cayley-narrow-relu": lambda g, dt: CayleyConv2d(3, 2, (5, 4), gamma=g, activation="relu", dtype=dt),
    "cayley-maxmin": lambda g, dt: CayleyConv2d(2, 2, (5, 4), gamma=g, activation="maxmin", kernel_size=2, dtype=dt),
    "bro": lambda g, dt: BROConv2d(3, (4, 4), rank=1, gamma=g, dtype=dt),
    "bro-relu": lambda g, dt: BROConv2d(2, (5, 4), rank=1, gamma=g, activation="relu", dtype=dt),
    "bro-maxmin": lambda g, dt: BROConv2d(3, (4, 6), rank=2, gamma=g, activation="maxmin", dtype=dt),
}
ORTHOGONAL = [name for name in CASES if not name.startswith("sandwich")]


@pytest.fixture(autouse=True)
def _single_thread(torch_single_thread):
    """Tiny batched solves and FFTs are faster on one thread (the machine is shared)."""


def _make(name: str, gamma: float, dtype, seed: int = 0):
    """The layer with every parameter perturbed (``d`` away from 0, so ``Psi != I``)."""
    torch.manual_seed(seed)
    layer = CASES[name](gamma, dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def _input(layer, batch: int = 4, seed: int = 1, dtype=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, layer.in_channels, *layer.image_size, generator=g, dtype=torch.float64).to(
        dtype or layer.gamma.dtype)


def _certifiable(plain: nn.Sequential) -> nn.Sequential:
    """lipsdp reads group activations on flat vectors: flatten before MaxMin.

    MaxMin pairs neighbours along the last axis, so on a (C, H, W) map of even width it
    makes the same pairs as on the flattened vector; the flattened output has the same norm.
    """
    mods = []
    for m in plain:
        if isinstance(m, MaxMin):
            mods.append(nn.Flatten())
        mods.append(m)
    return nn.Sequential(*mods)


def _dense(module: nn.Module, shape: tuple) -> torch.Tensor:
    """Dense float64 matrix of a linear module acting on images of ``shape`` (C, H, W)."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        return module(basis).reshape(n, -1).T


def _linear_part(plain: nn.Sequential) -> nn.Conv2d:
    conv = plain[0]
    lin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                    padding_mode="circular", bias=False, dtype=conv.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(conv.weight)
    return lin


# ----------------------------------------------------------------------------- Fourier maths
@pytest.mark.parametrize("H,W,k", [(4, 4, 3), (5, 6, 3), (6, 5, 5), (4, 5, 1), (2, 3, 3), (5, 4, 2)])
def test_symbol_is_that_of_torch_circular_conv(H, W, k):
    torch.manual_seed(H * 10 + W + k)
    w = torch.randn(3, 2, k, k, dtype=torch.float64)
    x = torch.randn(5, 2, H, W, dtype=torch.float64)
    p = (k // 2, k // 2)
    reference = F.conv2d(F.pad(x, (p[1], p[1], p[0], p[0]), mode="circular"), w)[..., :H, :W]
    symbol = FT.conv_symbol(w, (H, W), p)
    assert symbol.shape == (H, W // 2 + 1, 3, 2)
    torch.testing.assert_close(FT.apply_symbol(symbol, x), reference, rtol=0, atol=1e-12)
    # and back: a kernel of the image size whose circular conv keeps the size and has that symbol
    weight, pad = FT.symbol_to_conv_weight(symbol, (H, W))
    assert weight.shape[-2:] == (H + 1 - H % 2, W + 1 - W % 2)
    conv = nn.Conv2d(2, 3, weight.shape[-2:], padding=pad, padding_mode="circular", bias=False, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(weight)
        torch.testing.assert_close(conv(x), reference, rtol=0, atol=1e-12)


def test_complex_cayley_and_block_reflector():
    torch.manual_seed(3)
    X = torch.randn(7, 3, 3, dtype=torch.complex128)
    Y = torch.randn(7, 2, 3, dtype=torch.complex128)
    C, D = FT.cayley(X, Y)
    eye = torch.eye(3, dtype=torch.complex128)
    torch.testing.assert_close(C.mH @ C + D.mH @ D, eye.expand(7, 3, 3), rtol=0, atol=1e-12)
    # real inputs: the real Cayley transform of lmi.functional
    Xr, Yr = X.real[0], Y.real[0]
    Cr, Dr = LF.cayley(Xr, Yr)
    C0, D0 = FT.cayley(Xr, Yr)
    torch.testing.assert_close(C0, Cr)
    torch.testing.assert_close(D0, Dr)
    # block reflector: the paper's formula, unitary, conjugation-equivariant
    V = torch.randn(7, 4, 2, dtype=torch.complex128)
    W = FT.block_reflector(V)
    formula = torch.eye(4, dtype=torch.complex128) - 2 * V @ torch.linalg.solve(V.mH @ V, V.mH)
    torch.testing.assert_close(W, formula, rtol=0, atol=1e-12)
    torch.testing.assert_close(W.mH @ W, torch.eye(4, dtype=torch.complex128).expand(7, 4, 4), rtol=0, atol=1e-12)
    torch.testing.assert_close(FT.block_reflector(V.conj()), W.conj(), rtol=0, atol=1e-12)


def test_fourier_maps_have_correct_gradients():
    torch.manual_seed(5)
    X = torch.randn(3, 3, 3, dtype=torch.complex128, requires_grad=True)
    Y = torch.randn(3, 2, 3, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda X, Y: torch.cat(FT.cayley(X, Y), dim=-2), (X, Y))
    V = torch.randn(3, 4, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(FT.block_reflector, (V,))
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, x: FT.apply_symbol(FT.conv_symbol(w, (4, 5), (1, 1)), x), (w, x))


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", list(CASES))
def test_export_equals_layer(name, gamma, dtype):
    layer = _make(name, gamma, dtype).eval()
    x = _input(layer)
    plain = layer.to_plain()
    assert all(m.padding_mode == "circular" for m in plain if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        y = layer(x)
        assert y.shape == (x.shape[0], layer.out_channels) + layer.image_size
        scale = max(1.0, float(y.abs().max()))
        assert float((plain(x) - y).abs().max()) <= TOL[dtype] * scale
        # the float64 export evaluates the construction in float64: equal up to the layer's own rounding
        y64 = layer.to_plain(torch.float64)(x.double())
        assert float((y64 - y.double()).abs().max()) <= TOL[dtype] * scale
    assert layer.lipschitz_bound() == pytest.approx(gamma, rel=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", list(CASES))
def test_lipsdp_certifies_float64_export(name, gamma, dtype):
    layer = _make(name, gamma, dtype)
    plain = _certifiable(layer.to_plain(torch.float64))
    bound = lipsdp.estimate(plain, method="lipsdp-neuron", input_shape=(layer.in_channels,) + layer.image_size)
    assert float(bound.value) <= gamma * (1 + 1e-6)
    if name in ("cayley-widen", "bro"):  # isometries: nothing below gamma can be certified
        assert float(bound.value) >= gamma * (1 - 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", ORTHOGONAL)
def test_orthogonal_export_singular_values(name, gamma, dtype):
    layer = _make(name, gamma, dtype)
    shape = (layer.in_channels,) + layer.image_size
    dense = _dense(_linear_part(layer.to_plain(torch.float64)), shape)
    sv = torch.linalg.svdvals(dense)
    assert sv.numel() == min(dense.shape)
    torch.testing.assert_close(sv, torch.full_like(sv, gamma), rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", ["sandwich-relu", "sandwich-tanh"])
def test_sandwich_export_satisfies_lipsdp_lmi_at_witness(name, gamma):
    """The plain convolutions satisfy M(gamma², gamma Psi²) <= 0 (solver-free check)."""
    layer = _make(name, gamma, torch.float64)
    plain = layer.to_plain()
    shape = (layer.in_channels,) + layer.image_size
    W1 = _dense(_linear_part(plain), shape)
    W2 = _dense(plain[2], (layer.out_channels,) + layer.image_size)
    rho, lam = layer.witness()
    lam_full = lam.repeat_interleave(math.prod(layer.image_size))  # one multiplier per channel, every pixel
    M = LF.lipsdp_matrix([W1, W2], [lam_full], rho)
    assert LF.relative_max_eig(M, scale=max(rho, float(lam.max()))) <= 1e-9
    # and a smaller rho fails: the certificate is tight, so the check can fail
    assert LF.relative_max_eig(LF.lipsdp_matrix([W1, W2], [lam_full], 0.9 * rho)) > 1e-6


def test_layers_in_a_net_with_channel_maxmin_are_certified():
    """Cayley -> ChannelMaxMin -> BRO -> ChannelMaxMin -> sandwich: bound 2 * 3 * 0.5."""
    blocks = pytest.importorskip("lmi.blocks")
    torch.manual_seed(4)
    net = nn.Sequential(CayleyConv2d(1, 2, (4, 5), gamma=2.0, dtype=torch.float64), blocks.ChannelMaxMin(),
                        BROConv2d(2, (4, 5), rank=1, gamma=3.0, dtype=torch.float64), blocks.ChannelMaxMin(),
                        SandwichConv2d(2, 2, (4, 5), gamma=0.5, dtype=torch.float64))
    plain = blocks.export_sequential(net)
    x = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=1e-12)
    bound = lipsdp.estimate(plain, method="lipsdp-neuron", input_shape=(1, 4, 5))
    assert float(bound.value) <= 3.0 * (1 + 1e-6)


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", list(CASES))
def test_adversarial_difference_quotients_stay_below_gamma(name, gamma):
    layer = _make(name, gamma, torch.float64).eval()
    x = _input(layer, batch=2, seed=2).requires_grad_(True)
    y = _input(layer, batch=2, seed=3).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    worst = 0.0
    for _ in range(30):
        num = (layer(x) - layer(y)).flatten(1).norm(dim=1)
        den = (x - y).flatten(1).norm(dim=1)
        ratio = num / den
        worst = max(worst, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    assert worst <= gamma * (1 + 1e-9)
    assert worst > 0.05 * gamma  # the quotient is measured, not vanishing


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_training_step_keeps_the_bound(name, dtype):
    gamma = 2.0
    layer = _make(name, gamma, dtype).train()
    before = {k: p.detach().clone() for k, p in layer.named_parameters()}
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)  # moves every parameter by about lr
    loss = layer(_input(layer)).square().mean()
    opt.zero_grad()
    loss.backward()
    for k, p in layer.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), k
        assert float(p.grad.abs().max()) > 0, k
    opt.step()
    assert all(not torch.equal(before[k], p) for k, p in layer.named_parameters())
    plain = _certifiable(layer.to_plain(torch.float64))
    bound = lipsdp.estimate(plain, method="lipsdp-neuron", input_shape=(layer.in_channels,) + layer.image_size)
    assert float(bound.value) <= gamma * (1 + 1e-6)
    x = _input(layer, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(layer.to_plain()(x), layer(x), rtol=0, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("name", ["sandwich-relu", "cayley-widen", "bro"])
def test_eval_cache_reused_and_invalidated(name):
    layer = _make(name, 1.0, torch.float64).eval()
    x = _input(layer)
    y1 = layer(x)
    first = layer.computed()
    y2 = layer(x)
    assert layer.computed() is first
    assert torch.equal(y1, y2)
    assert not any(t.requires_grad for t in first.values())  # eval caches detached symbols
    with torch.no_grad():
        next(layer.parameters()).add_(0.1)
    assert layer.computed() is not first
    y3 = layer(x)
    assert not torch.allclose(y3, y1)
    torch.testing.assert_close(y3, layer.to_plain()(x), rtol=0, atol=1e-10)
    layer.train()
    assert layer(x).requires_grad


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["sandwich-relu", "cayley-widen", "bro"])
def test_bad_inputs_raise_typed_errors(name):
    layer = _make(name, 1.0, torch.float64)
    C, (H, W) = layer.in_channels, layer.image_size
    with pytest.raises(lmi.ShapeMismatchError, match="input channels"):
        layer(torch.zeros(2, C + 1, H, W, dtype=torch.float64))
    with pytest.raises(lmi.ShapeMismatchError, match="image_size"):
        layer(torch.zeros(2, C, H + 1, W, dtype=torch.float64))
    with pytest.raises(lmi.ShapeMismatchError):
        layer(torch.zeros(C * H * W, dtype=torch.float64))
    with pytest.raises(lmi.InvalidInputError, match="float32"):
        layer(torch.zeros(2, C, H, W, dtype=torch.float32))
    with pytest.raises(lmi.InvalidInputError):
        layer([[0.0]])
    assert layer(torch.zeros(C, H, W, dtype=torch.float64)).shape == (layer.out_channels, H, W)


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(lmi.InvalidArgumentError, match="rank"):
        BROConv2d(3, 4, rank=3)
    with pytest.raises(lmi.InvalidArgumentError, match="rank"):
        BROConv2d(1, 4, rank=1)
    with pytest.raises(lmi.InvalidArgumentError, match="kernel_size"):
        CayleyConv2d(2, 2, 4, kernel_size=5)
    with pytest.raises(lmi.InvalidArgumentError, match="image_size"):
        CayleyConv2d(2, 2, (4, 0))
    with pytest.raises(lmi.InvalidArgumentError, match="gamma"):
        SandwichConv2d(2, 2, 4, gamma=-1.0)
    with pytest.raises(lmi.NumericalRangeError):
        SandwichConv2d(2, 2, 4, gamma=1e30, dtype=torch.float32)
    with pytest.raises(lmi.UnsupportedDtypeError):
        CayleyConv2d(2, 2, 4, dtype=torch.float16)
    with pytest.raises(lmi.ActivationNotCoveredError):  # MaxMin is not elementwise: no sandwich proof
        SandwichConv2d(2, 2, 4, activation="maxmin")
    with pytest.raises(lmi.ActivationNotCoveredError):  # slope 2: not 1-Lipschitz
        BROConv2d(2, 4, rank=1, activation="leaky_relu:2")
    with pytest.raises(lmi.ShapeMismatchError, match="width"):  # MaxMin on an odd width
        CayleyConv2d(2, 2, (4, 5), activation="maxmin")


def test_swapped_activation_is_refused_where_a_bound_is_claimed():
    layer = _make("sandwich-relu", 1.0, torch.float64)
    layer.activation = MaxMin()
    with pytest.raises(lmi.ActivationNotCoveredError):
        layer.lipschitz_bound()
    with pytest.raises(lmi.ActivationNotCoveredError):
        layer.to_plain()


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_cpu(name):
    layer = _make(name, 1.0, torch.float64)
    x = _input(layer)
    expected = layer(x)
    gpu = layer.to("cuda")
    y = gpu(x.cuda())
    torch.testing.assert_close(y.cpu(), expected, rtol=0, atol=1e-10)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu.parameters())
    with torch.no_grad():
        torch.testing.assert_close(gpu.eval().to_plain()(x.cuda()).cpu(), expected, rtol=0, atol=1e-10)
