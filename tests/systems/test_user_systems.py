"""A system of the user's own, a .yaml file named in systems.names, is trained and scored by its recipe when a
stage command names it by its file name, as the run's directories do; without systems.names it is refused, not
trained as plain examples or answered directly.

    python -m pytest tests/systems/test_user_systems.py
"""

from __future__ import annotations

from support.human_helpers import laffi, make_run

from laffi.layout import RunLayout


def test_a_system_of_ones_own_is_found_by_its_name_in_systems_names_and_refused_without(tiny_model_dir, tmp_path):
    system = tmp_path / "mine.yaml"
    system.write_text("description: sft with the laffi set as a light auxiliary loss\nfamily: sft\n"
                      "train:\n  sets: {sft: 1.0}\n  aux: laffi\n  aux_weight: 0.25\n", encoding="utf-8")
    settings = [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
                "generate.max_new_tokens=4", "generate.batch_size=4", "train.steps=2", "train.warmup_steps=1",
                "train.batch_size=2", "train.max_seq_len=256", "eval.bootstrap_samples=100"]
    named = f"systems.names=base,sft,{system}"
    run = make_run(tmp_path / "run", n_items=4)
    (run / "data" / "eval.jsonl").write_bytes((run / "data" / "train.jsonl").read_bytes())
    code, _, err = laffi("build", str(run), *settings, named)
    assert code == 0, err

    # without systems.names, "mine" is no system: its set would train without the auxiliary loss
    code, _, err = laffi("train", str(run), "--system", "mine", *settings)
    assert code != 0 and "was built for a system of that name" in err and "--system PATH/mine.yaml" in err
    assert not RunLayout(run).adapter("mine").exists()

    code, out, err = laffi("train", str(run), "--system", "mine", *settings, named)
    assert code == 0, err
    assert "auxiliary" in out and "0.25" in out  # its recipe's aux term

    code, _, err = laffi("evaluate", str(run), "--system", "mine", *settings)
    assert code != 0 and "was built for a system of that name" in err
    code, _, err = laffi("evaluate", str(run), "--system", "mine", *settings, named)
    assert code == 0, err
    assert RunLayout(run).metrics("mine").exists()


def test_evaluating_an_adapter_on_another_base_model_says_so(tiny_model_dir, tmp_path):
    import shutil
    settings = [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
                "generate.max_new_tokens=4", "generate.batch_size=4", "train.steps=2", "train.warmup_steps=1",
                "train.batch_size=2", "train.max_seq_len=256", "eval.bootstrap_samples=100"]
    run = make_run(tmp_path / "run", n_items=4)
    for split in ("eval", "dev"):
        (run / "data" / f"{split}.jsonl").write_bytes((run / "data" / "train.jsonl").read_bytes())
    assert laffi("build", str(run), *settings)[0] == 0
    assert laffi("train", str(run), "--system", "sft", *settings)[0] == 0
    code, out, err = laffi("evaluate", str(run), "--system", "sft", *settings)
    assert code == 0, err
    assert "was trained on model.name" not in out
    copy = tmp_path / "copy-of-the-model"  # same sizes, so PEFT loads the adapter without a word
    shutil.copytree(tiny_model_dir, copy)
    moved = [s.replace(str(tiny_model_dir), str(copy)) for s in settings]
    code, out, err = laffi("evaluate", str(run), "--system", "sft", *moved, "eval.split=dev")
    assert code == 0, err
    assert f"evaluate sft: its adapter was trained on model.name={tiny_model_dir} and answers on " \
           f"model.name={copy}" in out


def test_an_adapter_of_ones_own_with_any_config_yaml_is_no_trouble(tmp_path):
    from laffi.config import ModelConfig
    from laffi.stages.evaluate import other_base_model

    for text in ("model: llama-7b\n", "- a\n- b\n", "not: [valid\n", ""):
        (tmp_path / "config.yaml").write_text(text)
        assert other_base_model(tmp_path, ModelConfig()) is None
    (tmp_path / "config.yaml").write_text("model:\n  name: other-model\n")
    assert "was trained on model.name=other-model" in other_base_model(tmp_path, ModelConfig())
