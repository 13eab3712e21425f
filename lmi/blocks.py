r"""Building blocks of 1-Lipschitz image classifiers, each with a plain export that lipsdp reads.

* :class:`ChannelMaxMin` -- MaxMin over pairs of channels of a feature map (Anil, Lucas &
  Grosse, ICML 2019; Chernodub & Nowicki, 2016): 1-Lipschitz and gradient-norm preserving.
* :class:`SpaceToDepth` -- invertible downsampling (Jacobsen et al., i-RevNet, ICLR 2018;
  ``pixel_unshuffle``): a permutation of the entries, hence orthogonal.
* :class:`LLNHead` -- last-layer normalization (Singla, Singla & Feizi, ICLR 2022): a
  linear head whose rows have unit norm, certified by the per-pair constants
  ``‖w_i − w_j‖`` (:meth:`LLNHead.pair_lipschitz`, :func:`lmi.certify.pair_lipschitz`).

Each block has ``lipschitz_bound()`` and ``to_plain(dtype=None) -> nn.Sequential`` of
modules ``lipsdp.Network.from_torch(..., input_shape=(C, H, W))`` reads; lipsdp refuses a
MaxMin activation on a feature map (which entries it pairs is not modelled), so
:class:`ChannelMaxMin` exports to lipsdp's MaxMin on the flattened map between ``nn.Flatten``
and ``nn.Unflatten`` (when it knows the map's size), or else to the residual form of its proof.
:func:`export_sequential` exports an ``nn.Sequential`` that mixes these blocks (or any module
with ``to_plain``) with plain modules.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from lipsdp.nn import MaxMin, Residual

from .errors import InvalidArgumentError, ShapeMismatchError
from .layers import factory_kwargs, positive_int, resolve_dtype

__all__ = ["ChannelMaxMin", "SpaceToDepth", "LLNHead", "export_sequential"]

_GROUPINGS = ("consecutive", "split")


def _conv_type(spatial_dims: int):
    return {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]


class ChannelMaxMin(nn.Module):
    r"""MaxMin over pairs of channels, at every position of a feature map ``(N, C, *spatial)``.

    Pairs are channels ``(2k, 2k+1)`` (``grouping="consecutive"``) or ``(k, k + C/2)``
    (``"split"``); each pair ``(a, b)`` becomes ``(max(a, b), min(a, b))``.

    Proof (1-Lipschitz in ℓ2, gradient-norm preserving). Sorting a pair is 1-Lipschitz:
    for ``u = (a, b)``, ``v = (c, d)`` and their sorted versions ``ū, v̄``,
    ``‖ū − v̄‖² = ‖u‖² + ‖v‖² − 2⟨ū, v̄⟩ ≤ ‖u‖² + ‖v‖² − 2⟨u, v⟩ = ‖u − v‖²`` by the
    rearrangement inequality ``⟨ū, v̄⟩ ≥ ⟨u, v⟩``.  The pairs (over channels and positions)
    partition the entries, so the squared distances add up and the whole map is
    1-Lipschitz.  Where ``a ≠ b`` the Jacobian is a permutation matrix (orthogonal), so
    gradient norms are preserved almost everywhere.

    Export (:meth:`to_plain`), in one of two forms, both lipsdp-readable:

    * *flat* (when the map's size is known: ``spatial_size``): on the flattened map ``(C·H·W,)``
      (C-major), the channel pairs ``(k, k + C/2)`` at one position are the entries ``j`` and
      ``j + C·H·W/2`` -- exactly lipsdp's ``MaxMin(grouping="split")`` on the flat vector.  So
      ``grouping="split"`` exports to ``Flatten, MaxMin("split"), Unflatten(1, (C, H, W))``, equal
      to the forward exactly (the same max and min), and ``"consecutive"`` puts the 1×1
      permutation convolution ``P`` (channel ``2k → k``, ``2k+1 → k + C/2``) before and ``Pᵀ``
      after (0/1 weights: exact).  lipsdp reads MaxMin as a 1-Lipschitz group activation and
      the permutations as convolutions of norm 1, so a product of norms certifies 1 exactly.
    * *residual* (size unknown): ``max(a, b) = a + relu(b − a)`` and ``min(a, b) = b − relu(b −
      a)``, so ``MaxMin(x) = x + U relu(D x)`` with ``D`` the 1×1 convolution ``e_bᵀ − e_aᵀ`` per
      pair and ``U = −Dᵀ``: ``lipsdp.nn.Residual(Conv(D), ReLU, Conv(U))``, equal to the forward
      up to one rounding per entry.  Its proof is a LipSDP certificate: with ``r = relu(v)``,
      ``v = Dx`` per pair and the slope-[0, 1] constraint ``Δr (Δv − Δr) ≥ 0``, ``‖Δx + UΔr‖² =
      ‖Δx‖² − 2 Δr (Δv − Δr) ≤ ‖Δx‖²`` (``‖e_b − e_a‖² = 2``), i.e. the LMI of ``ρ = 1`` holds
      with multiplier ``λ = 2``.  That LMI is singular (the map is an isometry almost
      everywhere), so lipsdp's certified value carries its proof margin (about 1e-6 relative
      per block): prefer the flat form.

    Parameters
    ----------
    grouping : ``"consecutive"`` or ``"split"``
    spatial_dims : 1 (``(N, C, L)``) or 2 (``(N, C, H, W)``, default): what the export's convolutions act on
    channels : int, optional
        Checked against the input, and needed by :meth:`to_plain` (else pass it there).
    spatial_size : int or tuple of ``spatial_dims`` ints, optional
        The map's size (``(H, W)`` or ``(L,)``): checked against the input, and it selects the
        flat export (else pass it to :meth:`to_plain`).
    """

    def __init__(self, grouping: str = "consecutive", spatial_dims: int = 2, channels: int | None = None,
                 spatial_size=None) -> None:
        super().__init__()
        self.channels = None if channels is None else positive_int(channels, "channels")
        if self.channels is not None and self.channels % 2:
            raise InvalidArgumentError(f"ChannelMaxMin pairs channels: channels must be even, got {channels}")
        if grouping not in _GROUPINGS:
            raise InvalidArgumentError(f"grouping must be one of {_GROUPINGS}, got {grouping!r}")
        if spatial_dims not in (1, 2):
            raise InvalidArgumentError(f"spatial_dims must be 1 (N, C, L) or 2 (N, C, H, W), got {spatial_dims!r}")
        self.grouping = grouping
        self.spatial_dims = int(spatial_dims)
        self.spatial_size = self._size(spatial_size)

    def _size(self, spatial_size) -> tuple[int, ...] | None:
        """``spatial_size`` as a tuple of ``spatial_dims`` positive ints (None stays None)."""
        if spatial_size is None:
            return None
        items = (spatial_size,) if isinstance(spatial_size, int) and not isinstance(spatial_size, bool) else None
        try:
            items = tuple(spatial_size) if items is None else items
        except TypeError:
            items = ()
        if len(items) != self.spatial_dims:
            raise InvalidArgumentError(f"spatial_size must hold {self.spatial_dims} positive int(s) (the map's "
                                       f"{'(H, W)' if self.spatial_dims == 2 else '(L,)'}), got {spatial_size!r}")
        return tuple(positive_int(v, "spatial_size") for v in items)

    def _check(self, x: torch.Tensor) -> int:
        if x.dim() != 2 + self.spatial_dims or x.shape[1] % 2 or (
                self.channels is not None and x.shape[1] != self.channels) or (
                self.spatial_size is not None and tuple(x.shape[2:]) != self.spatial_size):
            channels = "an even number of channels C" if self.channels is None else f"{self.channels} channels"
            size = "" if self.spatial_size is None else f" of size {self.spatial_size}"
            raise ShapeMismatchError(
                f"ChannelMaxMin(spatial_dims={self.spatial_dims}) takes a batch of feature maps with "
                f"{2 + self.spatial_dims} axes (N, C, …){size} and {channels}; got shape {tuple(x.shape)}"
            )
        return int(x.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self._check(x)
        axis = 2 if self.grouping == "consecutive" else 1
        pairs = x.unflatten(1, (channels // 2, 2) if axis == 2 else (2, channels // 2))
        a, b = pairs.select(axis, 0), pairs.select(axis, 1)
        return torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=axis).flatten(1, 2)

    def pairs(self, channels: int) -> list[tuple[int, int]]:
        """The ``(a, b)`` channel indices of each pair (output ``a`` is the max, ``b`` the min)."""
        if channels % 2:
            raise ShapeMismatchError(f"ChannelMaxMin needs an even number of channels, got {channels}")
        half = channels // 2
        if self.grouping == "consecutive":
            return [(2 * k, 2 * k + 1) for k in range(half)]
        return [(k, k + half) for k in range(half)]

    def lipschitz_bound(self) -> float:
        """1 (exact; see the class docstring)."""
        return 1.0

    def to_plain(self, dtype=None, device=None, channels: int | None = None, spatial_size=None) -> nn.Sequential:
        """The export of the class docstring on ``channels`` channels: flat when the map's size is known, else residual.

        Returns ``Sequential([Conv(P),] Flatten, MaxMin("split"), Unflatten(1, (C, *spatial_size))[, Conv(Pᵀ)])``
        (``P`` only for ``grouping="consecutive"``) or ``Sequential(Residual(Sequential(Conv(D), ReLU,
        Conv(−Dᵀ))))`` (1×1 kernels).
        """
        channels = channels if channels is not None else self.channels
        if channels is None:
            raise InvalidArgumentError("ChannelMaxMin.to_plain needs the number of channels: build the block with "
                                       "ChannelMaxMin(channels=C) or call to_plain(channels=C)")
        channels = positive_int(channels, "channels")
        pairs = self.pairs(channels)
        kw = factory_kwargs(resolve_dtype(dtype), device)
        conv = _conv_type(self.spatial_dims)
        size = self._size(spatial_size) if spatial_size is not None else self.spatial_size
        if size is not None:
            return self._flat_export(channels, size, conv, kw)
        down = conv(channels, len(pairs), 1, bias=False, **kw)
        up = conv(len(pairs), channels, 1, bias=False, **kw)
        D = torch.zeros(len(pairs), channels, **kw)
        for k, (a, b) in enumerate(pairs):
            D[k, a], D[k, b] = -1.0, 1.0
        with torch.no_grad():
            down.weight.copy_(D.reshape(down.weight.shape))
            up.weight.copy_((-D.T).reshape(up.weight.shape))
        return nn.Sequential(Residual(nn.Sequential(down, nn.ReLU(), up))).eval()

    def _flat_export(self, channels: int, size: tuple[int, ...], conv, kw: dict) -> nn.Sequential:
        """``[Conv(P),] Flatten, MaxMin("split"), Unflatten[, Conv(Pᵀ)]`` (see the class docstring)."""
        flat = [nn.Flatten(), MaxMin(grouping="split"), nn.Unflatten(1, (channels, *size))]
        if self.grouping == "split":
            return nn.Sequential(*flat).eval()
        half = channels // 2
        perm = torch.zeros(channels, channels, **kw)  # perm[new, old]: 2k -> k, 2k + 1 -> k + C/2
        for k, (a, b) in enumerate(self.pairs(channels)):
            perm[k, a], perm[k + half, b] = 1.0, 1.0
        to_split = conv(channels, channels, 1, bias=False, **kw)
        back = conv(channels, channels, 1, bias=False, **kw)
        with torch.no_grad():
            to_split.weight.copy_(perm.reshape(to_split.weight.shape))
            back.weight.copy_(perm.T.reshape(back.weight.shape))
        return nn.Sequential(to_split, *flat, back).eval()

    def extra_repr(self) -> str:
        return (f"grouping={self.grouping!r}, spatial_dims={self.spatial_dims}, channels={self.channels}, "
                f"spatial_size={self.spatial_size}")


class SpaceToDepth(nn.Module):
    r"""Invertible downsampling ``(N, C, H, W) → (N, C·f², H/f, W/f)`` (``F.pixel_unshuffle``).

    Output channel ``c·f² + i·f + j`` at ``(h, w)`` is the input ``(c, h·f + i, w·f + j)``.

    Proof (exactly 1-Lipschitz, orthogonal). The map is linear and sends every input entry to
    exactly one output entry, bijectively (``H``, ``W`` divisible by ``f``): it is a
    permutation matrix ``P``, ``PᵀP = I``, so ``‖Px − Py‖ = ‖x − y‖`` and all singular values are 1.

    Export: one ``nn.Conv2d(C, C·f², kernel f, stride f, bias=False)`` whose kernel has a single
    1 per output channel (``weight[c·f² + i·f + j, c, i, j] = 1``), equal to the forward
    exactly (each output is one input times 1 plus zeros).

    Parameters
    ----------
    factor : the downsampling factor ``f ≥ 1``
    in_channels : int, optional
        Checked against the input, and needed by :meth:`to_plain` (else pass it there).
    """

    def __init__(self, factor: int = 2, in_channels: int | None = None) -> None:
        super().__init__()
        self.factor = positive_int(factor, "factor")
        self.in_channels = None if in_channels is None else positive_int(in_channels, "in_channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if x.dim() != 4 or x.shape[-1] % f or x.shape[-2] % f or (
                self.in_channels is not None and x.shape[1] != self.in_channels):
            channels = "C" if self.in_channels is None else str(self.in_channels)
            raise ShapeMismatchError(f"SpaceToDepth({f}) takes (N, {channels}, H, W) with H and W divisible by {f}; "
                                     f"got shape {tuple(x.shape)}")
        return F.pixel_unshuffle(x, f)

    def lipschitz_bound(self) -> float:
        """1 (exact: a permutation)."""
        return 1.0

    def to_plain(self, dtype=None, device=None, in_channels: int | None = None) -> nn.Sequential:
        """``Sequential(Conv2d(C, C·f², f, stride=f, bias=False))`` with the 0/1 kernel of the permutation."""
        channels = in_channels if in_channels is not None else self.in_channels
        if channels is None:
            raise InvalidArgumentError("SpaceToDepth.to_plain needs the number of input channels: build the block "
                                       "with SpaceToDepth(factor, in_channels=C) or call to_plain(in_channels=C)")
        channels, f = positive_int(channels, "in_channels"), self.factor
        kw = factory_kwargs(resolve_dtype(dtype), device)
        conv = nn.Conv2d(channels, channels * f * f, f, stride=f, bias=False, **kw)
        with torch.no_grad():
            conv.weight.zero_()
            for c in range(channels):
                for i in range(f):
                    for j in range(f):
                        conv.weight[c * f * f + i * f + j, c, i, j] = 1.0
        return nn.Sequential(conv).eval()

    def extra_repr(self) -> str:
        return f"factor={self.factor}, in_channels={self.in_channels}"


class LLNHead(nn.Module):
    r"""Last-layer normalization: ``x ↦ W x + b`` with ``W``'s rows ``w_i = v_i / ‖v_i‖`` of unit norm.

    Singla, Singla & Feizi (ICLR 2022, "Improved deterministic ℓ2 robustness on CIFAR-10 and
    CIFAR-100") normalise the last layer's rows and certify with the per-pair constants: on a
    body ``g`` that is ``L_g``-Lipschitz, ``f_i − f_j = (w_i − w_j)ᵀ g(x) + b_i − b_j`` is
    ``L_g ‖w_i − w_j‖``-Lipschitz (Cauchy–Schwarz), and ``‖w_i − w_j‖ ≤ 2`` for unit rows,
    while the whole head's constant is ``‖W‖₂ ∈ [1, √K]`` (``K`` rows of norm 1: ``‖W‖₂ ≥ 1``
    and ``‖W‖₂ ≤ ‖W‖_F = √K``).  So the head is not 1-Lipschitz in general; what the
    certificate uses is :meth:`pair_lipschitz`, computed from the very ``W`` of the forward
    (whose rows are unit up to rounding), rounded up.

    Parameters
    ----------
    in_features, n_classes : widths (the input is flat: put ``nn.Flatten()`` before the head)
    bias : learn a bias (it does not change any Lipschitz constant)

    Attributes
    ----------
    direction : the free parameter ``V`` (rows are normalised; a zero row stays zero)
    weight : the normalised ``W`` (a property, recomputed from ``direction``)
    """

    def __init__(self, in_features: int, n_classes: int, bias: bool = True, dtype=None, device=None) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.n_classes = positive_int(n_classes, "n_classes")
        kw = factory_kwargs(resolve_dtype(dtype), device)
        self.direction = nn.Parameter(torch.empty(self.n_classes, self.in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(self.n_classes, **kw)) if bias else None
        nn.init.normal_(self.direction, std=1.0 / math.sqrt(self.in_features))

    @property
    def weight(self) -> torch.Tensor:
        """``W`` with rows ``v_i / ‖v_i‖`` (a zero row stays zero: its norm is clamped below by the smallest normal)."""
        norms = torch.linalg.vector_norm(self.direction, dim=1, keepdim=True)
        return self.direction / norms.clamp_min(torch.finfo(self.direction.dtype).tiny)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ShapeMismatchError(f"LLNHead({self.in_features}, {self.n_classes}) takes (N, {self.in_features}); "
                                     f"got shape {tuple(x.shape)} (put nn.Flatten() before the head)")
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def pair_lipschitz(self, body_lipschitz: float = 1.0) -> np.ndarray:
        """``K × K`` certified upper bounds of ``body_lipschitz · ‖w_i − w_j‖`` (0 on the diagonal).

        See :func:`lmi.certify.pair_lipschitz`.
        """
        from .certify import pair_lipschitz

        return pair_lipschitz(self.weight, body_lipschitz)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A certified upper bound of ``‖W‖₂`` (:func:`lipsdp.certificate.spectral_norm_bound`, rounded up)."""
        from lipsdp.certificate import spectral_norm_bound

        mantissa, exponent = spectral_norm_bound(self.weight.detach().cpu().double().numpy())
        return float(np.ldexp(mantissa, exponent))

    @torch.no_grad()
    def to_plain(self, dtype=None) -> nn.Sequential:
        """``Sequential(nn.Linear)`` holding the normalised ``W`` and ``b`` (equal to the forward)."""
        dt = resolve_dtype(dtype) if dtype is not None else self.direction.dtype
        W = self.weight.detach()
        linear = nn.Linear(self.in_features, self.n_classes, bias=self.bias is not None, dtype=dt,
                           device=W.device)
        linear.weight.copy_(W.to(dt))
        if self.bias is not None:
            linear.bias.copy_(self.bias.detach().to(dt))
        return nn.Sequential(linear).eval()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}, bias={self.bias is not None}"


def _export(module: nn.Module, channels: int | None, dtype, device) -> tuple[list[nn.Module], int | None]:
    """Plain modules for ``module`` and the number of channels after it (None when unknown)."""
    if isinstance(module, ChannelMaxMin):
        c = channels if channels is not None else module.channels
        if c is None:
            raise InvalidArgumentError("export_sequential cannot tell how many channels reach a ChannelMaxMin: "
                                       "pass in_channels=C (the input's channels) or build it with channels=C")
        return list(module.to_plain(dtype=dtype, device=device, channels=c)), c
    if isinstance(module, SpaceToDepth):
        c = channels if channels is not None else module.in_channels
        plain = module.to_plain(dtype=dtype, device=device, in_channels=c)
        return list(plain), plain[0].out_channels
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            exported, channels = _export(child, channels, dtype, device)
            out.extend(exported)
        return out, channels
    if isinstance(module, Residual):
        branch, _ = _export(module.branch, channels, dtype, device)
        return [Residual(nn.Sequential(*branch))], channels
    if hasattr(module, "to_plain"):
        plain = module.to_plain(dtype=dtype) if dtype is not None else module.to_plain()
        return _export(plain, channels, dtype, device)
    copied = copy.deepcopy(module)
    if dtype is not None and list(copied.parameters()):
        copied = copied.to(resolve_dtype(dtype))
    if isinstance(module, (nn.Flatten, nn.Linear)):
        return [copied], None  # no channels after these
    return [copied], getattr(module, "out_channels", channels)


@torch.no_grad()
def export_sequential(model: nn.Module, in_channels: int | None = None, dtype=None) -> nn.Sequential:
    """A plain ``nn.Sequential`` equal to ``model``, for ``lipsdp.estimate(..., input_shape=...)``.

    Blocks of this module become their exports, any other module with ``to_plain`` (the
    ``lmi`` layers) its export, nested Sequentials and ``lipsdp.nn.Residual`` branches are
    exported recursively, and every other module is deep-copied as it is.

    Parameters
    ----------
    model : an ``nn.Sequential`` (or a single module)
    in_channels : channels of the input (needed when a ChannelMaxMin comes before any module
        that states its output channels, such as a convolution)
    dtype : of the exported weights (default: that of ``model``'s first floating-point parameter, else
        torch's default dtype; parameter-free blocks get it, and that parameter's device, too)
    """
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    if dtype is None and first is not None:
        dtype = first.dtype
    modules, _ = _export(model, in_channels, dtype, None if first is None else first.device)
    return nn.Sequential(*modules).eval()
