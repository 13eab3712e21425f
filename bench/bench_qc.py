"""Benchmark: the GroupSort/MaxMin QCs (docs/formulations.md §5–6) on the published MaxMin anchors.

Rows: every network in ``../shared/anchors/maxmin`` × norm × method, where the
methods are the new QCs with the default solver (``S = P = 0``), the same with
``cross_terms="exact"`` (invariant subspace), LipSDP-RR (residual-ReLU rewrite)
where it fits the cap, the naive product, and the plain cvxpy + SCS baseline
(``solver="cvxpy:SCS"``).  ℓ∞ rows: the ``weights_linf_2fc_16`` net and the
first output row of two ℓ2 nets.  Each case runs in its own process
(``bench.common.run_isolated``: peak memory, time cap).

Usage::

    python bench/bench_qc.py [--quick] [--cap SECONDS]

Writes ``results/bench_qc.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ANCHORS, anchor_weights, run_isolated, write_table  # noqa: E402

QUICK = ("weights_l2_2fc_16", "weights_l2_2fc_32", "resweights_5_32", "weights_linf_2fc_16")
LINF_ROW_NETS = ("weights_l2_2fc_16", "weights_l2_2fc_32")
METHODS = {  # label: (method, solver, options)
    "new QCs": ("lipsdp-neuron", None, {}),
    "new QCs, exact": ("lipsdp-neuron", None, {"cross_terms": "exact"}),
    "lipsdp-rr": ("lipsdp-rr", None, {}),
    "naive": ("naive", None, {}),
    "cvxpy+SCS": ("lipsdp-neuron", "cvxpy:SCS", {}),
}


def build_network(name: str):
    """The lipsdp Network of an anchor (MaxMin on consecutive pairs; residual layout for resweights)."""
    import lipsdp
    from lipsdp.group_activations import GroupSort
    from lipsdp.network import ActivationLayer, Affine, Residual

    ws = anchor_weights("maxmin", f"{name}.mat", key="W")
    if name.startswith("resweights"):
        core = [Residual((Affine.create(w), ActivationLayer(GroupSort(2)))) for w in ws[1:-1]]
        return lipsdp.Network([Affine.create(ws[0])] + core + [Affine.create(ws[-1])])
    return lipsdp.Network.from_weights(ws, activation=GroupSort(2))


def run_case(name: str, norm: str, method: str, solver: str | None, options: dict) -> dict:
    import lipsdp

    net = build_network(name)
    b = lipsdp.estimate(net, method=method, norm=norm, solver=solver, **options)
    return {"value": b.value, "solver": b.solver, "status": b.status,
            "margin": b.certificate_margin, "lmi_size": b.details.get("lmi_size", float("nan"))}


def cases(names: list[str]) -> list[tuple[str, str, str, dict]]:
    out = []
    for name in names:
        norms = ["inf"] if "linf" in name else ["2"] + (["inf"] if name in LINF_ROW_NETS else [])
        for norm in norms:
            for label in METHODS:
                if label == "lipsdp-rr" and not ("_2fc_" in name or name.startswith("res")):
                    continue  # the rewrite triples the LMI: only the 2-layer and the residual nets fit
                if norm == "inf" and label == "cvxpy+SCS":
                    continue
                options = dict(METHODS[label][2])
                if norm == "inf" and "linf" not in name and METHODS[label][0] != "naive":
                    options["output_row"] = 0  # naive's ℓ∞ bound is the product of induced ∞-norms, every row
                out.append((name, norm, label, options))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small nets: " + ", ".join(QUICK))
    parser.add_argument("--cap", type=float, default=300.0, help="time cap per case in seconds (default 300)")
    args = parser.parse_args(argv)
    folder = ANCHORS / "maxmin"
    if not folder.exists():
        print(f"{folder} not found: nothing to benchmark", file=sys.stderr)
        return
    names = sorted(p.stem for p in folder.glob("*.mat"))
    if args.quick:
        names = [n for n in names if n in QUICK]
    rows = []
    for name, norm, label, options in cases(names):
        method, solver, _ = METHODS[label]
        out = run_isolated(run_case, name, norm, method, solver, options, timeout=args.cap)
        res = out["result"] or {}
        rows.append({"net": name, "norm": norm, "bound": label, "value": res.get("value", float("nan")),
                     "solver": res.get("solver", solver or "default"), "status": out["status"],
                     "seconds": out["seconds"], "peak_mb": out["peak_mb"], "lmi_size": res.get("lmi_size")})
        print(f"{name:22s} {norm:3s} {label:15s} {rows[-1]['value']:.6g} {out['status']} {out['seconds']:.1f}s",
              file=sys.stderr, flush=True)
    write_table(rows, "bench_qc.csv")


if __name__ == "__main__":
    main()
