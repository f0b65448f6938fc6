"""Stage 5: answer the held-out questions and score them with the official SQuAD semantics.

    laffi evaluate runs/demo --system base
    laffi evaluate runs/demo --system sft --adapter runs/demo/adapters/sft eval.split=dev
    laffi evaluate runs/demo --system laffi --adapter runs/demo/adapters/laffi
    laffi evaluate runs/demo --system laffi-refine-mix-guided    # a system: its adapter and procedure
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml -m laffi.cli evaluate runs/demo --system base

Writes eval/SYSTEM/predictions.jsonl (per question: answer, raw output, EM, F1), metrics.json
(EM/F1 in percent with 95% bootstrap intervals) and config.yaml; with eval.split=dev the same for
the dev set, into eval-dev/SYSTEM/. Resumable like `generate`. `evaluate` answers with an adapter
it is given; `evaluate_system` with what a system (laffi.systems) answers with, as `train_system`
(laffi.stages.train) trains one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import yaml

from laffi.analysis.bootstrap import bootstrap_interval
from laffi.analysis.metrics import score_example, summarize
from laffi.backends.answering import answer_questions, load_backend
from laffi.backends.feedback_guided import answer_with_feedback
from laffi.config import (ConfigError, DataConfig, EvalConfig, GenerateConfig, ModelConfig, TrainConfig, plain, read_yaml,
                          save_config)
from laffi.distributed.shards import Collector, Shard
from laffi.layout import ADAPTER_CONFIG, CONFIG, RunLayout, adapter_weights, is_adapter
from laffi.models import answered_as_now, answering_of
from laffi.prompts import extract_answer
from laffi.records import Prediction, QAExample, Review, fingerprint, read_records, write_atomic, write_json
from laffi.systems import Answering, System


def metrics_for(examples: list[QAExample], predictions: list[Prediction], config: EvalConfig) -> dict:
    by_id = {p.id: p for p in predictions}
    missing = [e.id for e in examples if e.id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} held-out questions have no prediction, e.g. {missing[0]!r}")
    exact = [by_id[e.id].exact for e in examples]
    f1 = [by_id[e.id].f1 for e in examples]
    metrics = summarize(examples, exact, f1)
    for name, values in (("exact", exact), ("f1", f1)):
        low, high = bootstrap_interval(values, samples=config.bootstrap_samples, seed=config.seed)
        metrics[f"{name}_ci95"] = [round(100 * low, 2), round(100 * high, 2)]
    return metrics


DevScorer = Callable[[object, object, str], dict]


def missing_questions(layout: RunLayout, split: str) -> str:
    """Why a split's questions are not there, and what to do: not prepared yet, or split without a dev set (which a
    split made cannot be given afterwards: its articles are in the train pool)."""
    if split == "dev" and layout.train_examples.exists() and layout.data_config.exists() and \
            not (read_yaml(layout.data_config).get("data") or {}).get("dev_size"):
        return (f"{layout.root} was split without a dev set (data.dev_size=0 in {layout.data_config}); prepare a new "
                "run directory with data.dev_size > 0")
    return f"{layout.questions(split)} is missing; run `laffi prepare {layout.root}` first"


def dev_scorer(layout: RunLayout, data: DataConfig, generate: GenerateConfig, train: TrainConfig) -> DevScorer | None:
    """What training calls every train.eval_every steps: (model, tokenizer, label) -> {"exact", "f1"} in
    percent, answering the first train.eval_questions dev questions directly. None when it is off."""
    if not train.eval_every:
        return None
    generate = generate.for_evaluation()
    if not layout.questions("dev").exists():
        raise ConfigError(f"train.eval_every: QA evaluation during training answers the dev set, and "
                          f"{missing_questions(layout, 'dev')}")
    examples = read_records(layout.questions("dev"), QAExample)[:train.eval_questions]
    shots = read_records(layout.shots, QAExample)

    def score(model, tokenizer, label: str) -> dict:
        out = Collector()
        answer_questions(model, tokenizer, examples, shots, data, generate, out,
                         lambda e, g: score_example(e, extract_answer(g.text)), desc=f"dev {label}")
        exact, f1 = zip(*out.records)
        return {"exact": round(100 * sum(exact) / len(exact), 2), "f1": round(100 * sum(f1) / len(f1), 2)}

    return score


def follow_moved_adapters(path: Path, described: dict, weights: dict[str, str]) -> None:
    """A run directory moved or copied as a whole (layout.json is relative for that): its evaluations' configs
    name the adapters by their old absolute paths. Where the weights are the same (their fingerprints, saved
    as the config's inputs), the paths saved are updated instead of refusing the evaluation as made with other
    settings; an adapter trained again under the path, or a config with no fingerprints, is compared as before."""
    if not path.exists():
        return
    saved = read_yaml(path)
    before = saved.get("system") or {}
    moved = {k: described.get(k) for k in ("adapter", "reviewer") if before.get(k) != described.get(k)}
    if moved and weights and saved.get("inputs") == weights and all(before.get(k) for k in moved):
        write_atomic(path, yaml.safe_dump({**saved, "system": {**before, **moved}}, sort_keys=False))


def evaluate(layout: RunLayout, system: str, model: ModelConfig, data: DataConfig,
             generate: GenerateConfig, eval: EvalConfig, adapter: str | Path | None = None,
             backend: Callable[[], tuple] | None = None, answering: Answering | None = None,
             reviewer: str | Path | None = None) -> dict:
    """`backend`: returns the (model, tokenizer) to answer with, loaded by the caller, e.g. the base
    model `laffi run` also generates with; called only if questions are left to answer.
    `answering`: how the system answers (laffi.systems; direct if None); feedback-guided answering
    reviews with the adapter `reviewer` (the answering model itself if None). Evaluation answers each question
    once, greedily: generate.samples and the sampling options decide training answers only, and are set to
    their defaults here, in the decoding and in the config saved beside the predictions."""
    generate = generate.for_evaluation()
    split = eval.split
    if not layout.questions(split).exists():
        raise FileNotFoundError(f"eval.split={split}: {missing_questions(layout, split)}")
    examples = read_records(layout.questions(split), QAExample)
    shots = read_records(layout.shots, QAExample)
    adapter_path = str(Path(adapter).resolve()) if adapter else None
    guided = answering is not None and answering.procedure == "feedback-guided"
    reviewer_path = str(Path(reviewer).resolve()) if guided and reviewer else None
    for role, path in (("adapter", adapter_path), ("reviewer", reviewer_path)):
        if path and not is_adapter(Path(path)):  # an untrained system's, or a mistyped --adapter
            trained = Path(path).name
            if Path(path) != layout.adapter(trained).resolve():  # a folder of the user's own
                raise FileNotFoundError(f"{system}'s {role}: {path} holds no PEFT adapter ({ADAPTER_CONFIG}); give "
                                        "a folder a training saved (RUN/adapters/NAME)")
            raise FileNotFoundError(f"{system}'s {role}: {path} holds no PEFT adapter ({ADAPTER_CONFIG}); train it "
                                    f"first (`laffi train {layout.root} --system {trained}`, once `laffi build` has "
                                    f"made its set with {trained} in systems.names), or give --adapter a trained one")
    for role, path in (("adapter", adapter_path), ("reviewer", reviewer_path)):
        if path and (note := other_base_model(Path(path), model)):
            print(f"evaluate {system}: its {role} {note}", flush=True)
    shard = Shard.current(model.device)  # one process, or one of several under accelerate launch / torchrun
    described = {"name": system, "adapter": adapter_path}  # a direct system's, as before systems had procedures
    if adapter_path:
        described.update(answering_of(model))
    if guided:
        described.update(answer=plain(answering), reviewer=reviewer_path)

    def save() -> None:  # with the adapters' weights: one trained again under the same path is not the old one
        weights = {option: fingerprint(adapter_weights(path))
                   for option, path in (("adapter", adapter_path), ("reviewer", reviewer_path)) if path}
        follow_moved_adapters(layout.eval_config(system, split), described, weights)
        save_config(layout.eval_config(system, split), {
            "model": model, "data": data, "generate": generate, "eval": eval, "system": described},
            outputs=[layout.predictions(system, split)], inputs=weights)

    shard.on_main(save)

    def score(example: QAExample, generation) -> Prediction:
        answer = extract_answer(generation.text)
        exact, f1 = score_example(example, answer)
        return Prediction(example.id, answer, generation.text, exact, f1)

    def revised(example: QAExample, answer: str, output: str, reviews: list[Review]) -> Prediction:
        exact, f1 = score_example(example, answer)
        return Prediction(example.id, answer, output, exact, f1, reviews)

    speed = None
    with shard.writer(layout.predictions(system, split), Prediction) as writer:
        if len(writer.done_ids) < len(examples):
            lm, tokenizer = backend() if backend else load_backend(model, generate, adapter=adapter_path)
            desc = f"evaluate {system}{' (dev)' if split == 'dev' else ''}"
            if guided:
                critic = lm if reviewer_path in (None, adapter_path) else load_backend(model, generate, reviewer_path)[0]

                def answer(lm, tokenizer, examples, shots, data, config, writer, make_record, desc):
                    return answer_with_feedback(lm, critic, tokenizer, examples, shots, data, config, answering.rounds,
                                                answering.review_tokens, writer, make_record, desc)

                speed = shard.answer(answer, lm, tokenizer, examples, shots, data, generate, writer, revised, desc=desc)
            else:
                speed = shard.answer(answer_questions, lm, tokenizer, examples, shots, data, generate, writer, score,
                                     desc=desc)
    metrics = metrics_for(examples, read_records(layout.predictions(system, split), Prediction), eval)
    metrics["system"], metrics["split"] = system, split
    metrics_file = layout.metrics(system, split)
    if speed is None and metrics_file.exists():  # finished earlier: keep that run's speed
        speed = json.loads(metrics_file.read_text(encoding="utf-8")).get("generation")
    metrics["generation"] = speed
    if shard.is_main:
        write_json(metrics_file, metrics)
    return metrics


def other_base_model(adapter: Path, model: ModelConfig) -> str | None:
    """What to say where `adapter` was trained on another model.name than the one it answers on here (its saved
    train config says; an adapter of the user's own without one says nothing). PEFT loads it onto any model whose
    layers have its sizes, so a base model for its Instruct version, or another model of one family, answer
    without a word."""
    try:  # a training's config.yaml; an adapter of the user's own may hold any file of that name, or none
        section = read_yaml(adapter / CONFIG).get("model") if (adapter / CONFIG).exists() else None
    except (ConfigError, OSError):
        return None
    trained = section.get("name") if isinstance(section, dict) else None
    if trained is None or trained == model.name:
        return None
    return (f"was trained on model.name={trained} and answers on model.name={model.name} (a stage command reads "
            "--config, else the run directory's config.yaml)")


def older_adapter_answers(layout: RunLayout, system: str, split: str, model: ModelConfig) -> bool:
    """Whether the evaluation there, made with `model`, answered with an adapter as an older laffi applied it
    (models.ADAPTER_ANSWERING): its answers are not this laffi's. `laffi evaluate` refuses them (save_config); an
    experiment redoes them."""
    path = layout.eval_config(system, split)
    if not path.exists():
        return False
    described = read_yaml(path).get("system") or {}
    return bool(described.get("adapter")) and not answered_as_now(described, model)


def evaluate_system(layout: RunLayout, system: System, model: ModelConfig, data: DataConfig,
                    generate: GenerateConfig, eval: EvalConfig) -> dict:
    """`evaluate` with the adapter a system answers with and its answering procedure; its adapter (and
    a reviewer's) must be trained already."""
    def adapter(name: str | None):
        return layout.adapter(name) if name else None

    return evaluate(layout, system.name, model, data, generate, eval, adapter=adapter(system.adapter),
                    answering=system.answer, reviewer=adapter(system.reviewer))
