"""The ``lipsdp`` command.

Examples
--------
::

    lipsdp estimate model.pt --method lipsdp-neuron --json
    lipsdp compare --out results
    lipsdp methods
    lipsdp solvers

Every :class:`~lipsdp.errors.LipSDPError` is reported as one line on stderr
with exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from .errors import LipSDPError

_RESULT_FIELDS = ("value", "raw_value", "method", "solver", "status", "solve_time", "certificate_margin")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsdp", description="Certified Lipschitz bounds of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    est = sub.add_parser("estimate", help="certified upper bound for a saved model")
    est.add_argument("path", help="model file: .pt/.pth (TorchScript or state_dict), .npz or .mat")
    est.add_argument("--method", default=None, help="method name (see `lipsdp methods`); default lipsdp-neuron")
    est.add_argument("--solver", default=None, help="solver name (see `lipsdp solvers`); default: automatic")
    est.add_argument("--norm", default="2", choices=["2", "inf"], help="input/output norm")
    est.add_argument("--activation", default=None,
                     help="activation between layers (e.g. relu) for files that do not say: state dicts, .npz "
                          "without an activation entry; refused where the file says")
    est.add_argument("--max-memory-gb", type=float, default=None,
                     help="memory budget in GiB for the SDP (default: 75%% of the memory available)")
    est.add_argument("--json", action="store_true", help="print the result as JSON")

    cmp_ = sub.add_parser("compare", help="run the default comparison suite")
    cmp_.add_argument("--suite", default="default", choices=["default"], help="which suite")
    cmp_.add_argument("--out", default="results", help="output folder")
    cmp_.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: the suite's list)")
    cmp_.add_argument("--solver", default=None, help="solver name")

    sub.add_parser("methods", help="list the estimation methods")
    sub.add_parser("solvers", help="list the solvers")
    return parser


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def _norm_name(norm) -> str:
    return "L2" if norm == 2 else "Linf"


def _estimate(args: argparse.Namespace) -> int:
    import lipsdp
    from .io import load_network

    net = load_network(args.path, activation=args.activation)
    options = {k: v for k, v in (("method", args.method), ("solver", args.solver)) if v is not None}
    bound = lipsdp.estimate(net, norm=2 if args.norm == "2" else "inf", max_memory_gb=args.max_memory_gb, **options)
    record = {name: _jsonable(getattr(bound, name, None)) for name in _RESULT_FIELDS}
    # the bound carries the network's assumptions once LipschitzBound has the field; until then, the network's
    assumptions = list(getattr(bound, "assumptions", getattr(net, "assumptions", ())) or ())
    if args.json:
        record["norm"] = args.norm
        record["assumptions"] = assumptions
        print(json.dumps(record))
        return 0
    margin = record["certificate_margin"]
    print(
        f"{record['method']}: L <= {record['value']:.6g} in the {_norm_name(bound.norm)} norm (solver "
        f"{record['solver']}, status {record['status']}, {record['solve_time']:.3g} s, certificate margin "
        f"{'n/a' if margin is None else format(margin, '.3g')})"
    )
    for assumption in assumptions:
        print(f"assumed: {assumption}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .suite import run_default_suite, suite_outputs

    table = run_default_suite(out=args.out, methods=args.methods, solver=args.solver)
    columns = [c for c in ("network", "method", "value", "solver", "status", "solve_time") if c in table]
    print(table[columns].to_string(index=False))
    csv_path, png_path = suite_outputs(args.out)
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0


def _list(names: Sequence[str]) -> int:
    for name in names:
        print(name)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "estimate":
        return _estimate(args)
    if args.command == "compare":
        return _compare(args)
    import lipsdp

    return _list(lipsdp.methods() if args.command == "methods" else lipsdp.solvers())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lipsdp`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except LipSDPError as exc:
        print(f"lipsdp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
