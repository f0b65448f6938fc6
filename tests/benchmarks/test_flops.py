"""benchmarks/flops.py counts the parameters the model really has, so its FLOPs are the model's."""

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from flops import copy_rate, linear_params, lora_params, training_flops  # noqa: E402

from laffi.config import load_config  # noqa: E402
from laffi.stages.train import add_lora  # noqa: E402


def test_parameter_counts_match_the_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    body, head = linear_params(model.config)
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    assert body == linear and head == model.lm_head.weight.numel()

    config = load_config(overrides=[f"model.name={tiny_model_dir}"])
    lora = add_lora(model, config.model, config.train)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert lora_params(model.config, config.train.lora_r, config.train.target_modules) == trainable
    # more completion tokens, more LM-head work; one more token of context, more attention
    assert training_flops(model.config, [10], 5, trainable) > training_flops(model.config, [10], 4, trainable)
    assert training_flops(model.config, [11], 4, 0) - training_flops(model.config, [10], 4, 0) > 4 * body


def test_the_memory_rate_comes_from_a_real_copy():
    """copy_rate times real copies, counting the bytes read and written: a rate in any machine's range."""
    rate = copy_rate(size=8 * 2**20, repeats=2)
    assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s: a copy that ran, on any machine
