"""laffi.cross_entropy against torch's cross-entropy on upcast logits, the computation it replaces."""

import pytest
import torch

from laffi import cross_entropy
from laffi.cross_entropy import IGNORE, summed_cross_entropy, token_cross_entropy


def reference(logits, targets, weights):
    if weights is None:
        return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
    losses = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="none")
    return (losses * weights).sum()


def loss_and_grad(loss_fn, logits, targets, weights, scale):
    leaf = logits.detach().clone().requires_grad_()
    loss = loss_fn(leaf, targets, weights)
    (loss * scale).backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_gradient_are_those_of_cross_entropy_on_upcast_logits(monkeypatch, dtype, weighted):
    monkeypatch.setattr(cross_entropy, "ROWS", 4)  # 11 rows: chunks of 4, 4 and 3
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(11, 300, generator=generator) * 4).to(dtype)
    targets = torch.randint(0, 300, (11,), generator=generator)
    targets[[2, 7]] = IGNORE
    weights = torch.rand(11, generator=generator) if weighted else None
    scale = 0.37  # the step's 1 / tokens times accelerate's factor: not a power of two
    loss, grad = loss_and_grad(summed_cross_entropy, logits, targets, weights, scale)
    expected_loss, expected_grad = loss_and_grad(reference, logits, targets, weights, scale)
    assert grad.dtype == dtype
    assert torch.equal(grad, expected_grad)  # bit for bit: the same fp32 operations per row
    assert torch.allclose(loss, expected_loss, rtol=1e-6)  # summed over chunks: the order differs
    assert torch.equal(grad[[2, 7]], torch.zeros_like(grad[[2, 7]]))


def test_matches_the_analytic_gradient_in_fp64():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 6, IGNORE, 3, 3])
    weights = torch.rand(5, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda x: summed_cross_entropy(x, targets, weights), (logits,))


def test_an_ignored_target_with_an_impossible_logit_adds_nothing():
    logits = torch.tensor([[float("-inf"), 0.0], [1.0, 2.0]], requires_grad=True)  # IGNORE reads as index 0
    loss = summed_cross_entropy(logits, torch.tensor([IGNORE, 1]))
    loss.backward()
    assert torch.isclose(loss, reference(logits.detach(), torch.tensor([IGNORE, 1]), None))
    assert torch.isfinite(logits.grad).all()


def test_token_losses_are_those_of_cross_entropy_without_reduction(monkeypatch):
    """What DPO's sequence log-probabilities take: a gradient per token, not one for their sum."""
    monkeypatch.setattr(cross_entropy, "ROWS", 3)
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 50, generator=generator).bfloat16()
    targets = torch.randint(0, 50, (7,), generator=generator)
    targets[0] = IGNORE
    grad_tokens = torch.randn(7, generator=generator)

    def run(fn):
        leaf = logits.detach().clone().requires_grad_()
        losses = fn(leaf)
        losses.backward(grad_tokens)
        return losses.detach(), leaf.grad

    losses, grad = run(lambda x: token_cross_entropy(x, targets))
    expected, expected_grad = run(lambda x: torch.nn.functional.cross_entropy(x.float(), targets, reduction="none"))
    assert torch.equal(losses, expected) and torch.equal(grad, expected_grad)


def test_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="logits \\(tokens, vocab\\)"):
        summed_cross_entropy(torch.zeros(1, 3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one weight per target"):
        summed_cross_entropy(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), torch.ones(2))
