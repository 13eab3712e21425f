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
# # Certified Lipschitz bounds of a small CNN
#
# We train a two-convolution CNN on scikit-learn's bundled digits, read as 8x8
# images, and bound its ℓ2 Lipschitz constant: lipsdp reads the convolutions as
# structured linear maps (`input_shape=(1, 8, 8)` tells it the shape of one
# image), certifies **upper** bounds with three methods, and finds a **lower**
# bound by gradient ascent. The true constant lies between the best lower bound
# and the best upper bound.
#
# Figures go to `results/` of this checkout, or to the directory named by the
# environment variable `LIPSDP_RESULTS`.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from torch import nn

import lipsdp
from bound_figures import plot_bound_ratios, save_figure
from lipsdp.certificate import spectral_norm_bound

INPUT_SHAPE = (1, 8, 8)  # one image: 1 channel, 8x8 pixels

# %% [markdown]
# ## Train the CNN (a few seconds, CPU, seeded)
# `Conv2d(1, 8, 3, padding=1)`, ReLU, `Conv2d(8, 16, 3, stride=2, padding=1)`,
# ReLU, `Flatten`, `Linear(256, 10)`; pixels scaled to [0, 1]; a fifth of the
# images is held out.

# %%
digits = load_digits()
images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
labels = torch.tensor(digits.target)
generator = torch.Generator().manual_seed(0)
order = torch.randperm(len(labels), generator=generator)
test, train = order[:360], order[360:]

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
    nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(10):
    for batch in train[torch.randperm(len(train), generator=generator)].split(64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
print(f"held-out accuracy: {accuracy:.3f}")

# %% [markdown]
# ## How lipsdp reads it
# Each convolution becomes a linear map of the flattened feature maps (no matrix
# is stored); the bias does not change the Lipschitz constant.

# %%
net = lipsdp.Network.from_torch(model, input_shape=INPUT_SHAPE)
print(net)

# %% [markdown]
# ## Certified norm of each layer
# `lipsdp.conv_norm` bounds ‖A‖₂ of a convolution's linear map `A` (on its
# input's shape) from both sides: `upper` is certified — computed from the kernel's
# Fourier symbol with every floating-point rounding accounted for — and `lower`
# is ‖Ax‖/‖x‖ at the vector x that power iteration found, a value `A` attains
# (rounding subtracted). The dense layer's ‖W‖₂ is certified by
# `lipsdp.certificate.spectral_norm_bound` (its `lower` is the SVD's σ₁). The
# product of these bounds is the naive bound of the network (ReLU is
# 1-Lipschitz).

# %%
rows, shape = [], INPUT_SHAPE
for name, module in model.named_children():
    if isinstance(module, nn.Conv2d):
        result = lipsdp.conv_norm(module, shape)
        rows.append({"layer": f"{name}: Conv2d {module.in_channels}->{module.out_channels}, stride {module.stride[0]}",
                     "input": "x".join(map(str, shape)), "upper (certified)": result.upper,
                     "lower (attained)": result.lower})
    with torch.no_grad():
        shape = tuple(module(torch.zeros((1,) + shape)).shape[1:])
dense = model[-1].weight.detach().double().numpy()
dense_norm = math.ldexp(*spectral_norm_bound(dense))
rows.append({"layer": f"{len(model) - 1}: Linear 256->10", "input": "256", "upper (certified)": dense_norm,
             "lower (attained)": float(np.linalg.svd(dense, compute_uv=False)[0])})
layers = pd.DataFrame(rows)
print(f"product of the certified layer norms: {layers['upper (certified)'].prod():.4f}")
layers.round(6)

# %% [markdown]
# ## All methods at once: `lipsdp.compare`
# * `naive`: the product of the certified per-layer norms above.
# * `lipsdp-layer`, `lipsdp-neuron`: LipSDP (Fazlyab et al., NeurIPS 2019) — the
#   smallest ρ such that a linear matrix inequality holds, in which every ReLU is
#   described by the quadratic constraint of a function with slopes in [0, 1];
#   one multiplier per layer (`layer`) or per neuron (`neuron`). The solver's
#   answer is re-checked in float64, so the value is certified.
# * `lower`: the largest ‖J(x)‖₂ found by gradient ascent over inputs x — a
#   value the network attains, hence a lower bound on its constant.
#
# `gap` is each value divided by the best lower bound.

# %%
table = lipsdp.compare(model, methods=["naive", "lipsdp-layer", "lipsdp-neuron", "lower"], input_shape=INPUT_SHAPE,
                       progress=False)
table[["method", "value", "gap", "solver", "status", "solve_time"]].round(4)

# %%
upper = table.loc[table["method"] != "lower", "value"].min()
lower = table.loc[table["method"] == "lower", "value"].max()
assert lower <= upper, "a lower bound can never exceed a certified upper bound"
print(f"the Lipschitz constant lies in [{lower:.4f}, {upper:.4f}]")

# %% [markdown]
# ## Why the SDP is tighter than the product of norms
# The product assumes the worst case at every layer at once: that the input
# direction the first convolution stretches most is exactly the one the next
# layer stretches most, and that the ReLUs in between pass it unchanged. A ReLU
# network cannot always do that — the ReLU multiplies each coordinate by its own
# slope in [0, 1], and the slopes follow from the input. LipSDP keeps the layers
# together in one inequality and only uses what is true of every such slope
# pattern, so it can prove a smaller constant; one multiplier per neuron gives
# it more freedom than one per layer, hence `lipsdp-neuron` ≤ `lipsdp-layer`.
# The gap left between the best upper bound and the lower bound is the part
# neither side resolves: the truth lies somewhere in it.

# %% [markdown]
# ## Figure
# Each certified upper bound divided by the lower bound (the dashed line at 1).

# %%
NAME = "digits CNN 1x8x8"
uppers = table[table["method"] != "lower"].set_index("method")["value"].rename(NAME).to_frame().T
fig, ax = plot_bound_ratios(uppers, pd.Series({NAME: lower}),
                            title="Certified upper bounds on a digits CNN, relative to a lower bound",
                            lower_label="largest ‖J(x)‖₂ found by gradient ascent")
print("saved", save_figure(fig, "04_cnn_bounds.png"))
plt.show()
