"""SQuAD scoring: exact match and token F1 with the official v2.0 evaluation semantics.

`laffi evaluate` scores each held-out answer with `score_example` and reports `summarize` (the
official output keys, in percent) with error bars from laffi.analysis.bootstrap, which also
compares two systems on the same questions. `score_official` is a drop-in for the official
evaluate-v2.0.py (which also handles v1.1 data), so our numbers can be checked against published ones.
"""

from __future__ import annotations

import collections
import json
import re
import string
import sys
from pathlib import Path
from typing import Any, Sequence

from laffi.data import load_examples
from laffi.records import QAExample

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (the official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _golds(golds: Sequence[str]) -> list[str]:
    # As the official script: golds that normalise to nothing ("the", ".") are not answers, and
    # a question without any is unanswerable, where the only right answer is the empty string.
    return [g for g in golds if normalize_answer(g)] or [""]


def _f1(gold: str, prediction: str) -> float:
    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        # An abstention is right only against an abstention.
        return float(gold_tokens == pred_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def majority_answer(golds: Sequence[str]) -> str:
    """The gold most annotators gave; spellings that normalise alike ("the Broncos", "Broncos") count
    as one answer, reported in the first spelling given. Ties go to the first given; "" if none."""
    if not golds:
        return ""
    keys = [normalize_answer(g) for g in golds]
    best = max(dict.fromkeys(k for k in keys if k), key=keys.count, default=keys[0])  # first of equals
    return golds[keys.index(best)].strip()


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold, else 0.0; [] means unanswerable."""
    return max(float(normalize_answer(g) == normalize_answer(prediction)) for g in _golds(golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 against any gold, in [0, 1]; [] means unanswerable."""
    return max(_f1(g, prediction) for g in _golds(golds))


def score_example(example: QAExample, prediction: str) -> tuple[float, float]:
    """(exact, f1) of one prediction, each in [0, 1]."""
    golds = [] if example.is_impossible else example.answers
    return exact_match(prediction, golds), token_f1(prediction, golds)


def _summary(
    has_answer: Sequence[bool], exact: Sequence[float], f1: Sequence[float]
) -> dict[str, Any]:
    if not (len(has_answer) == len(exact) == len(f1)):
        raise ValueError(
            f"need one exact and one f1 score per question, got {len(has_answer)} questions, "
            f"{len(exact)} exact and {len(f1)} f1 scores"
        )
    if not has_answer:
        raise ValueError("no questions to summarise")

    def part(keep: Sequence[bool]) -> dict[str, Any]:
        total = sum(keep)
        return {
            "exact": 100.0 * sum(e for e, k in zip(exact, keep) if k) / total,
            "f1": 100.0 * sum(f for f, k in zip(f1, keep) if k) / total,
            "total": total,
        }

    out = collections.OrderedDict(part([True] * len(has_answer)))
    for prefix, keep in (("HasAns", list(has_answer)), ("NoAns", [not h for h in has_answer])):
        if any(keep):  # the official script adds a block only for a kind of question present
            out.update((f"{prefix}_{key}", value) for key, value in part(keep).items())
    return out


def summarize(
    examples: Sequence[QAExample], exact: Sequence[float], f1: Sequence[float]
) -> dict[str, Any]:
    """The official output: exact, f1 (percent), total, then HasAns_* and NoAns_* when present."""
    return _summary([not ex.is_impossible for ex in examples], exact, f1)


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file in UTF-8 ({error.reason} at byte {error.start})") from None


def _read_mapping(path: Path, what: str, ok: Any) -> dict[str, Any]:
    data = _load_json(path)
    if not isinstance(data, dict) or not all(ok(v) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object {{question id: {what}}}")
    return data


def _best_thresh(
    preds: dict[str, str],
    raw: dict[str, float],
    na_probs: dict[str, float],
    has_ans: dict[str, bool],
    total: int,
) -> tuple[float, float]:
    # Start from abstaining everywhere, then answer questions in order of rising na_prob; the
    # best running score gives the best threshold (official `find_best_thresh`).
    score = best = float(sum(not has_ans[qid] for qid in raw))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in raw:
            continue
        score += raw[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / total, best_thresh


def score_official(
    data_file: str | Path,
    pred_file: str | Path,
    na_prob_file: str | Path | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, Any]:
    """Score a {question id: answer} JSON file against an official SQuAD v1.1/v2.0 JSON file.

    Returns the official script's OrderedDict (exact, f1, total, HasAns_*, NoAns_*, and with an
    na_prob file best_exact, best_exact_thresh, best_f1, best_f1_thresh), in percent. A question
    without a prediction scores 0 and is reported on stderr.
    """
    data_file, pred_file = Path(data_file), Path(pred_file)
    questions = {e.id: e.answers for e in load_examples(str(data_file))}  # file order kept
    preds = _read_mapping(pred_file, "answer text", lambda v: isinstance(v, str))
    na_probs: dict[str, float] = {}
    if na_prob_file is not None:
        na_prob_file = Path(na_prob_file)
        na_probs = _read_mapping(
            na_prob_file,
            "no-answer probability",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        )
        lacking = [qid for qid in questions if qid in preds and qid not in na_probs]
        if lacking:
            raise ValueError(
                f"{na_prob_file}: no probability for {len(lacking)} question(s), e.g. {lacking[0]!r}"
            )

    # The official script decides answerability from the answers list, not from is_impossible.
    has_ans = {qid: bool(answers) for qid, answers in questions.items()}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, answers in questions.items():
        if qid not in preds:
            print(f"Missing prediction for {qid}", file=sys.stderr)
            continue
        exact_raw[qid] = exact_match(preds[qid], answers)
        f1_raw[qid] = token_f1(preds[qid], answers)

    def thresholded(raw: dict[str, float]) -> list[float]:
        scores = []
        for qid in questions:
            if qid not in raw:
                scores.append(0.0)
            elif na_probs.get(qid, 0.0) > na_prob_thresh:
                # The model abstains: right exactly when the question has no answer.
                scores.append(float(not has_ans[qid]))
            else:
                scores.append(raw[qid])
        return scores

    out = _summary(list(has_ans.values()), thresholded(exact_raw), thresholded(f1_raw))
    if na_prob_file is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, thresh = _best_thresh(preds, raw, na_probs, has_ans, len(questions))
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
    return out
