"""Numbers about a run: SQuAD scores and the bootstrap, annotator agreement, attention."""
