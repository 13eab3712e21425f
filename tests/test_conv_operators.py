"""Structured linear operators (lipsdp/operators.py) against torch's own modules and dense algebra.

References are independent of the code under test: torch's ``nn.Conv1d`` /
``nn.Conv2d`` / pooling modules and autograd Jacobians for the maps, numpy's
dense products and SVD for compositions and norms.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from lipsdp import operators as ops  # noqa: E402
from lipsdp.errors import (  # noqa: E402
    InvalidWeightsError,
    NotApplicableError,
    ProblemTooLargeError,
    ShapeMismatchError,
)
from lipsdp.operators import (  # noqa: E402
    ComposedOperator,
    ConvOperator,
    DiagonalOperator,
    avg_pool_operator,
    conv_bias,
    global_avg_pool_operator,
)

ATOL = 1e-12

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tiny convolutions: thread start-up dominates


def _value(scaled) -> float:
    return float(np.ldexp(scaled[0], scaled[1]))


def _close(actual, expected, atol=ATOL):
    scale = max(1.0, float(np.max(np.abs(expected))) if np.size(expected) else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol * scale)


# ------------------------------------------------------------------------------- random convolutions
def _valid(spatial, k, stride, pad, dil, mode) -> bool:
    for n, kk, p, d in zip(spatial, k, pad, dil):
        if n + 2 * p - d * (kk - 1) - 1 < 0:
            return False
        if mode == "reflect" and p >= n or mode == "circular" and p > n:
            return False
    return True


def _conv_configs(d: int, count: int, seed: int) -> list[dict]:
    """Random valid configs cycling through padding modes and group kinds (1, 2, depthwise)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        i = len(configs)
        mode = ops.PADDING_MODES[i % 3]
        kind = ("one", "two", "depthwise")[(i // 3) % 3]
        if kind == "two":
            groups, c_in, c_out = 2, int(rng.choice([2, 4])), int(rng.choice([2, 4]))
        elif kind == "depthwise":
            c_in = int(rng.integers(1, 5))
            groups, c_out = c_in, c_in
        else:
            groups, c_in, c_out = 1, int(rng.integers(1, 5)), int(rng.integers(1, 5))
        high = 9 if d == 2 else 13
        spatial = tuple(int(v) for v in rng.integers(3, high, size=d))
        k = tuple(int(v) for v in rng.integers(1, 4, size=d))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=d))
        pad = tuple(int(v) for v in rng.integers(0, 3, size=d))
        dil = tuple(int(v) for v in rng.integers(1, 3, size=d))
        if not _valid(spatial, k, stride, pad, dil, mode):
            continue
        kernel = rng.standard_normal((c_out, c_in // groups) + k)
        configs.append(dict(kernel=kernel, in_shape=(c_in,) + spatial, stride=stride, padding=pad,
                            padding_mode=mode, dilation=dil, groups=groups))
    return configs


CONFIGS = _conv_configs(2, 36, seed=1) + _conv_configs(1, 18, seed=2)
IDS = [f"conv{len(c['in_shape']) - 1}d-{c['padding_mode']}-g{c['groups']}-{i}" for i, c in enumerate(CONFIGS)]


def _operator(config) -> ConvOperator:
    return ConvOperator(**config)


def _torch_module(config):
    """The nn.Conv1d / nn.Conv2d (float64, no bias) with the config's geometry and kernel."""
    kernel = config["kernel"]
    cls = nn.Conv1d if kernel.ndim == 3 else nn.Conv2d
    module = cls(config["in_shape"][0], kernel.shape[0], kernel.shape[2:], stride=config["stride"],
                 padding=config["padding"], dilation=config["dilation"], groups=config["groups"], bias=False,
                 padding_mode=config["padding_mode"]).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(kernel))
    return module


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_matvec_equals_torch_module(config):
    op, module = _operator(config), _torch_module(config)
    x = np.random.default_rng(3).standard_normal((3, op.in_size))
    with torch.no_grad():
        expected = module(torch.from_numpy(x).reshape((3,) + op.in_shape))
    assert tuple(expected.shape[1:]) == op.out_shape
    _close(op.matvec(x), expected.reshape(3, -1).numpy())
    _close(op.matvec(x[0]), expected[0].reshape(-1).numpy())


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_dense_is_jacobian_and_rmatvec_its_transpose(config):
    op, module = _operator(config), _torch_module(config)
    x0 = torch.zeros(op.in_size, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda t: module(t.reshape((1,) + op.in_shape)).reshape(-1), x0,
                                                  vectorize=True)
    dense = op.to_dense()
    _close(dense, jacobian.numpy())
    y = np.random.default_rng(4).standard_normal((2, op.out_size))
    _close(op.rmatvec(y), y @ dense)
    _close(op.rmatvec(y[1]), dense.T @ y[1])


@pytest.mark.parametrize("config", CONFIGS[::3], ids=IDS[::3])
def test_torch_apply_matches_matvec_and_is_differentiable(config):
    op = _operator(config)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, op.in_size))
    g = rng.standard_normal((2, op.out_size))
    inputs = torch.from_numpy(x.reshape((2,) + op.in_shape)).requires_grad_(True)
    out = op.torch_apply(inputs)
    assert tuple(out.shape) == (2,) + op.out_shape and out.dtype == torch.float64
    _close(out.detach().reshape(2, -1).numpy(), op.matvec(x))
    (out * torch.from_numpy(g.reshape(out.shape))).sum().backward()
    _close(inputs.grad.reshape(2, -1).numpy(), op.rmatvec(g))  # the gradient is the adjoint
    single = op.torch_apply(inputs.detach().float())
    assert single.dtype == torch.float32
    _close(single.reshape(2, -1).double().numpy(), op.matvec(x), atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS[::2], ids=IDS[::2])
def test_norms_bracket_the_dense_matrix(config):
    op = _operator(config)
    dense = op.to_dense()
    row_sum = float(np.max(np.sum(np.abs(dense), axis=1)))
    kernel_sum = float(np.max(np.sum(np.abs(config["kernel"]).reshape(config["kernel"].shape[0], -1), axis=1)))
    bound = _value(op.inf_norm_bound())
    assert row_sum <= bound <= kernel_sum * (1 + 1e-12)
    svd = float(np.linalg.norm(dense, 2))
    assert op.norm_lower(iterations=30) <= svd * (1 + 1e-12)


@pytest.mark.parametrize("config", CONFIGS[:9], ids=IDS[:9])
def test_from_torch_reads_the_module(config):
    module = _torch_module(config)
    op = ConvOperator.from_torch(module, config["in_shape"])
    reference = _operator(config)
    assert op.out_shape == reference.out_shape and op.padding_mode == reference.padding_mode
    np.testing.assert_array_equal(op.to_dense(), reference.to_dense())


# ------------------------------------------------------------------------------- torch reading
def test_from_torch_string_padding_and_float32_weights():
    torch.manual_seed(0)
    same = nn.Conv2d(2, 3, (3, 5), padding="same", dilation=(2, 1), padding_mode="circular")  # float32
    op = ConvOperator.from_torch(same, (2, 6, 7))
    assert op.padding == (2, 2) and op.out_shape == (3, 6, 7)
    x = torch.randn(4, 2, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = same.double()(x) - same.bias.double().reshape(1, 3, 1, 1)
    _close(op.matvec(x.reshape(4, -1).numpy()), expected.reshape(4, -1).numpy())
    valid = ConvOperator.from_torch(nn.Conv1d(2, 2, 3, padding="valid"), (2, 5))
    assert valid.padding == (0,) and valid.out_shape == (2, 3)
    with pytest.raises(NotApplicableError, match="symmetric"):
        ConvOperator.from_torch(nn.Conv2d(2, 3, 4, padding="same"), (2, 6, 6))
    with pytest.raises(NotApplicableError, match="Conv1d"):
        ConvOperator.from_torch(nn.Linear(3, 3), (3,))
    with pytest.raises(NotApplicableError, match="zeros, circular, reflect"):
        ConvOperator.from_torch(nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate"), (2, 6, 6))


@pytest.mark.parametrize("mode", ops.PADDING_MODES)
def test_conv_bias_is_the_output_at_zero(mode):
    torch.manual_seed(1)
    module = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode=mode).double()
    op = ConvOperator.from_torch(module, (3, 7, 5))
    with torch.no_grad():
        at_zero = module(torch.zeros(1, 3, 7, 5, dtype=torch.float64)).reshape(-1).numpy()
    np.testing.assert_array_equal(conv_bias(module, op.out_shape), at_zero)
    no_bias = nn.Conv1d(2, 3, 2, bias=False)
    np.testing.assert_array_equal(conv_bias(no_bias, (3, 4)), np.zeros(12))
    with pytest.raises(ShapeMismatchError):
        conv_bias(module, (5, 4, 3))


# ------------------------------------------------------------------------------- pooling
POOLS = [((3, 8, 6), 2, None, 0), ((2, 7, 9), (3, 2), (2, 1), (1, 0)), ((1, 5, 5), 3, 1, 1), ((2, 9, 8), 4, 3, 2)]


@pytest.mark.parametrize("in_shape,kernel,stride,padding", POOLS)
def test_avg_pool_equals_torch(in_shape, kernel, stride, padding):
    op = avg_pool_operator(in_shape, kernel, stride, padding)
    module = nn.AvgPool2d(kernel, stride, padding)
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((3,) + in_shape))
    expected = module(x)
    assert tuple(expected.shape[1:]) == op.out_shape
    _close(op.matvec(x.reshape(3, -1).numpy()), expected.reshape(3, -1).numpy())
    divided = avg_pool_operator(in_shape, kernel, stride, padding, divisor_override=5)
    _close(divided.matvec(x.reshape(3, -1).numpy()),
           nn.AvgPool2d(kernel, stride, padding, divisor_override=5)(x).reshape(3, -1).numpy())


def test_avg_pool_1d_options_and_refusals():
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 3, 11)))
    op = avg_pool_operator((3, 11), 3, 2, 0, count_include_pad=False, ceil_mode=True)  # no padding, windows tile
    _close(op.matvec(x.reshape(2, -1).numpy()),
           nn.AvgPool1d(3, 2, 0, ceil_mode=True, count_include_pad=False)(x).reshape(2, -1).numpy())
    with pytest.raises(NotApplicableError, match="count_include_pad"):
        avg_pool_operator((3, 10), 3, 2, 1, count_include_pad=False)
    with pytest.raises(NotApplicableError, match="ceil_mode"):
        avg_pool_operator((3, 11), 4, 3, 0, ceil_mode=True)  # torch: 4 windows, the last partial
    assert nn.AvgPool1d(4, 3, ceil_mode=True)(x).shape[-1] == 4 and nn.AvgPool1d(4, 3)(x).shape[-1] == 3
    with pytest.raises(ShapeMismatchError):
        avg_pool_operator((3, 10), 2, 1, 2)  # padding above half the kernel: torch refuses it too
    with pytest.raises(ShapeMismatchError):
        avg_pool_operator((3, 2), 3)  # empty output


@pytest.mark.parametrize("in_shape", [(3, 5, 7), (2, 4, 4), (4, 9)])
def test_global_avg_pool_equals_adaptive_avg_pool(in_shape):
    op = global_avg_pool_operator(in_shape)
    module = nn.AdaptiveAvgPool2d(1) if len(in_shape) == 3 else nn.AdaptiveAvgPool1d(1)
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((2,) + in_shape))
    expected = module(x)
    assert op.out_shape == tuple(expected.shape[1:])
    _close(op.matvec(x.reshape(2, -1).numpy()), expected.reshape(2, -1).numpy())


# ------------------------------------------------------------------------------- diagonal
def test_diagonal_per_channel_and_full():
    rng = np.random.default_rng(9)
    shape = (3, 2, 4)
    channel = rng.standard_normal(3)
    full = rng.standard_normal(24)
    for scale, expected in ((channel, np.repeat(channel, 8)), (full, full)):
        op = DiagonalOperator(scale, shape)
        np.testing.assert_array_equal(op.to_dense(), np.diag(expected))
        x = rng.standard_normal((2, 24))
        np.testing.assert_array_equal(op.rmatvec(x), x * expected)
        out = op.torch_apply(torch.from_numpy(x.reshape((2,) + shape)))
        np.testing.assert_array_equal(out.reshape(2, -1).numpy(), x * expected)
        assert _value(op.norm_bound()) == _value(op.inf_norm_bound()) == np.max(np.abs(expected))
    assert DiagonalOperator(np.repeat(channel, 8), shape).channel_scale is not None  # constant per channel
    assert DiagonalOperator(full, shape).channel_scale is None
    with pytest.raises(ShapeMismatchError, match="one per channel"):
        DiagonalOperator(np.ones(5), shape)
    with pytest.raises(InvalidWeightsError):
        DiagonalOperator([1.0, np.nan, 2.0], shape)


# ------------------------------------------------------------------------------- composition rules
def _conv(rng, mode, in_shape=(4, 6, 5), c_out=4, groups=2, k=3, stride=1, padding=1):
    kernel = rng.standard_normal((c_out, in_shape[0] // groups, k, k))
    return ConvOperator(kernel, in_shape, stride, padding, mode, 1, groups)


def _dense_of(part):
    return part.to_dense() if hasattr(part, "to_dense") else part


def _check_composition(first, second, result):
    _close(_dense_of(result), _dense_of(second) @ _dense_of(first))


@pytest.mark.parametrize("mode", ops.PADDING_MODES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_and_channel_scale_merge_into_one_conv(mode, groups):
    rng = np.random.default_rng(10 + groups)
    conv = _conv(rng, mode, groups=groups, c_out=4, stride=(1, 2))
    after = DiagonalOperator(rng.standard_normal(4), conv.out_shape)
    merged = conv.compose(after)
    assert isinstance(merged, ConvOperator)
    _check_composition(conv, after, merged)
    before = DiagonalOperator(np.repeat(rng.standard_normal(4), 30), conv.in_shape)  # full length, per channel
    merged = before.compose(conv)
    assert isinstance(merged, ConvOperator)
    _check_composition(before, conv, merged)


def test_other_compositions_stay_composed():
    rng = np.random.default_rng(11)
    conv = _conv(rng, "reflect")
    per_entry = DiagonalOperator(rng.standard_normal(conv.in_size), conv.in_shape)
    first = per_entry.compose(conv)
    assert isinstance(first, ComposedOperator) and len(first.parts) == 2
    _check_composition(per_entry, conv, first)
    second = _conv(rng, "circular", in_shape=conv.out_shape, c_out=2, groups=1, stride=2)
    dense = rng.standard_normal((3, second.out_size))
    chain = first.compose(second).compose(dense)
    assert isinstance(chain, ComposedOperator) and len(chain.parts) == 4
    expected = dense @ second.to_dense() @ conv.to_dense() @ np.diag(per_entry.full_scale)
    _close(chain.to_dense(), expected)
    nested = ComposedOperator((first, ComposedOperator((second, dense))))
    assert len(nested.parts) == 4
    _close(nested.to_dense(), expected)
    diag = DiagonalOperator(rng.standard_normal(4), (4, 6, 5))
    twice = diag.compose(DiagonalOperator(rng.standard_normal(120), (4, 6, 5)))
    assert isinstance(twice, DiagonalOperator)
    _check_composition(diag, DiagonalOperator(twice.full_scale / diag.full_scale, (4, 6, 5)), twice)
    flat = DiagonalOperator(rng.standard_normal(7), (7,))
    matrix = rng.standard_normal((2, 7))
    merged = flat.compose(matrix)
    assert isinstance(merged, np.ndarray)
    _close(merged, matrix @ np.diag(flat.full_scale))
    with pytest.raises(ShapeMismatchError):
        conv.compose(rng.standard_normal((3, conv.out_size + 1)))


def test_composed_maps_and_norms_against_dense():
    rng = np.random.default_rng(12)
    conv = _conv(rng, "zeros", groups=1, stride=2)
    dense = rng.standard_normal((5, conv.out_size))
    op = ComposedOperator((DiagonalOperator(rng.standard_normal(conv.in_size), conv.in_shape), conv, dense))
    matrix = op.to_dense()
    expected = dense @ conv.to_dense() @ np.diag(op.parts[0].full_scale)
    _close(matrix, expected)
    y = rng.standard_normal((2, 5))
    _close(op.rmatvec(y), y @ expected)
    x = rng.standard_normal((2, op.in_size))
    out = op.torch_apply(torch.from_numpy(x.reshape((2,) + op.in_shape)))
    assert tuple(out.shape) == (2, 5)
    _close(out.numpy(), x @ expected.T)
    row_sum = float(np.max(np.sum(np.abs(expected), axis=1)))
    assert row_sum <= _value(op.inf_norm_bound()) <= row_sum * (1 + 1e-9)  # the dense route is tight
    assert _value(op._product_bound(np.inf)) >= row_sum
    svd = float(np.linalg.norm(expected, 2))
    dense_route = _value(op._dense_bounds(2))
    assert svd <= dense_route <= svd * (1 + 1e-6)
    assert op.norm_lower(iterations=20) <= svd * (1 + 1e-12)


def test_composed_norm_bound_without_convolutions():
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal((6, 5)), rng.standard_normal((4, 6))
    diag = DiagonalOperator(rng.standard_normal(6), (6,))
    op = ComposedOperator((a, DiagonalOperator(np.array([1.0, -2.0, 0.5, 1.0, 1.0, 3.0]) , (6,)), diag, b))
    expected = b @ np.diag(diag.full_scale * [1.0, -2.0, 0.5, 1.0, 1.0, 3.0]) @ a
    svd = float(np.linalg.norm(expected, 2))
    product = _value(op._product_bound(2))
    bound = _value(op.norm_bound())
    assert svd <= bound <= min(product, svd * (1 + 1e-6))


def test_norm_bounds_from_conv_norm():
    pytest.importorskip("lipsdp.conv_norms")
    rng = np.random.default_rng(14)
    for mode in ops.PADDING_MODES:
        conv = _conv(rng, mode)
        assert _value(conv.norm_bound()) >= np.linalg.norm(conv.to_dense(), 2)
        chain = ComposedOperator((conv, rng.standard_normal((3, conv.out_size))))
        assert _value(chain.norm_bound()) >= np.linalg.norm(chain.to_dense(), 2)


def test_scaled_and_norm_lower():
    rng = np.random.default_rng(15)
    conv = _conv(rng, "circular", in_shape=(2, 4, 3), c_out=2, groups=1)
    ops_ = [conv, DiagonalOperator(rng.standard_normal(2), (2, 4, 3)),
            ComposedOperator((conv, rng.standard_normal((3, conv.out_size))))]
    for op in ops_:
        np.testing.assert_array_equal(op.scaled(0.25).to_dense(), 0.25 * op.to_dense())  # exact: a power of two
        _close(op.scaled(-1.7).to_dense(), -1.7 * op.to_dense())
        svd = float(np.linalg.norm(op.to_dense(), 2))
        lower = op.norm_lower(iterations=300, seed=3)
        assert svd * (1 - 1e-6) <= lower <= svd * (1 + 1e-12)
        assert op.max_abs_entry() > 0 and op.describe()


def test_to_dense_chunks_and_refuses_large(monkeypatch):
    rng = np.random.default_rng(16)
    conv = _conv(rng, "reflect")
    whole = conv.to_dense()
    monkeypatch.setattr(ops, "_CHUNK_BYTES", 8 * 3 * (conv.in_size + conv.out_size))  # three columns per chunk
    np.testing.assert_array_equal(conv.to_dense(), whole)
    with pytest.raises(ProblemTooLargeError, match="norm_bound"):
        conv.to_dense(max_bytes=8 * conv.in_size * conv.out_size - 1)


# ------------------------------------------------------------------------------- bad input
def test_bad_convolutions_raise_typed_errors():
    kernel = np.ones((4, 2, 3, 3))
    with pytest.raises(InvalidWeightsError, match="NaN"):
        ConvOperator(np.where(np.eye(3, dtype=bool), np.nan, 1.0)[None, None], (1, 5, 5))
    with pytest.raises(InvalidWeightsError, match="complex"):
        ConvOperator(kernel * 1j, (2, 5, 5))
    with pytest.raises(ShapeMismatchError, match="input channels"):
        ConvOperator(kernel, (3, 5, 5))
    with pytest.raises(ShapeMismatchError, match="divide"):
        ConvOperator(kernel, (6, 5, 5), groups=3)  # 3 does not divide c_out = 4
    with pytest.raises(ShapeMismatchError, match="empty"):
        ConvOperator(kernel, (2, 2, 5))
    with pytest.raises(ShapeMismatchError, match="empty"):
        ConvOperator(kernel, (2, 2, 5), dilation=2, padding=1)
    with pytest.raises(NotApplicableError, match="zeros, circular, reflect"):
        ConvOperator(kernel, (2, 5, 5), padding=1, padding_mode="replicate")
    with pytest.raises(ShapeMismatchError, match="reflect"):
        ConvOperator(kernel, (2, 5, 2), padding=2, padding_mode="reflect")
    with pytest.raises(ShapeMismatchError, match="wrap"):
        ConvOperator(kernel, (2, 5, 2), padding=(1, 3), padding_mode="circular")
    with pytest.raises(ShapeMismatchError, match="spatial"):
        ConvOperator(kernel, (2, 5, 5), stride=(1, 2, 3))
    with pytest.raises(ShapeMismatchError):
        ConvOperator(np.ones((2, 2, 3, 3, 3)), (2, 5, 5, 5))  # Conv3d
    op = ConvOperator(kernel, (2, 5, 5), padding=1)
    with pytest.raises(ShapeMismatchError):
        op.matvec(np.ones(49))
    with pytest.raises(ShapeMismatchError):
        op.torch_apply(torch.ones(1, 2, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError):
        op.kernel[0, 0, 0, 0] = 2.0  # read-only
    with pytest.raises(FrozenInstanceError):
        op.groups = 2


def test_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import lipsdp.operators as o; print(o.PADDING_MODES[0])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "zeros"


def test_composed_bounds_keep_exponents_beyond_float_range():
    rng = np.random.default_rng(17)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
    scale = rng.uniform(0.5, 2.0, size=5)
    op = ComposedOperator((np.ldexp(a, -600), DiagonalOperator(scale, (5,)), np.ldexp(b, -600)))
    exact = float(np.linalg.norm(b @ np.diag(scale) @ a, 2))  # the true norm is exact * 2^-1200 (below float64)
    mantissa, exponent = op.norm_bound()
    product = float(np.linalg.norm(a, 2) * np.max(scale) * np.linalg.norm(b, 2))  # the route that stays in range
    assert exact <= float(np.ldexp(mantissa, exponent + 1200)) <= product * (1 + 1e-6)
    mantissa, exponent = op.inf_norm_bound()
    row_sum = float(np.max(np.sum(np.abs(b @ np.diag(scale) @ a), axis=1)))
    assert row_sum <= float(np.ldexp(mantissa, exponent + 1200))
    assert op._dense_bounds(2) is None  # the dense product underflows: only the product route is sound


def test_frobenius_bound_scales():
    rng = np.random.default_rng(18)
    m = rng.standard_normal((7, 3))
    for shift in (-1070, -600, 0, 600):
        bound = ops.frobenius_bound(np.ldexp(m, shift))
        exact = float(np.linalg.norm(m))
        if -1000 < shift < 900:
            assert exact <= float(np.ldexp(bound, -shift)) <= exact * (1 + 1e-12)
        else:  # entries near the subnormal range lose digits: the bound is still at least the float matrix's norm
            assert bound >= float(np.linalg.norm(np.ldexp(m, shift)))
