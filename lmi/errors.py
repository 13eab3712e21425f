"""Typed errors of the ``lmi`` package.

When the solver half (``lipsdp.errors``) is importable, the errors here also
derive from its ``LipSDPError`` so callers can catch every project error with one
``except`` clause; they always derive from :class:`ValueError`.
"""
from __future__ import annotations

try:  # pragma: no cover - depends on the other half of the project
    from lipsdp.errors import LipSDPError as _ProjectError
except Exception:  # noqa: BLE001 - any import problem means "not available yet"
    _ProjectError = None
try:  # pragma: no cover
    from lipsdp.errors import UnknownNameError as _UnknownName
except Exception:  # noqa: BLE001
    _UnknownName = None


if _ProjectError is None:

    class LMIError(Exception):
        """Base class of all errors raised by ``lmi``."""

else:

    class LMIError(_ProjectError):  # type: ignore[misc,valid-type]
        """Base class of all errors raised by ``lmi``."""


_unknown_bases = (LMIError, ValueError) if _UnknownName is None else (LMIError, _UnknownName)


class UnknownParameterizationError(*_unknown_bases):  # type: ignore[misc]
    """Raised for a parameterization name that is not registered.

    Attributes ``name`` (what was asked for) and ``known`` (sorted registered names).
    """

    kind = "parameterization"

    def __init__(self, name, known=()):
        self.name = name
        self.known = sorted(known)
        Exception.__init__(
            self, f"unknown {self.kind} {name!r}; available: {', '.join(self.known) or '(none)'}"
        )


class ExportError(LMIError, ValueError):
    """Raised when a model cannot be exported to a plain network."""


__all__ = ["LMIError", "UnknownParameterizationError", "ExportError"]
