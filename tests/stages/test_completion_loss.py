"""The training loss runs the LM head only on completion positions, without the padding mask: the
same loss and gradients as the full logits with the mask, on padded batches of a tiny model, plain,
wrapped in PEFT, and sharded by FSDP2 over 2 processes."""

import subprocess
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from laffi.config import load_config
from laffi.stages.batches import IGNORE, collate, completion_loss_sum, loss_sum
from laffi.stages.train import add_lora
from laffi.tree_attention import tree_attention


def full_logits_loss(model, batch):
    """The loss as it was computed before: logits at every position, prompt ones ignored."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE, reduction="sum")


def rows(vocab: int) -> list[tuple[list[int], list[int]]]:
    """Three rows of different lengths (so two are padded), prompts masked, completions of 1-9 tokens."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for prompt, completion in ((20, 5), (7, 9), (31, 1)):
        ids = torch.randint(0, vocab, (prompt + completion,), generator=generator).tolist()
        out.append((ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def lora_gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("peft", [False, True])
def test_completion_only_head_gives_the_full_logits_loss_and_gradients(tiny_model_dir, peft):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if peft:
        config = load_config(overrides=[f"model.name={tiny_model_dir}", "train.lora_dropout=0"])
        model = add_lora(model, config.model, config.train)
        for name, p in model.named_parameters():  # B starts at zero; move it so the adapter matters
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    else:
        model.train()
    batch = collate(rows(model.config.vocab_size), pad_id=0, device=torch.device("cpu"))

    reference = full_logits_loss(model, batch)
    reference.backward()
    reference_grads = lora_gradients(model)
    model.zero_grad(set_to_none=True)
    loss = completion_loss_sum(model, batch)
    loss.backward()

    assert (batch["labels"] != IGNORE).sum() == 15  # every completion token is scored
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    grads = lora_gradients(model)
    assert grads.keys() == reference_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4, atol=1e-6)


def test_a_model_that_ignores_logits_to_keep_still_gets_the_right_loss(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = collate(rows(model.config.vocab_size), pad_id=0, device=torch.device("cpu"))

    class FullLogits(torch.nn.Module):  # e.g. remote code written before logits_to_keep existed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits_to_keep=None, **kwargs):
            return self.inner(**kwargs)

    torch.testing.assert_close(completion_loss_sum(FullLogits(model), batch), full_logits_loss(model, batch))


def test_under_fsdp2_on_two_processes(tiny_model_dir):
    script = Path(__file__).resolve().parents[1] / "support" / "fsdp_loss.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tiny_model_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def shared_prefix_rows(vocab: int) -> list[tuple[list[int], list[int]]]:
    """Rows as one article gives them: a shared head; two on one "passage"; one whose prompt is another's
    whole prompt (so a shared position predicts two different first completion tokens); equal prompts."""
    generator = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(0, vocab, (n,), generator=generator).tolist()  # noqa: E731
    head, passage = ids(15), ids(8)
    prompts = [head + ids(6), head + passage + ids(3), head + passage + ids(4), head + passage, head + passage]
    out = []
    for prompt, completion in zip(prompts, (5, 1, 9, 3, 2)):
        tokens = ids(completion)
        out.append((prompt + tokens, [IGNORE] * len(prompt) + tokens))
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("peft", [False, True])
def test_a_packed_row_gives_the_padded_batch_loss_and_gradients(tiny_model_dir, peft, attention):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    if peft:
        config = load_config(overrides=[f"model.name={tiny_model_dir}", "train.lora_dropout=0"])
        model = add_lora(model, config.model, config.train)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    else:
        model.train()
    batch = shared_prefix_rows(model.config.vocab_size)
    cpu = torch.device("cpu")

    padded = loss_sum(model, batch, 0, cpu, packed=False)
    padded.backward()
    padded_grads = lora_gradients(model)
    model.zero_grad(set_to_none=True)
    with tree_attention(model):
        packed = loss_sum(model, batch, 0, cpu, packed=True)
        packed.backward()

    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    grads = lora_gradients(model)
    assert grads.keys() == padded_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], padded_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_row_weights_multiply_each_rows_summed_loss_packed_or_padded(tiny_model_dir, packed):
    """train.aux's weighted loss: with a weight per row, the batch's loss is the weighted sum of the rows'
    own summed losses, and the step's weights make each side a mean over its own completion tokens."""
    from laffi.stages.batches import completion_tokens
    from laffi.stages.train import step_weights

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = shared_prefix_rows(model.config.vocab_size)
    cpu = torch.device("cpu")
    window, aux = [[0, 1, 2, 3, 4]], {3, 4}  # rows 3 and 4 auxiliary
    weights = step_weights(batch, window, aux, aux_weight=0.5)
    main_tokens = sum(completion_tokens(batch[i]) for i in (0, 1, 2))
    aux_tokens = sum(completion_tokens(batch[i]) for i in (3, 4))
    assert weights == {0: 1 / main_tokens, 1: 1 / main_tokens, 2: 1 / main_tokens, 3: 0.5 / aux_tokens, 4: 0.5 / aux_tokens}
    with tree_attention(model) if packed else nullcontext():
        weighted = loss_sum(model, batch, 0, cpu, packed, [weights[i] for i in range(5)])
        each = [loss_sum(model, [row], 0, cpu, packed) for row in batch]
        plain = loss_sum(model, batch, 0, cpu, packed)
    expected = sum(weights[i] * each[i] for i in range(5))
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, sum(each), rtol=1e-5, atol=1e-5)  # no weights: the plain sum


def test_a_batch_cut_into_rows_within_a_token_budget_sums_to_the_whole_rows_loss_and_gradients(tiny_model_dir):
    from laffi.packing import pack
    from laffi.stages.batches import packed_parts

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    batch = shared_prefix_rows(model.config.vocab_size)
    cpu = torch.device("cpu")
    with tree_attention(model):
        whole = loss_sum(model, batch, 0, cpu, packed=True)
        whole.backward()
    whole_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    parts = packed_parts(batch, budget=40)
    assert len(parts) > 1 and sorted(map(tuple, (r for part in parts for r in part))) == sorted(map(tuple, batch))
    assert all(len(pack([ids for ids, _ in part]).tokens) <= 40 or len(part) == 1 for part in parts)
    total = 0.0
    for part in parts:  # a backward per part, as train's backward_passes runs them
        with tree_attention(model):
            loss = loss_sum(model, part, 0, cpu, packed=True)
            loss.backward()
        total += loss.item()
    assert total == pytest.approx(whole.item(), rel=1e-5)
    for name, param in model.named_parameters():
        # fp32 sums taken in another order (per part, not per row) differ by rounding, which on some CPUs'
        # kernels (an AMD EPYC's) reaches 1e-5 on a few of the embedding's 1.5M entries: compare against
        # the gradient's own scale; a part left out or counted twice moves entries by about that scale
        scale = whole_grads[name].abs().max().item()
        torch.testing.assert_close(param.grad, whole_grads[name], rtol=1e-4, atol=max(1e-6, 1e-3 * scale))
    assert packed_parts(batch, budget=10_000) == [sorted(batch)]  # within the budget: one row


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_weights_train_fp32_adapters_under_autocast_without_fp32_input_copies(tiny_model_dir, packed):
    """add_lora(autocast=True): PEFT's cast of each input to the adapters' fp32 is off, the adapters stay
    fp32 and get fp32 gradients, and the loss is the fp32 model's within bf16 rounding."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = load_config(overrides=[f"model.name={tiny_model_dir}", "train.lora_dropout=0"])
    batch = shared_prefix_rows(1000)
    cpu = torch.device("cpu")
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        model = add_lora(model, config.model, config.train, autocast=dtype == torch.bfloat16)
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert layers and all(m.cast_input_dtype_enabled == (dtype == torch.float32) for m in layers)
        for name, p in model.named_parameters():  # B starts at zero; move it so the adapter matters
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(2))
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16), tree_attention(model):
            loss = loss_sum(model, batch, 0, cpu, packed=packed)
            loss.backward()
        grads = lora_gradients(model)
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
        losses[dtype] = loss.item()
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=2e-2)


def test_a_packed_row_outside_tree_attention_is_refused(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="inside laffi.tree_attention"):
        loss_sum(model, shared_prefix_rows(1000), 0, torch.device("cpu"), packed=True)


def test_gradient_checkpointing_reruns_packed_forwards_with_tree_attention(tiny_model_dir):
    """Checkpointing runs each layer's forward again in the backward: the switch must still be on then."""
    config = load_config(overrides=[f"model.name={tiny_model_dir}", "train.lora_dropout=0"])
    batch = shared_prefix_rows(1000)
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        train = replace(config.train, gradient_checkpointing=checkpointing)
        model = add_lora(model, config.model, train)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(2))
        with tree_attention(model):
            loss_sum(model, batch, 0, torch.device("cpu"), packed=True).backward()
        grads[checkpointing] = lora_gradients(model)
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)
