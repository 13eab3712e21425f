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
from . import fourier, functional, functional_conv
from .blocks import ChannelMaxMin, LLNHead, SpaceToDepth, export_sequential
from .certify import (
    body_lipschitz_bound,
    certified_accuracy,
    certified_mask,
    certified_radius,
    empirical_lipschitz,
    jacobian_norms,
    margins,
    pair_lipschitz,
    split_head,
    uniform_pair_lipschitz,
)
from .cnn import CNN_PARAMETERIZATIONS, LipschitzCNN, lipschitz_cnn
from .conv import BROConv2d, CayleyConv2d, SandwichConv2d
from .conv_spatial import AOLConv2d, SLLConv2d
from .data import IMAGE_DATASETS, ImageDataset, load_images, read_idx
from .errors import (
    ActivationNotCoveredError,
    DataFormatError,
    DataNotFoundError,
    ExportError,
    InvalidArgumentError,
    InvalidInputError,
    InvalidOptionError,
    LMIError,
    NumericalRangeError,
    ShapeMismatchError,
    UnknownDatasetError,
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
from .losses import LOSSES, get_loss, logit_annealing_loss, margin_hinge_loss, offset_cross_entropy
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
from .residual import GershgorinResidual, GershgorinResidualConv2d, LDLTResidual, LDLTResidualConv2d
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
    "fourier", "functional", "functional_conv",
    "ChannelMaxMin", "LLNHead", "SpaceToDepth", "export_sequential",
    "body_lipschitz_bound", "certified_accuracy", "certified_mask", "certified_radius", "empirical_lipschitz",
    "jacobian_norms", "margins", "pair_lipschitz", "split_head", "uniform_pair_lipschitz",
    "AOLConv2d", "BROConv2d", "CayleyConv2d", "SandwichConv2d", "SLLConv2d",
    "CNN_PARAMETERIZATIONS", "LipschitzCNN", "lipschitz_cnn",
    "GershgorinResidual", "GershgorinResidualConv2d", "LDLTResidual", "LDLTResidualConv2d",
    "IMAGE_DATASETS", "ImageDataset", "load_images", "read_idx",
    "LOSSES", "get_loss", "logit_annealing_loss", "margin_hinge_loss", "offset_cross_entropy",
    "DataFormatError", "DataNotFoundError", "UnknownDatasetError",
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
