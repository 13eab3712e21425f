#!/usr/bin/env bash
# Creates .venv with torch==2.13.0 (the CPU wheel) installed *before* the project, so pip
# does not pull the CUDA build, then installs lipsdp/lmi with the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# the notebooks run on this kernel
python -m ipykernel install --sys-prefix --name python3 >/dev/null
