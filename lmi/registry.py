"""The registry of parameterizations: name -> network class.

Each registered class declares ``activation_needs``, what its proof needs of the
activation (a :class:`lipsdp.activation_registry.ProofNeeds`), so the activations a
parameterization accepts are computed from here, never listed by hand.  The
classes themselves live in :mod:`lmi.models` (which fills this registry on import);
this module is separate so that :mod:`lmi.layers` can name the accepting
parameterizations in its error messages without importing the models.
"""
from __future__ import annotations

from lipsdp.activation_registry import ProofNeeds

from .errors import InvalidArgumentError, UnknownParameterizationError, UnsupportedModelError

__all__ = ["register", "parameterizations", "get_parameterization", "accepting"]

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator adding a network class to the registry under ``name``.

    Raises
    ------
    InvalidArgumentError
        ``name`` is not a lower-case string, or is already registered.
    UnsupportedModelError
        The class does not declare ``activation_needs`` (a ``ProofNeeds``).
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise InvalidArgumentError(f"a parameterization name is a non-empty lower-case string, got {name!r}")

    def deco(cls):
        if name in _REGISTRY:
            raise InvalidArgumentError(f"parameterization {name!r} already registered")
        if not isinstance(getattr(cls, "activation_needs", None), ProofNeeds):
            raise UnsupportedModelError(
                f"{cls.__name__} must declare activation_needs, the lipsdp.activation_registry.ProofNeeds "
                f"its proof needs of the activation (e.g. SLOPE_IN_0_1 or ONE_LIPSCHITZ)"
            )
        cls.parameterization = name
        _REGISTRY[name] = cls
        return cls

    return deco


def parameterizations() -> list[str]:
    """Sorted names of the registered parameterizations."""
    return sorted(_REGISTRY)


def get_parameterization(name: str) -> type:
    """The network class registered under ``name`` (raises :class:`UnknownParameterizationError`)."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UnknownParameterizationError(name, parameterizations())
    return _REGISTRY[key]


def accepting(activation) -> list[str]:
    """Sorted names of the parameterizations whose proof covers ``activation`` (module or spec string)."""
    return [name for name in parameterizations() if _REGISTRY[name].activation_needs.admits(activation)[0]]
