"""LoRA training on a tiny model: the loss mask, learning, the PEFT format, and resume."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.checkpoint_crash import killed_after_a_checkpoint

from laffi.config import load_config
from laffi.layout import RunLayout
from laffi.models import load_tokenizer, quiet_peft
from laffi.prompts import prompt_ids
from laffi.records import TrainingExample, TrainLogEntry, read_records, write_records
from laffi.stages.batches import IGNORE, batch_order, tokenize
from laffi.stages.train import train

QUESTIONS = [("Who wrote Hamlet?", "William Shakespeare"), ("What is the capital of France?", "Paris"),
             ("How many legs has a spider?", "eight"), ("What colour is the sky?", "blue")]


def make_set(run_dir, name="sft"):
    examples = [TrainingExample(f"q{i}", [{"role": "system", "content": "Answer briefly."},
                                          {"role": "user", "content": q}],
                                [{"role": "assistant", "content": a}])
                for i, (q, a) in enumerate(QUESTIONS)]
    write_records(RunLayout(run_dir).training_set(name), examples)
    return examples


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_loss_mask_covers_exactly_the_prompt(tiny_model_dir, tmp_path, prompt_format):
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"model.prompt_format={prompt_format}"])
    tokenizer = load_tokenizer(config.model)
    examples = make_set(tmp_path)
    for example, (ids, labels) in zip(examples, tokenize(tokenizer, examples, max_seq_len=512)):
        prompt = prompt_ids(tokenizer, example.prompt)
        assert ids[: len(prompt)] == prompt  # the model sees the same prompt as at generation time
        assert labels[: len(prompt)] == [IGNORE] * len(prompt)
        assert all(label != IGNORE for label in labels[len(prompt):])
        completion = tokenizer.decode(ids[len(prompt):])
        # the plain layout puts a space after "Answer:"; the text itself follows
        assert completion.removeprefix(" ").startswith(example.completion[0]["content"])
        assert tokenizer.eos_token in completion  # the model learns to stop


def test_truncation_keeps_the_completion(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(load_config(overrides=[f"model.name={tiny_model_dir}"]).model)
    (ids, labels), = tokenize(tokenizer, make_set(tmp_path)[:1], max_seq_len=12)
    assert len(ids) == 12 and labels[-1] != IGNORE
    assert sum(label != IGNORE for label in labels) < 12  # some prompt is kept, masked


def test_the_shortest_rows_keep_one_prompt_token_so_their_completion_token_is_a_target(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(load_config(overrides=[f"model.name={tiny_model_dir}"]).model)
    examples = make_set(tmp_path)
    for (ids, labels), example in zip(tokenize(tokenizer, examples, max_seq_len=2), examples):
        prompt = prompt_ids(tokenizer, example.prompt)
        # the model predicts label i from ids[:i]: label 0 is never a target, so it must be the prompt's
        assert ids == [prompt[-1], labels[1]] and labels[0] == IGNORE
    with pytest.raises(ValueError, match="max_seq_len must be >= 2"):
        tokenize(tokenizer, examples, max_seq_len=1)


def test_a_training_says_how_many_examples_reach_max_seq_len(tiny_model_dir, tmp_path, capsys):
    make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir, "train.steps=1", "train.max_seq_len=2"))
    train(RunLayout(tmp_path), "sft", config.model, config.train)
    assert "train sft: 4 of 4 examples reach train.max_seq_len=2" in capsys.readouterr().out


def test_a_target_module_the_model_lacks_is_refused_though_another_matches(tiny_model_dir):
    # Phi-3 fuses q, k and v into qkv_proj: PEFT would adapt o_proj alone and say nothing
    from transformers import AutoModelForCausalLM

    from laffi.config import ConfigError
    from laffi.stages.train import add_lora

    config = load_config(overrides=[f"model.name={tiny_model_dir}", "train.target_modules=qkv_proj,o_proj"])
    with pytest.raises(ConfigError, match="train.target_modules: .* has no module named qkv_proj; its linear layers "
                                          "are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"):
        add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config.model, config.train)
    dotted = load_config(overrides=[f"model.name={tiny_model_dir}", "train.target_modules=self_attn.q_proj"])
    assert add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), dotted.model, dotted.train)


@pytest.mark.parametrize("group_by", ["length", "prefix"])
def test_batch_order_is_deterministic_and_covers_every_example(group_by):
    rows = [([n % 3, 7, n], [IGNORE, IGNORE, n]) for n in (5, 50, 7, 48, 6, 49, 8, 47, 9, 46)]
    batches = batch_order(rows, batch_size=2, num_batches=5, seed=3, group_by=group_by)
    assert batches == batch_order(rows, batch_size=2, num_batches=5, seed=3, group_by=group_by)
    assert sorted(i for b in batches for i in b) == list(range(10))  # one epoch: each example once
    assert batches != batch_order(rows, batch_size=2, num_batches=5, seed=4, group_by=group_by)
    assert len(batch_order(rows, batch_size=2, num_batches=12, seed=3, group_by=group_by)) == 12  # more than one epoch


@pytest.mark.parametrize("group_by", ["length", "prefix"])
def test_no_rows_is_an_error_not_an_endless_loop(group_by):
    with pytest.raises(ValueError, match="no rows"):
        batch_order([], batch_size=2, num_batches=3, seed=0, group_by=group_by)


def test_packed_batches_hold_one_family_where_they_can():
    """Three "articles" (first token 0, 1, 2) of 4 examples each, batches of 2: every batch is one article,
    and across epochs the pairs inside an article change."""
    rows = [([article, 9, k], [IGNORE, IGNORE, k]) for article in range(3) for k in range(4)]
    batches = batch_order(rows, batch_size=2, num_batches=60, seed=0, group_by="prefix")
    assert all(len({rows[i][0][0] for i in batch}) == 1 for batch in batches)
    assert len({tuple(sorted(b)) for b in batches}) > 6


def overrides(tiny_model_dir, *extra):
    return [f"model.name={tiny_model_dir}", "train.steps=6", "train.batch_size=4", "train.lr=5e-3",
            "train.warmup_steps=0", "train.schedule=constant", "train.lora_dropout=0.1",
            "train.checkpoint_every=3", *extra]


def test_lora_training_learns_and_saves_a_peft_adapter(tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir))
    out = train(RunLayout(tmp_path), "sft", config.model, config.train)
    # one process: no distributed kind named (accelerate calls it "NO")
    assert "train sft: 1 process(es) x 1 forward pass(es) of up to 4 example(s)" in capsys.readouterr().out

    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "config.yaml", "summary.json",
        "train_log.jsonl"]
    log = read_records(out / "train_log.jsonl", TrainLogEntry)
    assert [e.step for e in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1].loss < log[0].loss  # the same 4 examples every step: the loss must fall
    assert all(e.tokens_per_s > 0 for e in log)
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)  # B starts at zero; training moved it

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with quiet_peft():
        reloaded = PeftModel.from_pretrained(base, out)
    assert reloaded.peft_config["default"].r == config.train.lora_r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final_loss"] == log[-1].loss


def test_a_crash_while_the_adapter_is_saved_leaves_it_unfinished_and_a_rerun_finishes_it(tiny_model_dir, tmp_path,
                                                                                         monkeypatch):
    import laffi.stages.train as train_module
    from laffi.layout import adapter_finished

    make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir))  # 6 steps, a checkpoint at step 3
    layout = RunLayout(tmp_path)

    def killed(path, data):  # the adapter's weights are written by now, its summary not
        raise RuntimeError("killed")

    monkeypatch.setattr(train_module, "write_json", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(layout, "sft", config.model, config.train)
    monkeypatch.undo()
    assert not adapter_finished(layout.adapter("sft")) and layout.checkpoint("sft").exists()
    out = train(layout, "sft", config.model, config.train)  # resumed, not taken as finished
    summary = json.loads(layout.train_summary("sft").read_text())
    assert adapter_finished(out) and summary["resumed_from_step"] == 3 and summary["steps"] == 6
    assert not layout.checkpoint("sft").exists() and sorted(p.name for p in out.parent.iterdir()) == ["sft"]


def test_the_log_gives_the_learning_rate_each_step_trained_at(tiny_model_dir, tmp_path):
    make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir, "train.steps=4", "train.warmup_steps=2",
                                             "train.schedule=cosine", "train.checkpoint_every=0"))
    out = train(RunLayout(tmp_path), "sft", config.model, config.train)
    # warm-up from 0 over 2 steps, then a cosine to 0 at step 5: step 1 trains at 0 (as transformers' Trainer's
    # first step does), step 3 at the peak (the rate after step 4, 0, is not one a step trained at)
    lrs = [e.lr for e in read_records(out / "train_log.jsonl", TrainLogEntry)]
    assert lrs == pytest.approx([0.0, config.train.lr / 2, config.train.lr, config.train.lr / 2])


def test_a_step_cut_into_rows_within_max_row_tokens_trains_the_same_adapter(tiny_model_dir, tmp_path):
    """backward_passes runs a backward per row; with accelerate's scaling the step's gradient is the whole
    row's (in fp32, where sums in another order agree; and no dropout: a cut draws the shared prefix's
    dropout mask once per row)."""
    adapters = {}
    for budget in (4096, 48):
        make_set(tmp_path / str(budget))
        config = load_config(overrides=overrides(tiny_model_dir) + ["model.dtype=float32", "train.lora_dropout=0",
                                                                    f"train.max_row_tokens={budget}"])
        out = train(RunLayout(tmp_path / str(budget)), "sft", config.model, config.train)
        adapters[budget] = load_file(out / "adapter_model.safetensors")
        losses = [e.loss for e in read_records(out / "train_log.jsonl", TrainLogEntry)]
        adapters[f"{budget} losses"] = losses
    from laffi.models import load_tokenizer
    from laffi.stages.batches import packed_parts, tokenize

    rows = tokenize(load_tokenizer(config.model), make_set(tmp_path / "rows"), config.train.max_seq_len)
    assert len(packed_parts(rows, 48)) > 1 and len(packed_parts(rows, 4096)) == 1  # the cut happened
    assert adapters["48 losses"] == pytest.approx(adapters["4096 losses"], rel=1e-4)
    for name in adapters[4096]:
        torch.testing.assert_close(adapters[48][name], adapters[4096][name], rtol=1e-4, atol=1e-6)


def test_interrupted_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, monkeypatch):
    config = load_config(overrides=overrides(tiny_model_dir))
    make_set(tmp_path / "straight")
    straight = load_file(train(RunLayout(tmp_path / "straight"), "sft", config.model, config.train)
                         / "adapter_model.safetensors")

    make_set(tmp_path / "crashed")
    with killed_after_a_checkpoint(monkeypatch):  # at step 3
        train(RunLayout(tmp_path / "crashed"), "sft", config.model, config.train)
    out = RunLayout(tmp_path / "crashed").adapter("sft")
    assert (out / "checkpoint").exists() and not (out / "adapter_model.safetensors").exists()

    resumed = load_file(train(RunLayout(tmp_path / "crashed"), "sft", config.model, config.train)
                        / "adapter_model.safetensors")
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 3
    assert [e.step for e in read_records(out / "train_log.jsonl", TrainLogEntry)] == [1, 2, 3, 4, 5, 6]
    assert not (out / "checkpoint").exists()
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-4, atol=1e-6)


def test_changed_settings_do_not_mix_with_a_finished_adapter(tiny_model_dir, tmp_path):
    from laffi.config import ConfigError

    make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir, "train.steps=2"))
    train(RunLayout(tmp_path), "sft", config.model, config.train)
    changed = load_config(overrides=overrides(tiny_model_dir, "train.steps=3"))
    with pytest.raises(ConfigError, match="train.steps"):
        train(RunLayout(tmp_path), "sft", changed.model, changed.train)


def test_a_rebuilt_set_does_not_reuse_the_adapter_of_the_old_one(tiny_model_dir, tmp_path):
    from laffi.config import ConfigError

    examples = make_set(tmp_path)
    config = load_config(overrides=overrides(tiny_model_dir, "train.steps=2"))
    train(RunLayout(tmp_path), "sft", config.model, config.train)
    train(RunLayout(tmp_path), "sft", config.model, config.train)  # the same set: the finished adapter
    write_records(RunLayout(tmp_path).training_set("sft"), examples[:3])
    with pytest.raises(ConfigError, match=r"different settings \(inputs\.set\)"):
        train(RunLayout(tmp_path), "sft", config.model, config.train)


def test_an_adapter_begun_by_an_older_laffi_is_checked_against_its_old_config(tiny_model_dir, tmp_path):
    from laffi.config import ConfigError, save_config

    make_set(tmp_path)
    layout = RunLayout(tmp_path)
    before = load_config(overrides=overrides(tiny_model_dir, "train.steps=2"))
    # what an older laffi left: adapters/sft/train_config.yaml and a checkpoint to resume
    save_config(layout.old_train_config("sft"), {"model": before.model, "train": before.train})
    (layout.checkpoint("sft") / "state").mkdir(parents=True)
    changed = load_config(overrides=overrides(tiny_model_dir, "train.steps=3"))
    with pytest.raises(ConfigError, match="train.steps"):
        train(layout, "sft", changed.model, changed.train)
    assert layout.train_config("sft").exists() and not layout.old_train_config("sft").exists()  # taken over


def test_qa_evaluation_during_training_logs_dev_scores_at_the_configured_steps(tiny_overrides, tmp_path):
    from laffi.stages.evaluate import dev_scorer
    from laffi.stages.prepare import prepare

    def run(out, *extra):
        config = load_config(overrides=[*tiny_overrides, "train.steps=5", "train.eval_every=2",
                                        "train.eval_questions=3", *extra])
        layout = RunLayout(out)
        prepare(layout, config.data)
        make_set(out)
        train(layout, "sft", config.model, config.train, dev=dev_scorer(layout, config.data, config.generate, config.train))
        return layout

    layout = run(tmp_path / "last")
    log = read_records(layout.train_log("sft"), TrainLogEntry)
    assert [e.step for e in log if e.dev_f1 is not None] == [2, 4, 5]  # every 2 steps, and after the last
    assert all(0 <= e.dev_f1 <= 100 and 0 <= e.dev_exact <= 100 for e in log if e.dev_f1 is not None)
    summary = json.loads(layout.train_summary("sft").read_text())
    assert summary["kept"] == "last step" and summary["dev_best"]["step"] in (2, 4, 5)

    best = run(tmp_path / "best", "train.keep_best=true")
    summary = json.loads(best.train_summary("sft").read_text())
    step = summary["dev_best"]["step"]
    assert summary["kept"] == f"step {step} (best dev F1)" and not best.best_adapter("sft").exists()
    weights = [load_file(path / "adapter_model.safetensors") for path in (layout.adapter("sft"), best.adapter("sft"))]
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same == (step == 5)  # the best step's adapter, which is the last one only if step 5 was best

    # the tiny model's dev F1 ties (all 0, the first of ties kept); scripted scores tell the best step apart
    scripted = iter([10.0, 30.0, 20.0])  # at steps 2, 4 and 5

    def scorer(model, tokenizer, label):
        return {"exact": 0.0, "f1": next(scripted)}

    config = load_config(overrides=[*tiny_overrides, "train.steps=5", "train.eval_every=2", "train.keep_best=true"])
    chosen = RunLayout(tmp_path / "scripted")
    make_set(chosen.root)
    train(chosen, "sft", config.model, config.train, dev=scorer)
    summary = json.loads(chosen.train_summary("sft").read_text())
    assert summary["dev_best"] == {"step": 4, "f1": 30.0, "exact": 0.0} and summary["kept"] == "step 4 (best dev F1)"
    kept = load_file(chosen.adapter("sft") / "adapter_model.safetensors")
    assert not all(torch.equal(weights[0][k], kept[k]) for k in kept)  # step 4's, not the last step's


def test_dev_scoring_during_training_leaves_the_adapter_as_without(tiny_overrides, tmp_path):
    # scoring answers by generation between steps must not draw from the RNG that the LoRA dropout masks
    # and the batches use, nor leave the model in eval mode: the adapter is the one trained without it
    from laffi.stages.evaluate import dev_scorer
    from laffi.stages.prepare import prepare

    adapters = []
    for name, every in (("plain", 0), ("scored", 1)):
        config = load_config(overrides=[*tiny_overrides, "train.steps=4", f"train.eval_every={every}",
                                        "train.eval_questions=2", "train.lora_dropout=0.3"])
        layout = RunLayout(tmp_path / name)
        prepare(layout, config.data)
        make_set(layout.root)
        train(layout, "sft", config.model, config.train,
              dev=dev_scorer(layout, config.data, config.generate, config.train))
        adapters.append(load_file(layout.adapter("sft") / "adapter_model.safetensors"))
        log = read_records(layout.train_log("sft"), TrainLogEntry)
        assert [e.dev_f1 is not None for e in log] == [bool(every)] * 4
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_qa_evaluation_during_training_needs_a_dev_set(tiny_overrides, tmp_path):
    from laffi.config import ConfigError
    from laffi.stages.evaluate import dev_scorer

    config = load_config(overrides=[*tiny_overrides, "train.eval_every=2"])
    with pytest.raises(ConfigError, match="train.eval_every: .*dev.jsonl is missing; run `laffi prepare"):
        dev_scorer(RunLayout(tmp_path), config.data, config.generate, config.train)
    from laffi.stages.prepare import prepare  # split without one: no `laffi prepare` can add it afterwards
    prepare(RunLayout(tmp_path / "no-dev"), replace(config.data, dev_size=0))
    with pytest.raises(ConfigError, match="was split without a dev set .*; prepare a new run directory"):
        dev_scorer(RunLayout(tmp_path / "no-dev"), config.data, config.generate, config.train)
    with pytest.raises(ConfigError, match="train.keep_best: needs train.eval_every > 0"):
        load_config(overrides=["train.keep_best=true"])


def test_a_second_stage_continues_the_first_stages_adapter(tiny_model_dir, tmp_path):
    from laffi.config import ConfigError
    from laffi.stages.train import train_system
    from laffi.systems import load_systems

    layout = RunLayout(tmp_path)
    make_set(tmp_path, "laffi")
    make_set(tmp_path, "laffi-then-sft")
    config = load_config(overrides=overrides(tiny_model_dir))
    first = train(layout, "laffi", config.model, config.train)
    # lr so small that the second stage barely moves: its weights are the first stage's, not a new LoRA's
    still = load_config(overrides=overrides(tiny_model_dir, "train.lr=1e-9"))
    systems = {s.name: s for s in load_systems(["laffi", "laffi-then-sft"])}
    second = train_system(layout, systems["laffi-then-sft"], still.model, still.data, still.generate, still.train)
    before, after = (load_file(path / "adapter_model.safetensors") for path in (first, second))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert any("lora_B" in k and before[k].abs().sum() > 0 for k in before)  # a new LoRA's B would be zero
    assert json.loads(layout.train_summary("laffi-then-sft").read_text())["init"] == str(first)

    other = load_config(overrides=overrides(tiny_model_dir, "train.lora_r=4"))
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match="train.init: .* has LoRA r=16.*train.lora_r=4"):
        train(RunLayout(tmp_path / "other"), "laffi-then-sft", other.model, other.train, init=first)
    with pytest.raises(ConfigError, match="train.init: no finished adapter"):
        train(RunLayout(tmp_path / "other"), "laffi-then-sft", other.model, other.train, init=tmp_path / "none")
    # the same again: finished, returned as it is
    assert train_system(layout, systems["laffi-then-sft"], still.model, still.data, still.generate, still.train) == second
    # the first stage retrained (new feedback, say): the second was made from the old one, and says so
    shutil.rmtree(first)
    train(layout, "laffi", config.model, replace(config.train, seed=1))
    with pytest.raises(ConfigError, match=r"written with different settings \(inputs.init\)"):
        train_system(layout, systems["laffi-then-sft"], still.model, still.data, still.generate, still.train)
    # once finished, a second stage no longer needs its first: without it, nothing is checked
    shutil.rmtree(first)
    assert train_system(layout, systems["laffi-then-sft"], still.model, still.data, still.generate, still.train) == second


def test_a_longer_recipe_trains_its_multiple_of_the_steps(tiny_model_dir, tmp_path):
    from laffi.stages.train import train_system
    from laffi.systems import load_system

    make_set(tmp_path, "sft-long")
    config = load_config(overrides=overrides(tiny_model_dir, "train.steps=3"))
    out = train_system(RunLayout(tmp_path), load_system("sft-long"), config.model, config.data, config.generate,
                       config.train)
    assert [e.step for e in read_records(out / "train_log.jsonl", TrainLogEntry)] == [1, 2, 3, 4, 5, 6]


def test_the_saved_train_config_refuses_another_init_or_aux_weight_and_takes_old_files_as_this_recipe(tmp_path):
    import yaml

    from laffi.config import ConfigError, ModelConfig, TrainConfig
    from laffi.stages.train import Continuation, save_train_config
    from laffi.systems import Preference

    layout = RunLayout(tmp_path)
    layout.adapter("mine").mkdir(parents=True)
    layout.train_log("mine").write_text("{}\n")  # a training begun: its config is checked, not replaced
    save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("laffi", 1.0))
    save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("laffi", 1.0))  # the same: fine
    with pytest.raises(ConfigError, match="recipe.aux_weight"):
        save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("laffi", 0.5))
    with pytest.raises(ConfigError, match="recipe.init"):
        save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("", 1.0))
    saved = yaml.safe_load(layout.train_config("mine").read_text())
    del saved["recipe"]  # as laffi before train.aux wrote it, which did not record the recipe
    layout.train_config("mine").write_text(yaml.safe_dump(saved))
    save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("laffi", 1.0))
    assert yaml.safe_load(layout.train_config("mine").read_text())["recipe"] == {"init": "laffi", "aux_weight": 1.0,
                                                                                 "preference": None}
    saved = yaml.safe_load(layout.train_config("mine").read_text())
    del saved["recipe"]["preference"]  # as laffi before train.preference wrote it: no preference term
    layout.train_config("mine").write_text(yaml.safe_dump(saved))
    save_train_config(layout, "mine", ModelConfig(), TrainConfig(), Continuation("laffi", 1.0))
    with pytest.raises(ConfigError, match="recipe.preference"):
        save_train_config(layout, "mine", ModelConfig(), TrainConfig(),
                          Continuation("laffi", 1.0, Preference(beta=0.2)))


def test_predictions_of_an_adapter_trained_again_are_not_reused(tiny_overrides, tmp_path):
    import shutil

    import yaml

    from laffi.config import ConfigError
    from laffi.stages.evaluate import evaluate, older_adapter_answers
    from laffi.stages.prepare import prepare

    layout = RunLayout(tmp_path)
    first, second = (load_config(overrides=[*tiny_overrides, f"train.steps={n}"]) for n in (1, 2))
    prepare(layout, first.data)
    make_set(tmp_path)
    adapter = train(layout, "sft", first.model, first.train)
    for _ in range(2):  # the second time: the predictions there are this adapter's
        evaluate(layout, "sft", first.model, first.data, first.generate, first.eval, adapter=adapter)
    saved = yaml.safe_load(layout.eval_config("sft").read_text())
    assert not older_adapter_answers(layout, "sft", "heldout", first.model)
    del saved["system"]["answering"]  # as a laffi that merged adapters into 16-bit weights wrote it
    layout.eval_config("sft").write_text(yaml.safe_dump(saved))
    assert older_adapter_answers(layout, "sft", "heldout", first.model)
    with pytest.raises(ConfigError, match=r"different settings \(system\.answering\)"):
        evaluate(layout, "sft", first.model, first.data, first.generate, first.eval, adapter=adapter)
    shutil.rmtree(layout.evaluation("sft"))
    fp32 = replace(first.model, dtype="float32")  # merged into fp32 weights, by older laffis too: not redone
    evaluate(layout, "sft", fp32, first.data, first.generate, first.eval, adapter=adapter)
    assert "answering" not in yaml.safe_load(layout.eval_config("sft").read_text())["system"]
    assert not older_adapter_answers(layout, "sft", "heldout", fp32)
    shutil.rmtree(layout.evaluation("sft"))
    shutil.rmtree(adapter)
    train(layout, "sft", second.model, second.train)
    evaluate(layout, "sft", first.model, first.data, first.generate, first.eval, adapter=adapter)  # a fresh start
    shutil.rmtree(adapter)
    train(layout, "sft", first.model, first.train)
    with pytest.raises(ConfigError, match=r"different settings \(inputs\.adapter\)"):
        evaluate(layout, "sft", first.model, first.data, first.generate, first.eval, adapter=adapter)


def test_a_resumed_keep_best_training_keeps_the_best_adapter_of_its_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    """What a crashed training wrote into best/ after its last checkpoint (here: zeros, as a step trained
    again might not reach) is replaced by the best adapter the checkpoint carried."""
    from laffi.stages.evaluate import dev_scorer
    from laffi.stages.prepare import prepare

    config = load_config(overrides=[*tiny_overrides, "train.steps=4", "train.eval_every=1", "train.eval_questions=2",
                                    "train.keep_best=true", "train.checkpoint_every=2"])

    def run(root):
        layout = RunLayout(root)
        prepare(layout, config.data)
        make_set(root)
        return train(layout, "sft", config.model, config.train,
                     dev=dev_scorer(layout, config.data, config.generate, config.train))

    straight = load_file(run(tmp_path / "straight") / "adapter_model.safetensors")
    with killed_after_a_checkpoint(monkeypatch):  # at step 2
        run(tmp_path / "crashed")
    best = RunLayout(tmp_path / "crashed").best_adapter("sft") / "adapter_model.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(best).items()}, best)
    resumed = load_file(run(tmp_path / "crashed") / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-4, atol=1e-6)


def test_a_training_on_another_model_than_the_run_answered_with_says_so(tmp_path):
    from laffi.config import ModelConfig, save_config
    from laffi.layout import RunLayout, sidecar_config
    from laffi.stages.train import answered_by_another_model

    layout = RunLayout(tmp_path)
    assert answered_by_another_model(layout, ModelConfig()) is None  # no answers yet
    save_config(sidecar_config(layout.answers), {"model": ModelConfig(name="Qwen/Qwen2.5-7B-Instruct")})
    assert answered_by_another_model(layout, ModelConfig(name="Qwen/Qwen2.5-7B-Instruct")) is None
    note = answered_by_another_model(layout, ModelConfig())
    assert "answered by model.name=Qwen/Qwen2.5-7B-Instruct" in note and "loads model.name=embedded" in note


def test_a_system_whose_set_build_did_not_write_says_how_to_build_it(tiny_model_dir, tmp_path):
    config = load_config(overrides=overrides(tiny_model_dir))
    with pytest.raises(FileNotFoundError, match=r"no training set for laffi-dpo; `laffi build .* "
                                                r"systems.names=\.\.\.,laffi-dpo` writes it"):
        train(RunLayout(tmp_path), "laffi-dpo", config.model, config.train)
