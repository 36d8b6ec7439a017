"""Shared fixtures: the default model's converted cache, a tiny random Llama built from a config,
and a private copy of the checkout's examples to use as a workspace.

The GGUF → safetensors conversion of the default model (~25 s) lands in `$EVSYS_CACHE`
(default ~/.cache/evsys) and is reused by every later run on the machine.

Tests never use the checkout itself as a workspace: what `make demo` (or any run of the
walkthroughs) leaves there — run directories under examples/*/outputs, a `.evsys` index —
must not change what a test sees, and a test must not add to it (tests/test_hermetic.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LEFT_BY_RUNS = ("outputs", ".evsys", "__pycache__", "*.pyc", ".hypothesis")  # as .gitignore says


def copy_examples(examples: Path, workspace: Path) -> Path:
    """`workspace` holding `examples/`, a copy of `examples` without what runs leave behind."""
    shutil.copytree(examples, workspace / "examples", ignore=shutil.ignore_patterns(*LEFT_BY_RUNS))
    return workspace


@pytest.fixture
def examples_ws(tmp_path: Path) -> Path:
    """A workspace with a fresh copy of the checkout's examples/ (configs and data, no outputs,
    no index): the walkthrough configs' relative paths (examples/...) resolve inside it."""
    return copy_examples(EXAMPLES, tmp_path / "checkout")


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model's safetensors directory (converted once per machine)."""
    from evsys_core.backends.models import ensure_converted, resolve_local_model

    return ensure_converted(resolve_local_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Path:
    """A 2-layer, hidden-64 Llama with random (seeded) weights and the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
