"""Structured interior-point solver (``ipm``) against the cvxpy reference paths.

Rows: network, LMI size, method, solver, certified bound, seconds (the whole
certified estimate, ``LipschitzBound.solve_time``: reductions + SDP build +
solve + float64 certification; imports excluded; each run in a fresh process,
the median of ``--repeat`` runs for cases under ``--repeat-below`` seconds, the
solvers of one network taking turns run by run),
solver seconds, peak resident memory of the case's fresh process (MiB), status,
runs, and ``above_reference`` (certified bound / the network's ``cvxpy:CVXOPT``
bound − 1: the accuracy the targets ask of a solver, within 1e-6).

    python bench/bench_solver.py            # cvxpy baselines predicted > --cap s are skipped
    python bench/bench_solver.py --full     # run every baseline (hours)
    python bench/bench_solver.py --only 264,544 --cap 120
    python bench/bench_solver.py --only 784-1024x3-10 --solvers ipm,firstorder --merge   # add rows to the table
    python bench/bench_solver.py --only 264 --solvers ipm,cvxpy:SCS,cvxpy:SCS@1e-8 --merge  # SCS at a tighter tolerance

A solver name ``cvxpy:NAME@TOL`` runs that reference path with every tolerance of its
defaults (``lipsdp.solver_registry``: SCS ``eps_abs``/``eps_rel``, CVXOPT ``abstol``/``reltol``/``feastol``)
set to ``TOL``: a baseline asked for the accuracy the targets ask of ``ipm``.

Writes results/bench_solver.csv (atomically) and results/bench_solver.png
(log-log seconds vs LMI size, matplotlib Agg).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import anchor_weights, random_weights, run_isolated, save_figure, write_table  # noqa: E402

# measured on this machine (2 cores), LipSDP-Neuron through cvxpy: (LMI size, seconds)
_MEASURED = {
    "cvxpy:CVXOPT": [(110, 1.2), (264, 25.0), (544, 477.0)],
    "cvxpy:SCS": [(110, 6.3), (264, 34.0), (544, 286.0)],
}


def predicted_seconds(solver: str, size: int) -> float:
    """Power-law extrapolation through the two largest measurements."""
    pts = _MEASURED.get(solver)
    if not pts:
        return 0.0
    (s1, t1), (s2, t2) = pts[-2], pts[-1]
    expo = math.log(t2 / t1) / math.log(s2 / s1)
    return t2 * (size / s2) ** expo


def networks(include_big: bool = True):
    """(name, weights, activation name) of every benchmark network."""
    nets = [
        ("10-50-50-10", random_weights([10, 50, 50, 10], seed=1), "relu"),
        ("64-100-100-10", random_weights([64, 100, 100, 10], seed=2), "relu"),
        ("32-64x8-10", random_weights([32] + [64] * 8 + [10], seed=3), "relu"),
        ("64-500-500-10", random_weights([64, 500, 500, 10], seed=4), "relu"),
    ]
    w = anchor_weights("maxmin", "weights_l2_18fc_128.mat", key="W")
    if w is not None:
        nets.append(("maxmin-18x128 (anchor)", w, "maxmin_chain"))
    if include_big:
        nets.append(("784-1024x3-10", random_weights([784, 1024, 1024, 1024, 10], seed=5), "relu"))
    return nets


def solver_and_options(spec: str) -> tuple[str, dict]:
    """``"cvxpy:SCS@1e-8"`` → ``("cvxpy:SCS", {"eps_abs": 1e-8, "eps_rel": 1e-8})``: every tolerance of
    the reference path's defaults set to the number after ``@``; a plain name has no options."""
    from lipsdp.solver_registry import _CVXPY_DEFAULTS

    name, _, tol = spec.partition("@")
    if not tol:
        return name, {}
    if not name.startswith("cvxpy:"):
        raise SystemExit(f"{spec!r}: a tolerance (@TOL) is only known for the cvxpy reference paths")
    keys = [k for k in _CVXPY_DEFAULTS.get(name.split(":", 1)[1].upper(), {}) if k != "max_iters"]
    if not keys:
        raise SystemExit(f"{spec!r}: no tolerances are known for {name}")
    try:
        value = float(tol)
    except ValueError:
        raise SystemExit(f"{spec!r}: the tolerance after '@' is not a number") from None
    return name, {k: value for k in keys}


def _case(weights, activation: str, spec: str):
    import lipsdp
    import lipsdp.ipm  # noqa: F401
    from lipsdp.solver_registry import resolve_solver

    solver, options = solver_and_options(spec)
    resolve_solver(solver).available()  # imports cvxpy etc. before the clock of the estimate starts

    if activation == "maxmin_chain":
        from lipsdp.group_activations import maxmin

        act = maxmin(cross_terms="none")
    else:
        act = activation
    net = lipsdp.Network.from_weights(weights, None, act)
    bound = lipsdp.estimate(net, method="lipsdp-neuron", solver=solver, **options)
    return {
        "bound": float(bound), "raw": float(bound.raw_value), "lmi_size": int(bound.details.get("lmi_size", 0)),
        "solver_seconds": float(bound.details.get("solver_time", float("nan"))), "solver": bound.solver,
        "seconds": float(bound.solve_time),
    }


def _lmi_size(weights) -> int:
    """Size of the reduced LipSDP-Neuron LMI: rank of W₁ plus the hidden neurons."""
    import numpy as np

    return int(np.linalg.matrix_rank(weights[0]) + sum(w.shape[0] for w in weights[:-1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="run every cvxpy baseline regardless of predicted time")
    parser.add_argument("--cap", type=float, default=600.0, help="skip/stop a cvxpy baseline beyond this many seconds")
    parser.add_argument("--ours-cap", type=float, default=1800.0, help="time limit of one ipm case")
    parser.add_argument("--only", default="", help="comma-separated LMI sizes or names to run")
    parser.add_argument("--no-big", action="store_true", help="leave out the 784-1024x3-10 net")
    parser.add_argument("--solvers", default="ipm,cvxpy:CVXOPT,cvxpy:SCS",
                        help="comma-separated solver names (e.g. add 'firstorder' for the largest nets, "
                             "or 'cvxpy:SCS@1e-8' for SCS at tolerance 1e-8)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="fresh-process runs of a case whose first run took under --repeat-below seconds "
                             "(the row reports the median run)")
    parser.add_argument("--repeat-below", type=float, default=30.0,
                        help="only cases faster than this many seconds are repeated")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of results/bench_solver.csv that this run does not replace")
    args = parser.parse_args(argv)
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    # the solver each name runs (a malformed name stops here, not in every child process)
    base_of = {spec: solver_and_options(spec)[0] for spec in solvers}

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    for name, weights, act in networks(include_big=not args.no_big):
        size = _lmi_size(weights)
        if only and name not in only and str(size) not in only:
            continue
        net_rows, plans = [], []
        for solver in solvers:
            base = base_of[solver]  # predictions go by the solver, whatever tolerance a name asks
            if act != "relu" and base != "ipm":
                pred = 659.0 if base == "cvxpy:SCS" else predicted_seconds(base, size)  # SCS: measured
            else:
                pred = predicted_seconds(base, size)
            row = {"network": name, "lmi_size": size, "method": "lipsdp-neuron", "solver": solver,
                   "certified_bound": float("nan"), "seconds": float("nan"), "solver_seconds": float("nan"),
                   "peak_mb": float("nan"), "status": "", "runs": 0}
            net_rows.append(row)
            if solver.startswith("cvxpy:") and not args.full and pred > args.cap:
                row["status"] = f"skipped (predicted {pred:.0f} s > cap {args.cap:.0f} s; --full runs it)"
                continue
            cap = args.ours_cap if not solver.startswith("cvxpy:") else (None if args.full else args.cap)
            plans.append((row, solver, cap))
        outs = _interleaved_runs(weights, act, plans, args.repeat, args.repeat_below)
        for (row, _, _), runs in zip(plans, outs):
            out, row["runs"] = _median_of(runs), len([o for o in runs if o["status"] == "ok"]) or 1
            if out["status"] == "ok":
                res = out["result"]
                row.update(certified_bound=res["bound"], seconds=res["seconds"], solver_seconds=res["solver_seconds"],
                           peak_mb=out["peak_mb"], status="ok", lmi_size=res["lmi_size"] or size)
            else:
                row["status"] = out["status"][:160]
        for row in net_rows:
            print(row, flush=True)
        _print_speedups(net_rows)
        rows.extend(net_rows)
    if args.merge:
        rows = _merged(rows)
    write_table(_with_reference_gap(rows), "bench_solver.csv")
    _plot(rows)
    return 0


def _interleaved_runs(weights, act: str, plans: list, repeat: int, repeat_below: float) -> list:
    """Fresh-process runs of one network's cases: one each, then ``repeat − 1`` more rounds of the
    cases whose first run took under ``repeat_below`` s, one case after the other in each round.

    Every run is a cold start (a new process, imports excluded), as a user's first call is.  The
    rounds alternate the solvers, so a slow or fast spell of a shared machine falls on all of them
    alike and the speed-ups compare like with like (runs of one solver back to back would put its
    whole sample in one spell).
    """
    runs = [[run_isolated(_case, weights, act, solver, timeout=cap)] for _, solver, cap in plans]
    again = [k for k, first in enumerate(runs)
             if repeat > 1 and first[0]["status"] == "ok" and first[0]["result"]["seconds"] < repeat_below]
    for _ in range(repeat - 1):
        for k in again:
            _, solver, cap = plans[k]
            runs[k].append(run_isolated(_case, weights, act, solver, timeout=cap))
    return runs


def _median_of(runs: list) -> dict:
    """The run with the median seconds among the successful ones (peak memory: the largest of them),
    or the first run when none succeeded."""
    good = sorted((o for o in runs if o["status"] == "ok"), key=lambda o: o["result"]["seconds"])
    if not good:
        return runs[0]
    median = dict(good[(len(good) - 1) // 2])
    median["peak_mb"] = max(o["peak_mb"] for o in good)
    return median


def _print_speedups(net_rows: list) -> None:
    """How many times faster the structured solver was than each baseline on this network."""
    ours = {r["solver"]: r["seconds"] for r in net_rows if r["status"] == "ok"}
    if "ipm" not in ours:
        return
    for solver, sec in ours.items():
        if solver.startswith("cvxpy:"):
            print(f"  {net_rows[0]['network']}: ipm {sec / ours['ipm']:.1f}x faster than {solver}", flush=True)


def _with_reference_gap(rows: list[dict]) -> list[dict]:
    """The rows with ``above_reference``: certified bound / reference − 1, where the reference is the
    same network's ``cvxpy:CVXOPT`` certified bound (the reference interior-point optimum the targets
    measure accuracy against); NaN where either is missing.  Both are certified, so both lie above
    the true optimum: a positive value is how much looser a solver's bound is than the reference's."""
    reference = {r["network"]: r["certified_bound"] for r in rows
                 if r["solver"] == "cvxpy:CVXOPT" and r["status"] == "ok"}
    out = []
    for r in rows:
        ref = reference.get(r["network"], float("nan"))
        gap = r["certified_bound"] / ref - 1.0 if r["status"] == "ok" else float("nan")
        out.append({**r, "above_reference": gap})
    return out


def _merged(rows: list[dict]) -> list[dict]:
    """The existing table's rows (same network and solver replaced by ``rows``), in network order."""
    import pandas as pd

    from common import RESULTS

    path = RESULTS / "bench_solver.csv"
    if not path.exists():
        return rows
    new = {(r["network"], r["solver"]) for r in rows}
    old = [r for r in pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict("records")
           if (r["network"], r["solver"]) not in new]
    rank = {"ipm": 0, "firstorder": 1, "cvxpy:CVXOPT": 2, "cvxpy:SCS": 3}
    return sorted(old + rows, key=lambda r: (r["lmi_size"], r["network"], rank.get(r["solver"], 9)))


def _plot(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for solver, marker in (("ipm", "o"), ("firstorder", "D"), ("cvxpy:CVXOPT", "s"), ("cvxpy:SCS", "^")):
        pts = sorted((r["lmi_size"], r["seconds"]) for r in rows
                     if r["solver"] == solver and r["status"] == "ok" and "maxmin" not in r["network"])
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{solver} (ReLU chains)")
    for r in rows:  # the MaxMin anchor splits into per-layer blocks: its own marker, not on the ReLU line
        if "maxmin" in r["network"] and r["status"] == "ok":
            ax.loglog([r["lmi_size"]], [r["seconds"]], marker="*", markersize=12, linestyle="none",
                      label=f"{r['solver']}: {r['network']}")
    ax.set_xlabel("LMI size (reduced LipSDP-Neuron)")
    ax.set_ylabel("seconds (certified estimate)")
    ax.set_title("LipSDP-Neuron: structured IPM vs cvxpy (2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, "bench_solver.png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
