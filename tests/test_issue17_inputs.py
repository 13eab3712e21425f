"""Issue 17 (inputs): names, options and sizes are checked before any work, and refused with typed errors.

* unknown method and solver names (``estimate``, ``compare``, ``lipsdp compare``);
* keyword options a method or solver does not take, norm-specific options at the other norm,
  and option values of the wrong type;
* SDPs too large for the memory budget (:mod:`lipsdp.budget`), refused before anything large is built;
* the network's assumptions carried into the bound and printed by ``lipsdp estimate``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc

import numpy as np
import pytest

import lipsdp
from lipsdp import errors
from lipsdp.budget import estimate_cost
from lipsdp.cli import main
from lipsdp.lower import gradient_lower_bound
from lipsdp.bound_methods import LipschitzBound


@pytest.fixture
def net() -> lipsdp.Network:
    rng = np.random.default_rng(0)
    return lipsdp.Network.from_weights([rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))],
                                       [rng.normal(size=6), rng.normal(size=5), np.zeros(2)], "relu")


@pytest.fixture(scope="module")
def wide() -> lipsdp.Network:
    """8 → 20000 → 1 (ReLU): its LipSDP matrix (d = 20008) needs tens of GiB in float64 alone."""
    rng = np.random.default_rng(1)
    return lipsdp.Network.from_weights([rng.normal(size=(20000, 8)), rng.normal(size=(1, 20000)) / 100], None, "relu")


def _gradient_norm(net: lipsdp.Network, x: np.ndarray) -> float:
    """‖∇f(x)‖₂ of a one-hidden-layer ReLU net with one output: a lower bound on its Lipschitz constant."""
    w1, w2 = net.weights
    active = (w1 @ x + net.biases[0]) > 0
    return float(np.linalg.norm((w2[0] * active) @ w1))


# ----------------------------------------------------------------------------- names
def test_compare_refuses_an_unknown_method_name_before_running_any():
    net = lipsdp.Network.from_weights([np.eye(2)], None, "relu")
    with pytest.raises(errors.UnknownMethodError, match="lipsdp-nueron") as info:
        lipsdp.compare(net, methods=["naive", "lipsdp-nueron"])
    for known in ("lipsdp-neuron", "lower", "exact"):  # compare's extra rows are listed too
        assert known in str(info.value)


def test_compare_takes_one_method_name_as_a_string(net):
    table = lipsdp.compare(net, methods="naive")
    assert list(table["method"]) == ["naive"]
    assert table["value"].item() >= gradient_lower_bound(net).value * (1 - 1e-9)


def test_compare_refuses_methods_that_are_not_names(net):
    with pytest.raises(errors.InvalidOptionError, match="methods"):
        lipsdp.compare(net, methods=5)


def test_compare_refuses_an_unknown_solver_before_running_any(net):
    with pytest.raises(errors.UnknownSolverError, match="foo"):
        lipsdp.compare(net, methods=["naive"], solver="foo")


def test_solver_name_that_is_not_a_string_is_a_typed_error(net):
    with pytest.raises(errors.InvalidOptionError, match="solver"):
        lipsdp.estimate(net, solver=3)


def test_cli_compare_with_an_unknown_solver_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    from lipsdp import suite

    monkeypatch.setattr(suite, "DEFAULT_NETS", (suite.SuiteNet("relu-64-4-10", (4,), "relu"),))
    assert main(["compare", "--out", str(tmp_path), "--methods", "naive", "--solver", "foo"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "foo" in captured.err and "cvxopt" in captured.err
    assert captured.out == "" and not list(tmp_path.iterdir())  # refused before any training or writing


def test_cli_compare_with_an_unknown_method_exits_2(tmp_path, capsys, monkeypatch):
    from lipsdp import suite

    monkeypatch.setattr(suite, "DEFAULT_NETS", (suite.SuiteNet("relu-64-4-10", (4,), "relu"),))
    assert main(["compare", "--out", str(tmp_path), "--methods", "naive", "lipsdp-nueron"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lipsdp-nueron" in err and "lower" in err


# ----------------------------------------------------------------------------- options
def test_a_misspelt_keyword_is_refused_and_corrected(net):
    with pytest.raises(errors.InvalidOptionError, match="methd") as info:
        lipsdp.estimate(net, methd="naive")
    assert isinstance(info.value, TypeError)
    assert "did you mean 'method'" in str(info.value) and "split" in str(info.value)


@pytest.mark.parametrize("solver, option, accepted", [("scs", "foo", "eps_abs"), ("cvxopt", "bogus", "abstol"),
                                                      ("ipm", "eps_abs", "tol")])
def test_an_option_the_named_solver_does_not_take_is_refused(net, solver, option, accepted):
    with pytest.raises(errors.InvalidOptionError, match=option) as info:
        lipsdp.estimate(net, solver=solver, **{option: 1})
    assert repr(solver) in str(info.value) and accepted in str(info.value)


def test_automatic_choice_checks_options_against_the_solver_it_picks(net):
    with pytest.raises(errors.InvalidOptionError, match="eps_abs.*'ipm'"):
        lipsdp.estimate(net, eps_abs=1e-8)  # an SCS option; the automatic choice picks ipm here
    bound = lipsdp.estimate(net, tol=1e-9)  # an ipm option
    assert bound.solver == "ipm"
    assert bound.value >= gradient_lower_bound(net).value * (1 - 1e-9)


def test_closed_form_methods_take_no_solver_options(net):
    with pytest.raises(errors.InvalidOptionError, match="no solver"):
        lipsdp.estimate(net, method="naive", tol=1e-9)
    with pytest.raises(errors.InvalidOptionError, match="no solver"):
        lipsdp.estimate(net, method="eclipse-fast", max_iters=5)


def test_ipm_called_directly_refuses_an_unknown_option(net):
    from lipsdp.ipm import solve_with_ipm
    from lipsdp.bound_methods import _graph_builder

    with pytest.raises(errors.InvalidOptionError, match="bogus"):
        solve_with_ipm(_graph_builder("neuron")(net), bogus=1)


def test_reduce_must_be_a_bool(net):
    with pytest.raises(errors.InvalidOptionError, match="reduce"):
        lipsdp.estimate(net, reduce="x")
    plain = lipsdp.estimate(net, reduce=False)
    assert plain.value >= gradient_lower_bound(net).value * (1 - 1e-9)


@pytest.mark.parametrize("norm, option", [(2, {"output_row": 0}), (2, {"rows": (0, 1)}), ("inf", {"split": 1})])
def test_an_option_of_the_other_norm_is_refused(net, norm, option):
    name = next(iter(option))
    with pytest.raises(errors.InvalidOptionError, match=f"{name}.*norm=") as info:
        lipsdp.estimate(net, norm=norm, **option)
    assert ("'inf' only" if name != "split" else "norm=2 only") in str(info.value)


@pytest.mark.parametrize("norm, option", [(2, {"split": "x"}), (2, {"split": 0}), (2, {"split": True}),
                                          (2, {"cross_terms": ["exact"]}), ("inf", {"rows": "ab"}),
                                          ("inf", {"output_row": 0.5})])
def test_an_option_value_of_the_wrong_type_is_refused(net, norm, option):
    with pytest.raises(errors.InvalidOptionError, match=next(iter(option))):
        lipsdp.estimate(net, norm=norm, **option)


def test_lower_options_are_checked(net):
    with pytest.raises(errors.InvalidOptionError, match="foo.*n_starts"):
        lipsdp.compare(net, methods=["lower"], lower_options={"foo": 1})


# ----------------------------------------------------------------------------- size guard
def test_a_20000_wide_layer_is_refused_at_once_without_allocating(wide):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(errors.ProblemTooLargeError) as info:
            lipsdp.estimate(wide)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(info.value, MemoryError)
    message = str(info.value)
    assert "20008" in message and "GiB" in message and "naive" in message and "max_memory_gb" in message
    assert peak < 50 * 2**20 and elapsed < 5.0  # one dense 20008² matrix alone is 3 GiB


@pytest.mark.parametrize("method", ["eclipse-fast", "lipsdp-layer"])
def test_cheaper_sdp_methods_are_refused_too_when_their_matrix_does_not_fit(wide, method):
    with pytest.raises(errors.ProblemTooLargeError, match=method):
        lipsdp.estimate(wide, method=method)


def test_naive_is_never_refused(wide):
    bound = lipsdp.estimate(wide, method="naive", max_memory_gb=1e-9)
    x = np.random.default_rng(2).normal(size=8)
    assert bound.value >= _gradient_norm(wide, x) * (1 - 1e-9)


def test_a_zero_layer_needs_no_sdp_and_is_not_refused(wide):
    zero = lipsdp.Network.from_weights([wide.weights[0], np.zeros((1, 20000))], None, "relu")
    assert lipsdp.estimate(zero).value == 0.0


def test_compare_keeps_the_refusal_as_a_row(wide):
    table = lipsdp.compare(wide, methods=["naive", "lipsdp-neuron"]).set_index("method")
    assert np.isfinite(table.loc["naive", "value"])
    assert table.loc["lipsdp-neuron", "status"].startswith("error: ProblemTooLargeError")


def test_the_suggested_split_fits_the_budget_and_gives_a_bound():
    rng = np.random.default_rng(3)
    widths = [4, 30, 30, 30, 1]
    deep = lipsdp.Network.from_weights([rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])],
                                       None, "relu")
    full = estimate_cost(deep, "lipsdp-neuron")
    budget_gb = 0.5 * full.memory_bytes / 2**30
    with pytest.raises(errors.ProblemTooLargeError, match="split=") as info:
        lipsdp.estimate(deep, max_memory_gb=budget_gb)
    k = int(str(info.value).split("lipsdp-neuron with split=")[1][0])
    bound = lipsdp.estimate(deep, split=k, max_memory_gb=budget_gb)
    assert bound.value >= gradient_lower_bound(deep).value * (1 - 1e-9)
    assert bound.value >= lipsdp.estimate(deep).value * (1 - 1e-9)  # chunks can only lose accuracy


def test_a_deep_closed_form_is_budgeted_in_band_storage():
    """eclipse-fast on a deep chain never forms a dense d×d matrix: its estimate is linear in depth and far
    below the dense programs', and a budget of that size lets it run."""
    rng = np.random.default_rng(5)
    widths = [4] + [24] * 60 + [1]
    deep = lipsdp.Network.from_weights([rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])],
                                       None, "relu")
    closed, dense = estimate_cost(deep, "eclipse-fast"), estimate_cost(deep, "lipsdp-neuron")
    assert closed.lmi_size >= 1024 and closed.memory_bytes < dense.memory_bytes / 10
    twice = lipsdp.Network.from_weights([rng.normal(size=(b, a)) / np.sqrt(a) for a, b in
                                         zip(widths + [24] * 60, (widths + [24] * 60)[1:])], None, "relu")
    assert estimate_cost(twice, "eclipse-fast").memory_bytes <= 2.1 * closed.memory_bytes
    bound = lipsdp.estimate(deep, method="eclipse-fast", max_memory_gb=2 * closed.memory_bytes / 2**30)
    assert bound.value >= gradient_lower_bound(deep).value * (1 - 1e-9)


@pytest.mark.parametrize("value", [0, -1.0, "8", float("nan"), True])
def test_max_memory_gb_must_be_a_positive_number(net, value):
    with pytest.raises(errors.InvalidOptionError, match="max_memory_gb"):
        lipsdp.estimate(net, max_memory_gb=value)


# ----------------------------------------------------------------------------- assumptions
def _npz_without_activation(tmp_path):
    """A ``.npz`` with weights only: loading it needs ``activation=``, which becomes an assumption."""
    rng = np.random.default_rng(0)
    path = tmp_path / "model.npz"
    np.savez(path, W0=rng.normal(size=(8, 3)), b0=np.zeros(8), W1=rng.normal(size=(2, 8)), b1=np.zeros(2))
    return path


def test_the_bound_carries_the_networks_assumptions(net):
    if "assumptions" not in {f.name for f in dataclasses.fields(LipschitzBound)}:
        pytest.skip("LipschitzBound has no assumptions field yet")
    said = "weights rescaled by the caller"
    assumed = lipsdp.Network(net.layers, (said,))
    for method in ("naive", "lipsdp-neuron"):
        assert said in lipsdp.estimate(assumed, method=method).assumptions


def test_cli_estimate_prints_the_norm_and_each_assumption(tmp_path, capsys):
    path = _npz_without_activation(tmp_path)
    assert main(["estimate", str(path), "--activation", "tanh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "L2 norm" in lines[0]
    assumed = [line for line in lines if line.startswith("assumed: ")]
    assert assumed and any("tanh" in line for line in assumed)
    assert main(["estimate", str(path), "--activation", "tanh", "--norm", "inf", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["norm"] == "inf" and [f"assumed: {a}" for a in record["assumptions"]] == assumed


def test_cli_estimate_refuses_a_too_small_budget_with_exit_2(tmp_path, capsys):
    path = _npz_without_activation(tmp_path)
    assert main(["estimate", str(path), "--activation", "tanh", "--max-memory-gb", "1e-9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "budget" in err and "naive" in err


def test_cli_compare_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    from lipsdp import suite

    tiny = lipsdp.Network.from_weights([np.eye(2), np.ones((1, 2))], None, "relu")
    monkeypatch.setattr(suite, "default_networks", lambda nets: {"tiny": tiny})  # no training
    assert main(["compare", "--out", str(tmp_path), "--methods", "naive"]) == 0
    out = capsys.readouterr().out
    for name in ("compare_default.csv", "compare_default.png"):
        assert str(tmp_path / name) in out and (tmp_path / name).stat().st_size > 0
