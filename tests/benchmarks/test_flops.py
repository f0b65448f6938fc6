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
    # one more completion token: the LM head's forward and backward on it (2 + 2 FLOPs a weight; frozen, so no
    # weight gradient); one more token of context: the body's 4 FLOPs a weight, and attention to its 11 keys
    # (scores and values, 2 x 2 FLOPs a key and dimension, forward and the backward's two products: x3)
    width = model.config.num_attention_heads * model.config.head_dim
    layers = model.config.num_hidden_layers
    assert training_flops(model.config, [10], 5, trainable) - training_flops(model.config, [10], 4, trainable) == 4 * head
    assert training_flops(model.config, [11], 4, 0) - training_flops(model.config, [10], 4, 0) == \
        4 * body + 3 * 4 * layers * width * 11
    assert training_flops(model.config, [10], 4, trainable) - training_flops(model.config, [10], 4, 0) == \
        6 * trainable * 10  # LoRA's weights are trained: forward, input and weight gradients


def test_the_memory_rate_comes_from_a_real_copy():
    """copy_rate times real copies, counting the bytes read and written: a rate in any machine's range."""
    rate = copy_rate(size=8 * 2**20, repeats=2)
    assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s: a copy that ran, on any machine
