"""The whole LaFFi experiment, stage after stage, in one run directory.

    laffi run                                   # embedded model and data, default preset
    laffi run --preset smoke --out runs/smoke   # a few minutes on a laptop
    laffi run configs/qwen2.5-7b-gpu.yaml train.steps=200
    laffi run configs/qwen2.5-7b-gpu.yaml --launcher accelerate --num-processes 8 systems.names=base,sft,laffi
    laffi run systems.names=base,sft,laffi,laffi-refine-mix,laffi-refine-mix-guided

Evaluates the base model, lets it answer the train questions, annotates the answers, builds the
training sets on the same questions, trains each system that has a train recipe (laffi.systems;
by default sft, laffi and laffi-aux-half) with the same steps, LoRA settings and seed (a system with
train.rounds: every round, laffi.stages.rounds, its later rounds judged by the same annotator), evaluates
every system, and writes results.json, results.md, run_info.json and report.html. Every stage
resumes, so rerunning after a crash continues where it stopped.
"""

from __future__ import annotations

import functools
from pathlib import Path

from laffi.backends.answering import load_backend
from laffi.config import RunConfig, require
from laffi.distributed.launch import Launcher
from laffi.experiments.clock import StageClock
from laffi.layout import RunLayout, failures_file
from laffi.models import check_trainable
from laffi.report.html import write_report
from laffi.report.results import write_results
from laffi.stages.annotate import annotate, check_annotator, failed_answers
from laffi.stages.build import build, refuse_a_hybrid_build
from laffi.stages.evaluate import evaluate, evaluate_system
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare, save_run_config
from laffi.stages.rounds import RoundFeedback, train_rounds
from laffi.stages.train import claim_adapter, system_recipe, train_system, training_begun
from laffi.systems import load_systems, training_order


def run(config: RunConfig, out: str | Path, launcher: Launcher | None = None) -> dict:
    """With `launcher`, each training runs under it (laffi.distributed.launch); every other stage runs here."""
    layout = RunLayout(out)
    require(config.eval.split == "heldout", "eval.split", "laffi run scores the held-out set; score the dev set "
            "with `laffi evaluate RUN --system NAME eval.split=dev`")
    check_annotator(config.annotate)  # a bad template fails now, not after the answers
    systems = load_systems(config.systems.names)  # and a bad system file
    refuse_a_hybrid_build(layout)  # and sets it would build again without the people's feedback drawn into them
    if training_order(systems):  # and a chat template training cannot use, before the base model's evaluation
        check_trainable(config.model)
    if launcher is not None and launcher.processes > 1:  # refused now, not hours later at that training
        one_process_only = [s.name for s in systems if s.aux or s.preference or s.training_rounds > 1]
        require(not one_process_only, "systems.names",
                f"{', '.join(one_process_only)} train with auxiliary examples, preference pairs or several rounds "
                "(train.aux, train.preference, train.rounds), which run in one process, "
                f"not under --launcher {launcher.name} with several; leave them out (e.g. systems.names=base,sft,laffi)")
        require(not config.train.eval_every, "train.eval_every",
                "QA evaluation during training runs in one process; set it to 0 under a launcher with several")
    timed = StageClock()
    shared = (config.model, config.data, config.generate, config.eval)
    timed("prepare", prepare, layout, config.data)
    save_run_config(layout, config)  # a launched training reads them there (`laffi train RUN --system X`)
    # the base model answers the held-out and then the train questions: one load for both, on first
    # use (a resumed run may need none); trainings and adapter evaluations load their own, since
    # LoRA and merging change the model they get
    base = functools.cache(lambda: load_backend(config.model, config.generate))
    metrics = {}
    for system in (s for s in systems if s.adapter is None and not s.guided):  # the base model, answering directly
        metrics[system.name] = timed(f"evaluate {system.name}", evaluate, layout, system.name, *shared, backend=base)
    timed("generate", generate, layout, config.model, config.data, config.generate, backend=base)
    base.cache_clear()  # free it before training
    if begun := [s.name for s in systems  # a system of rounds begins in its first round's directory
                 if training_begun(layout.round_training(s.name, 1, s.training_rounds), s.name)]:
        # the answers an annotation failed on are left as they are: feedback got now would change the sets the
        # trainings were begun on, and a resumed run would refuse each of them (`laffi annotate` retries them,
        # for trainings begun afresh)
        if left := len(failed_answers(layout.feedback)):
            print(f"annotate: {left} answers without feedback ({failures_file(layout.feedback)}) are not retried: "
                  f"{', '.join(begun)} began training on sets without them; `laffi annotate` retries them, and "
                  "`laffi build` then makes new sets, which adapters begun on the old ones refuse")
    else:
        timed("annotate", annotate, layout, config.annotate)
    timed("build", build, layout, config.data, systems)
    for system in training_order(systems):
        if system.training_rounds > 1:  # its later rounds answer, annotate and build again (one process)
            timed(f"train {system.name}", train_rounds, layout, system, config.model, config.data, config.generate,
                  config.train, RoundFeedback(config.annotate))
        elif launcher is None:
            timed(f"train {system.name}", train_system, layout, system, config.model, config.data, config.generate,
                  config.train)
        else:  # checked here too: the launcher skips a finished adapter without starting a process
            claim_adapter(layout, system.name, config.model, **system_recipe(layout, system, config.train))
            timed(f"train {system.name}", launcher.train, layout, system.name)
    for system in (s for s in systems if s.name not in metrics):  # every adapter is there now, reviewers too
        metrics[system.name] = timed(f"evaluate {system.name}", evaluate_system, layout, system, *shared)
    results = write_results(layout, {s.name: metrics[s.name] for s in systems}, timed.seconds, config.eval,
                            config.systems.compare_with, timed.peak_mb)
    write_report(layout.root)  # report.html: the results, loss curves and samples in one page
    return results
