"""The two prompts of LaFFi, in one place, and how they become tokens.

- The QA prompt: a system instruction, few-shot question/answer turns from other articles, then
  the passage and the question. Used to answer (generate, evaluate) and by the SFT set.
- The feedback prompt: the QA prompt, the model's own answer as the assistant turn, and a request
  to predict the annotator's feedback. The LaFFi set trains the completion of this prompt.

Prompts are chat messages rendered with the model's chat template (a plain template stands in
for models without one), so a completion's tokens are exactly what the model would generate
after the prompt: training masks the prompt by its token count, never by searching the text.
"""

from __future__ import annotations

import random
import re

from transformers import PreTrainedTokenizerBase

from laffi.records import VERDICTS, QAExample

Message = dict[str, str]

QA_SYSTEM = (
    "You answer reading-comprehension questions. Reply with the shortest span of the passage "
    "that answers the question, copied exactly, and nothing else."
)

FEEDBACK_REQUEST = (
    "An annotator will now review your answer. Write the feedback you expect from them: whether "
    "your answer is correct, partially correct or incorrect, what is wrong with it, the sentence "
    "of the passage that supports the right answer, and the right answer."
)

# The fields that end a refinement completion (the refine set): written from the Feedback record when
# the set is built, read back from a predicted feedback by `read_review`, never searched for in free text.
VERDICT_FIELD = "Verdict: "
REVISED_FIELD = "Revised answer: "
ANSWER_FEEDBACK_LEAD = "Feedback on my first answer, "  # answer_feedback_completion

# For base models without a chat template: a plain "passage / question / Answer:" layout.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Answer: {{ m['content'] }}{{ eos_token }}\n\n"
    "{% else %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)

SHOT_POOL_SIZE = 32


def question_text(example: QAExample) -> str:
    return f"Passage: {example.context}\n\nQuestion: {example.question}"


def shot_pool(train: list[QAExample], seed: int) -> list[QAExample]:
    """Short few-shot candidates from distinct articles: short shots keep CPU prompts cheap."""
    by_length = sorted(train, key=lambda e: (len(e.context), e.id))
    pool, titles = [], set()
    for example in by_length:
        if example.title not in titles and not example.is_impossible:
            pool.append(example)
            titles.add(example.title)
        if len(pool) == SHOT_POOL_SIZE:
            break
    random.Random(seed).shuffle(pool)
    return pool


def choose_shots(example: QAExample, pool: list[QAExample], k: int, seed: int) -> list[QAExample]:
    """k shots from other articles, chosen by (seed, article), so any order gives the same prompt and
    every question of one article gets the same shots: their prompts share the system prompt and the
    shots (and, on one passage, the passage), which answering and training compute once."""
    candidates = [shot for shot in pool if shot.title != example.title]
    if len(candidates) < k:
        raise ValueError(f"data.num_shots={k}: only {len(candidates)} shots (data/shots.jsonl) come from other "
                         f"articles than {example.title!r}'s; lower data.num_shots")
    return random.Random(f"{seed}:{example.title}").sample(candidates, k)


def qa_messages(example: QAExample, shots: list[QAExample]) -> list[Message]:
    messages = [{"role": "system", "content": QA_SYSTEM}]
    for shot in shots:
        messages.append({"role": "user", "content": question_text(shot)})
        messages.append({"role": "assistant", "content": shot.answers[0]})
    messages.append({"role": "user", "content": question_text(example)})
    return messages


def feedback_messages(example: QAExample, shots: list[QAExample], answer: str) -> list[Message]:
    return qa_messages(example, shots) + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": FEEDBACK_REQUEST},
    ]


def verdict_line(verdict: str) -> str:
    """The fixed first line of a verify completion (laffi.stages.build.verify_example): "Verdict: correct"."""
    return f"{VERDICT_FIELD}{verdict}"


def review_completion(feedback: str, verdict: str, revised: str) -> str:
    """A refinement completion: the feedback, then the verdict and the revised answer, a line each."""
    return f"{feedback}\n{VERDICT_FIELD}{verdict}\n{REVISED_FIELD}{revised}"


def answer_feedback_completion(answer: str, own_answer: str, feedback: str) -> str:
    """An answer-then-feedback completion: the right answer on the first line (what direct answering
    reads, so the answer is trained as SFT trains it), then the feedback the model's own answer got."""
    return f'{answer}\n\n{ANSWER_FEEDBACK_LEAD}"{own_answer}": {feedback}'


def read_review(text: str) -> tuple[str, str] | None:
    """(verdict, revised answer) from the last verdict line of a predicted refinement completion and
    the line right after it; None if the fields are not there as `review_completion` writes them."""
    lines = [line.strip() for line in text.strip().splitlines()]
    verdict_field, revised_field = VERDICT_FIELD.strip(), REVISED_FIELD.strip()  # an empty answer ends the line
    for i in range(len(lines) - 2, -1, -1):
        if lines[i].startswith(verdict_field) and lines[i + 1].startswith(revised_field):
            verdict = lines[i].removeprefix(verdict_field).strip()
            return (verdict, lines[i + 1].removeprefix(revised_field).strip()) if verdict in VERDICTS else None
    return None


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if not tokenizer.chat_template:
        tokenizer.chat_template = plain_template(tokenizer)
    return tokenizer


def plain_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The plain layout, led by the BOS token where the tokenizer begins every text with one (Llama-2's,
    Mistral's): prompts are tokenized without special tokens, so a model trained with a BOS would otherwise
    never see it. SmolLM2's tokenizer adds none, and gets the layout as it is."""
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [bos]
    return ("{{ bos_token }}" if adds_bos else "") + PLAIN_CHAT_TEMPLATE


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Training tells a prompt from its completion by rendering the prompt alone and the whole conversation:
    a template that renders the prompt differently inside the conversation (Mistral v0.3's puts the system
    message in the last user turn only) would fail only at training, after answering and feedback. Raises
    ValueError at once instead."""
    prompt_completion_ids(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                          [{"role": "assistant", "content": "A"}])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_completion_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[Message],
                          completion: list[Message]) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion (ending with the end-of-turn token)."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently inside the full conversation")
    prompt_tokens = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_tokens = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return prompt_tokens, completion_tokens


_LEAD_INS = re.compile(
    r"^(?:(?:the\s+)?answer\b(?:\s+is\b)?\s*[:\-]?|a:|it\s+is\b|it's|according to the passage,?)\s*", re.I
)


def extract_answer(output: str) -> str:
    """The short answer in a generation: its first line, without lead-ins, quotes or a final period."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    answer = _LEAD_INS.sub("", lines[0]).strip()
    answer = answer.strip("\"'“”‘’` ")
    if answer.endswith(".") and not re.search(r"\b[A-Z]\.$|\d\.$", answer):
        answer = answer[:-1]
    return answer.strip()
