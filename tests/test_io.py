"""Model files: .pt (state_dict, TorchScript), .npz, .mat; errors; anchors; atomic writes."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from lipsdp.activation_registry import rule_from_spec
from lipsdp.errors import InvalidActivationError, LipSDPError, ModelFileError, ModelFileNotFoundError, NotApplicableError
from lipsdp.io import atomic_path, load_network, parse_activation, save_network_npz
from lipsdp.network import Network, Residual, Affine, ActivationLayer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _random_net(activation="relu", seed=0, dims=(3, 5, 4, 2)) -> Network:
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(dims[k + 1], dims[k])) for k in range(len(dims) - 1)]
    bs = [rng.normal(size=d) for d in dims[1:]]
    return Network.from_weights(ws, bs, activation)


def _same(a: Network, b: Network) -> None:
    x = np.random.default_rng(1).normal(size=(10, a.input_dim))
    np.testing.assert_allclose(a(x), b(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh", rule_from_spec("leaky_relu:0.3"), rule_from_spec("elu:0.5"), rule_from_spec("softplus:2"), "sigmoid"])
def test_npz_round_trip(tmp_path, activation):
    net = _random_net(activation)
    path = save_network_npz(net, tmp_path / "net.npz")
    loaded = load_network(path)
    _same(net, loaded)
    assert [a.describe() for a in loaded.activations] == [a.describe() for a in net.activations]
    assert not list(tmp_path.glob("*.tmp"))


def test_npz_single_layer_and_alternative_keys(tmp_path):
    w = np.arange(6.0).reshape(2, 3)
    save_network_npz(Network.from_weights([w]), tmp_path / "one.npz")
    np.testing.assert_array_equal(load_network(tmp_path / "one.npz").weights[0], w)
    rng = np.random.default_rng(0)
    w1, w2, b1 = rng.normal(size=(4, 3)), rng.normal(size=(1, 4)), rng.normal(size=4)
    np.savez(tmp_path / "alt.npz", weights_1=w1, weights_2=w2, biases_1=b1, biases_2=np.zeros(1))
    net = load_network(tmp_path / "alt.npz", activation="tanh")
    assert net.widths == (3, 4, 1) and net.activations[0].name == "tanh"
    np.testing.assert_array_equal(net.biases[0], b1)


def test_npz_without_biases_and_bad_indices(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nob.npz", W0=rng.normal(size=(4, 3)), W1=rng.normal(size=(2, 4)))
    with pytest.raises(ModelFileError, match="cannot carry the activations"):
        load_network(tmp_path / "nob.npz")  # no 'activation' entry: the user must say
    loaded = load_network(tmp_path / "nob.npz", activation="relu")
    assert loaded.widths == (3, 4, 2)
    assert any("as stated by the user" in a for a in loaded.assumptions)
    np.savez(tmp_path / "bad.npz", W0=rng.normal(size=(4, 3)), W1=rng.normal(size=(2, 4)), b0=np.zeros(4))
    with pytest.raises(ModelFileError, match="bias indices"):
        load_network(tmp_path / "bad.npz")
    np.savez(tmp_path / "empty.npz", something=np.zeros(3))
    with pytest.raises(ModelFileError, match="W0"):
        load_network(tmp_path / "empty.npz")


def test_save_refuses_non_feedforward(tmp_path):
    net = Network([Affine.create(np.eye(2)), Residual((Affine.create(np.eye(2)), ActivationLayer(rule_from_spec("relu"))))])
    with pytest.raises(NotApplicableError):
        save_network_npz(net, tmp_path / "res.npz")


def test_mat_round_trip_weights_and_w_keys(tmp_path):
    net = _random_net("relu")
    cells = np.empty((1, 3), dtype=object)
    for k, w in enumerate(net.weights):
        cells[0, k] = w
    scipy.io.savemat(tmp_path / "a.mat", {"weights": cells})
    scipy.io.savemat(tmp_path / "b.mat", {"W": cells})
    for name, convention in (("a.mat", "relu"), ("b.mat", "maxmin")):
        with pytest.raises(LipSDPError) if convention == "maxmin" else contextlib.nullcontext():
            load_network(tmp_path / name)  # 'W' reads as MaxMin (odd widths cannot pair)
        loaded = load_network(tmp_path / name, activation="relu")
        assert loaded.widths == net.widths
        assert any("feed-forward structure" in a for a in loaded.assumptions)
        for w1, w2 in zip(loaded.weights, net.weights):
            np.testing.assert_array_equal(w1, w2)
    scipy.io.savemat(tmp_path / "c.mat", {"other": np.zeros(3)})
    with pytest.raises(ModelFileError, match="'weights' or 'W'"):
        load_network(tmp_path / "c.mat")


@pytest.mark.parametrize("name, widths", [("random_weights.mat", (2, 10, 30, 20, 2)), ("mnist_weights.mat", (784, 50, 10))])
def test_lipsdp_anchors_load(name, widths):
    path = SHARED / "anchors" / "lipsdp" / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    net = load_network(path)
    assert net.widths == widths
    assert all(a.name == "relu" for a in net.activations)


def test_maxmin_anchor_w_key_loads():
    path = SHARED / "anchors" / "maxmin" / "weights_l2_2fc_16.mat"
    if not path.exists():
        pytest.skip(f"{path} not available")
    assert load_network(path).widths == (784, 16, 10)


# ------------------------------------------------------------------------------ torch
torch = pytest.importorskip("torch")


def _torch_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2)).double()


def _check_torch(model, net):
    x = np.random.default_rng(0).normal(size=(8, 3))
    with torch.no_grad():
        expected = model(torch.tensor(x)).numpy()
    np.testing.assert_allclose(net(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_state_dict_round_trip(tmp_path, suffix):
    model = _torch_model()
    path = tmp_path / f"model{suffix}"
    torch.save(model.state_dict(), path)
    _check_torch(model, load_network(path, activation="tanh"))


def test_nested_state_dict_is_refused(tmp_path):
    """Keys 0.0.weight and 1.weight cannot show what follows Linear 0.0 inside its container."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), torch.nn.Linear(4, 2)).double()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_network(tmp_path / "m.pt", activation="relu")


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_round_trip(tmp_path, kind):
    model = _torch_model(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, torch.randn(2, 3, dtype=torch.float64))
    scripted.save(str(tmp_path / "m.pt"))
    _check_torch(model, load_network(tmp_path / "m.pt"))
    with pytest.raises(ModelFileError, match="carries its activations"):
        load_network(tmp_path / "m.pt", activation="tanh")  # a contradicting statement is refused


def test_state_dict_with_batchnorm_is_explained(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    torch.save(model.state_dict(), tmp_path / "bn.pt")
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_network(tmp_path / "bn.pt")


def test_pickled_module_is_refused(tmp_path):
    torch.save(_torch_model(), tmp_path / "full.pt")
    with pytest.raises(ModelFileError, match="state_dict"):
        load_network(tmp_path / "full.pt")


# ------------------------------------------------------------------------------ errors
def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(ModelFileNotFoundError, match="nope.pt"):
        load_network(path)
    with pytest.raises(FileNotFoundError):
        load_network(path)


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".mat"])
def test_malformed_file(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"definitely not a model")
    with pytest.raises(ModelFileError, match="expected|state_dict"):
        load_network(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"\.onnx.*expected \.pt"):
        load_network(path)


def test_parse_activation():
    assert parse_activation("leaky_relu:0.25").describe() == "leaky_relu[0.25,1]"
    assert parse_activation("relu").name == "relu"
    with pytest.raises(InvalidActivationError, match="at most 0"):
        parse_activation("tanh:2")
    with pytest.raises(InvalidActivationError, match="alpha"):
        parse_activation("elu:abc")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists() and not list((tmp_path / "sub").iterdir())
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
