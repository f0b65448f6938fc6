"""Which systems a run pairs against (systems.compare_with, not their names), and the figures' colours
by family (laffi.systems, not by name).

    python -m pytest tests/report/test_results.py
"""

from __future__ import annotations

import pytest

from laffi.config import ConfigError, load_config
from laffi.report.plots import COLORS, family_colors
from laffi.report.results import comparisons
from laffi.systems import family_of

DEFAULT = load_config(None).systems.compare_with


def test_by_default_every_other_system_is_paired_with_sft_then_base_then_sft_with_base():
    systems = ["base", "sft", "laffi", "laffi-aux-half"]
    assert comparisons(systems, DEFAULT) == [
        ("laffi", "sft"), ("laffi-aux-half", "sft"), ("laffi", "base"), ("laffi-aux-half", "base"), ("sft", "base")]
    assert comparisons(["base", "laffi"], DEFAULT) == [("laffi", "base")]  # one the run lacks is skipped
    assert comparisons(["laffi", "laffi-mix"], DEFAULT) == []


def test_the_systems_compared_with_are_the_runs_setting_not_their_names():
    systems = ["base", "sft", "laffi", "sft-long", "laffi-then-sft"]
    assert comparisons(systems, ["sft-long"]) == [(s, "sft-long") for s in systems if s != "sft-long"]
    assert comparisons(systems, ["laffi", "sft-long", "gone"])[-1] == ("laffi", "sft-long")
    assert comparisons(systems, []) == []
    config = load_config(None, overrides=["systems.compare_with=sft-long,base"])
    assert config.systems.compare_with == ["sft-long", "base"]
    with pytest.raises(ConfigError, match="systems.compare_with: names a system twice"):
        load_config(None, overrides=["systems.compare_with=sft,sft"])


def test_figures_colour_by_family_in_shades_where_several_share_one(tmp_path):
    names = ["base", "sft", "sft-reviewed", "laffi-then-sft", "mine"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("family: laffi\n")
    families = {name: family_of(str(mine) if name == "mine" else name) for name in names}
    assert families == {"base": "base", "sft": "sft", "sft-reviewed": "sft", "laffi-then-sft": "laffi",
                        "mine": "laffi"}
    colors = family_colors(names, families)
    assert colors["base"] == COLORS["base"]
    assert colors["sft"] != colors["sft-reviewed"]  # two shades of one family's colour
    assert colors["sft"][2] > colors["sft"][0] and colors["sft-reviewed"][2] > colors["sft-reviewed"][0]  # blues
    assert colors["laffi-then-sft"][0] > colors["laffi-then-sft"][2]  # reds: drawn as LaFFi, whatever its name
    alone = family_colors(["sft-long", "gone"], {"sft-long": "sft", "gone": None})
    assert alone["sft-long"] == COLORS["sft"] and alone["gone"] not in COLORS.values()


def test_held_out_scores_and_paired_differences_on_known_answers(tmp_path):
    """Nonzero scores (the tiny model's are all 0): each system's EM/F1 from its predictions, and a - b paired by
    question id, whatever order the files hold. Every question's F1 differs by exactly -0.25 here, so the paired
    interval is a point; paired by position in files of another order, it would not be."""
    from laffi.config import EvalConfig
    from laffi.layout import RunLayout
    from laffi.records import Prediction, QAExample, write_records
    from laffi.report.results import paired_differences
    from laffi.stages.evaluate import metrics_for

    layout = RunLayout(tmp_path)
    examples = [QAExample(f"q{i}", f"Article {i}", "Passage.", "Question?", ["gold"]) for i in range(4)]
    write_records(layout.eval_examples, examples)
    sft = [Prediction(f"q{i}", "a", "a", exact, f1) for i, (exact, f1) in enumerate(
        [(1.0, 1.0), (1.0, 0.75), (0.0, 0.5), (0.0, 0.25)])]
    laffi = [Prediction(f"q{i}", "a", "a", exact, f1) for i, (exact, f1) in enumerate(
        [(1.0, 0.75), (0.0, 0.5), (0.0, 0.25), (0.0, 0.0)])]
    write_records(layout.predictions("sft"), sft)
    write_records(layout.predictions("laffi"), laffi[::-1])  # another order than data/eval.jsonl
    config = EvalConfig()
    assert metrics_for(examples, sft, config)["exact"] == 50.0 and metrics_for(examples, sft, config)["f1"] == 62.5
    assert metrics_for(examples, laffi, config)["f1"] == 37.5
    difference = paired_differences(layout, ["sft", "laffi"], config, ["sft"])["laffi - sft"]
    assert difference["f1"] == [-25.0, -25.0, -25.0]  # [mean, low, high]: laffi below sft on every question
    mean, low, high = difference["exact"]
    assert mean == -25.0 and -75.0 <= low < mean < high <= 0.0
