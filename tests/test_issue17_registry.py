"""Issue 17: one activation registry keyed by torch type; files that cannot carry activations or
structure are refused unless the user states them, and every result says what was assumed.

Each test here failed on the code before the registry (a false or silently different bound).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import lipsdp  # noqa: E402
from lipsdp import activation_registry as registry  # noqa: E402
from lipsdp.errors import (  # noqa: E402
    InvalidActivationError,
    InvalidWeightsError,
    LipSDPError,
    ModelFileError,
    ShapeMismatchError,
    UnsupportedLayerError,
)
from lipsdp.io import load_network  # noqa: E402
from lipsdp.lower import gradient_lower_bound  # noqa: E402
from conftest import anchor_path  # noqa: E402


def _quotients(f, x: np.ndarray, y: np.ndarray) -> float:
    """Largest difference quotient ‖f(x) − f(y)‖ / ‖x − y‖ over the row pairs (a true lower bound)."""
    num = np.linalg.norm(f(x) - f(y), axis=1)
    return float(np.max(num / np.linalg.norm(x - y, axis=1)))


def _torch_fn(model):
    def f(x):
        with torch.no_grad():
            return model(torch.as_tensor(x)).numpy()

    return f


# ------------------------------------------------------------------------- the registry
def _example_modules():
    for entry in registry.entries():
        for module in entry.example_modules():
            yield pytest.param(entry.name, module, id=f"{entry.name}:{module!r}")


@pytest.mark.parametrize("name, module", list(_example_modules()))
def test_every_registered_module_reads_back_to_the_same_function_and_spec(name, module):
    """Torch module → rule → network equals torch to 1e-12, and the rule's spec parses back to itself."""
    torch.manual_seed(0)
    width = 12  # divisible by every example group size
    model = nn.Sequential(nn.Linear(3, width), module, nn.Linear(width, 2)).double().eval()
    net = lipsdp.Network.from_torch(model)
    x = np.random.default_rng(0).normal(size=(50, 3)) * 3
    np.testing.assert_allclose(net(x), _torch_fn(model)(x), rtol=1e-12, atol=1e-12)
    rules = [layer.activation for layer in net.layers if isinstance(layer, lipsdp.ActivationLayer)]
    for rule in rules:  # (the identity is folded away)
        again = registry.rule_from_spec(registry.spec_of(rule))
        np.testing.assert_array_equal(again.forward_batch(x @ np.ones((3, width))), rule.forward_batch(x @ np.ones((3, width))))
        assert registry.spec_of(again) == registry.spec_of(rule)


def test_registry_is_the_one_list_of_supported_modules():
    with pytest.raises(UnsupportedLayerError) as info:
        lipsdp.Network.from_torch(nn.Sequential(nn.Linear(2, 2), nn.SELU(), nn.Linear(2, 2)))
    for short in registry.supported_torch_types():
        assert short in str(info.value)


def test_unknown_spec_names_the_registered_activations():
    with pytest.raises(registry.UnknownActivationError) as info:
        registry.rule_from_spec("gelu")
    assert "leaky_relu" in str(info.value) and "activation" in str(info.value)


# ----------------------------------------------------------------- matching by exact type
def test_same_named_class_of_another_library_is_not_mistaken_for_ours():
    """orthogonium's MaxMin pairs j with j + n/2: a class named MaxMin elsewhere must not be read as lipsdp's."""

    class MaxMin(nn.Module):
        group_size, grouping, descending = 2, "consecutive", True

        def forward(self, x):
            a, b = x.chunk(2, dim=-1)
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=-1)

    with pytest.raises(UnsupportedLayerError, match="MaxMin"):
        lipsdp.Network.from_torch(nn.Sequential(nn.Linear(4, 4), MaxMin(), nn.Linear(4, 1)))


def test_subclass_that_changes_the_function_is_refused():
    class DoubledReLU(nn.ReLU):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="DoubledReLU"):
        lipsdp.Network.from_torch(nn.Sequential(nn.Linear(2, 2), DoubledReLU(), nn.Linear(2, 1)))


@pytest.mark.parametrize("module, reason", [
    (nn.GELU(), "GELU"), (nn.Softmax(dim=-1), "Softmax"), (nn.SiLU(), "SiLU"), (nn.Hardswish(), "Hardswish"),
    (nn.RReLU(1.5, 2.5), "training mode"), (nn.Linear(3, 3), None),
])
def test_unsupported_activations_are_listed(module, reason):
    model = nn.Sequential(nn.Linear(3, 3), module, nn.Linear(3, 1))
    if reason is None:  # a Linear between Linears is fine: merged
        assert lipsdp.Network.from_torch(model).widths == (3, 1)
        return
    with pytest.raises(UnsupportedLayerError, match=reason):
        lipsdp.Network.from_torch(model)


def test_rrelu_in_eval_mode_is_leaky_relu_with_the_mean_slope():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.RReLU(1.5, 2.5), nn.Linear(4, 2)).double().eval()
    net = lipsdp.Network.from_torch(model)
    x = np.random.default_rng(1).normal(size=(40, 3))
    np.testing.assert_allclose(net(x), _torch_fn(model)(x), rtol=1e-12)
    assert lipsdp.estimate(net).value >= gradient_lower_bound(net, n_starts=4, steps=20).value * (1 - 1e-7)


# ---------------------------------------------------------------------------- Softplus
def test_discontinuous_softplus_is_refused():
    """Softplus(threshold=-2) jumps by 2.1 at x = −2: it has no finite Lipschitz constant (was certified 0.54)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Softplus(threshold=-2), nn.Linear(3, 1)).double()
    with pytest.raises(UnsupportedLayerError, match="discontinuous"):
        lipsdp.Network.from_torch(model)
    with pytest.raises(InvalidActivationError, match="threshold"):
        registry.rule_from_spec("softplus:1:-2")


def test_default_softplus_is_certified_as_the_smooth_one_and_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.Softplus(beta=2.0), nn.Linear(5, 1)).double()
    net = lipsdp.Network.from_torch(model)
    bound = lipsdp.estimate(net)
    assert any("smooth softplus" in a and "threshold" in a for a in net.assumptions)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)) * 3
    y = x + rng.normal(size=x.shape) * 1e-3
    assert bound.value >= _quotients(_torch_fn(model), x, y)


# ------------------------------------------------------------------------- model files
def _save_state_dict(model, path):
    torch.save(model.state_dict(), path)
    return path


def test_state_dict_is_not_read_as_a_relu_chain(tmp_path):
    """Sequential(Linear, GELU, Linear) with unit weights: true constant 1.1289, was certified 1."""
    model = nn.Sequential(nn.Linear(1, 1), nn.GELU(), nn.Linear(1, 1))
    with torch.no_grad():
        for lin in (model[0], model[2]):
            lin.weight.fill_(1.0)
    path = _save_state_dict(model, tmp_path / "gelu.pt")
    with pytest.raises(ModelFileError, match="activation="):
        load_network(path)
    with pytest.raises(LipSDPError, match="gelu"):
        load_network(path, activation="gelu")


def test_state_dict_result_states_the_activation_and_the_invisible_tail(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(dim=-1))
    net = load_network(_save_state_dict(model, tmp_path / "s.pt"), activation="relu")
    assert net.widths == (3, 4, 2)
    text = " ".join(net.assumptions)
    assert "relu" in text and "stated by the user" in text and "Softmax" in text
    assert lipsdp.estimate(net).assumptions == net.assumptions


def test_state_dict_of_a_residual_model_is_refused(tmp_path):
    """lmi.to_plain of an SLL net has lipsdp.nn.Residual blocks: a state dict cannot show them (was 0.4932 < 0.5222)."""
    import lmi

    torch.manual_seed(0)
    plain = lmi.to_plain(lmi.lipschitz_mlp([4, 6, 6, 2], gamma=1.0, parameterization="sll", dtype=torch.float64))
    path = _save_state_dict(plain, tmp_path / "sll.pt")
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_network(path, activation="relu")


@pytest.mark.parametrize("gap_model", [
    lambda: nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(), nn.Linear(3, 1)),
])
def test_state_dict_with_two_hidden_modules_between_linears_is_refused(tmp_path, gap_model):
    with pytest.raises(ModelFileError, match="parameter-free modules"):
        load_network(_save_state_dict(gap_model(), tmp_path / "g.pt"), activation="relu")


def test_adjacent_linears_in_a_state_dict_get_no_activation(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    net = load_network(_save_state_dict(model, tmp_path / "a.pt"), activation="tanh")
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_allclose(net(x), _torch_fn(model)(x), rtol=1e-12)


def test_maxmin_mat_reads_as_maxmin():
    """weights_l2_2fc_16.mat without a flag was read as ReLU: 20.43, below the lower bound 22.02."""
    net = load_network(anchor_path("maxmin", "weights_l2_2fc_16.mat"))
    assert "maxmin" in net.summary()
    assert any("'W'" in a for a in net.assumptions)
    value = lipsdp.estimate(net).value
    assert value == pytest.approx(22.5944, rel=1e-4)
    assert value >= gradient_lower_bound(net, n_starts=4, steps=30).value


def test_residual_mat_needs_its_structure_stated():
    """resweights_5_32.mat read as a chain was certified 6.855; the residual layout gives the anchor's network."""
    path = anchor_path("maxmin", "resweights_5_32.mat")
    chain = load_network(path)
    assert any("feed-forward structure" in a for a in chain.assumptions)
    residual = load_network(path, structure="residual")
    assert sum(isinstance(layer, lipsdp.Residual) for layer in residual.layers) == 3
    lower = gradient_lower_bound(residual, n_starts=4, steps=30).value
    assert lipsdp.estimate(residual).value >= lower > lipsdp.estimate(chain).value
    with pytest.raises(ModelFileError, match="structure"):
        load_network(path, structure="dense")


def test_npz_with_its_own_activation_refuses_a_contradicting_one(tmp_path):
    from lipsdp.io import save_network_npz

    rng = np.random.default_rng(0)
    net = lipsdp.Network.from_weights([rng.normal(size=(3, 2)), rng.normal(size=(1, 3))], activation="tanh")
    path = save_network_npz(net, tmp_path / "t.npz")
    assert load_network(path).assumptions == ()
    with pytest.raises(ModelFileError, match="names its activation"):
        load_network(path, activation="relu")


def test_a_directory_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="directory"):
        load_network(tmp_path)


# ------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("weights, error", [
    ([np.ones((2, 2)) * (1 + 1j), np.ones((1, 2))], InvalidWeightsError),
    ([np.array([1.0, 2.0]), np.ones((1, 1))], ShapeMismatchError),
    ([np.array([["a", "b"]]), np.ones((1, 1))], InvalidWeightsError),
])
def test_weights_that_are_not_a_real_matrix_are_refused(weights, error):
    with pytest.raises(error):
        lipsdp.Network.from_weights(weights, activation="relu")


def test_complex_torch_weights_are_refused():
    lin = nn.Linear(2, 2, dtype=torch.complex64)
    with pytest.raises(InvalidWeightsError, match="complex"):
        lipsdp.Network.from_torch(nn.Sequential(lin))


def test_missing_activation_is_a_typed_error():
    with pytest.raises(InvalidActivationError, match="no activation given"):
        lipsdp.Network.from_weights([np.eye(2), np.eye(2)], activation=None)


# ------------------------------------------------------------------- fixed-slope layers
@pytest.mark.parametrize("module", [nn.LeakyReLU(1.0), nn.Identity(), nn.PReLU(init=1.0)])
@pytest.mark.parametrize("method", ["lipsdp-neuron", "lipsdp-layer", "eclipse-fast", "naive"])
def test_linear_networks_get_the_spectral_norm_of_the_product(module, method):
    """Fixed slope = a linear map: the answer is ‖W₃W₂W₁‖ (lipsdp-neuron failed on 51 of 83 such nets)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), module, nn.Linear(6, 4), module, nn.Linear(4, 3)).double()
    net = lipsdp.Network.from_torch(model)
    ws = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    exact = np.linalg.norm(ws[2] @ ws[1] @ ws[0], 2)
    value = lipsdp.estimate(net, method=method).value
    assert value >= exact * (1 - 1e-9)
    assert value == pytest.approx(exact, rel=1e-6)


def test_prelu_is_read_at_its_current_slopes():
    torch.manual_seed(2)
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([-0.5, 0.3, 1.5, 0.0]))
    model = nn.Sequential(nn.Linear(3, 4), prelu, nn.Linear(4, 2)).double()
    net = lipsdp.Network.from_torch(model)
    x = np.random.default_rng(0).normal(size=(30, 3))
    np.testing.assert_allclose(net(x), _torch_fn(model)(x), rtol=1e-12)
    assert lipsdp.estimate(net).value >= gradient_lower_bound(net, n_starts=4, steps=30).value * (1 - 1e-7)


def test_traced_leaky_relu_slope_is_read_from_the_code():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.3), nn.Linear(2, 1)), torch.randn(1, 2))
    net = lipsdp.Network.from_torch(traced)  # the slope is a constant of the traced code
    assert "0.3" in net.summary()


def test_traced_training_mode_is_refused_even_after_eval():
    """torch.jit.trace records the training flag as a constant of the code: .eval() afterwards does not change it."""
    model = nn.Sequential(nn.Linear(2, 2), nn.RReLU(), nn.Linear(2, 2), nn.Dropout(0.5), nn.Linear(2, 2),
                          nn.BatchNorm1d(2), nn.Linear(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.train(), torch.randn(4, 2)).eval()
    with pytest.raises(UnsupportedLayerError) as info:
        lipsdp.Network.from_torch(traced)
    assert [path for path, _ in info.value.unsupported] == ["1", "3", "5"]


def test_hook_based_spectral_norm_is_refused():
    """torch.nn.utils.spectral_norm recomputes .weight in a pre-forward hook: the stored weight can be stale."""
    from torch.nn.utils import spectral_norm

    with pytest.raises(UnsupportedLayerError, match="hooks"):
        lipsdp.Network.from_torch(nn.Sequential(spectral_norm(nn.Linear(3, 3))).eval())


def test_complex_mat_weights_are_refused(tmp_path):
    import scipy.io

    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.array([[1 + 3j, 0], [0, 1]]), np.eye(2)
    scipy.io.savemat(tmp_path / "c.mat", {"weights": cells})
    with pytest.raises(InvalidWeightsError, match="complex"):
        load_network(tmp_path / "c.mat")


@pytest.mark.parametrize("spec", ["softplus:1e-320", "softplus:1e9:-1e6"])
def test_extreme_softplus_specs_are_typed_errors(spec):
    with pytest.raises(InvalidActivationError, match="discontinuous|beta"):
        registry.rule_from_spec(spec)


def test_admits_answers_for_unknown_spec_names():
    ok, reason = registry.SLOPE_IN_0_1.admits("foo")
    assert not ok and "foo" in reason


def test_saving_keeps_what_was_assumed(tmp_path):
    """A user-named activation saved into .npz must not become a fact of the reloaded file."""
    from lipsdp.io import save_network_npz

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net = load_network(_save_state_dict(model, tmp_path / "s.pt"), activation="relu")
    again = load_network(save_network_npz(net, tmp_path / "s.npz"))
    assert again.assumptions == net.assumptions and again.assumptions
