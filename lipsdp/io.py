"""Load networks from model files, save them, and write result files atomically.

Accepted formats (by extension):

``.pt`` / ``.pth``
    Either a saved TorchScript module (``torch.jit.script(model).save(path)``),
    read with ``torch.jit.load`` and converted by
    :func:`lipsdp.torch_io.network_from_torch` (activations and structure are in
    the file); or the ``state_dict`` of an ``nn.Sequential`` of ``Linear`` layers
    and parameter-free activations (``torch.save(model.state_dict(), path)``), read
    with ``torch.load(path, weights_only=True)``.  A state_dict holds only the
    tensors, so it is read only when the user names the activation
    (``activation=``, ``--activation``): one activation is placed wherever the
    Sequential's indices skip a module (``0.weight, 2.weight`` → Linear, act,
    Linear), none between adjacent indices.  Keys of any other structure
    (``1.branch.0.weight``, ``fc1.weight``) are refused: save TorchScript instead.
``.npz``
    Weight matrices under ``W0, W1, …`` (also ``W_0``, ``w0``, ``weight0``,
    ``weights_0``…; any start index; sorted by index), optional biases under
    ``b0, b1, …`` (also ``b_0``, ``bias0``, ``biases_0``…) with the same indices,
    and a string array ``activation``: one spec (``"relu"``, ``"leaky_relu:0.2"``,
    ``"softplus:2"``, ``"maxmin"``…; :func:`lipsdp.activation_registry.activation_names`)
    or one per hidden layer.  Without that key the user must name the activation.
    :func:`save_network_npz` writes this format, with an ``assumptions`` string array
    when the saved network's source had not said something (read back as stated).
``.mat``
    MATLAB file with key ``weights`` (a 1×k cell array of matrices, the format of the
    LipSDP repository, whose networks are ReLU) or ``W`` (the format of the MaxMin
    quadratic-constraint code: MaxMin on consecutive pairs); optional ``biases`` /
    ``b`` cell arrays.  Shapes are (out, in).  The key's convention gives the
    activation unless the user names one; the structure is a feed-forward chain
    unless ``structure="residual"`` (``x₁ = W₁x``, ``x_{k+1} = x_k + φ(W_k x_k)``,
    ``y = W_L x_{L−1}``, the layout of the MaxMin code's residual networks).

Whatever a format cannot carry and was assumed is stated in ``Network.assumptions``
and in every result.
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

from . import activation_registry as registry
from . import activations as act
from .errors import LipSDPError, ModelFileError, ModelFileNotFoundError, ShapeMismatchError
from .network import ActivationLayer, Affine, Network, Residual

_FORMATS = ".pt/.pth (TorchScript module or state_dict of an nn.Sequential), .npz (W0, W1, …; b0, b1, …) or .mat (key 'weights' or 'W')"
_WEIGHT_KEY = re.compile(r"^(?:W|w|weight|weights)_?(\d+)$")
_BIAS_KEY = re.compile(r"^(?:b|bias|biases)_?(\d+)$")
_SEQUENTIAL_KEY = re.compile(r"^(\d+(?:\.\d+)*)\.(weight|bias)$")
_STRUCTURES = ("feedforward", "residual")
#: the activation a .mat key's source code uses (LipSDP: ReLU; the MaxMin QC code: MaxMin on pairs)
_MAT_CONVENTIONS = {"weights": ("relu", "the LipSDP repository's format"),
                    "W": ("maxmin", "the MaxMin quadratic-constraint code's format")}


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
    """An activation rule from a spec string (``"relu"``, ``"leaky_relu:0.2"``) or a rule."""
    return registry.rule_from_spec(spec)


def activation_spec(rule: act.Activation) -> str:
    """Inverse of :func:`parse_activation` (raises ModelFileError for rules without a spec)."""
    try:
        return registry.spec_of(rule)
    except LipSDPError as exc:
        raise ModelFileError(str(exc)) from None


def _activations(spec: Any, n_hidden: int, source: Path) -> list[act.Activation]:
    specs = list(spec) if isinstance(spec, (list, tuple, np.ndarray)) else [spec]
    if len(specs) == 1:
        specs = specs * n_hidden
    if len(specs) != n_hidden:
        raise ModelFileError(f"{source}: {len(specs)} activations given for {n_hidden} hidden layers")
    try:
        return [parse_activation(s) for s in specs]
    except LipSDPError as exc:
        raise ModelFileError(f"{source}: {exc}") from None


def _require_activation(activation: Any, source: Path, what: str) -> None:
    if activation is None:
        raise ModelFileError(
            f"{source}: {what} cannot carry the activations, so lipsdp will not guess them. Name the activation "
            f"between the layers: activation='relu' (CLI: --activation relu); known: "
            f"{', '.join(registry.activation_names())}. Or save a TorchScript module: torch.jit.script(model).save(path)"
        )


def _stated(activation: Any, source: Path, what: str) -> str:
    shown = activation if isinstance(activation, str) else getattr(activation, "describe", lambda: activation)()
    return f"activation {shown} between the layers of {source.name}, as stated by the user ({what} cannot carry activations)"


def _feedforward(weights: Sequence[Any], biases: Sequence[Any] | None, activation: Any, source: Path,
                 names: Sequence[str], assumptions: Sequence[str] = ()) -> Network:
    if not weights:
        raise ModelFileError(f"{source}: no weight matrices found; expected {_FORMATS}")
    acts = _activations(activation, len(weights) - 1, source)
    try:
        return Network.from_weights(weights, biases, acts, names=names, assumptions=assumptions)
    except LipSDPError as exc:
        raise type(exc)(f"{source}: {exc}") from None


# ------------------------------------------------------------------------------ loading
def load_network(path: str | os.PathLike, activation: Any = None, structure: str | None = None,
                 input_shape: Any = None) -> Network:
    """Load a network from a model file (see the module docstring for formats).

    Parameters
    ----------
    path
        ``.pt``/``.pth``, ``.npz`` or ``.mat`` file.
    activation
        Activation between layers, for files that cannot carry it (state dicts,
        ``.npz`` without an ``activation`` entry; ``.mat`` files to override the
        key's convention): a spec such as ``"relu"`` or ``"leaky_relu:0.2"``, an
        Activation, or a list of those (one per hidden layer).  Required where the
        file does not say; refused where the file says (TorchScript, ``.npz`` with
        an ``activation`` entry).
    structure
        ``.mat`` only: ``"feedforward"`` (default, stated in the result) or ``"residual"``.
    input_shape
        Shape of one input, e.g. ``(1, 28, 28)``: required for a TorchScript CNN (see
        :func:`lipsdp.torch_io.network_from_torch`); for other files it must match the
        first layer's width.

    Raises
    ------
    ModelFileNotFoundError
        The file does not exist.
    ModelFileError
        Unknown extension, unreadable or malformed file, a file that cannot carry
        its activations read without ``activation``, or a key layout that a state
        dict cannot rebuild.
    """
    source = Path(path)
    if source.is_dir():
        raise ModelFileError(f"{source} is a directory; give a model file ({_FORMATS})")
    if not source.is_file():
        raise ModelFileNotFoundError(f"model file not found: {source}")
    loader = _LOADERS.get(source.suffix.lower())
    if loader is None:
        raise ModelFileError(f"{source}: unknown model file extension {source.suffix!r}; expected {_FORMATS}")
    if structure is not None and structure not in _STRUCTURES:
        raise ModelFileError(f"unknown structure {structure!r}; use one of {_STRUCTURES}")
    if structure is not None and loader is not _load_mat:
        raise ModelFileError(f"{source}: structure= applies to .mat files only; this file carries its own structure")
    try:
        if loader is _load_torch:
            return loader(source, activation, input_shape)
        net = loader(source, activation) if loader is not _load_mat else loader(source, activation, structure)
        return check_input_shape(net, input_shape)
    except LipSDPError:
        raise
    except Exception as exc:  # any parse failure of a third-party reader
        raise ModelFileError(f"{source}: could not read the model ({type(exc).__name__}: {exc}); expected {_FORMATS}") from exc


def _is_torchscript(source: Path) -> bool:
    if not zipfile.is_zipfile(source):
        return False
    with zipfile.ZipFile(source) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def check_input_shape(net: Network, input_shape: Any) -> Network:
    """``net`` when ``input_shape`` is None or describes its input (same shape, or the same number of entries
    for a dense first layer); ShapeMismatchError otherwise."""
    if input_shape is None:
        return net
    from .torch_io import parse_input_shape

    shape = parse_input_shape(input_shape)
    fits = shape == net.input_shape or (len(net.input_shape) == 1 and int(np.prod(shape)) == net.input_dim)
    if not fits:
        raise ShapeMismatchError(f"input_shape {shape} does not fit the network, whose input has shape "
                                 f"{net.input_shape}")
    return net


def _load_torch(source: Path, activation: Any, input_shape: Any = None) -> Network:
    import torch

    from .torch_io import network_from_torch

    if _is_torchscript(source):
        if activation is not None:
            raise ModelFileError(f"{source}: a TorchScript module carries its activations; do not pass activation=")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates torch.jit
            module = torch.jit.load(str(source), map_location="cpu")
        return network_from_torch(module, input_shape)
    try:
        obj = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:
        pickled_module = "nn.Module" in str(exc) or "GLOBAL" in str(exc) or "weights_only" in str(exc)
        what = "a pickled whole model (torch.save(model)), which is not loaded for safety" if pickled_module else \
            "not a TorchScript module nor a plain state_dict"
        raise ModelFileError(
            f"{source}: {what}. Save model.state_dict() with torch.save, or torch.jit.script(model).save(path)"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return check_input_shape(_from_state_dict(obj, activation, source), input_shape)


def _from_state_dict(state: Any, activation: Any, source: Path) -> Network:
    """Rebuild a Linear + activation Sequential from its state_dict (see the module docstring)."""
    if not isinstance(state, dict) or not state:
        raise ModelFileError(f"{source}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    weights: dict[tuple, Any] = {}
    biases: dict[tuple, Any] = {}
    for key, value in state.items():
        match = _SEQUENTIAL_KEY.match(str(key))
        if match is None:
            raise ModelFileError(
                f"{source}: state_dict entry {key!r} is not the weight or bias of a Linear layer of an nn.Sequential, "
                "so the model's structure cannot be rebuilt from a state_dict. "
                "Save a TorchScript module instead: torch.jit.script(model).save(path)"
            )
        index = tuple(int(i) for i in match.group(1).split("."))
        ndim = getattr(value, "ndim", 0)
        if (match.group(2) == "weight") != (ndim == 2) or ndim not in (1, 2):
            raise ModelFileError(
                f"{source}: state_dict entry {key!r} has {ndim} dimension(s): not a Linear layer "
                "(BatchNorm and other layers cannot be rebuilt from a state_dict; save TorchScript instead)"
            )
        (weights if match.group(2) == "weight" else biases)[index] = value
    stray = sorted(set(biases) - set(weights))
    if stray:
        raise ModelFileError(f"{source}: biases without weights for {['.'.join(map(str, k)) for k in stray]}")
    order = sorted(weights)
    if len({index[:-1] for index in order}) > 1:
        raise ModelFileError(
            f"{source}: the Linear layers sit in different nested containers, so a state_dict cannot show what lies "
            "between them. Save a TorchScript module instead: torch.jit.script(model).save(path)"
        )
    gaps = [b[-1] - a[-1] - 1 for a, b in zip(order, order[1:])]
    if any(gap > 1 for gap in gaps):
        a, b = next((a, b) for a, b, gap in zip(order, order[1:], gaps) if gap > 1)
        raise ModelFileError(
            f"{source}: Sequential indices {a[-1]} and {b[-1]} leave {b[-1] - a[-1] - 1} parameter-free modules between "
            "two Linear layers, which a state_dict cannot show. Save a TorchScript module instead: "
            "torch.jit.script(model).save(path)"
        )
    n_acts = sum(gaps)
    if n_acts:
        _require_activation(activation, source, "a state_dict")
    acts = _activations(activation, n_acts, source) if n_acts else []
    stated = [_stated(activation, source, "a state_dict")] if n_acts else []
    stated.append(f"nothing before Sequential index {order[0][-1]} and nothing after index {order[-1][-1]} "
                  "(a state_dict cannot show parameter-free modules such as Softmax there)")
    layers: list = []
    try:
        for k, index in enumerate(order):
            name = ".".join(map(str, index))
            layers.append(Affine.create(weights[index], biases.get(index), name))
            if k < len(gaps) and gaps[k]:
                layers.append(ActivationLayer(acts.pop(0), f"{order[k][-1] + 1}"))
        return Network(layers, stated)
    except LipSDPError as exc:
        raise type(exc)(f"{source}: {exc}") from None


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
        names = [w_keys[i] for i in order]
        stated: list[str] = [str(a) for a in np.atleast_1d(data["assumptions"])] if "assumptions" in keys else []
        if "activation" in keys:
            if activation is not None:
                raise ModelFileError(f"{source}: the file names its activation ({list(np.atleast_1d(data['activation']))}); "
                                     "do not pass activation=")
            activation = [str(s) for s in np.atleast_1d(data["activation"])]
        elif len(weights) > 1:
            _require_activation(activation, source, "a .npz without an 'activation' entry")
            stated.append(_stated(activation, source, "a .npz without an 'activation' entry"))
    if not weights:
        raise ModelFileError(f"{source}: no weight arrays found (keys: {keys}); expected W0, W1, … and optionally b0, b1, …")
    return _feedforward(weights, biases, activation, source, names, stated)


def _cells(value: Any, source: Path, key: str) -> list[np.ndarray]:
    arr = np.asarray(value)
    items = list(arr.ravel()) if arr.dtype == object else [arr]
    mats = [np.asarray(x) for x in items]  # Network refuses complex or non-numeric entries (never cast away)
    if any(m.ndim != 2 for m in mats):
        raise ModelFileError(f"{source}: key {key!r} must be a cell array of 2-D matrices")
    return mats


def _load_mat(source: Path, activation: Any, structure: str | None) -> Network:
    import scipy.io

    data = scipy.io.loadmat(str(source))
    key = next((k for k in ("weights", "W") if k in data), None)
    if key is None:
        visible = [k for k in data if not k.startswith("__")]
        raise ModelFileError(f"{source}: no 'weights' or 'W' cell array (keys: {visible})")
    weights = _cells(data[key], source, key)
    bkey = next((k for k in ("biases", "b") if k in data), None)
    biases = [m.ravel() for m in _cells(data[bkey], source, bkey)] if bkey else None
    names = [f"{key}{{{k + 1}}}" for k in range(len(weights))]  # MATLAB's cell indices
    convention, origin = _MAT_CONVENTIONS[key]
    if activation is None:
        stated = [f"activation {convention} between the layers: the convention of key {key!r} ({origin}); "
                  "a .mat file cannot carry activations (pass activation= to override)"]
        activation = convention
    else:
        stated = [_stated(activation, source, "a .mat file")]
    if structure == "residual":
        stated.append("residual structure x1 = W1 x, x_(k+1) = x_k + act(W_k x_k), y = W_L x_(L-1), as stated by the user")
        return _residual_chain(weights, biases, activation, source, names, stated)
    stated.append("feed-forward structure: a .mat file cannot carry skip connections (pass structure='residual' "
                  "for the residual layout)")
    return _feedforward(weights, biases, activation, source, names, stated)


def _residual_chain(weights, biases, activation, source: Path, names, stated) -> Network:
    """``x₁ = W₁x + b₁``, ``x_{k+1} = x_k + φ(W_k x_k + b_k)`` for the middle matrices, ``y = W_L x + b_L``."""
    if len(weights) < 3:
        raise ModelFileError(f"{source}: the residual layout needs at least 3 matrices (input, blocks, output)")
    biases = [None] * len(weights) if biases is None else biases
    rule = _activations(activation, 1, source)[0]
    try:
        layers: list = [Affine.create(weights[0], biases[0], names[0])]
        for k in range(1, len(weights) - 1):
            branch = (Affine.create(weights[k], biases[k], names[k]), ActivationLayer(rule, f"act{k}"))
            layers.append(Residual(branch, f"block{k}"))
        layers.append(Affine.create(weights[-1], biases[-1], names[-1]))
        return Network(layers, stated)
    except LipSDPError as exc:
        raise type(exc)(f"{source}: {exc}") from None


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
    if net.stated:  # what the network's source did not say stays said in the saved file
        arrays["assumptions"] = np.array(net.stated)
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return target
