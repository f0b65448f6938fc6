"""Several processes at once: how a step's examples are split (batching), answering in shards,
resumable checkpoints, and the launchers (accelerate, torchrun)."""
