"""The `laffi` command: parses arguments and calls the stage functions, nothing more.

    laffi run [CONFIG.yaml] [--preset smoke] [--out runs/x] [key=value ...]
    laffi run [CONFIG.yaml] --launcher accelerate|torchrun|process [--num-processes 8] [--accelerate-config F]
    laffi prepare|generate|annotate|build RUN_DIR [key=value ...]
    laffi train RUN_DIR --system laffi|sft [key=value ...]   (train.rounds: all rounds, judged by annotate.*)
    laffi evaluate RUN_DIR --system NAME [--adapter DIR] [key=value ...]
    laffi score DATA.json PREDICTIONS.json [--na-prob-file F]
    laffi stats RUN_DIR [--files feedback.jsonl feedback-llm.jsonl]
    laffi experiment CONFIG.yaml [--out runs/x] [--dry-run | --dev-only] [seeds=0,1 budgets=32,64 run.data.eval_size=50 ...]
    laffi attention RUN_DIR [--system laffi] [--adapter DIR] [--limit 24]
    laffi report RUN_DIR

A stage's settings come from --config, else the run directory's config.yaml (written by
`laffi run` and `laffi prepare`), else the preset; key=value overrides go last (`train.steps=20`).

Each command is one call into the package. The stages and experiments are imported inside their
command, not at the top: importing them loads torch and transformers, which `laffi --help`,
`laffi score` and the annotation app's commands do not need.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path

from laffi.backends.chat import RequestFailed
from laffi.config import ConfigError, RunConfig, load_config
from laffi.distributed.launch import (LAUNCHERS, SHARDED_COMMANDS, Launcher, LaunchFailed, launched_processes,
                                     leave_process_group)
from laffi.human.commands import COMMANDS as HUMAN_COMMANDS
from laffi.human.commands import register as register_human_commands
from laffi.human.commands import run as run_human_command
from laffi.layout import ExperimentLayout, RunLayout, is_adapter
from laffi.records import RecordError

# Flags that are shorthands for config overrides (`--base-url X` is `annotate.base_url=X` on annotate).
SHORTHANDS = {"annotate": {"annotator": "annotate.annotator", "base_url": "annotate.base_url",
                           "model": "annotate.model"},
              "generate": {"backend": "generate.backend", "base_url": "generate.base_url"},
              "evaluate": {"backend": "generate.backend", "base_url": "generate.base_url"}}


def _config(args: argparse.Namespace) -> RunConfig:
    path = args.config
    if path is None and getattr(args, "run_dir", None) and RunLayout.of(args.run_dir).config.exists():
        path = RunLayout.of(args.run_dir).config
    flags = SHORTHANDS.get(args.command, {})
    shorthands = [f"{key}={getattr(args, flag)}" for flag, key in flags.items() if getattr(args, flag) is not None]
    return load_config(path, args.preset, shorthands + args.overrides)


def _stage_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help)
    parser.add_argument("run_dir", help="the run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=20")
    parser.add_argument("--config", help="a YAML config (default: RUN_DIR/config.yaml if present)")
    parser.add_argument("--preset", default="default", help="preset to start from: default, smoke")
    return parser


def installed_version() -> str:
    """The installed package's version; sources on the path without an install (the GPU check's fallback to
    src/laffi) have none, and must still run."""
    try:
        return importlib.metadata.version("laffi")
    except importlib.metadata.PackageNotFoundError:
        return "(sources, not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laffi", description="Fine-tune LLMs from natural-language feedback (LaFFi).")
    parser.add_argument("--version", action="version", version=f"laffi {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole experiment: base, SFT, LaFFi and the other systems.names, "
                                     "evaluated on held-out questions")
    run.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key=value", help="a config file and overrides")
    run.add_argument("--preset", default="default", help="preset to start from: default, smoke")
    run.add_argument("--out", help="run directory (default: runs/PRESET)")
    run.add_argument("--launcher", choices=LAUNCHERS,
                     help="run each training under this launcher, one process per GPU; process: one plain "
                          "process per training, which on a CPU lowers the run's peak memory")
    run.add_argument("--num-processes", type=int,
                     help="processes for --launcher (default: the accelerate config's, else 1)")
    run.add_argument("--accelerate-config", help="an accelerate config for --launcher accelerate, e.g. "
                                                 "configs/accelerate/fsdp.yaml")

    _stage_parser(sub, "prepare", "split the QA data into train pool, held-out set and few-shot pool")
    generate = _stage_parser(sub, "generate", "let the model answer the train questions")
    annotate = _stage_parser(sub, "annotate", "write feedback on the model's answers")
    annotate.add_argument("--annotator", help="reference, reference-strict or llm (annotate.annotator)")
    annotate.add_argument("--base-url", help="the LLM annotator's OpenAI-compatible server (annotate.base_url)")
    annotate.add_argument("--model", help="the LLM annotator's model (annotate.model)")
    annotate.add_argument("--out", help="feedback file in the run directory (default feedback.jsonl)")
    build = _stage_parser(sub, "build", "build the LaFFi and SFT training sets")
    build.add_argument("--human-ratio", type=float, help="hybrid set: share R of examples with human feedback")
    build.add_argument("--size", type=int, help="hybrid set: N examples (with --human-ratio)")
    train = _stage_parser(sub, "train", "LoRA fine-tuning on a training set")
    train.add_argument("--system", required=True, help="a system with a train recipe (laffi.systems: sft, laffi, laffi-aux-half, ...), trained "
                            "as `laffi run` trains it; or NAME of a set of your own, sets/NAME.jsonl")
    evaluate = _stage_parser(sub, "evaluate", "answer and score the held-out questions")
    evaluate.add_argument("--system", required=True,
                          help="a system (laffi.systems: base, sft, laffi-refine-mix-guided, or a .yaml), answered with "
                               "its adapter and procedure; NAME of a set of your own that `laffi train` trained "
                               "(adapters/NAME); with --adapter, or with --backend openai (the served model), the "
                               "name of the results folder")
    evaluate.add_argument("--adapter", help="a PEFT adapter directory to evaluate, answering directly")
    for stage in (generate, evaluate):
        stage.add_argument("--backend", help="transformers (in-process) or openai (generate.backend)")
        stage.add_argument("--base-url", help="the OpenAI-compatible server for --backend openai (generate.base_url)")

    experiment = sub.add_parser("experiment", aliases=["ablate"],
                                help="which system gives the best model: each system at its step budget chosen on "
                                     "dev, over seeds (and a grid of variants), scored on the held-out set once")
    experiment.add_argument("config", help="an experiment config, e.g. configs/experiments/budgets.yaml")
    experiment.add_argument("overrides", nargs="*", metavar="key=value",
                            help="e.g. seeds=0,1 budgets=32,64 run.data.eval_size=50")
    experiment.add_argument("--out", help="the experiment directory (default: runs/CONFIG_NAME)")
    experiment.add_argument("--dry-run", action="store_true", help="print the plan and an estimate of its time; run nothing")
    experiment.add_argument("--dev-only", action="store_true",
                            help="a screen: train, score dev and choose the budgets, but score no held-out question "
                                 "(prints and writes summaries/PLAN.dev.md)")
    attention = sub.add_parser("attention", help="attention entropy, distance and gold-span mass: base vs adapter")
    attention.add_argument("run_dir", help="the run directory")
    attention.add_argument("--system", default="laffi", help="the adapter's name (default laffi): "
                                                             "RUN_DIR/adapters/SYSTEM, output in attention/SYSTEM")
    attention.add_argument("--adapter", help="a PEFT adapter directory (default RUN_DIR/adapters/SYSTEM)")
    attention.add_argument("--limit", type=int, default=24, help="held-out prompts to read (default 24)")
    attention.add_argument("--window", type=int, default=8, help="tokens back that count as local (default 8)")
    report = sub.add_parser("report", help="one self-contained HTML page: results, experiment, attention, samples")
    report.add_argument("run_dir", help="a run or experiment directory")
    report.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")

    stats = sub.add_parser("stats", help="verdict agreement between annotators on the same answers")
    stats.add_argument("run_dir", help="the run directory")
    stats.add_argument("--files", nargs="+", help="feedback files in the run directory (default: feedback*.jsonl)")

    register_human_commands(sub)  # serve, annotators, export-feedback, import-feedback

    score = sub.add_parser("score", help="drop-in for the official SQuAD v1.1/v2.0 evaluation script")
    score.add_argument("data_file")
    score.add_argument("pred_file")
    score.add_argument("--na-prob-file", "-n", help="JSON {id: probability that the question has no answer}")
    score.add_argument("--na-prob-thresh", "-t", type=float, default=1.0)
    score.add_argument("--out-file", "-o", help="write the metrics JSON here too")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting key=value overrides at the first flag; take the ones after it too
    # (`laffi run` names its positionals "args": a config file, then overrides)
    collected = "overrides" if hasattr(args, "overrides") else "args" if args.command == "run" else None
    if extra and collected and all("=" in e and not e.startswith("-") for e in extra):
        setattr(args, collected, getattr(args, collected) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _dispatch(args)
    except BrokenPipeError:  # `laffi ... | head` closed the pipe: what was written stays, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        return 1
    # OSError: a file or folder where the other is needed, a port in use, a model the hub cannot give; the
    # message names the path, and a traceback would hide it
    except (ConfigError, RecordError, OSError, ValueError, RequestFailed, LaunchFailed) as error:
        print(f"laffi {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()


def _dispatch(args: argparse.Namespace) -> int:
    if launched_processes() > 1 and args.command not in SHARDED_COMMANDS:
        raise ConfigError(f"laffi {args.command} runs in one process, and {launched_processes()} were launched (WORLD_SIZE): "
                          f"each would do all of it; run it without accelerate launch / torchrun (only "
                          f"{', '.join(SHARDED_COMMANDS)} share their work among processes; `laffi run --launcher` "
                          "launches its trainings itself)")
    if args.command in HUMAN_COMMANDS:
        return run_human_command(args)
    if args.command == "score":
        from laffi.analysis.metrics import score_official

        metrics = score_official(args.data_file, args.pred_file, args.na_prob_file, args.na_prob_thresh)
        text = json.dumps(metrics)
        if args.out_file:
            Path(args.out_file).write_text(text, encoding="utf-8")
        print(text)
        return 0
    if args.command in ("experiment", "ablate"):
        from laffi.experiments.experiment import check_annotators, describe_plan, estimate, experiment
        from laffi.experiments.grid import load_experiment_config

        config = load_experiment_config(args.config, args.overrides)
        layout = ExperimentLayout(args.out or Path("runs") / Path(args.config).stem)
        if args.dry_run:
            check_annotators(config)
            print(describe_plan(estimate(config, layout, args.dev_only)))
            return 0
        summary = experiment(config, layout.root, dev_only=args.dev_only)
        if args.dev_only:
            print(layout.plan_summary(summary["plan"], ".dev.md").read_text(encoding="utf-8"))
            return 0
        print(layout.summary_md.read_text(encoding="utf-8"))
        print(f"{len(summary['cells'])} system cells; summary: {layout.summary_json}; report: {layout.run.report}")
        return 0
    if args.command == "attention":
        layout = RunLayout.existing(args.run_dir)  # refused before torch is loaded
        from laffi.analysis.attention import analyse
        from laffi.report.plots import save_attention_figures

        config = load_config(layout.config if layout.config.exists() else None)
        results = analyse(layout, config.model, config.data, args.system, args.adapter, args.limit, args.window)
        save_attention_figures(results, layout)
        print(f"attention maps and numbers in {layout.attention(args.system)}")
        return 0
    if args.command == "report":
        from laffi.report.html import write_report

        print(f"report written to {write_report(args.run_dir, args.out)}")
        return 0
    if args.command == "stats":
        from laffi.analysis.agreement import stats
        from laffi.report.tables import stats_markdown

        print(stats_markdown(stats(args.run_dir, args.files)))
        return 0
    if args.command == "run":
        from laffi.experiments.run import run
        from laffi.report.results import markdown_table

        files = [a for a in args.args if "=" not in a]
        if len(files) > 1:
            raise ConfigError(f"expected at most one config file, got {files}")
        config = load_config(files[0] if files else None, args.preset, [a for a in args.args if "=" in a])
        out = Path(args.out or Path("runs") / args.preset)
        if not args.launcher and (args.num_processes or args.accelerate_config):
            raise ConfigError("--num-processes and --accelerate-config go with --launcher accelerate|torchrun")
        launcher = Launcher(args.launcher, args.num_processes, args.accelerate_config) if args.launcher else None
        try:
            results = run(config, out, launcher=launcher)
        except ConfigError as error:  # begun by another command (stage by stage, another config or preset)
            saved = RunLayout(out).config  # what it and the split (data/config.yaml) were begun with; a stage's
            begun = (saved, RunLayout(out).data_config)  # own sidecar may hold what its command was given besides
            if files or not saved.exists() or not str(error).startswith(tuple(f"{p} was written" for p in begun)):
                raise
            raise ConfigError(f"{error}. {saved} holds the settings {out} was begun with: `laffi run {saved} "
                              f"--out {out}` goes on with them") from error
        print(markdown_table(results))
        print(f"\nfull results: {RunLayout(out).results_md}")
        return 0

    # prepare starts a run (anywhere); every other stage reads one, and refuses a directory that is not
    layout = RunLayout.of(args.run_dir) if args.command == "prepare" else RunLayout.existing(args.run_dir)
    config = _config(args)
    if args.command == "prepare":
        from laffi.stages.prepare import prepare, save_run_config

        train, held_out = prepare(layout, config.data)
        save_run_config(layout, config)  # what the later stage commands read
        print(f"{len(train)} train questions, {len(held_out)} held-out questions in {layout.data}")
    elif args.command == "generate":
        from laffi.distributed.shards import Shard
        from laffi.models import check_trainable
        from laffi.stages.generate import generate

        check_trainable(config.model)  # these answers are trained on (laffi run and experiment check at their start)
        answers = generate(layout, config.model, config.data, config.generate)
        if Shard.current().is_main:  # under a launcher, one line, not one per process
            print(f"{len(answers)} answers in {layout.answers}")
    elif args.command == "annotate":
        from laffi.stages.annotate import annotate

        feedback = annotate(layout, config.annotate, out=args.out)
        out = layout.root / args.out if args.out else layout.feedback
        print(f"{len(feedback)} feedback records in {out}")
    elif args.command == "build":
        from laffi.stages.build import HybridConfig, build, build_hybrid, set_metadata
        from laffi.systems import load_systems

        if args.human_ratio is not None or args.size is not None:
            if args.human_ratio is None or args.size is None:
                raise ConfigError("--human-ratio and --size go together: a hybrid set of N examples, share R human")
            sets = build_hybrid(layout, config.data, HybridConfig(args.human_ratio, args.size),
                                load_systems(config.systems.names))
        else:
            sets = build(layout, config.data, load_systems(config.systems.names))
        for name, examples in sets.items():
            print(f"{len(examples)} examples in {layout.training_set(name)}")
            pairs = set_metadata(layout, name).get("preference")
            if pairs and "labelled" in pairs:  # train.preference.loss kto: the answers it labels
                print(f"{pairs['labelled']} labelled answers ({pairs['desirable']} desirable, "
                      f"{pairs['undesirable']} undesirable) in {layout.labelled_set(name)}")
            elif pairs:  # a recipe with train.preference: how many of its questions the DPO term acts on
                by_verdict = ", ".join(f"{n} {verdict}" for verdict, n in pairs["pairs_by_verdict"].items())
                print(f"{pairs['pairs']} preference pairs ({by_verdict}) in {layout.pair_set(name)}")
    elif args.command == "train":
        from laffi.distributed.shards import Shard
        from laffi.stages.build import refuse_a_systems_set
        from laffi.stages.evaluate import dev_scorer
        from laffi.stages.rounds import RoundFeedback, train_rounds
        from laffi.stages.train import train, train_system
        from laffi.systems import load_system, load_systems, packaged_systems, spec_for

        specs = config.systems.names
        spec = spec_for(args.system, specs)  # a file of systems.names by its name, as the run's directories name it
        named = spec in packaged_systems() or spec.endswith((".yaml", ".yml"))
        if named:
            load_system(spec, "--system")  # its own mistakes named as this option's, before the list's
        if named and spec not in specs:  # a system that systems.names leaves out still trains by its recipe:
            specs = [*specs, spec]       # as a set of its own it would lose its aux or preference term
        systems = {s.name: s for s in load_systems(specs)}
        name = Path(spec).stem if named else args.system
        if name in systems and systems[name].training_rounds > 1:  # every round (laffi.stages.rounds), the
            out = train_rounds(layout, systems[name], config.model, config.data,  # later ones judged by the
                               config.generate, config.train, RoundFeedback(config.annotate))  # annotate section
        elif name in systems:  # its recipe's steps and train.init, as `laffi run` trains it
            out = train_system(layout, systems[name], config.model, config.data, config.generate, config.train)
        else:  # a set of your own in sets/NAME.jsonl
            refuse_a_systems_set(layout, args.system, "train")
            if not layout.training_set(args.system).exists():
                raise ConfigError(f"--system: {args.system!r} is no system (packaged: {', '.join(packaged_systems())}, "
                                  f"or a .yaml file) and has no set of your own ({layout.training_set(args.system)})")
            out = train(layout, args.system, config.model, config.train,
                        dev=dev_scorer(layout, config.data, config.generate, config.train))
        if Shard.current().is_main:  # under a launcher, one line, not one per process
            print(f"adapter saved in {out}")
    elif args.command == "evaluate":
        from laffi.distributed.shards import Shard
        from laffi.stages.build import refuse_a_systems_set
        from laffi.stages.evaluate import evaluate, evaluate_system
        from laffi.systems import load_system, spec_for, system_path

        shared = (config.model, config.data, config.generate, config.eval)
        own = layout.adapter(args.system)
        spec = spec_for(args.system, config.systems.names)  # a file of systems.names by its name
        if args.adapter:  # an adapter of your own, scored under this name
            metrics = evaluate(layout, args.system, *shared, adapter=args.adapter)
        elif system_path(spec).is_file():  # a system (laffi.systems): its adapter, a reviewer's, its procedure
            metrics = evaluate_system(layout, load_system(spec, "--system"), *shared)
        elif is_adapter(own):  # a set of your own, trained by `laffi train RUN --system NAME`
            refuse_a_systems_set(layout, args.system, "evaluate")
            metrics = evaluate(layout, args.system, *shared, adapter=own)
        elif config.generate.backend == "openai":  # the server's model (generate.served_model) answers
            metrics = evaluate(layout, args.system, *shared)
        else:  # not the base model under a mistyped name
            raise ConfigError(f"--system {args.system}: not a system (a packaged one or a .yaml file) and no adapter "
                              f"in {own}; pass --adapter DIR to score an adapter under this name")
        if Shard.current().is_main:  # under a launcher, one line, not one per process
            print(json.dumps({k: metrics[k] for k in ("exact", "f1", "total", "exact_ci95", "f1_ci95")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
