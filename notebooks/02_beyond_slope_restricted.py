# ---
# jupyter:
#   jupytext:
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
#   (only on the 2-layer nets: its LMI is three times larger);
# * **new QCs**: the GroupSort quadratic constraints with ``S = P = 0`` (the
#   published "chain" values);
# * **new QCs, exact**: the same QCs posed on the subspace where the activation's
#   sum invariant holds (``cross_terms="exact"``: as tight as any ``S, P``);
# * **lower**: gradient-ascent lower bound (a true Lipschitz constant is in between).

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.io as sio

import lipsdp
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

# %%
rows = []
for name in NAMES:
    net = lipsdp.Network.from_weights(load(name), activation=GroupSort(2))
    methods = {"naive": dict(method="naive"), "new QCs": {}, "new QCs, exact": dict(cross_terms="exact")}
    if name.startswith("2fc"):
        methods["LipSDP-RR"] = dict(method="lipsdp-rr")
    for label, kwargs in methods.items():
        start = time.perf_counter()
        value = lipsdp.estimate(net, **kwargs).value
        rows.append(dict(net=name, bound=label, value=value, seconds=time.perf_counter() - start))
    start = time.perf_counter()
    lower = gradient_lower_bound(net, n_starts=4, steps=20, n_samples=256).value
    rows.append(dict(net=name, bound="lower", value=lower, seconds=time.perf_counter() - start))
table = pd.DataFrame(rows)
table.pivot(index="net", columns="bound", values="value").loc[NAMES].round(3)

# %% [markdown]
# Every certified value is above the lower bound, and the new QCs beat both the
# naive product and LipSDP-RR; the exact subspace variant is tighter still.

# %%
order = ["naive", "LipSDP-RR", "new QCs", "new QCs, exact", "lower"]
pivot = table.pivot(index="net", columns="bound", values="value").loc[NAMES]
pivot = pivot[[c for c in order if c in pivot.columns]]
for name in NAMES:
    certified = pivot.loc[name].drop("lower").dropna()
    assert (certified >= pivot.loc[name, "lower"] * (1 - 1e-9)).all()

fig, ax = plt.subplots(figsize=(8, 4))
width = 0.8 / len(pivot.columns)
for i, column in enumerate(pivot.columns):
    ax.bar(np.arange(len(NAMES)) + (i - (len(pivot.columns) - 1) / 2) * width, pivot[column], width, label=column)
ax.set_xticks(np.arange(len(NAMES)), [f"{n} (MaxMin)" for n in NAMES])
ax.set_yscale("log")
ax.set_ylabel("ℓ2 Lipschitz bound")
ax.set_title("MaxMin networks: certified upper bounds vs a lower bound")
ax.legend(fontsize=8)

# %%
from lipsdp.io import atomic_path

results = Path.cwd().parent / "results" if Path.cwd().name == "notebooks" else Path.cwd() / "results"
with atomic_path(results / "02_beyond_slope_restricted.png") as tmp:
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
table.groupby("bound")["seconds"].sum().round(2)
