"""How an optimizer step's examples are split over processes (DDP, FSDP, DeepSpeed).

    accelerate launch --config_file configs/accelerate/multi-gpu.yaml -m laffi.cli train RUN --system laffi
    torchrun --nproc_per_node 8 -m laffi.cli train RUN --system laffi

The config says how many examples one optimizer step sees: `train.batch_size x train.grad_accum`,
in total, whatever the number of processes. One process runs it as `grad_accum` forward passes
of `batch_size` examples, exactly as before there were several. N processes each take 1/N of
the step's examples, in forward passes of at most `batch_size` examples (the memory limit), and
as few of them as possible. So the gradient, and the adapter, do not depend on N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from laffi.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class BatchPlan:
    processes: int
    per_device_batch: int  # examples per forward pass on one device, at most
    per_device_accum: int  # forward passes per optimizer step on each device
    examples_per_step: int  # on all devices together: train.batch_size x train.grad_accum

    def describe(self) -> str:
        return (f"{self.processes} process(es) x {self.per_device_accum} forward pass(es) of up to "
                f"{self.per_device_batch} example(s) = {self.examples_per_step} examples per optimizer step")


def plan_batches(config: TrainConfig, processes: int) -> BatchPlan:
    total = config.batch_size * config.grad_accum
    if processes == 1:
        return BatchPlan(1, config.batch_size, config.grad_accum, total)
    if total % processes:
        raise ConfigError(
            f"train.batch_size x train.grad_accum: {config.batch_size} x {config.grad_accum} = {total} examples per "
            f"step cannot be split evenly over {processes} processes; make it a multiple of {processes}")
    share = total // processes
    # the largest forward pass that fits the memory limit and divides the share evenly
    batch = max(b for b in range(1, min(share, config.batch_size) + 1) if share % b == 0)
    return BatchPlan(processes, batch, share // batch, total)


def shard_window(window: list[list[int]], plan: BatchPlan, rank: int) -> list[list[int]]:
    """This process's forward passes for one optimizer step: `plan.per_device_accum` lists of indices.

    `window` is the step's batches as one process would run them (grouped by train.group_by: one
    article's examples together by default, similar lengths with length; the last one of an epoch may
    be short). A list may come back empty when the step has fewer examples than
    planned; the caller still runs a pass for it, since every process must join every
    gradient reduction.
    """
    if plan.processes == 1:
        return [list(batch) for batch in window]  # exactly the single-process batches
    flat = [i for batch in window for i in batch]
    size, n = plan.per_device_batch, plan.processes
    # consecutive examples are alike (one article's, or of similar lengths); pass k of every process comes
    # from the same stretch, so processes wait little for each other at the gradient reduction
    return [flat[(k * n + rank) * size:(k * n + rank + 1) * size] for k in range(plan.per_device_accum)]


def totals(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Sums over processes of per-process numbers (loss share, token counts) for the log."""
    if accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return summed.tolist()


def configure_deepspeed(accelerator: Accelerator, plan: BatchPlan, config: TrainConfig) -> None:
    """DeepSpeed runs accumulation and clipping itself; give it laffi's numbers, so the shipped
    DeepSpeed configs need none of their own. (Without a dataloader accelerate cannot infer the
    micro-batch size.)"""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    settings = accelerator.state.deepspeed_plugin.deepspeed_config
    settings["train_micro_batch_size_per_gpu"] = plan.per_device_batch
    settings["gradient_accumulation_steps"] = plan.per_device_accum
    settings["gradient_clipping"] = config.max_grad_norm
