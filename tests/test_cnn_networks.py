"""CNNs as lipsdp networks: reading torch models with an input shape, structured layers, the bound road.

A convolution is kept as a structured operator (:mod:`lipsdp.operators`); the SDP methods see its
dense matrix, so their bounds must equal those of the same network given as unrolled Linear layers.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lipsdp  # noqa: E402
import lipsdp.lower  # noqa: E402
from lipsdp.errors import (  # noqa: E402
    InputShapeRequiredError,
    NotApplicableError,
    ShapeMismatchError,
    UnsupportedLayerError,
)
from lipsdp.network import Affine, Network  # noqa: E402
from lipsdp.pooling import MaxPool  # noqa: E402


def _double(model: nn.Module) -> nn.Module:
    return model.double().eval()


def _forward_matches(model: nn.Module, input_shape: tuple, seed: int = 0) -> Network:
    """The lipsdp network of ``model``, checked to compute the same function on random inputs."""
    net = Network.from_torch(model, input_shape=input_shape)
    x = torch.randn((7,) + tuple(input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).reshape(7, -1).numpy()
    got = net(x.reshape(7, -1).numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    return net


def _unrolled(model: nn.Module, input_shape: tuple) -> tuple[list, list]:
    """Dense weights and biases of every affine piece of a Conv/Linear/ReLU Sequential (by autograd Jacobians)."""
    weights, biases, shape, block = [], [], tuple(input_shape), []
    for module in list(model) + [nn.ReLU()]:
        if isinstance(module, nn.ReLU):
            if not block:
                continue
            piece = nn.Sequential(*block).double()
            x0 = torch.zeros((1,) + shape, dtype=torch.float64)
            jac = torch.autograd.functional.jacobian(lambda v: piece(v.reshape((1,) + shape)).reshape(-1),
                                                     x0.reshape(-1))
            weights.append(jac.numpy())
            biases.append(piece(x0).reshape(-1).detach().numpy())
            shape = tuple(piece(x0).shape[1:])
            block = []
        else:
            block.append(module)
    return weights, biases


# ----------------------------------------------------------------------------- reading
CASES = {
    "conv-bn-relu-avgpool-linear": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4)), (2, 6, 6)),
    "bn-before-conv": (lambda: nn.Sequential(
        nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 5 * 4, 2)), (2, 5, 4)),
    "strided-dilated-grouped": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="circular"), nn.LeakyReLU(0.1),
        nn.Conv2d(4, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)), (2, 7, 7)),
    "maxpool": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 2), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 2)), (1, 6, 6)),
    "conv1d": (lambda: nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool1d(2), nn.Conv1d(3, 2, 2, stride=2), nn.Flatten(),
        nn.Linear(2 * 2, 2)), (2, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_cnn_reads_as_the_same_function(case):
    torch.manual_seed(1)
    build, shape = CASES[case]
    model = _double(build())
    for module in model:
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
    net = _forward_matches(model, shape)
    assert net.input_shape == shape
    assert net.is_structured


def test_batchnorm2d_after_a_conv_folds_into_it():
    torch.manual_seed(2)
    model = _double(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(3 * 16, 2)))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    net = _forward_matches(model, (2, 4, 4))
    from lipsdp.operators import ConvOperator

    assert isinstance(net.layers[0], Affine) and isinstance(net.layers[0].weight, ConvOperator)
    assert len(net.layers) == 3  # conv∘BN, ReLU, Linear


def test_residual_conv_block():
    from lipsdp.nn import Residual

    torch.manual_seed(3)
    branch = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    model = _double(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Residual(branch), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(2 * 25, 3)))
    net = _forward_matches(model, (1, 5, 5))
    bound = lipsdp.estimate(model, method="lipsdp-neuron", input_shape=(1, 5, 5))
    lower = lipsdp.lower.gradient_lower_bound(net.densified(), n_starts=4, steps=20)
    assert lower.value <= bound.value * (1 + 1e-9)


# ----------------------------------------------------------------------------- bounds
def test_lipsdp_on_a_cnn_equals_the_unrolled_dense_network():
    torch.manual_seed(4)
    model = _double(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)))
    shape = (1, 6, 6)
    weights, biases = _unrolled(model, shape)
    dense = Network.from_weights(weights, biases, "relu")
    net = _forward_matches(model, shape)
    np.testing.assert_allclose(net.densified().layers[0].weight, weights[0], atol=1e-14)
    for method in ("lipsdp-neuron", "lipsdp-layer"):
        cnn_bound = lipsdp.estimate(model, method=method, input_shape=shape).value
        dense_bound = lipsdp.estimate(dense, method=method).value
        assert cnn_bound == pytest.approx(dense_bound, rel=1e-6)
    naive = lipsdp.estimate(model, method="naive", input_shape=shape).value
    assert naive >= lipsdp.estimate(dense, method="naive").value * (1 - 1e-12)


def test_max_pool_constant_and_split_bound():
    torch.manual_seed(5)
    model = _double(CASES["maxpool"][0]())
    shape = CASES["maxpool"][1]
    net = _forward_matches(model, shape)
    pool = next(layer for layer in net.layers if isinstance(layer, MaxPool))
    assert pool.window_multiplicity() == 4  # kernel 3, stride 2: two windows per axis share a position
    assert pool.lipschitz_constant(2) == 2.0 and pool.lipschitz_constant(np.inf) == 1.0
    neuron = lipsdp.estimate(model, method="lipsdp-neuron", input_shape=shape)
    assert "max pool" in neuron.method
    naive = lipsdp.estimate(model, method="naive", input_shape=shape)
    lower = lipsdp.lower.finite_difference_lower_bound(net, n_pairs=500)
    assert lower.value <= neuron.value * (1 + 1e-9) <= naive.value * (1 + 1e-6)


def test_non_overlapping_max_pool_is_one_lipschitz():
    pool = MaxPool.create((2, 6, 6), 2)
    assert pool.window_multiplicity() == 1 and pool.lipschitz_constant(2) == 1.0
    spike = MaxPool.create((1, 6, 6), 3, stride=1)
    assert spike.window_multiplicity() == 9 and spike.lipschitz_constant(2) == 3.0


def test_compare_table_for_a_cnn():
    torch.manual_seed(6)
    model = _double(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3)))
    table = lipsdp.compare(model, methods=["naive", "lipsdp-layer", "lipsdp-neuron", "lower"], input_shape=(1, 4, 4),
                           lower_options={"n_starts": 4, "steps": 20})
    values = dict(zip(table["method"], table["value"]))
    assert not table["value"].isna().any()
    assert values["lower"] <= values["lipsdp-neuron"] * (1 + 1e-9)
    assert values["lipsdp-neuron"] <= values["lipsdp-layer"] * (1 + 1e-9) <= values["naive"] * (1 + 1e-6)


# ----------------------------------------------------------------------------- errors
def test_a_cnn_without_input_shape_is_a_typed_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(InputShapeRequiredError, match="input_shape"):
        lipsdp.estimate(model)
    with pytest.raises(ShapeMismatchError):
        lipsdp.estimate(model, input_shape=(1, 5, 5))  # Linear(8) after a 2x3x3 map
    with pytest.raises(ShapeMismatchError):
        lipsdp.estimate(model, input_shape=(1, -4, 4))


def test_linear_on_an_unflattened_map_and_group_activations_on_maps_are_refused():
    with pytest.raises(UnsupportedLayerError, match="Flatten"):
        Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)), input_shape=(1, 4, 4))
    from lipsdp.nn import MaxMin

    with pytest.raises(UnsupportedLayerError, match="feature map"):
        Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), MaxMin(), nn.Flatten(), nn.Linear(8, 2)),
                           input_shape=(1, 4, 4))


def test_unsupported_layers_are_listed_by_path_next_to_convolutions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.ReLU(),
                          nn.Sequential(nn.ConvTranspose2d(2, 2, 2)), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError) as info:
        Network.from_torch(model, input_shape=(1, 4, 4))
    paths = [path for path, _ in info.value.unsupported]
    assert paths == ["1", "3.0"]


def test_refused_pooling_options():
    with pytest.raises(UnsupportedLayerError, match="output_size"):
        Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(2)), input_shape=(1, 6, 6))
    with pytest.raises((NotApplicableError, UnsupportedLayerError)):
        Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, padding=1, count_include_pad=False)),
                           input_shape=(1, 6, 6))


def test_cli_estimates_a_torchscript_cnn(tmp_path):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 4, 2)).eval()
    path = tmp_path / "cnn.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates torch.jit
        torch.jit.script(model).save(str(path))
    ok = subprocess.run([sys.executable, "-m", "lipsdp", "estimate", str(path), "--input-shape", "1,4,4",
                         "--method", "naive"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    expected = lipsdp.estimate(model.double(), method="naive", input_shape=(1, 4, 4)).value
    assert f"{expected:.6g}"[:5] in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "lipsdp", "estimate", str(path)], capture_output=True, text=True)
    assert missing.returncode != 0 and "--input-shape" in (missing.stderr + missing.stdout)
