"""Benchmark of the lmi parameterizations.

1. Square-wave fit (LBDN paper, Wang & Manchester 2023): 300 points on [-2, 2],
   gamma in {1, 5, 10}; reports the empirical max slope / gamma (paper, sandwich:
   99.9 % / 99.3 % / 94.0 %).
2. digits, wine, breast_cancer, iris: clean and certified accuracy at
   eps = 0.1, 0.3 (standardised units), seconds per epoch, and forward+backward
   time relative to an unconstrained MLP of the same widths.

Writes ``results/bench_lmi.csv`` atomically and prints the tables.

    python bench/bench_lmi.py            # default run (< ~10 min on 2 cores)
    python bench/bench_lmi.py --quick    # smaller run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lmi  # noqa: E402
from lipsdp.io import atomic_path  # noqa: E402

PAPER_SANDWICH = {1.0: 0.999, 5.0: 0.993, 10.0: 0.940}


def atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def max_slope(model, lo=-2.0, hi=2.0, n=20001) -> float:
    """Largest finite-difference slope of a 1-D model on a dense grid (float64)."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64).unsqueeze(1)
    m = model.double().eval()
    with torch.no_grad():
        y = m(x).squeeze(1)
    return float(((y[1:] - y[:-1]).abs() / (x[1:, 0] - x[:-1, 0])).max())


def bench_square_wave(names, gammas, steps, width, depth, seed=0):
    X, y = lmi.function_data("square_wave", n=300)
    rows = []
    for name in names:
        for gamma in gammas:
            torch.manual_seed(seed)
            m = lmi.lipschitz_mlp([1] + [width] * depth + [1], gamma, parameterization=name)
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            t0 = time.perf_counter()
            m.train()
            for _ in range(steps):
                loss = nn.functional.mse_loss(m(X), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            secs = time.perf_counter() - t0
            mse = float(nn.functional.mse_loss(m.eval()(X), y).detach())
            slope = max_slope(m)
            rows.append({"benchmark": "square_wave", "parameterization": name, "gamma": gamma,
                         "dataset": "square_wave", "slope_over_gamma": slope / gamma, "mse": mse,
                         "train_s": secs,
                         "paper_sandwich": PAPER_SANDWICH.get(gamma, np.nan) if name == "sandwich" else np.nan})
            print(f"  square wave {name:10s} gamma={gamma:4g}: slope/gamma={slope / gamma:.3f} mse={mse:.4f} "
                  f"({secs:.1f}s)", flush=True)
    return rows


def fwd_bwd_time(model, X, reps=30) -> float:
    model.train()
    for _ in range(3):
        model(X).sum().backward()
    t0 = time.perf_counter()
    for _ in range(reps):
        model(X).sum().backward()
    return (time.perf_counter() - t0) / reps


def plain_mlp(dims):
    mods = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def bench_classification(names, datasets, epochs, width, gamma, seed=0):
    rows = []
    for ds in datasets:
        d = lmi.load_dataset(ds, seed=seed)
        dims = [d.n_features, width, width, d.n_classes]
        Xb = d.X_train[:256]
        torch.manual_seed(seed)
        base_t = fwd_bwd_time(plain_mlp(dims), Xb)
        for name in names:
            torch.manual_seed(seed)
            m = lmi.lipschitz_mlp(dims, gamma, parameterization=name)
            hist = lmi.train(m, d.X_train, d.y_train, d.X_test, d.y_test, epochs=epochs[ds], lr=5e-3,
                             batch_size=64, eps_train=0.1, progress=False, seed=seed)
            acc = lmi.certified_accuracy(m, d.X_test, d.y_test, [0.0, 0.1, 0.3])
            rel = fwd_bwd_time(m, Xb) / base_t
            rows.append({"benchmark": "classification", "parameterization": name, "gamma": gamma,
                         "dataset": ds, "clean_acc": acc[0], "cert_acc_0.1": acc[1], "cert_acc_0.3": acc[2],
                         "s_per_epoch": float(np.mean(hist.epoch_time)), "fwd_bwd_rel_unconstrained": rel,
                         "epochs": epochs[ds], "lmi_violation": m.lmi_violation()})
            print(f"  {ds:13s} {name:10s}: clean={acc[0]:.3f} cert@0.1={acc[1]:.3f} cert@0.3={acc[2]:.3f} "
                  f"s/epoch={np.mean(hist.epoch_time):.3f} fwd+bwd x{rel:.2f}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps/epochs (about 2 minutes)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_lmi.csv"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices: 1 is fastest)")
    ap.add_argument("--params", default=",".join(lmi.parameterizations()))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.params.split(",") if n.strip()]
    t0 = time.perf_counter()
    steps = 400 if args.quick else 1500
    print(f"square wave ({steps} full-batch Adam steps, widths [1, 32x3, 1])", flush=True)
    rows = bench_square_wave(names, [1.0, 5.0, 10.0], steps=steps, width=32, depth=3)
    ep = ({"digits": 5, "wine": 20, "breast_cancer": 10, "iris": 30} if args.quick
          else {"digits": 20, "wine": 60, "breast_cancer": 30, "iris": 100})
    print("classification (widths [n, 64, 64, C], gamma = 4, eps_train = 0.1)", flush=True)
    rows += bench_classification(names, ["digits", "wine", "breast_cancer", "iris"], ep, width=64, gamma=4.0)
    df = pd.DataFrame(rows)
    atomic_csv(df, Path(args.out))
    pd.set_option("display.width", 200)
    sq = df[df.benchmark == "square_wave"].pivot(index="parameterization", columns="gamma", values="slope_over_gamma")
    print("\nSquare wave: empirical max slope / gamma (paper, sandwich: 0.999 / 0.993 / 0.940)")
    print(sq.round(3).to_string())
    cl = df[df.benchmark == "classification"][["dataset", "parameterization", "clean_acc", "cert_acc_0.1",
                                               "cert_acc_0.3", "s_per_epoch", "fwd_bwd_rel_unconstrained"]]
    print("\nClassification (gamma = 4)")
    print(cl.round(3).to_string(index=False))
    if {"ldlt", "sll"} <= set(names):
        c = df[df.benchmark == "classification"].pivot(index="dataset", columns="parameterization",
                                                         values="cert_acc_0.1")
        print("\nLDL^T vs SLL, certified accuracy at eps = 0.1")
        print(c[["ldlt", "sll"]].round(3).to_string())
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.0f}s")
    return df


if __name__ == "__main__":
    main()
