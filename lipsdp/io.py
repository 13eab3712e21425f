"""Load networks from model files, save them, and write result files atomically.

Accepted formats (by extension):

``.pt`` / ``.pth``
    Either a saved TorchScript module (``torch.jit.script(model).save(path)``),
    read with ``torch.jit.load`` and converted by
    :func:`lipsdp.torch_io.network_from_torch`; or the ``state_dict`` of an
    ``nn.Sequential`` of ``Linear`` layers and activations
    (``torch.save(model.state_dict(), path)``), read with
    ``torch.load(path, weights_only=True)``.  A state_dict only holds the
    ``"<prefix>.weight"`` / ``"<prefix>.bias"`` tensors of the Linear layers, so
    the network is rebuilt as :meth:`Network.from_weights` in key order with
    the ``activation`` argument between layers.
``.npz``
    Weight matrices under ``W0, W1, …`` (also ``W_0``, ``w0``, ``weight0``,
    ``weights_0``…; any start index; sorted by index), optional biases under
    ``b0, b1, …`` (also ``b_0``, ``bias0``, ``biases_0``…) with the same indices,
    and an optional string array ``activation``: one name (``"relu"``,
    ``"tanh"``, ``"leaky_relu:0.2"``, ``"elu:1.0"``, ``"softplus:2"``…) or one
    name per hidden layer.  It overrides the ``activation`` argument.
    :func:`save_network_npz` writes this format.
``.mat``
    MATLAB file with key ``weights`` (a 1×k cell array of matrices, the format
    of the LipSDP repository) or ``W`` (the MaxMin anchor files); optional
    ``biases`` / ``b`` cell arrays.  Shapes are (out, in).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import activations as act
from .errors import LipSDPError, ModelFileError, ModelFileNotFoundError
from .network import Network

_FORMATS = ".pt/.pth (TorchScript module or state_dict of an nn.Sequential), .npz (W0, W1, …; b0, b1, …) or .mat (key 'weights' or 'W')"
_WEIGHT_KEY = re.compile(r"^(?:W|w|weight|weights)_?(\d+)$")
_BIAS_KEY = re.compile(r"^(?:b|bias|biases)_?(\d+)$")


# ------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    Examples
    --------
    >>> with atomic_path("results/table.csv") as tmp:    # doctest: +SKIP
    ...     frame.to_csv(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- activations
def parse_activation(spec: Any) -> act.Activation:
    """An activation from ``"name"`` or ``"name:parameter"`` (e.g. ``"leaky_relu:0.2"``)."""
    if isinstance(spec, act.Activation):
        return spec
    name, _, param = str(spec).partition(":")
    if not param:
        return act.activation_by_name(name)
    factories = {"leaky_relu": act.leaky_relu, "elu": act.elu, "softplus": act.softplus}
    key = name.lower().replace("-", "_")
    if key not in factories:
        raise ModelFileError(f"activation {spec!r}: only leaky_relu, elu and softplus take a parameter")
    try:
        return factories[key](float(param))
    except ValueError:
        raise ModelFileError(f"activation {spec!r}: the parameter after ':' must be a number") from None


def activation_spec(rule: act.Activation) -> str:
    """Inverse of :func:`parse_activation` for the built-in activations."""
    name = getattr(rule, "name", rule.kind)
    if not isinstance(rule, act.SlopeRestricted) or rule.fn is None:
        raise ModelFileError(f"activation {rule.describe()} cannot be saved by name")
    if name == "leaky_relu":
        return f"leaky_relu:{float(rule.elementwise_derivative(np.array([-1.0]))[0])!r}"
    if name == "elu":
        return f"elu:{float(rule.elementwise_derivative(np.array([0.0]))[0])!r}"
    if name == "softplus":
        return f"softplus:{float(np.log(2.0) / rule.forward(np.array([0.0]))[0])!r}"
    if name not in act.activation_names():
        raise ModelFileError(f"activation {rule.describe()} cannot be saved by name")
    return name


def _activations(spec: Any, n_hidden: int) -> list[act.Activation]:
    specs = list(spec) if isinstance(spec, (list, tuple, np.ndarray)) else [spec]
    if len(specs) == 1:
        specs = specs * n_hidden
    if len(specs) != n_hidden:
        raise ModelFileError(f"{len(specs)} activations given for {n_hidden} hidden layers")
    return [parse_activation(s) for s in specs]


def _feedforward(weights: Sequence[Any], biases: Sequence[Any] | None, activation: Any, source: Path) -> Network:
    if not weights:
        raise ModelFileError(f"{source}: no weight matrices found; expected {_FORMATS}")
    return Network.from_weights(weights, biases, _activations(activation, len(weights) - 1))


# ------------------------------------------------------------------------------ loading
def load_network(path: str | os.PathLike, activation: Any = "relu") -> Network:
    """Load a network from a model file (see the module docstring for formats).

    Parameters
    ----------
    path
        ``.pt``/``.pth``, ``.npz`` or ``.mat`` file.
    activation
        Activation between layers when the file does not say (state_dicts,
        ``.mat`` files, ``.npz`` without an ``activation`` entry): a name such
        as ``"relu"`` or ``"leaky_relu:0.2"``, an Activation, or a list of
        those (one per hidden layer).

    Raises
    ------
    ModelFileNotFoundError
        The file does not exist.
    ModelFileError
        Unknown extension, unreadable or malformed file.
    """
    source = Path(path)
    if not source.is_file():
        raise ModelFileNotFoundError(f"model file not found: {source}")
    loader = _LOADERS.get(source.suffix.lower())
    if loader is None:
        raise ModelFileError(f"{source}: unknown model file extension {source.suffix!r}; expected {_FORMATS}")
    try:
        return loader(source, activation)
    except LipSDPError:
        raise
    except Exception as exc:  # any parse failure of a third-party reader
        raise ModelFileError(f"{source}: could not read the model ({type(exc).__name__}: {exc}); expected {_FORMATS}") from exc


def _is_torchscript(source: Path) -> bool:
    if not zipfile.is_zipfile(source):
        return False
    with zipfile.ZipFile(source) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_torch(source: Path, activation: Any) -> Network:
    import torch

    from .torch_io import network_from_torch

    if _is_torchscript(source):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates torch.jit
            module = torch.jit.load(str(source), map_location="cpu")
        return network_from_torch(module)
    try:
        obj = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"{source}: not a TorchScript module nor a plain state_dict ({type(exc).__name__}). "
            "Save model.state_dict() with torch.save, or torch.jit.script(model).save(path)"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return _from_state_dict(obj, activation, source)


def _from_state_dict(state: Any, activation: Any, source: Path) -> Network:
    """Rebuild a Linear + activation Sequential from its state_dict."""
    if not isinstance(state, dict) or not state:
        raise ModelFileError(f"{source}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    weights: dict[str, Any] = {}
    biases: dict[str, Any] = {}
    for key, value in state.items():
        prefix, _, leaf = str(key).rpartition(".")
        if leaf == "weight" and getattr(value, "ndim", 0) == 2:
            weights[prefix] = value
        elif leaf == "bias" and getattr(value, "ndim", 0) == 1:
            biases[prefix] = value
        else:
            raise ModelFileError(
                f"{source}: state_dict entry {key!r} is not the weight or bias of a Linear layer; only an "
                "nn.Sequential of Linear layers and activations can be rebuilt from a state_dict. "
                "Save a TorchScript module instead: torch.jit.script(model).save(path)"
            )
    stray = sorted(set(biases) - set(weights))
    if stray:
        raise ModelFileError(f"{source}: biases without weights for {stray}")
    return _feedforward(list(weights.values()), [biases.get(k) for k in weights], activation, source)


def _indexed(keys: Sequence[str], pattern: re.Pattern) -> dict[int, str]:
    return {int(m.group(1)): k for k in keys if (m := pattern.match(k))}


def _load_npz(source: Path, activation: Any) -> Network:
    with np.load(source, allow_pickle=False) as data:
        keys = list(data.files)
        w_keys, b_keys = _indexed(keys, _WEIGHT_KEY), _indexed(keys, _BIAS_KEY)
        if b_keys and set(b_keys) != set(w_keys):
            raise ModelFileError(f"{source}: bias indices {sorted(b_keys)} do not match weight indices {sorted(w_keys)}")
        order = sorted(w_keys)
        weights = [data[w_keys[i]] for i in order]
        biases = [data[b_keys[i]] for i in order] if b_keys else None
        if "activation" in keys:
            activation = [str(s) for s in np.atleast_1d(data["activation"])]
    if not weights:
        raise ModelFileError(f"{source}: no weight arrays found (keys: {keys}); expected W0, W1, … and optionally b0, b1, …")
    return _feedforward(weights, biases, activation, source)


def _cells(value: Any, source: Path, key: str) -> list[np.ndarray]:
    arr = np.asarray(value)
    items = list(arr.ravel()) if arr.dtype == object else [arr]
    mats = [np.asarray(x, dtype=float) for x in items]
    if any(m.ndim != 2 for m in mats):
        raise ModelFileError(f"{source}: key {key!r} must be a cell array of 2-D matrices")
    return mats


def _load_mat(source: Path, activation: Any) -> Network:
    import scipy.io

    data = scipy.io.loadmat(str(source))
    key = next((k for k in ("weights", "W") if k in data), None)
    if key is None:
        visible = [k for k in data if not k.startswith("__")]
        raise ModelFileError(f"{source}: no 'weights' or 'W' cell array (keys: {visible})")
    weights = _cells(data[key], source, key)
    bkey = next((k for k in ("biases", "b") if k in data), None)
    biases = [m.ravel() for m in _cells(data[bkey], source, bkey)] if bkey else None
    return _feedforward(weights, biases, activation, source)


_LOADERS = {".pt": _load_torch, ".pth": _load_torch, ".npz": _load_npz, ".mat": _load_mat}


# ------------------------------------------------------------------------------- saving
def save_network_npz(net: Network, path: str | os.PathLike) -> Path:
    """Save a feed-forward network as ``.npz`` (``W0…``, ``b0…``, ``activation``), atomically.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    NotApplicableError
        The network is not a feed-forward chain.
    ModelFileError
        An activation cannot be written by name.
    """
    arrays: dict[str, np.ndarray] = {}
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{k}"], arrays[f"b{k}"] = np.asarray(w), np.asarray(b)
    arrays["activation"] = np.array([activation_spec(a) for a in net.activations] or ["identity"])
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return target
