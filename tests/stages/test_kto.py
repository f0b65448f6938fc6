"""train.preference with loss kto (laffi-kto): the labelled answers the build stage writes, the KTO loss
against a hand computation (and 0.5 per answer at step 1), and a whole `laffi train` on the tiny model.

    python -m pytest tests/stages/test_kto.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from accelerate import Accelerator
from support.human_helpers import laffi, make_run
from test_preference import judge, lora_model, move

from laffi.distributed.batching import plan_batches
from laffi.layout import RunLayout
from laffi.records import Feedback, LabelledAnswer, QAExample, TrainingExample, TrainLogEntry, read_records, write_records
from laffi.stages.batches import IGNORE, completion_tokens
from laffi.stages.preference import PreferenceTerm
from laffi.stages.train import backward_passes, batch_parts
from laffi.systems import Preference, load_system
from laffi.tree_attention import tree_attention

CPU = torch.device("cpu")


def labelled_rows(vocab: int) -> list[tuple[list[int], list[int]]]:
    """Two questions on one article: their own rows (prompt -> gold answer), then one labelled answer each."""
    generator = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(0, vocab, (n,), generator=generator).tolist()  # noqa: E731
    head = ids(12)
    prompts = [head + ids(5 + q) for q in range(2)]
    row = lambda prompt, answer: (prompt + answer, [IGNORE] * len(prompt) + answer)  # noqa: E731
    return [row(p, ids(3 + q)) for q, p in enumerate(prompts)] + [row(p, ids(6 - q)) for q, p in enumerate(prompts)]


def sequence_logp(model, row) -> float:
    ids, labels = row
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return sum(logps[k - 1, labels[k]].item() for k in range(1, len(ids)) if labels[k] != IGNORE)


@pytest.mark.parametrize("packed", [False, True])
def test_the_loops_loss_is_the_nll_plus_the_hand_computed_kto_loss(tiny_model_dir, packed):
    model, config = lora_model(tiny_model_dir, moved=False)
    rows = labelled_rows(model.config.vocab_size)
    preference = Preference(loss="kto", weight=0.7, beta=0.3)
    # question 0's answer is desirable, question 1's not; lambda_D 2.5 as a set would make it
    term = PreferenceTerm(preference, 2, [0, 1], [], desirable=[True, False], desirable_weight=2.5)
    batch = term.with_pairs([0, 1])
    assert batch == [0, 1, 2, 3] and term.units(batch) == [0, 1, 0, 1]
    parts = batch_parts(rows, batch, packed, True, 4096, term.units(batch))
    with tree_attention(model) if packed else torch.no_grad():
        term.reference = term.compute_reference(model, rows, parts, 0, CPU, packed)
    accelerator = Accelerator(cpu=True)
    plan = plan_batches(config.train, 1)
    *_, kto_sum, reward_sum, answers = backward_passes(accelerator, model, rows, [batch], plan, 0, packed, False, 4096,
                                                       preference=term)
    assert answers == 2 and reward_sum == 0.0  # step 1: the policy is the reference
    assert kto_sum == pytest.approx(2.5 * 0.5 + 0.5, rel=1e-6)
    model.zero_grad()

    move(model)
    policy = [sequence_logp(model, row) for row in rows]
    with model.disable_adapter():
        ref = [sequence_logp(model, row) for row in rows]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    r = [preference.beta * (policy[i] - ref[i]) for i in (2, 3)]
    assert min(abs(x) for x in r) > 1e-4  # the adapter matters
    kto = [2.5 * (1 - sigmoid(r[0])), 1 - sigmoid(-r[1])]
    nll = -(policy[0] + policy[1]) / (completion_tokens(rows[0]) + completion_tokens(rows[1]))
    loss, _, _, kto_sum, reward_sum, answers = backward_passes(accelerator, model, rows, [batch], plan, 0, packed,
                                                               False, 4096, preference=term)
    assert answers == 2 and kto_sum == pytest.approx(sum(kto), rel=1e-5)
    assert reward_sum == pytest.approx(r[0] - r[1], rel=1e-4)
    assert loss == pytest.approx(nll + preference.weight * sum(kto) / 2, rel=1e-5)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_build_stage_labels_each_distinct_answer_by_its_verdict(tmp_path):
    run = make_run(tmp_path / "run", n_items=6)
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    # question 2 has three answers: a repeat gives no second record; question 3's "incorrect" answer is the
    # gold one's text, a verdict that would push the gold answer down: no record
    notes = [(0, 0, "north", "correct"), (1, 0, "south", "incorrect"), (2, 0, "the north", "partially correct"),
             (2, 1, "the north", "partially correct"), (2, 2, "north", "correct"), (3, 0, "north", "incorrect"),
             (4, 0, "east", "incorrect"), (5, 0, "south", "incorrect")]
    write_records(run / "feedback.jsonl", [Feedback(examples[q].id, a, v, f"feedback {q}", "ai", "reference", sample=s)
                                           for q, s, a, v in notes])
    code, out, err = laffi("build", str(run), "data.num_shots=1", "systems.names=base,sft,laffi-kto")
    assert code == 0, err
    layout = RunLayout(run)
    labelled = read_records(layout.labelled_set("laffi-kto"), LabelledAnswer)
    sft = {e.id: e for e in read_records(layout.training_set("sft"), TrainingExample)}
    assert [(a.id, a.sample, a.desirable) for a in labelled] == [
        (examples[0].id, 0, True), (examples[1].id, 0, False), (examples[2].id, 0, False), (examples[2].id, 2, True),
        (examples[4].id, 0, False), (examples[5].id, 0, False)]
    assert all(a.prompt == sft[a.id].prompt for a in labelled)
    assert labelled[1].completion == [{"role": "assistant", "content": "south"}]
    meta = json.loads(layout.set_metadata("laffi-kto").read_text())["preference"]
    assert (meta["labelled"], meta["desirable"], meta["undesirable"]) == (6, 2, 4)
    assert f"6 labelled answers (2 desirable, 4 undesirable) in {layout.labelled_set('laffi-kto')}" in out
    assert not layout.pair_set("laffi-kto").exists()
    term = PreferenceTerm.labelled(Preference(loss="kto"), list(sft.values()), labelled)
    assert term.desirable_weight == 2.0  # lambda_D = undesirable / desirable
    assert PreferenceTerm.labelled(Preference(loss="kto", desirable_weight=1.5), list(sft.values()),
                                   labelled).desirable_weight == 1.5


@pytest.mark.parametrize("text, message", [
    ("train:\n  sets: {sft: 1.0}\n  preference: {loss: ipo}\n", "train.preference.loss: must be one of dpo, kto"),
    ("train:\n  sets: {sft: 1.0}\n  preference: {desirable_weight: 2}\n", "train.preference.desirable_weight: is a kto"),
    ("train:\n  sets: {sft: 1.0}\n  preference: {loss: kto, desirable_weight: -1}\n",
     "train.preference.desirable_weight: must be >= 0"),
])
def test_a_bad_kto_recipe_is_named(tmp_path, text, message):
    from laffi.config import ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_system(str(path))


def test_laffi_train_trains_the_kto_system(tiny_overrides, tmp_path):
    settings = [*tiny_overrides, "data.num_shots=1", "systems.names=base,sft,laffi-kto", "train.lr=5e-3",
                "train.lora_dropout=0", "model.dtype=float32", "train.max_row_tokens=400"]
    run = make_run(tmp_path / "run", n_items=8)
    judge(run, ["south"] * 6 + ["north"] * 2, ["incorrect"] * 6 + ["correct"] * 2)
    code, _, err = laffi("build", str(run), *settings)
    assert code == 0, err
    code, out, err = laffi("train", str(run), "--system", "laffi-kto", *settings)
    assert code == 0, err
    assert "8 labelled answers (2 desirable, weight 3)" in out + err
    out_dir = RunLayout(run).adapter("laffi-kto")
    log = read_records(out_dir / "train_log.jsonl", TrainLogEntry)
    assert [e.step for e in log] == [1, 2, 3, 4] and all(e.preference_loss is not None for e in log)
    # steps 1 and 2 (the warm-up's first step has lr 0): every r is 0, so every answer's loss is 0.5, x 3 for
    # a desirable one; the mean over the step's 2 answers
    assert all(e.reward_margin == 0 and e.preference_loss in (0.5, 1.0, 1.5) for e in log[:2])
    assert all(e.reward_margin != 0 for e in log[2:])  # the policy left the reference
    summary = json.loads((out_dir / "summary.json").read_text())["preference"]
    assert summary["labelled"] == 8 and summary["desirable"] == 2 and summary["desirable_weight"] == 3.0
