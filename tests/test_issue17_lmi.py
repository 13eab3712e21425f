"""Issue 17 (lmi): activations a proof does not cover are refused, and bad input gets typed errors.

Each parameterization declares what its proof needs of the activation
(``activation_needs``): the LipSDP slope-[0, 1] constraint (sandwich, ldlt,
gershgorin, sll) or 1-Lipschitz (the layer-wise products aol, cayley, spectral).
Before the fix every parameterization accepted any module (MaxMin, ELU(2), GELU,
PReLU, even nn.Linear) and then claimed gamma, with finite-difference quotients up
to 1e4 gamma.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipsdp
import lipsdp.errors as lerr
import lipsdp.nn as lnn
import lmi
from lipsdp import activation_registry
from lmi import functional as LF

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PARAMS = lmi.parameterizations()
SLOPE_PARAMS = ["gershgorin", "ldlt", "sandwich", "sll"]
LAYERWISE = ["aol", "cayley", "spectral"]
DIMS = [4, 8, 8, 3]
F64 = torch.float64

GROUP_ACTIVATIONS = {
    "maxmin": lambda: lnn.MaxMin(),
    "groupsort4": lambda: lnn.GroupSort(4),
    "householder": lambda: lnn.Householder([0.6, -0.8]),
}

# activations no proof here covers: slopes outside [0, 1], not 1-Lipschitz, unknown types,
# random (RReLU in training mode) or trainable (PReLU) functions
NOT_COVERED = {
    "elu2": lambda: nn.ELU(alpha=2.0),
    "selu": lambda: nn.SELU(),
    "gelu": lambda: nn.GELU(),
    "silu": lambda: nn.SiLU(),
    "hardswish": lambda: nn.Hardswish(),
    "rrelu_train": lambda: nn.RReLU(1.5, 2.5),
    "rrelu_eval": lambda: nn.RReLU(1.5, 2.5).eval(),
    "softmax": lambda: nn.Softmax(dim=-1),
    "prelu": lambda: nn.PReLU(),
    "linear": lambda: nn.Linear(8, 8),
}

# representative activations the slope-[0, 1] proofs and/or the 1-Lipschitz proofs cover
COVERED = {
    "relu": lambda: nn.ReLU(),
    "leaky0.1": lambda: nn.LeakyReLU(0.1),
    "leaky1": lambda: nn.LeakyReLU(1.0),
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "elu1": lambda: nn.ELU(1.0),
    "softplus": lambda: nn.Softplus(),
    "hardtanh": lambda: nn.Hardtanh(),
    "relu6": lambda: nn.ReLU6(),
    "maxmin": lambda: lnn.MaxMin(),
    "groupsort4": lambda: lnn.GroupSort(4),
}
GROUP = {"maxmin", "groupsort4"}
SOUND_CASES = [(p, a) for p in PARAMS for a in COVERED if not (a in GROUP and p in SLOPE_PARAMS)]
GAMMAS = [0.05, 1.0, 20.0]


def _build(name, activation, gamma=1.0, dims=DIMS, **kw):
    return lmi.lipschitz_mlp(dims, gamma, parameterization=name, activation=activation, dtype=F64, **kw)


# ------------------------------------------------------------------ refusals (item 1)
@pytest.mark.parametrize("act", sorted(GROUP_ACTIVATIONS))
@pytest.mark.parametrize("name", SLOPE_PARAMS)
def test_slope_proofs_refuse_group_activations_and_name_who_accepts(name, act):
    with pytest.raises(lmi.ActivationNotCoveredError) as ei:
        _build(name, GROUP_ACTIVATIONS[act]())
    err = ei.value
    assert isinstance(err, lerr.ActivationNotCoveredError) and isinstance(err, TypeError)
    msg = str(err)
    assert type(GROUP_ACTIVATIONS[act]()).__name__ in msg  # names the activation
    assert "slopes in [0, 1]" in msg  # the property the proof needs
    accepted = msg.split("accept it:")[1]
    assert [s.strip() for s in accepted.split(",")] == LAYERWISE
    # and those parameterizations do accept it
    for other in LAYERWISE:
        assert _build(other, GROUP_ACTIVATIONS[act]()).lipschitz_bound() == pytest.approx(1.0)


@pytest.mark.parametrize("act", sorted(NOT_COVERED))
@pytest.mark.parametrize("name", PARAMS)
def test_no_parameterization_accepts_uncovered_activations(name, act):
    with pytest.raises(lmi.ActivationNotCoveredError, match="no lmi parameterization accepts it"):
        _build(name, NOT_COVERED[act]())


@pytest.mark.parametrize("spec", ["elu:2", "leaky_relu:2", "prelu"])
def test_spec_strings_are_judged_like_modules(spec):
    for name in PARAMS:
        with pytest.raises(lmi.ActivationNotCoveredError):
            _build(name, spec)


def test_negative_slope_is_one_lipschitz_but_not_slope_restricted():
    """LeakyReLU(-0.5) has slopes in [-0.5, 1]: 1-Lipschitz (layer-wise proofs) but outside [0, 1]."""
    for name in PARAMS:
        if name in LAYERWISE:
            assert isinstance(_build(name, "leaky_relu:-0.5").activation, nn.LeakyReLU)
        else:
            with pytest.raises(lmi.ActivationNotCoveredError, match="aol, cayley, spectral"):
                _build(name, "leaky_relu:-0.5")


def test_standalone_layers_refuse_uncovered_activations():
    with pytest.raises(lmi.ActivationNotCoveredError, match="aol, cayley, spectral"):
        lmi.SandwichLinear(3, 4, activation=lnn.MaxMin(), dtype=F64)
    with pytest.raises(lmi.ActivationNotCoveredError, match="SLLBlock"):
        lmi.SLLBlock(4, activation=nn.ELU(2.0), dtype=F64)
    with pytest.raises(lmi.ActivationNotCoveredError):
        lmi.make_activation(3)
    assert isinstance(lmi.make_activation("leaky_relu:0.2"), nn.LeakyReLU)
    layer = lmi.SandwichLinear(3, 4, activation="tanh", dtype=F64)
    layer.activation = nn.ELU(2.0)
    with pytest.raises(lmi.ActivationNotCoveredError):
        layer.lipschitz_bound()


def test_lmi_accepts_exactly_what_the_registry_admits():
    """Every registry example: a parameterization accepts it iff its activation_needs admits it."""
    for entry in activation_registry.entries():
        for module in entry.example_modules():
            for name in PARAMS:
                needs = lmi.get_parameterization(name).activation_needs
                ok, _ = needs.admits(module)
                if ok:
                    m = _build(name, module, dims=[3, 12, 12, 2])
                    assert m.activation is module
                else:
                    with pytest.raises(lmi.ActivationNotCoveredError):
                        _build(name, module, dims=[3, 12, 12, 2])


# -------------------------------------------- swapped activations: every claim re-checks
@pytest.mark.parametrize("name,swap", [("sandwich", lnn.MaxMin), ("sll", lnn.MaxMin), ("aol", lambda: nn.ELU(2.0)),
                                       ("ldlt", nn.PReLU)])
def test_swapped_activation_is_refused_wherever_a_bound_is_claimed(name, swap):
    m = _build(name, "relu")
    m.activation = swap()
    for claim in (m.lipschitz_bound, m.witness, m.lmi_violation, lambda: lmi.check_witness(m),
                  lambda: lmi.to_plain(m), lambda: lmi.witness(m),
                  lambda: lmi.certified_accuracy(m, torch.zeros(2, 4, dtype=F64), torch.zeros(2, dtype=torch.long), 0.1)):
        with pytest.raises(lmi.ActivationNotCoveredError):
            claim()


def test_swapped_maxmin_sandwich_exceeds_gamma_so_refusing_is_needed():
    """The sandwich net computes with its (swapped) activation; its quotient exceeds gamma."""
    torch.manual_seed(0)
    m = _build("sandwich", "relu")
    m.activation = lnn.MaxMin()
    q, _, _ = _max_quotient(m, steps=30)
    assert q > 1.0 * (1 + 1e-3)  # gamma would be a false claim


def test_check_witness_refuses_non_lmi_models():
    for fn in (lmi.check_witness, lmi.to_plain, lmi.witness):
        with pytest.raises(lmi.UnsupportedModelError) as ei:
            fn(nn.Linear(3, 3))
        assert isinstance(ei.value, TypeError) and "Linear" in str(ei.value)


# ---------------------------------------------- soundness of what is accepted (items 1, 4)
def _quotients(m, x, y):
    out = m(torch.cat([x, y]))
    return (out[: len(x)] - out[len(x):]).norm(dim=1) / (x - y).norm(dim=1)


def _max_quotient(m, steps=30, n_pairs=32, seed=0, lr=0.05):
    """Adam on the parameters and on input pairs to MAXIMISE ||f(x) - f(y)|| / ||x - y||.

    Returns the best quotient seen (each at the parameters of its step, so each is a
    lower bound on the Lipschitz constant of the model at that step) and the final pairs.
    """
    g = torch.Generator().manual_seed(seed)
    n = m.dims[0]
    x = torch.randn(n_pairs, n, generator=g, dtype=F64)
    near = x + 1e-3 * torch.randn(n_pairs, n, generator=g, dtype=F64)  # Jacobian-like pairs
    far = torch.randn(n_pairs, n, generator=g, dtype=F64)
    x = torch.cat([x, x]).requires_grad_(True)
    y = torch.cat([near, far]).requires_grad_(True)
    opt = torch.optim.Adam(list(m.parameters()) + [x, y], lr=lr)
    m.train()
    best = 0.0
    for _ in range(steps):
        q = _quotients(m, x, y)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
    return best, x.detach(), y.detach()


@pytest.mark.parametrize("name,act", SOUND_CASES)
def test_accepted_activations_keep_gamma_under_adversarial_training(name, act):
    gamma = GAMMAS[SOUND_CASES.index((name, act)) % len(GAMMAS)]
    torch.manual_seed(1)
    m = _build(name, COVERED[act](), gamma)
    best, x, y = _max_quotient(m)
    assert best <= gamma * (1 + 1e-6), (name, act, gamma, best)
    m.eval()
    with torch.no_grad():
        lower = float(_quotients(m, x, y).max())  # at the final parameters
    bound = lipsdp.estimate(lmi.to_plain(m)).value
    assert lower <= bound * (1 + 1e-9) and bound <= gamma * (1 + 1e-6), (name, act, gamma, lower, bound)
    ok, v = lmi.check_witness(m)
    assert ok, (name, act, v)


@pytest.mark.parametrize("name", LAYERWISE)
def test_layerwise_group_activation_export_is_linear_plus_activation(name):
    m = _build(name, lnn.GroupSort(4), 2.0).eval()
    plain = lmi.to_plain(m)
    kinds = [type(mod) for mod in plain]
    assert kinds == [nn.Linear, lnn.GroupSort, nn.Linear, lnn.GroupSort, nn.Linear]
    x = torch.randn(50, 4, dtype=F64)
    torch.testing.assert_close(plain(x), m(x), atol=1e-12, rtol=0)


def test_layerwise_certificate_is_the_one_lipschitz_lmi():
    """The slope-[0, 1] LMI is no certificate for MaxMin; the layer-wise (1-Lipschitz) one is.

    ``f(x) = min(x_1, 0)`` = ``[0, 1] MaxMin(diag(1, 0) x)`` is 1-Lipschitz, yet the slope
    LMI holds at rho = 0.01 (ReLU in place of MaxMin gives ``f = 0``).  The layer-wise LMI
    needs rho >= 1 = ||W_2||^2 ||W_1||^2.
    """
    W1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    W2 = torch.tensor([[0.0, 1.0]], dtype=F64)
    assert LF.lmi_max_eig([W1, W2], [torch.tensor([0.01, 1.0], dtype=F64)], 0.01) <= 0
    assert _max_eig(LF.layerwise_matrix([W1, W2], [torch.tensor([1.0, 1.0], dtype=F64)], 1.0)) <= 1e-12
    for lam in (0.5, 1.0, 2.0, 10.0):
        assert _max_eig(LF.layerwise_matrix([W1, W2], [torch.full((2,), lam, dtype=F64)], 0.99)) > 0
    with pytest.raises(lmi.InvalidArgumentError):  # a group activation takes one multiplier per layer
        LF.layerwise_matrix([W1, W2], [torch.tensor([1.0, 2.0], dtype=F64)], 1.0)


def _max_eig(M):
    return float(torch.linalg.eigvalsh(M).max())


# ------------------------------------------------------------- typed errors (item 3)
@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf])
def test_ldlt_alpha_must_be_positive_and_finite(alpha):
    with pytest.raises(lmi.InvalidArgumentError, match="alpha") as ei:
        _build("ldlt", "relu", alpha=alpha)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_only_float32_and_float64(dtype):
    with pytest.raises(lmi.UnsupportedDtypeError, match="float64") as ei:
        lmi.lipschitz_mlp(DIMS, 1.0, parameterization="sandwich", dtype=dtype)
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, lerr.InvalidOptionError)


@pytest.mark.parametrize("name", LAYERWISE)
def test_float64_model_moves_its_householder_activation(name):
    act = lnn.Householder([0.6, -0.8])  # a float32 parameter
    m = _build(name, act, 3.0).eval()
    assert act.v.dtype == F64
    x = torch.randn(20, 4, dtype=F64)
    assert m(x).dtype == F64
    assert lipsdp.estimate(lmi.to_plain(m)).value <= 3.0 * (1 + 1e-6)


@pytest.mark.parametrize("gamma", [math.nan, math.inf, -1.0, 0.0, "big"])
def test_gamma_must_be_positive_and_finite(gamma):
    with pytest.raises(lmi.InvalidArgumentError, match="gamma"):
        _build("sandwich", "relu", gamma)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", PARAMS)
def test_gamma_outside_the_exact_range_is_refused_and_its_ends_work(name, dtype):
    lo, hi = lmi.gamma_range(dtype)
    info = torch.finfo(dtype)
    assert lo == pytest.approx(info.tiny ** 0.25) and hi == pytest.approx(info.max ** 0.25)
    for bad in (lo / 2, hi * 2, 1e-300, 1e300):
        with pytest.raises(lmi.NumericalRangeError) as ei:
            lmi.lipschitz_mlp(DIMS, bad, parameterization=name, dtype=dtype)
        assert isinstance(ei.value, lerr.NumericalRangeError) and f"{hi:.3g}" in str(ei.value)
    for gamma in (lo * 1.5, hi / 1.5):
        m = lmi.lipschitz_mlp(DIMS, gamma, parameterization=name, dtype=dtype)
        out = m(torch.randn(5, 4, dtype=dtype))
        assert torch.isfinite(out).all()
        assert m.lipschitz_bound() == pytest.approx(gamma, rel=1e-5)
        ok, v = lmi.check_witness(m, tol=1e-9 if dtype == F64 else 1e-5)
        assert ok, (gamma, v)


def test_wrong_input_width_dtype_or_type_is_typed():
    m = _build("aol", "relu")
    with pytest.raises(lmi.ShapeMismatchError, match="width 4") as ei:
        m(torch.randn(5, 3, dtype=F64))
    assert isinstance(ei.value, lerr.ShapeMismatchError)
    with pytest.raises(lmi.InvalidInputError, match="float64"):
        m(torch.randn(5, 4, dtype=torch.float32))
    with pytest.raises(lmi.InvalidInputError):
        m([[0.0] * 4])
    with pytest.raises(lmi.ShapeMismatchError, match="width 3"):
        lmi.SLLBlock(3, dtype=F64)(torch.randn(2, 5, dtype=F64))


def test_bad_dims_options_and_group_widths_are_typed():
    for dims in ([4], [4, 0, 3], [4, 2.5, 3], 7):
        with pytest.raises(lmi.InvalidArgumentError, match="dims"):
            lmi.lipschitz_mlp(dims, 1.0)
    with pytest.raises(lmi.InvalidOptionError, match="alpha") as ei:
        lmi.lipschitz_mlp(DIMS, 1.0, parameterization="sandwich", alpha=2.0)
    assert isinstance(ei.value, TypeError)
    with pytest.raises(lmi.ShapeMismatchError, match="width 6"):
        _build("aol", lnn.GroupSort(4), dims=[4, 8, 6, 3])
