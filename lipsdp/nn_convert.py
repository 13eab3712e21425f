"""Converters from :mod:`lipsdp.nn` modules to lipsdp layers (torch is not imported here).

Registered with :func:`lipsdp.torch_io.register_torch_converter` on ``import lipsdp``:
``MaxMin``, ``GroupSort``, ``Householder``, ``Residual`` and ``Implicit``.
``Residual``/``Implicit`` must be the lipsdp.nn classes (checked through their
``lipsdp_kind`` marker); other modules of the same name are reported as unsupported.
"""

from __future__ import annotations


from .group_activations import GroupSort as GroupSortRule
from .group_activations import Householder as HouseholderRule
from .network import ActivationLayer, Implicit
from .network import Residual as ResidualLayer


def _np(t):
    return None if t is None else t.detach().cpu().double().numpy()


def _groupsort(module, path):
    rule = GroupSortRule(int(module.group_size), getattr(module, "grouping", "consecutive"),
                         bool(getattr(module, "descending", True)))
    return [ActivationLayer(rule, path)]


def _householder(module, path):
    return [ActivationLayer(HouseholderRule(_np(module.v), getattr(module, "grouping", "consecutive")), path)]


def _residual(module, path):
    from .torch_io import Unsupported, child_path, convert_module

    if getattr(module, "lipsdp_kind", None) != "residual":
        raise Unsupported("only lipsdp.nn.Residual is understood under this name")
    return [ResidualLayer(tuple(convert_module(module.branch, child_path(path, "branch"))), path)]


def _implicit(module, path):
    from .torch_io import Unsupported, child_path, convert_module

    if getattr(module, "lipsdp_kind", None) != "implicit":
        raise Unsupported("only lipsdp.nn.Implicit is understood under this name")
    act_layers = convert_module(module.activation, child_path(path, "activation"))
    if len(act_layers) != 1 or not isinstance(act_layers[0], ActivationLayer):
        raise Unsupported("the activation of an Implicit layer must be a single activation module")
    return [Implicit.create(_np(module.W), _np(module.U), act_layers[0].activation, b=_np(module.b),
                            C=_np(module.C), D=_np(module.D), name=path)]


def _register() -> None:
    from .torch_io import register_torch_converter

    for name in ("MaxMin", "GroupSort"):
        register_torch_converter(name, _groupsort)
    register_torch_converter("Householder", _householder)
    register_torch_converter("Residual", _residual)
    register_torch_converter("Implicit", _implicit)


_register()
