"""`laffi run` and `laffi experiment` load the base model once for the base evaluation and the
generation stage."""

import pytest

import laffi.backends.answering as answering_module
import laffi.stages.train as train_module
from laffi.config import load_config
from laffi.experiments.experiment import experiment
from laffi.experiments.grid import experiment_config_from
from laffi.experiments.run import run


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, bool]]:
    """(stage, with an adapter?) for every model load by generation/evaluation and by training."""
    loads = []
    for module, name in ((answering_module, "answer"), (train_module, "train")):
        def load(config, adapter=None, real=module.load_model, name=name, **options):
            loads.append((name, adapter is not None))
            return real(config, adapter=adapter, **options)

        monkeypatch.setattr(module, "load_model", load)
    return loads


def test_base_evaluation_and_generation_share_one_load(tiny_overrides, tmp_path, loads):
    run(load_config(overrides=tiny_overrides), tmp_path / "run")
    # base evaluation + generation, then a training and an evaluation with its adapter for each of the
    # default systems.names that trains: sft, laffi, laffi-aux-half
    assert sorted(loads) == [("answer", False), *[("answer", True)] * 3, *[("train", False)] * 3]

    loads.clear()
    run(load_config(overrides=tiny_overrides), tmp_path / "run")  # all done: nothing to load
    assert loads == []


def test_an_experiment_shares_the_base_load_too(tiny_model_dir, tmp_path, loads):
    config = experiment_config_from({
        "run": {"model": {"name": str(tiny_model_dir), "threads": 2},
                "data": {"eval_size": 4, "dev_size": 4, "train_size": 4},
                "generate": {"max_new_tokens": 3}, "train": {"warmup_steps": 0, "batch_size": 2},
                "eval": {"bootstrap_samples": 100}},
        "systems": ["base", "sft"], "seeds": [0], "budgets": [1], "grid": {"size": [4]}})
    experiment(config, tmp_path / "experiment")
    # base evaluations (dev and held-out) + generation, then the one job's training, its dev evaluation
    # with the adapter and, once its budget is chosen, its held-out one
    assert sorted(loads) == [("answer", False), ("answer", True), ("answer", True), ("train", False)]

    loads.clear()
    experiment(config, tmp_path / "experiment")  # all done: nothing to load
    assert loads == []
