"""Shared fixtures: a tiny randomly initialised Llama with the embedded model's tokenizer.

Training and generation tests run on it in seconds; only the tokenizer comes from the embedded
GGUF, so the prompts and chat template are the real ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from laffi.models import embedded_gguf

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tiny_overrides(tiny_model_dir) -> list[str]:
    """Overrides that make a whole run small: 8 held-out and 8 train questions, 2-step trainings."""
    return [f"model.name={tiny_model_dir}", "model.threads=2", "data.eval_size=8", "data.train_size=8",
            "generate.max_new_tokens=4", "generate.batch_size=4", "train.steps=4", "train.warmup_steps=1",
            "train.batch_size=2", "train.max_seq_len=256", "train.checkpoint_every=2", "eval.bootstrap_samples=200"]
