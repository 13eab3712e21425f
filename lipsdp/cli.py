"""The ``lipsdp`` command (also ``python -m lipsdp``).

Examples
--------
::

    lipsdp estimate model.pt --method lipsdp-neuron --json
    lipsdp estimate model.pt --method lower        # a lower bound, labelled as such
    lipsdp compare --out results
    lipsdp methods
    lipsdp solvers
    lipsdp --version

``estimate`` gives a certified upper bound for every registered method; the
names ``lower`` and ``exact`` (which :func:`lipsdp.estimate` refuses: it returns
upper bounds only) give a lower bound and the exact constant, and the output
says so (``L >=`` / ``L =``, and ``"kind"`` in ``--json``).

Every :class:`~lipsdp.errors.LipSDPError` is reported as one line on stderr
with exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from .errors import InvalidOptionError, LipSDPError

_RESULT_FIELDS = ("value", "raw_value", "method", "solver", "status", "solve_time", "certificate_margin")
#: the relation ``estimate`` prints between L and the value, for each kind of number (method_table's ``gives``)
_KINDS = {
    "certified upper bound": "<=",
    "lower bound": ">=",
    "exact constant": "=",
}
#: columns of the table ``lipsdp compare`` prints (the CSV holds every column of lipsdp.compare)
_COMPARE_COLUMNS = ("network", "method", "value", "gap", "solver", "status", "solve_time")


# ------------------------------------------------------------------------------ parser
def _max_regions(text: str) -> int | None:
    """``--max-regions``: a positive whole number, or ``none`` for no limit."""
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of regions, got {value}")
    return value


def _activation_help() -> str:
    from .activation_registry import activation_names

    return ("activation between the layers, for files that cannot say which: a state dict, or a .npz without an "
            "'activation' entry (required there: there is no default); for a .mat file it overrides the key's "
            "convention; refused for TorchScript and .npz files that name theirs. One of: "
            f"{', '.join(activation_names())} (a parameter after a colon, e.g. leaky_relu:0.2)")


def _estimate_parser(sub) -> None:
    from .lower import DEFAULT_MAX_REGIONS

    est = sub.add_parser("estimate", help="bound for a saved model (certified upper bound unless --method lower/exact)",
                         description="Certified upper bound on the Lipschitz constant of a saved model; "
                                     "--method lower gives a lower bound and --method exact the exact constant "
                                     "of tiny ReLU nets, labelled as such.")
    _model_file_arguments(est)
    est.add_argument("--method", default=None,
                     help="a name from `lipsdp methods` (default lipsdp-neuron); lower and exact give a lower bound "
                          "and the exact constant instead of an upper bound")
    est.add_argument("--solver", default=None, help="a name from `lipsdp solvers` (default: the automatic choice)")
    est.add_argument("--norm", default="2", choices=["2", "inf"], help="input/output norm (default 2)")
    est.add_argument("--max-memory-gb", type=float, default=None,
                     help="memory budget in GiB for the SDP (default: 75%% of the memory available)")
    est.add_argument("--max-regions", type=_max_regions, default=argparse.SUPPRESS, metavar="N",
                     help="--method exact only: refuse nets with more possible linear regions than N (default "
                          f"{DEFAULT_MAX_REGIONS}; each costs about one linear program); 'none' lifts the limit")
    est.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _model_file_arguments(cmd) -> None:
    """The model file and what the user states about it (shared by the commands that read one)."""
    cmd.add_argument("path", help="model file: .pt/.pth (TorchScript or state_dict), .npz or .mat")
    cmd.add_argument("--activation", default=None, metavar="NAME", help=_activation_help())
    cmd.add_argument("--structure", default=None, choices=["feedforward", "residual"],
                     help=".mat files only: feedforward (default, stated in the result) or residual "
                          "(x1 = W1 x, x_(k+1) = x_k + act(W_k x_k), y = W_L x_(L-1))")
    cmd.add_argument("--input-shape", default=None, type=_input_shape, metavar="C,H,W",
                     help="shape of one input without the batch axis, e.g. 1,28,28: required for models with "
                          "convolutions or pooling")


def _input_shape(text: str) -> tuple:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas such as 1,28,28, got {text!r}")
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,28,28, got {text!r}")
    return shape


def _load(args: argparse.Namespace):
    from .io import load_network

    return load_network(args.path, activation=args.activation, structure=args.structure,
                        input_shape=args.input_shape)


def _check_claim_parser(sub) -> None:
    cmd = sub.add_parser(
        "check-claim", help="is a saved model really gamma-Lipschitz? certified bound, lower bound, layer factors",
        description="Check a claimed Lipschitz constant: lipsdp's certified bound and a lower bound against the "
                    "claim, and the layers the excess comes from. Exit status 0 when the claim is proved, 1 when "
                    "it is not proved or refuted, 2 on errors.")
    _model_file_arguments(cmd)
    cmd.add_argument("--gamma", type=float, required=True, help="the claimed Lipschitz constant (l2 norm)")
    cmd.add_argument("--method", default="lipsdp-neuron", help="method of the certified bound (default lipsdp-neuron)")
    cmd.add_argument("--solver", default=None, help="a name from `lipsdp solvers` (default: the automatic choice)")
    cmd.add_argument("--no-lower", action="store_true", help="skip the lower-bound search")
    cmd.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _check_claim(args: argparse.Namespace) -> int:
    """``lipsdp check-claim``: prints the report; 0 if the claim holds, else 1."""
    from .claims import check_claim

    options = {} if args.solver is None else {"solver": args.solver}
    result = check_claim(_load(args), args.gamma, method=args.method, lower=not args.no_lower, **options)
    print(json.dumps(result.as_dict()) if args.json else str(result))
    return 0 if result.verdict == "holds" else 1


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .api import DEFAULT_COMPARE

    parser = argparse.ArgumentParser(prog="lipsdp", description="Certified Lipschitz bounds of neural networks.")
    parser.add_argument("--version", action="version", version=f"lipsdp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _estimate_parser(sub)
    _check_claim_parser(sub)

    cmp_ = sub.add_parser("compare", help="run the default comparison suite (digits MLPs), write a CSV and a figure",
                          description="Train three small MLPs on scikit-learn's digits, run the methods on each, "
                                      "print the table and write compare_default.csv and compare_default.png.")
    cmp_.add_argument("--suite", default="default", choices=["default"], help="which suite")
    cmp_.add_argument("--out", default="results", help="output folder (default: results)")
    cmp_.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                      help=f"names from `lipsdp methods` (default: {' '.join(DEFAULT_COMPARE)})")
    cmp_.add_argument("--solver", default=None, help="a name from `lipsdp solvers` (default: the automatic choice)")

    sub.add_parser("methods", help="list the methods: what each gives, its norms, the defaults")
    sub.add_parser("solvers", help="list every solver: usable here or why not, the automatic choice's order")
    return parser


# ------------------------------------------------------------------------------ output
def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def _norm_name(norm) -> str:
    return "L2" if norm in (2, "2") else "Linf"


def _text_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """``rows`` as left-aligned columns under a header (no wrapping: one row per line)."""
    cells = [[str(c) for c in columns]] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells)


# ------------------------------------------------------------------------------ estimate
def _method_kind(method: str | None) -> str:
    """What ``method`` gives (the ``gives`` column of :func:`lipsdp.api.method_table`)."""
    from .api import COMPARE_EXTRAS, check_method_names, method_table

    if method is None:
        return "certified upper bound"
    check_method_names(method, COMPARE_EXTRAS)  # an unknown name: the error lists every accepted one
    return next(row["gives"] for row in method_table() if row["name"] == method)


def _check_flags(args: argparse.Namespace, kind: str) -> None:
    """Refuse flags that the chosen method would ignore."""
    if hasattr(args, "max_regions") and args.method != "exact":
        raise InvalidOptionError("--max-regions applies to --method exact only")
    if kind != "certified upper bound" and args.solver is not None:
        raise InvalidOptionError(f"--solver: the method {args.method!r} calls no solver; leave --solver out")
    if kind != "certified upper bound" and args.max_memory_gb is not None:
        raise InvalidOptionError(f"--max-memory-gb: the method {args.method!r} builds no SDP; leave it out")


def _upper_bound_record(net, args: argparse.Namespace) -> tuple[dict, list]:
    import lipsdp

    options = {k: v for k, v in (("method", args.method), ("solver", args.solver)) if v is not None}
    bound = lipsdp.estimate(net, norm=args.norm, max_memory_gb=args.max_memory_gb, **options)
    record = {name: _jsonable(getattr(bound, name, None)) for name in _RESULT_FIELDS}
    return record, list(getattr(bound, "assumptions", ()))  # estimate already merges the network's


def _other_record(net, args: argparse.Namespace) -> tuple[dict, list]:
    """The row of a lower bound or exact constant (``lipsdp.api.compare_row``)."""
    from .api import compare_row

    exact_options = {"max_regions": args.max_regions} if hasattr(args, "max_regions") else None
    row = compare_row(net, args.method, norm=args.norm, exact_options=exact_options, progress=None)
    record = {name: _jsonable(row.get(name)) for name in _RESULT_FIELDS}
    return record, list(net.assumptions or ())


def _describe(record: dict, kind: str, norm: str) -> str:
    """The one-line text result: relation, norm, and how the number was obtained."""
    head = f"{record['method']}: L {_KINDS[kind]} {record['value']:.6g} in the {_norm_name(norm)} norm"
    if kind == "lower bound":
        return f"{head} (a lower bound, not a certificate: {record['solve_time']:.3g} s)"
    if kind == "exact constant":
        return (f"{head} (the exact constant, the largest Jacobian norm over the net's linear regions; over every "
                f"slope pattern, realizable or not: {record['raw_value']:.6g}; {record['solve_time']:.3g} s)")
    margin = record["certificate_margin"]
    return (f"{head}, a certified upper bound (solver {record['solver']}, status {record['status']}, "
            f"{record['solve_time']:.3g} s, certificate margin {'n/a' if margin is None else format(margin, '.3g')})")


def _estimate(args: argparse.Namespace) -> int:
    kind = _method_kind(args.method)
    _check_flags(args, kind)
    net = _load(args)
    build = _upper_bound_record if kind == "certified upper bound" else _other_record
    record, assumptions = build(net, args)
    if args.json:
        record.update(kind=kind, norm=args.norm, assumptions=assumptions)
        print(json.dumps(record))
        return 0
    print(_describe(record, kind, args.norm))
    for assumption in assumptions:
        print(f"assumed: {assumption}")
    return 0


# ------------------------------------------------------------------------------ compare
def _compare(args: argparse.Namespace) -> int:
    from .suite import run_default_suite, suite_outputs

    table = run_default_suite(out=args.out, methods=args.methods, solver=args.solver)
    shown = table[[c for c in _COMPARE_COLUMNS if c in table]]
    formats = {"value": "{:.6g}".format, "gap": "{:.4f}".format, "solve_time": "{:.3g}".format}
    print(shown.to_string(index=False, formatters={c: f for c, f in formats.items() if c in shown}))
    print("gap = value / the best lower bound of the same network (lower or exact rows): 1 means tight")
    csv_path, png_path = suite_outputs(args.out)
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    return 0


# ------------------------------------------------------------------------------ listings
def _methods() -> int:
    from .api import method_table

    rows = method_table()
    print(_text_table(rows, ("name", "gives", "norms", "accepted_by", "default", "description")))
    print("\naccepted_by: the Python functions lipsdp.estimate / lipsdp.compare; the command line takes every name "
          "in `lipsdp compare --methods`, and in `lipsdp estimate --method` (a lower bound or exact constant is "
          "printed as L >= or L =). default: the method of `lipsdp estimate` without --method, and the list "
          "`lipsdp compare` runs without --methods.")
    return 0


def _solvers() -> int:
    from .api import solver_table

    rows = [dict(row, usable="yes" if row["usable"] else f"no: {row['why_not']}") for row in solver_table()]
    print(_text_table(rows, ("name", "automatic", "usable", "description")))
    print("\nautomatic: the default (no --solver, solver=None) tries the usable solvers in this order, the first that "
          "applies to the problem; if it fails, the next one.")
    return 0


def _run(args: argparse.Namespace) -> int:
    commands = {"estimate": _estimate, "compare": _compare, "check-claim": _check_claim}
    if args.command in commands:
        return commands[args.command](args)
    return _methods() if args.command == "methods" else _solvers()


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
