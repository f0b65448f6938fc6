"""Annotators turn (question, answer) pairs into `Feedback` records.

Each annotator is a small class with a `name` attribute (recorded as `Feedback.annotator`) and
`annotate(pairs: list[tuple[QAExample, Answer]]) -> list[Feedback | AnnotationFailure]`, one
record per pair in order (an AnnotationFailure where an annotator that can fail, the LLM one, got
no feedback). The call takes a whole batch so that an LLM annotator can work on its pairs
concurrently.
"""
