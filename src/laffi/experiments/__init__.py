"""Experiments made of stages: the whole loop (`laffi run`), the comparison of systems each at its
budget chosen on dev over seeds and a grid of variants (`laffi experiment`), and its numbers."""
