"""Base models Tinker serves, for `evsys validate --deep` (no tinker import, no network).

The list follows Tinker's model lineup (tinker-docs.thinkingmachines.ai/model-lineup) and
the tinker-cookbook's model table; Tinker adds models over time, so a name missing here is
reported by validate with this list, and this tuple is the place to add it.
"""

from __future__ import annotations

KNOWN_TINKER_MODELS: tuple[str, ...] = (
    # Qwen 3.5 (hybrid reasoning)
    "Qwen/Qwen3.5-4B",
    "Qwen/Qwen3.5-27B",
    "Qwen/Qwen3.5-35B-A3B",
    "Qwen/Qwen3.5-397B-A17B",
    # Qwen 3
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-1.7B",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-4B-Base",
    "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-14B",
    "Qwen/Qwen3-14B-Base",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-30B-A3B-Base",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-VL-30B-A3B-Instruct",
    "Qwen/Qwen3-VL-235B-A22B-Instruct",
    # Llama 3
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.3-70B-Instruct",
    # others
    "deepseek-ai/DeepSeek-V3.1",
    "deepseek-ai/DeepSeek-V3.1-Base",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "moonshotai/Kimi-K2-Thinking",
    "moonshotai/Kimi-K2.5",
)


# ---- refreshing from the service ------------------------------------------------------------
# `refresh_known_models(service)` asks a reachable Tinker service for the models it serves
# and caches the names under $EVSYS_CACHE; later imports add the cached names to the tuple
# above, so `validate` knows a model Tinker added since this file was written.

import json as _json
import os as _os
from pathlib import Path as _Path
from typing import Any as _Any

_CACHE_NAME = "tinker_models.json"


def _cache_file() -> _Path:
    from evsys_core.backends.models import cache_dir

    return cache_dir() / _CACHE_NAME


def _cached_models() -> tuple[str, ...]:
    try:
        names = _json.loads(_cache_file().read_text())["models"]
        return tuple(n for n in names if isinstance(n, str))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def refresh_known_models(service: _Any) -> tuple[str, ...]:
    """Update the known list from `service.supported_models()` when reachable; return it.

    On any BackendError (no key, no network) the list stays as it was.
    """
    from evsys_core.errors import BackendError

    global KNOWN_TINKER_MODELS
    try:
        served = tuple(service.supported_models())
    except BackendError:
        return KNOWN_TINKER_MODELS
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_os.getpid()}")
    tmp.write_text(_json.dumps({"models": list(served)}, indent=1) + "\n")
    _os.replace(tmp, path)
    KNOWN_TINKER_MODELS = KNOWN_TINKER_MODELS + tuple(m for m in served if m not in KNOWN_TINKER_MODELS)
    return KNOWN_TINKER_MODELS


KNOWN_TINKER_MODELS = KNOWN_TINKER_MODELS + tuple(
    m for m in _cached_models() if m not in KNOWN_TINKER_MODELS
)
