"""Every shipped ablation config parses and says how to run it; bad grids are refused by option name.

    python -m pytest tests/experiments/test_ablate_config.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from laffi.annotators.content import CONTENTS
from laffi.config import ConfigError
from laffi.experiments.grid import AblateConfig, ablate_config_from, load_ablate_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "ablate").glob("*.yaml"))


def test_there_is_an_ablation_config_for_every_axis():
    configs = {path.stem: load_ablate_config(path) for path in CONFIGS}
    varied = {axis for c in configs.values() for axis in ("size", "annotator", "human_ratio", "content")
              if len(getattr(c.grid, axis)) > 1}
    assert varied == {"size", "annotator", "human_ratio", "content"}
    assert all(c.grid.system == ["sft", "laffi"] and len(c.grid.seeds) >= 3 for c in configs.values())
    assert configs["content"].grid.content == list(CONTENTS)
    assert configs["annotator"].annotators["llm"].annotator == "llm"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_ablation_config_parses_and_says_how_to_run_it(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# laffi ablate configs/ablate/") and path.name in first_line
    config = load_ablate_config(path)
    assert isinstance(config, AblateConfig)
    assert config.run.model.name == "embedded" and config.run.model.prompt_format == "plain"  # the CPU default
    assert max(config.grid.size) <= config.run.data.train_size


def test_defaults_and_overrides():
    config = load_ablate_config(CONFIGS[0], ["grid.seeds=4,5", "grid.size=2", "run.train.steps=3",
                                             "grid.human_ratio=0,0.5", "grid.content=verdict"])
    assert config.grid.seeds == [4, 5] and config.grid.size == [2] and config.run.train.steps == 3
    assert config.grid.human_ratio == [0.0, 0.5] and config.grid.content == ["verdict"]
    empty = ablate_config_from({})
    assert empty.grid.system == ["sft", "laffi"] and empty.grid.seeds == [0, 1, 2]
    assert list(empty.annotators) == ["reference"] and empty.run.model.prompt_format == "plain"


@pytest.mark.parametrize("values, option", [
    ({"grid": {"system": ["dpo"]}}, "grid.system"),
    ({"grid": {"size": [0]}}, "grid.size"),
    ({"grid": {"size": [500]}}, "grid.size"),  # more than run.data.train_size (128)
    ({"grid": {"seeds": []}}, "grid.seeds"),
    ({"grid": {"seeds": [1, 1]}}, "grid.seeds"),
    ({"grid": {"seeds": ["one"]}}, "grid.seeds"),
    ({"grid": {"human_ratio": [1.5]}}, "grid.human_ratio"),
    ({"grid": {"human_ratio": [0.3], "size": [16]}}, "grid.human_ratio"),  # 4.8 examples
    ({"grid": {"content": ["answer"]}}, "grid.content"),
    ({"grid": {"content": ["verdict+explanation"], "human_ratio": [0.5], "size": [8]}}, "grid.content"),
    ({"grid": {"annotator": ["gpt"]}}, "grid.annotator"),
    ({"grid": {"epochs": [1]}}, "grid.epochs"),
    ({"run": {"train": {"steps": 0}}}, "run.train.steps"),
    ({"annotators": {"llm": {"annotator": "llm"}}}, "annotators.llm.model"),
    ({"annotators": {"human": {}}}, "annotators.human"),
    ({"runs": {}}, "runs"),
])
def test_bad_options_are_named(values, option):
    with pytest.raises(ConfigError, match="^" + option.replace(".", r"\.") + ":"):
        ablate_config_from(values)
