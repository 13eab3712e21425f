"""Benchmark of `lipsdp.estimate` on feed-forward ReLU nets (issue: foundation).

Prints a table (network, method, solver, certified bound, seconds, peak memory)
and writes ``results/bench_estimate.csv``.  Every case runs in its own process
(peak memory is that process's max resident set).  The baseline rows solve the
textbook cvxpy formulation with SCS (uncertified, as users run it today).

Usage::

    python bench/bench_estimate.py            # all cases, baselines capped at 600 s
    python bench/bench_estimate.py --quick    # small nets and a 60 s cap
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from common import anchor_weights, plain_cvxpy_lipsdp, random_weights, run_isolated, write_table


def estimate_case(weights, method: str, solver: str | None, options: dict):
    import lipsdp

    net = lipsdp.Network.from_weights(weights, activation="relu")
    b = lipsdp.estimate(net, method=method, solver=solver, **options)
    return {"bound": b.value, "raw": b.raw_value, "solver": b.solver, "status": b.status}


def baseline_case(weights, solver: str):
    value, status = plain_cvxpy_lipsdp(weights, solver=solver)
    return {"bound": value, "raw": value, "solver": f"plain cvxpy+{solver} (uncertified)", "status": status}


def networks(quick: bool) -> dict:
    nets = {}
    for name, file in (("lipsdp-random 2-10-30-20-2", "random_weights.mat"), ("lipsdp-mnist 784-50-10", "mnist_weights.mat")):
        w = anchor_weights("lipsdp", file)
        if w is not None:
            nets[name] = w
    nets["[64,100,100,10]"] = random_weights([64, 100, 100, 10], seed=1)
    if not quick:
        nets["[32]+[64]*8+[10]"] = random_weights([32] + [64] * 8 + [10], seed=2)
    return nets


CASES = [
    ("naive", None, {}),
    ("eclipse-fast", None, {}),
    ("lipsdp-layer", None, {}),
    ("lipsdp-neuron", None, {}),
    ("lipsdp-neuron", "cvxopt", {}),
    ("lipsdp-neuron", "scs", {}),
    ("lipsdp-neuron", None, {"split": 2}),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small nets only, 60 s cap per case")
    parser.add_argument("--cap", type=float, default=None, help="seconds per case (default 600, quick 60)")
    args = parser.parse_args(argv)
    cap = args.cap or (60.0 if args.quick else 600.0)
    rows = []
    jobs = []
    for net_name, weights in networks(args.quick).items():
        for method, solver, options in CASES:
            jobs.append((net_name, weights, method, solver, options))
        jobs.append((net_name, weights, "baseline", "SCS", {}))
    for net_name, weights, method, solver, options in tqdm(jobs, desc="bench_estimate"):
        if method == "baseline":
            out = run_isolated(baseline_case, weights, solver, timeout=cap)
            label = "lipsdp-neuron (textbook cvxpy)"
        else:
            out = run_isolated(estimate_case, weights, method, solver, options, timeout=cap)
            label = method + (f" (split={options['split']})" if "split" in options else "")
        res = out["result"] or {}
        rows.append({
            "network": net_name,
            "lmi_size": weights[0].shape[1] + sum(w.shape[0] for w in weights[:-1]),
            "method": label,
            "solver": res.get("solver", solver or "auto"),
            "bound": res.get("bound", float("nan")),
            "status": res.get("status", out["status"]) if out["status"] == "ok" else out["status"],
            "seconds": out["seconds"],
            "peak_mb": out["peak_mb"],
        })
    write_table(rows, "bench_estimate.csv")


if __name__ == "__main__":
    main()
