"""train.preference (laffi-dpo): the pairs the build stage writes, the DPO loss against a hand computation,
an exact zero log-ratio at step 1, pairs never cut apart, and a whole `laffi train` that resumes.

    python -m pytest tests/stages/test_preference.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from support.checkpoint_crash import killed_after_a_checkpoint
from support.human_helpers import laffi, make_run
from transformers import AutoModelForCausalLM

from laffi.config import load_config
from laffi.distributed.batching import plan_batches
from laffi.experiments.experiment import training_cost
from laffi.layout import RunLayout
from laffi.packing import pack
from laffi.records import (
    VERDICTS,
    Feedback,
    PreferencePair,
    QAExample,
    TrainingExample,
    TrainLogEntry,
    read_records,
    write_records,
)
from laffi.stages.batches import IGNORE, completion_tokens, packed_part_indices, sequence_logps
from laffi.stages.preference import PreferenceTerm
from laffi.stages.train import add_lora, backward_passes, batch_parts, reference
from laffi.systems import Preference, load_system
from laffi.tree_attention import tree_attention

CPU = torch.device("cpu")


def question_rows(vocab: int, questions: int = 2) -> list[tuple[list[int], list[int]]]:
    """`questions` questions on one article (a shared head): their own rows (prompt -> gold answer), then per
    question its chosen row (the own row again, as the build stage writes it) and its rejected row (prompt ->
    another answer of another length)."""
    generator = torch.Generator().manual_seed(2)
    ids = lambda n: torch.randint(0, vocab, (n,), generator=generator).tolist()  # noqa: E731
    head = ids(12)
    prompts = [head + ids(5 + q) for q in range(questions)]
    gold = [ids(3 + q) for q in range(questions)]
    own = [ids(6 - q) for q in range(questions)]
    row = lambda prompt, answer: (prompt + answer, [IGNORE] * len(prompt) + answer)  # noqa: E731
    sft = [row(p, g) for p, g in zip(prompts, gold)]
    return sft + [r for p, g, o in zip(prompts, gold, own) for r in (row(p, g), row(p, o))]


def term_of(questions: int, preference: Preference) -> PreferenceTerm:
    return PreferenceTerm(preference, questions, list(range(questions)), [])


def lora_model(tiny_model_dir, dtype=torch.float32, moved: bool = True, dropout: float = 0.0):
    torch.manual_seed(0)
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"train.lora_dropout={dropout}"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    model = add_lora(model, config.model, config.train, autocast=dtype == torch.bfloat16)
    if moved:
        move(model)
    return model, config


def move(model) -> None:
    """B starts at zero: move it, as steps of training would, so that the policy differs from the reference."""
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)


def full_logp(model, row) -> float:
    """A completion's summed log-prob from its own sequence alone, every position's logits, in fp32."""
    ids, labels = row
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1)
    return sum(logps[k - 1, labels[k]].item() for k in range(1, len(ids)) if labels[k] != IGNORE)


@pytest.mark.parametrize("length_normalized", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_the_loops_loss_is_the_nll_plus_the_hand_computed_dpo_loss(tiny_model_dir, packed, length_normalized):
    model, config = lora_model(tiny_model_dir, moved=False)
    rows = question_rows(model.config.vocab_size)
    preference = Preference(weight=0.7, beta=0.3, length_normalized=length_normalized)
    term = term_of(2, preference)
    batch = term.with_pairs([0, 1])
    assert batch == [0, 1, 2, 3, 4, 5]
    with tree_attention(model) if packed else torch.no_grad():  # the reference as train() computes it, at step 0
        term.reference = term.compute_reference(model, rows, batch_parts(rows, batch, packed, True, 4096,
                                                                         term.units(batch)), 0, CPU, packed)
    move(model)  # the policy of a later step; the reference stays the model at step 0, here the base model

    policy = [full_logp(model, row) for row in rows]
    with model.disable_adapter():
        ref = [full_logp(model, row) for row in rows]
    tokens = [completion_tokens(row) for row in rows]
    scale = (lambda i: tokens[i]) if length_normalized else (lambda i: 1)  # noqa: E731
    nll = -(policy[0] + policy[1]) / (tokens[0] + tokens[1])  # the sft set's token mean
    dpo = [-math.log(1 / (1 + math.exp(-preference.beta * ((policy[c] - ref[c]) / scale(c)
                                                             - (policy[c + 1] - ref[c + 1]) / scale(c + 1)))))
           for c in (2, 4)]
    assert abs(policy[2] - ref[2]) > 1e-3  # the adapter matters
    expected = nll + preference.weight * sum(dpo) / 2

    accelerator = Accelerator(cpu=True)
    loss, tokens_seen, completion, dpo_sum, margin_sum, pairs = backward_passes(
        accelerator, model, rows, [batch], plan_batches(config.train, 1), 0, packed, False, 4096, preference=term)
    assert pairs == 2 and dpo_sum == pytest.approx(sum(dpo), rel=1e-5)
    assert loss == pytest.approx(expected, rel=1e-5)
    # the cost counts every row trained on, the pairs' chosen and rejected rows too, each whole (unpacked)
    assert tokens_seen == sum(len(ids) for ids, _ in rows) and completion == sum(tokens)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("continued, dropout, alone", [(False, 0.1, True), (True, 0.0, True), (False, 0.0, False)])
def test_at_step_one_every_log_ratio_is_exactly_zero_and_every_pair_loss_log_2(tiny_model_dir, tmp_path, continued,
                                                                             dropout, alone):
    """bf16 weights under autocast, rows cut into several packed parts: the reference (the model at step 0, its
    adapter on) and the training's first forward give the very same log-probs, and the saved reference reads
    back as is. A fresh adapter (B = 0) with LoRA dropout on: the reference is the base model's to the bit; a
    continued one (B moved: train.init, a later round of train.rounds) without dropout: the adapter's own.
    Not `alone` (one process under FSDP or DeepSpeed): a batch is one pass, in training and in the reference."""
    model, config = lora_model(tiny_model_dir, torch.bfloat16, moved=continued, dropout=dropout)
    rows = question_rows(model.config.vocab_size, questions=4)
    term = term_of(4, Preference())
    batches = [term.with_pairs([0, 1, 2, 3])]
    parts = batch_parts(rows, batches[0], True, alone, 40, term.units(batches[0]))
    assert len(parts) > 1 if alone else len(parts) == 1  # the budget cut the batch, where it may
    path = tmp_path / "reference_logps.json"
    term.reference = reference(path, term, model, rows, batches, 0, CPU, True, True, 40, alone)
    assert reference(path, term, model, rows, batches, 0, CPU, True, True, 40, alone) == term.reference  # as saved
    weights, pair_weight = term.step_weights(rows, batches)
    dpo, pairs = 0.0, 0
    for part in parts:
        with torch.autocast("cpu", torch.bfloat16), tree_attention(model):
            logps = sequence_logps(model, [rows[i] for i in part], 0, CPU, True)
            _, (dpo_sum, margin_sum, n) = term.part_loss(model, rows, part, weights, pair_weight, 0, CPU, True)
        for k, i in enumerate(part):
            if i >= term.examples:
                assert logps[k].item() == term.reference[tuple(part)][i]  # exactly
        assert margin_sum == 0.0
        dpo, pairs = dpo + dpo_sum, pairs + n
    assert pairs == 4 and dpo == pytest.approx(4 * math.log(2), rel=1e-6)
    if not continued:  # the fresh adapter's reference is the base model's, bit for bit
        with torch.autocast("cpu", torch.bfloat16), tree_attention(model), model.disable_adapter():
            base = term.compute_reference(model, rows, parts, 0, CPU, True)
        assert base == term.reference


def test_a_pair_is_never_cut_apart_at_a_small_max_row_tokens():
    rows = question_rows(1000, questions=5)
    term = term_of(5, Preference())
    batch = term.with_pairs([0, 1, 2, 3, 4])
    picked = [rows[i] for i in batch]
    plain = packed_part_indices(picked, 30)
    assert any({batch[k] for k in part} & {6, 8, 10, 12, 14} and not {batch[k] + 1 for k in part if batch[k] in
               {6, 8, 10, 12, 14}} <= {batch[k] for k in part} for part in plain)  # cut without units: split
    for budget in (1, 30, 45, 60, 10_000):
        parts = batch_parts(rows, batch, True, True, budget, term.units(batch))
        assert sorted(i for part in parts for i in part) == sorted(batch)
        for part in parts:
            for chosen in (i for i in part if i >= 5 and (i - 5) % 2 == 0):
                assert chosen + 1 in part and term.questions[(chosen - 5) // 2] in part  # the whole question
            units = {term.units(batch)[batch.index(i)] for i in part}
            assert len(pack([rows[i][0] for i in part]).tokens) <= budget or len(units) == 1
    assert len(batch_parts(rows, batch, True, True, 10_000, term.units(batch))) == 1


def judge(run, answers: list[str], verdicts: list[str]) -> None:
    """The feedback file of `run` with these answers and verdicts, question by question."""
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    write_records(run / "feedback.jsonl", [Feedback(e.id, a, v, f"feedback {i}", "ai", "reference")
                                           for i, (e, a, v) in enumerate(zip(examples, answers, verdicts))])


def test_the_build_stage_writes_pairs_for_incorrect_and_partially_correct_answers_only(tmp_path):
    run = make_run(tmp_path / "run", n_items=7)
    answers = ["north", "south", "the north", "south", "north", "east", "north"]
    verdicts = ["correct", "incorrect", "partially correct", "incorrect", "incorrect", "partially correct", "correct"]
    # question 4: judged incorrect, yet its answer is the gold one: no pair (its DPO term could not move)
    judge(run, answers, verdicts)
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    code, out, err = laffi("build", str(run), "data.num_shots=1", "systems.names=base,sft,laffi-dpo")
    assert code == 0, err
    layout = RunLayout(run)
    pairs = read_records(layout.pair_set("laffi-dpo"), PreferencePair)
    sft = {e.id: e for e in read_records(layout.training_set("sft"), TrainingExample)}
    assert read_records(layout.training_set("laffi-dpo"), TrainingExample) == list(sft.values())
    assert [p.id for p in pairs] == [examples[i].id for i in (1, 2, 3, 5)]
    for pair, i in zip(pairs, (1, 2, 3, 5)):
        assert pair.prompt == sft[pair.id].prompt and pair.chosen == sft[pair.id].completion  # the sft example
        assert pair.rejected == [{"role": "assistant", "content": answers[i]}] and pair.verdict == verdicts[i]
    meta = json.loads(layout.set_metadata("laffi-dpo").read_text())["preference"]
    assert meta["verdicts"] == {"correct": 2, "partially correct": 2, "incorrect": 3}
    assert meta["pairs"] == 4 and meta["pairs_by_verdict"] == {"partially correct": 2, "incorrect": 2}
    assert meta["same_as_gold"] == 1
    assert f"4 preference pairs (2 partially correct, 2 incorrect) in {layout.pair_set('laffi-dpo')}" in out
    assert out.count("preference pairs") == 1  # sft and laffi have none
    with pytest.raises(ValueError, match="judged correct"):
        PreferencePair("q", [], [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}],
                       VERDICTS[0])


def test_a_preference_term_may_continue_another_adapter(tmp_path):
    # its reference is the model the training starts from (the adapter it continues), not the base model
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  sets: {sft: 1.0}\n  init: sft\n  preference: {}\n")
    assert load_system(str(path)).init == "sft"


@pytest.mark.parametrize("text, message", [
    ("train:\n  sets: {sft: 1.0}\n  preference: {beta: 0}\n", "train.preference.beta: must be > 0"),
    ("train:\n  sets: {sft: 1.0}\n  rounds: 0\n", "train.rounds: must be >= 1"),
    ("train:\n  sets: {sft: 1.0}\n  preference: {weight: -1}\n", "train.preference.weight: must be > 0"),
    ("train:\n  sets: {sft: 1.0}\n  aux: laffi\n  preference: {}\n", "train.preference: not together with train.aux"),
    ("train:\n  sets: {sft: 1.0}\n  preference: {temperature: 1}\n", "unknown option"),
])
def test_a_bad_preference_recipe_is_named(tmp_path, text, message):
    from laffi.config import ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_system(str(path))


def test_laffi_train_trains_the_dpo_system_and_resumes_to_the_same_adapter(tiny_overrides, tmp_path, monkeypatch):
    import laffi.stages.preference as preference_module

    settings = [*tiny_overrides, "data.num_shots=1", "systems.names=base,sft,laffi-dpo", "train.lr=5e-3",
                "train.lora_dropout=0", "model.dtype=float32", "train.max_row_tokens=400"]
    adapters = {}
    for name in ("straight", "crashed"):
        run = make_run(tmp_path / name, n_items=8)
        judge(run, ["south"] * 7 + ["north"], ["incorrect"] * 7 + ["correct"])  # 7 pairs: one in every batch
        code, _, err = laffi("build", str(run), *settings)
        assert code == 0, err
    code, out, err = laffi("train", str(tmp_path / "straight"), "--system", "laffi-dpo", *settings)
    assert code == 0, err
    out_dir = RunLayout(tmp_path / "straight").adapter("laffi-dpo")
    assert {"adapter_model.safetensors", "train_log.jsonl", "summary.json", "reference_logps.json"} <= \
        {p.name for p in out_dir.iterdir()}
    log = read_records(out_dir / "train_log.jsonl", TrainLogEntry)
    assert [e.step for e in log] == [1, 2, 3, 4]
    assert all(e.preference_loss is not None for e in log)
    # step 1: a fresh adapter is the reference (and in fp32 the rows' rounding does not even matter)
    assert log[0].preference_loss == pytest.approx(math.log(2), abs=1e-6) and log[0].reward_margin == 0
    assert log[-1].reward_margin > 0  # the same questions every epoch: the gold answer gains on the wrong one
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["preference"] == {"pairs": 7, "loss": "dpo", "weight": 1.0, "beta": 0.1, "length_normalized": False,
                                     "desirable_weight": 0.0}
    # the reference pass before step 1 is part of the training's cost (laffi experiment's train seconds)
    assert summary["reference_seconds_this_process"] > 0
    assert training_cost(RunLayout(tmp_path / "straight"), "laffi-dpo")[0] == pytest.approx(
        summary["seconds_this_process"] + summary["reference_seconds_this_process"], abs=0.01)
    adapters["straight"] = load_file(out_dir / "adapter_model.safetensors")

    with killed_after_a_checkpoint(monkeypatch):  # at step 2
        laffi("train", str(tmp_path / "crashed"), "--system", "laffi-dpo", *settings)

    def no_recompute(*args, **kwargs):
        raise AssertionError("a resumed training recomputed the reference log-probs")

    monkeypatch.setattr(preference_module.PreferenceTerm, "compute_reference", no_recompute)
    code, _, err = laffi("train", str(tmp_path / "crashed"), "--system", "laffi-dpo", *settings)
    assert code == 0, err
    crashed = RunLayout(tmp_path / "crashed").adapter("laffi-dpo")
    assert json.loads((crashed / "summary.json").read_text())["resumed_from_step"] == 2
    assert json.loads((crashed / "summary.json").read_text())["reference_seconds_this_process"] < 1  # read back
    resumed = load_file(crashed / "adapter_model.safetensors")
    assert resumed.keys() == adapters["straight"].keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], adapters["straight"][name], rtol=1e-4, atol=1e-6)


def test_laffi_train_trains_a_packaged_system_by_its_recipe_when_systems_names_leaves_it_out(tiny_overrides, tmp_path):
    # the trap: with the default systems.names, `--system laffi-dpo` once trained sets/laffi-dpo.jsonl as a
    # set of its own, plain SFT with no preference term, and said nothing
    run = make_run(tmp_path / "run", n_items=8)
    judge(run, ["south"] * 7 + ["north"], ["incorrect"] * 7 + ["correct"])
    settings = [*tiny_overrides, "data.num_shots=1", "model.dtype=float32"]
    code, _, err = laffi("build", str(run), *settings, "systems.names=base,sft,laffi-dpo")
    assert code == 0, err
    code, _, err = laffi("train", str(run), "--system", "laffi-dpo", *settings)  # default systems.names
    assert code == 0, err
    log = read_records(RunLayout(run).train_log("laffi-dpo"), TrainLogEntry)
    assert log and all(e.preference_loss is not None for e in log)
