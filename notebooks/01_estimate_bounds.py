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
# LipSDP-Neuron) with a **lower** bound: the largest Jacobian norm ‖J(x)‖₂ found
# by gradient ascent over inputs x. Every ‖J(x)‖₂ is attained, so the true
# constant lies between the best lower bound and the best upper bound.
#
# Figures go to `results/` of this checkout, or to the directory named by the
# environment variable `LIPSDP_RESULTS`.

# %%
import matplotlib.pyplot as plt
import pandas as pd

import lipsdp
from bound_figures import plot_bound_ratios, save_figure
from lipsdp.suite import digits_data, network_from_sklearn, train_digits_mlp

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
# Each result is certified: the LMI is re-checked in float64 at the multipliers
# the solver (or ECLipsE-Fast's closed form) returned, and the naive product
# multiplies spectral-norm bounds whose rounding is accounted for.

# %%
for method in ["naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron"]:
    bound = lipsdp.estimate(net, method=method)
    print(f"{method:>14}: {bound.value:9.4f}  ({bound.solver}, {bound.status}, {bound.solve_time:.2f} s)")

# %% [markdown]
# ## All at once: `lipsdp.compare`
# The `lower` row is the gradient-ascent lower bound
# (`lipsdp.lower.gradient_lower_bound` with its defaults: from the 20 best of
# 1024 sampled inputs, 200 steps of ascent on ‖J(x)‖₂ with the ReLU kinks
# smoothed, then the exact ‖J(x)‖₂ at the best point); `gap` is each value divided by
# the best lower bound. The full table also has a `certificate_margin` column
# for the methods whose LMI was re-checked.

# %%
table = lipsdp.compare(net, methods=["naive", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lower"])
table[["method", "value", "gap", "solver", "status", "solve_time"]]

# %%
upper = table.loc[table["method"] != "lower", "value"].min()
lower = table.loc[table["method"] == "lower", "value"].max()
assert lower <= upper, "a lower bound can never exceed a certified upper bound"
print(f"the Lipschitz constant lies in [{lower:.4f}, {upper:.4f}]")

# %% [markdown]
# ## Figure
# Each upper bound divided by the lower bound (the dashed line at 1). The true
# constant lies between that line and the lowest bar, so a bar of height 1.5
# says that bound is at most 50 % above the true constant.

# %%
NAME = "relu-64-32-32-10"
uppers = table[table["method"] != "lower"].set_index("method")["value"].rename(NAME).to_frame().T
fig, ax = plot_bound_ratios(uppers, pd.Series({NAME: lower}),
                            title="Certified upper bounds on a digits MLP, relative to a lower bound",
                            lower_label="largest ‖J(x)‖₂ found by gradient ascent")
print("saved", save_figure(fig, "01_estimate_bounds.png"))
plt.show()
