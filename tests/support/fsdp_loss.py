"""The completion-only loss through FSDP2, for tests/stages/test_completion_loss.py.

    torchrun --standalone --nproc_per_node 2 tests/support/fsdp_loss.py TINY_MODEL_DIR

Shards a LoRA-wrapped tiny model with `fully_shard` over 2 CPU processes (gloo) and checks that
`completion_loss_sum` gives the full-logits loss and the same LoRA gradients. (accelerate turns an
FSDP config into plain multi-CPU on a machine without GPUs, so this calls FSDP2 directly.)
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))  # test_completion_loss

from test_completion_loss import full_logits_loss, rows  # noqa: E402

from laffi.config import load_config  # noqa: E402
from laffi.stages.batches import collate, completion_loss_sum  # noqa: E402
from laffi.stages.train import add_lora  # noqa: E402


def loss_and_gradients(tiny: str, loss_fn, mesh) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    config = load_config(overrides=[f"model.name={tiny}", "train.lora_dropout=0"])
    model = add_lora(model, config.model, config.train)
    for name, p in model.named_parameters():  # B starts at zero; move it so the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    loss = loss_fn(model, collate(rows(model.config.vocab_size), 0, torch.device("cpu")))
    loss.backward()
    return loss.detach(), {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    reference, reference_grads = loss_and_gradients(sys.argv[1], full_logits_loss, mesh)
    loss, grads = loss_and_gradients(sys.argv[1], completion_loss_sum, mesh)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    assert grads.keys() == reference_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4, atol=1e-6)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every check has passed by here. Skip interpreter finalization: gloo's C++ worker threads can still
    # hold tensors then, and freeing them without a live interpreter aborts the process now and then
    # ("terminate called without an active exception", 1 run in ~20 under load; pytorch/pytorch#179291).
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
