"""Scaling out on CPU: 2 processes on gloo under accelerate launch and torchrun train the adapter
1 process trains, write one set of files, resume from their own checkpoint, and shard evaluation;
the shipped accelerate configs are read by accelerate's own parser and plugins."""

import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from safetensors.torch import load_file

from laffi.config import ConfigError, TrainConfig, load_config, save_config
from laffi.distributed.batching import plan_batches, shard_window
from laffi.distributed.launch import Launcher
from laffi.layout import RunLayout
from laffi.records import Answer, Prediction, QAExample, TrainingExample, TrainLogEntry, read_records, write_records
from laffi.stages.evaluate import evaluate
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare
from laffi.stages.train import train

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [("Who wrote Hamlet?", "William Shakespeare"), ("What is the capital of France?", "Paris"),
             ("How many legs has a spider?", "eight"), ("What colour is the sky?", "blue"),
             ("Which planet is closest to the Sun?", "Mercury"), ("What do bees make?", "honey")]


def make_run(run_dir: Path, tiny_model_dir: Path, *extra: str):
    """A run directory with an SFT set of 6 questions and its config.yaml, as `laffi run` leaves it; fp32,
    since the processes' passes are packed differently from one process's, which bf16 rounds apart."""
    config = load_config(overrides=[f"model.name={tiny_model_dir}", "model.dtype=float32", "train.steps=4", "train.lr=5e-3",
                                    "train.warmup_steps=0", "train.schedule=constant", "train.max_seq_len=256",
                                    "train.checkpoint_every=2", "train.lora_dropout=0", *extra])
    examples = [TrainingExample(f"q{i}", [{"role": "user", "content": q}], [{"role": "assistant", "content": a}])
                for i, (q, a) in enumerate(QUESTIONS)]
    write_records(RunLayout(run_dir).training_set("sft"), examples)
    save_config(RunLayout(run_dir).config, {name: getattr(config, name) for name in config.__dataclass_fields__})
    return config


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> float:
    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    assert any(w.abs().max() > 0 for name, w in left.items() if "lora_B" in name)  # training moved the weights
    difference = max((left[k] - right[k]).abs().max().item() for k in left)
    assert difference <= atol, f"adapters differ by {difference}"
    return difference


def loss_and_grad_norm(adapter: Path) -> list[float]:
    """Loss and gradient norm per step: Adam's update hardly depends on the gradient's scale, the
    norm shows whether the processes' gradients add up to the 1-process gradient."""
    return [x for e in read_records(adapter / "train_log.jsonl", TrainLogEntry) for x in (e.loss, e.grad_norm)]


@pytest.mark.parametrize("batch_size,grad_accum,processes", [(4, 1, 2), (1, 4, 2), (4, 3, 2), (8, 2, 8), (2, 2, 1)])
def test_every_example_of_a_step_goes_to_exactly_one_process(batch_size, grad_accum, processes):
    plan = plan_batches(TrainConfig(batch_size=batch_size, grad_accum=grad_accum), processes)
    assert plan.examples_per_step == batch_size * grad_accum
    assert plan.per_device_batch <= batch_size
    assert plan.processes * plan.per_device_batch * plan.per_device_accum == batch_size * grad_accum
    full = [list(range(k * batch_size, (k + 1) * batch_size)) for k in range(grad_accum)]
    short = [list(range(batch_size))[:-1] or [0]] + full[1:]  # an epoch's last batch can be short
    for window in (full, short):
        shards = [shard_window(window, plan, rank) for rank in range(processes)]
        assert all(len(passes) == plan.per_device_accum for passes in shards)  # every process joins every pass
        assert all(len(p) <= plan.per_device_batch for passes in shards for p in passes)
        taken = sorted(i for passes in shards for p in passes for i in p)
        assert taken == sorted(i for batch in window for i in batch)
    if processes == 1:
        assert shard_window(short, plan, 0) == short  # one process runs exactly the batches it always ran


def test_a_step_that_cannot_be_split_evenly_is_refused():
    with pytest.raises(ConfigError, match=r"train\.batch_size x train\.grad_accum.*3 processes"):
        plan_batches(TrainConfig(batch_size=4, grad_accum=1), 3)


def test_two_processes_under_accelerate_train_the_adapter_one_process_trains(tiny_model_dir, tmp_path):
    # one pass of 1 example per process per accumulation step: 2 passes per process, 4 in one process
    config = make_run(tmp_path / "one", tiny_model_dir, "train.batch_size=1", "train.grad_accum=4")
    one = train(RunLayout(tmp_path / "one"), "sft", config.model, config.train)
    make_run(tmp_path / "two", tiny_model_dir, "train.batch_size=1", "train.grad_accum=4")
    two = Launcher("accelerate", 2).train(RunLayout(tmp_path / "two"), "sft")

    assert files(two) == files(one) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        "config.yaml", "summary.json", "train_log.jsonl"]
    assert files(tmp_path / "two") == files(tmp_path / "one")  # nothing per process, no checkpoint left over
    summary = json.loads((two / "summary.json").read_text())
    assert (summary["processes"], summary["per_device_batch"], summary["per_device_accum"]) == (2, 1, 2)
    assert summary["examples_per_step"] == 4
    # the log holds the loss and gradient norm of all processes together
    assert loss_and_grad_norm(two) == pytest.approx(loss_and_grad_norm(one), rel=1e-4)
    assert_same_adapter(one, two)


def test_the_process_launcher_trains_a_second_stage_as_laffi_run_does_in_process(tiny_model_dir, tmp_path):
    from laffi.stages.train import train_system
    from laffi.systems import load_systems

    for run in ("here", "child"):  # laffi-then-sft continues laffi's adapter (train.init), through the CLI too
        config = make_run(tmp_path / run, tiny_model_dir, "systems.names=sft,laffi,laffi-then-sft")
        for name in ("laffi", "laffi-then-sft"):
            (tmp_path / run / "sets" / f"{name}.jsonl").write_text((tmp_path / run / "sets" / "sft.jsonl").read_text())
    systems = {s.name: s for s in load_systems(config.systems.names)}
    here = RunLayout(tmp_path / "here")
    for name in ("laffi", "laffi-then-sft"):
        train_system(here, systems[name], config.model, config.data, config.generate, config.train)
    child = RunLayout(tmp_path / "child")
    for name in ("laffi", "laffi-then-sft"):
        Launcher("process").train(child, name)
    assert_same_adapter(here.adapter("laffi-then-sft"), child.adapter("laffi-then-sft"))
    summary = json.loads(child.train_summary("laffi-then-sft").read_text())
    assert summary["init"] == str(child.adapter("laffi")) and summary["processes"] == 1


def test_a_two_process_checkpoint_resumes_under_torchrun(tiny_model_dir, tmp_path):
    # 6 examples in batches of 4: every other step has 2, so each process gets 1 example
    config = make_run(tmp_path / "one", tiny_model_dir, "train.batch_size=4")
    one = train(RunLayout(tmp_path / "one"), "sft", config.model, config.train)

    make_run(tmp_path / "two", tiny_model_dir, "train.batch_size=4")
    script = ROOT / "tests" / "support" / "launched_crash.py"
    crash = Launcher("torchrun", 2).wrap([str(script), "train", str(tmp_path / "two"), "--system", "sft"])
    assert subprocess.run(crash, capture_output=True).returncode != 0
    out = RunLayout(tmp_path / "two").adapter("sft")
    assert json.loads((out / "checkpoint" / "step.json").read_text()) == {"step": 2, "processes": 2}
    state = out / "checkpoint" / "state"
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"} <= {p.name for p in state.iterdir()}
    assert not list(state.glob("model*"))  # the base model stays out: only the LoRA weights are saved
    assert not (out / "adapter_model.safetensors").exists()

    with pytest.raises(ConfigError, match="written by 2 processes"):  # one process cannot take it over
        train(RunLayout(tmp_path / "two"), "sft", config.model, config.train)

    two = Launcher("torchrun", 2).train(RunLayout(tmp_path / "two"), "sft")
    assert json.loads((two / "summary.json").read_text())["resumed_from_step"] == 2
    assert [e.step for e in read_records(two / "train_log.jsonl", TrainLogEntry)] == [1, 2, 3, 4]
    assert files(two) == files(one)
    assert loss_and_grad_norm(two) == pytest.approx(loss_and_grad_norm(one), rel=1e-4)
    assert_same_adapter(one, two)


def test_two_processes_evaluate_the_same_predictions_in_question_order(tiny_overrides, tmp_path):
    # 10 questions answered one at a time: rounds of 8 and 2 over 2 processes (no shots: short prompts)
    overrides = [*tiny_overrides, "data.eval_size=10", "data.num_shots=0", "generate.batch_size=1",
                 "generate.max_new_tokens=2"]
    config = load_config(overrides=overrides)
    for name in ("one", "two"):
        prepare(RunLayout(tmp_path / name), config.data)
    one = evaluate(RunLayout(tmp_path / "one"), "base", config.model, config.data, config.generate, config.eval)
    command = Launcher("accelerate", 2).wrap(["-m", "laffi.cli", "evaluate", str(tmp_path / "two"), *overrides,
                                              "--system", "base"])
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"exact"') == 1  # printed by the main process only

    questions = [e.id for e in read_records(RunLayout(tmp_path / "two").eval_examples, QAExample)]
    two = read_records(RunLayout(tmp_path / "two").evaluation("base") / "predictions.jsonl", Prediction)
    assert [p.id for p in two] == questions  # gathered back in question order, each once
    single = {p.id: p for p in read_records(RunLayout(tmp_path / "one").evaluation("base") / "predictions.jsonl",
                                            Prediction)}
    assert [single[p.id] for p in two] == two
    metrics = json.loads((RunLayout(tmp_path / "two").evaluation("base") / "metrics.json").read_text())
    assert metrics["generation"]["processes"] == 2 and metrics["generation"]["questions"] == 10
    assert (metrics["exact"], metrics["f1"]) == (one["exact"], one["f1"])


def test_two_processes_generate_the_answers_and_samples_one_process_makes(tiny_overrides, tmp_path):
    # 10 train questions, 2 answers each (greedy and one sampled from its own stream), over 2 processes
    overrides = [*tiny_overrides, "data.train_size=10", "data.num_shots=0", "generate.batch_size=2",
                 "generate.max_new_tokens=2", "generate.samples=2"]
    config = load_config(overrides=overrides)
    for name in ("one", "two"):
        prepare(RunLayout(tmp_path / name), config.data)
    generate(RunLayout(tmp_path / "one"), config.model, config.data, config.generate)
    one = {(a.id, a.sample): a for a in read_records(RunLayout(tmp_path / "one").answers, Answer)}  # token order
    questions = [e.id for e in read_records(RunLayout(tmp_path / "two").train_examples, QAExample)]
    # a stopped run to resume: one question's greedy answer and another's both answers are on disk already
    before = [one[(questions[0], 0)], one[(questions[1], 0)], one[(questions[1], 1)]]
    write_records(RunLayout(tmp_path / "two").answers, before)
    done = subprocess.run(Launcher("accelerate", 2).wrap(["-m", "laffi.cli", "generate", str(tmp_path / "two"),
                                                          *overrides]), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("answers in") == 1  # printed by the main process only

    two = read_records(RunLayout(tmp_path / "two").answers, Answer)
    rest = [(q, s) for q in questions for s in (0, 1) if (q, s) not in {(a.id, a.sample) for a in before}]
    assert [(a.id, a.sample) for a in two] == [(a.id, a.sample) for a in before] + rest  # each once, in order
    assert [one[(a.id, a.sample)] for a in two] == two


def test_a_process_whose_request_fails_stops_all_and_what_arrived_is_written(tiny_overrides, tmp_path):
    from support.fault_server import FaultServer

    from laffi.backends.answering import build_prompts
    from laffi.models import load_tokenizer

    overrides = [*tiny_overrides, "data.train_size=6", "data.num_shots=0", "generate.batch_size=2",
                 "generate.max_new_tokens=2", "generate.retries=0"]
    config = load_config(overrides=overrides)
    layout = RunLayout(tmp_path / "run")
    prepare(layout, config.data)
    examples = read_records(layout.train_examples, QAExample)
    prompts = build_prompts(load_tokenizer(config.model), examples, read_records(layout.shots, QAExample), config.data)
    failing = examples[3].id  # the second process's second question

    def completions(body):
        if body["prompt"] == prompts[failing]:
            return 400, {"error": {"message": "refused on purpose"}}
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": " x\n", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2, "total_tokens": 0}}

    with FaultServer(lambda item, n: "ok", completions=completions) as server:
        command = Launcher("accelerate", 2).wrap(["-m", "laffi.cli", "generate", str(layout.root), *overrides,
                                                  "generate.backend=openai", f"generate.base_url={server.url}"])
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "refused on purpose" in done.stderr
    written = [a.id for a in read_records(layout.answers, Answer)]
    assert written == [e.id for e in examples if e.id != failing]  # both processes' answers, in question order


def test_laffi_run_hands_each_training_to_the_launcher(monkeypatch, tmp_path):
    import laffi.experiments.run as run_module
    from laffi.cli import main

    launched = []
    monkeypatch.setattr(Launcher, "train", lambda self, layout, name: launched.append((self, name)) or layout.root)
    monkeypatch.setattr(run_module, "train_system", lambda *args: pytest.fail("trained in-process"))
    for stage in ("prepare", "generate", "annotate", "build", "claim_adapter"):  # no sets to check either
        monkeypatch.setattr(run_module, stage, lambda *args, **kwargs: None)
    for stage in ("evaluate", "evaluate_system"):
        monkeypatch.setattr(run_module, stage, lambda *args, **kwargs: {})
    monkeypatch.setattr(run_module, "write_results", lambda *args: {})
    monkeypatch.setattr("laffi.report.results.markdown_table", lambda results: "")
    config = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    assert main(["run", "--out", str(tmp_path), "--launcher", "accelerate", "--num-processes", "4",
                 "--accelerate-config", str(config), "systems.names=base,sft,laffi,laffi-mix"]) == 0
    assert [name for _, name in launched] == ["sft", "laffi", "laffi-mix"]  # each recipe of systems.names
    assert launched[0][0] == Launcher("accelerate", 4, str(config))
    assert main(["run", "--out", str(tmp_path), "--num-processes", "4"]) == 2  # no launcher named


def test_laffi_run_refuses_one_process_systems_under_many_processes_before_any_stage(monkeypatch, tmp_path, capsys):
    import laffi.experiments.run as run_module
    from laffi.cli import main

    monkeypatch.setattr(run_module, "prepare", lambda *args: pytest.fail("a stage ran"))
    config = str(ROOT / "configs" / "accelerate" / "multi-gpu.yaml")  # its num_processes: 8
    for launch in (["--num-processes", "2"], ["--accelerate-config", config]):
        assert main(["run", "--out", str(tmp_path), "--launcher", "accelerate", *launch]) == 2  # the default systems
        assert "systems.names: laffi-aux-half train with auxiliary examples" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path), "--launcher", "accelerate", "--num-processes", "2",
                 "systems.names=base,sft,laffi-dpo-r2"]) == 2  # its rounds answer and annotate in one process
    assert "systems.names: laffi-dpo-r2 train with auxiliary examples, preference pairs or several rounds" in \
        capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path), "--launcher", "torchrun", "--num-processes", "2",
                 "systems.names=sft", "train.eval_every=4"]) == 2
    assert "train.eval_every: QA evaluation during training runs in one process" in capsys.readouterr().err
    one_gpu = str(ROOT / "configs" / "accelerate" / "one-gpu.yaml")  # num_processes: 1, so the default systems run
    assert [Launcher("accelerate").processes, Launcher("process").processes, Launcher("torchrun", 2).processes] == [1, 1, 2]
    assert Launcher("accelerate", config_file=config).processes == 8 and Launcher("accelerate", 3, config).processes == 3
    assert Launcher("accelerate", config_file=one_gpu).processes == 1


@pytest.mark.parametrize("command", [["annotate", "RUN"], ["build", "RUN"], ["prepare", "RUN"],
                                     ["run", "--out", "RUN"], ["experiment", "CONFIG.yaml"]])
def test_a_command_that_does_not_share_its_work_is_refused_under_a_launcher(command, monkeypatch, tmp_path, capsys):
    from laffi.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch and torchrun set in each process
    argv = [str(tmp_path / "x") if a in ("RUN", "CONFIG.yaml") else a for a in command]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"laffi {command[0]} runs in one process, and 2 were launched" in error
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_launcher_commands():
    config = str(ROOT / "configs" / "accelerate" / "multi-gpu.yaml")
    command = Launcher("accelerate", config_file=config).command("runs/x", "laffi")
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes" not in command  # the file's 8
    assert command[-6:] == ["-m", "laffi.cli", "train", "runs/x", "--system", "laffi"]
    assert "--num_processes" in Launcher("accelerate", 2, config).command("runs/x", "laffi")
    assert Launcher("torchrun", 8).command("runs/x", "sft")[1:6] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8"]
    with pytest.raises(ConfigError, match="--accelerate-config"):
        Launcher("accelerate", 2, "no/such.yaml")
    assert Launcher("process").command("runs/x", "sft")[1:] == ["-m", "laffi.cli", "train", "runs/x", "--system", "sft"]
    with pytest.raises(ConfigError, match="--num-processes: the process launcher runs one process"):
        Launcher("process", 2)
    with pytest.raises(ConfigError, match="--launcher"):
        Launcher("mpirun", 2)


def accelerate_configs() -> list[Path]:
    return sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", accelerate_configs(), ids=lambda p: p.name)
def test_shipped_accelerate_config_is_one_accelerate_reads(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{path.name} ")
    assert first.endswith("-m laffi.cli train RUN --system laffi")
    load_config_from_file(str(path))  # accelerate's own reader: an unknown top-level key is an error
    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    raw = yaml.safe_load(path.read_text())
    for section in ("deepspeed_config", "fsdp_config"):  # accelerate turns these keys into launch options
        unknown = set(raw.get(section) or {}) - options
        assert not unknown, f"{section}: accelerate launch has no option {sorted(unknown)}"
    assert raw["mixed_precision"] == "bf16"

    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "train.py"]))
    assert args.num_processes == raw["num_processes"] and args.num_machines == raw["num_machines"]
    # build the FSDP / DeepSpeed plugin from the environment accelerate launch would give the processes
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args) if args.num_processes > 1 else {}
    env = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    with mock.patch.dict(os.environ, env):
        if args.use_fsdp:
            plugin = FullyShardedDataParallelPlugin()
            assert plugin.fsdp_version == raw["fsdp_config"]["fsdp_version"]
        if args.use_deepspeed:
            plugin = DeepSpeedPlugin()
            assert plugin.zero_stage == raw["deepspeed_config"]["zero_stage"]


def test_the_shipped_configs_cover_one_gpu_ddp_fsdp_zero2_zero3_and_two_nodes():
    kinds = set()
    for path in accelerate_configs():
        raw = yaml.safe_load(path.read_text())
        stage = (raw.get("deepspeed_config") or {}).get("zero_stage")
        kinds.add((raw["distributed_type"], raw["num_machines"], stage))
    assert {("NO", 1, None), ("MULTI_GPU", 1, None), ("FSDP", 1, None), ("DEEPSPEED", 1, 2), ("DEEPSPEED", 1, 3),
            ("MULTI_GPU", 2, None)} <= kinds


def test_qlora_says_what_it_needs(tiny_model_dir):
    from laffi.models import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = load_config(overrides=[f"model.name={tiny_model_dir}", "model.load_in_4bit=true"])
    with pytest.raises(ConfigError, match=r"model\.load_in_4bit: needs a CUDA GPU"):
        load_model(config.model)
