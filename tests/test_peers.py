"""Models of deel-torchlip and orthogonium, built with their own public APIs, read by lipsdp.

Each model is exported the ways its library documents (the module itself, deel-torchlip's
``vanilla_export()`` / ``vanilla_model()``, orthogonium's "assign ``.weight`` to a torch
layer", TorchScript of the exports) and checked: lipsdp's Network computes the peer's output
to 1e-6, the certified bound is at least a gradient lower bound, and a mis-paired MaxMin is
refused rather than certified.  Also :func:`lipsdp.check_claim` on known answers and lmi's
opt-in certified accuracy with lipsdp's bound.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lipsdp
from lipsdp.errors import InvalidOptionError, UnsupportedLayerError
from lipsdp.lower import gradient_lower_bound

TOL = 1e-6


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and deel's Sequential notices
        yield


@pytest.fixture
def deel():
    return pytest.importorskip("deel.torchlip")


@pytest.fixture
def ortho():
    return pytest.importorskip("orthogonium.layers")


def _inputs(width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(64, width, generator=torch.Generator().manual_seed(seed))


def assert_same_function(model, width: int) -> lipsdp.Network:
    """lipsdp's Network of ``model`` computes its outputs to 1e-6; returns the Network."""
    net = lipsdp.Network.from_torch(model)
    x = _inputs(width)
    with torch.no_grad():
        theirs = model(x).double().numpy()
    ours = net(x.double().numpy())
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= TOL * max(1.0, float(np.max(np.abs(theirs))))
    return net


def assert_sound(net: lipsdp.Network) -> float:
    """The certified bound is at least a gradient lower bound; returns the bound."""
    bound = float(lipsdp.estimate(net))
    lower = float(gradient_lower_bound(net, n_starts=3, steps=30).value)
    assert bound >= lower > 0
    return bound


def _trained_a_little(model, width: int, steps: int = 3) -> None:
    """A few optimiser steps, so weights, Björck caches and running statistics are not at their initial values."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        model(_inputs(width, seed=step + 1)).square().mean().backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------------------------ deel-torchlip
def deel_mlp(deel, k: float = 1.0):
    torch.manual_seed(0)
    return deel.Sequential(
        deel.SpectralLinear(16, 32), deel.GroupSort2(),
        deel.SpectralLinear(32, 32), deel.GroupSort(4),
        deel.FrobeniusLinear(32, 32, disjoint_neurons=False), deel.FullSort(),
        deel.SpectralLinear(32, 8), deel.MaxMin(),
        deel.SpectralLinear(16, 4), k_coef_lip=k,
    ).eval()


def test_deel_mlp_every_export_computes_the_same_function_and_certifies(deel):
    model = deel_mlp(deel)
    _trained_a_little(model, 16)
    exports = {"model": model, "vanilla_export": model.vanilla_export(),
               "vanilla_model": deel.vanilla_model(model, in_place=False)}
    exports["torchscript"] = torch.jit.script(exports["vanilla_export"])
    bounds = {name: assert_sound(assert_same_function(m, 16)) for name, m in exports.items()}
    assert max(bounds.values()) - min(bounds.values()) <= 1e-9 * max(bounds.values())
    # layers of norm at most 1 (Frobenius-normalised ones below): at most 1 up to float32 rounding of the weights
    assert bounds["model"] <= 1.0 + 1e-4


def test_deel_groupsort_is_ascending_and_k_coef_lip_scales_activations(deel):
    model = deel_mlp(deel, k=4.0)
    net = assert_same_function(model, 16)
    assert_sound(net)
    rules = [layer.activation for layer in net.layers if isinstance(layer, lipsdp.ActivationLayer)]
    assert [getattr(r, "descending", None) for r in rules[:3]] == [False, False, False]
    assert [int(r.group_size) for r in rules[:3]] == [2, 4, 32]  # FullSort: the whole layer


def test_deel_activation_traced_without_attributes_is_refused_with_the_reason(deel):
    traced = torch.jit.trace(nn.Sequential(nn.Linear(4, 4), deel.GroupSort2()), torch.rand(2, 4))
    with pytest.raises(UnsupportedLayerError, match="torch.jit.script"):
        lipsdp.Network.from_torch(traced)


def test_deel_fullsort_without_a_width_is_refused(deel):
    with pytest.raises(UnsupportedLayerError, match="put a Linear layer before it"):
        lipsdp.Network.from_torch(nn.Sequential(deel.FullSort(), nn.Linear(4, 2)))


def test_deel_lprelu_householder_and_normalisation_free_blocks(deel):
    torch.manual_seed(0)
    model = nn.Sequential(deel.SpectralLinear(16, 16), deel.LPReLU(16, init=2.5, k_coef_lip=1.0),
                          deel.SpectralLinear(16, 16), deel.HouseHolder(16, theta_initializer=0.7),
                          deel.LayerCentering(16, dim=-1), deel.ScaleBiasLayer(0.5, 16),
                          deel.BatchCentering(16), deel.SpectralLinear(16, 4))
    _trained_a_little(model, 16)
    with torch.no_grad():
        model[3].theta.fill_(0.7)  # one angle for every pair: lipsdp's Householder rule
    assert_sound(assert_same_function(model, 16))
    with torch.no_grad():
        model[3].theta[0] = 0.2
    with pytest.raises(UnsupportedLayerError, match="different angles"):
        lipsdp.Network.from_torch(model)


def test_deel_layer_centering_over_the_batch_is_refused(deel):
    with pytest.raises(UnsupportedLayerError, match="mixes"):
        lipsdp.Network.from_torch(nn.Sequential(nn.Linear(4, 4), deel.LayerCentering(4)))  # default dims (-2, -1)


def test_parametrized_layer_in_training_mode_is_refused(deel):
    model = nn.Sequential(deel.SpectralLinear(4, 4)).train()
    with pytest.raises(UnsupportedLayerError, match="eval"):
        lipsdp.Network.from_torch(model)


def test_scripted_parametrized_layer_is_refused_with_the_export_to_use(deel):
    scripted = torch.jit.script(nn.Sequential(deel.FrobeniusLinear(4, 4)).eval())
    with pytest.raises(UnsupportedLayerError, match="vanilla_export"):
        lipsdp.Network.from_torch(scripted)


# ------------------------------------------------------------------------------ orthogonium
def ortho_mlp(ortho):
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense
    from orthogonium.layers.residual import AdditiveResidual, PrescaledAdditiveResidual

    torch.manual_seed(0)
    return nn.Sequential(
        ortho.OrthoLinear(16, 32), ortho.MaxMin(),
        ortho.OrthoLinear(32, 32), ortho.Abs(),
        SDPBasedLipschitzDense(32, 32, 24),
        AdditiveResidual(nn.Sequential(ortho.OrthoLinear(32, 32), ortho.MaxMin())),
        PrescaledAdditiveResidual(nn.Sequential(ortho.UnitNormLinear(32, 32), ortho.MaxMin()), init_val=0.5),
        ortho.UnitNormLinear(32, 4),
    ).eval()


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_orthogonium_mlp_is_read_at_its_current_state_and_left_unchanged(ortho):
    model = ortho_mlp(ortho)
    before = _state(model)
    lipsdp.Network.from_torch(model)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # reading has no side effect
    net = assert_same_function(model, 16)  # read: the weights its next call uses
    # its power iteration updates on every eval call: the description says where and by how much
    notes = [a for a in net.assumptions if "updates its own state" in a]
    assert {n.split(" ", 1)[0] for n in notes} == {"0", "2", "5.fn.0"}
    assert_sound(net)


def test_orthogonium_exports_compute_the_same_function(ortho, deel):
    model = nn.Sequential(ortho.OrthoLinear(16, 32), ortho.MaxMin(), ortho.OrthoLinear(32, 4)).eval()
    by_hand = nn.Sequential(nn.Linear(16, 32), ortho.MaxMin(), nn.Linear(32, 4))
    with torch.no_grad():
        for i in (0, 2):  # orthogonium's README: ".weight can be assigned to a torch layer"
            by_hand[i].weight.copy_(model[i].weight)
            by_hand[i].bias.copy_(model[i].bias)
    for export in (by_hand, torch.jit.script(by_hand), deel.vanilla_model(model, in_place=False)):
        assert_sound(assert_same_function(export, 16))


def test_orthogonium_maxmin_pairs_j_with_j_plus_half(ortho):
    net = lipsdp.Network.from_torch(nn.Sequential(nn.Linear(8, 8), ortho.MaxMin()))
    rule = net.layers[1].activation
    assert (rule.grouping, int(rule.group_size), rule.descending) == ("split", 2, True)


class _AdjacentMaxMin(nn.Module):
    """Pairs adjacent neurons, under orthogonium's qualified name: a mis-paired MaxMin."""

    axis = 1

    def forward(self, z):
        pairs = z.reshape(*z.shape[:-1], -1, 2)
        return torch.stack([pairs.max(-1).values, pairs.min(-1).values], -1).reshape(z.shape)


_AdjacentMaxMin.__module__ = "orthogonium.layers.custom_activations"
_AdjacentMaxMin.__qualname__ = "MaxMin"


def test_mispaired_maxmin_is_refused_not_certified(ortho):
    model = nn.Sequential(nn.Linear(8, 8), _AdjacentMaxMin(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="differs from lipsdp's reading"):
        lipsdp.estimate(model)

    class Subclass(ortho.MaxMin):  # another class: never matched by orthogonium's name
        pass

    with pytest.raises(UnsupportedLayerError, match="Subclass"):
        lipsdp.Network.from_torch(nn.Sequential(nn.Linear(8, 8), Subclass(), nn.Linear(8, 2)))


# ------------------------------------------------------------------------------ check_claim
def _scaled_orthogonal(n: int, scale: float, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return scale * q


def test_check_claim_verdicts_on_a_known_constant():
    # a linear chain through the identity: L = 1.5 · 2 = 3 exactly
    net = lipsdp.Network.from_weights([_scaled_orthogonal(6, 1.5, 0), _scaled_orthogonal(6, 2.0, 1)],
                                      activation="identity")
    holds = lipsdp.check_claim(net, 3.0 * (1 + 1e-6))
    assert holds.verdict == "holds" and holds.margin > 0 and holds.certified >= 3.0 * (1 - 1e-9)
    refuted = lipsdp.check_claim(net, 2.5)
    assert refuted.verdict == "refuted" and refuted.lower > 2.5 and refuted.relative_excess > 0
    assert "false" in str(refuted)


def test_check_claim_locates_the_excess_in_the_layers():
    weights = [_scaled_orthogonal(8, 1 + 3e-7, 0), _scaled_orthogonal(8, 1.0, 1), _scaled_orthogonal(8, 1 + 1e-7, 2)]
    result = lipsdp.check_claim(lipsdp.Network.from_weights(weights, activation="maxmin"), 1.0)
    assert result.verdict != "holds" and 0 < result.relative_excess < 1e-6
    linear = [layer for layer in result.layers if layer.kind.startswith("linear")]
    assert [round(layer.share, 2) for layer in linear] == [0.75, 0.0, 0.25]
    assert "float32 rounding" in str(result)
    assert json.loads(json.dumps(result.as_dict()))["verdict"] == result.verdict


def test_check_claim_between_the_bounds_is_not_proved():
    rng = np.random.default_rng(0)
    net = lipsdp.Network.from_weights([rng.normal(size=(12, 6)), rng.normal(size=(12, 12)), rng.normal(size=(3, 12))])
    first = lipsdp.check_claim(net, 1e-3)
    assert first.verdict == "refuted" and first.certified > first.lower  # LipSDP is not tight on this net
    between = lipsdp.check_claim(net, float(np.sqrt(first.certified * first.lower)))
    assert between.verdict == "not proved" and between.lower <= between.claimed < between.certified


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), "1", True])
def test_check_claim_refuses_a_bad_gamma(gamma):
    net = lipsdp.Network.from_weights([np.eye(2)])
    with pytest.raises(InvalidOptionError, match="gamma"):
        lipsdp.check_claim(net, gamma)


def test_claim_columns_of_a_compare_table():
    from lipsdp.claims import add_claim_columns

    net = lipsdp.Network.from_weights([_scaled_orthogonal(4, 2.0, 0)])
    table = add_claim_columns(lipsdp.compare(net, ["naive", "lower"], progress=False), 1.5)
    assert dict(zip(table["method"], table["claim"])) == {"naive": "not proved", "lower": "refuted"}
    direct = lipsdp.compare(net, ["naive", "lower"], progress=False, claimed=1.5)
    assert list(direct["claim"]) == list(table["claim"]) and set(direct["claimed"]) == {1.5}


def test_check_claim_command_line(deel, tmp_path, capsys):
    from lipsdp.cli import main

    path = tmp_path / "deel.pt"
    torch.jit.script(deel_mlp(deel).eval().vanilla_export()).save(str(path))
    assert main(["check-claim", str(path), "--gamma", "1.5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["verdict"] == "holds" and record["claimed"] == 1.5 and record["certified"] <= 1.5


# ------------------------------------------------------------------------------ lmi
def test_lmi_certified_accuracy_can_use_lipsdps_lower_bound():
    import lmi
    from lmi.certify import tightest_bound

    torch.manual_seed(0)
    model = lmi.lipschitz_mlp([8, 16, 4], 1.0, parameterization="aol")
    bound, source = tightest_bound(model)
    assert source == "lipsdp" and bound < model.lipschitz_bound()
    assert bound >= lmi.empirical_lipschitz(model, n_starts=8, steps=20)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)  # every point correctly classified: accuracy is the margin test alone
    eps = [0.05, 0.1, 0.2]
    plain = lmi.certified_accuracy(model, x, y, eps)
    tight = lmi.certified_accuracy(model, x, y, eps, use_lipsdp=True)
    assert np.all(tight >= plain) and np.any(tight > plain)
    assert np.allclose(tight, lmi.certified_accuracy(model, x, y, eps, lipschitz=bound))
