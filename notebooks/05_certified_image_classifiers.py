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
# # Certified image classifiers (lmi.lipschitz_cnn)
#
# A classifier whose logits are γ-Lipschitz in the ℓ2 norm cannot change its prediction at an
# image x within radius ε when its logit margin exceeds √2·γ·ε (the *pairwise rule*); knowing
# the last layer's rows w_i gives the tighter *per-pair rule* f_y − f_j > L_body·‖w_y − w_j‖·ε.
# We train two γ = 1 CNNs of the same "2C2F" shape (two convolutions, two dense layers, after
# LipKernel, Pauli et al. 2024) on a slice of Fashion-MNIST, in pixel scale [0, 1] as the
# literature reports ε (36/255, 72/255, 108/255):
#
# * **sandwich**: Fourier-domain sandwich convolutions (Wang & Manchester, ICML 2023), one
#   LipSDP certificate per layer;
# * **cayley**: orthogonal convolutions by the Cayley transform (Trockman & Kolter, ICLR 2021),
#   the baseline.
#
# Then lipsdp re-certifies each trained model independently, from its plain torch export
# (`lmi.to_plain`: `nn.Conv2d`, `nn.Linear`, ReLU), and we plot certified accuracy against ε.
#
# The figure goes to `results/` of this checkout, or to the directory named by the
# environment variable `LIPSDP_RESULTS`.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import lmi
from bound_figures import save_figure

torch.set_num_threads(1)  # small batched FFTs and solves: one thread is fastest
GAMMA = 1.0
PARAMS = ("sandwich", "cayley")
CHANNELS, HIDDEN = (4, 8), 32

# %% [markdown]
# ## Data: a Fashion-MNIST slice, cropped to 24×24
# 3,000 training and 1,000 test images (class-balanced, seeded) from the Debian package
# `dataset-fashion-mnist`. The network downsamples twice by 2, so it needs sides divisible by 4;
# we crop the two-pixel border (almost always background). Cropping is 1-Lipschitz (it drops
# coordinates), so a certificate for the cropped image holds for the 28×28 one at the same ε.

# %%
data = lmi.load_images("fashion_mnist", n_train=3000, n_test=1000, seed=0)
X_train, X_test = data.X_train[..., 2:26, 2:26], data.X_test[..., 2:26, 2:26]
INPUT_SHAPE = tuple(X_train.shape[1:])
print(f"train {tuple(X_train.shape)}, test {tuple(X_test.shape)}, pixels in [{float(X_train.min())}, "
      f"{float(X_train.max())}], classes: {', '.join(data.class_names)}")

# %% [markdown]
# ## Train both models the same way
# Adam (lr 5·10⁻³, batch 128, 4 epochs, seeded), loss: offset cross-entropy — the true logit is
# lowered by √2·γ·ε_train (ε_train = 108/255) before a cross-entropy of the logits divided by the
# temperature 1/4 — the recipe of `bench/bench_conv.py`. ReLU activations, a linear last layer
# that carries γ.

# %%
models, rows = {}, []
for name in PARAMS:
    torch.manual_seed(0)
    model = lmi.lipschitz_cnn(INPUT_SHAPE, data.n_classes, name, gamma=GAMMA, channels=CHANNELS, hidden=HIDDEN)
    start = time.perf_counter()
    hist = lmi.train(model, X_train, data.y_train, X_test, data.y_test, epochs=4, batch_size=128, lr=5e-3,
                     eps_train=108 / 255, temperature=0.25, progress=False, eval_train=False)
    models[name] = model
    rows.append({"parameterization": name, "train_s": time.perf_counter() - start,
                 "s_per_epoch": float(np.mean(hist.epoch_time)), "test_acc": hist.test_metric[-1],
                 "lipschitz_bound": model.lipschitz_bound()})
pd.DataFrame(rows).round(4)

# %% [markdown]
# ## lipsdp re-certifies the exports
# `lmi.to_plain(model, dtype=torch.float64)` is a plain `nn.Sequential` (circular `nn.Conv2d`
# for the Fourier layers, stride-2 `nn.Conv2d` for the space-to-depth downsampling, `nn.Linear`,
# ReLU). `model.lipsdp_bound(blockwise=True)` cuts it into one block per constrained layer and
# multiplies lipsdp's certified bounds of the blocks: LipSDP-Neuron for the sandwich layers
# (whose certificate is a linear matrix inequality), the product of certified norms for the
# orthogonal ones. `export_err` is the largest difference between the export and the model on
# the test images.

# %%
cert = []
for name, model in models.items():
    plain = lmi.to_plain(model, dtype=torch.float64)
    with torch.no_grad():
        export_err = float((plain(X_test.double()) - model(X_test).double()).abs().max())
    start = time.perf_counter()
    bound = model.lipsdp_bound(blockwise=True)
    cert.append({"parameterization": name, "gamma": GAMMA, "lipsdp_bound": bound,
                 "lipsdp_s": time.perf_counter() - start, "export_err": export_err})
cert = pd.DataFrame(cert)
cert.round(6)

# %%
# every model is γ-Lipschitz by construction, and lipsdp's certified bound of its export confirms it
for _, r in cert.iterrows():
    assert r.export_err < 1e-4 and r.lipsdp_bound <= GAMMA * (1 + 1e-6), r

# %% [markdown]
# ## Certified accuracy against ε
# Solid: the pairwise rule with γ; dashed: the per-pair rule with the last layer's rows
# (`model.per_pair_options()`). ε = 0 is the clean accuracy.

# %%
eps = np.array(sorted(set(range(0, 161, 8)) | {36, 72, 108})) / 255
curves = {}
for name, model in models.items():
    curves[name] = (lmi.certified_accuracy(model, X_test, data.y_test, eps),
                    lmi.certified_accuracy(model, X_test, data.y_test, eps, per_pair=True,
                                           **model.per_pair_options()))
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for (name, (pairwise, per_pair)), color in zip(curves.items(), ("C0", "C1")):
    ax.plot(eps * 255, pairwise, marker="o", ms=3, color=color, label=f"{name} (pairwise)")
    ax.plot(eps * 255, per_pair, ls="--", color=color, label=f"{name} (per pair)")
for e in (36, 72, 108):
    ax.axvline(e, color="0.8", lw=0.8, zorder=0)
ax.set_xlabel("ε × 255 (ℓ2, pixels in [0, 1])")
ax.set_ylabel("certified accuracy (ε = 0: clean)")
ax.set_title(f"Fashion-MNIST slice (24×24), γ = {GAMMA}, 2C2F {CHANNELS}, hidden {HIDDEN}")
ax.set_ylim(0, 1.0)
ax.grid(alpha=0.3)
ax.legend(loc="lower left")
fig.tight_layout()
print("saved", save_figure(fig, "05_certified_image_classifiers.png"))
plt.show()

# %%
index = {int(round(e * 255)): i for i, e in enumerate(eps)}
summary = pd.DataFrame({f"{name} ({rule})": {("clean" if e == 0 else f"ε={e}/255"): acc[index[e]]
                                             for e in (0, 36, 72, 108)}
                        for name, both in curves.items() for rule, acc in zip(("pairwise", "per pair"), both)}).T
summary.round(3)
