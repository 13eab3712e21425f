# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Beyond slope-restricted activations: MaxMin networks
#
# MaxMin (GroupSort with groups of 2) is not slope-restricted, so plain LipSDP does
# not apply.  We compare four certified upper bounds and one lower bound on the
# published MaxMin networks of Pauli et al. (ICLR 2024), depths 2–8:
#
# * **naive**: product of spectral norms;
# * **LipSDP-RR**: MaxMin rewritten as a residual ReLU network, then LipSDP
#   (its LMI has three times as many neurons as the networks themselves);
# * **new QCs**: the GroupSort quadratic constraints with ``S = P = 0`` (the
#   published "chain" values);
# * **new QCs, exact**: the same QCs posed on the subspace where the activation's
#   sum invariant holds (``cross_terms="exact"``: as tight as any ``S, P``);
# * **lower**: the largest Jacobian norm ‖J(x)‖₂ found at sampled inputs and
#   by a few hill-climbing moves from the best of them; every ‖J(x)‖₂ is
#   attained, so the true Lipschitz constant lies between it and every upper bound.
#
# The anchor weights are read from `../shared` when it exists; otherwise random
# MaxMin weights of the same shapes stand in (the statements below are checked
# on whichever weights ran).  Figures go to `results/` of this checkout, or to
# the directory named by the environment variable `LIPSDP_RESULTS`.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.io as sio
from threadpoolctl import threadpool_limits

import lipsdp
from bound_figures import plot_bound_ratios, save_figure
from lipsdp.group_activations import GroupSort
from lipsdp.lower import gradient_lower_bound


def find_shared() -> Path | None:
    for base in (Path.cwd(), Path.cwd().parent):
        if (base.parent / "shared" / "anchors" / "maxmin").exists():
            return base.parent / "shared"
    return None


SHARED = find_shared()
NAMES = ["2fc_16", "2fc_32", "5fc_32", "8fc_32"]


def load(name: str) -> list[np.ndarray]:
    """Anchor weights, or random MaxMin weights of the same shape when ../shared is absent."""
    if SHARED is not None:
        cell = sio.loadmat(SHARED / "anchors" / "maxmin" / f"weights_l2_{name}.mat")["W"]
        return [np.asarray(cell[0, i], float) for i in range(cell.shape[1])]
    depth, width = int(name.split("fc_")[0]), int(name.split("_")[1])
    rng = np.random.default_rng(depth * width)
    widths = [784] + [width] * (depth - 1) + [10]
    return [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(depth)]


print("anchors from", SHARED if SHARED else "random weights (../shared not found)")

# %% [markdown]
# The lower bound is `gradient_lower_bound(net, n_starts=4, steps=8, n_samples=256)`:
# among 256 random inputs, the 4 with the largest ‖J(x)‖₂ are moved by hill
# climbing (MaxMin is not elementwise, so there is no smoothed gradient to follow:
# `steps // 4 = 2` rounds, each trying ±the top right singular vector of J(x) and
# a random direction at three step sizes).  It only anchors the comparison, so a
# cheap one suffices.
#
# Everything runs with one BLAS thread: the solves and the Jacobian products of
# the lower bound are small dense operations, where extra threads add
# synchronisation and contend with whatever else runs on the machine.

# %%
METHODS = {"naive": dict(method="naive"), "LipSDP-RR": dict(method="lipsdp-rr"), "new QCs": {},
           "new QCs, exact": dict(cross_terms="exact")}


def timed(label: str, name: str, compute) -> dict:
    start = time.perf_counter()
    value = float(compute())
    return dict(net=name, bound=label, value=value, seconds=time.perf_counter() - start)


rows = []
with threadpool_limits(limits=1):
    for name in NAMES:
        net = lipsdp.Network.from_weights(load(name), activation=GroupSort(2))
        rows += [timed(label, name, lambda: lipsdp.estimate(net, **kwargs)) for label, kwargs in METHODS.items()]
        rows.append(timed("lower", name, lambda: gradient_lower_bound(net, n_starts=4, steps=8, n_samples=256)))
table = pd.DataFrame(rows)
pivot = table.pivot(index="net", columns="bound", values="value").loc[NAMES, [*METHODS, "lower"]]
pivot.round(3)

# %% [markdown]
# Every certified value is above the lower bound; the new QCs beat both the
# naive product and LipSDP-RR, and the exact subspace variant is tighter still.
# LipSDP-RR, on the other hand, can be looser than the naive product (the cell
# below prints where).  It checks these statements on the values above.

# %%
certified = pivot.drop(columns="lower")
assert certified.ge(pivot["lower"] * (1 - 1e-9), axis=0).all().all(), "an upper bound below a lower bound"
assert (pivot["new QCs"] <= pivot[["naive", "LipSDP-RR"]].min(axis=1)).all()
assert (pivot["new QCs, exact"] <= pivot["new QCs"] * (1 + 1e-6)).all()
print("LipSDP-RR looser than naive on:", list(pivot.index[pivot["LipSDP-RR"] > pivot["naive"]]) or "none")

# %% [markdown]
# ## Figure
# Each upper bound divided by the network's lower bound (the dashed line at 1).
# The true constant lies in between, so a bar of height 2.5 says the bound is
# within a factor 2.5 of the truth; how that factor splits between the upper
# and the lower bound, no bar can tell.

# %%
fig, ax = plot_bound_ratios(certified.rename(index=lambda n: f"{n} (MaxMin)"),
                            pivot["lower"].rename(index=lambda n: f"{n} (MaxMin)"),
                            title="MaxMin networks: certified upper bounds relative to a lower bound",
                            lower_label="largest ‖J(x)‖₂ found by sampling + hill climbing")
print("saved", save_figure(fig, "02_beyond_slope_restricted.png"))
plt.show()

# %% [markdown]
# Seconds per bound and network:

# %%
table.pivot(index="net", columns="bound", values="seconds").loc[NAMES, [*METHODS, "lower"]].round(2)
