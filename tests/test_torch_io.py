"""Reading torch models: every supported module, BatchNorm folding, TorchScript, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from lipsdp.errors import InvalidWeightsError, ShapeMismatchError, UnsupportedLayerError  # noqa: E402
from lipsdp.network import ActivationLayer, Affine, Network  # noqa: E402
from lipsdp.torch_io import network_from_torch, register_torch_converter, torch_converters  # noqa: E402


def _close(model, net: Network, n_in: int, tol: float = 1e-10) -> None:
    x = np.random.default_rng(0).normal(size=(16, n_in)) * 2
    with torch.no_grad():
        expected = model(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(net(x), expected, atol=tol, rtol=tol)


def _script(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


def _trace(model, n_in: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, torch.randn(3, n_in, dtype=torch.float64))


ACTIVATION_MODULES = [
    nn.ReLU(), nn.LeakyReLU(0.2), nn.Tanh(), nn.Sigmoid(), nn.ELU(0.7), nn.ELU(2.0), nn.Softplus(2.0, 30.0), nn.ReLU6(), nn.Hardtanh(-2.0, 0.5), nn.Hardsigmoid(), nn.PReLU(5, 0.3),
]


@pytest.mark.parametrize("module", ACTIVATION_MODULES, ids=lambda m: repr(m))
@pytest.mark.parametrize("mode", ["eager", "script", "trace"])
def test_activation_modules(module, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), module, nn.Linear(5, 2)).double()
    wrapped = {"eager": model, "script": _script(model) if mode == "script" else None,
               "trace": _trace(model, 3) if mode == "trace" else None}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # hyper-parameters must be read, not defaulted
        net = network_from_torch(wrapped)
    assert [type(l) for l in net.layers] == [Affine, ActivationLayer, Affine]
    _close(model, net, 3)


def test_skipped_modules_and_nested_paths():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 6), nn.Dropout(0.5), nn.Sequential(nn.Identity(), nn.ReLU(), nn.Sequential(nn.Linear(6, 3))),
        nn.Identity(),
    ).double().eval()
    net = Network.from_torch(model)
    assert net.widths == (4, 6, 3)
    assert net.layers[-1].name == "3.2.0"
    _close(model, net, 4)


def test_dropout_in_training_mode_is_refused():
    """In training mode dropout rescales at random: the eval-mode function is what lipsdp bounds."""
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.9), nn.ReLU(), nn.Linear(3, 1)).double().train()
    with pytest.raises(UnsupportedLayerError, match="eval"):
        network_from_torch(model)
    assert network_from_torch(model.eval()).widths == (2, 3, 1)


def _batchnorm_model():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 5), nn.BatchNorm1d(5),
                          nn.ReLU(), nn.BatchNorm1d(5, affine=False), nn.Linear(5, 2)).double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 4, dtype=torch.float64) * 3 + 1)
        for module in model:
            if isinstance(module, nn.BatchNorm1d) and module.affine:
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("mode", ["eager", "script", "trace"])
def test_batchnorm_folds_into_linear(mode):
    model = _batchnorm_model()
    wrapped = {"eager": lambda: model, "script": lambda: _script(model), "trace": lambda: _trace(model, 4)}[mode]()
    net = network_from_torch(wrapped)
    assert net.is_feedforward and net.widths == (4, 6, 5, 2)  # folded: no separate affine layers
    _close(model, net, 4)


def test_batchnorm_in_training_mode_is_an_error_naming_the_path():
    model = _batchnorm_model().train()
    with pytest.raises(UnsupportedLayerError) as info:
        network_from_torch(model)
    paths = [p for p, _ in info.value.unsupported]
    assert paths == ["1", "4", "6"]
    assert "model.eval()" in str(info.value)


def test_every_unsupported_module_listed_in_one_error():
    model = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Sequential(nn.ReLU(), nn.ConvTranspose1d(1, 1, 1)), nn.LayerNorm(3),
                          nn.Linear(3, 1))
    with pytest.raises(UnsupportedLayerError) as info:
        network_from_torch(model)
    assert info.value.unsupported == [("1", "GELU"), ("2.1", "ConvTranspose1d"), ("3", "LayerNorm")]
    for text in ("1: GELU", "2.1: ConvTranspose1d", "3: LayerNorm"):
        assert text in str(info.value)


def test_unsupported_scripted_module_is_listed():
    model = _script(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1)))
    with pytest.raises(UnsupportedLayerError) as info:
        network_from_torch(model)
    assert info.value.unsupported == [("1", "GELU")]


def test_bare_module_is_a_one_layer_network():
    layer = nn.Linear(3, 2).double()
    net = network_from_torch(layer)
    assert net.widths == (3, 2)
    _close(layer, net, 3)
    with pytest.raises(UnsupportedLayerError):
        network_from_torch(nn.GELU())


def test_nan_weights_are_rejected():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    with pytest.raises(InvalidWeightsError, match="2"):
        network_from_torch(model)


def test_shape_mismatch_is_rejected():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ShapeMismatchError):
        network_from_torch(model)


def test_float32_model_is_read_in_float64():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net = network_from_torch(model)
    assert net.weights[0].dtype == np.float64
    np.testing.assert_array_equal(net.weights[0], model[0].weight.detach().double().numpy())


def test_register_custom_converter():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    register_torch_converter(Doubler, lambda module, path: [Affine.create(2 * np.eye(3), None, path)])
    try:
        assert any(name.endswith(".Doubler") for name in torch_converters())
        model = nn.Sequential(nn.Linear(2, 3), Doubler(), nn.ReLU(), nn.Linear(3, 1)).double()
        net = network_from_torch(model)
        _close(model, net, 2)
    finally:
        from lipsdp import torch_io

        torch_io._CONVERTERS.pop("Doubler", None)
