"""`laffi run` loads the base model once for the base evaluation and the generation stage."""

import laffi.generate as generate_module
import laffi.train as train_module
from laffi.config import load_config
from laffi.run import run


def test_base_evaluation_and_generation_share_one_load(tiny_overrides, tmp_path, monkeypatch):
    loads = []

    def counting(module, name):
        real = getattr(module, "load_model")

        def load(config, adapter=None):
            loads.append((name, adapter is not None))
            return real(config, adapter=adapter)

        monkeypatch.setattr(module, "load_model", load)

    counting(generate_module, "answer")
    counting(train_module, "train")
    run(load_config(overrides=tiny_overrides), tmp_path / "run")
    # base evaluation + generation, then two trainings and two evaluations with their adapters
    assert sorted(loads) == [("answer", False), ("answer", True), ("answer", True), ("train", False), ("train", False)]

    loads.clear()
    run(load_config(overrides=tiny_overrides), tmp_path / "run")  # all done: nothing to load
    assert loads == []
