#!/usr/bin/env bash
# Creates .venv-peers: an environment of its own for the uncertified peer packages the benchmarks compare
# against (today: eclipse-nn, ECLipsE / ECLipsE-Fast of Xu & Sivaranjani). lipsdp never imports them; the
# benchmarks call this interpreter in a subprocess (bench/bench_deep.py) and skip the peer rows when it is absent.
# torch==2.13.0 is installed first, as in scripts/setup.sh, so pip keeps the CPU build it already chose and does
# not pull the CUDA packages as a dependency of the peer.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-peers
. .venv-peers/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q "eclipse-nn==0.1.7"
python -c "import eclipse_nn, torch; print('peer env ready: eclipse-nn', torch.__version__)"
