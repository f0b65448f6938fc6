"""Every shipped experiment config parses and says how to run it; defaults, overrides, and bad
configs refused by option name.

    python -m pytest tests/experiments/test_experiment_config.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from laffi.annotators.content import CONTENTS, FULL
from laffi.config import ConfigError, TrainConfig
from laffi.experiments.grid import AXES, ExperimentConfig, experiment_config_from, load_experiment_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml"))
BUDGETS = Path(__file__).parents[2] / "configs" / "experiments" / "budgets.yaml"


def test_there_is_an_experiment_config_for_every_question():
    configs = {path.stem: load_experiment_config(path) for path in CONFIGS}
    assert sorted(configs) == ["annotator", "budgets", "content", "curve-32", "curve-512", "equal-steps", "finalists",
                               "human-ratio", "screen", "screen-k4", "size", "strict-annotator"]
    # screen.yaml is a dev screen (--dev-only): one seed at one budget, in the directory of the others
    screen = configs.pop("screen")
    assert len(screen.seeds) == 1 and len(screen.budgets) == 1 and screen.run == configs["budgets"].run
    assert screen.seeds[0] in configs["budgets"].seeds and screen.budgets[0] in configs["budgets"].budgets
    # screen-k4.yaml: the same screen with four answers a question, so a directory of its own
    k4 = configs.pop("screen-k4")
    assert k4.run.generate.samples == 4 and (k4.seeds, k4.budgets) == (screen.seeds, screen.budgets)
    assert k4.run.data == screen.run.data
    # the data-size curve: nested subsets of the train pool around budgets.yaml's 128 questions, the same dev set
    curve = {size: configs.pop(f"curve-{size}") for size in (32, 512)}
    assert [c.run.data.train_size for c in curve.values()] == [32, 512]
    assert configs["budgets"].run.data.train_size == 128
    for c in curve.values():
        assert c.systems == ["base", "sft", "laffi-dpo"] and c.baseline == "sft"
        assert c.run.data.dev_size == configs["budgets"].run.data.dev_size
        assert c.run.data.seed == configs["budgets"].run.data.seed
    # strict-annotator.yaml: the reference annotator's two variants on equal-steps.yaml's run and budget,
    # so its reference cells are that experiment's trainings
    strict = configs["strict-annotator"]
    assert strict.grid.annotator == ["reference", "reference-strict"]
    assert strict.annotate_config("reference-strict").annotator == "reference-strict"
    equal = configs["equal-steps"]
    assert (strict.run, strict.budgets, strict.seeds) == (equal.run, [32], equal.seeds)
    varied = {axis for c in configs.values() for axis in ("size", "annotator", "human_ratio", "content")
              if len(getattr(c.grid, axis)) > 1}
    assert varied == {"size", "annotator", "human_ratio", "content"}
    assert len(configs["budgets"].budgets) > 1 and configs["equal-steps"].budgets == [32]
    assert all({"base", "sft"} <= set(c.systems) and c.baseline == "sft" and len(c.seeds) >= 3
               for c in configs.values())
    assert configs["content"].grid.content == list(CONTENTS)
    assert configs["annotator"].annotators["llm"].annotator == "llm"
    # budgets.yaml reuses equal-steps.yaml's trainings: the same systems, seeds and run, its budget among them
    assert configs["budgets"].systems == configs["equal-steps"].systems
    assert configs["budgets"].seeds == configs["equal-steps"].seeds
    assert configs["budgets"].run == configs["equal-steps"].run and 32 in configs["budgets"].budgets
    # finalists.yaml runs in the same directory: its shared systems reuse the trainings of budgets.yaml
    assert configs["finalists"].run == configs["budgets"].run and configs["finalists"].seeds == configs["budgets"].seeds
    assert set(configs["finalists"].budgets) == set(configs["budgets"].budgets)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_experiment_config_parses_and_says_how_to_run_it(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# laffi experiment configs/experiments/{path.name} ")
    config = load_experiment_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.run.model.name == "embedded" and config.run.model.prompt_format == "plain"  # the CPU default
    assert max(config.grid.size) <= config.run.data.train_size and config.run.data.dev_size > 0
    assert all(b >= config.run.train.warmup_steps for b in config.budgets)


def test_defaults():
    empty = experiment_config_from({})
    assert empty.systems == ["base", "sft", "laffi", "laffi-aux-half"] and empty.baseline == "sft"
    assert empty.seeds == [0, 1, 2] and empty.budgets == [32]
    grid = empty.grid
    assert (grid.size, grid.annotator, grid.human_ratio, grid.content, grid.train) == ([0], ["reference"], [0.0],
                                                                                       [FULL], {})
    assert grid.axes() == list(AXES) and empty.train_cells() == [{}]
    assert [s.name for s in empty.trained()] == ["sft", "laffi", "laffi-aux-half"]
    assert list(empty.annotators) == ["reference"] and empty.run.model.prompt_format == "plain"
    assert empty.annotators["reference"].seed == empty.run.annotate.seed


def test_every_annotator_draws_with_the_run_annotate_seed_unless_it_sets_its_own():
    config = experiment_config_from({"run": {"annotate": {"seed": 3}}, "annotators": {
        "strict": {"annotator": "reference-strict"}, "strict-7": {"annotator": "reference-strict", "seed": 7}}})
    assert {name: a.seed for name, a in config.annotators.items()} == {"reference": 3, "strict": 3, "strict-7": 7}


def test_overrides():
    config = load_experiment_config(BUDGETS, ["seeds=4,5", "budgets=8,16", "grid.size=2", "run.train.lr=1e-4",
                                              "grid.human_ratio=0,0.5", "grid.content=verdict", "systems=base,sft"])
    assert config.seeds == [4, 5] and config.budgets == [8, 16] and config.grid.size == [2]
    assert config.run.train.lr == 1e-4 and config.systems == ["base", "sft"]
    assert config.grid.human_ratio == [0.0, 0.5] and config.grid.content == ["verdict"]
    # the run's train section, a budget and a seed: the training of one cell
    train = config.train_for({}, 16, 5)
    assert isinstance(train, TrainConfig) and (train.lr, train.steps, train.seed) == (1e-4, 16, 5)


def test_a_train_axis():
    config = load_experiment_config(BUDGETS, ["run.train.lr=1e-4", "grid.train.lr=[0.0002, 0.0003]",
                                              "grid.train.lora_r=[8, 16]"])
    assert config.grid.train == {"lr": [2e-4, 3e-4], "lora_r": [8, 16]}
    assert config.grid.axes() == [*AXES, "train.lr", "train.lora_r"]
    assert config.train_cells() == [{"lr": 2e-4, "lora_r": 8}, {"lr": 2e-4, "lora_r": 16},
                                    {"lr": 3e-4, "lora_r": 8}, {"lr": 3e-4, "lora_r": 16}]
    train = config.train_for({"lr": 3e-4, "lora_r": 8}, 64, 1)
    assert (train.lr, train.lora_r, train.steps, train.seed) == (3e-4, 8, 64, 1)
    assert config.run.train.lr == 1e-4  # the run's own, where the grid sets nothing
    assert config.train_for({}, 64, 1).lr == 1e-4


def test_a_train_axis_written_as_other_lists_are():
    config = load_experiment_config(BUDGETS, ["grid.train.lr=1e-4,3e-4"])
    assert config.grid.train == {"lr": [1e-4, 3e-4]}


@pytest.mark.parametrize("values, option", [
    ({"grid": {"size": [-1]}}, "grid.size"),
    ({"grid": {"size": [500]}}, "grid.size"),  # more than run.data.train_size (128)
    ({"grid": {"size": []}}, "grid.size"),
    ({"grid": {"human_ratio": [0.5]}}, "grid.size"),  # a human share of every question (size 0)
    ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": ["one"]}, "seeds"),
    ({"budgets": []}, "budgets"),
    ({"budgets": [0]}, "budgets"),
    ({"budgets": [1]}, "budgets"),  # below run.train.warmup_steps (2)
    ({"grid": {"human_ratio": [1.5]}}, "grid.human_ratio"),
    ({"grid": {"human_ratio": [0.3], "size": [16]}}, "grid.human_ratio"),  # 4.8 examples
    ({"grid": {"content": ["answer"]}}, "grid.content"),
    ({"grid": {"content": ["verdict+explanation"], "human_ratio": [0.5], "size": [8]}}, "grid.content"),
    ({"grid": {"annotator": ["gpt"]}}, "grid.annotator"),
    ({"grid": {"annotator": ["reference", "reference"]}}, "grid.annotator"),
    ({"grid": {"train": {"steps": [8]}}}, "grid.train.steps"),  # the budgets
    ({"grid": {"train": {"seed": [1]}}}, "grid.train.seed"),  # the seeds
    ({"grid": {"train": {"nope": [1]}}}, "grid.train.nope"),
    ({"grid": {"train": {"lr": []}}}, "grid.train.lr"),
    ({"grid": {"train": {"batch_size": [4, 0]}}}, "grid.train.batch_size"),  # each value builds a train section
    ({"grid": {"epochs": [1]}}, "grid.epochs"),
    ({"systems": ["base", "sft", "dpo"]}, "systems"),  # the experiment's own key
    ({"systems": ["base", "sft", "laffi", "laffi-then-sft"]}, "systems"),  # train.init: no equal budget
    ({"systems": ["base", "sft", "laffi-refine-mix", "sft-reviewed"]}, "systems"),  # answers with sft's adapter
    ({"systems": ["base", "sft", "sft-long"]}, "systems"),  # steps_multiple: the budgets are the steps
    ({"grid": {"train": {"target_modules": [["q_proj"], ["v_proj"]]}}}, "grid.train.target_modules"),  # lists
    ({"budgets": [64, 4], "grid": {"train": {"warmup_steps": [8]}}}, "grid.train.warmup_steps"),  # every budget
    ({"baseline": "laffi-refine-mix"}, "baseline"),  # not one of systems
    ({"baseline": "base"}, "baseline"),  # untrained
    ({"run": {"data": {"dev_size": 0}}}, "run.data.dev_size"),
    ({"run": {"train": {"steps": 0}}}, "run.train.steps"),
    ({"run": {"train": {"steps": 200}}}, "run.train.steps"),  # the budgets are the steps; not read
    ({"run": {"train": {"seed": 5}}}, "run.train.seed"),
    ({"run": {"annotate": {"annotator": "reference-strict"}}}, "run.annotate.annotator"),  # grid.annotator's
    ({"run": {"annotate": {"template": "my.yaml"}}}, "run.annotate.template"),
    ({"run": {"systems": {"names": ["base", "sft"]}}}, "run.systems.names"),
    ({"annotators": {"g": {"annotator": "llm", "model": "m"}},  # free text has no parts
      "grid": {"annotator": ["g"], "content": ["verdict+explanation"]}}, "grid.content"),
    ({"grid": {"system": ["sft"]}}, "grid.system"),  # `laffi ablate`'s, now top-level
    ({"grid": {"seeds": [0, 1]}}, "grid.seeds"),
    ({"annotators": {"llm": {"annotator": "llm"}}}, "annotators.llm.model"),
    ({"annotators": {"human": {}}}, "annotators.human"),
    ({"runs": {}}, "runs"),
    ({"run": {"annotate": 3}}, "run.annotate"),  # not a mapping: named, not an AttributeError
    ({"run": {"annotate": {"annotator": "llm"}}}, "run.annotate.annotator"),  # not "run.annotate.model: required"
    ({"run": {"data": {"train_size": 8}}, "grid": {"size": [9]}}, "grid.size"),  # one answer a question
    ({"run": {"data": {"train_size": 8}, "generate": {"samples": 2}}, "grid": {"size": [17]}}, "grid.size"),
])
def test_bad_options_are_named(values, option):
    with pytest.raises(ConfigError, match="^" + option.replace(".", r"\.") + ":") as refused:
        experiment_config_from(values)
    if option in ("grid.system", "grid.seeds"):
        assert f"now a top-level `{option.split('.')[1].replace('system', 'systems')}:`" in str(refused.value)


def test_what_a_refused_system_is_told(tmp_path):
    with pytest.raises(ConfigError, match="laffi-then-sft continues laffi's adapter .*compare it with `laffi run`"):
        experiment_config_from({"systems": ["base", "sft", "laffi", "laffi-then-sft"]})
    with pytest.raises(ConfigError, match="sft-reviewed answers with sft's adapter and has no train recipe"):
        experiment_config_from({"systems": ["base", "sft", "laffi-refine-mix", "sft-reviewed"]})
    # without the system they lean on, the same refusal: not an advice to add it, which would then be refused
    with pytest.raises(ConfigError, match="laffi-then-sft continues laffi's adapter"):
        experiment_config_from({"systems": ["base", "sft", "laffi-then-sft"]})
    with pytest.raises(ConfigError, match="sft-reviewed answers with sft's adapter"):
        experiment_config_from({"systems": ["base", "laffi", "sft-reviewed"]})
    # a system of its own training whose answers another system's adapter reviews
    reviewed = tmp_path / "sft-self-reviewed.yaml"
    reviewed.write_text("description: SFT, its answers reviewed by laffi-refine-mix's adapter.\nfamily: sft\n"
                        "train:\n  sets: {sft: 1.0}\n"
                        "answer:\n  procedure: feedback-guided\n  rounds: 1\n  reviewer: laffi-refine-mix\n")
    with pytest.raises(ConfigError, match="^systems: sft-self-reviewed is reviewed by another system's adapter"):
        experiment_config_from({"systems": ["base", "sft", "laffi-refine-mix", str(reviewed)]})
    # ...while the same systems without it are an experiment
    assert experiment_config_from({"systems": ["base", "sft", "laffi-refine-mix"]}).baseline == "sft"


def test_a_grid_warmup_below_every_budget_allows_budgets_below_the_runs_warmup():
    config = experiment_config_from({"budgets": [1], "grid": {"train": {"warmup_steps": [0]}}})
    assert config.train_for(config.train_cells()[0], 1, 0).warmup_steps == 0


def test_grid_size_counts_answers_so_several_a_question_allow_a_larger_draw():
    config = experiment_config_from({"run": {"data": {"train_size": 8}, "generate": {"samples": 2}},
                                     "grid": {"size": [16]}})
    assert config.grid.size == [16]


def test_a_dry_run_refuses_an_annotator_template_the_run_would_refuse(tmp_path, capsys):
    from laffi.cli import main

    annotator = CONFIGS[0].parent / "annotator.yaml"
    assert main(["experiment", str(annotator), "--out", str(tmp_path / "x"), "--dry-run",
                 "annotators.llm.template=nosuch"]) == 2
    assert "annotators.llm.template: 'nosuch' is neither a packaged template" in capsys.readouterr().err


def test_the_run_annotate_section_may_say_how_servers_are_reached():
    # how replies are fetched (annotate's OPERATIONAL options) is not what an experiment refuses of run.annotate
    config = experiment_config_from({"run": {"annotate": {"cache_dir": "/tmp/cache", "concurrency": 4,
                                                          "base_url": "http://localhost:8080/v1", "seed": 3}}})
    assert config.run.annotate.concurrency == 4 and config.annotators["reference"].seed == 3
