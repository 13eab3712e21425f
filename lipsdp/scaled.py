"""Non-negative numbers as ``(mantissa, exponent)`` pairs ``m · 2^e``, ``m ∈ [1/2, 1)``, multiplied rounded up.

A deep network's product of layer norms may leave float64's range although every factor is in
it; kept as pairs, products neither overflow nor underflow, and each product is rounded up so the
pair stays an upper bound of the exact product.  Shared by the naive bound
(:mod:`lipsdp.bound_methods`) and the structured operators' norm bounds (:mod:`lipsdp.operators`).
"""

from __future__ import annotations

import math

import numpy as np

Scaled = tuple  # (mantissa, exponent)


def from_float(value: float) -> Scaled:
    """``value`` as ``(mantissa, exponent)`` with mantissa in ``[1/2, 1)`` (exact)."""
    mantissa, e = np.frexp(float(value))
    return float(mantissa), int(e)


def normalized(value: Scaled) -> Scaled:
    """The same value with its mantissa in ``[1/2, 1)`` (exact: a power-of-two shift)."""
    mantissa, e = from_float(value[0])
    return (0.0, 0) if mantissa == 0 else (mantissa, e + int(value[1]))


def times(a: Scaled, b: Scaled) -> Scaled:
    """``a · b`` rounded up (the mantissa product rounds to nearest; one step up covers it)."""
    product = a[0] * b[0]
    if product == 0:
        return 0.0, 0
    mantissa, e = np.frexp(np.nextafter(product, np.inf))
    return float(mantissa), int(e) + a[1] + b[1]


def shifted(value: float, exponent: int) -> Scaled:
    """``value · 2^exponent`` (exact)."""
    mantissa, e = from_float(value)
    return mantissa, e + exponent


def one_plus(a: Scaled) -> Scaled:
    """``1 + a`` rounded up, for any exponent."""
    if a[0] == 0:
        return from_float(1.0)
    if a[1] >= 60:  # 1 < ulp(a): the next mantissa up covers it
        return float(np.nextafter(a[0], np.inf)), a[1]
    return from_float(np.nextafter(1.0 + np.ldexp(a[0], a[1]), np.inf))


def order_key(value: Scaled) -> tuple:
    """Sort key of a normalized non-negative ``(mantissa, exponent)``."""
    return (-math.inf, 0.0) if value[0] == 0 else (value[1], value[0])


def to_float_up(value: Scaled) -> float:
    """``m · 2^e`` as a float not below it (``inf`` when it overflows)."""
    mantissa, e = value
    if mantissa == 0:
        return 0.0
    if e > 1100:
        return math.inf
    # ldexp rounds to nearest only in the subnormal range; one step up covers it
    return float(np.nextafter(np.ldexp(mantissa, e), np.inf))
