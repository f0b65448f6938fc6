"""Resumable training checkpoints, for one process or many (DDP, FSDP, DeepSpeed).

    adapters/SET/checkpoint/
      adapter.safetensors  the LoRA weights at that step (PEFT key names)
      state/               accelerate's save_state: optimizer, scheduler, every process's RNG;
                           under FSDP and DeepSpeed also the sharded model, which they restore
      carried/             train.keep_best's best adapter as it was at that step
      step.json            {"step": 8, "processes": 2}

Every process takes part (sharded states are saved by their owners), but each file has one
writer. The checkpoint is assembled in checkpoint.tmp and renamed once every process is done, so
a crash mid-save never leaves a half checkpoint; the one before is set aside (checkpoint.old) until
then, and put back by `recover_checkpoint` if the crash came between the two renames. Multi-node
runs need the run directory on a file system every node sees.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from laffi.config import ConfigError

CARRIED = "carried"


def sharded(accelerator: Accelerator) -> bool:
    """True when each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


def full_state_dict(accelerator: Accelerator, model) -> dict | None:
    """The whole model's weights where they are sharded (a collective: every process calls it);
    None where every process holds them anyway, so nothing is gathered or copied."""
    return accelerator.get_state_dict(model) if sharded(accelerator) else None


def lora_state_dict(accelerator: Accelerator, model) -> dict:
    return get_peft_model_state_dict(accelerator.unwrap_model(model), state_dict=full_state_dict(accelerator, model))


def keep_model_weights_out_of_state(accelerator: Accelerator) -> None:
    """accelerate's save_state would write the whole base model at every checkpoint; the LoRA
    weights go to adapter.safetensors instead. (FSDP and DeepSpeed save their sharded model
    themselves and never reach these hooks with a model.)"""
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())


def deepspeed_kwargs(accelerator: Accelerator, saving: bool) -> dict:
    """DeepSpeed saves its engine's whole module; leave the frozen base weights out of it."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return {}
    return {"exclude_frozen_parameters": True} if saving else {"load_module_strict": False}


def save_checkpoint(directory: Path, accelerator: Accelerator, model, step: int, carry: Path | None = None) -> None:
    """`carry`: a folder the resumed training needs as it was at this step (train.keep_best's best adapter so
    far), copied in as carried/ (`restore_carried`)."""
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"), **deepspeed_kwargs(accelerator, saving=True))
    adapter = lora_state_dict(accelerator, model)
    if accelerator.is_main_process:
        save_file(adapter, tmp / "adapter.safetensors")
        if carry is not None and carry.exists():
            shutil.copytree(carry, tmp / CARRIED)
        (tmp / "step.json").write_text(json.dumps({"step": step, "processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # the old one set aside, not deleted, until the new one is in its place
        old = set_aside(directory)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def restore_carried(directory: Path | None, to: Path) -> None:
    """`to` as the checkpoint in `directory` carried it (none there, or no checkpoint: removed), so that what a
    crashed training wrote there after its last checkpoint is not taken for the resumed one's."""
    shutil.rmtree(to, ignore_errors=True)
    if directory is not None and (directory / CARRIED).exists():
        shutil.copytree(directory / CARRIED, to)


def set_aside(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def recover_checkpoint(directory: Path) -> None:
    """After a crash between setting the last checkpoint aside and renaming the new one into its place, put
    the last one back (the steps since are trained again). Called by the main process before resuming."""
    if not directory.exists() and set_aside(directory).exists():
        set_aside(directory).rename(directory)


def load_checkpoint(directory: Path, accelerator: Accelerator, model) -> int:
    """Restore weights, optimizer, scheduler and RNG; returns the step the checkpoint was taken at."""
    info = json.loads((directory / "step.json").read_text())
    if info["processes"] != accelerator.num_processes:
        # each process's RNG and (under FSDP/DeepSpeed) its shard were saved per process
        raise ConfigError(f"{directory} was written by {info['processes']} processes, this run has "
                          f"{accelerator.num_processes}; resume with {info['processes']} (laffi run --num-processes, "
                          f"accelerate launch --num_processes, torchrun --nproc_per_node), or delete {directory} "
                          "to train from step 0")
    accelerator.load_state(str(directory / "state"), **deepspeed_kwargs(accelerator, saving=False))
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):  # they load their own
        set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(directory / "adapter.safetensors"))
    return info["step"]
