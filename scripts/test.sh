#!/usr/bin/env bash
# The whole test suite (notebooks included). Run from the activated .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
python -m pytest -q -p no:cacheprovider "$@"
