"""Run the ``eclipse-nn`` package (Xu & Sivaranjani's ECLipsE / ECLipsE-Fast) on one network: a peer row.

Runs under the peers' own interpreter (``.venv-peers/bin/python``, made by
``scripts/peer_env.sh``), never inside lipsdp's environment.  Reads the weights
from an ``.npz`` file (``w0``, ``w1``, …, first layer first; ReLU between
layers), times the package's estimate (imports excluded) and prints one JSON
line: ``{"value", "seconds", "peak_mb"}``.  The value is the package's
*uncertified* float64 estimate.

    .venv-peers/bin/python bench/peer_eclipse_nn.py weights.npz ECLipsE_Fast
"""

from __future__ import annotations

import json
import sys
import time


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str]) -> int:
    import numpy as np
    import torch
    from eclipse_nn import LipConstEstimator

    path, algorithm = argv[0], argv[1] if len(argv) > 1 else "ECLipsE_Fast"
    data = np.load(path)
    weights = [torch.tensor(data[f"w{k}"], dtype=torch.float64) for k in range(len(data.files))]
    estimator = LipConstEstimator(weights=weights)
    start = time.perf_counter()
    value = float(estimator.estimate(algorithm))
    seconds = time.perf_counter() - start
    print(json.dumps({"value": value, "seconds": seconds, "peak_mb": _peak_mb()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
