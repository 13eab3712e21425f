"""Spatial Lipschitz convolutions (AOL, SLL) and residual LDLᵀ / Gershgorin blocks (dense and conv).

Each layer is checked against references that do not share its maths: lipsdp's certificate of the
plain export, the densified operator's exact spectral norm, finite-difference quotients pushed up
by Adam, and the residual LMI's eigenvalues.  Tiny images (1-2 channels, 4x4-5x5) keep it fast.
"""
from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

import lipsdp  # noqa: E402
from lipsdp.errors import NotApplicableError  # noqa: E402
from lmi import functional as LF  # noqa: E402
from lmi import functional_conv as LFC  # noqa: E402
from lmi.conv_spatial import AOLConv2d, SLLConv2d  # noqa: E402
from lmi.errors import (  # noqa: E402
    ActivationNotCoveredError,
    InvalidArgumentError,
    InvalidInputError,
    NumericalRangeError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from lmi.residual import (  # noqa: E402
    GershgorinResidual,
    GershgorinResidualConv2d,
    LDLTResidual,
    LDLTResidualConv2d,
    residual_lmi,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

F64, F32 = torch.float64, torch.float32
GAMMAS = (0.1, 1.0, 10.0)
DTYPES = (F32, F64)
IMAGE = (2, 5, 5)  # (C, H, W) of the conv tests
FEATURES = 3


def _build(name: str, gamma: float = 1.0, dtype=F64, activation="relu", device=None):
    """``(layer, input_shape)``; ``input_shape`` is None for the dense blocks."""
    c = IMAGE[0]
    kw = {"gamma": gamma, "dtype": dtype, "device": device}
    if name == "aol":
        return AOLConv2d(c, 3, 3, **kw), IMAGE  # out != in: AOL is not square
    if name == "sll":
        return SLLConv2d(c, 3, activation=activation, inner_channels=3, **kw), IMAGE
    if name == "ldlt_conv":
        return LDLTResidualConv2d(c, 3, inner_channels=3, activation=activation, **kw), IMAGE
    if name == "gersh_conv":
        return GershgorinResidualConv2d(c, (3, 1), inner_channels=3, activation=activation, **kw), IMAGE
    if name == "ldlt":
        return LDLTResidual(FEATURES, inner=4, activation=activation, **kw), None
    if name == "gersh":
        return GershgorinResidual(FEATURES, inner=4, activation=activation, **kw), None
    raise KeyError(name)


LAYERS = ("aol", "sll", "ldlt_conv", "gersh_conv", "ldlt", "gersh")
WITH_ACTIVATION = tuple(n for n in LAYERS if n != "aol")


def _layer(name, gamma=1.0, dtype=F64, seed=0, **kw):
    """A layer with perturbed parameters (so nothing rests on the initialisation)."""
    torch.manual_seed(seed)
    m, shape = _build(name, gamma, dtype, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m, shape


def _inputs(shape, n=8, dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    dims = (FEATURES,) if shape is None else shape
    return torch.randn((n,) + tuple(dims), generator=g, dtype=F64).to(dtype)


def _certified(plain, shape) -> float:
    return float(lipsdp.estimate(plain, method="lipsdp-neuron", input_shape=shape))


def _max_quotient(f, shape, steps=30, n=16, delta=1e-2, seed=2) -> float:
    """Largest ``||f(x) - f(x + d)|| / ||d||`` seen in ``steps`` Adam steps maximising it (``||d|| = delta``)."""
    x = _inputs(shape, n, seed=seed).requires_grad_(True)
    d0 = _inputs(shape, n, seed=seed + 1)
    d = (d0 * delta / d0.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (d0.dim() - 1))).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=0.05)
    best = 0.0
    for _ in range(steps + 1):
        q = (f(x) - f(x + d)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
        with torch.no_grad():
            d.mul_(delta / d.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (d.dim() - 1)))
    return best


def _dense_operator(K: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The matrix of ``x -> conv2d(x, K)`` (zero padding "same") on ``hw`` images, column by column."""
    c_in = K.shape[1]
    n = c_in * hw[0] * hw[1]
    basis = torch.eye(n, dtype=K.dtype).reshape(n, c_in, *hw)
    return LFC.apply_kernel(basis, K).reshape(n, -1).T


# ------------------------------------------------------------------------------- export + certificate
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", LAYERS)
def test_export_equals_layer(name, gamma, dtype):
    m, shape = _layer(name, gamma, dtype)
    plain = m.to_plain()
    x = _inputs(shape, dtype=dtype)
    tol = 1e-6 if dtype is F64 else 1e-4
    for mode in ("train", "eval"):
        getattr(m, mode)()
        torch.testing.assert_close(plain(x), m(x).detach(), atol=tol * max(gamma, 1.0), rtol=0)
    assert all(p.dtype == dtype for p in plain.parameters())
    assert m.lipschitz_bound() == pytest.approx(gamma, rel=1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", LAYERS)
def test_lipsdp_certifies_float64_export(name, gamma):
    m, shape = _layer(name, gamma, F64)
    b = _certified(m.to_plain(), shape)
    assert b <= gamma * (1 + 1e-6), (name, gamma, b)
    if name != "aol":  # a residual layer's identity path reaches its constant where the ReLUs are off
        assert b >= min(gamma, 1.0) * (1 - 1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("name", LAYERS)
def test_adam_maximised_quotients_stay_below_gamma(name, gamma):
    m, shape = _layer(name, gamma, F64)
    for p in m.parameters():
        p.requires_grad_(False)
    q = _max_quotient(m, shape)
    assert 0.0 < q <= gamma * (1 + 1e-6), (name, gamma, q)


@pytest.mark.parametrize("gamma", (1.0, 10.0))
@pytest.mark.parametrize("name", LAYERS)
def test_training_steps_keep_the_bound(name, gamma):
    """Ten Adam steps on the parameters that *maximise* a difference quotient: the bound still holds."""
    m, shape = _layer(name, gamma, F64)
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    x, d = _inputs(shape, 16, seed=5), 0.1 * _inputs(shape, 16, seed=6)
    m.train()
    for _ in range(10):
        loss = -((m(x) - m(x + d)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert _certified(m.to_plain(), shape) <= gamma * (1 + 1e-6)
    if shape is None:
        assert m.lmi_min_eig() >= -1e-12


def _single_tap(out: int, inp: int, kernel_size, seed: int = 9) -> torch.Tensor:
    """A kernel whose only nonzero tap (the centre) is a matrix with orthonormal rows or columns."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(max(out, inp), min(out, inp), generator=g, dtype=F64))
    Q = Q if out >= inp else Q.T
    if kernel_size is None:
        return Q
    K = torch.zeros(out, inp, *kernel_size, dtype=F64)
    K[:, :, kernel_size[0] // 2, kernel_size[1] // 2] = Q
    return K


@pytest.mark.parametrize("gamma", (0.1, 10.0))
@pytest.mark.parametrize("name", ("aol", "sll", "gersh_conv", "gersh"))
def test_certificates_on_kernels_where_gershgorin_is_tight(name, gamma):
    """Orthonormal single-tap kernels make the Gershgorin sums exact (no slack left in the certificate):
    lipsdp's bound must still be <= gamma, and AOL must reach gamma."""
    if name == "sll":  # inner = channels, so that P P^T = I is possible
        m, shape = SLLConv2d(IMAGE[0], 3, inner_channels=IMAGE[0], gamma=gamma, dtype=F64), IMAGE
    else:
        m, shape = _build(name, gamma, F64)
    weight = m.kernel if name in ("aol", "sll") else m.V
    with torch.no_grad():
        weight.copy_(_single_tap(*weight.shape[:2], getattr(m, "kernel_size", None)))
        for extra in ("q", "bias"):
            if getattr(m, extra, None) is not None:
                getattr(m, extra).zero_()
    if name == "sll":
        assert torch.allclose(m.diag(), torch.ones(IMAGE[0], dtype=F64))  # P P^T = I: t = 1 exactly
    b = _certified(m.to_plain(), shape)
    assert b <= gamma * (1 + 1e-6), (name, gamma, b)
    if name == "aol":
        assert b >= gamma * (1 - 1e-6)


# ---------------------------------------------------------------------------------- independent maths
def test_transpose_kernel_is_the_adjoint():
    torch.manual_seed(3)
    K = torch.randn(3, 2, 3, 5, dtype=F64)
    A = _dense_operator(K, (4, 6))
    At = _dense_operator(LFC.transpose_kernel(K), (4, 6))
    torch.testing.assert_close(At, A.T, atol=1e-12, rtol=0)


def test_kernel_gram_matches_the_operator_gram_away_from_the_border():
    torch.manual_seed(4)
    K = torch.randn(2, 3, 3, 3, dtype=F64)
    h = w = 9
    A = _dense_operator(K, (h, w))
    G = (A.T @ A).reshape(3, h, w, 3, h, w)
    centre = G[:, 4, 4, :, 2:7, 2:7]  # row of the centre pixel: offsets -2..2
    # entry ((i, x), (j, y)) is G[i, j, x - y]: offsets run backwards along the row
    torch.testing.assert_close(centre, LFC.kernel_gram(K).flip((-2, -1)), atol=1e-12, rtol=0)


def test_kernel_functions_reduce_to_the_dense_ones():
    torch.manual_seed(5)
    V, q = torch.randn(5, 3, dtype=F64), torch.randn(5, dtype=F64)
    torch.testing.assert_close(LFC.aol_kernel(V), LF.aol_scale(V))
    torch.testing.assert_close(LFC.aol_kernel(V[..., None, None])[..., 0, 0], LF.aol_scale(V))
    torch.testing.assert_close(LFC.sll_kernel_diag(V, q), LF.sll_diag(V, q))
    torch.testing.assert_close(LFC.sll_kernel_diag(V[..., None, None], q), LF.sll_diag(V, q))
    torch.testing.assert_close(LFC.unfold_contraction(V, 0.5), LF.contraction(V, 0.5)[0])


@pytest.mark.parametrize("make", ["aol", "unfold"])
def test_contractions_have_operator_norm_at_most_one(make):
    """Densified on two image sizes, the exact spectral norm is <= 1 (and not far below, for AOL)."""
    torch.manual_seed(6)
    V = torch.randn(4, 2, 3, 3, dtype=F64)
    Z = LFC.aol_kernel(V) if make == "aol" else LFC.unfold_contraction(V, 0.1)
    for hw in ((4, 4), (5, 6)):
        norm = float(torch.linalg.matrix_norm(_dense_operator(Z, hw), ord=2))
        assert 0.2 < norm <= 1.0 + 1e-12, (make, hw, norm)


def test_aol_rescaling_is_needed():
    """Without the rescaling the same kernel exceeds 1: the certificate is not vacuous."""
    torch.manual_seed(7)
    V = torch.randn(4, 2, 3, 3, dtype=F64)
    assert float(torch.linalg.matrix_norm(_dense_operator(V, (5, 5)), ord=2)) > 1.5


@pytest.mark.parametrize("gamma", (1.0, 1.5, 10.0))
def test_residual_weights_solve_the_lmi_exactly(gamma):
    """``||Z|| <= 1`` gives ``M >= 0``; a Z just beyond the unit ball gives ``M`` a negative eigenvalue.

    At gamma = 1 only ``Z_2`` (the last half of the rows) enters, so that half is pushed out.
    """
    torch.manual_seed(8)
    V = torch.randn(6, 4, dtype=F64)
    lam = torch.rand(4, dtype=F64) + 0.5
    Z = V / torch.linalg.matrix_norm(V, ord=2)
    Z2 = Z[3:] / torch.linalg.matrix_norm(Z[3:], ord=2)
    outside = torch.cat([Z[:3], 1.05 * Z2]) if gamma == 1.0 else 1.05 * Z
    for Zk, inside in ((Z, True), (outside, False)):
        W1, W2 = LFC.residual_weights(Zk, lam, gamma)
        eig = float(torch.linalg.eigvalsh(residual_lmi(W1, W2, lam, gamma)).min())
        assert (eig >= -1e-12) if inside else (eig < -1e-6), (gamma, inside, eig)


def test_residual_weights_refuse_gamma_below_one():
    with pytest.raises(InvalidArgumentError, match="gamma >= 1"):
        LFC.residual_weights(torch.zeros(4, 2, dtype=F64), torch.ones(2, dtype=F64), 0.5)


def test_sll_forward_matches_the_dense_sll_block_on_1x1_images():
    """A 1x1 SLL convolution on a 1x1 image is the dense SLLBlock with the same parameters."""
    from lmi.layers import SLLBlock

    conv = SLLConv2d(3, 1, inner_channels=4, dtype=F64)
    dense = SLLBlock(3, 4, dtype=F64)
    with torch.no_grad():
        dense.V.copy_(conv.kernel[..., 0, 0])
        dense.q.copy_(torch.randn(4, dtype=F64))
        conv.q.copy_(dense.q)
        dense.bias.copy_(conv.bias + 0.1)
        conv.bias.copy_(dense.bias)
    x = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(conv(x[..., None, None])[..., 0, 0], dense(x))


# ------------------------------------------------------------------------------ caching and activations
@pytest.mark.parametrize("name", LAYERS)
def test_eval_caches_and_training_recomputes(name):
    m, shape = _layer(name)
    x = _inputs(shape)
    m.eval()
    first = m.computed()
    assert m.computed() is first
    cached = first.values() if isinstance(first, dict) else first if isinstance(first, tuple) else [first]
    derived = [t for t in cached if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter)]
    assert derived and not any(t.requires_grad for t in derived)  # computed under no_grad in eval
    torch.testing.assert_close(m(x), m.to_plain()(x), atol=1e-6, rtol=0)
    param = next(p for n, p in m.named_parameters() if n in ("kernel", "V"))
    with torch.no_grad():
        param.mul_(1.5)  # bumps the version counter: the cache must not be reused
    assert m.computed() is not first
    m.train()
    assert m.computed() is not m.computed()
    out = m(x).sum()
    out.backward()
    assert param.grad is not None and bool(torch.isfinite(param.grad).all())


@pytest.mark.parametrize("name", WITH_ACTIVATION)
def test_refused_activation(name):
    with pytest.raises(ActivationNotCoveredError, match="slopes in \\[0, 1\\]"):
        _build(name, activation="maxmin")
    m, _ = _build(name, activation="tanh")  # accepted (slope in [0, 1])
    m.activation = torch.nn.ELU(alpha=2.0)  # slope up to 2: swapped in after construction
    with pytest.raises(ActivationNotCoveredError):
        m.lipschitz_bound()
    with pytest.raises(ActivationNotCoveredError):
        m.to_plain()


@pytest.mark.parametrize("name", WITH_ACTIVATION)
def test_tanh_export_is_certified(name):
    m, shape = _layer(name, 1.0, activation="tanh")
    plain = m.to_plain()
    x = _inputs(shape)
    torch.testing.assert_close(plain(x), m(x), atol=1e-6, rtol=0)
    assert _certified(plain, shape) <= 1.0 + 1e-6


# ------------------------------------------------------------------------------------ typed errors
@pytest.mark.parametrize("name", LAYERS)
def test_bad_inputs_raise_typed_errors(name):
    m, shape = _build(name)
    x = _inputs(shape)
    with pytest.raises(InvalidInputError):
        m(x.float())
    with pytest.raises(InvalidInputError):
        m(x.numpy())
    with pytest.raises(ShapeMismatchError):
        m(x[..., :1] if shape is None else x[:, :1])
    if shape is not None:
        with pytest.raises(ShapeMismatchError, match="unsqueeze"):
            m(x[0])


@pytest.mark.parametrize("name", LAYERS)
def test_bad_arguments_raise_typed_errors(name):
    with pytest.raises(InvalidArgumentError):
        _build(name, gamma=0.0)
    with pytest.raises(NumericalRangeError):
        _build(name, gamma=1e30, dtype=F32)
    with pytest.raises(UnsupportedDtypeError):
        _build(name, dtype=torch.float16)


def test_bad_constructor_arguments():
    with pytest.raises(InvalidArgumentError, match="odd"):
        AOLConv2d(2, 2, 4)
    with pytest.raises(InvalidArgumentError, match="odd"):
        SLLConv2d(2, (3, 2))
    with pytest.raises(InvalidArgumentError):
        LDLTResidualConv2d(0, 3)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        LDLTResidual(3, alpha=0.0)
    with pytest.raises(InvalidArgumentError):
        GershgorinResidual(3, inner=-1)
    with pytest.raises(UnsupportedDtypeError):
        AOLConv2d(2, 2, 3).to_plain(dtype=torch.int32)
    with pytest.raises(NotApplicableError, match="input_shape"):
        GershgorinResidualConv2d(2, 3).lmi_min_eig()


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", LAYERS)
def test_cuda_forward_backward_and_export(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for dtype in DTYPES:
        m, shape = _build(name, 2.0, dtype, device="cuda")
        x = _inputs(shape, dtype=dtype).cuda()
        m(x).square().sum().backward()
        m.eval()
        plain = m.to_plain()
        assert all(p.is_cuda for p in plain.parameters())
        tol = 1e-6 if dtype is F64 else 1e-4
        torch.testing.assert_close(plain(x), m(x), atol=2 * tol, rtol=0)
        assert math.isclose(m.lipschitz_bound(), 2.0, rel_tol=1e-6)
