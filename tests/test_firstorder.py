"""The first-order LipSDP solver: certified, between the SDP optimum and ECLipsE-Fast."""

import numpy as np
import pytest

import lipsdp
from lipsdp import formulations as fm
from lipsdp.errors import SolverFailedError
from lipsdp.firstorder import solve_firstorder
from lipsdp.network import Network



def _net(seed, widths, act):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((widths[i + 1], widths[i])) / np.sqrt(widths[i]) for i in range(len(widths) - 1)]
    return Network.from_weights(ws, [np.zeros(w.shape[0]) for w in ws], [act] * (len(ws) - 1))


CASES = [(s, w, a) for s, (w, a) in enumerate([
    ((4, 8, 8, 3), "relu"), ((6, 16, 12, 4), "relu"), ((3, 10, 2), "relu"), ((5, 12, 12, 1), "relu"),
    ((4, 8, 8, 3), "tanh"), ((6, 16, 12, 4), "tanh"), ((3, 10, 2), "tanh"), ((8, 6, 6, 6, 3), "relu"),
])]


@pytest.mark.parametrize("seed,widths,act", CASES)
def test_between_sdp_optimum_and_eclipse(seed, widths, act):
    net = _net(seed, widths, act)
    opt = lipsdp.estimate(net, solver="ipm").value
    ecl = lipsdp.estimate(net, method="eclipse-fast").value
    fo = lipsdp.estimate(net, solver="firstorder", time_limit=120.0, max_iters=300)  # iteration-bound: deterministic
    assert fo.solver == "firstorder"
    assert fo.value >= opt * (1 - 1e-9)
    assert fo.value <= ecl * (1 + 1e-9)
    assert fo.value <= opt * 1.05


def test_unsupported_sdp_raises_typed_error():
    net = _net(0, (4, 8, 8, 3), "relu")
    work, _ = fm.normalise_chain(net)
    from dataclasses import replace

    from lipsdp.bound_methods import _graph_builder

    one = _graph_builder("neuron")(work, True)
    sdp = replace(one, blocks=one.blocks * 2)  # multi-block form: not handled
    with pytest.raises(SolverFailedError):
        solve_firstorder(sdp)


def test_result_is_feasible_not_optimal():
    from lipsdp.bound_methods import _graph_builder

    work, _ = fm.normalise_chain(_net(1, (4, 8, 8, 3), "relu"))
    res = solve_firstorder(_graph_builder("neuron")(work, True), time_limit=120.0, max_iters=50)
    assert res.status == "feasible" and res.solver == "firstorder"
    assert res.objective <= res.info["start_value"]
