"""Smoke test of bench/bench_deep.py: quick mode into a temporary folder, and its skipping rule."""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_deep  # noqa: E402


def test_quick_mode_writes_certified_rows_and_the_plot(tmp_path):
    assert bench_deep.main(["--quick", "--methods", "eclipse-fast,lipsdp-neuron,eclipse-nn",
                            "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "bench_deep.csv")
    assert (tmp_path / "bench_deep.png").stat().st_size > 0
    assert set(table["sweep"]) == {"depth", "width", "eclipse"}
    ours = table[table["method"] != "eclipse-nn"]
    assert (ours["status"] == "ok").all(), ours[["network", "method", "status"]]
    # both are certified upper bounds of the same net: the SDP optimum is the smaller
    for _, net in ours.groupby("network"):
        bounds = dict(zip(net["method"], net["certified_bound"]))
        assert 0 < bounds["lipsdp-neuron"] <= bounds["eclipse-fast"] * (1 + 1e-9)
    peer = table[table["method"] == "eclipse-nn"]
    assert len(peer) == len(ours) // 2
    assert peer["certified_bound"].isna().all()  # a peer's value is never reported as certified
    ok = peer[peer["status"] == "ok"]
    if len(ok):  # with .venv-peers: the package's ECLipsE-Fast is the same closed form, uncertified
        merged = ok.merge(ours[ours["method"] == "eclipse-fast"], on="network", suffixes=("_peer", ""))
        assert np.allclose(merged["peer_value_peer"], merged["certified_bound"], rtol=1e-4)
    else:
        assert peer["status"].str.startswith("skipped (no .venv-peers").all()


def test_eclipse_paper_family_has_its_shapes_and_norms():
    weights = bench_deep.eclipse_paper_chain(5, 7)
    assert [w.shape for w in weights] == [(7, 4), (7, 7), (7, 7), (7, 7), (1, 7)]
    norms = [np.linalg.norm(w, 2) for w in weights]
    assert all(0.4 <= n <= 1.8 for n in norms)
    assert np.array_equal(weights[0], bench_deep.eclipse_paper_chain(5, 7)[0])  # seeded


def test_cases_after_a_timeout_or_over_the_predicted_cap_are_skipped():
    nets = bench_deep.networks([2, 3, 4], [], [], 5, 4, 2)
    rows = bench_deep.run(nets, ["eclipse-fast"], cap=0.01, progress=False)  # no child starts in 10 ms
    assert rows[0]["status"].startswith("timeout")
    assert all(r["status"] == "skipped (timeout after 0 s at relu-2x4)" for r in rows[1:]), rows
    assert bench_deep.predicted_seconds([(100, 1.0), (200, 8.0)], 400) == 64.0  # cubic through the last two
    assert bench_deep.predicted_seconds([], 400) == 0.0
    assert bench_deep.predicted_seconds([(100, 1.0)], 400) == 4.0  # one point: linear in the size
    assert bench_deep.predicted_seconds([(100, 1.0)], 50) == 1.0  # never below the measured time
    assert math.isclose(bench_deep.predicted_seconds([(100, 2.0), (200, 2.0)], 400), 4.0)  # at least linear
