"""Where a training step's time goes: laffi's own training loop under torch.profiler, per op.

    python benchmarks/speed_setup.py runs/bench-speed
    python benchmarks/profile_train.py runs/bench-speed --set laffi --steps 4
    python benchmarks/profile_train.py runs/bench-speed --set laffi-aux-half --aux-weight 0.5 --shapes
    python benchmarks/profile_train.py runs/bench-speed --set sft train.lora_dropout=0.05

Trains a fresh copy (no resume, no checkpoints) of sets/SET.jsonl for --steps steps with the default
preset's model and train sections (and any key=value overrides), and prints the ops by their own
CPU time over the whole training: the steps, plus the model load and the first step's warm-up,
which are small beside them. --shapes splits each op by its input shapes (which matmul, which
elementwise op on which tensor). The profiler slows a step down by a few percent; fractions, not
seconds, are what to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch

from laffi.config import load_config
from laffi.layout import RunLayout
from laffi.records import TrainLogEntry, read_records
from laffi.stages.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run with sets (benchmarks/speed_setup.py makes one)")
    parser.add_argument("--set", default="laffi", help="the training set: sets/SET.jsonl")
    parser.add_argument("--aux-weight", type=float, help="also train on sets/SET.aux.jsonl at this weight")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=30, help="ops to print")
    parser.add_argument("--shapes", action="store_true", help="one line per op and input shapes")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = load_config(overrides=[f"train.steps={args.steps}", "train.checkpoint_every=0", *args.overrides])
    work = Path(tempfile.mkdtemp(prefix="laffi-profile-"))
    try:
        layout = RunLayout(work, sets=RunLayout(args.run_dir).sets)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=args.shapes) as profile:
            train(layout, args.set, run.model, run.train, aux_weight=args.aux_weight)
        log = read_records(layout.train_log(args.set), TrainLogEntry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.set}: {len(log)} steps, seconds at the end of each: {[e.elapsed_s for e in log]}")
    table = profile.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40,
                      max_shapes_column_width=60))


if __name__ == "__main__":
    main()
