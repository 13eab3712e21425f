"""The ``lipsdp`` command, run in-process through ``main(argv)`` (outputs go to ``tmp_path`` only)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io

import lipsdp
from lipsdp import errors
from lipsdp.api import method_table, solver_table
from lipsdp.cli import main
from lipsdp.io import load_network, save_network_npz
from lipsdp.lower import _RegionSearch, _pattern_setup, exact_pattern_bound, gradient_lower_bound, region_bound
from lipsdp.network import Network


@pytest.fixture
def small_net() -> Network:
    rng = np.random.default_rng(0)
    return Network.from_weights([rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))],
                                [rng.normal(size=6), rng.normal(size=5), np.zeros(2)], "relu")


def _relu_net(seed: int, dims: tuple[int, ...]) -> Network:
    rng = np.random.default_rng(seed)
    return Network.from_weights([rng.normal(size=(dims[k + 1], dims[k])) for k in range(len(dims) - 1)],
                                [rng.normal(size=dims[k + 1]) for k in range(len(dims) - 1)], "relu")


def _run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, argv) -> str:
    """stderr of a command that must fail with exit status 2 and one line, no traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


# ----------------------------------------------------------------------------- estimate
def test_estimate_npz_json(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    record = _run_json(capsys, ["estimate", str(path), "--json"])
    assert {"value", "raw_value", "method", "solver", "status", "solve_time", "certificate_margin"} <= set(record)
    assert record["method"] == "lipsdp-neuron" and record["kind"] == "certified upper bound"
    assert record["value"] >= gradient_lower_bound(small_net).value * (1 - 1e-9)


def test_estimate_state_dict_with_method_and_activation(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    record = _run_json(capsys, ["estimate", str(tmp_path / "model.pt"), "--method", "naive", "--activation", "tanh", "--json"])
    net = Network.from_torch(model)
    assert record["method"] == "naive"
    assert record["value"] >= gradient_lower_bound(net).value * (1 - 1e-9)
    assert record["value"] == pytest.approx(np.prod([np.linalg.norm(w, 2) for w in net.weights]), rel=1e-9)


def test_estimate_human_readable(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    assert main(["estimate", str(path), "--method", "lipsdp-layer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lipsdp-layer: L <= ") and "certified upper bound" in out


def test_lower_is_printed_as_a_lower_bound_below_the_certified_one(tmp_path, capsys, small_net):
    """``lipsdp.estimate`` refuses 'lower' (it returns upper bounds); the CLI runs it, labelled."""
    path = save_network_npz(small_net, tmp_path / "net.npz")
    upper = _run_json(capsys, ["estimate", str(path), "--json"])["value"]
    record = _run_json(capsys, ["estimate", str(path), "--method", "lower", "--json"])
    assert record["kind"] == "lower bound" and record["method"] == "lower"
    assert 0 < record["value"] <= upper * (1 + 1e-9)
    assert main(["estimate", str(path), "--method", "lower"]) == 0
    assert capsys.readouterr().out.startswith(f"lower: L >= {record['value']:.6g} in the L2 norm (a lower bound")


def test_exact_is_printed_as_the_constant_between_the_bounds(tmp_path, capsys):
    net = _relu_net(3, (3, 5, 2))
    path = save_network_npz(net, tmp_path / "net.npz")
    record = _run_json(capsys, ["estimate", str(path), "--method", "exact", "--json"])
    upper = lipsdp.estimate(net).value
    assert record["kind"] == "exact constant"
    assert gradient_lower_bound(net).value * (1 - 1e-9) <= record["value"] <= upper * (1 + 1e-9)
    assert main(["estimate", str(path), "--method", "exact"]) == 0
    assert capsys.readouterr().out.startswith("exact: L = ")


def test_exact_on_a_net_with_too_many_regions_is_refused_at_once(tmp_path, capsys):
    """8-16-3 ReLU: 39203 possible regions (113 s before); refused before any LP, naming the way out."""
    path = save_network_npz(_relu_net(0, (8, 16, 3)), tmp_path / "net.npz")
    err = _error(capsys, ["estimate", str(path), "--method", "exact"])
    assert "39203" in err and "--max-regions none" in err and "lower" in err
    # a limit above the bound lets it run: here on a net small enough to finish at once
    small = save_network_npz(_relu_net(0, (2, 6, 1)), tmp_path / "small.npz")
    assert _run_json(capsys, ["estimate", str(small), "--method", "exact", "--max-regions", "22", "--json"])["value"] > 0
    assert "over the limit max_regions=21" in _error(capsys, ["estimate", str(small), "--method", "exact",
                                                              "--max-regions", "21"])


def test_flags_the_method_would_ignore_are_refused(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    assert "--max-regions" in _error(capsys, ["estimate", str(path), "--max-regions", "5"])
    assert "calls no solver" in _error(capsys, ["estimate", str(path), "--method", "lower", "--solver", "ipm"])
    assert "ℓ2" in _error(capsys, ["estimate", str(path), "--method", "exact", "--norm", "inf"])


def test_missing_file_exit_code(tmp_path, capsys):
    path = tmp_path / "missing.npz"
    err = _error(capsys, ["estimate", str(path)])
    assert "missing.npz" in err and "not found" in err


def test_a_directory_is_not_reported_as_missing(tmp_path, capsys):
    err = _error(capsys, ["estimate", str(tmp_path)])
    assert "directory" in err and "not found" not in err


def test_unknown_method_exit_code(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    err = _error(capsys, ["estimate", str(path), "--method", "no-such-method"])
    assert "no-such-method" in err and "lipsdp-neuron" in err and "exact" in err  # lists every accepted name


def test_malformed_file_exit_code(tmp_path, capsys):
    path = tmp_path / "bad.mat"
    path.write_bytes(b"garbage")
    assert "bad.mat" in _error(capsys, ["estimate", str(path)])


def test_torch_file_messages_name_the_file_and_what_it_is(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    text = tmp_path / "text.pt"
    text.write_text("not a model\n")
    err = _error(capsys, ["estimate", str(text)])
    assert "text.pt" in err and "KeyError" not in err
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), whole)
    assert "pickled whole model" in _error(capsys, ["estimate", str(whole)])


def test_unknown_activation_says_activation_and_lists_them(tmp_path, capsys):
    path = tmp_path / "model.npz"
    np.savez(path, W0=np.eye(2), W1=np.ones((1, 2)))
    err = _error(capsys, ["estimate", str(path), "--activation", "foo"])
    assert "unknown activation 'foo'" in err and "relu" in err and "model.npz" in err


def test_activation_help_lists_the_names_and_says_there_is_no_default(capsys):
    from lipsdp.activation_registry import activation_names

    with pytest.raises(SystemExit) as info:
        main(["estimate", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "no default" in text and all(name in text for name in activation_names())
    assert "--structure {feedforward,residual}" in text


def test_structure_residual_reads_a_mat_file_as_residual_blocks(tmp_path, capsys):
    rng = np.random.default_rng(2)
    cells = np.empty((1, 3), dtype=object)
    for k, shape in enumerate([(4, 3), (4, 4), (2, 4)]):
        cells[0, k] = rng.normal(size=shape)
    path = tmp_path / "maxmin.mat"
    scipy.io.savemat(path, {"W": cells})
    record = _run_json(capsys, ["estimate", str(path), "--structure", "residual", "--json"])
    residual = load_network(path, structure="residual")
    assert not residual.is_feedforward and any("residual" in a for a in record["assumptions"])
    assert record["value"] >= gradient_lower_bound(residual).value * (1 - 1e-9)
    chain = _run_json(capsys, ["estimate", str(path), "--json"])
    assert any("feed-forward" in a for a in chain["assumptions"])
    npz = save_network_npz(Network.from_weights([np.eye(2)], None, "relu"), tmp_path / "net.npz")
    assert ".mat" in _error(capsys, ["estimate", str(npz), "--structure", "residual"])


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["estimate"])
    assert info.value.code == 2


# ----------------------------------------------------------------------------- --version, python -m
def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lipsdp {lipsdp.__version__}"


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "lipsdp", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"lipsdp {lipsdp.__version__}"


# ----------------------------------------------------------------------------- listings
def test_methods_lists_every_accepted_name_with_what_it_gives(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line for line in lines[1:] if line.strip() and not line.startswith(("accepted_by", " "))}
    assert set(lipsdp.methods()) | {"lower", "exact"} <= set(listed)
    assert "lower bound" in listed["lower"] and "exact constant" in listed["exact"]
    assert all("certified upper bound" in listed[name] for name in lipsdp.methods())
    rows = {row["name"]: row for row in method_table()}
    assert rows["lipsdp-neuron"]["default"] == "estimate, compare" and rows["exact"]["norms"] == "2"
    assert lipsdp.methods() == sorted(lipsdp.methods()) and "lower" not in lipsdp.methods()  # names as before


def test_solvers_lists_every_solver_and_why_one_is_not_usable(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    table = solver_table()
    assert {row["name"] for row in table} >= {"mosek", "cvxpy:MOSEK", "ipm", "cvxopt"}
    for row in table:
        assert row["name"] in out
        assert row["usable"] == (row["name"] in lipsdp.solvers())  # lipsdp.solvers() keeps listing the usable ones
        if not row["usable"]:
            assert row["why_not"] and f"no: {row['why_not']}" in out
    assert [row["automatic"] for row in table if row["name"] == "mosek"] == ["1"]


# ----------------------------------------------------------------------------- exact: limit and progress
def test_region_bound_is_the_number_of_regions_of_a_generic_hidden_layer():
    """Zaslavsky: h hyperplanes in general position in R^d make Σ_{j≤d} C(h, j) regions."""
    for seed, dims in ((0, (3, 6, 1)), (1, (2, 7, 2))):
        assert exact_pattern_bound(_relu_net(seed, dims)).n_realizable == region_bound(dims[0], dims[1:-1])
    deep = _relu_net(4, (3, 4, 4, 1))
    assert exact_pattern_bound(deep).n_realizable <= region_bound(3, (4, 4)) <= 2**8


class _Count:
    total = 0

    def update(self, n: int) -> None:
        self.total += n


@pytest.mark.parametrize("dims", [(2, 5, 1), (3, 3, 3, 2)])
def test_the_progress_bar_covers_every_sign_pattern_once(dims):
    net = _relu_net(5, dims)
    weights, _, kinks = _pattern_setup(net)
    bar = _Count()
    _RegionSearch(weights, list(net.biases), kinks, bar=bar).run()
    assert bar.total == 2 ** sum(dims[1:-1])


def test_compare_passes_exact_options_and_keeps_the_refusal_as_a_row():
    net = _relu_net(0, (8, 16, 3))
    table = lipsdp.compare(net, methods=["exact"], exact_options={"max_regions": 100}).set_index("method")
    assert "ProblemTooLargeError" in table.loc["exact", "status"] and np.isnan(table.loc["exact", "value"])
    with pytest.raises(errors.InvalidOptionError, match="max_region"):
        lipsdp.compare(net, methods=["exact"], exact_options={"max_region": None})
    with pytest.raises(errors.InvalidOptionError, match="progress"):
        lipsdp.compare(net, methods=["exact"], exact_options={"progress": True})


# ----------------------------------------------------------------------------- compare
def _tiny_suite(monkeypatch):
    """Replace the suite's trained digits MLPs by two tiny random nets (no training, seconds)."""
    from lipsdp import suite

    nets = {"relu-3-5-2": _relu_net(0, (3, 5, 2)), "relu-3-4-4-2": _relu_net(1, (3, 4, 4, 2))}
    monkeypatch.setattr(suite, "default_networks", lambda specs: nets)
    return nets


def test_compare_prints_the_gap_and_writes_only_under_out(tmp_path, capsys, monkeypatch):
    import pandas as pd

    _tiny_suite(monkeypatch)
    out = tmp_path / "out"
    assert main(["compare", "--out", str(out), "--methods", "naive", "lipsdp-neuron", "exact"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["network", "method", "value", "gap", "solver", "status", "solve_time"]
    table = pd.read_csv(out / "compare_default.csv")
    for _, group in table.groupby("network"):
        exact = group.loc[group["method"] == "exact", "value"].item()
        uppers = group[group["method"] != "exact"]
        assert (uppers["value"] >= exact * (1 - 1e-9)).all()
        np.testing.assert_allclose(uppers["gap"], uppers["value"] / exact, rtol=1e-12)
    assert sorted(p.name for p in out.iterdir()) == ["compare_default.csv", "compare_default.png"]


def test_relative_bounds_divide_by_the_best_lower_bound_or_the_best_upper_bound():
    import pandas as pd

    from lipsdp.suite import relative_bounds

    frame = pd.DataFrame({"network": ["a"] * 4 + ["b"] * 3,
                          "method": ["naive", "lipsdp-neuron", "lower", "exact", "naive", "lipsdp-neuron", "lower"],
                          "value": [4.0, 2.5, 1.5, 2.0, 9.0, float("nan"), 3.0]})
    ratios, values, reference, kind = relative_bounds(frame)
    assert kind == "lower" and list(reference) == [2.0, 3.0]  # the best lower bound: exact beats lower
    assert ratios.loc["a", "naive"] == 2.0 and ratios.loc["a", "lipsdp-neuron"] == 1.25
    assert np.isnan(ratios.loc["b", "lipsdp-neuron"]) and ratios.loc["b", "naive"] == 3.0
    ratios, _, reference, kind = relative_bounds(frame[~frame["method"].isin(["lower", "exact"])])
    assert kind == "upper" and ratios.loc["a", "lipsdp-neuron"] == 1.0 and ratios.loc["a", "naive"] == 1.6


@pytest.mark.slow
def test_compare_suite(tmp_path, capsys, monkeypatch):
    from lipsdp import suite

    nets = (suite.SuiteNet("relu-64-8-10", (8,), "relu"), suite.SuiteNet("tanh-64-8-10", (8,), "tanh"))
    monkeypatch.setattr(suite, "DEFAULT_NETS", nets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["compare", "--out", str(tmp_path), "--methods", "naive", "eclipse-fast", "lower"]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "compare_default.csv")
    assert set(table["network"]) == {n.name for n in nets}
    assert set(table["method"]) == {"naive", "eclipse-fast", "lower"}
    for _, group in table.groupby("network"):
        lower = group.loc[group["method"] == "lower", "value"].item()
        assert (group.loc[group["method"] != "lower", "value"] >= lower * (1 - 1e-9)).all()
        assert (group.loc[group["method"] != "lower", "gap"] >= 1 - 1e-9).all()
    assert (tmp_path / "compare_default.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
