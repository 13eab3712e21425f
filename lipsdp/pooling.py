"""Max pooling as a layer of a :class:`~lipsdp.network.Network`.

A max pool is not linear and not elementwise: output ``o`` is the maximum of
its window ``w(o)`` of input positions (padding cells hold −∞, so they never
win).  Its Lipschitz constant follows from one inequality per window
(docs/cnn.md, "Max pooling"):

    |max_{i∈w} x_i − max_{i∈w} y_i| ≤ max_{i∈w} |x_i − y_i|,

so in ℓ∞ the layer is 1-Lipschitz, and in ℓ2

    Σ_o (max_{w(o)} x − max_{w(o)} y)² ≤ Σ_o Σ_{i∈w(o)} (x_i − y_i)² = Σ_i m_i (x_i − y_i)² ≤ m ‖x − y‖²,

with ``m_i`` the number of windows that contain input position ``i`` and
``m = max_i m_i``: the constant is ``√m``.  It is attained (a single spike
at a position in ``m`` windows moves ``m`` outputs by the same amount), so it
is the exact constant of the layer alone; for non-overlapping windows
(``kernel ≤ stride``) it is 1.  Windows are separable, so ``m_i`` is the
product of the per-axis counts.

LipSDP has no quadratic constraint for it here: the SDP methods bound the
pieces between max pools and multiply by ``√m`` (:func:`lipsdp.bound_methods.split_at_pooling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NotApplicableError, ShapeMismatchError
from .operators import pool_output_size


def _per_axis(value, dims: int, what: str) -> tuple:
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * dims
    if len(values) != dims:
        raise ShapeMismatchError(f"max pool {what} has {len(values)} entries for {dims} spatial dimension(s)")
    return values


def _windows_per_position(n: int, k: int, s: int, p: int, d: int, out: int) -> np.ndarray:
    """For each input index ``0 ≤ i < n`` along one axis, how many windows contain it."""
    counts = np.zeros(n, dtype=np.int64)
    for o in range(out):
        idx = o * s - p + d * np.arange(k)
        idx = idx[(idx >= 0) & (idx < n)]
        counts[np.unique(idx)] += 1
    return counts


@dataclass(frozen=True, eq=False)
class MaxPool:
    """``MaxPool1d``/``MaxPool2d`` on feature maps of shape ``in_shape = (C, *spatial)`` (flat vectors, C-major)."""

    in_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    name: str = ""
    out_shape: tuple = field(init=False)

    def __post_init__(self):
        dims = len(self.in_shape) - 1
        if dims not in (1, 2):
            raise ShapeMismatchError(f"max pool {self.name!r}: input shape {self.in_shape} is not (C, L) or (C, H, W)")
        spatial = []
        for n, k, s, p, d in zip(self.in_shape[1:], self.kernel, self.stride, self.padding, self.dilation):
            if min(k, s, d) < 1 or p < 0 or 2 * p > k:
                raise ShapeMismatchError(
                    f"max pool {self.name!r}: kernel {k}, stride {s}, padding {p}, dilation {d} are not valid "
                    "(positive kernel, stride and dilation; padding at most half the kernel, as torch requires)"
                )
            size = pool_output_size(n, k, s, p, False, d)
            if size < 1:
                raise ShapeMismatchError(f"max pool {self.name!r}: kernel {k} does not fit an input of size {n}")
            spatial.append(size)
        object.__setattr__(self, "out_shape", (self.in_shape[0],) + tuple(spatial))

    @staticmethod
    def create(in_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               name: str = "") -> "MaxPool":
        """Validated layer with torch's conventions (``stride`` defaults to the kernel size)."""
        in_shape = tuple(int(v) for v in in_shape)
        dims = len(in_shape) - 1
        kernel = _per_axis(kernel_size, dims, "kernel_size")
        stride = kernel if stride is None or stride == () else _per_axis(stride, dims, "stride")
        layer = MaxPool(in_shape, kernel, stride, _per_axis(padding, dims, "padding"),
                        _per_axis(dilation, dims, "dilation"), name)
        if ceil_mode and layer._ceil_output() != layer.out_shape:
            raise NotApplicableError(
                f"max pool {name!r}: ceil_mode=True adds partial windows on this input size; use ceil_mode=False "
                "or an input size where both modes agree"
            )
        return layer

    def _ceil_output(self) -> tuple:
        geometry = zip(self.in_shape[1:], self.kernel, self.stride, self.padding, self.dilation)
        return (self.in_shape[0],) + tuple(pool_output_size(n, k, s, p, True, d) for n, k, s, p, d in geometry)

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_dim(self) -> int:
        return int(np.prod(self.out_shape))

    def window_multiplicity(self) -> int:
        """``m = max_i m_i``: the largest number of windows that share one input position."""
        m = 1
        for n, k, s, p, d, out in zip(self.in_shape[1:], self.kernel, self.stride, self.padding, self.dilation,
                                      self.out_shape[1:]):
            m *= int(np.max(_windows_per_position(n, k, s, p, d, out)))
        return m

    def lipschitz_constant(self, norm=2) -> float:
        """``√m`` in ℓ2 (rounded up), 1 in ℓ∞ (see the module docstring)."""
        if norm == np.inf:
            return 1.0
        m = self.window_multiplicity()
        root = float(np.sqrt(m))
        return root if root * root == m else float(np.nextafter(root, np.inf))

    def describe(self) -> str:
        return f"MaxPool(k={self.kernel}, s={self.stride}, p={self.padding}) on {'x'.join(map(str, self.in_shape))}"

    def _torch_pool(self, x):
        import torch.nn.functional as F

        pool = F.max_pool1d if len(self.in_shape) == 2 else F.max_pool2d
        return pool(x, self.kernel, self.stride, self.padding, self.dilation, return_indices=True)

    def selected_inputs(self, x: np.ndarray) -> np.ndarray:
        """Flat input index chosen by each output at the rows of ``x`` (ties as torch breaks them)."""
        import torch

        rows = np.atleast_2d(np.asarray(x, float))
        with torch.no_grad():
            _, idx = self._torch_pool(torch.as_tensor(rows).reshape((rows.shape[0],) + self.in_shape))
        channel = np.arange(self.in_shape[0]).reshape((1, -1) + (1,) * (len(self.in_shape) - 1))
        plane = int(np.prod(self.in_shape[1:]))
        return (idx.numpy() + channel * plane).reshape(rows.shape[0], -1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(x, float))
        return np.take_along_axis(rows, self.selected_inputs(rows), axis=1)
