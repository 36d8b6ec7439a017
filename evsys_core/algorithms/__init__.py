"""Training algorithms, registered by `algorithm.kind`.

Each algorithm is one `train(ctx)` function written only against the backend primitives
(Tinker's client surface) and the `TrainContext` helpers, so it runs unchanged on the local
engine and on Tinker.
"""

from __future__ import annotations

import importlib
from typing import Callable

# kind -> module holding `train(ctx)`; imported on use (the modules import torch-free code only,
# but the backends they drive are heavy).
ALGORITHMS: dict[str, str] = {
    "sft": "evsys_core.algorithms.sft",
    "sdft": "evsys_core.algorithms.sdft",
    "rl": "evsys_core.algorithms.rl",
}


def get_algorithm(kind: str) -> Callable:
    return importlib.import_module(ALGORITHMS[kind]).train
