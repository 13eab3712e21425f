"""lipsdp: certified Lipschitz bounds of neural networks with semidefinite programs.

>>> import lipsdp
>>> b = lipsdp.estimate(model, method="lipsdp-neuron")   # doctest: +SKIP
>>> float(b)                                             # doctest: +SKIP
"""

from . import activations, errors
from . import activation_registry  # the one activation registry (torch types, specs, QC rules)
from .api import as_network, compare, estimate
from .certificate import Certificate, certify
from .claims import ClaimCheck, check_claim
from .conv_norms import ConvNorm, conv_norm
from .errors import LipSDPError
from .graph import SignalGraph, build_graph
from .bound import LipschitzBound
from .bound_methods import methods, register_method
from .network import ActivationLayer, Affine, Implicit, Network, Residual
from .pooling import MaxPool
from .solver_registry import register_solver, solvers
from . import linf, rr, wellposed  # ℓ∞ SDPs, the lipsdp-rr baseline, well-posedness of implicit layers
from . import nn_convert  # torch converters of lipsdp.nn modules (torch imported lazily)
from . import peers  # converters of deel-torchlip and orthogonium modules, by type name (neither is imported)

__version__ = "0.1.0"

__all__ = [
    "ActivationLayer",
    "activation_registry",
    "Affine",
    "Certificate",
    "Implicit",
    "LipSDPError",
    "LipschitzBound",
    "MaxPool",
    "Network",
    "Residual",
    "SignalGraph",
    "activations",
    "as_network",
    "build_graph",
    "certify",
    "check_claim",
    "ClaimCheck",
    "compare",
    "conv_norm",
    "ConvNorm",
    "errors",
    "estimate",
    "methods",
    "register_method",
    "register_solver",
    "solvers",
]
