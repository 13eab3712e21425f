"""Converters from the structural :mod:`lipsdp.nn` modules to lipsdp layers (torch is not imported here).

Registered with :func:`lipsdp.torch_io.register_torch_converter` on ``import lipsdp``,
keyed by their qualified types ``lipsdp.nn.Residual`` and ``lipsdp.nn.Implicit``
(other classes of the same name are reported as unsupported).  The activations of
:mod:`lipsdp.nn` (MaxMin, GroupSort, Householder) are read by the activation registry.
"""

from __future__ import annotations
from .network import ActivationLayer, Implicit
from .network import Residual as ResidualLayer


def _np(t):
    return None if t is None else t.detach().cpu().double().numpy()


def _residual(module, path):
    from .torch_io import child_path, convert_module

    return [ResidualLayer(tuple(convert_module(module.branch, child_path(path, "branch"))), path)]


def _implicit(module, path):
    from .torch_io import Unsupported, child_path, convert_module

    act_layers = convert_module(module.activation, child_path(path, "activation"))
    if len(act_layers) != 1 or not isinstance(act_layers[0], ActivationLayer):
        raise Unsupported("the activation of an Implicit layer must be a single activation module")
    return [Implicit.create(_np(module.W), _np(module.U), act_layers[0].activation, b=_np(module.b),
                            C=_np(module.C), D=_np(module.D), name=path)]


def _register() -> None:
    from .torch_io import register_torch_converter

    register_torch_converter("lipsdp.nn.Residual", _residual)
    register_torch_converter("lipsdp.nn.Implicit", _implicit)


_register()
