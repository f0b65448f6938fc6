"""Against a real OpenAI-compatible server process: llama.cpp's (`llama-cpp-python[server]`, which
`make test` installs) serving the embedded SmolLM2 GGUF on 127.0.0.1. The model answers train
questions through generate.backend=openai, then annotates its own answers as the LLM annotator
(with the few-shot template: the 135M model does not keep feedback-v1's format).
"""

import importlib.util
import json
import os

import pytest
from support.llama_server import LlamaServer

from laffi.analysis.agreement import stats
from laffi.backends.answering import build_prompts
from laffi.backends.openai_backend import OpenAIGenerator
from laffi.config import load_config
from laffi.layout import RunLayout, failures_file, summary_file
from laffi.models import embedded_gguf, load_tokenizer
from laffi.prompts import extract_answer
from laffi.records import AnnotationFailure, Answer, Feedback, QAExample, read_records
from laffi.stages.annotate import annotate
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed; `make test` installs it (pip install -e '.[llamacpp]')")
        pytest.skip("llama-cpp-python[server] is not installed: pip install -e '.[llamacpp]'")
    with LlamaServer(embedded_gguf(), alias="smollm2") as running:
        yield running


@pytest.fixture
def run_config(server, tiny_model_dir, tmp_path):
    # model.name only provides the tokenizer here (the tiny model has the embedded model's); the
    # weights that answer are the server's
    overrides = [f"model.name={tiny_model_dir}", "model.prompt_format=plain", "data.train_size=4",
                 "data.eval_size=2", "generate.max_new_tokens=12", "generate.batch_size=2", "generate.backend=openai",
                 f"generate.base_url={server.url}", "generate.served_model=smollm2",
                 "annotate.annotator=llm", f"annotate.base_url={server.url}", "annotate.model=smollm2",
                 "annotate.template=feedback-fewshot-v1", "annotate.max_tokens=60", "annotate.parse_retries=1",
                 "annotate.concurrency=2", f"annotate.cache_dir={tmp_path / 'cache'}"]
    return load_config(overrides=overrides)


def test_the_server_gets_exactly_the_in_process_prompt_tokens(run_config, tmp_path):
    prepare(RunLayout(tmp_path), run_config.data)
    layout = RunLayout(tmp_path)
    examples = read_records(layout.train_examples, QAExample)[:3]
    prompts = build_prompts(load_tokenizer(run_config.model), examples, read_records(layout.shots, QAExample),
                            run_config.data)
    generator = OpenAIGenerator.from_config(run_config.model, run_config.generate, load_tokenizer(run_config.model))
    generations = [g for batch in generator.greedy_batches(prompts, 3, 8, ["\n"]) for g in batch]
    assert sorted(g.id for g in generations) == sorted(prompts)
    # llama-cpp-python's server takes text prompts only; the text it got made exactly our tokens:
    # no BOS added, no special token read as plain text
    assert generator.token_ids is False
    assert generator.client.counters.prompt_tokens == sum(len(ids) for ids in prompts.values())
    assert generator.client.counters.completion_tokens == sum(g.new_tokens for g in generations) > 0


def test_generate_then_annotate_through_the_server(run_config, tmp_path):
    prepare(RunLayout(tmp_path), run_config.data)
    layout = RunLayout(tmp_path)
    answers = generate(RunLayout(tmp_path), run_config.model, run_config.data, run_config.generate)
    questions = read_records(layout.train_examples, QAExample)
    assert sorted(a.id for a in answers) == sorted(e.id for e in questions)
    assert all(a.model == run_config.model.name and a.prediction == extract_answer(a.output) for a in answers)
    assert sum(bool(a.prediction) for a in answers) >= len(answers) // 2  # a real model answered

    annotate(RunLayout(tmp_path), load_config(overrides=[]).annotate)  # the reference annotator, for comparison
    llm = annotate(RunLayout(tmp_path), run_config.annotate, out="feedback-llm.jsonl")
    failed = read_records(failures_file(tmp_path / "feedback-llm.jsonl"), AnnotationFailure) \
        if failures_file(tmp_path / "feedback-llm.jsonl").exists() else []
    assert sorted([f.id for f in llm] + [f.id for f in failed]) == sorted(a.id for a in answers)  # none lost
    assert llm and all(f.annotator == "llm:smollm2:feedback-fewshot-v1" and f.text for f in llm)
    summary = json.loads(summary_file(tmp_path / "feedback-llm.jsonl").read_text())
    assert summary["requests"] >= len(answers) and summary["completion_tokens"] > 0
    assert summary["feedback"] == len(llm) and summary["errors"] == {}

    result = stats(tmp_path)
    pair = next(p for p in result["pairs"] if {p["a"], p["b"]} == {"reference", "llm:smollm2:feedback-fewshot-v1"})
    assert pair["answers"] == len(llm)

    # Annotating again, into another file: every reply comes from the cache, nothing is sent.
    again = annotate(RunLayout(tmp_path), run_config.annotate, out="feedback-llm-again.jsonl")
    assert [(f.id, f.verdict, f.text) for f in again] == [(f.id, f.verdict, f.text) for f in llm]
    summary = json.loads(summary_file(tmp_path / "feedback-llm-again.jsonl").read_text())
    assert summary["requests"] == 0 and summary["cache_hits"] >= len(answers)
    assert read_records(tmp_path / "feedback-llm-again.jsonl", Feedback) == again
    assert read_records(layout.answers, Answer) == answers
