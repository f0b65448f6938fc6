"""What a LaFFi completion holds: all of the feedback, or only some of its parts.

    from laffi.annotators.content import CONTENTS, with_content
    verdict_only = [with_content(note, "verdict") for note in feedback]

The content grid (`laffi experiment`, grid.content) trains on three levels:

- `verdict`: the verdict alone ("The answer is incorrect.");
- `verdict+explanation`: the verdict, what is wrong, and the passage sentence that supports the
  right answer (that sentence contains the right answer, but does not point it out);
- `verdict+explanation+answer`: the whole feedback, as the annotator wrote it.

Levels are taken from `Feedback.parts`, which the reference annotator records, never by cutting
free text. Free-text feedback (people, the LLM annotator) has no parts: it takes `verdict`, written
from its verdict field, and the whole text; asking it for `verdict+explanation` is an error.
"""

from __future__ import annotations

from dataclasses import replace

from laffi.records import Feedback

CONTENTS = ("verdict", "verdict+explanation", "verdict+explanation+answer")
FULL = CONTENTS[-1]
# Feedback.parts by content level; the last level is the whole text, whatever its parts.
PARTS = {"verdict": ("verdict",), "verdict+explanation": ("verdict", "diagnosis", "evidence")}
# The verdict of free-text feedback, which has no verdict sentence of its own.
VERDICT_SENTENCES = {"correct": "The answer is correct.", "partially correct": "The answer is partially correct.",
                     "incorrect": "The answer is incorrect."}


class ContentError(ValueError):
    """Feedback that cannot be cut to the content level asked for."""


def content_text(note: Feedback, content: str) -> str:
    if content not in CONTENTS:
        raise ContentError(f"unknown content {content!r}; available: {', '.join(CONTENTS)}")
    if content == FULL:
        return note.text
    if note.parts is None:
        if content == "verdict":
            return VERDICT_SENTENCES[note.verdict]
        raise ContentError(f"feedback on {note.id!r} by {note.annotator} ({note.source}) is free text without "
                           f"recorded parts; content {content!r} needs them (the reference annotator records them)")
    return " ".join(note.parts[name] for name in PARTS[content] if note.parts.get(name))


def with_content(note: Feedback, content: str) -> Feedback:
    """The record with its text cut to `content`; its parts go with it, so the result is still consistent."""
    text = content_text(note, content)
    if content == FULL:
        return note
    parts = {k: v for k, v in (note.parts or {}).items() if k in PARTS[content]} if note.parts else None
    return replace(note, text=text, parts=parts)
