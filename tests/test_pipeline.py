"""One solve-and-certify pipeline (issue 18): ℓ∞ rows through it, the exact lift of normalised
multipliers in both norms, the immutable result, and no process-global state left changed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lipsdp
from lipsdp import formulations as fm
from lipsdp import runtime
from lipsdp.bound import LipschitzBound
from lipsdp.certificate import certify
from lipsdp.graph import build_graph
from lipsdp.linf import linf_sdp
from lipsdp.solver_registry import solve


def _chain(seed: int, widths=(3, 5, 4, 2), activation="relu") -> lipsdp.Network:
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((widths[k + 1], widths[k])) * (1 + 3 * k) for k in range(len(widths) - 1)]
    return lipsdp.Network.from_weights(ws, activation=activation)


# ------------------------------------------------------------------ the lift of normalised multipliers
def _old_l2_lift(norm: fm.Normalisation, y, var_layer):
    """The ℓ2 lift as it was written before the ℓ∞ one joined it: Π_{k>j} (c_k β_{k−1})² / β_j²."""
    moved = np.ones(norm.factors.size) if norm.slopes is None else np.r_[1.0, norm.slopes]
    suffix = np.append(np.cumprod(((norm.factors * moved) ** 2)[::-1])[::-1], 1.0)
    return y * suffix[var_layer] / moved[var_layer] ** 2


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_l2_lift_is_the_former_formula(activation):
    net = _chain(0, (3, 6, 5, 4, 2), activation)
    _, norm = fm.normalise_chain(net)
    var_layer = np.repeat(np.arange(4), 3)
    y = np.random.default_rng(1).random(var_layer.size)
    np.testing.assert_allclose(norm.lift_multipliers(y, var_layer, 2), _old_l2_lift(norm, y, var_layer), rtol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_linf_lift_certifies_on_the_original_network(activation):
    """Solve the ℓ∞ row program of the normalised chain (weights and slopes divided), lift the
    multipliers with norm=inf and certify them on the original chain's program: the certified value
    must match the normalised optimum times P (it is the same SDP, rescaled)."""
    net = _chain(2, (3, 5, 4, 2), activation)
    work, norm = fm.normalise_chain(net)
    c = np.array([1.0, -1.0])
    sdp_hat, sdp = linf_sdp(build_graph(work), c), linf_sdp(build_graph(net), c)
    y_hat = solve(sdp_hat.with_margin(1e-8), "ipm").y
    y = norm.lift_multipliers(y_hat, sdp_hat.var_layer, np.inf)
    cert = certify(sdp, y)
    assert float(cert.value) == pytest.approx(y_hat[0] * norm.product, rel=1e-6)
    # and the ℓ2 lift would be wrong here (the ℓ∞ LMI is of degree one in the output)
    wrong = norm.lift_multipliers(y_hat, sdp_hat.var_layer, 2)
    assert not np.allclose(wrong, y)


def test_linf_bound_independent_of_the_normalisation():
    """reduce=True (normalised chain, lifted back) and reduce=False (solved as given) agree, and both
    lie above the sampled ℓ∞ lower bound."""
    from lipsdp.linf import linf_lower_bound

    net = _chain(3, (4, 6, 5, 3), "sigmoid")
    a = lipsdp.estimate(net, method="lipsdp-neuron", norm=np.inf, solver="ipm")
    b = lipsdp.estimate(net, method="lipsdp-neuron", norm=np.inf, solver="ipm", reduce=False)
    assert a.value == pytest.approx(b.value, rel=1e-5)
    assert min(a.value, b.value) >= linf_lower_bound(net) * (1 - 1e-9)
    assert set(a.details["per_row"]) == {"0", "1", "2"} and a.value == max(a.details["per_row"].values())


def test_linf_row_that_ignores_the_network_is_zero():
    """A functional cᵀy with Wᵀc = 0 costs nothing and is 0; the other row is solved."""
    w_last = np.array([[1.0, 2.0], [0.0, 0.0]])
    net = lipsdp.Network.from_weights([np.array([[1.0, 0.5], [0.2, -1.0]]), w_last])
    b = lipsdp.estimate(net, method="lipsdp-neuron", norm=np.inf)
    assert b.details["per_row"]["1"] == 0.0 and b.details["argmax_row"] == "0"
    # f_0 = relu(x₁ + x₂/2) + 2 relu(x₁/5 − x₂): with both units active its gradient is (1.4, −1.5),
    # so its ℓ∞ constant is 2.9; no bound may be below it, nor above the product of ∞-norms
    naive = lipsdp.estimate(net, method="naive", norm=np.inf).value
    assert 2.9 * (1 - 1e-12) <= b.details["per_row"]["0"] <= naive


# ------------------------------------------------------------------ the result
def test_bound_is_frozen_and_keyword_only():
    b = LipschitzBound(value=1.0, raw_value=1.0, method="m", solver="none", status="closed-form", solve_time=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.value = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        LipschitzBound(1.0, 1.0, "m", "none", "closed-form", 0.0)  # type: ignore[misc]
    assert dataclasses.replace(b, method="n").method == "n" and b.method == "m"
    assert lipsdp.LipschitzBound is LipschitzBound


def test_rr_uses_the_public_entry():
    import lipsdp.bound_methods
    import lipsdp.rr as rr

    assert not hasattr(rr, "_lipsdp") and rr.run_lipsdp is lipsdp.bound_methods.run_lipsdp


# ------------------------------------------------------------------ process-global state
def _blas_counts():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [(lib["filepath"], lib["num_threads"]) for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


def test_estimate_restores_blas_threads():
    """After an estimate (which runs small LMIs single-threaded) every BLAS library has the thread
    count it had before: the default one, and one the user set; also when the solve raises."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    net = _chain(4)
    before = _blas_counts()
    lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm")
    assert _blas_counts() == before
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        user = _blas_counts()
        lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm", heap_reuse=True)
        with pytest.raises(lipsdp.errors.LipSDPError):
            lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm", max_iters=1)
        assert _blas_counts() == user
    assert _blas_counts() == before


class _RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_malloc_settings_only_on_request(monkeypatch):
    """By default no estimate calls mallopt; the ipm's heap_reuse=True sets the thresholds for the
    solve and puts glibc's initial values back afterwards, also when the solve raises."""
    fake = _RecordingLibc()
    monkeypatch.setattr(runtime, "_load_glibc", lambda: fake)
    net = _chain(5)
    lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm")
    lipsdp.estimate(net, method="lipsdp-neuron", norm=np.inf, solver="ipm")
    assert fake.calls == []
    lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm", heap_reuse=True)
    restored = [(runtime._M_MMAP_THRESHOLD, runtime._GLIBC_DEFAULT_THRESHOLD),
                (runtime._M_TRIM_THRESHOLD, runtime._GLIBC_DEFAULT_THRESHOLD), ("trim", 0)]
    assert fake.calls[-3:] == restored and len(fake.calls) == 5
    fake.calls.clear()
    with pytest.raises(lipsdp.errors.LipSDPError):
        lipsdp.estimate(net, method="lipsdp-neuron", solver="ipm", heap_reuse=True, max_iters=1)
    assert fake.calls[-3:] == restored and runtime._heap_depth == 0


def test_heap_reuse_nested_and_disabled(monkeypatch):
    fake = _RecordingLibc()
    monkeypatch.setattr(runtime, "_load_glibc", lambda: fake)
    with runtime.heap_reuse(enabled=False):
        pass
    assert fake.calls == []
    with runtime.heap_reuse():
        with runtime.heap_reuse():
            assert len(fake.calls) == 2  # the inner context leaves the settings to the outer one
        assert len(fake.calls) == 2
    assert len(fake.calls) == 5 and runtime._heap_depth == 0


def test_blas_threads_can_be_left_alone(monkeypatch):
    """LIPSDP_KEEP_BLAS_THREADS=1: a user's thread count stays as it is inside the context too."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("LIPSDP_KEEP_BLAS_THREADS", "1")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        user = _blas_counts()
        with runtime.blas_threads(1):
            assert _blas_counts() == user


def test_public_functions_do_not_shadow_submodules():
    """``lipsdp.methods``/``solvers``/``certify`` are functions; no submodule of the package has those names."""
    import importlib
    import pkgutil

    submodules = {info.name for info in pkgutil.iter_modules(lipsdp.__path__)}
    for name in ("methods", "solvers", "certify"):
        assert callable(getattr(lipsdp, name)) and name not in submodules
    for module in ("bound_methods", "solver_registry", "certificate"):
        assert module in submodules and importlib.import_module(f"lipsdp.{module}")
