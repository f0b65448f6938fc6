"""The tiny random model made to write a newline often, but not always at once: decoding tests then
see rows that stop early and rows that run to the limit."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def newline_prone_model(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        model.get_input_embeddings().weight[newline] *= 8
    return model, tokenizer
