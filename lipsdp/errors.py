"""Typed exceptions of lipsdp.

Every error a user can act on is a subclass of :class:`LipSDPError`, and each
also derives from the closest built-in exception (``ValueError``,
``TypeError``, ``FileNotFoundError``, ...) so generic ``except`` clauses keep
working.
"""

from __future__ import annotations

from typing import Iterable, Sequence


class LipSDPError(Exception):
    """Base class of every error raised on purpose by lipsdp."""


class UnsupportedLayerError(LipSDPError, TypeError):
    """A model contains modules that lipsdp cannot describe.

    Parameters
    ----------
    unsupported
        ``(path, type name)`` of *every* offending module, so one error lists
        them all.
    supported
        The convertible module types, as the reader knows them (the message lists them).
    """

    def __init__(self, unsupported: Sequence[tuple[str, str]], supported: str = ""):
        self.unsupported = list(unsupported)
        self.supported = supported
        lines = "\n".join(f"  - {path or '<root>'}: {kind}" for path, kind in self.unsupported)
        tail = (f"Supported: {supported} (BatchNorm and Dropout in eval mode; convolutions and pooling with "
                "input_shape=(C, H, W))." if supported else "")
        super().__init__(f"{len(self.unsupported)} unsupported module(s) in the model:\n{lines}\n{tail}".rstrip())


class InvalidWeightsError(LipSDPError, ValueError):
    """Weights contain NaN or Inf values (or are otherwise unusable)."""


class ShapeMismatchError(LipSDPError, ValueError):
    """Consecutive layers do not fit together."""


class InputShapeRequiredError(ShapeMismatchError):
    """A model with convolutions or pooling was read without the shape of its input.

    A convolution's matrix (and so its norm and the network's bound) depends on the image size:
    pass ``input_shape=(C, H, W)`` (``--input-shape C,H,W`` on the command line).
    """


class InvalidActivationError(LipSDPError, ValueError):
    """An activation is mis-specified (slopes, group size, Householder vector...)."""


class IllPosedError(LipSDPError, ValueError):
    """An implicit (equilibrium) layer is not well posed."""


class UnknownNameError(LipSDPError, ValueError):
    """A name is not in the registry it was looked up in."""

    kind = "name"

    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown {self.kind} {name!r}; available: {', '.join(self.known) or '(none)'}"
        )


class UnknownMethodError(UnknownNameError):
    """The method name is not registered (see ``lipsdp.methods()``)."""

    kind = "method"


class UnknownSolverError(UnknownNameError):
    """The solver name is not known (see ``lipsdp.solvers()``)."""

    kind = "solver"


class SolverUnavailableError(LipSDPError, RuntimeError):
    """The requested solver is known but cannot be used on this machine."""


class LicenseError(SolverUnavailableError):
    """A commercial solver (MOSEK) is installed but has no working licence."""


class SolverFailedError(LipSDPError, RuntimeError):
    """The solver returned no usable answer (infeasible, inaccurate, stalled)."""

    def __init__(self, message: str, status: str | None = None):
        self.status = status
        super().__init__(message)


class CertificationError(LipSDPError, RuntimeError):
    """The solver's multipliers could not be turned into a certified bound."""


class NotApplicableError(LipSDPError, ValueError):
    """A method or solver does not apply to this network (e.g. a chain-only method on a residual net)."""


class InvalidOptionError(LipSDPError, TypeError):
    """An unknown keyword option, or an option value a method or solver cannot use."""


class ProblemTooLargeError(LipSDPError, MemoryError):
    """The SDP a method would build needs more memory or time than the machine allows.

    The message states the estimated size and the cheaper methods that still apply.
    """


class NumericalRangeError(LipSDPError, ValueError):
    """Weights or a requested constant whose scale under- or overflows float64 arithmetic."""


class ActivationNotCoveredError(LipSDPError, TypeError):
    """An activation that a parameterization's (or method's) proof does not cover.

    The message names the activation, the property the proof needs, and where the
    activation is accepted instead.
    """


class ModelFileError(LipSDPError, ValueError):
    """A model file is malformed or of an unknown format."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """A model file does not exist."""
