"""The LLM annotator against a misbehaving server: retries, the reply cache, failures recorded.

The server (tests/support/fault_server.py) injects 429, 500, 400, garbage, HTML, slow and unparseable
replies; the real-server path is tested against llama.cpp in test_llama_server.py.
"""

import json

import pytest
from support.fault_server import FaultServer

from laffi.annotators.template import TEMPLATES, ReplyError, load_template
from laffi.config import ConfigError, DataConfig, load_config, save_config
from laffi.experiments.run import run
from laffi.layout import RunLayout, failures_file, summary_file
from laffi.records import AnnotationFailure, Answer, Feedback, QAExample, read_records, write_records
from laffi.stages.annotate import annotate, check_annotator


def make_run(run_dir, n: int) -> list[str]:
    """A run directory with n train questions and the model's answers: all the annotate stage reads."""
    layout = RunLayout(run_dir)
    examples = [QAExample(f"q{i}", "T", f"Passage number {i} says the answer is a{i}.", f"q{i}?", [f"a{i}"])
                for i in range(n)]
    save_config(layout.data_config, {"data": DataConfig()})  # what `laffi prepare` writes first
    write_records(layout.train_examples, examples)
    write_records(layout.answers, [Answer(e.id, f"a{i}" if i % 2 else "wrong", "raw", "m")
                                   for i, e in enumerate(examples)])
    return [e.id for e in examples]


def llm_config(url: str, cache, **options):
    overrides = {"annotator": "llm", "base_url": url, "model": "fault", "cache_dir": str(cache), "concurrency": 4,
                 "timeout": 0.5, "retries": 3, "backoff": 0.01, "parse_retries": 1, **options}
    return load_config(overrides=[f"annotate.{k}={v}" for k, v in overrides.items()]).annotate


# What each request for an item gets, by the number of requests for it before (later ones: "ok").
FAULTS = {"q0": ["429"], "q1": ["500", "500"], "q2": ["garbage"], "q3": ["html"], "q4": ["slow"],
          "q5": ["unparseable"] * 9, "q6": ["500"] * 9, "q7": ["400"] * 9, "q8": ["429", "500", "garbage"]}
EXPECTED_REQUESTS = {"q0": 2, "q1": 3, "q2": 2, "q3": 2, "q4": 2, "q5": 2, "q6": 4, "q7": 1, "q8": 4}


def script(item: str, n: int) -> str:
    faults = FAULTS.get(item, [])
    return faults[n] if n < len(faults) else "ok"


def test_faults_are_retried_cached_and_failures_recorded(tmp_path):
    ids = make_run(tmp_path / "run", 12)
    with FaultServer(script, slow_seconds=1.5) as server:
        config = llm_config(server.url, tmp_path / "cache")
        feedback = annotate(RunLayout(tmp_path / "run"), config)

        assert {f.id for f in feedback} == set(ids) - {"q5", "q6", "q7"}
        assert all(f.verdict == "correct" and f.source == "ai" and f.annotator == "llm:fault:feedback-v1"
                   for f in feedback)
        layout = RunLayout(tmp_path / "run")
        failed = {f.id: f for f in read_records(failures_file(layout.feedback), AnnotationFailure)}
        assert set(failed) == {"q5", "q6", "q7"}  # nothing lost: every answer has feedback or a failure
        assert failed["q5"].reason == "unparseable" and "more or less" in failed["q5"].error
        assert failed["q6"].reason == "request" and "500" in failed["q6"].error and failed["q6"].attempts == 4
        assert failed["q7"].reason == "request" and "400" in failed["q7"].error and failed["q7"].attempts == 1
        expected = {i: EXPECTED_REQUESTS.get(i, 1) for i in ids}
        assert dict(server.requests) == expected
        summary = json.loads(summary_file(layout.feedback).read_text())
        assert summary["requests"] == sum(expected.values())
        assert summary["retries"] == sum(expected.values()) - len(ids) - 1  # q5's re-ask is not a retry
        assert summary["reasks"] == 1
        assert summary["errors"] == {"400": 1, "429": 2, "500": 7, "malformed": 3, "timeout": 1}
        assert summary["feedback"] == 9 and summary["failed_unparseable"] == 1 and summary["failed_request"] == 2
        assert summary["prompt_tokens"] == 100 * (9 + 2)  # every delivered completion, q5's two included
        assert summary["cache_hits"] == 0

        # Rerun: answers with feedback are skipped, q5's replies come from the cache, and only the
        # request failures (q6, q7) are asked again. The server now answers q6.
        FAULTS["q6"] = []
        before = server.requests.copy()
        annotate(RunLayout(tmp_path / "run"), config)
        assert server.requests - before == {"q6": 1, "q7": 1}
        failed = read_records(failures_file(layout.feedback), AnnotationFailure)
        assert sorted(f.id for f in failed) == ["q5", "q7"]
        feedback = read_records(layout.feedback, Feedback)
        assert len(feedback) == len({f.id for f in feedback}) == 10

        # A new run directory on the same answers: every reply already paid for comes from the cache.
        make_run(tmp_path / "copy", 12)
        before = server.requests.copy()
        annotate(RunLayout(tmp_path / "copy"), config)
        assert server.requests - before == {"q7": 1}
        assert json.loads(summary_file(RunLayout(tmp_path / "copy").feedback).read_text())["cache_hits"] == 11 + 1  # q5: two replies
    FAULTS["q6"] = ["500"] * 9


def test_build_skips_failed_answers_and_says_so(tmp_path, capsys):
    from laffi.layout import RunLayout
    from laffi.stages.build import build

    ids = make_run(tmp_path, 6)
    layout = RunLayout(tmp_path)
    write_records(layout.shots, [QAExample(f"s{i}", f"S{i}", "Shot passage.", "Shot?", ["x"]) for i in range(3)])
    with FaultServer(lambda item, n: "400" if item == "q2" else "ok") as server:
        annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache"))
    sets = build(RunLayout(tmp_path), load_config(overrides=["data.num_shots=1"]).data)
    assert [e.id for e in sets["laffi"]] == [i for i in ids if i != "q2"]
    assert "1 answers have no feedback because their annotation failed" in capsys.readouterr().out


def test_reference_free_prompt_leaves_out_the_golds():
    template = load_template("feedback-v1")
    example = QAExample("q1", "T", "Paris is the capital of France.", "What is the capital?", ["Paris", "Paris "])
    answer = Answer("q1", "Lyon", "Lyon", "m")
    with_golds = template.render(example, answer, reference_free=False)[-1]["content"]
    without = template.render(example, answer, reference_free=True)[-1]["content"]
    assert 'Reference answers (each of them is right): "Paris"\n' in with_golds
    assert '"Lyon"' in with_golds and '"Lyon"' in without and "Paris is the capital" in without
    assert "Reference answers" not in without


def test_few_shot_examples_are_earlier_chat_turns(tmp_path):
    from laffi.annotators.template import TemplateError

    template = load_template("feedback-fewshot-v1")
    example = QAExample("q1", "T", "Paris is the capital of France.", "What is the capital?", ["Paris"])
    messages = template.render(example, Answer("q1", "", "", "m"), reference_free=False)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert all(template.parse(m["content"]) for m in messages if m["role"] == "assistant")
    assert messages[-1]["content"].endswith('Reference answer: "Paris"\nAnswer to check: (no answer)')
    free = template.render(example, Answer("q1", "", "", "m"), reference_free=True)
    assert not any("Reference answer" in m["content"] for m in free)

    bad = tmp_path / "bad.yaml"  # a template whose own example reply it cannot parse is refused
    bad.write_text(template.path.read_text().replace("Verdict: correct\n", "Verdict: fine\n"))
    with pytest.raises(TemplateError, match=r"shots\[0\]\.reply"):
        load_template(str(bad))


@pytest.mark.parametrize("text, message", [
    ("version: 1\nuser: 'x'\nreply: [unclosed\n", r"bad\.yaml:\d+:\d+: not valid YAML: expected"),
    ("version: 1\nuser: 'x'\nreply: 'Verdict: (.*)'\n", "reply must be a mapping"),
    ("version: 1\nuser: 'x'\nreply: {verdict: 3, feedback: '(.*)'}\n", "reply.verdict must be a regular expression"),
    # a misspelt placeholder: refused on load, before any work, and in the part that has it
    ("version: 1\nuser: '{{ context }}'\nreply: {verdict: '(.*)', feedback: '(.*)'}\n", "user: 'context' is undefined"),
    ("version: 1\nsystem: '{{ golds[0] }}'\nuser: 'x'\nreply: {verdict: '(.*)', feedback: '(.*)'}\n",
     "system: list object has no element 0"),  # reference-free rendering has no golds
    ("version: 1\nuser: '{{ answer + 1 }}'\nreply: {verdict: '(.*)', feedback: '(.*)'}\n", "user: can only concatenate"),
    ("version: 1\nuser: [1]\nreply: {verdict: '(.*)', feedback: '(.*)'}\n", "user must be text"),
    ("version: 1\nuser: 'x'\nshots: 3\nreply: {verdict: '(.*)', feedback: '(.*)'}\n", "shots must be a list"),
])
def test_a_broken_template_file_is_named_with_what_is_wrong(tmp_path, text, message):
    from laffi.annotators.template import TemplateError

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(TemplateError, match=message):
        load_template(str(bad))


@pytest.mark.parametrize("version, reply, parsed", [
    ("v1", "Verdict: Partially correct\nFeedback: It misses a word.", ("partially correct", "It misses a word.", None)),
    ("v1", "**Verdict:** incorrect\n**Feedback:** Wrong span. The answer is Paris.",
     ("incorrect", "Wrong span. The answer is Paris.", None)),
    ("v1", "Verdict: <correct, partially correct or incorrect>\nFeedback: <two or three sentences>", None),
    ("v1", "The answer is correct.", None),
    ("v1", "Verdict: correct\nFeedback:", None),
    ("v2", 'Verdict: incorrect\nFeedback: Wrong span. The right answer is Paris.\nRight answer: "Paris"',
     ("incorrect", "Wrong span. The right answer is Paris.", "Paris")),
    ("v2", "**Verdict:** correct\n**Feedback:** Right.\n**Right answer:** Lyon", ("correct", "Right.", "Lyon")),
    ("v2", "Verdict: correct\nFeedback: Right.", ("correct", "Right.", None)),  # a correct answer names itself
    ("v2", "Verdict: incorrect\nFeedback: Wrong.", None),  # asked for, and missing
])
def test_reply_parser(version, reply, parsed):
    template = load_template(f"feedback-{version}")
    if parsed is None:
        with pytest.raises(ReplyError):
            template.parse(reply)
    else:
        assert template.parse(reply) == parsed


def test_the_right_answer_an_llm_names_becomes_the_revised_answer_of_a_refine_set(tmp_path):
    from laffi.prompts import read_review
    from laffi.records import TrainingExample

    from laffi.stages.build import build
    from laffi.systems import load_systems

    ids = make_run(tmp_path, 4)  # q0 and q2 answered "wrong", q1 and q3 right
    layout = RunLayout(tmp_path)
    write_records(layout.shots, [QAExample(f"s{i}", f"S{i}", "Shot passage.", "Shot?", ["x"]) for i in range(3)])

    def reply(item):
        if int(item[1:]) % 2:
            return f"Verdict: correct\nFeedback: Right.\nRight answer: a{item[1:]}"
        return f'Verdict: incorrect\nFeedback: Wrong span; the passage says a{item[1:]}.\nRight answer: "a{item[1:]}"'

    with FaultServer(lambda item, n: "ok", reply=reply) as server:
        feedback = annotate(layout, llm_config(server.url, tmp_path / "cache", template="feedback-v2"))
    assert {f.id: f.corrected_answer for f in feedback} == {"q0": "a0", "q1": None, "q2": "a2", "q3": None}
    build(layout, load_config(overrides=["data.num_shots=1"]).data, load_systems(["sft", "laffi", "laffi-refine"]))
    rows = read_records(layout.training_set("laffi-refine"), TrainingExample)
    assert [read_review(r.completion[0]["content"]) for r in rows] == [
        ("incorrect", "a0"), ("correct", "a1"), ("incorrect", "a2"), ("correct", "a3")]
    assert [r.id for r in rows] == ids


def test_llm_options_are_checked_up_front(tmp_path):
    with pytest.raises(ConfigError, match="annotate.model: required"):
        load_config(overrides=["annotate.annotator=llm"])
    missing = load_config(overrides=["annotate.annotator=llm", "annotate.model=x",
                                     f"annotate.template={tmp_path}/no.yaml"])
    with pytest.raises(ConfigError, match="annotate.template"):
        check_annotator(missing.annotate)
    with pytest.raises(ConfigError, match="annotate.template"):  # `laffi run` checks it before any work
        run(missing, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="annotate.concurrency"):
        load_config(overrides=["annotate.annotator=llm", "annotate.model=x", "annotate.concurrency=0"])
    with pytest.raises(ConfigError, match="generate.base_url"):
        load_config(overrides=["generate.backend=openai"])


def test_a_changed_prompt_is_refused_on_resume_but_operational_options_are_not(tmp_path):
    make_run(tmp_path, 2)
    with FaultServer(lambda item, n: "ok") as server:
        annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache"))
        annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache", concurrency=1, timeout=5))
        with pytest.raises(ConfigError, match="annotate.reference_free"):
            annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache", reference_free=True))


def test_a_template_edited_in_place_under_a_new_version_is_refused_on_resume(tmp_path):
    # the saved settings name the template by its path; the feedback's annotator names its version
    make_run(tmp_path, 2)
    mine = tmp_path / "mine.yaml"
    mine.write_text((TEMPLATES / "feedback-v1.yaml").read_text())
    with FaultServer(lambda item, n: "ok") as server:
        annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache", template=str(mine)))
        mine.write_text(mine.read_text().replace("version: feedback-v1", "version: mine-v2"))
        with pytest.raises(ValueError, match="written by llm:fault:feedback-v1, and this annotator is "
                                             "llm:fault:mine-v2"):
            annotate(RunLayout(tmp_path), llm_config(server.url, tmp_path / "cache", template=str(mine)))


def test_local_transformers_annotator_records_unreadable_replies_and_caches_them(tmp_path, tiny_model_dir):
    # A randomly initialised model writes no verdict: every answer must end up as a recorded failure.
    make_run(tmp_path, 3)
    overrides = {"annotator": "llm", "backend": "transformers", "model": str(tiny_model_dir), "max_tokens": 6,
                 "parse_retries": 1, "concurrency": 2, "cache_dir": str(tmp_path / "cache")}
    config = load_config(overrides=[f"annotate.{k}={v}" for k, v in overrides.items()]).annotate
    with pytest.raises(ValueError, match="no answer got feedback; all 3 failed .* no verdict"):  # nothing to build on
        annotate(RunLayout(tmp_path), config)
    layout = RunLayout(tmp_path)
    assert read_records(layout.feedback, Feedback) == []
    failed = read_records(failures_file(layout.feedback), AnnotationFailure)
    assert sorted(f.id for f in failed) == ["q0", "q1", "q2"]
    assert all(f.reason == "unparseable" and f.attempts == 2 for f in failed)
    summary = json.loads(summary_file(layout.feedback).read_text())
    assert summary["backend"] == f"transformers:{tiny_model_dir}"
    assert summary["requests"] == 6 and summary["completion_tokens"] > 0

    with pytest.raises(ValueError, match="no answer got feedback"):  # a rerun retries the failures, but the cache
        annotate(RunLayout(tmp_path), config)                           # already has every reply
    summary = json.loads(summary_file(layout.feedback).read_text())
    assert summary["requests"] == 0 and summary["cache_hits"] == 6


def test_runs_made_before_the_new_options_still_resume(tmp_path):
    # a sidecar written before generate.backend & co. existed: their defaults change nothing
    old = load_config().generate
    (tmp_path / "answers.config.yaml").write_text(
        f"generate:\n  batch_size: {old.batch_size}\n  max_new_tokens: {old.max_new_tokens}\n"
        f"  stop_at_newline: {str(old.stop_at_newline).lower()}\n")
    save_config(tmp_path / "answers.config.yaml", {"generate": old})
    with pytest.raises(ConfigError, match="generate.backend"):
        save_config(tmp_path / "answers.config.yaml",
                     {"generate": load_config(overrides=["generate.backend=openai", "generate.base_url=http://x"]).generate})


@pytest.mark.parametrize("takes_ids, refusal, extra_tokens, exact", [
    (True, 0, 0, True), (False, 422, 0, True), (False, 500, 0, True), (False, 500, 1, True), (False, 500, 1, False)])
def test_openai_generation_sends_the_same_prompt_tokens(tiny_model_dir, takes_ids, refusal, extra_tokens, exact):
    from transformers import AutoTokenizer

    from laffi.backends.openai_backend import OpenAIGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = {f"q{i}": tokenizer(f"<|im_start|>user\nQuestion {i}?<|im_end|>\n", add_special_tokens=False)["input_ids"]
               for i in range(3)}
    seen = []

    def completions(body):
        prompt = body["prompt"]
        seen.append(prompt)
        assert body["temperature"] == 0 and body["repeat_penalty"] == 1.0  # plain greedy, as in-process
        if isinstance(prompt, list) and not takes_ids:
            return refusal, {"detail": "Input should be a valid string"}  # llama-cpp-python's server: 500
        count = len(prompt) if isinstance(prompt, list) else len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": " Paris\n", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": count + extra_tokens, "completion_tokens": 2, "total_tokens": 0}}

    with FaultServer(lambda item, n: "ok", completions=completions) as server:
        config = load_config(overrides=["generate.backend=openai", f"generate.base_url={server.url}",
                                        f"generate.exact_prompts={exact}"])
        generator = OpenAIGenerator.from_config(config.model, config.generate, tokenizer)
        batches = generator.greedy_batches(prompts, 2, 8, ["\n"])
        if extra_tokens and exact:
            with pytest.raises(ConfigError, match="did not answer the same prompt"):
                list(batches)
            return
        generations = [g for batch in batches for g in batch]
    assert sorted(generator.mismatched) == (sorted(prompts) if extra_tokens else [])
    assert sorted(g.id for g in generations) == sorted(prompts) and all(g.text == " Paris\n" for g in generations)
    assert isinstance(seen[0], list) and len(seen[0]) == 1  # a one-token probe first
    assert generator.token_ids is takes_ids
    assert all(isinstance(p, list) == takes_ids for p in seen[1:])
    assert len(seen) == 1 + len(prompts)  # a refused probe is not retried
    if not takes_ids:
        texts = [p for p in seen if isinstance(p, str)]
        assert sorted(tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts) == sorted(prompts.values())


def test_a_missing_api_key_is_named_and_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    from laffi.cli import main

    make_run(tmp_path, 1)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["annotate", str(tmp_path), "--annotator", "llm", "--model", "gpt-4o"]) == 2
    assert "annotate.api_key_env: set OPENAI_API_KEY" in capsys.readouterr().err
    assert not list(tmp_path.glob("feedback*"))


@pytest.mark.parametrize("name", sorted(p.stem for p in TEMPLATES.glob("*.yaml")))
def test_every_packaged_template_loads_under_its_own_version(name):
    assert load_template(name).version == name  # the version keys the cache and names the annotator


def test_a_cached_reply_of_another_shape_is_asked_again(tmp_path):
    from laffi.annotators.llm import LLMAnnotator
    from laffi.backends.chat import Reply
    from laffi.config import AnnotateConfig

    asked = []

    class Backend:
        name = "fake"

        def complete_many(self, requests):
            for j, _ in enumerate(requests):
                asked.append(j)
                yield j, Reply("Verdict: correct\nFeedback: It is the answer.", 10, 5)

    config = AnnotateConfig("llm", model="m", cache_dir=str(tmp_path / "cache"))
    pair = (QAExample("q1", "T", "Paris is the capital.", "Capital?", ["Paris"]), Answer("q1", "Paris", "Paris", "m"))
    first, = LLMAnnotator(config, backend=Backend()).annotate([pair])
    for path in (tmp_path / "cache").rglob("*.json"):  # as another version might have stored its replies
        path.write_text(json.dumps({"request": {}, "reply": {"content": "Verdict: correct"}}))
    again, = LLMAnnotator(config, backend=Backend()).annotate([pair])
    assert len(asked) == 2 and again == first


def test_a_local_annotator_model_that_is_not_there_is_named_as_annotate_model(tmp_path):
    from laffi.backends.local_chat import LocalChat

    with pytest.raises(FileNotFoundError, match=f"^annotate.model: {tmp_path / 'nothing'} does not exist"):
        LocalChat(str(tmp_path / "nothing"), 1)._load()
    with pytest.raises(FileNotFoundError, match=f"^annotate.model: {tmp_path} is a folder without a model"):
        LocalChat(str(tmp_path), 1)._load()
