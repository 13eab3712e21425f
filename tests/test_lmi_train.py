"""lmi.train / lmi.certify: data, training loop, checkpoints and certified accuracy."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import lmi


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("name", lmi.DATASETS)
def test_load_dataset_standardised(name):
    d = lmi.load_dataset(name)
    assert d.X_train.shape[1] == d.n_features == d.X_test.shape[1]
    assert d.y_train.dtype == torch.long and int(d.y_train.max()) == d.n_classes - 1
    mu = d.X_train.double().mean(0)
    assert float(mu.abs().max()) < 1e-5
    sd = d.X_train.double().std(0, unbiased=False)
    assert float(((sd - 1).abs() * (sd > 0)).max()) < 1e-4


def test_unknown_dataset():
    with pytest.raises(ValueError):
        lmi.load_dataset("mnist")


def test_square_wave_data():
    X, y = lmi.function_data("square_wave", n=300)
    assert X.shape == (300, 1) and y.shape == (300, 1)
    assert set(np.unique(y.numpy()).tolist()) == {-1.0, 1.0}
    X2, y2 = lmi.function_data("ring", n=50)
    assert X2.shape == (50, 2)


def test_certified_radius_and_accuracy_rule():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    r = lmi.certified_radius(logits, labels, lipschitz=2.0)
    torch.testing.assert_close(r, torch.tensor([2.0, 0.5, 0.0]) / (math.sqrt(2) * 2.0))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    acc = lmi.certified_accuracy(Fixed(), torch.zeros(3, 1), labels, [0.0, 0.1, 0.5, 1.0], lipschitz=2.0)
    # margins 2, 0.5, -1; threshold sqrt(2)*2*eps = 0, 0.283, 1.414, 2.83
    np.testing.assert_allclose(acc, [2 / 3, 2 / 3, 1 / 3, 0.0])
    assert lmi.certified_accuracy(Fixed(), torch.zeros(3, 1), labels, 0.1, lipschitz=2.0) == pytest.approx(2 / 3)


def test_certified_points_are_really_robust():
    """No perturbation within the certified radius flips a prediction (random + gradient attack)."""
    torch.manual_seed(0)
    d = lmi.load_dataset("iris", dtype=torch.float64)
    m = lmi.lipschitz_mlp([d.n_features, 16, d.n_classes], 2.0, parameterization="sandwich", dtype=torch.float64)
    lmi.train(m, d.X_train, d.y_train, epochs=30, progress=False, lr=0.02)
    m.eval()
    logits = m(d.X_test)
    r = lmi.certified_radius(logits, d.y_test, m.lipschitz_bound())
    pred = logits.argmax(1)
    X = d.X_test[r > 0]
    R = r[r > 0].unsqueeze(1)
    y = pred[r > 0]
    for _ in range(20):
        u = torch.randn_like(X)
        u = u / u.norm(dim=1, keepdim=True)
        assert (m(X + 0.999 * R * u).argmax(1) == y).all()
    # gradient attack on the margin, projected on the certified ball
    delta = torch.zeros_like(X, requires_grad=True)
    for _ in range(30):
        mg = lmi.margins(m(X + delta), y)
        loss = mg.sum()
        g, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= 0.1 * R * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            n = delta.norm(dim=1, keepdim=True)
            delta *= torch.clamp(0.999 * R / n.clamp_min(1e-12), max=1.0)
    assert (m(X + delta).argmax(1) == y).all()


@pytest.mark.parametrize("name", lmi.parameterizations())
def test_train_digits_quick(name, tmp_path):
    torch.manual_seed(0)
    d = lmi.load_dataset("digits")
    m = lmi.lipschitz_mlp([d.n_features, 32, d.n_classes], 4.0, parameterization=name)
    ck = tmp_path / "ck" / "model.pt"
    hist = lmi.train(m, d.X_train, d.y_train, d.X_test, d.y_test, epochs=4, lr=0.01, progress=True,
                     checkpoint=str(ck), checkpoint_every=2, eps_train=0.1)
    assert len(hist.loss) == 4 and hist.loss[-1] < hist.loss[0]
    assert hist.test_metric[-1] > 0.5, (name, hist.test_metric)
    assert not m.training
    assert m.lmi_violation() <= 2e-5
    assert not [f for f in os.listdir(ck.parent) if f.startswith(".tmp")]
    obj = torch.load(ck, weights_only=True)
    assert obj["epoch"] == 4 and obj["parameterization"] == name
    m2 = lmi.lipschitz_mlp([d.n_features, 32, d.n_classes], 4.0, parameterization=name)
    lmi.load_checkpoint(str(ck), m2)
    m2.eval()
    torch.testing.assert_close(m2(d.X_test), m(d.X_test))
    acc = lmi.certified_accuracy(m, d.X_test, d.y_test, [0.0, 0.1, 0.3])
    assert acc[0] >= acc[1] >= acc[2]
    assert acc[0] == pytest.approx(hist.test_metric[-1])


def test_function_fitting_square_wave():
    torch.manual_seed(0)
    X, y = lmi.function_data("square_wave", n=300)
    m = lmi.lipschitz_mlp([1, 32, 32, 1], 5.0, parameterization="sandwich")
    hist = lmi.train(m, X, y, task="regression", epochs=40, batch_size=50, lr=0.01, progress=False)
    assert hist.train_metric[-1] < hist.train_metric[0]
    slope = lmi.empirical_lipschitz(m, X=X[::10], steps=20)
    assert 1.0 < slope <= 5.0 * (1 + 1e-9)


def test_checkpoint_atomic_and_weights_only(tmp_path):
    m = lmi.lipschitz_mlp([3, 4, 2], 1.0, parameterization="ldlt", learn_gamma=True)
    opt = torch.optim.Adam(m.parameters())
    path = tmp_path / "c.pt"
    lmi.save_checkpoint(str(path), m, opt, epoch=3, extra={"note": "x"})
    obj = lmi.load_checkpoint(str(path), m, opt)
    assert obj["extra"]["note"] == "x" and obj["gamma"] == pytest.approx(1.0)
    assert os.listdir(tmp_path) == ["c.pt"]
