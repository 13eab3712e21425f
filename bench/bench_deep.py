"""Deep chains: certified seconds and memory against depth and width (issue 18).

Rows: network, depth (weight matrices), width, LMI size, method, solver,
certified bound, seconds (the whole certified estimate,
``LipschitzBound.solve_time``; imports excluded), peak resident memory of the
case's fresh process (MiB), status, note.  Every case runs in its own spawned
process with a time cap (``--cap``); a case whose time, extrapolated from the
same method on the smaller nets of its sweep (power law through the last two),
exceeds the cap — or that follows a timeout or an error of that method in the
sweep — is not run and gets a ``skipped (…)`` row.

Networks (all seeded):

* depth sweep ``relu-{L}x{n}``: ``L`` weight matrices, input and hidden width
  ``n`` (64), 10 outputs, ReLU, weights ``N(0, 1.2²/n)`` (the family of issue 18);
* width sweep: 8 weight matrices of width 16 … 256, same law;
* the ECLipsE paper's family ``eclipse-{L}x{n}`` (Xu & Sivaranjani 2024, their
  ``generate_random_weights``): 4 inputs, ``L − 1`` hidden layers of width
  ``n``, 1 output, each weight a standard Gaussian rescaled to a spectral norm
  drawn uniformly from [0.4, 1.8], drawn with NumPy's legacy generator seeded
  ``7n + 13L`` so the nets are theirs.

Methods: ``lipsdp-neuron`` (one LMI, automatic solver), ``lipsdp-neuron-layerwise``,
``eclipse-fast`` (certified closed form), ``cvxpy:SCS`` (``lipsdp-neuron`` through
cvxpy and SCS, certified), and the peer ``eclipse-nn`` (the ``eclipse-nn``
package's ECLipsE-Fast, uncertified), which runs under ``.venv-peers`` (made by
``scripts/peer_env.sh``); without that environment its rows say so.

    python bench/bench_deep.py                      # everything, 120 s per case
    python bench/bench_deep.py --quick              # tiny nets (the smoke test)
    python bench/bench_deep.py --depths 8,16 --widths 16,32 --methods eclipse-fast,eclipse-nn --cap 60

Writes results/bench_deep.csv and results/bench_deep.png (log-log seconds against
depth per method, and against width), atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, RESULTS, run_isolated, save_figure, write_table  # noqa: E402

METHODS = ("lipsdp-neuron", "lipsdp-neuron-layerwise", "eclipse-fast", "cvxpy:SCS", "eclipse-nn")
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_eclipse_nn.py"
_GAIN = 1.2  # weights N(0, gain²/fan-in)


# ------------------------------------------------------------------------------- networks
def gaussian_chain(depth: int, width: int, seed: int, outputs: int = 10) -> list[np.ndarray]:
    """``depth`` weights: ``width`` → … → ``width`` → ``outputs``, entries ``N(0, 1.2²/width)``."""
    rng = np.random.default_rng(seed)
    dims = [width] * depth + [outputs]
    return [rng.normal(0.0, _GAIN / np.sqrt(dims[k]), (dims[k + 1], dims[k])) for k in range(depth)]


def eclipse_paper_chain(layers: int, width: int) -> list[np.ndarray]:
    """The ECLipsE paper's random network with ``layers`` weights of hidden width ``width`` (module docstring)."""
    state = np.random.RandomState(7 * width + 13 * layers)  # their seed and generator, for the same nets
    dims = [4] + [width] * (layers - 1) + [1]
    weights = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        norm = state.uniform(0.4, 1.8)  # drawn before the matrix, in their order
        w = state.randn(fan_out, fan_in)
        weights.append(norm * w / np.linalg.norm(w, 2))
    return weights


def networks(depths, widths, eclipse_depths, eclipse_width: int, sweep_width: int, sweep_depth: int):
    """``(sweep, name, depth, width, weights)`` of every network, each sweep in increasing size."""
    out = []
    for depth in depths:
        out.append(("depth", f"relu-{depth}x{sweep_width}", depth, sweep_width, gaussian_chain(depth, sweep_width, depth)))
    for width in widths:
        out.append(("width", f"relu-{sweep_depth}x{width}", sweep_depth, width,
                    gaussian_chain(sweep_depth, width, 1000 + width)))
    for layers in eclipse_depths:
        out.append(("eclipse", f"eclipse-{layers}x{eclipse_width}", layers, eclipse_width,
                    eclipse_paper_chain(layers, eclipse_width)))
    return out


def lmi_size(weights) -> int:
    """Size of the one-block LipSDP-Neuron LMI: the input plus every hidden neuron."""
    return int(weights[0].shape[1] + sum(w.shape[0] for w in weights[:-1]))


# ------------------------------------------------------------------------------- cases
def _case(weights, method: str):
    """One certified estimate (runs in a spawned child: :func:`common.run_isolated`)."""
    import lipsdp

    name, solver = ("lipsdp-neuron", "cvxpy:SCS") if method == "cvxpy:SCS" else (method, None)
    if solver is not None:
        from lipsdp.solver_registry import resolve_solver

        resolve_solver(solver).available()  # imports cvxpy before the estimate's clock starts
    net = lipsdp.Network.from_weights(weights, activation="relu")
    bound = lipsdp.estimate(net, method=name, solver=solver)
    return {"bound": float(bound), "solver": bound.solver, "seconds": float(bound.solve_time),
            "lmi_size": int(bound.details.get("lmi_size", 0))}


def peer_case(weights, cap: float) -> dict:
    """The ``eclipse-nn`` package's ECLipsE-Fast on ``weights``, under the peers' interpreter."""
    if not PEER_PYTHON.exists():
        return {"status": "skipped (no .venv-peers: run scripts/peer_env.sh)", "seconds": float("nan"),
                "peak_mb": float("nan"), "bound": float("nan")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.npz"
        np.savez(path, **{f"w{k}": w for k, w in enumerate(weights)})
        try:
            done = subprocess.run([str(PEER_PYTHON), str(PEER_SCRIPT), str(path), "ECLipsE_Fast"],
                                  capture_output=True, text=True, timeout=cap)
        except subprocess.TimeoutExpired:
            return {"status": f"timeout after {cap:.0f} s", "seconds": float("nan"), "peak_mb": float("nan"),
                    "bound": float("nan")}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"error: {tail[:160]}", "seconds": float("nan"), "peak_mb": float("nan"),
                "bound": float("nan")}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"status": "ok", "seconds": out["seconds"], "peak_mb": out["peak_mb"], "bound": out["value"]}


def predicted_seconds(history: list[tuple[int, float]], size: int) -> float:
    """Power-law extrapolation through the last two (LMI size, seconds) points of a method in a sweep;
    from a single point, linear growth in the LMI size (the least any method here shows), so a case
    that even that predicts past the cap is skipped instead of timed out."""
    if not history:
        return 0.0
    if len(history) == 1:
        s1, t1 = history[0]
        return t1 * max(size / s1, 1.0) if s1 > 0 else t1
    (s1, t1), (s2, t2) = history[-2], history[-1]
    if s2 == s1 or t1 <= 0 or t2 <= 0:
        return t2
    exponent = max(math.log(t2 / t1) / math.log(s2 / s1), 1.0)
    return t2 * (size / s2) ** exponent


def run(nets, methods, cap: float, progress: bool = True) -> list[dict]:
    """Every (network, method) case, in sweep order, with the skipping rule of the module docstring."""
    from tqdm import tqdm

    rows = []
    history: dict = {}  # (sweep, method) -> [(size, seconds)] of successful runs
    stopped: dict = {}  # (sweep, method) -> why larger cases of that sweep are not run
    cases = [(net, method) for net in nets for method in methods]
    for (sweep, name, depth, width, weights), method in tqdm(cases, desc="bench_deep", disable=not progress):
        size = lmi_size(weights)
        row = {"network": name, "sweep": sweep, "depth": depth, "width": width, "lmi_size": size, "method": method,
               "solver": "", "certified_bound": float("nan"), "seconds": float("nan"), "peak_mb": float("nan"),
               "peer_value": float("nan"), "status": "", "note": ""}
        rows.append(row)
        key = (sweep, method)
        predicted = predicted_seconds(history.get(key, []), size)
        if key in stopped:
            row["status"] = f"skipped ({stopped[key]})"
            continue
        if predicted > cap:
            row["status"] = f"skipped (predicted {predicted:.0f} s > cap {cap:.0f} s)"
            continue
        if method == "eclipse-nn":
            out = peer_case(weights, cap)
            row.update(solver="eclipse-nn ECLipsE_Fast", status=out["status"], seconds=out["seconds"],
                       peak_mb=out["peak_mb"], peer_value=out["bound"],
                       note="peer, uncertified: its value is an estimate, not a proved upper bound")
        else:
            out = run_isolated(_case, weights, method, timeout=cap)
            row["status"] = out["status"][:160] if out["status"] != "ok" else "ok"
            if out["status"] == "ok":
                res = out["result"]
                row.update(solver=res["solver"], certified_bound=res["bound"], seconds=res["seconds"],
                           peak_mb=out["peak_mb"])
        if row["status"] == "ok":
            history.setdefault(key, []).append((size, row["seconds"]))
        elif not row["status"].startswith("skipped"):
            stopped[key] = f"{row['status'].split(':')[0]} at {name}"
    return rows


# ------------------------------------------------------------------------------- output
def plot(rows: list[dict], target: Path) -> None:
    """Log-log seconds against depth (depth sweep) and against width (width sweep), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, sweep, key, label in ((axes[0], "depth", "depth", "depth (weight matrices)"),
                                  (axes[1], "width", "width", "width")):
        for color, method in enumerate(METHODS):  # one colour per method in both panels
            pts = sorted((r[key], r["seconds"]) for r in rows
                         if r["sweep"] == sweep and r["method"] == method and r["status"] == "ok")
            if pts:
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{color}", label=method)
        ticks = sorted({r[key] for r in rows if r["sweep"] == sweep})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        fixed = next((r for r in rows if r["sweep"] == sweep), None)
        title = (f"ReLU chains, width {fixed['width']}" if sweep == "depth" else f"ReLU chains, depth {fixed['depth']}") \
            if fixed else sweep
        ax.set_title(title)
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (certified estimate; eclipse-nn uncertified)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    save_figure(fig, str(target))
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny nets and a short cap (the smoke test)")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds allowed to one case")
    parser.add_argument("--depths", default="8,16,32,64,128", help="depth sweep (weight matrices)")
    parser.add_argument("--widths", default="16,32,64,128,256", help="width sweep")
    parser.add_argument("--sweep-width", type=int, default=64, help="width of the depth sweep")
    parser.add_argument("--sweep-depth", type=int, default=8, help="depth of the width sweep")
    parser.add_argument("--eclipse-depths", default="20,100", help="depths of the ECLipsE paper's family ('' for none)")
    parser.add_argument("--eclipse-width", type=int, default=80, help="width of the ECLipsE paper's family")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--output-dir", default=str(RESULTS), help="where bench_deep.csv/.png go")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.quick:
        depths, widths, eclipse_depths = [2, 3], [3], [3]
        sweep_width, sweep_depth, eclipse_width, cap = 4, 2, 5, min(args.cap, 120.0)
    else:
        depths, widths, eclipse_depths = _ints(args.depths), _ints(args.widths), _ints(args.eclipse_depths)
        sweep_width, sweep_depth, eclipse_width, cap = args.sweep_width, args.sweep_depth, args.eclipse_width, args.cap
    nets = networks(depths, widths, eclipse_depths, eclipse_width, sweep_width, sweep_depth)
    rows = run(nets, methods, cap)
    out = Path(args.output_dir).resolve()
    write_table(rows, str(out / "bench_deep.csv"))  # an absolute name: common.RESULTS / name is that path
    plot(rows, out / "bench_deep.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
