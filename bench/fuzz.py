"""Soundness fuzzing at scale (issue 17): every certified bound ≥ every lower bound.

    python bench/fuzz.py --n 10000 [--seed 0] [--processes 2] [--lmi-every 5] [--case-timeout 120]

Seeds ``seed … seed + n − 1`` each give one case of :mod:`fuzzing` (bench/fuzzing.py):
every ``--lmi-every``-th seed an lmi combination (parameterization × registry activation
× γ ∈ {0.05, 1, 20} × float32/float64, cycling through all of them, checked at
initialisation and after 30 quotient-maximising Adam steps), the others a random
small network with a random method, norm and solver.

Writes results/fuzz.csv (atomically): one row per family — ``net``: activation entry ×
method × norm × solver; ``lmi``: activation × parameterization — with the columns
``tried, passed, typed_errors, violations, untyped_errors, timeouts``, ``notes`` (passed
cases with a remark that is not a failure: an lmi bound above the model's γ, a lower-bound
routine returning a non-finite value) and ``min_slack`` (``min bound/lower − 1`` over the
passed cases: how close a certified bound came to a lower bound), then a ``total`` row. Prints the table,
every failure with its reproducer, and the notes; exits with status 1 if there is any
violation or untyped error.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker: the workers are the parallelism

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzing  # noqa: E402
from common import write_table  # noqa: E402

TIMEOUT = "timeout"
COUNTS = {fuzzing.PASSED: "passed", fuzzing.TYPED: "typed_errors", fuzzing.VIOLATION: "violations",
          fuzzing.UNTYPED: "untyped_errors", TIMEOUT: "timeouts"}


class CaseTimeout(Exception):
    """Raised in a worker when one case runs past ``--case-timeout``."""


def _alarm(signum, frame):
    raise CaseTimeout()


def _init_worker() -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # solver chatter; failures are reported through outcomes
    signal.signal(signal.SIGALRM, _alarm)


def _run(job: tuple[int, int, float]) -> list[fuzzing.Outcome]:
    """Outcomes of one seed, or one ``timeout`` outcome after ``limit`` seconds."""
    seed, lmi_every, limit = job
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return fuzzing.run_seed(seed, lmi_every)
    except CaseTimeout:
        kind, family = fuzzing.family_of_seed(seed, lmi_every)
        return [fuzzing.Outcome(kind, family, TIMEOUT, seed, detail=f"seed {seed} {family} ran past {limit:g} s")]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def tabulate(outcomes: list[fuzzing.Outcome]) -> list[dict]:
    """One row per ``(kind, family)`` with the counts of each status, then the total row."""
    rows: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys([*COUNTS.values(), "tried", "notes"], 0))
    ratios: dict[tuple, float] = defaultdict(lambda: float("inf"))
    for o in outcomes:
        key = (o.kind, *o.family)
        row = rows[key]
        row["tried"] += 1
        row[COUNTS[o.status]] += 1
        row["notes"] += bool(o.note)
        if o.status == fuzzing.PASSED and o.lower > 0:
            ratios[key] = min(ratios[key], o.bound / o.lower - 1)
    table = []
    for key in sorted(rows):
        kind, activation, method, norm, solver = key
        table.append({"kind": kind, "activation": activation, "method": method, "norm": norm, "solver": solver,
                      **_ordered(rows[key]), "min_slack": ratios.get(key, float("nan"))})
    total = {c: sum(r[c] for r in rows.values()) for c in ["tried", *COUNTS.values(), "notes"]}
    finite = [v for v in ratios.values() if v < float("inf")]
    table.append({"kind": "total", "activation": "", "method": "", "norm": "", "solver": "", **_ordered(total),
                  "min_slack": min(finite, default=float("nan"))})
    return table


def _ordered(counts: dict) -> dict:
    return {c: counts[c] for c in ["tried", *COUNTS.values(), "notes"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of seeds (cases)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--lmi-every", type=int, default=5, help="every k-th seed is an lmi case (0: none)")
    parser.add_argument("--case-timeout", type=float, default=120.0, help="seconds before a case counts as timeout")
    parser.add_argument("--output", default="fuzz.csv", help="file name under results/")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    jobs = [(s, args.lmi_every, args.case_timeout) for s in range(args.seed, args.seed + args.n)]
    start = time.perf_counter()
    outcomes: list[fuzzing.Outcome] = []
    with mp.get_context("spawn").Pool(args.processes, initializer=_init_worker) as pool:
        for result in tqdm(pool.imap_unordered(_run, jobs, chunksize=4), total=len(jobs), desc="fuzz"):
            outcomes.extend(result)
    elapsed = time.perf_counter() - start
    table = tabulate(outcomes)
    write_table(table, args.output)
    failures = [o for o in outcomes if o.status in fuzzing.FAILURES]
    for o in sorted(failures, key=lambda o: o.seed):
        print(f"\n[{o.status}] seed {o.seed} {o.kind} {o.family}\n{o.detail}")
    for o in sorted((o for o in outcomes if o.status == TIMEOUT), key=lambda o: o.seed):
        print(f"[timeout] {o.detail}")
    for o in sorted((o for o in outcomes if o.note), key=lambda o: o.seed):
        print(f"[note] seed {o.seed} {o.kind} {o.family}: {o.note}")
    print(f"{len(jobs)} seeds, {len(outcomes)} outcomes in {elapsed:.0f} s "
          f"({elapsed / max(len(jobs), 1) * args.processes:.3f} s per seed per process); "
          f"{len(failures)} failure(s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
