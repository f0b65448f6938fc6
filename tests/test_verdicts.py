"""P(verdict) (laffi.stages.verdicts) and its check on an experiment (laffi.experiments.verdict_check), on the
tiny random model: packed scoring gives each sentence's log-probability as the sequence run alone does,
the verdict sentence is tokenized as training tokenizes the feedback it begins, AUROC on hand cases, and
the check end to end on a tiny experiment, resumed.

    python -m pytest tests/test_verdicts.py
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml

import laffi.experiments.verdict_check as verdict_check
import laffi.stages.verdicts as verdicts
from laffi.experiments.verdict_check import check
from laffi.stages.build import verify_example
from laffi.stages.verdicts import LINES, SENTENCES, opening_ids, sentence_logprobs, verdict_probabilities
from laffi.annotators.reference import ReferenceAnnotator
from laffi.config import ModelConfig, load_config
from laffi.layout import ExperimentLayout, RunLayout
from laffi.models import ADAPTER_ANSWERING, load_model
from laffi.prompts import choose_shots, feedback_messages, prompt_completion_ids
from laffi.records import VERDICTS, Answer, Feedback, Prediction, QAExample, TrainingExample, read_records

PASSAGE = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders from Denmark, Iceland and Norway.")
EXAMPLES = [QAExample("q1", "Normans", PASSAGE, "In what country is Normandy located?", ["France"]),
            QAExample("q2", "Normans", PASSAGE, "From which countries did the Norse originate?",
                      ["Denmark, Iceland and Norway"]),
            QAExample("q3", "Rivers", "The Rhine flows from the Alps to the North Sea. It is 1,230 km long.",
                      "How long is the Rhine?", ["1,230 km"])]
SHOTS = [QAExample("s1", "Moon", "The Moon orbits the Earth every 27 days.", "What orbits the Earth?", ["The Moon"]),
         QAExample("s2", "Sun", "The Sun is a star at the centre of the Solar System.", "What is the Sun?", ["a star"])]
# an empty answer, a duplicate candidate, and two candidates of one question
CANDIDATES = [(EXAMPLES[0], "France"), (EXAMPLES[0], "Normandy"), (EXAMPLES[1], "Denmark"),
              (EXAMPLES[2], ""), (EXAMPLES[0], "France")]


@pytest.fixture(scope="module", params=["chat", "plain"])
def tiny(tiny_model_dir, request):
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", device="cpu", threads=2,
                                              prompt_format=request.param))
    return model, tokenizer


def items() -> list[tuple[QAExample, list[QAExample], str]]:
    return [(example, choose_shots(example, SHOTS, 1, 0), answer) for example, answer in CANDIDATES]


def sentence_tokens_from_text(tokenizer, prompt, sentence: str) -> list[int]:
    """The sentence's tokens found by text: the reply rendered after the prompt, cut where the sentence ends."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": sentence}], tokenize=False)
    reply = full[len(prompt_text):]
    return tokenizer(reply[:reply.index(sentence) + len(sentence)], add_special_tokens=False)["input_ids"]


_DIRECT: dict[tuple, float] = {}


@torch.no_grad()
def direct_logprob(model, tokenizer, prompt, sentence: str) -> float:
    """The sentence's log-probability after the prompt, the whole sequence run alone (no packing, no padding;
    the logits of its last positions, in fp64 from there)."""
    prompt_ids = tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False)["input_ids"]
    completion = sentence_tokens_from_text(tokenizer, prompt, sentence)
    key = (id(model), tuple(prompt_ids), tuple(completion))
    if key not in _DIRECT:
        ids = torch.tensor([prompt_ids + completion])
        logits = model(input_ids=ids, logits_to_keep=len(completion) + 1).logits[0, :-1]  # those predicting it
        logprobs = logits.double().log_softmax(-1)
        _DIRECT[key] = sum(float(logprobs[k, token]) for k, token in enumerate(completion))
    return _DIRECT[key]


def direct_probabilities(model, tokenizer, item) -> dict[str, float]:
    prompt = feedback_messages(*item)
    values = torch.tensor([direct_logprob(model, tokenizer, prompt, s) for _, s in SENTENCES]).softmax(0)
    return {v: float(sum(p for (w, _), p in zip(SENTENCES, values) if w == v)) for v in VERDICTS}


@pytest.mark.parametrize("max_row_tokens", [4096, 400])  # all in one packed row; a row per candidate or so
def test_probabilities_sum_to_one_and_match_each_sequence_run_alone(tiny, max_row_tokens):
    model, tokenizer = tiny
    done = []
    got = verdict_probabilities(model, tokenizer, items(), max_row_tokens=max_row_tokens, progress=done.append)
    assert sum(done) == len(CANDIDATES)
    assert len(got) == len(CANDIDATES) and got[0] == got[-1]  # the duplicate candidate
    for item, probabilities in zip(items(), got):
        assert list(probabilities) == list(VERDICTS)
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-12)
        expected = direct_probabilities(model, tokenizer, item)
        for verdict in VERDICTS:
            assert probabilities[verdict] == pytest.approx(expected[verdict], abs=1e-5, rel=1e-5)


def test_sentence_logprobs_match_the_direct_ones_packed_and_padded(tiny, monkeypatch):
    model, tokenizer = tiny
    sentences = [s for _, s in SENTENCES]
    packed = sentence_logprobs(model, tokenizer, items(), sentences)
    monkeypatch.setattr(verdicts, "can_pack", lambda *args: False)  # a model that cannot run packed rows
    padded = sentence_logprobs(model, tokenizer, items(), sentences)
    for item, row, padded_row in zip(items(), packed, padded):
        expected = [direct_logprob(model, tokenizer, feedback_messages(*item), s) for s in sentences]
        assert row == pytest.approx(expected, abs=1e-4)
        assert padded_row == pytest.approx(expected, abs=1e-4)


def test_a_verdict_sentence_is_tokenized_as_the_start_of_the_feedback_training_reads(tiny):
    _, tokenizer = tiny
    annotator = ReferenceAnnotator()
    for example, answer in CANDIDATES:
        note = annotator.annotate([(example, Answer(example.id, answer, answer, "m"))])[0]
        prompt = feedback_messages(example, choose_shots(example, SHOTS, 1, 0), answer)
        _, trained = prompt_completion_ids(tokenizer, prompt, [{"role": "assistant", "content": note.text}])
        opening = opening_ids(tokenizer, prompt, note.parts["verdict"])
        assert trained[:len(opening)] == opening
        assert opening == sentence_tokens_from_text(tokenizer, prompt, note.parts["verdict"])


def test_verdict_lines_are_the_opening_a_verify_completion_trains_and_are_read_as_such(tiny):
    model, tokenizer = tiny
    annotator = ReferenceAnnotator()
    for (example, answer), item in zip(CANDIDATES, items()):
        note = annotator.annotate([(example, Answer(example.id, answer, answer, "m"))])[0]
        trained_example = verify_example(example, item[1], note)
        prompt = feedback_messages(*item)
        assert trained_example.prompt == prompt
        _, trained = prompt_completion_ids(tokenizer, prompt, trained_example.completion)
        line = dict(LINES)[note.verdict]
        opening = opening_ids(tokenizer, prompt, line)
        assert trained[:len(opening)] == opening and trained_example.completion[0]["content"].startswith(line + "\n")
    got = verdict_probabilities(model, tokenizer, items(), openings=LINES)
    for item, probabilities in zip(items(), got):
        values = torch.tensor([direct_logprob(model, tokenizer, feedback_messages(*item), s) for _, s in LINES])
        expected = dict(zip(VERDICTS, values.softmax(0).tolist()))
        assert probabilities == pytest.approx(expected, abs=1e-5)


def test_summarise_on_hand_made_scores():
    def scored(p, verdict, f1, sources=("own",)):
        return {"p": dict(zip(VERDICTS, p)), "verdict": verdict, "f1": f1, "sources": list(sources), "log_mass": -1.0}

    rows = [scored((0.9, 0.05, 0.05), "correct", 1.0), scored((0.6, 0.3, 0.1), "partially correct", 0.5, ("untrained",)),
            scored((0.2, 0.1, 0.7), "incorrect", 0.0, ("own", "untrained")), scored((0.6, 0.1, 0.3), "correct", 1.0)]
    numbers = verdict_check.metrics(rows)
    assert numbers["all"]["candidates"] == 4 and numbers["all"]["right_by_f1"] == 3
    assert numbers["all"]["verdicts"] == {"correct": 2, "partially correct": 1, "incorrect": 1}
    assert numbers["all"]["auroc_correct"] == 0.875  # 0.6 ties 0.6: (1 + 1 + 0.5 + 1) / 4
    assert numbers["all"]["auroc_f1"] == pytest.approx(1.0)
    assert numbers["all"]["argmax_accuracy"] == 0.75  # the partial one's argmax is correct
    assert numbers["own"]["candidates"] == 3 and numbers["untrained"]["candidates"] == 2
    assert numbers["untrained"]["auroc_correct"] is None  # no candidate of its labelled correct


@pytest.fixture(scope="module")
def tiny_experiment(tiny_model_dir, tmp_path_factory):
    """base, SFT and LaFFi at one budget of 1 step and one seed, on 5 dev questions."""
    from laffi.experiments.experiment import experiment
    from laffi.experiments.grid import experiment_config_from

    root = tmp_path_factory.mktemp("verdict-experiment") / "experiment"
    run = {"model": {"name": str(tiny_model_dir), "threads": 2, "prompt_format": "plain", "dtype": "bfloat16"},
           "data": {"eval_size": 3, "dev_size": 5, "train_size": 6, "num_shots": 1},
           "generate": {"max_new_tokens": 3, "batch_size": 8},
           "train": {"warmup_steps": 0, "batch_size": 2, "max_seq_len": 192, "checkpoint_every": 0},
           "eval": {"bootstrap_samples": 100}}
    config = experiment_config_from({"run": run, "systems": ["base", "sft", "laffi"], "seeds": [0], "budgets": [1]})
    experiment(config, root)
    return root


def test_the_check_uses_the_feedback_prompt_training_used(tiny_experiment):
    shared = RunLayout(tiny_experiment)
    data = load_config(shared.config).data
    examples = {e.id: e for e in read_records(shared.train_examples, QAExample)}
    shots = read_records(shared.shots, QAExample)
    job = next(RunLayout.of(root) for root in ExperimentLayout(tiny_experiment).job_dirs()
               if RunLayout.of(root).training_set("laffi").exists())
    variant = RunLayout(job.sets.parent)  # the variant whose sets the job trained on, and its feedback
    feedback = {f.id: f for f in read_records(variant.feedback, Feedback)}
    for trained in read_records(job.training_set("laffi"), TrainingExample):
        example = examples[trained.id]
        assert trained.prompt == feedback_messages(example, choose_shots(example, shots, data.num_shots, data.seed),
                                                   feedback[trained.id].answer)


def test_the_check_scores_every_model_and_resumes(tiny_experiment, capsys, monkeypatch):
    layout = ExperimentLayout(tiny_experiment)
    results = check(tiny_experiment)
    written = json.loads(layout.verdict_check.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(results))
    entries = written["models"]
    assert sorted(e["system"] for e in entries.values()) == ["base", "laffi", "sft"]
    shared = layout.run
    dev = read_records(shared.dev_examples, QAExample)
    annotator = ReferenceAnnotator()
    for key, entry in entries.items():
        scored_run = RunLayout.of((layout.root / key).parent.parent) if entry["adapter"] else shared
        own = read_records(scored_run.predictions(entry["system"], "dev"), Prediction)
        base = read_records(shared.predictions("base", "dev"), Prediction)
        pairs = {(p.id, p.prediction) for p in own + base}
        assert {(c["id"], c["prediction"]) for c in entry["candidates"]} == pairs  # each distinct answer once
        by_id = {e.id: e for e in dev}
        for c in entry["candidates"]:
            assert sum(c["p"].values()) == pytest.approx(1, abs=1e-5)
            answer = Answer(c["id"], c["prediction"], "", "")
            assert c["verdict"] == annotator.annotate([(by_id[c["id"]], answer)])[0].verdict
        assert entry["metrics"]["all"]["candidates"] == len(pairs)
        assert entry["metrics"]["own"]["candidates"] == len(dev)
        assert entry["seed"] == (0 if entry["adapter"] else None)
        assert (entry["cell"] or "").startswith("reference.verdict+explanation+answer.h0.nall" if entry["adapter"] else "")
    assert "| laffi | reference.verdict+explanation+answer.h0.nall, train.batch_size=2, " in capsys.readouterr().out

    def no_loading(*args, **kwargs):
        raise AssertionError("a model already in verdict_check.json was scored again")

    monkeypatch.setattr(verdict_check, "load_model", no_loading)
    assert check(tiny_experiment) == results  # resumed: nothing left to score
    with pytest.raises(ValueError, match="--limit"):
        check(tiny_experiment, limit=2)


def test_the_check_scores_only_the_models_not_yet_written(tiny_experiment, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_experiment, copy)
    layout = ExperimentLayout(copy)
    layout.verdict_check.unlink(missing_ok=True)
    first = check(copy, systems=["sft"])
    assert sorted(e["system"] for e in first["models"].values()) == ["base", "sft"]
    second = check(copy)
    assert sorted(e["system"] for e in second["models"].values()) == ["base", "laffi", "sft"]
    assert all(second["models"][key] == value for key, value in first["models"].items())

    # an adapter's entry scored with it merged into the bf16 weights (before models.ADAPTER_ANSWERING 2): again
    written = json.loads(layout.verdict_check.read_text(encoding="utf-8"))
    key = next(k for k, e in written["models"].items() if e["system"] == "sft")
    assert written["models"][key]["answering"] == ADAPTER_ANSWERING
    assert "answering" not in written["models"]["base"]
    del written["models"][key]["answering"]
    written["models"][key]["metrics"] = "older"
    layout.verdict_check.write_text(json.dumps(written), encoding="utf-8")
    third = check(copy)
    assert third["models"][key]["metrics"] == second["models"][key]["metrics"]
    assert third["models"][key]["answering"] == ADAPTER_ANSWERING

    # its own dev answers made the old way: skipped (not scored as if new) until the experiment answers again
    job = RunLayout.of((copy / key).parent.parent)
    saved = yaml.safe_load(job.eval_config("sft", "dev").read_text())
    del saved["system"]["answering"]
    job.eval_config("sft", "dev").write_text(yaml.safe_dump(saved))
    written = json.loads(layout.verdict_check.read_text(encoding="utf-8"))
    del written["models"][key]
    layout.verdict_check.write_text(json.dumps(written), encoding="utf-8")
    assert key not in check(copy)["models"]


def test_sentences_are_the_reference_annotators():
    from laffi.annotators.reference import VERDICTS as WORDINGS

    assert [s for _, s in SENTENCES] == list(itertools.chain.from_iterable(WORDINGS[v] for v in VERDICTS))


def test_a_dev_evaluation_cut_short_by_a_crash_is_skipped_not_scored_for_good(tiny_experiment, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_experiment, copy)
    layout = ExperimentLayout(copy)
    layout.verdict_check.unlink(missing_ok=True)
    job = next(RunLayout.of(root) for root in layout.job_dirs() if RunLayout.of(root).adapter("sft").exists())
    # what a kill mid dev-evaluation leaves: the answers written so far, no metrics.json
    lines = job.predictions("sft", "dev").read_text().splitlines(keepends=True)
    job.predictions("sft", "dev").write_text("".join(lines[:2]))
    job.metrics("sft", "dev").unlink()
    assert "sft" not in {e["system"] for e in check(copy, systems=["sft"])["models"].values()}
    assert "sft is not trained and scored on dev yet; skipped" in capsys.readouterr().out
