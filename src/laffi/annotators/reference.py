"""The reference annotator: AI feedback grounded in the gold answers and the passage.

It writes what a careful human annotator would: a verdict, what exactly is wrong, the passage
sentence that supports the right answer, and the right answer. Wording is drawn from the tables
below by a generator seeded with (seed, question id, sample), so an item gets the same text in any
batch or order (stages resume after crashes) while the data set does not repeat a single template;
the greedy answer (sample 0) is seeded as before samples existed, (seed, question id), so its
feedback is what it always was, and each sampled answer draws its wording independently.

Two variants, by name (annotate.annotator). An answer that contains a gold answer ("too long") or lies
within one ("incomplete") is partially correct under both. One that only shares words with a gold
answer is partially correct under `reference` whatever it shares (a single word, or "199" as the start
of "1998"); under `reference-strict` only from a token F1 of 0.5 with that gold. Below it the answer is
judged by another gold answer it relates to, and where there is none it is incorrect (diagnosed as a
wrong span or as unsupported, like an answer that shares nothing).
"""

from __future__ import annotations

import random
import re

from laffi.analysis.metrics import majority_answer, normalize_answer, token_f1
from laffi.records import Answer, Feedback, QAExample

# Each variant's least token F1 with a gold answer at which merely sharing words with it is partially correct.
OVERLAP_F1 = {"reference": 0.0, "reference-strict": 0.5}

VERDICTS = {
    "correct": ("The answer is correct.", "This is correct.", "Correct.", "Your answer is correct."),
    "partially correct": ("The answer is partially correct.", "This is only partially correct.",
                          "Partially correct.", "Your answer is only partially correct."),
    "incorrect": ("The answer is incorrect.", "This is incorrect.", "Incorrect.", "Your answer is incorrect."),
}
# Fields: {prediction}; {extra}, {missing} and {unsupported} are already-quoted runs of words.
DIAGNOSES = {
    "correct": ("It gives exactly the span the passage states.",
                "It matches the passage precisely, with nothing missing and nothing added.",
                '"{prediction}" is exactly what the passage says.',
                "It picks out the right part of the passage."),
    "blank": ("The passage does not answer this question, so leaving the answer blank is right.",
              "Nothing in the passage answers this, and rightly no answer was given.",
              "The question cannot be answered from the passage, and no answer was given.",
              "The passage does not contain this information, so giving no answer is right."),
    "unanswerable": ('The passage does not answer this question, so "{prediction}" is not supported by it.',
                     'Nothing in the passage answers this, so "{prediction}" is only a guess.',
                     'The question cannot be answered from the passage, yet the answer claims "{prediction}".',
                     'The passage does not contain this information, so "{prediction}" has no support.'),
    "empty": ("No answer was given, although the passage does answer the question.",
              "The answer is empty.",
              "The answer was left blank.",
              "Nothing was answered, but the passage contains the answer."),
    "too long": ("It contains the right answer but adds extra words: {extra}.",
                 "The right answer is in there, but it should not include {extra}.",
                 "It is too long: the answer does not include {extra}.",
                 "It includes the answer plus words that do not belong ({extra})."),
    "incomplete": ("It is incomplete: it leaves out {missing}.",
                   '"{prediction}" is only part of the answer, which also needs {missing}.',
                   "It gives only part of the answer and misses {missing}.",
                   "It is on the right track but incomplete, without {missing}."),
    "overlap": ("It overlaps with the right answer but does not match it.",
                "Part of it is right, but it is not the span the question asks for.",
                "It is close to the right answer, but not the same.",
                "It gets some of the answer but also some of it wrong."),
    "wrong span": ('"{prediction}" does appear in the passage, but it is not what the question asks for.',
                   'The passage mentions "{prediction}", but that does not answer the question.',
                   '"{prediction}" is taken from the wrong part of the passage.',
                   'It picks the wrong span: "{prediction}" is in the passage but is not the answer.'),
    "unsupported": ('"{prediction}" is not supported by the passage, which never mentions {unsupported}.',
                    "The passage never mentions {unsupported}, so this answer is not grounded in it.",
                    "This does not come from the passage: {unsupported} appears nowhere in it.",
                    '"{prediction}" is made up; the passage says nothing about {unsupported}.'),
}
QUOTES = ('The passage says: "{sentence}"', 'As the passage puts it: "{sentence}"',
          'The supporting sentence is: "{sentence}"', 'See the passage: "{sentence}"')
RIGHT_ANSWERS = ('The right answer is "{gold}".', 'The correct answer is "{gold}".',
                 'It should be "{gold}".', 'The answer should have been "{gold}".')
NO_ANSWERS = ("The right response is that the passage does not say.", "The answer should have been left blank.",
              "The right answer is none: the passage does not say.",
              "It should have said that the passage does not answer the question.")

# A sentence ends at . ! ? (plus closing quotes) before a capital, digit or opening quote...
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
# ...unless the period belongs to an abbreviation ("U.S.", "Dr.", an initial like "F.").
_ABBREVIATION = re.compile(
    r"(?:\b(?:[A-Za-z]\.){2,}|\b[A-Z]\.|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|Mt|Ft|Gen|Col|Lt|Sgt|Capt|Rev|Gov|"
    r"Sen|Rep|Inc|Ltd|Co|Corp|vs|etc|No|Vol|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|approx)\.)$")
_WRAPPING = "\"'“”‘’()[],;:!?"


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def _find(needle: list[str], haystack: list[str]) -> int:
    """Start of `needle` as a contiguous run in `haystack`, or -1."""
    n = len(needle)
    return next((i for i in range(len(haystack) - n + 1) if haystack[i:i + n] == needle), -1)


def _display(text: str) -> str:
    """Text as quoted in feedback: no wrapping quotes or final period, unless it ends an abbreviation."""
    text = " ".join(text.split()).strip(_WRAPPING)
    return text if _ABBREVIATION.search(text) else text.rstrip(".")


def _sentences(context: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(context):
        if not _ABBREVIATION.search(context, 0, m.start() + 1):
            spans.append((start, m.end()))
            start = m.end()
    return spans + [(start, len(context))]


def _support(context: str, gold: str) -> str | None:
    """The shortest run of sentences containing `gold` (whole words preferred), or None."""
    body = r"\s+".join(map(re.escape, gold.split()))
    spans = _sentences(context)
    for pattern in (rf"(?<!\w){body}(?!\w)", body):
        windows = []
        for m in re.finditer(pattern, context, re.I):
            inside = [(s, e) for s, e in spans if s < m.end() and e > m.start()]
            windows.append((len(inside), inside[0][0], inside[-1][1]))
        if windows:
            _, start, end = min(windows)
            return " ".join(context[start:end].split())
    return None


def _runs(text: str, off) -> str:
    """Quote the runs of words of `text` having a token for which `off(position, token)` holds."""
    words, flags, position = text.split(), [], 0
    for word in words:
        tokens = _tokens(word)
        flags.append(any(off(position + k, t) for k, t in enumerate(tokens)) if tokens else None)
        position += len(tokens)
    # An article or stray punctuation goes with the word after it (or, at the end, before it).
    for i in reversed(range(len(flags) - 1)):
        flags[i] = flags[i + 1] if flags[i] is None else flags[i]
    for i in range(1, len(flags)):
        flags[i] = flags[i - 1] if flags[i] is None else flags[i]
    runs = [[]]
    for word, flag in zip(words, flags):
        if flag:
            runs[-1].append(_display(word) or word)
        elif runs[-1]:
            runs.append([])
    quoted = ['"' + " ".join(r[:6]) + ("…" if len(r) > 6 else "") + '"' for r in runs if r]
    return " and ".join(filter(None, [", ".join(quoted[:-1]), *quoted[-1:]]))


def _relation(pred: list[str], gold: list[str], pred_text: str, gold_text: str) -> str | None:
    if _find(gold, pred) >= 0:
        return "too long"
    if _find(pred, gold) >= 0:
        return "incomplete"
    # Sharing a token, or one containing the other from a word start ("1990" in "1990s").
    short, long_ = sorted((normalize_answer(pred_text), normalize_answer(gold_text)), key=len)
    if set(pred) & set(gold) or re.search(rf"\b{re.escape(short)}", long_):
        return "overlap"
    return None


class ReferenceAnnotator:
    def __init__(self, seed: int = 0, name: str = "reference") -> None:
        if name not in OVERLAP_F1:
            raise ValueError(f"unknown reference annotator {name!r}; available: {', '.join(OVERLAP_F1)}")
        self.seed, self.name, self.overlap_f1 = seed, name, OVERLAP_F1[name]

    def annotate(self, pairs: list[tuple[QAExample, Answer]]) -> list[Feedback]:
        return [self._feedback(example, answer) for example, answer in pairs]

    def _feedback(self, example: QAExample, answer: Answer) -> Feedback:
        if example.id != answer.id:
            raise ValueError(f"answer {answer.id!r} paired with question {example.id!r}")
        # A string seed is hashed with SHA-512, so the draw is stable across processes and runs;
        # one draw per part, always all four, so one part's wording never shifts another's.
        rng = random.Random(f"{self.seed}:{example.id}" + (f":{answer.sample}" if answer.sample else ""))
        draws = [rng.random() for _ in range(4)]

        def pick(part: int, table: tuple[str, ...]) -> str:
            return table[int(draws[part] * len(table))]

        prediction = " ".join(answer.prediction.split())
        pred = _tokens(prediction)
        shown = _display(prediction)
        fields = {"prediction": shown if len(shown) <= 80 else shown[:77] + "…"}
        quote_gold = gold = None
        if example.is_impossible:
            verdict, kind = ("incorrect", "unanswerable") if pred else ("correct", "blank")
        else:
            golds = [g for g in example.answers if _tokens(g)] or example.answers
            gold = quote_gold = majority_answer(golds)
            exact = next((g for g in golds if _tokens(g) == pred), None)
            # Diagnose against the majority gold if the prediction relates to it, else the first that does.
            related = [(g, r) for g in (gold, *golds) if (r := _relation(pred, _tokens(g), prediction, g))
                       and (r != "overlap" or token_f1(prediction, [g]) >= self.overlap_f1)]
            if not pred:
                verdict, kind = "incorrect", "empty"
            elif exact is not None:
                verdict, kind, quote_gold = "correct", "correct", exact
            elif related:
                (target, kind), verdict = related[0], "partially correct"
                gold_tokens = _tokens(target)
                if kind == "too long":
                    start = _find(gold_tokens, pred)
                    fields["extra"] = _runs(prediction, lambda i, t: not start <= i < start + len(gold_tokens))
                elif kind == "incomplete":
                    start = _find(pred, gold_tokens)
                    fields["missing"] = _runs(target, lambda i, t: not start <= i < start + len(pred))
            else:
                verdict = "incorrect"
                in_passage = set(_tokens(example.context))
                kind = "wrong span" if set(pred) <= in_passage else "unsupported"
                if kind == "unsupported":
                    fields["unsupported"] = _runs(prediction, lambda i, t: t not in in_passage)

        # Kept apart in the record (Feedback.parts), so an experiment can train on some of them.
        parts = {"verdict": pick(0, VERDICTS[verdict]), "diagnosis": pick(1, DIAGNOSES[kind]).format(**fields)}
        sentence = _support(example.context, quote_gold) if quote_gold else None
        if sentence:
            parts["evidence"] = pick(2, QUOTES).format(sentence=sentence)
        if verdict != "correct":
            parts["answer"] = pick(3, RIGHT_ANSWERS).format(gold=gold) if gold else pick(3, NO_ANSWERS)
        corrected = None if verdict == "correct" else (gold or "")
        return Feedback(id=example.id, answer=answer.prediction, verdict=verdict, text=" ".join(parts.values()),
                        source="ai", annotator=self.name, corrected_answer=corrected, parts=parts,
                        sample=answer.sample)
