"""Typed errors of the ``lmi`` package.

Every error raised on purpose by ``lmi`` derives from :class:`LMIError`, itself a
:class:`lipsdp.errors.LipSDPError`, so one ``except`` clause catches every project
error.  Each also derives from the closest built-in exception (``ValueError`` for
bad values, ``TypeError`` for objects of the wrong kind) and, where lipsdp has an
error for the same situation, from that one too (``lmi.ShapeMismatchError`` is a
:class:`lipsdp.errors.ShapeMismatchError`).
"""
from __future__ import annotations

from lipsdp import errors as _lipsdp

__all__ = [
    "LMIError",
    "UnknownParameterizationError",
    "ExportError",
    "ActivationNotCoveredError",
    "InvalidArgumentError",
    "InvalidOptionError",
    "UnsupportedDtypeError",
    "NumericalRangeError",
    "ShapeMismatchError",
    "InvalidInputError",
    "UnsupportedModelError",
    "DataNotFoundError",
    "DataFormatError",
    "UnknownDatasetError",
]


class LMIError(_lipsdp.LipSDPError):
    """Base class of all errors raised by ``lmi``."""


class UnknownParameterizationError(LMIError, _lipsdp.UnknownNameError):
    """Raised for a parameterization name that is not registered.

    Attributes ``name`` (what was asked for) and ``known`` (sorted registered names).
    """

    kind = "parameterization"


class ExportError(LMIError, ValueError):
    """Raised when a model cannot be exported to a plain network."""


class ActivationNotCoveredError(LMIError, _lipsdp.ActivationNotCoveredError):
    """An activation that a parameterization's proof does not cover.

    The message names the activation, the property the proof needs, and the
    parameterizations that accept it (or says that none does).
    """


class InvalidArgumentError(LMIError, ValueError):
    """A constructor argument with an unusable value (``dims``, ``gamma``, ``alpha``, …)."""


class InvalidOptionError(LMIError, _lipsdp.InvalidOptionError):
    """An unknown keyword option, or an option value a parameterization cannot use."""


class UnsupportedDtypeError(InvalidOptionError):
    """A dtype other than float32/float64 (the constructions need real floating point)."""


class NumericalRangeError(LMIError, _lipsdp.NumericalRangeError):
    """A requested constant (``gamma``) whose powers under- or overflow the model's dtype."""


class ShapeMismatchError(LMIError, _lipsdp.ShapeMismatchError):
    """An input whose width differs from the model's input width, or widths that do not fit."""


class InvalidInputError(LMIError, TypeError):
    """An input that is not a tensor of the model's dtype."""


class UnsupportedModelError(LMIError, TypeError):
    """A model that an ``lmi`` function cannot handle (not an ``lmi`` network)."""


class DataNotFoundError(LMIError, FileNotFoundError):
    """An image data set whose files (or whose package) are absent; the message says how to get them."""


class DataFormatError(LMIError, ValueError):
    """A data file that is not what its name says (bad idx header, truncated payload, wrong sizes)."""


class UnknownDatasetError(LMIError, _lipsdp.UnknownNameError):
    """An image data set name that :func:`load_images` does not know."""

    kind = "image data set"
