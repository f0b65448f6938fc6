"""Cross-entropy over a vocabulary's logits, a few rows at a time, with the gradient that autograd gives.

    losses = token_cross_entropy(logits, targets)   # logits (tokens, vocab) in any float dtype: fp32 losses
    loss = summed_cross_entropy(logits, targets, weights)

`torch.nn.functional.cross_entropy(logits.float(), ...)` on a training step's bf16 logits (250 completion
tokens x 49,152 words: 24 MB) makes an fp32 copy (48 MB) and its log-softmax (48 MB), and its backward a
zero-filled 48 MB gradient for the picked log-probabilities, another for the log-softmax, and a bf16 cast:
tensors above glibc's 32 MB mmap limit (`laffi.models.hold_heap`), so each one is fresh pages faulted in.
Here the fp32 work runs on `ROWS` rows at a time (6 MB), and the backward recomputes each chunk's
log-softmax instead of keeping it, then runs log_softmax's own backward kernel on it: the same fp32
operations per row as autograd's, so the logits' gradient is the same bit for bit
(tests/test_cross_entropy.py; on the bench's LaFFi set, 8 steps' losses equal to the last digit).
"""

from __future__ import annotations

import torch

IGNORE = -100  # target value that counts for nothing, as cross_entropy's ignore_index
ROWS = 32  # logit rows per chunk: 6 MB of fp32 on a 49k vocabulary; 16-64 measured as fast, 128 slower


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each target's cross-entropy (minus its log-probability), in fp32 (fp64 for fp64 logits); a target equal
    to `IGNORE` gets 0, as `cross_entropy(logits.float(), targets, reduction="none")` gives."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross-entropy: logits (tokens, vocab) and targets (tokens,), "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return _ChunkedCrossEntropy.apply(logits, targets)


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The targets' cross-entropy summed, each token's multiplied by its weight where given."""
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"cross-entropy: one weight per target, got {tuple(weights.shape)} for {tuple(targets.shape)}")
    losses = token_cross_entropy(logits, targets)
    return losses.sum() if weights is None else (losses * weights).sum()


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        ctx.save_for_backward(logits, targets)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 for bf16 and fp16, as .float() was
        picked = targets.clamp(min=0)[:, None]
        losses = torch.empty(len(targets), dtype=dtype, device=logits.device)
        for rows in _chunks(len(targets)):
            losses[rows] = -torch.log_softmax(logits[rows].to(dtype), dim=-1).gather(1, picked[rows])[:, 0]
        return losses.masked_fill_(targets == IGNORE, 0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        logits, targets = ctx.saved_tensors
        dtype = torch.promote_types(logits.dtype, torch.float32)
        picked = targets.clamp(min=0)[:, None]
        # the picked log-probabilities' gradient, as nll_loss's backward writes it (ignored targets: none)
        grad_picked_values = -grad_losses.to(dtype).masked_fill(targets == IGNORE, 0)[:, None]
        grad = torch.empty_like(logits)
        for rows in _chunks(len(targets)):
            log_probs = torch.log_softmax(logits[rows].to(dtype), dim=-1)
            grad_picked = torch.zeros_like(log_probs).scatter_(1, picked[rows], grad_picked_values[rows])
            grad[rows] = torch._log_softmax_backward_data(grad_picked, log_probs, 1, dtype)  # autograd's kernel
        return grad, None


def _chunks(count: int):
    return (slice(start, min(start + ROWS, count)) for start in range(0, count, ROWS))
