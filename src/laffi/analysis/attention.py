"""`laffi attention`: where the base model and a fine-tuned adapter look, per layer and head.

    laffi attention runs/demo                        # base vs adapters/laffi on 24 held-out prompts
    laffi attention runs/demo --system sft --limit 48
    laffi attention runs/ablate --adapter runs/ablate/jobs/laffi-0123abcd4567/adapters/laffi --system laffi

Both models read the same held-out QA prompts (the prompts `laffi evaluate` answers) with eager
attention, which returns the attention weights. For every layer and head, averaged over the
prompts:

- entropy (nats): -sum_j a_ij log a_ij over the keys j a query i attends to, averaged over queries;
  low = attention on few tokens, high = spread out;
- mean distance (tokens): sum_j a_ij (i - j), averaged over queries; small = local, large = global;
- local share: the attention within `window` tokens back (|i - j| <= window), averaged over queries;
- gold mass: the attention of the last prompt token (the one that predicts the answer's first
  token) on the tokens of the gold answer span in the question's own passage.

`analyse` writes RUN/attention/SYSTEM/attention.json (every number, both models); the command then
draws its PNGs beside it (laffi.report.plots: a heatmap per metric, base, adapter and difference, and
per-layer lines), which `laffi report` embeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from laffi.config import DataConfig, ModelConfig
from laffi.layout import ADAPTER_CONFIG, RunLayout, is_adapter
from laffi.models import load_model
from laffi.prompts import choose_shots, qa_messages
from laffi.records import QAExample, read_records, write_atomic

METRICS = ("entropy", "distance", "local_share", "gold_mass")


@dataclass(frozen=True)
class Prompt:
    id: str
    ids: list[int]
    span: tuple[int, int]  # token positions [start, end) of the gold answer in the question's passage


def head_metrics(attention: torch.Tensor, span: tuple[int, int], window: int) -> dict[str, np.ndarray]:
    """Per head, from one prompt's attention weights (heads x queries x keys, rows summing to 1)."""
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"need heads x queries x keys attention, got shape {tuple(attention.shape)}")
    p = attention.double().clamp_min(0)
    n = p.shape[-1]
    position = torch.arange(n, dtype=torch.float64)
    distance = (position[:, None] - position[None, :]).clamp_min(0)  # i - j; a causal row has no j > i
    logs = torch.where(p > 0, p.log(), torch.zeros_like(p))
    start, end = span
    return {"entropy": (-(p * logs).sum(-1)).mean(-1).numpy(),
            "distance": (p * distance).sum(-1).mean(-1).numpy(),
            "local_share": (p * (distance <= window)).sum(-1).mean(-1).numpy(),
            "gold_mass": p[:, -1, start:end].sum(-1).numpy()}


def answer_span(text: str, offsets: list[tuple[int, int]], example: QAExample) -> tuple[int, int] | None:
    """Token positions of the first gold answer found in the question's own passage (the last passage
    of the prompt: the few-shot passages come before it), or None if no gold occurs verbatim."""
    passage = text.rfind(example.context)
    if passage < 0:
        return None
    for gold in example.answers:
        at = example.context.find(gold.strip()) if gold.strip() else -1
        if at >= 0:
            first, last = passage + at, passage + at + len(gold.strip())
            tokens = [k for k, (s, e) in enumerate(offsets) if s < last and e > first]
            return (tokens[0], tokens[-1] + 1) if tokens else None
    return None


def held_out_prompts(layout: RunLayout, tokenizer, data: DataConfig, limit: int) -> list[Prompt]:
    """The first `limit` held-out questions whose gold answer is in the passage, as `laffi evaluate` prompts them."""
    shots = read_records(layout.shots, QAExample)
    prompts = []
    for example in read_records(layout.eval_examples, QAExample):
        if example.is_impossible:
            continue
        messages = qa_messages(example, choose_shots(example, shots, data.num_shots, data.seed))
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        span = answer_span(text, encoded["offset_mapping"], example)
        if span is not None:
            prompts.append(Prompt(example.id, encoded["input_ids"], span))
        if len(prompts) == limit:
            break
    if not prompts:
        raise ValueError(f"{layout.eval_examples}: no held-out question has its gold answer in its passage")
    return prompts


@torch.inference_mode()
def model_metrics(model, prompts: list[Prompt], window: int) -> dict[str, np.ndarray]:
    """Each metric as a layers x heads array, averaged over the prompts."""
    totals: dict[str, np.ndarray] = {}
    device = next(model.parameters()).device
    for prompt in prompts:
        out = model(input_ids=torch.tensor([prompt.ids], device=device), output_attentions=True)
        per_layer = [head_metrics(layer[0].cpu(), prompt.span, window) for layer in out.attentions]
        for metric in METRICS:
            stacked = np.stack([m[metric] for m in per_layer])
            totals[metric] = totals.get(metric, 0) + stacked
    return {metric: total / len(prompts) for metric, total in totals.items()}


def load_eager(model_config: ModelConfig, adapter: str | Path | None = None):
    """The model with eager attention: the fused kernels (sdpa, flash) never materialise the weights."""
    return load_model(replace(model_config, attention="eager"), adapter=adapter)


def analyse(layout: RunLayout, model_config: ModelConfig, data: DataConfig, system: str = "laffi",
            adapter: str | Path | None = None, limit: int = 24, window: int = 8) -> dict:
    """Base model vs `adapter` (default RUN/adapters/SYSTEM) on held-out prompts; writes attention.json."""
    if limit < 1 or window < 1:
        raise ValueError(f"--limit and --window must be >= 1, got {limit} and {window}")
    if adapter and not is_adapter(Path(adapter)):
        raise FileNotFoundError(f"--adapter: {adapter} holds no PEFT adapter ({ADAPTER_CONFIG}); give a folder a "
                                "training saved (RUN/adapters/NAME)")
    adapter = Path(adapter) if adapter else layout.adapter(system)
    if not is_adapter(adapter):
        raise FileNotFoundError(f"--system {system}: {adapter} holds no PEFT adapter ({ADAPTER_CONFIG}); train it "
                                f"(`laffi train {layout.root} --system {system}`), or pass --adapter DIR")
    results: dict = {"system": system, "adapter": str(adapter), "window": window}
    for name, path in (("base", None), (system, adapter)):
        model, tokenizer = load_eager(model_config, path)
        prompts = held_out_prompts(layout, tokenizer, data, limit)
        print(f"attention {name}: {len(prompts)} held-out prompts", flush=True)
        results[name] = {metric: values.round(6).tolist() for metric, values in
                         model_metrics(model, prompts, window).items()}
        del model
    results["prompts"] = [p.id for p in prompts]
    write_atomic(layout.attention_json(system), json.dumps(results) + "\n")
    return results
