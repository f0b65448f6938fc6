"""Training throughput of laffi's LoRA loop and of TRL's SFTTrainer on the same batches.

    python benchmarks/speed_setup.py runs/bench-speed
    python benchmarks/train_speed.py runs/bench-speed --tool laffi --steps 8 --json laffi.json
    python benchmarks/train_speed.py runs/bench-speed --tool laffi --set sft --steps 8
    python benchmarks/train_speed.py runs/bench-speed --tool laffi --set laffi-aux-half --aux-weight 0.5
    python benchmarks/train_speed.py runs/bench-speed --tool trl --steps 8 --json trl.json
    PYTHONPATH=/tmp/laffi-19199e7/src python benchmarks/train_speed.py runs/bench-speed --tool laffi  # an older laffi

Run each tool in a process of its own (benchmarks/speed.py does): peak memory is the process's
peak resident set (on a GPU: the peak of allocated memory), so tools must not share a process.

Same model (the embedded SmolLM2-135M, in the dtype the overrides name), LoRA settings
(the default preset's train section and the overrides), data (sets/SET.jsonl; with --aux-weight, each batch also trains on its
questions' sets/SET.aux.jsonl examples, as laffi-aux-half does), learning rate and schedule, batch size,
sequence lengths and steps. It imports only what laffi has had since 19199e7 (2026-12-04), so an
older laffi's `src/` on PYTHONPATH runs the same batches: the speed before and after a change in one
run. Same batches too: TRL gets the examples in the order laffi's sampler draws them (train.group_by;
speed.py gives TRL's rows train.group_by=length, laffi's padded batches), with its sequential sampler, so
both pad the same rows together. TRL's defaults that would make it a different experiment are set to
laffi's: gradient_checkpointing=False (TRL: True), and bf16 only where the model's weights are bf16
(TRL: bf16=True).

The first step is a warm-up (allocator, kernel choice) and is left out: tokens/s is over steps
2..N, from the end of step 1 to the end of step N.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from laffi.config import RunConfig, load_config
from laffi.layout import RunLayout
from laffi.models import load_model, load_tokenizer, pick_device, pick_dtype
from laffi.records import TrainingExample, TrainLogEntry, read_records
from laffi.stages.batches import IGNORE, batch_order, tokenize
from laffi.stages.train import train


def step_batches(run: RunConfig, examples: list[TrainingExample], auxiliary: list[TrainingExample],
                 tokenizer) -> tuple[list, list[list[int]]]:
    """laffi's tokenised rows and the batches (lists of row indices) of every forward pass; row n + i is
    example i's auxiliary example, in its batch (laffi.stages.train)."""
    rows = tokenize(tokenizer, examples + auxiliary, run.train.max_seq_len)
    batches = batch_order(rows[:len(examples)], run.train.batch_size, run.train.steps * run.train.grad_accum,
                          run.train.seed, group_by=run.train.group_by)
    if auxiliary:
        batches = [[*batch, *(i + len(examples) for i in batch)] for batch in batches]
    return rows, batches


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_laffi(run_dir: Path, run: RunConfig, name: str, aux_weight: float | None) -> tuple[list[float], list[float]]:
    """Seconds at the end of each step and each step's loss, from laffi's own log (a fresh copy of the
    run: no resume)."""
    work = Path(tempfile.mkdtemp(prefix="laffi-train-speed-"))
    try:
        layout = RunLayout(work, sets=RunLayout(run_dir).sets)  # trains on the run's set where it is
        train(layout, name, run.model, run.train, aux_weight=aux_weight)
        log = read_records(layout.train_log(name), TrainLogEntry)
        return [e.elapsed_s for e in log], [e.loss for e in log]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_trl(run: RunConfig, examples: list[TrainingExample], batches: list[list[int]],
            rows) -> tuple[list[float], dict]:
    """Seconds at the end of each step of SFTTrainer on the same batches, and a tokenisation check."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    train = run.train
    torch.manual_seed(train.seed)
    model, tokenizer = load_model(run.model)
    ordered = [examples[i] for batch in batches for i in batch]  # laffi's batches, one after another
    dataset = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in ordered])
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl-train-speed-"), max_steps=train.steps,
                     per_device_train_batch_size=train.batch_size, gradient_accumulation_steps=train.grad_accum,
                     learning_rate=train.lr, lr_scheduler_type=train.schedule, warmup_steps=train.warmup_steps,
                     weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm, max_length=train.max_seq_len,
                     gradient_checkpointing=train.gradient_checkpointing, bf16=bf16, seed=train.seed,
                     train_sampling_strategy="sequential", completion_only_loss=True, save_strategy="no",
                     report_to="none", logging_steps=1, dataloader_num_workers=0, disable_tqdm=True,
                     use_cpu=pick_device(run.model.device).type == "cpu")
    target = train.target_modules[0] if train.target_modules == ["all-linear"] else train.target_modules
    lora = LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            ends.append(time.perf_counter())

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[StepClock()])
    # did TRL tokenise into the sequences laffi trains on? (lengths and completion tokens per example)
    tokenised = trainer.train_dataset
    theirs = [(len(r["input_ids"]), sum(label != IGNORE for label in r["labels"])) for r in tokenised]
    ours = [(len(rows[i][0]), sum(label != IGNORE for label in rows[i][1])) for batch in batches for i in batch]
    check = {"same_lengths": [t[0] for t in theirs] == [o[0] for o in ours],
             "same_completion_tokens": [t[1] for t in theirs] == [o[1] for o in ours],
             "trl_tokens": sum(t[0] for t in theirs), "laffi_tokens": sum(o[0] for o in ours)}
    began = time.perf_counter()
    trainer.train()
    return [round(t - began, 3) for t in ends], check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--tool", choices=["laffi", "trl"], required=True)
    parser.add_argument("--set", default="laffi", help="the training set: sets/SET.jsonl")
    parser.add_argument("--aux-weight", type=float, help="also train on sets/SET.aux.jsonl at this weight")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--label", help="the row's name in the table")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.batch_size=2")
    args = parser.parse_intermixed_args()  # key=value overrides may come before the options
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    # the default preset's model and train sections (what `laffi run` trains with), no checkpoints
    run = load_config(overrides=[f"train.steps={args.steps}", "train.checkpoint_every=0", *args.overrides])
    layout = RunLayout(args.run_dir)
    examples = read_records(layout.training_set(args.set), TrainingExample)
    auxiliary = [] if args.aux_weight is None else read_records(layout.aux_set(args.set), TrainingExample)
    if args.tool == "trl" and auxiliary:
        parser.error("--aux-weight: TRL's SFTTrainer has no auxiliary loss")
    rows, batches = step_batches(run, examples, auxiliary, load_tokenizer(run.model))
    load_before = os.getloadavg()[0]
    check = losses = None
    if args.tool == "laffi":
        ends, losses = run_laffi(Path(args.run_dir), run, args.set, args.aux_weight)
    else:
        ends, check = run_trl(run, examples, batches, rows)
    if len(ends) != args.steps:
        raise RuntimeError(f"{args.tool}: {len(ends)} step times for {args.steps} steps")

    measured = batches[run.train.grad_accum:]  # steps 2..N
    lengths = [len(rows[i][0]) for batch in measured for i in batch]
    completion = sum(sum(label != IGNORE for label in rows[i][1]) for batch in measured for i in batch)
    padded = sum(len(batch) * max(len(rows[i][0]) for i in batch) for batch in measured)
    seconds = ends[-1] - ends[0]
    examples = sum(len(batch) for batch in measured)
    # the dtype the model trained in (model.dtype=auto: bf16 where the CPU or GPU has bf16 units)
    dtype = str(pick_dtype(run.model.dtype, pick_device(run.model.device))).removeprefix("torch.")
    result = {"tool": args.tool, "label": args.label or args.tool, "set": args.set, "aux_weight": args.aux_weight,
              "laffi": inspect.getfile(train), "dtype": dtype, "pack": run.train.pack and args.tool == "laffi",
              "group_by": run.train.group_by, "examples": examples, "examples_per_s": round(examples / seconds, 3),
              "losses": losses, "steps": args.steps, "measured_steps": args.steps - 1, "seconds": round(seconds, 2),
              "seconds_per_step": round(seconds / (args.steps - 1), 2),
              "tokens": sum(lengths), "completion_tokens": completion, "padded_tokens": padded,
              "tokens_per_s": round(sum(lengths) / seconds, 1),
              "completion_tokens_per_s": round(completion / seconds, 1),
              "peak_memory_mb": round(peak_memory_mb(), 1), "lengths": lengths,
              "batch_size": run.train.batch_size, "lora_r": run.train.lora_r,
              "target_modules": run.train.target_modules,
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
              "step_end_seconds": ends, "tokenisation_check": check}
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("lengths", "step_end_seconds")}))


if __name__ == "__main__":
    main()
