"""The LLM annotator on several answers per question (generate.samples): one Feedback (or one
AnnotationFailure) per (question, sample) answer, each carrying its sample; a sampled answer that
repeats another is asked once; a stopped run resumes without paying twice or writing twice.

    python -m pytest tests/annotators/test_llm_samples.py
"""

from support.fault_server import FaultServer
from test_llm_annotator import llm_config, make_run

from laffi.layout import RunLayout, failures_file
from laffi.records import AnnotationFailure, Answer, Feedback, read_records, record_key, write_records
from laffi.stages.annotate import annotate

K = 3


def test_each_answer_gets_its_own_feedback_and_a_stopped_run_resumes(tmp_path):
    ids = make_run(tmp_path / "run", 4)
    layout = RunLayout(tmp_path / "run")
    # samples 0 and 2 give the same wrong answer, sample 1 the right one: two distinct answers a question
    write_records(layout.answers, [Answer(qid, f"a{i}" if s == 1 else "wrong", "raw", "m", s)
                                   for i, qid in enumerate(ids) for s in range(K)])
    script = lambda item, n: "400" if item == "q1" else "ok"  # noqa: E731 - q1's requests fail for good
    with FaultServer(script) as server:
        config = llm_config(server.url, tmp_path / "cache")
        feedback = annotate(layout, config)
        assert sorted(record_key(f) for f in feedback) == [(q, s) for q in ids if q != "q1" for s in range(K)]
        assert all(f.answer == ("wrong" if f.sample != 1 else f"a{ids.index(f.id)}") for f in feedback)
        assert dict(server.requests) == {q: 2 for q in ids}  # the repeated answer was asked once
        failed = read_records(failures_file(layout.feedback), AnnotationFailure)
        assert sorted((f.id, f.sample) for f in failed) == [("q1", s) for s in range(K)]

        # stopped after a few records, the last one torn: the rerun takes the rest from the cache
        lines = layout.feedback.read_text().splitlines(keepends=True)
        layout.feedback.write_text("".join(lines[:4]) + lines[4][:20])
        before = server.requests.copy()
        resumed = annotate(layout, config)
        assert server.requests - before == {"q1": 2}  # only the failures are asked again
        assert resumed == feedback and len({record_key(f) for f in resumed}) == len(resumed)
    assert len(read_records(layout.feedback, Feedback)) == (len(ids) - 1) * K
