"""The run directory the speed benchmarks share: the embedded data, split as `laffi run` splits it,
and the SFT, LaFFi and laffi-aux-half training sets, built without generating answers first.

    python benchmarks/speed_setup.py runs/bench-speed

The LaFFi set needs the model's answers; generating them would add minutes that measure nothing
the generation benchmark does not. The answers here are stand-ins of the lengths the model gives
(the gold answer, its first word, or the passage's first words: correct, partial and wrong), and
the reference annotator writes real feedback on them, so prompts and completions have the
lengths of a real LaFFi set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from laffi.analysis.metrics import majority_answer
from laffi.config import RunConfig, load_config
from laffi.layout import RunLayout
from laffi.records import Answer, QAExample, TrainingExample, read_records, write_records
from laffi.stages.annotate import annotate
from laffi.stages.build import build
from laffi.stages.prepare import prepare
from laffi.systems import load_systems


AUX_SYSTEM = "laffi-aux-half"  # the SFT set plus each question's LaFFi example at half weight
SETS = ("sft", "laffi", AUX_SYSTEM)


def config(train_size: int = 64, eval_size: int = 200) -> RunConfig:
    """The default preset (what `laffi run` trains and evaluates with) on a smaller train pool."""
    return load_config(overrides=[f"data.train_size={train_size}", f"data.eval_size={eval_size}"])


def stand_in_answer(index: int, example: QAExample) -> str:
    gold = majority_answer(example.answers)
    return (gold, gold.split()[0], " ".join(example.context.split()[:4]))[index % 3]


def setup(run_dir: str | Path, train_size: int = 64) -> RunConfig:
    layout = RunLayout(run_dir)
    run = config(train_size)
    train, _ = prepare(layout, run.data)  # a directory split with another --train-size is refused, not reused
    if all(layout.training_set(name).exists() for name in SETS):
        return run  # built before (by this laffi or an older one: delete the directory to build them anew)
    write_records(layout.answers, [Answer(e.id, stand_in_answer(i, e), stand_in_answer(i, e), "stand-in")
                                   for i, e in enumerate(train)])
    annotate(layout, run.annotate)
    build(layout, run.data, systems=load_systems([AUX_SYSTEM]))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--train-size", type=int, default=64)
    args = parser.parse_args()
    setup(args.run_dir, args.train_size)
    for name in SETS:
        examples = read_records(RunLayout(args.run_dir).training_set(name), TrainingExample)
        print(f"{len(examples)} examples in {RunLayout(args.run_dir).training_set(name)}")


if __name__ == "__main__":
    main()
