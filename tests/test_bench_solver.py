"""The benchmark's own bookkeeping: solver names with a tolerance, and the accuracy column."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_solver  # noqa: E402


def test_tolerance_suffix_sets_every_tolerance_of_the_reference_path():
    assert bench_solver.solver_and_options("cvxpy:SCS@1e-8") == ("cvxpy:SCS", {"eps_abs": 1e-8, "eps_rel": 1e-8})
    name, options = bench_solver.solver_and_options("cvxpy:CVXOPT@1e-6")
    assert name == "cvxpy:CVXOPT" and options == {"abstol": 1e-6, "reltol": 1e-6, "feastol": 1e-6}
    assert bench_solver.solver_and_options("ipm") == ("ipm", {})


@pytest.mark.parametrize("spec, message", [
    ("ipm@1e-3", "only known for the cvxpy reference paths"),
    ("cvxpy:MOSEK@1e-8", "no tolerances are known"),
    ("cvxpy:SCS@tight", "not a number"),
])
def test_malformed_tolerance_suffix_is_refused(spec, message):
    with pytest.raises(SystemExit, match=message):
        bench_solver.solver_and_options(spec)


def test_accuracy_column_is_relative_to_the_networks_cvxopt_row():
    rows = [
        {"network": "a", "solver": "ipm", "certified_bound": 2.000002, "status": "ok"},
        {"network": "a", "solver": "cvxpy:CVXOPT", "certified_bound": 2.0, "status": "ok"},
        {"network": "a", "solver": "cvxpy:SCS", "certified_bound": float("nan"), "status": "error: refused"},
        {"network": "b", "solver": "ipm", "certified_bound": 5.0, "status": "ok"},
    ]
    gaps = [r["above_reference"] for r in bench_solver._with_reference_gap(rows)]
    assert gaps[0] == pytest.approx(1e-6, rel=1e-6)
    assert gaps[1] == 0.0
    assert math.isnan(gaps[2]) and math.isnan(gaps[3])  # no bound; no reference for network b
