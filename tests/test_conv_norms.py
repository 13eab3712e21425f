"""lipsdp.conv_norms: certified spectral norms of one convolution, checked against dense references.

The references are built here, independently of lipsdp: the convolution's matrix is
torch's ``F.pad`` + ``F.conv1d/conv2d`` applied to the identity basis, and its norm is
LAPACK's largest singular value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from lipsdp import conv_norms as module  # noqa: E402
from lipsdp.conv_norms import ConvNorm, conv_norm, conv_norm_bound  # noqa: E402
from lipsdp.errors import InputShapeRequiredError, InvalidWeightsError, NotApplicableError, ShapeMismatchError  # noqa: E402

SVD_SLACK = 1e-12  # the reference SVD's own rounding
EXACT_TOL = 1e-9  # circular padding where the certificate is the exact norm


@dataclass(frozen=True)
class Conv:
    """The fields of lipsdp.operators.ConvOperator that conv_norm reads (duck typing)."""

    kernel: np.ndarray
    in_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    padding_mode: str
    groups: int

    @property
    def out_shape(self) -> tuple:
        sizes = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                      zip(self.in_shape[1:], self.kernel.shape[2:], self.stride, self.padding, self.dilation))
        return (self.kernel.shape[0],) + sizes


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The references convolve hundreds of tiny images: torch's thread pool only adds overhead (and the
    machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_matrix(conv: Conv) -> np.ndarray:
    """The convolution's matrix: torch's padding and convolution applied to the identity basis."""
    size = int(np.prod(conv.in_shape))
    basis = torch.eye(size, dtype=torch.float64).reshape((size,) + tuple(conv.in_shape))
    kernel = torch.from_numpy(conv.kernel)
    op = F.conv1d if len(conv.in_shape) == 2 else F.conv2d
    if conv.padding_mode == "zeros":
        out = op(basis, kernel, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        pads = tuple(p for pad in reversed(conv.padding) for p in (pad, pad))
        out = op(F.pad(basis, pads, mode=conv.padding_mode), kernel, None, conv.stride, 0, conv.dilation,
                 conv.groups)
    return out.reshape(size, -1).T.numpy()


def svd_norm(conv: Conv) -> float:
    return float(np.linalg.norm(dense_matrix(conv), 2))


def value(scaled: tuple[float, int]) -> float:
    return math.ldexp(*scaled)


def random_conv(rng: np.random.Generator, mode: str, same: bool = False) -> Conv:
    """A random small convolution: 1 or 2 spatial dims, non-square inputs, groups 1/2/depthwise,
    channels 1-4 per group, kernel 1-4, stride 1-3, dilation 1-2.  ``same``: the padding that keeps
    the size at stride 1 (``2p = d(k − 1)``, odd kernels) and a size the stride divides."""
    while True:
        dims = int(rng.integers(1, 3))
        kind = rng.choice(["plain", "groups", "depthwise"])
        if kind == "plain":
            groups, c_in_g, c_out_g = 1, int(rng.integers(1, 5)), int(rng.integers(1, 5))
        elif kind == "groups":
            groups, c_in_g, c_out_g = 2, int(rng.integers(1, 3)), int(rng.integers(1, 3))
        else:
            groups = int(rng.integers(2, 4))
            c_in_g, c_out_g = 1, int(rng.integers(1, 3))
        dilation = tuple(int(v) for v in rng.integers(1, 3, dims))
        stride = tuple(int(v) for v in rng.integers(1, 4, dims))
        if same:
            kernel = tuple(int(v) for v in rng.choice([1, 3], dims))
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
            sizes = tuple(s * int(rng.integers(2, 5)) for s in stride)
        else:
            kernel = tuple(int(v) for v in rng.integers(1, 5, dims))
            padding = tuple(int(v) for v in rng.integers(0, 4, dims))
            sizes = tuple(int(v) for v in rng.integers(3, 9, dims))
        if mode == "reflect":
            padding = tuple(min(p, n - 1) for p, n in zip(padding, sizes))
        if mode == "circular":
            padding = tuple(min(p, n) for p, n in zip(padding, sizes))
        if any(n + 2 * p - d * (k - 1) - 1 < 0 for n, p, d, k in zip(sizes, padding, dilation, kernel)):
            continue
        weights = rng.standard_normal((c_out_g * groups, c_in_g) + kernel) * float(np.exp(rng.uniform(-3, 3)))
        return Conv(weights, (c_in_g * groups,) + sizes, stride, padding, dilation, mode, groups)


def check(conv: Conv) -> tuple[float, module._Upper]:
    """Soundness against the SVD of the public result and of the Fourier bound alone (small operators also
    get a dense bound, which would otherwise hide it); returns (Fourier bound / SVD norm, Fourier result)."""
    reference = svd_norm(conv)
    result = conv_norm(conv)
    assert isinstance(result, ConvNorm) and float(result) == result.upper
    assert result.upper >= reference * (1 - SVD_SLACK), (conv, result, reference)
    assert result.lower <= reference * (1 + SVD_SLACK), (conv, result, reference)
    assert value(conv_norm_bound(conv)) == pytest.approx(result.upper, rel=4e-16)  # upper: one ulp up
    fourier = module._upper_bound(conv, dense=False)
    bound = value(fourier.scaled)
    assert value(conv_norm_bound(conv)) <= bound
    assert bound >= reference * (1 - SVD_SLACK), (conv, fourier, reference)
    if fourier.exact:
        assert bound <= reference * (1 + EXACT_TOL), (conv, fourier, reference)
        assert result.exact and result.upper == pytest.approx(bound, rel=4e-16)
    return bound / reference, fourier


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
def test_random_convolutions_are_bounded(mode):
    rng = np.random.default_rng({"zeros": 1, "circular": 2, "reflect": 3}[mode])
    ratios = [check(random_conv(rng, mode))[0] for _ in range(40)]
    assert min(ratios) >= 1 - SVD_SLACK


def test_circular_same_padding_is_exact():
    """Circular padding, ``2p = d(k−1)`` and a stride that divides the size: the certificate is the norm."""
    rng = np.random.default_rng(4)
    for _ in range(30):
        conv = random_conv(rng, "circular", same=True)
        ratio, result = check(conv)
        assert result.exact, conv
        assert ratio <= 1 + EXACT_TOL


def test_zero_padding_tightness_on_same_convolutions():
    """Zero padding 'same' convolutions: the periodic embedding stays close to the norm."""
    rng = np.random.default_rng(5)
    ratios = [check(random_conv(rng, "zeros", same=True))[0] for _ in range(30)]
    assert np.median(ratios) < 1.05


def test_sixteen_channels_on_16x16():
    """3x3, 16 -> 16 channels, 16x16 input, zero padding 1: within 1% of the norm (Lanczos on the dense matrix)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    rng = np.random.default_rng(6)
    conv = Conv(rng.standard_normal((16, 16, 3, 3)) / 12, (16, 16, 16), (1, 1), (1, 1), (1, 1), "zeros", 1)
    matrix = dense_matrix(conv)
    gram = LinearOperator((matrix.shape[1],) * 2, matvec=lambda v: matrix.T @ (matrix @ v), dtype=float)
    start = np.ones(matrix.shape[1])
    reference = math.sqrt(eigsh(gram, k=1, which="LA", tol=1e-14, v0=start, return_eigenvectors=False)[0])
    result = conv_norm(conv)
    assert reference * (1 - SVD_SLACK) <= result.upper <= reference * 1.01
    assert result.lower <= reference * (1 + SVD_SLACK)


def test_known_norms():
    """An identity kernel is an isometry under circular padding; a 1x1 convolution has the norm of its matrix."""
    eye = np.eye(3).reshape(3, 3, 1, 1)
    identity = Conv(eye, (3, 5, 4), (1, 1), (0, 0), (1, 1), "circular", 1)
    assert 1.0 <= conv_norm(identity).upper <= 1 + EXACT_TOL
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((4, 3))
    pointwise = Conv(matrix.reshape(4, 3, 1, 1), (3, 6, 5), (1, 1), (0, 0), (1, 1), "zeros", 1)
    expected = np.linalg.norm(matrix, 2)
    assert expected * (1 - SVD_SLACK) <= conv_norm(pointwise).upper <= expected * (1 + EXACT_TOL)
    zero = Conv(np.zeros((2, 2, 3)), (2, 7), (1,), (1,), (1,), "zeros", 1)
    assert conv_norm_bound(zero) == (0.0, 0)


def test_power_of_two_scaling_is_exact():
    """The bound of 2^k K is 2^k times the bound of K, far beyond float64's range for the product."""
    rng = np.random.default_rng(8)
    conv = random_conv(rng, "zeros")
    base = conv_norm_bound(conv)
    for shift in (-900, 700):
        scaled = Conv(np.ldexp(conv.kernel, shift), conv.in_shape, conv.stride, conv.padding, conv.dilation,
                      conv.padding_mode, conv.groups)
        mantissa, exponent = conv_norm_bound(scaled)
        assert 0.5 <= mantissa < 1 and mantissa == pytest.approx(base[0], rel=1e-12)
        assert exponent == base[1] + shift


def test_module_and_operator_agree():
    ops = pytest.importorskip("lipsdp.operators")
    torch.manual_seed(0)
    module = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect", bias=True).double()
    from_module = conv_norm(module, input_shape=(3, 9, 7))
    operator = ops.ConvOperator.from_torch(module, (3, 9, 7))
    assert from_module.upper == conv_norm(operator).upper
    weights = module.weight.detach().numpy()
    mine = Conv(weights, (3, 9, 7), (2, 2), (1, 1), (1, 1), "reflect", 1)
    assert from_module.upper >= svd_norm(mine) * (1 - SVD_SLACK)


def test_typed_errors():
    module = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False)
    with pytest.raises(InputShapeRequiredError, match="input_shape"):
        conv_norm(module)
    bad = Conv(np.full((2, 2, 3), np.nan), (2, 8), (1,), (1,), (1,), "zeros", 1)
    with pytest.raises(InvalidWeightsError):
        conv_norm_bound(bad)
    with pytest.raises(ShapeMismatchError):
        conv_norm_bound(Conv(np.ones((2, 3, 3)), (2, 8), (1,), (1,), (1,), "zeros", 1))
    with pytest.raises(NotApplicableError):
        conv_norm_bound(Conv(np.ones((2, 2, 3)), (2, 8), (1,), (1,), (1,), "replicate", 1))
    with pytest.raises(NotApplicableError):
        conv_norm(object(), (1, 2))


def test_large_channel_path():
    """More than 128 channels on the Gram side: power-iteration estimates, default grids; still certified."""
    rng = np.random.default_rng(9)
    conv = Conv(rng.standard_normal((130, 130, 3, 1)) / 20, (130, 3, 2), (1, 1), (1, 0), (1, 1), "zeros", 1)
    reference = svd_norm(conv)
    bound = value(module._upper_bound(conv, dense=False).scaled)
    assert reference * (1 - SVD_SLACK) <= bound <= reference * 1.5


def test_parallel_chunks_give_the_same_bound(monkeypatch):
    rng = np.random.default_rng(10)
    conv = Conv(rng.standard_normal((6, 5, 3, 3)), (5, 11, 9), (1, 1), (1, 1), (1, 1), "zeros", 1)
    alone = module._upper_bound(conv, dense=False)
    monkeypatch.setattr(module, "_workers", lambda *args: 2)
    shared = module._upper_bound(conv, dense=False, threads=2)
    assert shared.scaled == alone.scaled
    assert value(shared.scaled) >= svd_norm(conv) * (1 - SVD_SLACK)


def test_identical_groups_and_poolings():
    """Depthwise kernels shared by every group are proved once; average poolings are convolutions too."""
    ops = pytest.importorskip("lipsdp.operators")
    for op in (ops.global_avg_pool_operator((3, 6, 5)), ops.avg_pool_operator((2, 7, 6), 3, 2, 1),
               ops.avg_pool_operator((2, 8), 2)):
        conv = Conv(np.array(op.kernel), op.in_shape, op.stride, op.padding, op.dilation, op.padding_mode, op.groups)
        reference = svd_norm(conv)
        upper = conv_norm(op).upper
        assert reference * (1 - SVD_SLACK) <= upper <= reference * (1 + 1e-6)
