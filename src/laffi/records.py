"""Record types of a laffi run and their JSONL files.

Every record file (JSONL) a stage writes holds one of these dataclasses. Files are checked
against the dataclass on load, so a stage never works on a malformed record; errors name the
file and the line.

Appending is crash-safe: a stage appends records as it finishes them, and on restart
`RecordWriter` drops a torn last line (a crash mid-write) and reports which records are done
(by `record_key`), so the stage continues without losing or repeating a record.

A question can have several answers (`generate.samples`): an Answer, the Feedback on it and an
AnnotationFailure carry `sample` (0: the greedy answer, 1..K-1: sampled ones), and such a record is
(question id, sample), never the question id alone. Files written before samples existed have no
`sample` field, and their records load as sample 0.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar

import pydantic

VERDICTS = ("correct", "partially correct", "incorrect")
SOURCES = ("human", "ai")

Verdict = Literal["correct", "partially correct", "incorrect"]
Source = Literal["human", "ai"]


@dataclass(frozen=True)
class QAExample:
    """One extractive question: `answers` are gold spans; empty when `is_impossible`."""

    id: str
    title: str
    context: str
    question: str
    answers: list[str]
    is_impossible: bool = False

    def __post_init__(self) -> None:
        if not self.is_impossible and not self.answers:
            raise ValueError(f"question {self.id!r} has no gold answer and is not marked impossible")


@dataclass(frozen=True)
class Answer:
    """What a model answered to one question (`id` is the question id; `sample`: which of its answers)."""

    id: str
    prediction: str  # the short answer extracted from `output`
    output: str  # the raw generated text
    model: str
    sample: int = 0  # 0: the greedy answer; 1..K-1: answers sampled at generate.temperature


@dataclass(frozen=True)
class Feedback:
    """Natural-language feedback on one answer, from a person or an AI annotator."""

    id: str  # the question id
    answer: str  # the answer the feedback is about
    verdict: Verdict
    text: str
    source: Source
    annotator: str  # which person, or which annotator config
    corrected_answer: str | None = None
    # The text in its parts, in order, when the annotator composes it (the reference annotator):
    # verdict, diagnosis, evidence, answer. `laffi ablate` trains on chosen parts (laffi.annotators.content);
    # None for free text (people, the LLM annotator).
    parts: dict[str, str] | None = None
    sample: int = 0  # which of the question's answers it is about (Answer.sample)
    # when a person submitted it in the annotation app (seconds since the epoch), kept through export and
    # import; None for annotators' feedback
    submitted_at: float | None = None

    def __post_init__(self) -> None:
        if self.parts is not None and " ".join(p for p in self.parts.values() if p) != self.text:
            raise ValueError(f"feedback on {self.id!r}: its parts do not join into its text")


@dataclass(frozen=True)
class AnnotationFailure:
    """An answer an annotator could not give feedback on (feedback.failed.jsonl): it has no Feedback,
    later stages skip it and say how many they skipped, and rerunning `laffi annotate` retries it."""

    id: str  # the question id
    answer: str
    annotator: str
    reason: Literal["unparseable", "request"]  # no usable reply, or the request itself failed
    error: str  # what went wrong, with the last reply for "unparseable"
    attempts: int
    sample: int = 0  # which of the question's answers (Answer.sample)


@dataclass(frozen=True)
class TrainingExample:
    """A conversational prompt/completion pair, the format TRL and `datasets` read as is.

    `id` is the question id, which is what joins a question's examples across sets (its auxiliary
    examples and preference pairs train beside its own example); `sample` says which of the question's
    answers a feedback example is made from, so (id, sample) names one example of a set."""

    id: str
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    sample: int = 0


@dataclass(frozen=True)
class PreferencePair:
    """A conversational preference pair, TRL's prompt/chosen/rejected format: for one question the QA
    prompt, the gold answer (chosen) and the model's own answer (rejected), which the annotator judged
    `verdict` (never "correct": such a question gives no pair)."""

    id: str  # the question id
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    verdict: Verdict
    sample: int = 0  # the answer (Answer.sample) that is the rejected completion

    def __post_init__(self) -> None:
        if self.verdict == "correct":
            raise ValueError(f"pair {self.id!r}: an answer judged correct is not a rejected answer")
        if self.chosen == self.rejected:
            raise ValueError(f"pair {self.id!r}: chosen and rejected are the same completion")


@dataclass(frozen=True)
class LabelledAnswer:
    """One of the model's own answers with its verdict, TRL's unpaired (KTO) format: the QA prompt, the answer
    as the completion, and whether the annotator judged it correct (desirable) or incorrect or partially
    correct (undesirable)."""

    id: str  # the question id
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    verdict: Verdict
    sample: int = 0  # the answer (Answer.sample) that is the completion

    @property
    def desirable(self) -> bool:
        return self.verdict == "correct"


@dataclass(frozen=True)
class Review:
    """One round of feedback-guided answering: the feedback a model predicted on an answer, and the
    verdict and revised answer read from its fields (None where it did not write them)."""

    answer: str
    feedback: str
    verdict: str | None
    revised: str | None


@dataclass(frozen=True)
class Prediction:
    """A held-out answer with its SQuAD scores (0/1 exact match, token F1 in [0, 1])."""

    id: str
    prediction: str
    output: str  # the generated text of the first answer
    exact: float
    f1: float
    reviews: list[Review] | None = None  # feedback-guided answering: each round, in order


@dataclass(frozen=True)
class TrainLogEntry:
    step: int
    loss: float
    lr: float
    tokens_per_s: float
    completion_tokens_per_s: float
    elapsed_s: float
    grad_norm: float | None = None  # before clipping, over all processes (None if the engine reports none)
    dev_exact: float | None = None  # train.eval_every: EM and F1 (percent) on the dev questions after this step
    dev_f1: float | None = None
    # train.preference: the step's mean DPO loss over its pairs (unweighted), and the mean reward margin;
    # with loss kto, the mean KTO loss over its labelled answers (weighted) and their mean signed reward
    # beta x (policy/reference log-ratio of the chosen - that of the rejected); None: no pairs in the step
    preference_loss: float | None = None
    reward_margin: float | None = None


class RecordError(ValueError):
    """A record that does not match its schema, with the file and line it came from."""


R = TypeVar("R")
Key = tuple[str, int]


def record_key(record: Any) -> Key:
    """What names one record of a file, the one definition of it: (question id, sample). Records of one
    answer per question (QAExample, Prediction, ...) have no sample, and count as sample 0."""
    return record.id, getattr(record, "sample", 0)


def answer_name(key: Key) -> str:
    """A record key as one string, for messages and for places that need one (the annotation app's item
    ids): the question id for the greedy answer, so names from before samples existed stay as they were;
    "ID#sN" for sample N."""
    question_id, sample = key
    return question_id if sample == 0 else f"{question_id}#s{sample}"


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    # strict: no "1" for a number, no true for an int; extra fields are errors, not dropped
    cls.__pydantic_config__ = pydantic.ConfigDict(extra="forbid")
    return pydantic.TypeAdapter(cls)


def _problem(error: pydantic.ValidationError, cls: type) -> str:
    """The first thing wrong with a record, named by its field, nested ones by their path:
    `field 'answers'[1]: Input should be ...`, `missing field 'reviews'[0]['verdict'] for Prediction`."""
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    path = repr(loc[0]) + "".join(f"[{part!r}]" for part in loc[1:]) if loc else ""
    where = f"field {path}" if loc else ""
    if first["type"] == "missing":
        return f"missing field {path} for {cls.__name__}"
    if first["type"] == "unexpected_keyword_argument":
        return f"unknown field {path} for {cls.__name__}"
    if first["type"] == "json_invalid":
        return f"not valid JSON ({first['ctx']['error']})"
    if first["type"] == "value_error":  # the record's own check (__post_init__), or a nested record's
        return f"{where}: {first['ctx']['error']}" if loc else str(first["ctx"]["error"])
    if first["type"] == "dataclass_type":
        return f"expected a JSON object for {cls.__name__}, got {first['input']!r:.80}"
    return f"{where} of {cls.__name__}: {first['msg']}, got {first['input']!r:.80}"


def parse_record(cls: type[R], line: str | bytes, where: str = "") -> R:
    """One JSON line as a `cls` record, every field checked against its type; errors name `where`."""
    try:
        json_once_each(line, where)
    except RecordError:
        raise
    except ValueError:  # not JSON: pydantic's parser below says where, as for every record
        pass
    try:
        return _adapter(cls).validate_json(line, strict=True)
    except pydantic.ValidationError as error:
        raise RecordError(f"{where + ': ' if where else ''}{_problem(error, cls)}") from None


def json_once_each(text: str | bytes, where: str = "") -> Any:
    """`json.loads`, but an object that gives a key twice is a RecordError naming `where`: JSON parsers keep the
    last value ({"verdict": "correct", ..., "verdict": "incorrect"} reads as incorrect), so a hand-edited line
    with one is refused rather than read one way."""
    def once_each(pairs: list[tuple[str, Any]]) -> dict:
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise RecordError(f"{where + ': ' if where else ''}field {key!r} given twice")
            seen.add(key)
        return dict(pairs)

    return json.loads(text, object_pairs_hook=once_each)


def from_dict(cls: type[R], data: Any, where: str = "") -> R:
    """Build `cls` from a decoded JSON object, checking field names and types."""
    return parse_record(cls, json.dumps(data), where)


# Fields added after files of their records were written, left out of a record while at their default:
# a run of one answer per question writes the bytes it wrote before (an experiment keys its trainings
# by the bytes of their sets), and readers take a missing field as the default.
LATER_FIELDS = {"sample": 0, "submitted_at": None}


def to_dict(record: Any) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(record).items()
            if not (key in LATER_FIELDS and value == LATER_FIELDS[key])}


def read_records(path: str | Path, cls: type[R]) -> list[R]:
    """Load a JSONL file of `cls` records; the error names the file and the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (has the stage that writes it run?)")
    try:
        with path.open(encoding="utf-8") as handle:
            return [parse_record(cls, line, f"{path}:{number}") for number, line in enumerate(handle, start=1)
                    if line.strip()]
    except UnicodeDecodeError as error:
        raise RecordError(f"{path}: not a text file in UTF-8 ({error.reason} at byte {error.start})") from None


def holds_something(paths: Iterable[str | Path]) -> bool:
    """Whether any of `paths` is a file with bytes in it or a folder with entries: an artifact begun."""
    return any(p.is_file() and p.stat().st_size > 0 or p.is_dir() and any(p.iterdir()) for p in map(Path, paths))


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file so that readers see the old file or the new one, never half of it (a temporary
    file of this process and thread, made durable, then renamed over the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes: what a saved config records of an input that a later step could rewrite
    (a training set, an adapter's weights), so output made from the old one is not taken as made from the new."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON, atomically (results.json, metrics.json, experiment.json, ...)."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_records(path: str | Path, records: Iterable[Any]) -> None:
    """Write a whole JSONL file atomically."""
    write_atomic(path, "".join(json.dumps(to_dict(record), ensure_ascii=False) + "\n" for record in records))


@dataclass
class RecordWriter:
    """Append records to a JSONL file that may hold the records of an interrupted run."""

    path: Path
    cls: type
    done_keys: set[Key] = field(default_factory=set)  # record_key of every record in the file

    @property
    def done_ids(self) -> set[str]:
        """The question ids with a record in the file (with samples: with at least one)."""
        return {question_id for question_id, _ in self.done_keys}

    def __enter__(self) -> "RecordWriter":
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._drop_torn_tail()
            self.done_keys = {record_key(r) for r in read_records(self.path, self.cls)}
        self._handle = self.path.open("a", encoding="utf-8")
        return self

    def _drop_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def write(self, records: Iterable[Any]) -> None:
        """Append a batch and make it durable before returning."""
        for record in records:
            if (key := record_key(record)) in self.done_keys:
                raise RecordError(f"{self.path}: record {answer_name(key)!r} written twice")
            self._handle.write(json.dumps(to_dict(record), ensure_ascii=False) + "\n")
            self.done_keys.add(key)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def __exit__(self, *exc: object) -> None:
        self._handle.close()
