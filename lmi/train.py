"""A small, honest training loop for Lipschitz-bounded models.

* :func:`load_dataset` -- scikit-learn's bundled data sets (digits, iris, wine,
  breast_cancer; no download), stratified split, standardised with the
  training-set statistics.
* :func:`function_data` -- 1-D / 2-D function-fitting data, including the
  square wave of the LBDN paper's fitting benchmark.
* :func:`train` -- mini-batch Adam with a tqdm progress bar, optional
  margin-aware losses for certified training (:mod:`lmi.losses`), and atomic
  checkpoints that load with ``torch.load(..., weights_only=True)``.  Inputs are
  rows ``(N, d)`` or images ``(N, C, H, W)`` (:func:`lmi.data.load_images`); batches
  are index slices of tensors already on the model's device (no DataLoader).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from lipsdp.io import atomic_path
import torch.nn.functional as F

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "function_data",
    "square_wave",
    "lipschitz_margin_loss",
    "train",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "TrainHistory",
]

DATASETS = ("digits", "iris", "wine", "breast_cancer")


@dataclass
class Dataset:
    """Tensors of a train/test split (features standardised with training statistics)."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int
    name: str = ""
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


def load_dataset(name: str, test_size: float = 0.25, seed: int = 0, standardize: bool = True,
                 dtype=torch.float32, device=None) -> Dataset:
    """Load one of scikit-learn's bundled classification sets.

    Parameters
    ----------
    name : ``"digits"``, ``"iris"``, ``"wine"`` or ``"breast_cancer"``
    test_size : fraction held out (stratified)
    standardize : subtract the training mean and divide by the training std
        (so ``eps`` in certified accuracy is in standardised units).
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    loaders = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(loaders)}")
    X, y = loaders[name](return_X_y=True)
    X = X.astype(np.float64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    if standardize:
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std

    def t(a, dt):
        return torch.as_tensor(a, dtype=dt, device=device)

    return Dataset(t(Xtr, dtype), t(ytr, torch.long), t(Xte, dtype), t(yte, torch.long),
                   n_features=X.shape[1], n_classes=int(y.max()) + 1, name=name, mean=mean, std=std)


def square_wave(x: torch.Tensor) -> torch.Tensor:
    """Unit square wave of period 2: ``+1`` on ``[2k, 2k+1)``, ``-1`` on ``[2k+1, 2k+2)``."""
    return torch.where(torch.remainder(x, 2.0) < 1.0, 1.0, -1.0).to(x.dtype)


def function_data(kind: str = "square_wave", n: int = 300, seed: int = 0, dtype=torch.float32,
                  device=None, noise: float = 0.0):
    """Regression data ``(X, y)`` with ``X`` of shape ``(n, d)`` and ``y`` of shape ``(n, 1)``.

    ``kind``:
      * ``"square_wave"`` -- 1-D, ``n`` evenly spaced points on ``[-2, 2]``,
        target :func:`square_wave` (jumps of height 2 at the integers; the
        best achievable slope of a gamma-Lipschitz fit is gamma);
      * ``"sine"`` -- 1-D, ``sin(pi x)`` on ``[-2, 2]``;
      * ``"ring"`` -- 2-D, ``tanh(4 (||x|| - 1))`` on ``[-2, 2]^2`` (random points).
    """
    g = torch.Generator().manual_seed(seed)
    if kind in ("square_wave", "sine"):
        x = torch.linspace(-2.0, 2.0, n, dtype=torch.float64).unsqueeze(1)
        y = square_wave(x) if kind == "square_wave" else torch.sin(math.pi * x)
    elif kind == "ring":
        x = 4.0 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 2.0
        y = torch.tanh(4.0 * (x.norm(dim=1, keepdim=True) - 1.0))
    else:
        raise ValueError(f"unknown function kind {kind!r}")
    if noise:
        y = y + noise * torch.randn(y.shape, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def lipschitz_margin_loss(logits: torch.Tensor, y: torch.Tensor, lipschitz, eps: float = 0.0,
                          temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy after subtracting ``sqrt(2) L eps`` from the true logit.

    Minimising it pushes margins above the certification threshold at ``eps``
    (``eps = 0``: plain cross-entropy; ``temperature`` rescales the logits).
    """
    if eps > 0:
        logits = logits - math.sqrt(2.0) * lipschitz * eps * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits / temperature, y)


@dataclass
class TrainHistory:
    """Per-epoch records of :func:`train`."""

    loss: list = field(default_factory=list)
    train_metric: list = field(default_factory=list)
    test_metric: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"loss": list(self.loss), "train_metric": list(self.train_metric),
                "test_metric": list(self.test_metric), "epoch_time": list(self.epoch_time)}


@torch.no_grad()
def evaluate(model, X, y, task: str = "classification", batch_size: int = 1024) -> float:
    """Accuracy (classification) or mean squared error (regression), in eval mode, in batches.

    Batches of ``batch_size`` rows (or images) bound the memory of the forward pass; the
    result equals the whole-set value (a sum of per-batch counts / squared errors).
    """
    was = model.training
    model.eval()
    try:
        total, n = 0.0, len(X)
        for i in range(0, n, batch_size):
            out = model(X[i:i + batch_size])
            if task == "classification":
                total += float((out.argmax(1) == y[i:i + batch_size]).double().sum())
            else:
                total += float(F.mse_loss(out.double(), y[i:i + batch_size].double(), reduction="sum"))
        return total / (n if task == "classification" else max(y.numel(), 1))
    finally:
        model.train(was)


def _atomic_torch_save(obj, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str, model, optimizer=None, epoch: int = 0, history: TrainHistory | None = None,
                    extra: dict | None = None, input_shape=None) -> None:
    """Atomically write a checkpoint (tmp file + ``os.replace``).

    Only tensors and plain containers are stored, so it loads with
    ``torch.load(path, weights_only=True)``.
    """
    obj = {
        "model": model.state_dict(),
        "epoch": int(epoch),
        "parameterization": str(getattr(model, "parameterization", "")),
        "dims": [int(d) for d in getattr(model, "dims", [])],
        "gamma": float(model.lipschitz_bound()) if hasattr(model, "lipschitz_bound") else None,
        "history": history.as_dict() if history is not None else {},
        "extra": dict(extra or {}),
        "input_shape": [int(d) for d in (input_shape or getattr(model, "input_shape", None) or [])],
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    _atomic_torch_save(obj, path)


def load_checkpoint(path: str, model=None, optimizer=None, map_location=None) -> dict:
    """Load a checkpoint with ``weights_only=True``; restore ``model``/``optimizer`` if given."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(obj["model"])
    if optimizer is not None and "optimizer" in obj:
        optimizer.load_state_dict(obj["optimizer"])
    return obj


def _check_training_data(X, y, X_test, y_test, task: str) -> None:
    """Inputs ``(N, ...)`` with one target per input (rows or images alike)."""
    from .errors import InvalidOptionError, ShapeMismatchError

    if task not in ("classification", "regression"):
        raise InvalidOptionError(f"task must be 'classification' or 'regression', got {task!r}")
    for name, inputs, targets in (("X, y", X, y), ("X_test, y_test", X_test, y_test)):
        if inputs is None and targets is None:
            continue
        if inputs is None or targets is None or not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 \
                or len(inputs) != len(targets):
            shapes = tuple(getattr(inputs, "shape", ())), tuple(getattr(targets, "shape", ()))
            raise ShapeMismatchError(f"{name}: inputs must be a tensor (N, d) or (N, C, H, W) with N targets; got "
                                     f"shapes {shapes[0]} and {shapes[1]}")


def train(model, X, y, X_test=None, y_test=None, *, task: str = "classification", epochs: int = 50,
          batch_size: int = 64, lr: float = 1e-2, weight_decay: float = 0.0, eps_train: float = 0.0,
          temperature: float = 1.0, seed: int = 0, progress: bool = True, checkpoint: str | None = None,
          checkpoint_every: int = 0, optimizer=None, desc: str | None = None, loss="offset_ce",
          lipschitz=None, eval_train=True, eval_batch_size: int = 1024) -> TrainHistory:
    """Train ``model`` with Adam; returns a :class:`TrainHistory`.

    Parameters
    ----------
    X, y : inputs ``(N, d)`` or images ``(N, C, H, W)`` and targets, on the model's device
        (mini-batches are slices of a seeded permutation; no DataLoader).
    task : ``"classification"`` (a margin-aware loss, see ``loss``) or ``"regression"`` (MSE).
    loss : ``"offset_ce"`` (:func:`lipschitz_margin_loss` with ``eps_train`` and
        ``temperature``), ``"hinge"`` or ``"logit_annealing"`` (:mod:`lmi.losses`), or a
        callable ``loss(logits, y, lipschitz, eps, temperature)``.
    lipschitz : the ``L`` in the losses' offset ``√2 L eps_train`` (default: ``model.gamma``
        where the model has it, else 1).
    eval_train : record the training accuracy every epoch on the whole training set (True),
        on its first ``k`` examples (an int ``k``), or not at all (False: ``train_metric`` stays empty).
    eval_batch_size : batch size of those evaluations (:func:`evaluate`).
    checkpoint : path written atomically at the end (and every
        ``checkpoint_every`` epochs when > 0); image inputs store their ``input_shape``.
    progress : show a tqdm bar over epochs.
    """
    from tqdm.auto import tqdm

    from .losses import get_loss

    _check_training_data(X, y, X_test, y_test, task)
    loss_fn = get_loss(loss) if task == "classification" else None
    input_shape = list(X.shape[1:]) if X.dim() > 2 else None
    g = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    hist = TrainHistory()
    n = len(X)
    n_eval = n if eval_train is True else int(eval_train) if eval_train else 0
    bar = tqdm(range(epochs), desc=desc or f"train {getattr(model, 'parameterization', '')}",
               disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g).to(X.device)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            out = model(X[idx])
            if task == "classification":
                L = lipschitz if lipschitz is not None else (model.gamma if hasattr(model, "gamma") else 1.0)
                batch_loss = loss_fn(out, y[idx], L, eps_train, temperature)
            else:
                batch_loss = F.mse_loss(out, y[idx])
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        hist.epoch_time.append(time.perf_counter() - t0)
        hist.loss.append(total / n)
        if n_eval:
            hist.train_metric.append(evaluate(model, X[:n_eval], y[:n_eval], task, eval_batch_size))
        if X_test is not None:
            hist.test_metric.append(evaluate(model, X_test, y_test, task, eval_batch_size))
        postfix = {"loss": f"{hist.loss[-1]:.4f}"}
        if hist.train_metric:
            postfix["metric"] = f"{hist.train_metric[-1]:.4f}"
        bar.set_postfix(**postfix)
        if checkpoint and checkpoint_every and (epoch + 1) % checkpoint_every == 0:
            save_checkpoint(checkpoint, model, opt, epoch + 1, hist, input_shape=input_shape)
    if checkpoint:
        save_checkpoint(checkpoint, model, opt, epochs, hist, input_shape=input_shape)
    model.eval()
    return hist
