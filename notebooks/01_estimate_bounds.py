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
# # Estimating Lipschitz bounds of a digits classifier
#
# We train a small MLP on scikit-learn's bundled digits (64 inputs, 10 classes),
# describe it as a `lipsdp.Network`, and compare certified **upper** bounds on its
# ℓ2 Lipschitz constant (product of norms, ECLipsE-Fast, LipSDP-Layer,
# LipSDP-Neuron) with a **lower** bound found by gradient ascent on ‖J(x)‖₂.
# The true constant lies between the best lower bound and the best upper bound.

# %%
from pathlib import Path

import lipsdp
from lipsdp.suite import digits_data, network_from_sklearn, plot_comparison, train_digits_mlp

ROOT = Path.cwd() if (Path.cwd() / "lipsdp").is_dir() else Path.cwd().parent
RESULTS = ROOT / "results"

# %% [markdown]
# ## Train a 64-32-32-10 ReLU network (a few seconds)

# %%
clf = train_digits_mlp(hidden=(32, 32), activation="relu", seed=0, max_iter=150)
x, y = digits_data()
print(f"training accuracy: {clf.score(x, y):.3f}")
net = network_from_sklearn(clf)
net

# %% [markdown]
# ## One method at a time: `lipsdp.estimate`
# Each result is certified: the solver's multipliers are re-checked in float64.

# %%
for method in ["naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron"]:
    bound = lipsdp.estimate(net, method=method)
    print(f"{method:>14}: {bound.value:9.4f}  ({bound.solver}, {bound.status}, {bound.solve_time:.2f} s)")

# %% [markdown]
# ## All at once: `lipsdp.compare`
# The `lower` row is a true lower bound (‖J(x)‖₂ at a point found by ascent);
# `gap` is each value divided by the best lower bound.

# %%
table = lipsdp.compare(net, methods=["naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lower"])
table

# %%
upper = table.loc[table["method"] != "lower", "value"].min()
lower = table.loc[table["method"] == "lower", "value"].max()
assert lower <= upper, "a lower bound can never exceed a certified upper bound"
print(f"the Lipschitz constant lies in [{lower:.4f}, {upper:.4f}]")

# %% [markdown]
# ## Figure

# %%
figure = plot_comparison(table.assign(network="relu-64-32-32-10"), RESULTS / "01_estimate_bounds.png",
                         title="Bounds on a digits MLP")
print(f"saved {figure.relative_to(ROOT)}")
