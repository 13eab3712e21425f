"""Shared pieces of the benchmark scripts: networks, isolation, memory, tables.

Each case runs in a fresh *spawned* process so that its peak resident memory
(``ru_maxrss``, which includes native allocations of BLAS/cvxopt/SCS) is its
own, and so that a time cap can stop it.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lipsdp.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
ANCHORS = ROOT.parent / "shared" / "anchors"


def random_weights(widths: list[int], seed: int = 0) -> list[np.ndarray]:
    """Gaussian weights scaled by 1/√fan-in (the LipSDP repository's random nets are similar)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]


def anchor_weights(*parts: str, key: str = "weights") -> list[np.ndarray] | None:
    """Weights of an anchor network, or None when ../shared is absent."""
    path = ANCHORS.joinpath(*parts)
    if not path.exists():
        return None
    import scipy.io as sio

    cell = sio.loadmat(path)[key]
    return [np.asarray(cell[0, i], float) for i in range(cell.shape[1])]


def plain_cvxpy_lipsdp(weights: list[np.ndarray], solver: str = "SCS", **options) -> tuple[float, str]:
    """The textbook LipSDP-Neuron in cvxpy (docs/formulations.md §1), as users write it today; ReLU slopes [0, 1].

    Returns ``(√ρ, status)``: *uncertified*, this is the baseline being compared against.
    """
    import cvxpy as cp
    import scipy.sparse as sp

    n0 = weights[0].shape[1]
    hidden = [w.shape[0] for w in weights[:-1]]
    n_total = n0 + sum(hidden)
    big_n = sum(hidden)
    a = sp.hstack([sp.block_diag(weights[:-1]), sp.csr_matrix((big_n, hidden[-1]))]).tocsr()
    b = sp.hstack([sp.csr_matrix((big_n, n0)), sp.identity(big_n)]).tocsr()
    lam = cp.Variable(big_n, nonneg=True)
    rho = cp.Variable(nonneg=True)
    t = cp.diag(lam)
    ab = sp.vstack([a, b]).tocsr()
    q = cp.bmat([[np.zeros((big_n, big_n)), t], [t, -2 * t]])
    m_out = np.zeros((n_total, n_total))
    m_out[-hidden[-1]:, -hidden[-1]:] = weights[-1].T @ weights[-1]
    e0 = np.zeros((n_total, n_total))
    e0[:n0, :n0] = np.eye(n0)
    m = ab.T @ q @ ab - rho * e0 + m_out
    prob = cp.Problem(cp.Minimize(rho), [0.5 * (m + m.T) << 0])
    prob.solve(solver=solver, **options)
    value = float(np.sqrt(max(rho.value, 0.0))) if rho.value is not None else float("nan")
    return value, str(prob.status)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` where /proc exists, else ``ru_maxrss``.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss`` keeps the
    peak of the process that forked the child (Linux carries it across ``exec``), so a parent
    that trained a model would set a floor under every child's figure.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB → MiB on Linux


def _child(conn, fn: Callable, args: tuple, kwargs: dict) -> None:
    try:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        elapsed = time.perf_counter() - start
        conn.send(("ok", out, elapsed, peak_rss_mb()))
    except BaseException as exc:  # report every failure to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), 0.0))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args: Any, timeout: float | None = None, **kwargs: Any) -> dict:
    """Run ``fn(*args, **kwargs)`` in a spawned process.

    Returns
    -------
    dict
        ``status`` ("ok", "error: …" or "timeout after N s"), ``result``,
        ``seconds`` (inside the child) and ``peak_mb`` (its max resident set).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs))
    proc.start()
    child.close()
    if parent.poll(timeout):
        kind, out, elapsed, peak = parent.recv()
        proc.join()
        if kind == "ok":
            return {"status": "ok", "result": out, "seconds": elapsed, "peak_mb": peak}
        return {"status": f"error: {out}", "result": None, "seconds": float("nan"), "peak_mb": float("nan")}
    proc.kill()
    proc.join()
    return {"status": f"timeout after {timeout:.0f} s", "result": None, "seconds": float("nan"), "peak_mb": float("nan")}


def write_table(rows: list[dict], name: str) -> Path:
    """Print ``rows`` as a table and write ``results/<name>`` atomically (CSV)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    target = RESULTS / name
    with atomic_path(target) as tmp:
        table.to_csv(tmp, index=False)
    print(f"wrote {target}", file=sys.stderr)
    return target


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure under results/ atomically."""
    target = RESULTS / name
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(name).suffix.lstrip(".") or "png")
    return target
