"""Shared fixtures: anchor networks (read from ../shared, never committed) and random nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lipsdp

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANCHORS = SHARED / "anchors"


def anchor_path(*parts: str) -> Path:
    """Path of an anchor file; skips the test when ../shared is absent."""
    path = ANCHORS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"anchor {path} not available")
    return path


def load_anchor_weights(*parts: str, key: str = "weights") -> list[np.ndarray]:
    import scipy.io as sio

    cell = sio.loadmat(anchor_path(*parts))[key]
    return [np.asarray(cell[0, i], dtype=float) for i in range(cell.shape[1])]


ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus")


def random_network(seed: int, max_hidden: int = 3, max_width: int = 8, activations=ACTIVATIONS) -> lipsdp.Network:
    """A random feed-forward net: varied depth, widths, activation and weight scale."""
    rng = np.random.default_rng(seed)
    n_hidden = int(rng.integers(1, max_hidden + 1))
    widths = [int(rng.integers(1, max_width + 1)) for _ in range(n_hidden + 2)]
    scale = float(np.exp(rng.uniform(-1.5, 1.5)))
    weights = [scale * rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(n_hidden + 1)]
    biases = [rng.normal(size=widths[k + 1]) for k in range(n_hidden + 1)]
    activation = str(rng.choice(list(activations)))
    return lipsdp.Network.from_weights(weights, biases, activation)


@pytest.fixture(scope="module")
def torch_single_thread():
    """Tiny LAPACK calls (Cholesky, solves) are far faster single-threaded, especially on a busy machine."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
