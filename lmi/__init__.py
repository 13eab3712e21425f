"""lmi: trainable layers whose Lipschitz bound holds by construction.

>>> import lmi
>>> m = lmi.lipschitz_mlp([64, 128, 128, 10], gamma=1.0, parameterization="sandwich")
>>> plain = lmi.to_plain(m)        # nn.Sequential of nn.Linear + activations

Parameterizations (``lmi.parameterizations()``): network-level ``sandwich``,
``ldlt``, ``gershgorin``; layer-wise baselines ``sll``, ``aol``, ``cayley``,
``spectral``.  Each declares what its proof needs of the activation
(``activation_needs``); activations come from :mod:`lipsdp.activation_registry`, and
one a proof does not cover is refused with :class:`ActivationNotCoveredError`.
"""
from . import functional
from .certify import (
    certified_accuracy,
    certified_radius,
    empirical_lipschitz,
    jacobian_norms,
    margins,
)
from .errors import (
    ActivationNotCoveredError,
    ExportError,
    InvalidArgumentError,
    InvalidInputError,
    InvalidOptionError,
    LMIError,
    NumericalRangeError,
    ShapeMismatchError,
    UnknownParameterizationError,
    UnsupportedDtypeError,
    UnsupportedModelError,
)
from .export import check_witness, plain_weights, to_plain, witness
from .layers import (
    AOLLinear,
    CayleyLinear,
    GershgorinLinear,
    LDLTLinear,
    SandwichLinear,
    SLLBlock,
    SpectralLinear,
    make_activation,
)
from .models import (
    AOLNet,
    CayleyNet,
    GershgorinNet,
    LDLTNet,
    LipschitzMLP,
    SandwichNet,
    SLLNet,
    SpectralNet,
    gamma_range,
    get_parameterization,
    lipschitz_mlp,
    parameterizations,
    register,
)
from .train import (
    DATASETS,
    Dataset,
    TrainHistory,
    evaluate,
    function_data,
    load_checkpoint,
    load_dataset,
    lipschitz_margin_loss,
    save_checkpoint,
    square_wave,
    train,
)

__all__ = [
    "functional",
    "certified_accuracy", "certified_radius", "empirical_lipschitz", "jacobian_norms", "margins",
    "ActivationNotCoveredError", "ExportError", "InvalidArgumentError", "InvalidInputError",
    "InvalidOptionError", "LMIError", "NumericalRangeError", "ShapeMismatchError",
    "UnknownParameterizationError", "UnsupportedDtypeError", "UnsupportedModelError",
    "check_witness", "plain_weights", "to_plain", "witness",
    "AOLLinear", "CayleyLinear", "GershgorinLinear", "LDLTLinear", "SandwichLinear", "SLLBlock",
    "SpectralLinear", "make_activation",
    "AOLNet", "CayleyNet", "GershgorinNet", "LDLTNet", "LipschitzMLP", "SandwichNet", "SLLNet",
    "SpectralNet", "gamma_range", "get_parameterization", "lipschitz_mlp", "parameterizations", "register",
    "DATASETS", "Dataset", "TrainHistory", "evaluate", "function_data", "load_checkpoint",
    "load_dataset", "lipschitz_margin_loss", "save_checkpoint", "square_wave", "train",
]
