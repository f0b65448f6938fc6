"""Stage 0: pick the questions of a run and write them into its data/ folder.

    laffi prepare runs/demo [--config FILE] [data.source=squad-v2.json] [data.eval_size=200]

Splits by article, so no passage is both trained on and evaluated: first the held-out set, then
the dev set (data.dev_size questions for choosing settings) from the rest; then draws the few-shot
pool and the training questions from what is left. Files are written whole or not at all.
`laffi prepare` then saves the whole run's settings as config.yaml (`save_run_config`), which every
later stage command on the run reads, so a run built stage by stage keeps the settings it began with.
"""

from __future__ import annotations

import random

import yaml

from laffi.config import DataConfig, RunConfig, read_yaml, save_config
from laffi.data import load_examples, split_by_title
from laffi.layout import RunLayout
from laffi.prompts import shot_pool
from laffi.records import QAExample, read_records, write_atomic, write_records


def save_run_config(layout: RunLayout, config: RunConfig) -> None:
    """config.yaml: the whole run's settings, which stage commands on the run read (`laffi train RUN`, a launched
    training). Saved once the questions are drawn, so settings that prepare refused never land there. Replaced,
    not compared, until the model has written something: a mistyped model name is fixed by running again,
    while data/config.yaml guards the questions already drawn."""
    save_config(layout.config, config.sections(), outputs=layout.model_outputs(),
                redo="delete what the model wrote with them (answers.jsonl, eval*/) to make it again")


def prepare(layout: RunLayout, data: DataConfig) -> tuple[list[QAExample], list[QAExample]]:
    written = [p.exists() for p in (layout.train_examples, layout.eval_examples, layout.shots)]
    if all(written) and not layout.dev_examples.exists():  # split without a dev set: by data.dev_size=0, or
        older = False                                       # by a laffi that had none
        for path in (layout.data_config, layout.config):  # the split's settings, and the run's beside its answers
            saved = read_yaml(path) if path.exists() else {}
            if saved and "dev_size" not in (saved.get("data") or {}):  # what it had: none (not today's default)
                older = True
                write_atomic(path, yaml.safe_dump({**saved, "data": {**(saved.get("data") or {}), "dev_size": 0}},
                                                  sort_keys=False))
        if older and data.dev_size:
            raise ValueError(f"{layout.data}: split by a laffi without a dev set; use a new run directory, "
                             "or data.dev_size=0 to go on without one")
    save_config(layout.data_config, {"data": data}, outputs=[layout.train_examples])  # written last
    if all(written):
        return read_records(layout.train_examples, QAExample), read_records(layout.eval_examples, QAExample)
    train_pool, held_out = split_by_title(load_examples(data.source), data.eval_size, data.seed)
    dev: list[QAExample] = []
    if data.dev_size:
        train_pool, dev = split_by_title(train_pool, data.dev_size, data.seed, option="data.dev_size")
    shots = shot_pool(train_pool, data.seed)
    if len(shots) < data.num_shots + 1:
        raise ValueError(f"data.num_shots={data.num_shots}: the train pool has only {len(shots)} articles, and a "
                         f"question's shots come from {data.num_shots} others; lower data.num_shots, or data.eval_size "
                         "or data.dev_size (they take whole articles from the pool)")
    train = list(train_pool)
    random.Random(data.seed).shuffle(train)  # a train_size subset then spans many articles
    if data.train_size:
        if data.train_size > len(train):
            raise ValueError(f"data.train_size={data.train_size}: the train pool has {len(train)} questions (those of "
                             f"{data.source} left after the held-out and dev sets); lower data.train_size, or 0 for all")
        train = train[: data.train_size]
    write_records(layout.shots, shots)
    if data.dev_size:
        write_records(layout.dev_examples, dev)
    else:  # one that an attempt killed before train.jsonl left (with another data.dev_size) would overlap train
        layout.dev_examples.unlink(missing_ok=True)
    write_records(layout.eval_examples, held_out)
    write_records(layout.train_examples, train)
    return train, held_out
