"""Summed cross-entropy over a vocabulary's logits, a few rows at a time, with the gradient that autograd gives.

    loss = summed_cross_entropy(logits, targets, weights)   # logits (tokens, vocab), any float dtype
    loss.backward()

`torch.nn.functional.cross_entropy(logits.float(), ...)` on a training step's bf16 logits (250 completion
tokens x 49,152 words: 24 MB) makes an fp32 copy (48 MB), its log-softmax (48 MB), and in the backward
a zero-filled 48 MB gradient for the picked log-probabilities, another for the log-softmax and a bf16 cast:
tensors above glibc's 32 MB mmap limit, so every one is fresh pages faulted in (`laffi.models.hold_heap`).
Here the fp32 work runs on `ROWS` rows at a time (12 MB of fp32 at most), and the backward recomputes
each chunk's log-softmax instead of keeping it: the same fp32 operations per row, so the logits'
gradient is the one autograd computes (bit for bit on the embedded model's shapes, tests/test_cross_entropy.py).
"""

from __future__ import annotations

import torch

IGNORE = -100  # target value that counts for nothing, as cross_entropy's ignore_index
ROWS = 32  # logit rows per fp32 chunk: 6 MB on a 49k vocabulary; 16-64 measured as fast, 128 slower


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The targets' cross-entropy in fp32 (fp64 for fp64 logits), summed, each token's multiplied by its
    weight where given; targets equal to `IGNORE` add nothing."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"summed_cross_entropy: logits (tokens, vocab) and targets (tokens,), "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"summed_cross_entropy: one weight per target, got {tuple(weights.shape)}")
    return _ChunkedCrossEntropy.apply(logits, targets, weights)


def _token_weights(targets: torch.Tensor, weights: torch.Tensor | None, scale: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """Each token's factor on its loss, ignored ones 0, times `scale` (1 in the forward, the incoming gradient
    in the backward: autograd multiplies the same way, weight by gradient before anything else)."""
    factors = scale.to(dtype).expand(targets.shape) if weights is None else weights.to(dtype) * scale.to(dtype)
    return factors * (targets != IGNORE)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, weights):
        ctx.save_for_backward(logits, targets, weights)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 for bf16 and fp16, as .float() was
        factors = _token_weights(targets, weights, torch.ones((), device=logits.device), dtype)
        picked = targets.clamp(min=0)[:, None]
        total = torch.zeros((), dtype=dtype, device=logits.device)
        for rows in _chunks(len(targets)):
            log_probs = torch.log_softmax(logits[rows].to(dtype), dim=-1).gather(1, picked[rows])[:, 0]
            # an ignored target adds 0, even where its log-probability is -inf
            total -= torch.where(targets[rows] != IGNORE, log_probs * factors[rows], 0).sum()
        return total

    @staticmethod
    def backward(ctx, grad_total):
        logits, targets, weights = ctx.saved_tensors
        dtype = torch.promote_types(logits.dtype, torch.float32)
        factors = _token_weights(targets, weights, grad_total, dtype)
        picked = targets.clamp(min=0)[:, None]
        grad = torch.empty_like(logits)
        for rows in _chunks(len(targets)):
            log_probs = torch.log_softmax(logits[rows].to(dtype), dim=-1)
            # the picked log-probabilities' gradient, then log_softmax's own backward kernel: autograd's steps
            grad_picked = torch.zeros_like(log_probs).scatter_(1, picked[rows], -factors[rows, None])
            grad[rows] = torch._log_softmax_backward_data(grad_picked, log_probs, 1, dtype)
        return grad, None, None


def _chunks(count: int):
    return (slice(start, min(start + ROWS, count)) for start in range(0, count, ROWS))
