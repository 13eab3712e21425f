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
python -m pip install -q -e ".[test]"
# the notebooks run on this kernel
python -m ipykernel install --sys-prefix --name python3 >/dev/null
