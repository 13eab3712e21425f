"""lmi.lipschitz_cnn: the 2C2F classifier per parameterization, its export, its bound, training (issue 20).

Independent references: torch's own convolutions in the plain export (the Fourier layers run
FFTs, the export spatial ``nn.Conv2d``), lipsdp's certified bound of the float64 export,
finite-difference quotients pushed up by Adam, accuracies recomputed from the logits, and the
bench script run end to end on a tiny case.
"""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lipsdp  # noqa: E402
import lmi  # noqa: E402
from lipsdp.nn import MaxMin, Residual  # noqa: E402
from lmi.cnn import CNN_PARAMETERIZATIONS, LipschitzCNN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
F32, F64 = torch.float32, torch.float64
GAMMAS = (0.1, 1.0, 10.0)
DTYPES = (F32, F64)
TOL = {F32: 1e-4, F64: 1e-6}
SHAPE = (1, 8, 8)  # scikit-learn's digits as images
SMALL = {"channels": (4, 8), "hidden": 16}
BOUNDED = [p for p in CNN_PARAMETERIZATIONS if p != "unconstrained"]
#: lipsdp's method for the whole float64 export: a product of norms where every layer is
#: norm-bounded, LipSDP-Neuron where the certificate is an LMI (sandwich layers, SLL residuals)
METHOD = {"sandwich": "lipsdp-neuron", "sll": "lipsdp-neuron", "cayley": "naive", "bro": "naive", "aol": "naive"}
#: plain torch modules an export may hold (lipsdp reads each of them)
PLAIN = (nn.Conv2d, nn.Linear, nn.Flatten, nn.Unflatten, nn.ReLU, nn.Tanh, MaxMin, Residual, nn.Sequential)


@pytest.fixture(autouse=True)
def _single_thread(torch_single_thread):
    """Tiny FFTs and solves are fastest on one thread (the machine is shared)."""


@pytest.fixture(scope="module")
def digits():
    return lmi.load_images("digits", n_train=240, n_test=120, seed=0)


def _model(p: str, gamma: float, dtype, seed: int = 0, perturb: float = 0.3, **kw) -> LipschitzCNN:
    """A tiny model with every parameter moved off its initialisation (``Ψ ≠ I``, reflectors vary)."""
    torch.manual_seed(seed)
    model = lmi.lipschitz_cnn(SHAPE, 10, p, gamma=gamma, dtype=dtype, **{**SMALL, **kw})
    with torch.no_grad():
        for q in model.parameters():
            q.add_(perturb * torch.randn_like(q))
    return model.eval()


def _images(n: int, dtype, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


# ------------------------------------------------------------------------------ construction
def test_every_parameterization_has_the_same_2c2f_shape():
    shapes = set()
    for p in CNN_PARAMETERIZATIONS:
        model = _model(p, 1.0, F64)
        x = _images(3, F64)
        feats = model.body(x)
        assert model(x).shape == (3, 10) and feats.shape == (3, 16)
        # two SpaceToDepth(2) downsamplings, one conv stage after each
        assert sum(isinstance(m, lmi.SpaceToDepth) for m in model.body) == 2
        convs = [m for m in model.body.modules()
                 if isinstance(m, (nn.Conv2d, lmi.SandwichConv2d, lmi.CayleyConv2d, lmi.BROConv2d, lmi.AOLConv2d,
                                   lmi.SLLConv2d))]
        assert len(convs) == 2, p
        # stage outputs: (4, 4, 4) then (8, 2, 2), whatever the parameterization
        h = model.body[0](x)
        stage_shapes = []
        for m in model.body[1:]:
            h = m(h)
            if isinstance(m, lmi.SpaceToDepth) or isinstance(m, nn.Flatten):
                stage_shapes.append(tuple(h.shape[1:]))
        shapes.add(tuple(stage_shapes))
    assert shapes == {((16, 2, 2), (32,))}


def test_lipschitz_bound_is_gamma_or_the_product_with_the_lln_head():
    for p in BOUNDED:
        for dtype in DTYPES:
            model = _model(p, 0.1, dtype)
            assert model.lipschitz_bound() == float(torch.tensor(0.1, dtype=dtype))  # gamma as the model stores it
        lln = _model(p, 2.0, F64, head="lln")
        W = lln.head.weight.detach().numpy()
        bound = lln.lipschitz_bound()
        assert 2.0 * np.linalg.norm(W, 2) <= bound <= 2.0 * np.linalg.norm(W, 2) * (1 + 1e-9)
        assert lln.body_lipschitz_bound() == 2.0
    assert _model("unconstrained", 1.0, F64).lipschitz_bound() == math.inf


def test_invalid_arguments_are_refused_with_typed_errors():
    with pytest.raises(lmi.UnknownParameterizationError):
        lmi.lipschitz_cnn(SHAPE, 10, "ldlt")
    with pytest.raises(lmi.ShapeMismatchError, match="divisible by 4"):
        lmi.lipschitz_cnn((1, 10, 8), 10, "cayley")
    with pytest.raises(lmi.InvalidArgumentError):
        lmi.lipschitz_cnn((1, 8), 10, "cayley")
    with pytest.raises(lmi.InvalidOptionError):
        lmi.lipschitz_cnn(SHAPE, 10, "cayley", stride=2)
    with pytest.raises(lmi.InvalidOptionError):
        lmi.lipschitz_cnn(SHAPE, 10, "cayley", head="softmax")
    for p in ("sandwich", "sll"):  # their proofs need slopes in [0, 1]: MaxMin is not elementwise
        with pytest.raises(lmi.ActivationNotCoveredError):
            lmi.lipschitz_cnn(SHAPE, 10, p, activation="maxmin", **SMALL)
    with pytest.raises(lmi.ActivationNotCoveredError):
        lmi.lipschitz_cnn(SHAPE, 10, "cayley", activation="leaky_relu:2.0", **SMALL)
    with pytest.raises(lmi.InvalidArgumentError, match="ChannelMaxMin"):
        lmi.lipschitz_cnn(SHAPE, 10, "cayley", activation="groupsort:4", **SMALL)
    with pytest.raises(lmi.NumericalRangeError):
        lmi.lipschitz_cnn(SHAPE, 10, "cayley", gamma=1e-12, dtype=F32, **SMALL)
    model = lmi.lipschitz_cnn(SHAPE, 10, "sandwich", dtype=F64, **SMALL)
    with pytest.raises(lmi.ShapeMismatchError):
        model(torch.zeros(2, 1, 12, 12, dtype=F64))
    with pytest.raises(lmi.InvalidInputError):
        model(torch.zeros(2, *SHAPE, dtype=F32))
    with pytest.raises(lmi.UnsupportedModelError, match="Linear"):
        lmi.to_plain(nn.Linear(3, 3))


def test_swapped_activation_is_refused_where_a_bound_is_claimed():
    model = _model("sandwich", 1.0, F64)
    model.body[1].activation = lmi.ChannelMaxMin()  # not slope-restricted elementwise
    with pytest.raises(lmi.ActivationNotCoveredError):
        model.lipschitz_bound()
    with pytest.raises(lmi.ActivationNotCoveredError):
        lmi.to_plain(model)


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("p", CNN_PARAMETERIZATIONS)
def test_export_is_plain_and_equal(p, gamma, dtype):
    model = _model(p, gamma, dtype)
    plain = lmi.to_plain(model)
    assert all(isinstance(m, PLAIN) for m in plain.modules()), [type(m).__name__ for m in plain.modules()]
    assert next(plain.parameters()).dtype == dtype
    x = _images(16, dtype)
    with torch.no_grad():
        out, ref = plain(x), model(x)
    scale = max(1.0, float(ref.abs().max()))
    assert float((out - ref).abs().max()) <= TOL[dtype] * scale


@pytest.mark.parametrize("p", ["sandwich", "cayley", "sll"])
def test_float64_export_of_a_float32_model_evaluates_the_construction_in_float64(p):
    model = _model(p, 1.0, F32, head="lln")
    plain = lmi.to_plain(model, dtype=F64)
    assert next(plain.parameters()).dtype == F64
    x = _images(8, F32)
    with torch.no_grad():
        assert float((plain(x.double()) - model(x).double()).abs().max()) <= 1e-4
    bound = float(lipsdp.estimate(plain, method=METHOD[p], input_shape=SHAPE))
    assert bound <= model.lipschitz_bound() * (1 + 1e-6)


def test_to_plain_exports_any_module_with_its_own_export_and_mlps_as_before():
    torch.manual_seed(3)
    layer = lmi.SandwichConv2d(2, 3, (4, 4), dtype=F64)
    x = torch.randn(5, 2, 4, 4, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(lmi.to_plain(layer)(x), layer(x), atol=1e-12, rtol=0)
    assert next(lmi.to_plain(layer, dtype=F32).parameters()).dtype == F32
    mlp = lmi.lipschitz_mlp([4, 6, 2], dtype=F64)
    assert [type(m) for m in lmi.to_plain(mlp)] == [nn.Linear, nn.ReLU, nn.Linear]
    with pytest.raises(lmi.UnsupportedDtypeError):
        lmi.to_plain(_model("cayley", 1.0, F64), dtype=torch.float16)


def test_channel_resize_is_an_isometry_or_a_co_isometry():
    from lmi.cnn import ChannelResize

    x = torch.randn(3, 4, 2, 2, dtype=F64)
    grow, shrink = ChannelResize(4, 6), ChannelResize(4, 3)
    assert torch.equal(grow(x)[:, :4], x) and not grow(x)[:, 4:].any()
    assert torch.equal(shrink(x), x[:, :3])
    for block in (grow, shrink):
        assert torch.equal(block.to_plain(dtype=F64)(x), block(x))
        assert float(lipsdp.estimate(block.to_plain(dtype=F64), method="naive", input_shape=(4, 2, 2))) <= 1 + 1e-9
    assert grow(x).norm() == x.norm()


def test_blocks_hold_one_constrained_layer_each_and_chain_to_the_model():
    for p in CNN_PARAMETERIZATIONS:
        model = _model(p, 1.0, F64)
        blocks = model.blocks()
        assert all(sum(next(m.parameters(), None) is not None for m in b) == 1 for b in blocks), p
        x = _images(4, F64)
        h = x
        with torch.no_grad():
            for b in blocks:
                h = b(h)
            torch.testing.assert_close(h, model(x), atol=0, rtol=0)


# ------------------------------------------------------------------------------ lipsdp re-certifies
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("p", BOUNDED)
def test_lipsdp_certifies_gamma_for_the_float64_export(p, gamma):
    model = _model(p, gamma, F64)
    plain = lmi.to_plain(model)
    bound = float(lipsdp.estimate(plain, method=METHOD[p], input_shape=SHAPE))
    assert bound <= gamma * (1 + 1e-6)
    if p in ("cayley", "bro"):  # orthogonal layers and ReLU: the product of norms is gamma itself
        assert bound >= gamma * (1 - 1e-9)
    # the same bound block by block (one LMI per constrained layer): never below the whole network's
    blockwise = model.lipsdp_bound(blockwise=True)
    assert bound * (1 - 1e-6) <= blockwise <= gamma * (1 + 1e-6)


@pytest.mark.parametrize("grouping", ["consecutive", "split"])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("p", ["cayley", "bro", "aol"])
def test_lipsdp_certifies_gamma_with_channel_maxmin(p, gamma, grouping):
    """Channel MaxMin exports to lipsdp's MaxMin on the flattened map: the acceptance tolerance 1e-6 holds.

    (Its residual form has an exactly singular LMI, certified only with a proof margin of about
    1e-6 relative per block; lipschitz_cnn's MaxMin knows its map's size and never uses it.)
    """
    model = _model(p, gamma, F64, activation=MaxMin(grouping=grouping))
    assert sum(isinstance(m, lmi.ChannelMaxMin) for m in model.body) == 2
    plain = lmi.to_plain(model)
    assert not any(isinstance(m, Residual) for m in plain.modules())
    assert sum(isinstance(m, MaxMin) for m in plain.modules()) == 3  # two channel MaxMin, one on the dense layer
    x = _images(4, F64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-12, rtol=0)
    bound = model.lipsdp_bound()  # "auto": a product of certified norms (MaxMin counts 1)
    assert bound <= gamma * (1 + 1e-6)
    if p in ("cayley", "bro"):  # orthogonal layers: the product of norms is gamma itself
        assert bound >= gamma * (1 - 1e-9)
    assert bound * (1 - 1e-9) <= model.lipsdp_bound(blockwise=True) <= gamma * (1 + 1e-6)


def test_lipsdp_bound_of_an_unconstrained_cnn_is_not_a_free_gamma():
    """The reference model has no bound; lipsdp's bound of the same shape, untrained, exceeds 1."""
    model = _model("unconstrained", 1.0, F64, perturb=1.0)
    naive = model.lipsdp_bound("naive")
    assert naive > 1.0 and naive == pytest.approx(model.lipsdp_bound("naive", blockwise=True), rel=1e-9)


# ------------------------------------------------------------------------------ finite differences
def _max_quotient(model, x0: torch.Tensor, steps: int = 30) -> float:
    """Largest ``‖f(x) − f(y)‖ / ‖x − y‖`` seen while Adam pushes it up from pairs near ``x0`` (float64)."""
    g = torch.Generator().manual_seed(5)
    x = x0.clone().requires_grad_(True)
    d = (1e-2 * torch.randn(x0.shape, generator=g, dtype=F64)).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=0.02)
    best = 0.0
    for _ in range(steps + 1):
        q = (model(x) - model(x + d)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
    return best


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("p", BOUNDED)
def test_finite_difference_quotients_stay_below_gamma(p, gamma, digits):
    model = _model(p, gamma, F64)
    for q in model.parameters():
        q.requires_grad_(False)
    q = _max_quotient(model, digits.X_test[:16].double())
    assert 0.0 < q <= gamma * (1 + 1e-9)


def test_finite_difference_quotients_exceed_a_false_claim():
    """The attack is not vacuous: on an unconstrained CNN it finds quotients above what lipsdp would not certify."""
    model = _model("unconstrained", 1.0, F64, perturb=1.0)
    for q in model.parameters():
        q.requires_grad_(False)
    q = _max_quotient(model, _images(16, F64))
    assert 1.0 < q <= model.lipsdp_bound("naive")


# ------------------------------------------------------------------------------ training and certification
@pytest.mark.parametrize("p", CNN_PARAMETERIZATIONS)
def test_train_one_epoch_and_certified_accuracy(p, digits, tmp_path):
    torch.manual_seed(0)
    model = lmi.lipschitz_cnn(SHAPE, 10, p, **SMALL)
    path = tmp_path / "ck.pt"
    hist = lmi.train(model, digits.X_train, digits.y_train, digits.X_test, digits.y_test, epochs=1, batch_size=32,
                     lr=5e-3, eps_train=36 / 255, progress=False, checkpoint=str(path))
    assert len(hist.loss) == 1 and np.isfinite(hist.loss[0])
    ck = lmi.load_checkpoint(str(path))
    assert ck["epoch"] == 1 and ck["input_shape"] == list(SHAPE)
    eps = [0.0, 36 / 255, 72 / 255, 108 / 255, 1.0]
    if p == "unconstrained":  # no bound by construction: lipsdp's certified one
        L = model.lipsdp_bound("naive")
        L_body = float(lipsdp.estimate(lmi.export_sequential(model.body, in_channels=1), method="naive",
                                       input_shape=SHAPE))
        options = model.per_pair_options(body_lipschitz=L_body)
    else:
        L, options = model.lipschitz_bound(), model.per_pair_options()
    pairwise = lmi.certified_accuracy(model, digits.X_test, digits.y_test, eps, lipschitz=L)
    per_pair = lmi.certified_accuracy(model, digits.X_test, digits.y_test, eps, lipschitz=L, per_pair=True,
                                      **options)
    for acc in (pairwise, per_pair):
        assert np.all((acc >= 0) & (acc <= 1)) and np.all(np.diff(acc) <= 0)
    assert np.all(per_pair >= pairwise)  # the per-pair rule takes the smaller constant pair by pair
    with torch.no_grad():
        clean = float((model(digits.X_test).argmax(1) == digits.y_test).double().mean())
    assert pairwise[0] == pytest.approx(clean) and hist.test_metric[0] == pytest.approx(clean)
    # by hand: margin > sqrt(2) L eps, with the logits the model computes
    with torch.no_grad():
        z = model(digits.X_test).double()
    true = z.gather(1, digits.y_test[:, None])[:, 0]
    other = z.scatter(1, digits.y_test[:, None], -math.inf).amax(1)
    by_hand = float(((true - other) > math.sqrt(2) * L * 36 / 255 * (1 + 1e-12)).double().mean())
    assert pairwise[1] == pytest.approx(by_hand, abs=1.5 / len(z))


def test_lln_head_works_with_the_per_pair_rule_directly(digits):
    torch.manual_seed(0)
    model = lmi.lipschitz_cnn(SHAPE, 10, "cayley", head="lln", **SMALL)
    lmi.train(model, digits.X_train, digits.y_train, epochs=1, batch_size=32, lr=5e-3, progress=False)
    acc = lmi.certified_accuracy(model, digits.X_test, digits.y_test, [0.0, 0.5], per_pair=True)
    explicit = lmi.certified_accuracy(model, digits.X_test, digits.y_test, [0.0, 0.5], per_pair=True,
                                      **model.per_pair_options())
    np.testing.assert_allclose(acc, explicit)


# ------------------------------------------------------------------------------ the bench
def test_bench_conv_quick_writes_its_table_and_figure(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_conv.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with open(tmp_path / "bench_conv.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["parameterization"] for r in rows} >= {"sandwich", "unconstrained"}
    for r in rows:
        assert r["status"] == "ok", r
        for key in ("clean_acc", "cert_acc_36", "cert_acc_255"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert float(r["cert_acc_255"]) <= float(r["cert_acc_36"]) <= float(r["clean_acc"])
        if r["parameterization"] != "unconstrained":
            assert float(r["lipsdp_bound"]) <= float(r["gamma"]) * (1 + 1e-6)
    assert (tmp_path / "bench_conv.png").stat().st_size > 0


def test_bench_conv_update_replaces_only_the_rerun_rows(tmp_path):
    """``--update``: rows of the rerun cases are replaced in place, every other row is kept, ratios recomputed."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_conv
    finally:
        sys.path.remove(str(ROOT / "bench"))
    old = [{"dataset": d, "parameterization": p, "step_ms": ms, "gamma": 1.0, "status": "ok"}
           for d, p, ms in [("a", "sandwich", 30.0), ("a", "cayley", 20.0), ("a", "unconstrained", 5.0),
                            ("b", "sandwich", 40.0)]]
    with open(tmp_path / "bench_conv.csv", "w", newline="") as fh:  # the CSV an earlier run left
        writer = csv.DictWriter(fh, fieldnames=bench_conv.COLUMNS)
        writer.writeheader()
        writer.writerows(old)
    new = [{"dataset": "a", "parameterization": "sandwich", "step_ms": 12.0, "gamma": 1.0, "status": "ok"},
           {"dataset": "a", "parameterization": "unconstrained", "step_ms": 4.0, "gamma": 1.0, "status": "ok"},
           {"dataset": "c", "parameterization": "aol", "step_ms": 9.0, "gamma": 1.0, "status": "ok"}]
    merged = bench_conv.merge_rows(bench_conv.read_rows(tmp_path / "bench_conv.csv"), new)
    assert [(r["dataset"], r["parameterization"], r["step_ms"]) for r in merged] == [
        ("a", "sandwich", 12.0), ("a", "cayley", 20.0), ("a", "unconstrained", 4.0), ("b", "sandwich", 40.0),
        ("c", "aol", 9.0)]
    assert bench_conv._finish(merged) == []
    assert [r["step_ratio"] for r in merged[:3]] == [3.0, 5.0, 1.0] and math.isnan(merged[3]["step_ratio"])


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("p", CNN_PARAMETERIZATIONS)
def test_cnn_trains_and_exports_on_cuda(p, digits):
    d = lmi.load_images("digits", n=64, device="cuda")
    torch.manual_seed(0)
    model = lmi.lipschitz_cnn(SHAPE, 10, p, device="cuda", **SMALL)
    lmi.train(model, d.X_train, d.y_train, epochs=1, batch_size=32, progress=False)
    plain = lmi.to_plain(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(d.X_test), model(d.X_test), atol=1e-4, rtol=1e-4)
    if p != "unconstrained":
        assert model.lipsdp_bound(blockwise=True) <= model.lipschitz_bound() * (1 + 1e-6)
