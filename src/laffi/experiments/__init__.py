"""Experiments made of stages: the whole loop (`laffi run`), the ablation grid (`laffi ablate`),
and the numbers over seeds."""
