"""Stage 3: the training sets, as prompt/completion JSONL that `datasets` and TRL read as is.

    laffi build runs/demo
    laffi export-feedback runs/demo                       # human feedback -> feedback.human.jsonl
    laffi build runs/demo --human-ratio 0.25 --size 64    # hybrid: 16 human + 48 AI examples

- sets/laffi.jsonl: prompt = the QA prompt + the model's own answer + a request for feedback;
  completion = the annotator's feedback. The model learns to predict the feedback it gets.
- sets/sft.jsonl: prompt = the same QA prompt; completion = the gold answer.
Both hold the same questions: those with feedback, in the order of the train pool. With several
answers per question (generate.samples=K), a set made from feedback has one example per answer that
got feedback (the laffi set: up to K per question), while the sft set keeps one per question (the
gold answer; K answers do not repeat it).
- sets/SYSTEM.jsonl for every other system with a train recipe (laffi.systems): each question in one
  set's format, each set's share of the questions (within one), drawn by data.seed (with K answers, a question
  in a feedback format gives an example per answer); sets/SYSTEM.meta.json says which, and counts.
  The refine format: the LaFFi prompt -> the feedback, then "Verdict: ..." and "Revised answer: ..."
  lines from the Feedback record (its corrected answer; the answer itself when it is correct). The
  critique format: the same, with the feedback's verdict sentence alone before the fields. The
  answer-feedback format: the QA prompt -> the gold answer, a blank line, then the feedback on the
  model's own answer. The verify format: the LaFFi example with a fixed line "Verdict: VERDICT" before
  the feedback (a verifier's training). A recipe with `aux` also gets sets/SYSTEM.aux.jsonl: every question of its set
  again, in the aux set's format, in the same order. A recipe with `preference` also gets
  sets/SYSTEM.pairs.jsonl: for every answer the annotator judged incorrect or partially correct, the QA
  prompt, the gold answer (chosen) and that answer (rejected), in TRL's preference format; an answer that
  repeats an earlier answer of its question gives no second pair (sampled answers often repeat); its
  .meta.json counts the answers of each verdict and the pairs. With train.preference.loss kto it gets
  sets/SYSTEM.labelled.jsonl instead: each distinct answer of a question once, with its verdict, in TRL's
  unpaired format (prompt, completion; correct is desirable).

The hybrid build mixes an exact share of human feedback into the LaFFi set, the rest AI feedback.
Each answer, a (question, sample), appears at most once: `round(R * N)` answers are drawn (seeded by
data.seed) from those with human feedback, where several people annotated an answer one of them is
drawn, and the rest from other answers with AI feedback. sets/laffi.meta.json records what a LaFFi
set is made of: the sizes, the ratio, which answers came from people and which from the AI annotator.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from laffi.analysis.metrics import majority_answer
from laffi.annotators.content import content_text
from laffi.config import ConfigError, DataConfig, require, save_config
from laffi.layout import RunLayout, failures_file
from laffi.prompts import (
    answer_feedback_completion,
    choose_shots,
    feedback_messages,
    qa_messages,
    review_completion,
    verdict_line,
)
from laffi.records import (
    VERDICTS,
    Answer,
    Feedback,
    Key,
    LabelledAnswer,
    PreferencePair,
    QAExample,
    TrainingExample,
    answer_name,
    read_records,
    record_key,
    write_json,
    write_records,
)
from laffi.stages.annotate import failed_answers
from laffi.systems import REVIEW_SETS, System


Notes = dict[str, list[Feedback]]  # question id -> the feedback on its answers, by sample


def by_question(examples: list[QAExample], chosen: dict[Key, Feedback]) -> Notes:
    """The chosen feedback of each train question that has some, in train-pool order, by sample."""
    grouped: Notes = defaultdict(list)
    for key in sorted(chosen, key=lambda k: k[1]):
        grouped[key[0]].append(chosen[key])
    return {e.id: grouped[e.id] for e in examples if e.id in grouped}


def build(layout: RunLayout, data: DataConfig, systems: list[System] = ()) -> dict[str, list[TrainingExample]]:
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    feedback = {record_key(f): f for f in read_records(layout.feedback, Feedback)}  # one per answer
    failures = failed_answers(layout.feedback)  # answers the annotator could not give feedback on
    if failures:
        print(f"build: {len(failures)} answers have no feedback because their annotation failed "
              f"({failures_file(layout.feedback)}); both sets leave them out")
    answered = [record_key(a) for a in read_records(layout.answers, Answer)] if layout.answers.exists() else []
    if unjudged := [key for key in answered if key not in feedback and key not in failures]:
        # neither feedback nor a failure: an annotation stopped before it was through (a kill writes no failures)
        raise ValueError(f"build: {len(unjudged)} of the answers in {layout.answers} have no feedback in "
                         f"{layout.feedback} yet (annotation stopped before it was through?); run `laffi annotate "
                         f"{layout.root}` to finish it")
    save_config(layout.sets_config, {"data": data}, outputs=[layout.training_set("laffi")])  # until written: replaced
    chosen = by_question(examples, feedback)
    if not chosen:
        raise ValueError(f"{layout.feedback}: no feedback on any train question; run `laffi annotate` first")
    return write_sets(layout, examples, shots, chosen, data, systems=systems)


def revised_answer(note: Feedback) -> str | None:
    """The right answer a feedback names: the answer itself when correct, else its corrected answer;
    None for free-text feedback that gives none (the LLM annotator's, a person's who left it empty)."""
    return note.answer if note.verdict == "correct" else note.corrected_answer


def _reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    return TrainingExample(example.id, qa_messages(example, shots), _reply(majority_answer(example.answers)))


def laffi_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    return TrainingExample(example.id, feedback_messages(example, shots, note.answer), _reply(note.text), note.sample)


def refine_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    completion = review_completion(note.text, note.verdict, revised_answer(note))
    return TrainingExample(example.id, feedback_messages(example, shots, note.answer), _reply(completion), note.sample)


def critique_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    """A short critique: the feedback's verdict sentence alone, then the same fields as refine. At 32
    steps the embedded 135M model does not learn to write the whole feedback and its fields (on 100 dev
    questions no predicted refine completion had them), so this variant asks for much less text."""
    completion = review_completion(content_text(note, "verdict"), note.verdict, revised_answer(note))
    return TrainingExample(example.id, feedback_messages(example, shots, note.answer), _reply(completion), note.sample)


def verify_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    """The LaFFi example with a fixed verdict line first ("Verdict: incorrect", then the feedback): a model
    trained on it states its verdict on an answer in one of three fixed lines, whose probabilities
    (laffi.stages.verdicts.LINES) make it a verifier that reads one line per candidate answer,
    whoever wrote the feedback (the reference annotator's own verdict sentences come in four wordings)."""
    completion = verdict_line(note.verdict) + "\n" + note.text
    return TrainingExample(example.id, feedback_messages(example, shots, note.answer), _reply(completion), note.sample)


def answer_feedback_example(example: QAExample, shots: list[QAExample], note: Feedback) -> TrainingExample:
    """Answer-then-feedback in one completion: the QA prompt -> SFT's gold answer, then the feedback the
    model's own answer got. The answer comes first because direct answering reads the first line; were
    it the model's own answer, the system would learn to give the answers it already gives."""
    completion = answer_feedback_completion(majority_answer(example.answers), note.answer, note.text)
    return TrainingExample(example.id, qa_messages(example, shots), _reply(completion), note.sample)


def preference_pair(example: QAExample, shots: list[QAExample], note: Feedback) -> PreferencePair | None:
    """The gold answer preferred to the model's own answer (train.preference), where the annotator judged that
    answer incorrect or partially correct; None where it was judged correct, and where it is the gold answer's
    very text (a verdict that disagrees with the gold answer): such a pair's DPO term is log 2, whatever the
    model, with no gradient. The prompt and chosen completion are the sft example's, so in a packed row the
    chosen sequence is the sft row itself and the pair adds only the rejected answer's tokens."""
    gold = majority_answer(example.answers)
    if note.verdict == "correct" or note.answer == gold:
        return None
    return PreferencePair(example.id, qa_messages(example, shots), _reply(gold), _reply(note.answer), note.verdict,
                          note.sample)


def question_pairs(example: QAExample, shots: list[QAExample], notes: list[Feedback]) -> list[PreferencePair]:
    """The pairs of one question's answers (`preference_pair`), each rejected answer once: sampled answers often
    repeat, and the same pair twice would only weigh that answer double."""
    pairs, seen = [], set()
    for note in notes:
        if (pair := preference_pair(example, shots, note)) and note.answer not in seen:
            seen.add(note.answer)
            pairs.append(pair)
    return pairs


def labelled_answers(example: QAExample, shots: list[QAExample], notes: list[Feedback]) -> list[LabelledAnswer]:
    """Each distinct answer of one question with its verdict (train.preference.loss kto), in sample order. An
    answer judged not correct that is the gold answer's very text gives none (a verdict that disagrees with
    the gold answer would push the gold answer down), as it gives no DPO pair."""
    gold = majority_answer(example.answers)
    labelled, seen = [], set()
    for note in notes:
        if note.answer in seen or (note.verdict != "correct" and note.answer == gold):
            continue
        seen.add(note.answer)
        labelled.append(LabelledAnswer(example.id, qa_messages(example, shots), _reply(note.answer), note.verdict,
                                       note.sample))
    return labelled


def answer_counts(notes: list[Feedback]) -> dict:
    """How many questions and answers a set's feedback covers, and how many answers got each verdict."""
    verdicts = Counter(n.verdict for n in notes)
    return {"questions": len({n.id for n in notes}), "answers": len(notes),
            "verdicts": {v: verdicts[v] for v in VERDICTS}}


def pair_metadata(drawn: list[tuple[QAExample, list[QAExample], list[Feedback]]], pairs: list[PreferencePair]) -> dict:
    """How many of a set's answers got each verdict, and which became pairs: an answer judged not correct gives
    none where it is the gold answer's text (same_as_gold) or repeats an earlier answer of its question."""
    notes = [note for _, _, question_notes in drawn for note in question_notes]
    gold = {example.id: majority_answer(example.answers) for example, _, _ in drawn}
    wrong = [n for n in notes if n.verdict != "correct"]
    same_as_gold = sum(n.answer == gold[n.id] for n in wrong)
    return {**answer_counts(notes), "pairs": len(pairs),
            "pairs_by_verdict": {v: sum(p.verdict == v for p in pairs) for v in VERDICTS if v != "correct"},
            "same_as_gold": same_as_gold, "repeated": len(wrong) - same_as_gold - len(pairs),
            "pair_ids": [answer_name(record_key(p)) for p in pairs]}


def labelled_metadata(drawn: list[tuple[QAExample, list[QAExample], list[Feedback]]],
                      labelled: list[LabelledAnswer]) -> dict:
    """How many of a set's answers got each verdict, and how many became desirable and undesirable answers."""
    notes = [note for _, _, question_notes in drawn for note in question_notes]
    return {**answer_counts(notes), "labelled": len(labelled),
            "desirable": sum(a.desirable for a in labelled), "undesirable": sum(not a.desirable for a in labelled),
            "labelled_ids": [answer_name(record_key(a)) for a in labelled]}


@dataclass(frozen=True)
class SetFormat:
    """How a training set makes its examples from a question, its shots and the feedback on one answer, and
    whether it makes one per answer (a format that shows the answer or its feedback) or one per question (the
    gold answer alone: K answers would only repeat it)."""

    make: Callable[[QAExample, list[QAExample], Feedback], TrainingExample]
    per_answer: bool = True

    def examples(self, example: QAExample, shots: list[QAExample], notes: list[Feedback]) -> list[TrainingExample]:
        return [self.make(example, shots, note) for note in (notes if self.per_answer else notes[:1])]


# the training sets a system's recipe can draw on (laffi.systems.SETS)
SET_FORMATS = {"sft": SetFormat(sft_example, per_answer=False), "laffi": SetFormat(laffi_example),
               "refine": SetFormat(refine_example), "critique": SetFormat(critique_example),
               "answer-feedback": SetFormat(answer_feedback_example), "verify": SetFormat(verify_example)}


# what gives feedback a right answer that a review set can use
NAMES_A_RIGHT_ANSWER = ("annotate with the reference annotator or an LLM with annotate.template=feedback-v2, or leave "
                        "this system out of systems.names")


def write_system_set(layout: RunLayout, system: System, examples: list[QAExample], shots: list[QAExample],
                     chosen: Notes, data: DataConfig) -> list[TrainingExample]:
    """A system's own set: every question with feedback in one set's format, share x N of the N questions in each
    within one (`shares_of`; a feedback format gives the question an example per answer, sft one)."""
    questions = [e for e in examples if e.id in chosen]

    def named(question: str) -> bool:  # every answer's feedback names a right answer: a review set can use it
        return all(revised_answer(note) is not None for note in chosen[question])

    if system.aux in REVIEW_SETS and (missing := [e for e in questions if not named(e.id)]):
        raise ValueError(f"{system.name}: train.aux {system.aux} needs a right answer in every question's feedback; "
                         f"{len(missing)} have none (a corrected answer, or verdict correct): {NAMES_A_RIGHT_ANSWER}")
    counts = dict(zip(system.recipe.sets, shares_of(list(system.recipe.sets.values()), len(questions))))
    rng = random.Random(f"{data.seed}:{system.name}")
    left = [e.id for e in questions]
    rng.shuffle(left)
    assigned: dict[str, str] = {}
    for name in sorted(counts, key=lambda n: n not in REVIEW_SETS):  # these first: not every question has one
        usable = [q for q in left if name not in REVIEW_SETS or named(q)]
        if len(usable) < counts[name]:
            raise ValueError(f"{system.name}: {counts[name]} {name} examples asked for, but only {len(usable)} questions "
                             "have feedback that names a right answer (a corrected answer, or verdict correct): "
                             f"{NAMES_A_RIGHT_ANSWER}")
        assigned.update({q: name for q in usable[:counts[name]]})
        left = [q for q in left if q not in assigned]
    drawn = [(e, choose_shots(e, shots, data.num_shots, data.seed), chosen[e.id]) for e in questions]
    rows = [row for question in drawn for row in SET_FORMATS[assigned[question[0].id]].examples(*question)]
    write_records(layout.training_set(system.name), rows)
    if system.aux:  # the same questions and shots, so the examples of a question share its QA prompt
        write_records(layout.aux_set(system.name), [row for question in drawn
                                                    for row in SET_FORMATS[system.aux].examples(*question)])
    extra = {}
    if system.preference and system.preference.loss == "kto":  # the same questions and shots again
        labelled = [answer for question in drawn for answer in labelled_answers(*question)]
        write_records(layout.labelled_set(system.name), labelled)
        extra = {"preference": labelled_metadata(drawn, labelled)}
    elif system.preference:  # the same questions and shots again: chosen is the sft example's completion
        pairs = [pair for question in drawn for pair in question_pairs(*question)]
        write_records(layout.pair_set(system.name), pairs)
        extra = {"preference": pair_metadata(drawn, pairs)}
    by_set = Counter(assigned[row.id] for row in rows)
    write_json(layout.set_metadata(system.name), {
        "set": system.name, "size": len(rows), "shares": system.recipe.sets,
        "examples": {name: by_set[name] for name in counts}, "questions": counts,
        "feedback": answer_counts([note for _, _, notes in drawn for note in notes]),
        "aux": system.aux, "seed": data.seed, "ids": {name: [e.id for e in questions if assigned[e.id] == name] for name in counts},
        **extra})
    return rows


def set_metadata(layout: RunLayout, name: str) -> dict:
    """What sets/NAME.meta.json says of a set this stage wrote ({} where it wrote none)."""
    meta = layout.set_metadata(name)
    return json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else {}


def refuse_a_systems_set(layout: RunLayout, name: str, command: str) -> None:
    """`laffi train/evaluate --system NAME` on a NAME that is no system of the run's: a set this stage wrote for a
    system of that name (its .meta.json has the recipe's shares) would be trained as plain examples, or its
    adapter answer directly, without the recipe's aux, preference or steps and the system's answering."""
    if "shares" in set_metadata(layout, name):
        raise ConfigError(f"--system {name}: {layout.training_set(name)} was built for a system of that name, and "
                          f"`laffi {command}` would drop its recipe (train.aux, train.preference, its steps) and how "
                          f"it answers; give its file (--system PATH/{name}.yaml) or name it in systems.names")


def refuse_a_hybrid_build(layout: RunLayout) -> None:
    """`laffi run` builds from feedback.jsonl alone: sets a hybrid build drew people's feedback into would be built
    again without it, and trained on, without a word."""
    mix = set_metadata(layout, "laffi")
    if mix.get("human_ratio") is not None:
        raise ConfigError(f"{layout.sets}: built with people's feedback (`laffi build --human-ratio "
                          f"{mix['human_ratio']:g} --size {mix['size']}`), and `laffi run` builds from feedback.jsonl "
                          f"alone; train and evaluate them stage by stage (`laffi train {layout.root} --system NAME`), "
                          f"or delete {layout.sets} for laffi run to build its own")


def shares_of(shares: list[float], total: int) -> list[int]:
    """Whole counts for `shares` of `total` that sum to it, none negative: the running sums of the shares are
    rounded, so each count is within one of its share (with two sets: the first rounded, the second the rest)."""
    bounds = [round(sum(shares[:k]) * total) for k in range(1, len(shares))]
    return [high - low for low, high in zip([0, *bounds], [*bounds, total])]


def write_sets(layout: RunLayout, examples: list[QAExample], shots: list[QAExample], chosen: Notes,
               data: DataConfig, human_ratio: float | None = None,
               systems: list[System] = ()) -> dict[str, list[TrainingExample]]:
    """Both sets on the questions that have `chosen` feedback, in train-pool order (the laffi set: an example
    per answer's feedback; the sft set: one per question), what the LaFFi set is made of (sets/laffi.meta.json),
    and the own set of each of `systems` that needs one."""
    questions = [(e, choose_shots(e, shots, data.num_shots, data.seed), chosen[e.id]) for e in examples if e.id in chosen]
    laffi = [row for question in questions for row in SET_FORMATS["laffi"].examples(*question)]
    sft = [row for question in questions for row in SET_FORMATS["sft"].examples(*question)]
    write_records(layout.training_set("laffi"), laffi)
    write_records(layout.training_set("sft"), sft)
    seed = None if human_ratio is None else data.seed  # only a hybrid mix is drawn at random
    write_json(layout.set_metadata("laffi"), mix_metadata([note for _, _, notes in questions for note in notes],
                                                          human_ratio, seed))
    sets = {"laffi": laffi, "sft": sft}
    for system in systems:
        # sft and laffi are written above, but not their auxiliary examples
        if system.recipe and (system.recipe.sets != {system.name: 1.0} or system.aux or system.preference):
            sets[system.name] = write_system_set(layout, system, examples, shots, chosen, data)
    return sets


def mix_metadata(feedback: list[Feedback], ratio: float | None, seed: int | None) -> dict:
    """What a LaFFi set is made of: sizes, questions and verdicts, the answers by source (their names: the
    question id, "ID#sN" for a sampled answer), and who wrote the human part."""
    human = [f for f in feedback if f.source == "human"]
    return {"set": "laffi", "size": len(feedback), "human_ratio": ratio,
            "human": len(human), "ai": len(feedback) - len(human), "seed": seed,
            "questions": len({f.id for f in feedback}), "verdicts": answer_counts(feedback)["verdicts"],
            "human_annotators": dict(sorted(Counter(f.annotator for f in human).items())),
            "human_ids": [answer_name(record_key(f)) for f in human],
            "ai_ids": [answer_name(record_key(f)) for f in feedback if f.source == "ai"]}


@dataclass(frozen=True)
class HybridConfig:
    human_ratio: float  # R: the share of examples with human feedback, in [0, 1]
    size: int  # N: examples in the set

    def __post_init__(self) -> None:
        require(0.0 <= self.human_ratio <= 1.0, "--human-ratio", f"must be in [0, 1], got {self.human_ratio}")
        require(self.size >= 1, "--size", f"must be >= 1, got {self.size}")
        share = self.human_ratio * self.size
        if abs(share - round(share)) > 1e-9:
            raise ConfigError(f"--human-ratio {self.human_ratio} of --size {self.size} is {share:g} examples; "
                              "choose a ratio and size whose product is a whole number")

    @property
    def human(self) -> int:
        return round(self.human_ratio * self.size)


def _read_all(paths: list[Path]) -> list[Feedback]:
    return [f for path in paths if path.exists() for f in read_records(path, Feedback)]


def build_hybrid(layout: RunLayout, data: DataConfig, hybrid: HybridConfig, systems: list[System] = (),
                 options: tuple[str, str] = ("--human-ratio", "--size"),
                 people: RunLayout | None = None) -> dict[str, list[TrainingExample]]:
    """`options`: what the share and the size are called where they were set (an experiment's grid.human_ratio
    and grid.size); `people`: the run whose annotation database the people's feedback is exported from."""
    ratio, size = options
    people = people or layout
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    sources = [layout.human_feedback, layout.feedback]
    pool = {e.id for e in examples}
    feedback = [f for f in _read_all(sources) if f.id in pool]
    save_config(layout.sets_config, {"data": data}, outputs=[layout.training_set("laffi")])  # until written: replaced

    # the unit is an answer, (question id, sample): one answer per question is the question itself
    human_by_key: dict[Key, list[Feedback]] = defaultdict(list)
    ai_by_key: dict[Key, Feedback] = {}
    for f in feedback:
        if f.source == "human":
            human_by_key[record_key(f)].append(f)
        else:
            ai_by_key.setdefault(record_key(f), f)
    n_human, n_ai = hybrid.human, hybrid.size - hybrid.human
    if len(human_by_key) < n_human:
        raise ValueError(
            f"{ratio} {hybrid.human_ratio:g} of {size} {hybrid.size} needs human feedback on {n_human} "
            f"answers; {sources[0]} and {sources[1]} have it on {len(human_by_key)}. Annotate more "
            f"(`laffi serve {people.root}`), export it (`laffi export-feedback {people.root}`), or lower {ratio} or "
            f"{size}")

    rng = random.Random(data.seed)
    order = {e.id: position for position, e in enumerate(examples)}

    def in_order(keys) -> list[Key]:  # train-pool order, then by sample
        return sorted(keys, key=lambda key: (order[key[0]], key[1]))

    human_keys = rng.sample(in_order(human_by_key), n_human)
    chosen = {key: rng.choice(sorted(human_by_key[key], key=lambda f: f.annotator)) for key in human_keys}
    ai_pool = [key for key in in_order(ai_by_key) if key not in chosen]
    if len(ai_pool) < n_ai:
        answers = len(read_records(people.answers, Answer)) if people.answers.exists() else None  # an experiment's
        more = (f"every answer of the train pool has it; lower {size}" if answers is not None and
                len(ai_by_key) >= answers else f"run `laffi annotate` on more answers, or lower {size}")
        raise ValueError(
            f"{size} {hybrid.size} with {n_human} human examples needs AI feedback on {n_ai} other answers; "
            f"{layout.feedback} has it on {len(ai_pool)}: {more}")
    chosen.update({key: ai_by_key[key] for key in rng.sample(ai_pool, n_ai)})

    return write_sets(layout, examples, shots, by_question(examples, chosen), data, hybrid.human_ratio, systems)
