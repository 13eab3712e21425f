"""Certified robustness of Lipschitz classifiers and empirical Lipschitz lower bounds.

For a classifier ``f`` that is ``L``-Lipschitz in the 2-norm, the logit margin
``m(x) = f_y(x) - max_{j != y} f_j(x)`` is ``sqrt(2) L``-Lipschitz (each
difference of two logits is ``||e_y - e_j|| L = sqrt(2) L``-Lipschitz), so the
prediction cannot change within radius ``m(x) / (sqrt(2) L)``.

When the last layer is known -- a body ``g`` that is ``L_g``-Lipschitz followed by a linear
(or LLN) head ``W`` -- each difference ``f_y − f_j = (w_y − w_j)ᵀ g(x) + b_y − b_j`` is
``L_g ‖w_y − w_j‖``-Lipschitz (Cauchy–Schwarz), so ``x`` is certified at ``ε`` when
``f_y − f_j > L_g ‖w_y − w_j‖ ε`` for every ``j ≠ y`` (the per-pair rule; Singla et al., ICLR
2022, for LLN heads; Tsuzuku, Sato & Sugiyama, NeurIPS 2018, for the pairwise argument).  Since
``‖w_y − w_j‖ ≤ ‖(e_y − e_j)ᵀ W‖ ≤ √2 ‖W‖₂`` and ``L ≤ L_g ‖W‖₂`` is the best product bound, it is
never looser than the √2 rule with that product, and ``certified_accuracy(..., per_pair=True)``
takes, pair by pair, the smaller of the two constants where both are known.  Every constant is a
certified upper bound rounded up (:func:`pair_lipschitz`); the margins are those of the
floating-point forward pass, which is the classifier being certified.

Any certified ``L`` works; the smaller, the larger the certified radii.  A trained
parameterization often uses only part of its budget ``gamma``, so lipsdp's certified
bound of the same network can be lower: :func:`tightest_bound` takes the smaller of the
two, and ``certified_accuracy(..., use_lipsdp=True)`` uses it (opt-in: it solves an SDP).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "margins",
    "certified_radius",
    "certified_accuracy",
    "certified_mask",
    "pair_lipschitz",
    "uniform_pair_lipschitz",
    "split_head",
    "body_lipschitz_bound",
    "lipsdp_bound",
    "tightest_bound",
    "jacobian_norms",
    "empirical_lipschitz",
]


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y(x) - max_{j != y} f_j(x)`` per row (negative when misclassified)."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter(1, labels.view(-1, 1), True)
    return true - logits.masked_fill(mask, -torch.inf).max(dim=1).values


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float | None = None, *,
                     pair_lipschitz=None) -> torch.Tensor:
    """Certified 2-norm radius per example (0 if misclassified).

    With ``lipschitz`` ``L``: ``max(margin, 0) / (sqrt(2) L)``.  With ``pair_lipschitz`` (a
    ``K × K`` matrix ``C`` of certified constants of ``f_i − f_j``, see :func:`pair_lipschitz`):
    ``min_{j ≠ y} max(f_y − f_j, 0) / C[y, j]``, rounded towards 0 (a certified lower bound of
    the radius the constants give).
    """
    from .errors import InvalidArgumentError

    if pair_lipschitz is not None:
        pair = _pair_matrix(pair_lipschitz, logits.shape[1])
        diff = _pair_margins(logits.detach(), labels)
        const = torch.as_tensor(pair, dtype=torch.float64, device=diff.device)[labels.view(-1)]
        radius = diff.clamp_min(0.0) / const
        radius = torch.nextafter(radius, torch.zeros_like(radius)).clamp_min(0.0)
        # a zero constant (identical rows): the difference never changes, so the radius is inf if it is > 0
        radius = torch.where(const == 0, torch.where(diff > 0, torch.inf, 0.0).to(radius), radius)
        own = torch.nn.functional.one_hot(labels.view(-1), logits.shape[1]).bool()
        return radius.masked_fill(own, torch.inf).min(dim=1).values
    if lipschitz is None or not (lipschitz > 0 and math.isfinite(lipschitz)):
        raise InvalidArgumentError(f"lipschitz must be a positive finite number, got {lipschitz!r} "
                                   f"(or pass pair_lipschitz=)")
    return margins(logits.detach(), labels).clamp_min(0.0) / (math.sqrt(2.0) * float(lipschitz))


# ------------------------------------------------------------------------------ per-pair constants
def _mul_up(a: float, b: float) -> float:
    """``a · b`` rounded up: the float product, or the next float above it when it is below the exact product.

    The comparison is exact (rational arithmetic), so an exact product (a factor 1) stays as it is.
    """
    from fractions import Fraction

    p = float(a) * float(b)
    if math.isfinite(p) and Fraction(p) < Fraction(float(a)) * Fraction(float(b)):
        p = float(np.nextafter(p, np.inf))
    return p


def _sqrt2_up() -> float:
    """The smallest float64 ``≥ √2`` (checked exactly: its square is ``≥ 2``)."""
    from fractions import Fraction

    r = math.sqrt(2.0)
    while Fraction(r) ** 2 < 2:
        r = float(np.nextafter(r, np.inf))
    return r


def _vector_norm_bound(d: np.ndarray) -> float:
    """A certified upper bound of ``‖d‖₂`` (:func:`lipsdp.certificate.spectral_norm_bound` of the row ``d``)."""
    from lipsdp.certificate import spectral_norm_bound

    mantissa, exponent = spectral_norm_bound(d.reshape(1, -1))
    return float(np.ldexp(mantissa, exponent))


def pair_lipschitz(weight, body_lipschitz: float = 1.0) -> np.ndarray:
    """``K × K`` certified upper bounds of ``L_g ‖w_i − w_j‖`` (diagonal 0), for a head ``W`` on an ``L_g``-Lipschitz body.

    ``f_i − f_j = (w_i − w_j)ᵀ g(x) + b_i − b_j``, so ``|Δ(f_i − f_j)| ≤ ‖w_i − w_j‖ ‖Δg‖ ≤
    ‖w_i − w_j‖ L_g ‖Δx‖`` (Cauchy–Schwarz).

    Rounding: ``W`` is read in float64 (exact from float32); the computed difference
    ``d̃ = fl(w_i − w_j) = (w_i − w_j)(1 + δ)``, ``|δ| ≤ u``, so ``‖w_i − w_j‖ ≤ ‖d̃‖/(1 − u)``;
    ``‖d̃‖`` is bounded by :func:`lipsdp.certificate.spectral_norm_bound` (power-of-two scaling,
    Gram matrix, shifted Cholesky proof); the factor ``1/(1 − u)`` is covered by multiplying by
    ``1 + 4u ≥ 1/(1 − u)`` (exact in float64), and both products are rounded up exactly
    (:func:`_mul_up`).  Identical rows give the constant 0 (their difference of logits is constant).

    Parameters
    ----------
    weight : ``(K, n)`` tensor or array (for an LLN head, the normalised weight the forward uses)
    body_lipschitz : certified Lipschitz constant ``L_g`` of the body before the head

    Raises
    ------
    InvalidArgumentError
        ``body_lipschitz`` not positive and finite.
    ShapeMismatchError
        ``weight`` not 2-D.
    InvalidWeightsError
        Non-finite weights.
    """
    from lipsdp.errors import InvalidWeightsError

    from .errors import InvalidArgumentError, ShapeMismatchError

    L = float(body_lipschitz)
    if not (L > 0 and math.isfinite(L)):
        raise InvalidArgumentError(f"body_lipschitz must be a positive finite number, got {body_lipschitz!r}")
    W = weight.detach().cpu().double().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    if W.ndim != 2:
        raise ShapeMismatchError(f"the head's weight must be a (classes, features) matrix, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InvalidWeightsError("the head's weight has NaN or Inf entries: no per-pair constant can be certified")
    K = W.shape[0]
    u = np.finfo(np.float64).eps / 2
    out = np.zeros((K, K))
    for i in range(K):
        for j in range(i + 1, K):
            norm = _mul_up(_vector_norm_bound(W[i] - W[j]), 1.0 + 4.0 * u)  # covers 1/(1 - u), see above
            out[i, j] = out[j, i] = _mul_up(L, norm)
    return out


def uniform_pair_lipschitz(n_classes: int, lipschitz: float) -> np.ndarray:
    """``K × K`` matrix with ``√2 L`` (rounded up) off the diagonal: the pairwise rule of an ``L``-Lipschitz network.

    ``|Δ(f_i − f_j)| = |(e_i − e_j)ᵀ Δf| ≤ √2 ‖Δf‖ ≤ √2 L ‖Δx‖``.
    """
    from .errors import InvalidArgumentError

    L = float(lipschitz)
    if not (L > 0 and math.isfinite(L)):
        raise InvalidArgumentError(f"lipschitz must be a positive finite number, got {lipschitz!r}")
    out = np.full((n_classes, n_classes), _mul_up(_sqrt2_up(), L))
    np.fill_diagonal(out, 0.0)
    return out


def _pair_matrix(pair, n_classes: int) -> np.ndarray:
    from .errors import InvalidArgumentError, ShapeMismatchError

    C = pair.detach().cpu().double().numpy() if isinstance(pair, torch.Tensor) else np.asarray(pair, dtype=float)
    if C.shape != (n_classes, n_classes):
        raise ShapeMismatchError(f"the per-pair constants must be a {n_classes} × {n_classes} matrix for "
                                 f"{n_classes} logits, got shape {C.shape}")
    off = ~np.eye(n_classes, dtype=bool)
    if np.any(np.isnan(C[off])) or np.any(C[off] < 0):
        raise InvalidArgumentError("per-pair Lipschitz constants must be >= 0 (or +inf) off the diagonal")
    return C


def _pair_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y − f_j`` for every ``j`` (float64), rounded down by one ulp (a lower bound of the exact difference)."""
    z = logits.detach().double()
    true = z.gather(1, labels.view(-1, 1))
    diff = true - z
    return torch.nextafter(diff, torch.full_like(diff, -torch.inf))


def certified_mask(logits: torch.Tensor, labels: torch.Tensor, eps, pair) -> np.ndarray:
    """Boolean array ``(len(eps), N)``: example ``n`` is certified at ``eps[k]``.

    Certified means ``f_y − f_j > C[y, j] · ε`` for every ``j ≠ y`` (correct and robust within
    the 2-norm ball of radius ``ε``), with ``C`` a matrix of certified constants
    (:func:`pair_lipschitz`, :func:`uniform_pair_lipschitz`).  The threshold is rounded up
    and the margin down; at ``ε = 0`` the test is ``f_y − f_j > 0`` (a correct prediction, ties
    excluded).
    """
    K = logits.shape[1]
    C = torch.as_tensor(_pair_matrix(pair, K))
    labels = labels.view(-1).cpu()
    diff = _pair_margins(logits.cpu(), labels)
    const = C[labels]
    own = torch.nn.functional.one_hot(labels, K).bool()
    rows = []
    for e in np.atleast_1d(np.asarray(eps, dtype=float)):
        if e > 0:
            threshold = torch.nextafter(const * float(e), torch.full_like(const, torch.inf))
        else:
            threshold = torch.zeros_like(const)
        rows.append(((diff > threshold) | own).all(dim=1))
    return torch.stack(rows).numpy() if rows else np.zeros((0, len(labels)), dtype=bool)


# ------------------------------------------------------------------------------ head and body of a model
def _linear_weight(module) -> torch.Tensor | None:
    """The ``(classes, features)`` matrix ``W`` if ``module`` computes ``x ↦ W x + b``, else None.

    ``nn.Linear``; :class:`lmi.blocks.LLNHead` (its normalised weight, the one its forward
    uses); any module with ``to_plain()`` whose export is one ``nn.Linear`` (possibly inside
    nested Sequentials), e.g. :class:`lmi.cnn.LipschitzLinear` without activation -- exports equal
    their module's forward (the project's export contract), so that ``W`` is the forward's.
    """
    from torch import nn

    from lipsdp.errors import LipSDPError

    from .blocks import LLNHead

    if isinstance(module, (nn.Linear, LLNHead)):
        return module.weight.detach()
    if isinstance(module, nn.Sequential) or not callable(getattr(module, "to_plain", None)):
        return None
    try:
        plain = module.to_plain()
    except (LipSDPError, TypeError):  # no export (or one that needs arguments): not readable as a linear map
        return None
    leaves = [m for m in plain.modules() if not isinstance(m, nn.Sequential)] if isinstance(plain, nn.Module) else []
    if len(leaves) == 1 and isinstance(leaves[0], nn.Linear):
        return leaves[0].weight.detach()
    return None


def _split_sequential(model):
    """``(body, head)`` of a non-empty ``nn.Sequential``: its last module if linear, else split inside it."""
    from torch import nn

    from .errors import UnsupportedModelError

    last = model[-1]
    if _linear_weight(last) is not None:
        return model[:-1], last
    if isinstance(last, nn.Sequential) and len(last):
        inner, head = _split_sequential(last)
        return nn.Sequential(*model[:-1], *inner), head
    raise UnsupportedModelError(
        f"the per-pair rule needs a linear last layer, but the model ends in a {type(last).__name__}; a head is an "
        f"nn.Linear, an lmi.LLNHead, a module whose to_plain() export is one nn.Linear (e.g. lmi.LipschitzLinear "
        f"without activation), or an nn.Sequential ending in one; else pass head=(module or weight) and "
        f"body_lipschitz=(a certified constant of everything before it)"
    )


def split_head(model):
    """``(body, head)`` of a classifier whose last layer is linear.

    The head is the last module that computes ``x ↦ W x + b`` (an ``nn.Linear``, an
    :class:`lmi.blocks.LLNHead`, or a module whose ``to_plain()`` export is one ``nn.Linear``,
    such as the last layer of :func:`lmi.lipschitz_cnn`); the body is everything before it.  An
    ``nn.Sequential`` is split at its last module, looking inside a last module that is itself
    an ``nn.Sequential`` (e.g. an exported layer); a model with attributes ``body`` and ``head``
    is split into those (or into ``body`` plus the head's own body, when ``head`` is a Sequential).

    Raises
    ------
    UnsupportedModelError
        Any other model (the message names the type of the last module found; pass ``head=`` and
        ``body_lipschitz=`` to :func:`certified_accuracy`).
    """
    from torch import nn

    from .errors import UnsupportedModelError

    if isinstance(model, nn.Sequential) and len(model):
        return _split_sequential(model)
    if hasattr(model, "body") and isinstance(getattr(model, "head", None), nn.Module):
        head = model.head
        if _linear_weight(head) is not None:
            return model.body, head
        if isinstance(head, nn.Sequential) and len(head):
            inner, last = _split_sequential(head)
            return nn.Sequential(model.body, *inner), last
        raise UnsupportedModelError(
            f"the per-pair rule needs a linear last layer, but {type(model).__name__}.head is a "
            f"{type(head).__name__}; pass head=(module or weight) and body_lipschitz=(a certified constant of the body)"
        )
    raise UnsupportedModelError(
        f"the per-pair rule needs the last layer: {type(model).__name__} is not an nn.Sequential ending in a linear "
        f"layer (nn.Linear, lmi.LLNHead, …), nor a model with .body and .head; pass head=(module or weight) and "
        f"body_lipschitz=(a certified constant of everything before it)"
    )


def _head_weight(head) -> torch.Tensor:
    from .errors import UnsupportedModelError

    if isinstance(head, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(head)
    weight = _linear_weight(head)
    if weight is not None and weight.dim() == 2:
        return weight
    raise UnsupportedModelError(f"head must be a linear layer (nn.Linear, lmi.LLNHead, a module whose to_plain() "
                                f"export is one nn.Linear) or a (classes, features) weight, got {type(head).__name__}")


def body_lipschitz_bound(body) -> float:
    """A certified Lipschitz constant of ``body`` (the layers before a linear head).

    ``body.lipschitz_bound()`` where it exists; for an ``nn.Sequential``, the product over its
    modules (each product rounded up) of: ``lipschitz_bound()``; the certified spectral norm of
    an ``nn.Linear`` (:func:`lipsdp.certificate.spectral_norm_bound`); 1 for ``Flatten``, ``Identity``
    and ``Dropout`` (in eval mode); the constant of a parameter-free activation that
    :mod:`lipsdp.activation_registry` reads.

    Raises
    ------
    UnsupportedModelError
        A module none of these covers (pass ``body_lipschitz=`` instead, e.g. lipsdp's bound
        of the body: ``lipsdp.estimate(lmi.export_sequential(body), input_shape=(C, H, W))``).
    """
    from torch import nn

    from lipsdp import activation_registry as registry
    from lipsdp.certificate import spectral_norm_bound

    from .errors import UnsupportedModelError

    if hasattr(body, "lipschitz_bound"):
        return float(body.lipschitz_bound())
    if isinstance(body, nn.Sequential):
        total = 1.0
        for module in body:
            total = _mul_up(total, body_lipschitz_bound(module))
        return float(total)
    if isinstance(body, nn.Linear):
        mantissa, exponent = spectral_norm_bound(body.weight.detach().cpu().double().numpy())
        return float(np.ldexp(mantissa, exponent))
    if isinstance(body, (nn.Flatten, nn.Identity, nn.Dropout)):
        return 1.0
    if not list(body.parameters()) and registry.entry_for_module(body) is not None:
        try:
            return float(registry.rule_from_module(body).lipschitz_constant(2))
        except Exception as exc:  # an activation whose parameters cannot be read is refused, never assumed
            raise UnsupportedModelError(f"the activation {body!r} cannot be read ({exc}); pass body_lipschitz=") from None
    raise UnsupportedModelError(
        f"no certified Lipschitz constant is known for {type(body).__name__} in the body: pass body_lipschitz= "
        f"(e.g. lipsdp.estimate(lmi.export_sequential(body), input_shape=(C, H, W)).value)"
    )


def lipsdp_bound(model, method: str = "lipsdp-neuron", **options) -> float:
    """lipsdp's certified 2-norm bound of ``model``.

    An lmi network is certified through its plain export (:func:`lmi.to_plain`, in the
    model's dtype; for sandwich and SLL the forward computes the factored form, which
    equals the export up to rounding); any other model goes to
    :func:`lipsdp.estimate` as it is (torch models of the supported layers, deel-torchlip
    and orthogonium models included), except that a torch model holding modules with a
    ``to_plain`` export (:mod:`lmi.blocks`, lmi conv layers) goes through
    :func:`lmi.blocks.export_sequential`.  ``options`` go to :func:`lipsdp.estimate`
    (``input_shape=(C, H, W)`` for images).
    """
    import lipsdp

    from .blocks import export_sequential
    from .export import to_plain
    from .models import LipschitzMLP

    if isinstance(model, LipschitzMLP):
        plain = to_plain(model)
    elif isinstance(model, torch.nn.Module) and any(hasattr(m, "to_plain") for m in model.modules()):
        plain = export_sequential(model)  # lmi blocks and layers inside a Sequential: their plain exports
    else:
        plain = model
    return float(lipsdp.estimate(plain, method=method, **options).value)


def tightest_bound(model, method: str = "lipsdp-neuron", **options) -> tuple[float, str]:
    """``(L, source)``: the smaller of ``model.lipschitz_bound()`` and :func:`lipsdp_bound`.

    ``source`` is ``"parameterization"`` or ``"lipsdp"``.  Both are certified upper bounds of
    the same function, so the smaller one is too.
    """
    own = float(model.lipschitz_bound())
    solved = lipsdp_bound(model, method, **options)
    return (solved, "lipsdp") if solved < own else (own, "parameterization")


def _logits(model, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(X)`` in eval mode, in batches, detached (the training flag is restored)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        return torch.cat([model(X[i:i + batch_size]).detach() for i in range(0, len(X), batch_size)])
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def certified_accuracy(model, X: torch.Tensor, y: torch.Tensor, eps, lipschitz: float | None = None,
                       batch_size: int = 4096, use_lipsdp: bool = False, lipsdp_method: str = "lipsdp-neuron",
                       *, per_pair: bool = False, head=None, body_lipschitz: float | None = None):
    """Fraction of points classified correctly and certified robust at radius ``eps`` (2-norm).

    Pairwise rule (default): margin ``f_y − max_{j≠y} f_j > √2 L ε``.  Per-pair rule
    (``per_pair=True``): ``f_y − f_j > L_g ‖w_y − w_j‖ ε`` for every ``j ≠ y``, with ``W`` the
    last layer and ``L_g`` the body's constant (module docstring); where ``L`` is known too
    (given, ``model.lipschitz_bound()``, or lipsdp's) each pair uses the smaller of
    ``√2 L`` and ``L_g ‖w_y − w_j‖``.  Constants are rounded up (:func:`certified_mask`).

    Parameters
    ----------
    model : callable returning logits
    X, y : inputs (rows, or images ``(N, C, H, W)``) and integer labels
    eps : float or iterable of floats (``eps = 0`` gives the clean accuracy)
    lipschitz : float, optional
        ``L`` of the whole model; defaults to ``model.lipschitz_bound()`` (optional when
        ``per_pair=True``: used only where the model has it).
    use_lipsdp : bool
        Opt-in: use lipsdp's certified bound of the model where it is lower than
        ``lipschitz`` (:func:`lipsdp_bound` with ``lipsdp_method``; one SDP solve; images pass
        ``input_shape=X.shape[1:]``).
    per_pair : bool
        Use the per-pair rule (needs the last layer, see :func:`split_head`).
    head : nn.Linear, LLNHead or ``(K, n)`` weight, optional
        The last layer (default: :func:`split_head` of ``model``).
    body_lipschitz : float, optional
        Certified ``L_g`` of everything before the head (default:
        :func:`body_lipschitz_bound` of the split body).

    Returns
    -------
    float, or ``np.ndarray`` of floats when ``eps`` is iterable.
    """
    scalar = not isinstance(eps, Iterable)
    eps_arr = np.atleast_1d(np.asarray(eps, dtype=float))
    if not per_pair and lipschitz is None:
        lipschitz = float(model.lipschitz_bound())
    elif per_pair and lipschitz is None and hasattr(model, "lipschitz_bound"):
        lipschitz = float(model.lipschitz_bound())
    if use_lipsdp:
        options = {"input_shape": tuple(X.shape[1:])} if X.dim() > 2 else {}
        solved = lipsdp_bound(model, lipsdp_method, **options)
        lipschitz = solved if lipschitz is None else min(float(lipschitz), solved)
    logits = _logits(model, X, batch_size)
    K = logits.shape[1]
    pair = uniform_pair_lipschitz(K, lipschitz) if lipschitz is not None else None
    if per_pair:
        if head is None or body_lipschitz is None:
            body, found = split_head(model)
            head = found if head is None else head
            body_lipschitz = body_lipschitz_bound(body) if body_lipschitz is None else body_lipschitz
        own = pair_lipschitz(_head_weight(head), body_lipschitz)
        pair = own if pair is None else np.minimum(pair, own)
    acc = certified_mask(logits, y, eps_arr, pair).mean(axis=1).astype(float)
    return float(acc[0]) if scalar else acc


def jacobian_norms(model, X: torch.Tensor) -> torch.Tensor:
    """Spectral norms of the Jacobian of ``model`` at each input of ``X`` (lower bounds on L).

    ``X`` holds rows ``(N, n)`` or images ``(N, C, H, W)``; each Jacobian is read as the
    ``(outputs, inputs)`` matrix of the flattened input (the 2-norm of an image is that of its
    flattened entries).
    """
    from torch.func import jacrev, vmap

    def single(x):
        return model(x.unsqueeze(0)).squeeze(0)

    J = vmap(jacrev(single))(X)
    J = J.reshape(X.shape[0], -1, X[0].numel())
    return torch.linalg.matrix_norm(J, ord=2).detach()


def _start_shape(model, input_shape) -> tuple[int, ...]:
    """The shape of one input of ``model``: ``input_shape``, ``model.input_shape``, ``(model.dims[0],)`` or the
    ``in_features`` of its first module that has them (:class:`~lmi.errors.InvalidArgumentError` if none)."""
    from .errors import InvalidArgumentError

    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None and hasattr(model, "dims"):
        input_shape = (model.dims[0],)
    if input_shape is None:
        first = next((m.in_features for m in model.modules() if hasattr(m, "in_features")), None)
        input_shape = None if first is None else (first,)
    try:
        shape = tuple(int(v) for v in input_shape)
    except TypeError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise InvalidArgumentError(f"empirical_lipschitz cannot tell the shape of one input of "
                                   f"{type(model).__name__}: pass X=(starting points) or input_shape=(C, H, W) / (n,)")
    return shape


def empirical_lipschitz(model, X: torch.Tensor | None = None, n_starts: int = 64, steps: int = 100,
                        lr: float = 0.05, delta: float = 1e-3, seed: int = 0, input_shape=None) -> float:
    """Empirical lower bound on the 2-norm Lipschitz constant of ``model``.

    Gradient ascent on the difference quotient ``||f(x) - f(x + d)|| / ||d||``
    over pairs (which, for piecewise-linear nets, has useful gradients where
    ``||J(x)||`` is piecewise constant), followed by the Jacobian norms at the
    final points.  Every value returned is attained, hence a valid lower bound.
    Inputs may be rows or images: norms are taken over all entries of one input.

    Parameters
    ----------
    X : optional starting points, ``(N, n)`` rows or ``(N, C, H, W)`` images; otherwise
        ``n_starts`` standard normal samples of the model's input shape.
    input_shape : optional shape of one input (default: ``model.input_shape``, ``(model.dims[0],)``
        or the ``in_features`` of the model's first module that has them); used when ``X`` is None.

    Raises
    ------
    InvalidArgumentError
        ``X`` is None and the input shape cannot be told.
    """
    import copy

    m64 = copy.deepcopy(model).double().eval()  # float64 so rounding cannot inflate the quotient
    for p in m64.parameters():
        p.requires_grad_(False)
    device = next((p.device for p in m64.parameters()), torch.device("cpu"))
    g = torch.Generator(device="cpu").manual_seed(seed)
    if X is None:
        X = torch.randn(n_starts, *_start_shape(model, input_shape), generator=g, dtype=torch.float64)
    X = X.detach().to(dtype=torch.float64, device=device)
    d0 = torch.randn(X.shape, generator=g, dtype=torch.float64).to(device)
    ones = (1,) * (X.dim() - 1)  # broadcasts one norm per input over its entries

    def norms(t):
        return t.flatten(1).norm(dim=1)

    def quotient(x, d):
        return norms(m64(x) - m64(x + d)) / norms(d)

    x = X.clone().requires_grad_(True)
    d = (d0 * delta / norms(d0).view(-1, *ones)).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=lr)
    best = 0.0
    for _ in range(steps):
        q = quotient(x, d)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
        with torch.no_grad():  # keep ||d|| = delta: a local (Jacobian-like) quotient
            d.mul_((delta / norms(d).clamp_min(1e-300)).view(-1, *ones))
    with torch.no_grad():
        best = max(best, float(quotient(x, d).max()))
    pts = torch.cat([X, x.detach()])
    m64(pts[:1])  # warm the eval cache outside the functorch transforms
    best = max(best, float(jacobian_norms(m64, pts).max()))
    return best
