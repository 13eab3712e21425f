"""lmi's parameterizations against deel-torchlip and orthogonium, certified by lipsdp.

Every model is an MLP 64-256-256-10 with claimed Lipschitz constant gamma = 1, trained on
scikit-learn's digits (8x8 pixels scaled to [0, 1], the same stratified split for all) with
the same loss (lmi's offset cross-entropy, :func:`lmi.lipschitz_margin_loss`), optimiser,
batch size and number of epochs, for several seeds:

* lmi: sandwich, ldlt, sll, aol (ReLU);
* deel-torchlip 1.0.5: ``Sequential`` of ``SpectralLinear`` and ``GroupSort2``;
* orthogonium 0.0.4: ``OrthoLinear`` and ``MaxMin``.

Certified accuracy at l2 radius eps (pixel units) counts test points whose logit margin
exceeds sqrt(2) L eps.  For lmi models L is the parameterization's gamma (``cert_*``) and,
opt-in, the smaller of gamma and lipsdp's certified bound of the trained model
(``cert_lipsdp_*``, :func:`lmi.certify.tightest_bound`).  The peers claim gamma = 1 but
their float32 weights are not exactly orthogonal: L is lipsdp's certified bound
(``certified_bound``, a hair above 1), the only proved one.

Writes ``results/bench_peers.csv`` (mean and std over seeds per library, model and loss)
and ``results/bench_peers.png`` atomically and prints the table.

    python bench/bench_peers.py                # 5 seeds x 6 models (about 10 min on 2 cores)
    python bench/bench_peers.py --quick        # 2 seeds, fewer epochs
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lipsdp  # noqa: E402
import lmi  # noqa: E402
from lipsdp.io import atomic_path  # noqa: E402
from lmi.certify import tightest_bound  # noqa: E402

DIMS = [64, 256, 256, 10]
RADII = (0.1, 0.3, 0.5)
GAMMA = 1.0
LOSS = "offset cross-entropy"
LMI_MODELS = ("sandwich", "ldlt", "sll", "aol")


@dataclass(frozen=True)
class Setting:
    """Training hyper-parameters shared by every model."""

    epochs: int
    lr: float = 5e-3
    batch_size: int = 64
    eps_train: float = 0.5
    temperature: float = 0.1


# ------------------------------------------------------------------------------ models
def deel_mlp() -> nn.Module:
    from deel import torchlip

    return torchlip.Sequential(torchlip.SpectralLinear(DIMS[0], DIMS[1]), torchlip.GroupSort2(),
                               torchlip.SpectralLinear(DIMS[1], DIMS[2]), torchlip.GroupSort2(),
                               torchlip.SpectralLinear(DIMS[2], DIMS[3]))


def orthogonium_mlp() -> nn.Module:
    from orthogonium.layers import MaxMin, OrthoLinear

    return nn.Sequential(OrthoLinear(DIMS[0], DIMS[1]), MaxMin(), OrthoLinear(DIMS[1], DIMS[2]), MaxMin(),
                         OrthoLinear(DIMS[2], DIMS[3]))


def available_models() -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """``name -> (library, builder)``; a peer that is not installed is left out (with a message)."""
    models = {name: ("lmi", lambda name=name: lmi.lipschitz_mlp(DIMS, GAMMA, parameterization=name))
              for name in LMI_MODELS}
    for name, library, module, build in (("deel-torchlip", "deel-torchlip", "deel.torchlip", deel_mlp),
                                         ("orthogonium", "orthogonium", "orthogonium", orthogonium_mlp)):
        try:
            __import__(module)
        except ImportError:
            print(f"  {library} is not installed: skipped (pip install {library})", flush=True)
            continue
        models[name] = (library, build)
    return models


def n_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


# ------------------------------------------------------------------------------ one run
def digits(seed: int = 0) -> lmi.Dataset:
    """digits with pixels in [0, 1] (the raw 0..16 values / 16), so eps is in pixel units."""
    d = lmi.load_dataset("digits", seed=seed, standardize=False)
    d.X_train, d.X_test = d.X_train / 16.0, d.X_test / 16.0
    return d


def run(name: str, library: str, build: Callable[[], nn.Module], data: lmi.Dataset, seed: int,
        setting: Setting) -> dict:
    """Train one model and certify it; one row of per-seed results."""
    torch.manual_seed(seed)
    model = build()
    hist = lmi.train(model, data.X_train, data.y_train, epochs=setting.epochs, lr=setting.lr,
                     batch_size=setting.batch_size, eps_train=setting.eps_train, temperature=setting.temperature,
                     seed=seed, progress=False)
    model.eval()
    start = time.perf_counter()
    row = {"library": library, "model": name, "loss": LOSS, "seed": seed, "epochs": setting.epochs,
           "s_per_epoch": float(np.mean(hist.epoch_time)), "params": n_parameters(model), "claimed_gamma": GAMMA}
    eps = (0.0,) + RADII
    if library == "lmi":
        bound, _ = tightest_bound(model)
        own = lmi.certified_accuracy(model, data.X_test, data.y_test, eps)
        tight = lmi.certified_accuracy(model, data.X_test, data.y_test, eps, lipschitz=bound)
        row.update(certified_bound=bound, **_accuracies("cert", own), **_accuracies("cert_lipsdp", tight))
    else:
        result = lipsdp.check_claim(model, GAMMA, lower=False)
        bound = result.certified
        acc = lmi.certified_accuracy(model, data.X_test, data.y_test, eps, lipschitz=bound)
        row.update(certified_bound=bound, claim=result.verdict, **_accuracies("cert", acc),
                   **_accuracies("cert_lipsdp", acc))
    row["certify_s"] = time.perf_counter() - start
    return row


def _accuracies(prefix: str, acc: np.ndarray) -> dict:
    out = {"clean": float(acc[0])} if prefix == "cert" else {}
    out.update({f"{prefix}_{r}": float(a) for r, a in zip(RADII, acc[1:])})
    return out


# ------------------------------------------------------------------------------ table
METRICS = ["clean"] + [f"cert_{r}" for r in RADII] + [f"cert_lipsdp_{r}" for r in RADII] + \
          ["s_per_epoch", "certified_bound", "certify_s"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per library, model and loss, and the share of the gap to sandwich closed."""
    keys = ["library", "model", "loss", "epochs", "params", "claimed_gamma"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped[METRICS].mean().add_suffix("_mean").join(grouped[METRICS].std(ddof=0).add_suffix("_std"))
    table = table.join(grouped["seed"].count().rename("seeds"))
    table["certified_bound_max"] = grouped["certified_bound"].max()
    table["bound_over_gamma"] = table["certified_bound_mean"] / table.index.get_level_values("claimed_gamma")
    table = table.reset_index()
    ref = table[table["model"] == "sandwich"]
    for r in RADII:
        if len(ref):
            gap = float(ref[f"cert_{r}_mean"].iloc[0]) - table[f"cert_{r}_mean"]
            gained = table[f"cert_lipsdp_{r}_mean"] - table[f"cert_{r}_mean"]
            table[f"gap_closed_{r}"] = np.where((table["library"] == "lmi") & (gap > 0), gained / gap.where(gap > 0),
                                                np.nan)
    return table


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def print_table(table: pd.DataFrame) -> None:
    shown = pd.DataFrame({
        "library": table["library"], "model": table["model"],
        "clean %": [_pm(m, s) for m, s in zip(table["clean_mean"], table["clean_std"])],
        **{f"cert@{r} %": [_pm(m, s) for m, s in zip(table[f"cert_{r}_mean"], table[f"cert_{r}_std"])] for r in RADII},
        **{f"lipsdp@{r} %": [_pm(m, s) for m, s in zip(table[f"cert_lipsdp_{r}_mean"], table[f"cert_lipsdp_{r}_std"])]
           for r in RADII},
        "s/epoch": [f"{m:.3f}" for m in table["s_per_epoch_mean"]], "params": table["params"],
        "gamma": table["claimed_gamma"], "certified L": [f"{m:.8f}" for m in table["certified_bound_mean"]],
    })
    print(shown.to_string(index=False))
    if "gap_closed_0.3" in table:
        lmi_rows = table[table["library"] == "lmi"]
        closed = ", ".join(f"{m} {100 * g:.0f}%" for m, g in zip(lmi_rows["model"], lmi_rows["gap_closed_0.3"])
                           if np.isfinite(g))
        print(f"share of the gap to sandwich at eps = 0.3 closed by lipsdp's bound: {closed or 'n/a'}")


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RADII), figsize=(4.2 * len(RADII), 3.6), sharey=True)
    x = np.arange(len(table))
    for ax, r in zip(np.atleast_1d(axes), RADII):
        ax.bar(x - 0.2, 100 * table[f"cert_{r}_mean"], 0.4, yerr=100 * table[f"cert_{r}_std"],
               label="own bound (lmi: gamma; peers: lipsdp's)")
        ax.bar(x + 0.2, 100 * table[f"cert_lipsdp_{r}_mean"], 0.4, yerr=100 * table[f"cert_lipsdp_{r}_std"],
               label="with lipsdp's bound where lower", hatch="//", alpha=0.7)
        ax.set_xticks(x, table["model"], rotation=35, ha="right")
        ax.set_title(f"certified accuracy at eps = {r}")
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("% of test set")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"digits, MLP {'-'.join(map(str, DIMS))}, gamma = 1, {int(table['seeds'].min())} seeds", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 5 epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the same for every model)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_peers.csv"))
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    warnings.simplefilter("ignore")  # deel's Sequential notices and torch deprecations
    torch.set_num_threads(args.threads)
    seeds, setting = (2, Setting(epochs=5)) if args.quick else (args.seeds, Setting(epochs=args.epochs))
    data = digits()
    models = available_models()
    t0 = time.perf_counter()
    rows = []
    jobs = [(seed, name) for seed in range(seeds) for name in models]  # seed-major: every model sees the same load
    for seed, name in tqdm(jobs, desc="train + certify"):
        library, build = models[name]
        rows.append(run(name, library, build, data, seed, setting))
    runs = pd.DataFrame(rows)
    table = summarise(runs)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    plot(table, out.with_suffix(".png"))
    pd.set_option("display.width", 250)
    print(f"\ndigits (pixels in [0, 1]), MLP {DIMS}, gamma = {GAMMA}, {LOSS} (eps_train = {setting.eps_train}, "
          f"temperature = {setting.temperature}), Adam lr = {setting.lr}, batch {setting.batch_size}, "
          f"{setting.epochs} epochs, {seeds} seeds")
    print_table(table)
    print(f"\nwrote {out} and {out.with_suffix('.png')} in {time.perf_counter() - t0:.0f}s")
    return table


if __name__ == "__main__":
    main()
