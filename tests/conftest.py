"""Shared fixtures: the default model's converted cache and a tiny random Llama built from a config.

The GGUF → safetensors conversion of the default model (~25 s) lands in `$EVSYS_CACHE`
(default ~/.cache/evsys) and is reused by every later run on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


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
