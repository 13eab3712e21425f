"""The ``lipsdp`` command, run in-process through ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsdp.cli import main
from lipsdp.io import save_network_npz
from lipsdp.lower import gradient_lower_bound
from lipsdp.network import Network


@pytest.fixture
def small_net() -> Network:
    rng = np.random.default_rng(0)
    return Network.from_weights([rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))],
                                [rng.normal(size=6), rng.normal(size=5), np.zeros(2)], "relu")


def _run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_npz_json(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    record = _run_json(capsys, ["estimate", str(path), "--json"])
    assert {"value", "raw_value", "method", "solver", "status", "solve_time", "certificate_margin"} <= set(record)
    assert record["method"] == "lipsdp-neuron"
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
    assert out.startswith("lipsdp-layer: L <= ")


def test_missing_file_exit_code(tmp_path, capsys):
    path = tmp_path / "missing.npz"
    assert main(["estimate", str(path)]) == 2
    captured = capsys.readouterr()
    assert "missing.npz" in captured.err and "not found" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_unknown_method_exit_code(tmp_path, capsys, small_net):
    path = save_network_npz(small_net, tmp_path / "net.npz")
    assert main(["estimate", str(path), "--method", "no-such-method"]) == 2
    err = capsys.readouterr().err
    assert "no-such-method" in err and "lipsdp-neuron" in err  # lists what exists


def test_malformed_file_exit_code(tmp_path, capsys):
    path = tmp_path / "bad.mat"
    path.write_bytes(b"garbage")
    assert main(["estimate", str(path)]) == 2
    assert "bad.mat" in capsys.readouterr().err


def test_list_methods_and_solvers(capsys):
    import lipsdp

    assert main(["methods"]) == 0
    assert capsys.readouterr().out.split() == list(lipsdp.methods())
    assert main(["solvers"]) == 0
    assert capsys.readouterr().out.split() == list(lipsdp.solvers())


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["estimate"])
    assert info.value.code == 2


@pytest.mark.slow
def test_compare_suite(tmp_path, capsys, monkeypatch):
    from lipsdp import suite

    nets = (suite.SuiteNet("relu-64-8-10", (8,), "relu"), suite.SuiteNet("tanh-64-8-10", (8,), "tanh"))
    monkeypatch.setattr(suite, "DEFAULT_NETS", nets)
    assert main(["compare", "--out", str(tmp_path), "--methods", "naive", "eclipse-fast", "lower"]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "compare_default.csv")
    assert set(table["network"]) == {n.name for n in nets}
    assert set(table["method"]) == {"naive", "eclipse-fast", "lower"}
    for _, group in table.groupby("network"):
        lower = group.loc[group["method"] == "lower", "value"].item()
        assert (group.loc[group["method"] != "lower", "value"] >= lower * (1 - 1e-9)).all()
    assert (tmp_path / "compare_default.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
