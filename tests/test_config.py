from pathlib import Path

import pytest
import yaml

from laffi.config import PRESETS, ConfigError, RunConfig, load_config, non_default, save_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_need_no_configuration():
    config = load_config()
    assert config.model.name == "embedded"
    assert config.data.source == "embedded"
    assert config.data.eval_size >= 200


def test_overrides_are_typed_and_nested():
    config = load_config(overrides=["train.steps=7", "train.lr=1e-3", "train.target_modules=q_proj,v_proj",
                                    "model.name=Qwen/Qwen2.5-7B-Instruct"])
    assert config.train.steps == 7 and config.train.lr == 1e-3
    assert config.train.target_modules == ["q_proj", "v_proj"]
    assert config.model.name == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("override, option", [
    ("train.steps=0", "train.steps"),
    ("train.stepz=3", "train.stepz"),
    ("train.lr=fast", "train.lr"),
    ("train.max_grad_norm=0", "train.max_grad_norm"),  # would zero every gradient (a negative one reverse it)
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
    ("train.lora_alpha=0", "train.lora_alpha"),
    ("train.weight_decay=-5", "train.weight_decay"),
    ("train.max_seq_len=1", "train.max_seq_len"),  # a row of one token has no target to learn
    ("train.lr=.inf", "train.lr"),  # YAML reads .inf and 1e400 as infinity
    ("train.weight_decay=1e400", "train.weight_decay"),
    ("model.dtype=int3", "model.dtype"),
    ("model.attention=flash", "model.attention"),
    ("data.eval_size=0", "data.eval_size"),
    ("annotate.annotator=oracle", "annotate.annotator"),
    ("nonsense", "nonsense"),
    ("generate.base_url=localhost:8000", "generate.base_url: expected http"),  # the client would read localhost://
    ("model.device=cuda:x", "model.device"),
])
def test_bad_options_are_named(override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        load_config(overrides=[override])


@pytest.mark.parametrize("overrides, option", [(["model=foo", "model.name=x"], "model was given a value"),
                                               (["model.name=x", "model=foo"], "model is a section")])
def test_an_override_that_clashes_with_another_is_named(overrides, option):
    with pytest.raises(ConfigError, match=option):
        load_config(overrides=overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        load_config(preset="huge")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build(preset):
    assert isinstance(load_config(preset=preset), RunConfig)


def test_saved_settings_refuse_to_mix(tmp_path):
    path = tmp_path / "stage.yaml"
    save_config(path, {"train": load_config().train})
    assert yaml.safe_load(path.read_text())["train"]["steps"] == load_config().train.steps
    save_config(path, {"train": load_config().train})  # same settings: fine
    with pytest.raises(ConfigError, match="train.steps"):
        save_config(path, {"train": load_config(overrides=["train.steps=99"]).train})
    assert yaml.safe_load(path.read_text())["train"]["steps"] == load_config().train.steps  # left as it was


def test_non_default_holds_only_what_differs():
    assert non_default(RunConfig().train) == {}
    assert non_default(load_config(overrides=["train.steps=7", "train.lr=1e-3"]).train) == {"steps": 7, "lr": 1e-3}


@pytest.mark.parametrize("text, where", [("not: [valid\n", ":2:1"), ("train:\n  steps: 4\n bad: x\n", ":3:")])
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}") and "not valid YAML" in message and "\n" not in message


def test_shipped_configs_exist():
    assert CONFIGS, "configs/ should ship example configs"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_says_how_to_run_it(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# laffi run") and path.name in first_line
    assert isinstance(yaml.safe_load(path.read_text()), dict)
    load_config(path)


@pytest.mark.parametrize("path", [p for p in CONFIGS if "Instruct" in load_config(p).model.name], ids=lambda p: p.name)
def test_a_shipped_config_of_an_instruction_model_answers_in_its_chat_template(path):
    # `laffi run` starts from the default preset, whose plain layout is the embedded 135M model's choice
    assert load_config(path, preset="default").model.prompt_format == "chat"


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_config(p).data.source == "embedded"], ids=lambda p: p.name)
def test_every_shipped_config_on_the_embedded_data_can_split_it(path, tmp_path):
    from laffi.layout import RunLayout
    from laffi.stages.prepare import prepare

    data = load_config(path).data
    train, _ = prepare(RunLayout(tmp_path), data)
    assert len(train) == data.train_size or not data.train_size


def test_a_number_is_not_taken_for_a_name():
    with pytest.raises(ConfigError, match="model.name: expected str, got 5"):
        load_config(overrides=["model.name=5"])
    assert load_config(overrides=["train.target_modules=q_proj,v_proj"]).train.target_modules == ["q_proj", "v_proj"]


def test_a_config_is_compared_once_its_stage_has_written_something(tmp_path):
    path, output = tmp_path / "stage.yaml", tmp_path / "answers.jsonl"
    save_config(path, {"data": load_config(overrides=["data.source=typo.json"]).data}, outputs=[output])
    output.write_text("")  # opened by a stage that failed before its first record
    save_config(path, {"data": load_config().data}, outputs=[output])  # nothing made yet: replaced
    assert yaml.safe_load(path.read_text())["data"]["source"] == "embedded"
    output.write_text("{}\n")
    with pytest.raises(ConfigError, match="data.source"):
        save_config(path, {"data": load_config(overrides=["data.source=other.json"]).data}, outputs=[output])


def test_operational_options_may_change_on_a_resume_and_inputs_may_not(tmp_path):
    path = tmp_path / "stage.yaml"
    first = load_config(overrides=["generate.timeout=10", "model.threads=2"])
    save_config(path, {"model": first.model, "generate": first.generate}, inputs={"set": "aaa"})
    later = load_config(overrides=["generate.timeout=600", "generate.retries=9", "model.threads=8"])
    save_config(path, {"model": later.model, "generate": later.generate}, inputs={"set": "aaa"})
    with pytest.raises(ConfigError, match=r"different settings \(generate.max_new_tokens\)"):
        save_config(path, {"generate": load_config(overrides=["generate.max_new_tokens=3"]).generate})
    with pytest.raises(ConfigError, match=r"different settings \(inputs.set\)"):
        save_config(path, {"model": later.model, "generate": later.generate}, inputs={"set": "bbb"})
    older = yaml.safe_load(path.read_text())
    del older["inputs"]  # as a laffi that did not record its inputs wrote it
    path.write_text(yaml.safe_dump(older))
    save_config(path, {"model": later.model, "generate": later.generate}, inputs={"set": "bbb"})
    assert yaml.safe_load(path.read_text())["inputs"] == {"set": "bbb"}
    # an input a later laffi records (here "init") is taken to match where the saved config lacks it
    save_config(path, {"model": later.model, "generate": later.generate}, inputs={"set": "bbb", "init": "ccc"})
    with pytest.raises(ConfigError, match=r"different settings \(inputs.init\)"):
        save_config(path, {"model": later.model, "generate": later.generate}, inputs={"set": "bbb", "init": "ddd"})
    # the bootstrap's settings give only intervals, which every evaluation computes again from its predictions
    evaluation = tmp_path / "eval.yaml"
    save_config(evaluation, {"eval": load_config().eval})
    save_config(evaluation, {"eval": load_config(overrides=["eval.bootstrap_samples=2000", "eval.seed=3"]).eval})


def test_a_section_whose_lines_are_all_commented_out_changes_nothing(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  # name: Qwen/Qwen2.5-7B-Instruct\ntrain:\n  steps: 8\n")
    for overrides in ([], ["model.threads=2"]):  # with an override it replaced the preset's section by the defaults
        config = load_config(path, preset="default", overrides=overrides)
        assert config.model.prompt_format == "plain" and config.train.steps == 8


def test_override_values_yaml_would_misread_are_taken_as_written():
    from laffi.config import parse_overrides

    assert parse_overrides(["data.source=runs/a #2/train.jsonl", "model.name=*model", "data.seed=3"]) == {
        "data": {"source": "runs/a #2/train.jsonl", "seed": 3}, "model": {"name": "*model"}}


def test_saved_settings_compare_older_nested_options_at_their_defaults_and_numbers_written_by_hand(tmp_path):
    from laffi.stages.train import Continuation
    from laffi.systems import Preference

    config = load_config(overrides=["train.lr=3e-4"])
    path, output = tmp_path / "config.yaml", tmp_path / "out.jsonl"
    output.write_text("begun\n")
    recipe = Continuation(preference=Preference())
    save_config(path, {"train": config.train, "recipe": recipe}, outputs=[output])
    saved = yaml.safe_load(path.read_text())
    del saved["recipe"]["preference"]["loss"], saved["recipe"]["preference"]["desirable_weight"]  # as before kto
    path.write_text(yaml.safe_dump(saved).replace("lr: 0.0003", "lr: 3e-4"))  # YAML 1.1: the string '3e-4'
    assert "3e-4" in path.read_text()
    save_config(path, {"train": config.train, "recipe": recipe}, outputs=[output])
    with pytest.raises(ConfigError, match=r"different settings \(recipe.preference\)"):
        save_config(path, {"train": config.train, "recipe": Continuation(preference=Preference(beta=0.5))},
                    outputs=[output])


def test_a_run_may_change_its_systems_but_not_how_its_model_answers(tmp_path):
    from laffi.layout import RunLayout
    from laffi.stages.prepare import save_run_config

    layout = RunLayout(tmp_path)
    save_run_config(layout, load_config())
    layout.answers.write_text("{}\n")  # the model has written something
    save_run_config(layout, load_config(overrides=["systems.names=base,sft,laffi-dpo", "systems.compare_with=laffi"]))
    with pytest.raises(ConfigError, match=r"\(model.prompt_format\); use a new run directory, or delete what the model"):
        save_run_config(layout, load_config(preset="default", overrides=["model.prompt_format=chat"]))

