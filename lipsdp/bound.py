"""The result of every estimation method: a certified upper bound and how it was obtained."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class LipschitzBound:
    """A certified upper bound on a Lipschitz constant (immutable: derive a changed copy with
    :func:`dataclasses.replace`).

    Attributes
    ----------
    value
        The certified bound (``float(bound)`` returns it).
    raw_value
        What the solver (or closed form) reported before certification.
    method, solver, status
        How it was obtained; ``status`` is ``"optimal"``, ``"closed-form"`` or ``"feasible"``
        (a first-order answer, certified like any other).
    solve_time
        Wall-clock seconds for the whole estimate (reductions, solve, certification).
    certificate_margin
        Smallest eigenvalue of the LMI at the certified multipliers (NaN when
        not computed, e.g. for the naive bound).
    norm
        2 or ``inf``.
    details
        Method-specific extras (inflation needed by the repair, sizes, ...).
    assumptions
        What the bound assumed about the model beyond the network it was given
        (e.g. the activation a state-dict file was read with); empty when nothing.
    """

    value: float
    raw_value: float
    method: str
    solver: str
    status: str
    solve_time: float
    certificate_margin: float = float("nan")
    norm: float = 2
    details: dict = field(default_factory=dict)
    assumptions: tuple = ()

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"LipschitzBound({self.value:.6g}, method={self.method!r}, solver={self.solver!r}, "
            f"status={self.status!r}, time={self.solve_time:.3g}s, margin={self.certificate_margin:.3g})"
        )
