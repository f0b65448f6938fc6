"""Stage 4: LoRA fine-tuning on a prompt/completion set, loss on the completion tokens only.

    laffi train runs/demo --system laffi [train.steps=32 train.lr=3e-4]
    laffi train runs/demo --system sft
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml -m laffi.cli train runs/demo --system laffi
    torchrun --nproc_per_node 8 -m laffi.cli train runs/demo --system laffi

Batches are mostly one article's examples, each run as one packed row in which the prefix they
share runs once (laffi.stages.batches; train.group_by, train.pack). A system with auxiliary examples
(train.aux in its recipe) adds each question's auxiliary example to its batch; the step's loss is
then a mean over each side's own completion tokens (`step_weights`). A system with a preference term
(train.preference) adds each question's DPO pairs or labelled answers (KTO) to its batch (laffi.stages.preference).

Writes adapters/SYSTEM/: the adapter in PEFT's format (PeftModel.from_pretrained loads it),
train_log.jsonl (loss, lr, tokens/s per step), summary.json and config.yaml. Every
`train.checkpoint_every` steps it saves a checkpoint (adapter, optimizer, scheduler, RNG);
run the same command after a crash and training continues from there on the same batches.

Under a launcher every process runs this same function: each takes its share of every step's
examples (laffi.distributed.batching), gradients are reduced by DDP, FSDP or DeepSpeed, and only the
main process writes files. An optimizer step sees train.batch_size x train.grad_accum examples
whatever the number of processes, so N processes train the adapter that one process would.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import get_scheduler

from laffi.config import ConfigError, DataConfig, GenerateConfig, ModelConfig, TrainConfig, read_yaml, save_config
from laffi.distributed.batching import BatchPlan, configure_deepspeed, plan_batches, shard_window, totals
from laffi.distributed.checkpoint import (
    full_state_dict,
    keep_model_weights_out_of_state,
    load_checkpoint,
    recover_checkpoint,
    restore_carried,
    save_checkpoint,
)
from laffi.distributed.shards import Shard
from laffi.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunLayout, adapter_finished, adapter_weights, sidecar_config
from laffi.models import hold_heap, load_model, pick_device, quiet_peft
from laffi.packing import can_pack
from laffi.records import (
    LabelledAnswer,
    PreferencePair,
    TrainingExample,
    TrainLogEntry,
    fingerprint,
    holds_something,
    read_records,
    write_atomic,
    write_json,
    write_records,
)
from laffi.stages.batches import Row, batch_order, completion_tokens, loss_sum, packed_part_indices, tokenize, unwrapped
from laffi.stages.evaluate import DevScorer, dev_scorer
from laffi.stages.preference import PreferenceTerm, first_rows, load_reference, save_reference
from laffi.systems import Preference, System
from laffi.tree_attention import tree_attention


# What a training computes beyond its options: bumped when a default kernel or a default's value changes
# the adapter a config makes, so that what is keyed by options (an experiment's jobs) is not taken from
# an older laffi's adapters. 2 (2026-12-05): bf16 matmul tree attention on CPUs, train.lora_dropout 0.
NUMERICS = 2


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def grad_norm(norm) -> float | None:
    """The norm clip_grad_norm_ returned, as a number for the log (FSDP2 returns a DTensor)."""
    if norm is None:
        return None
    return round(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), 6)


def model_device(accelerator: Accelerator, model_config: ModelConfig) -> str:
    """The device this process computes on, which decides the model's dtype and attention kernel: under a
    launcher its own GPU (cuda:LOCAL_RANK). Under FSDP and DeepSpeed the model still loads on the CPU
    (`sharded`), and prepare() moves each shard to that GPU."""
    device = accelerator.device
    return str(device) if device.type == "cuda" else device.type


def sharded(accelerator: Accelerator) -> bool:
    """FSDP or DeepSpeed: the base model is loaded on the CPU and sharded onto the GPUs by prepare()."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def add_lora(model, model_config: ModelConfig, config: TrainConfig, autocast: bool = False):
    """The LoRA adapter on `model`, in fp32 (PEFT's default). With `autocast` (bf16 base weights) the
    adapters' matmuls run in bf16 under autocast, and PEFT's own cast of each adapted module's input to
    fp32 is switched off: it kept an fp32 copy of the input and of its dropout mask per module for the
    backward, which on a 1,900-token row of the embedded model came to about 1 GB."""
    if model_config.load_in_4bit:  # QLoRA: fp32 norms, input grads for the frozen 4-bit base
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    target = config.target_modules[0] if config.target_modules == ["all-linear"] else config.target_modules
    if target != "all-linear":
        # PEFT refuses only a list none of whose names match: Phi-3's fused qkv_proj would leave q, k and v
        # unadapted and train o_proj alone, silently
        names = [name for name, _ in model.named_modules()]
        # a target matches a module whose name is it or ends with "." and it, as PEFT matches a list's names
        if missing := [t for t in target if not any(n == t or n.endswith(f".{t}") for n in names)]:
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)} - {"lm_head"})
            raise ConfigError(f"train.target_modules: {model_config.name} has no module named {', '.join(missing)}; "
                              f"its linear layers are {', '.join(linear)} (or give all-linear)")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(model, lora)
    for module in model.modules() if autocast else ():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    if config.gradient_checkpointing:
        # the pinned transformers renamed it (the old name warns); a GPU machine's older one may have only the old name
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


def step_weights(rows: list[Row], window: list[list[int]], aux: set[int], aux_weight: float) -> dict[int, float]:
    """Each row's loss weight in one optimizer step (`window`: its batches) with auxiliary rows (`aux`):
    the step's loss is the mean over its own rows' completion tokens plus `aux_weight` times the mean
    over the auxiliary rows', so neither set's tokens outweigh the other's by their number."""
    members = [i for batch in window for i in batch]
    tokens = {side: sum(completion_tokens(rows[i]) for i in members if (i in aux) == side) for side in (False, True)}
    return {i: (aux_weight if i in aux else 1.0) / max(tokens[i in aux], 1) for i in members}


def auxiliary_rows(examples: list[TrainingExample], auxiliary: list[TrainingExample]) -> dict[int, list[int]]:
    """The auxiliary rows (row len(examples) + j: auxiliary example j) that join each own row's batch: all of a
    question's, with the question's first own example. With one answer per question, row i's is len + i; with
    several (generate.samples), a question has one example in a per-question set (sft) and one per answer
    in a feedback set, and whichever side has several, each pass over the set trains all of them once."""
    first = first_rows(examples)
    joined: dict[int, list[int]] = {}
    for j, example in enumerate(auxiliary):
        joined.setdefault(first[example.id], []).append(len(examples) + j)
    return joined


def batch_parts(rows: list[Row], picked: list[int], packed: bool, cut: bool, max_row_tokens: int,
                units: list[int] | None = None) -> list[list[int]]:
    """The forward passes of one batch (`picked`, indices into `rows`): packed rows within `max_row_tokens`
    where `cut`, else one; `units`: one key per row, rows of a key never in different passes."""
    if not (packed and cut):
        return [picked]
    return [[picked[k] for k in part] for part in packed_part_indices([rows[i] for i in picked], max_row_tokens, units)]


def backward_passes(accelerator: Accelerator, model, rows: list[Row], window: list[list[int]], plan: BatchPlan,
                    pad_id: int, packed: bool, autocast: bool, max_row_tokens: int,
                    weights: dict[int, float] | None = None, preference: PreferenceTerm | None = None) -> list[float]:
    """This process's forward and backward passes for one optimizer step (`window`: the step's
    batches), under bf16 autocast with `autocast`; `weights`: each row's loss weight (`step_weights`),
    else the mean over the step's completion tokens; `preference`: the preference term of the window's
    groups, DPO pairs or KTO's labelled answers (one process only). Returns its share of [loss, tokens,
    completion tokens], for the log, and with `preference` [summed term loss, summed reward margin (kto: signed
    reward), groups]."""
    # normalise by the completion tokens of the whole step (all processes), so the gradient
    # is that of one big batch however the step is cut into passes and processes
    window_tokens = sum(completion_tokens(rows[i]) for batch in window for i in batch)
    # accelerate divides each backward by the passes per device, and DDP, FSDP and DeepSpeed
    # average over processes; undo both (exact for powers of two, so 1 process is unchanged)
    scale = plan.processes * plan.per_device_accum
    loss_share, tokens, completion = 0.0, 0, 0
    pair_stats = [0.0, 0.0, 0]
    if preference is not None:
        weights, pair_weight = preference.step_weights(rows, window)
    for indices in shard_window(window, plan, accelerator.process_index):
        # a process with nothing left in a short step still joins the gradient reduction, weighing 0
        picked = indices or window[0][:1]
        chosen = [rows[i] for i in picked]
        # a plain single process may cut a long packed row: every process must run the same number of
        # backwards, and DeepSpeed steps its optimizer inside the last micro-batch's first backward
        alone = accelerator.distributed_type == DistributedType.NO
        parts = batch_parts(rows, picked, packed, alone, max_row_tokens,
                            preference.units(picked) if preference is not None else None)
        with (accelerator.accumulate(model),
              torch.autocast(accelerator.device.type, torch.bfloat16, enabled=autocast),
              tree_attention(unwrapped(model)) if packed else nullcontext()):  # backward inside: checkpointing reruns forwards
            for part in parts:
                part_rows = [rows[i] for i in part]
                if preference is not None:
                    loss, stats = preference.part_loss(model, rows, part, weights, pair_weight, pad_id,
                                                       accelerator.device, packed)
                    pair_stats = [a + b for a, b in zip(pair_stats, stats)]
                elif weights is None:  # one mean over the step's completion tokens, computed as it always was
                    loss = loss_sum(model, part_rows, pad_id, accelerator.device, packed) / max(window_tokens, 1)
                else:
                    loss = loss_sum(model, part_rows, pad_id, accelerator.device, packed, [weights[i] for i in part])
                accelerator.backward(loss * (scale if indices else 0.0))
                if indices:
                    loss_share += loss.item()
        if indices:
            tokens += sum(len(ids) for ids, _ in chosen)  # the examples' tokens, however many ran
            completion += sum(completion_tokens(row) for row in chosen)
    return [loss_share, tokens, completion] + (pair_stats if preference is not None else [])


@dataclass
class Continuation:
    """What a system's recipe adds to the train section, saved with it: the adapter its training
    continues (train.init, "" for a new LoRA), the weight of its auxiliary loss (0: none) and its
    preference term (None: none)."""

    init: str = ""
    aux_weight: float = 0.0
    preference: Preference | None = None


def save_train_config(layout: RunLayout, system: str, model: ModelConfig, train: TrainConfig,
                      continuation: Continuation = Continuation(), inputs: dict[str, str] | None = None) -> None:
    """save_config for the adapter, with `inputs`, the fingerprints of the sets it trains on (a rebuilt set must
    not resume or reuse an adapter of the old one). An adapter begun by an older laffi has its config under the
    old name, which is taken over first, so a resumed checkpoint is still checked against it; one whose config has
    no recipe section (laffi before train.aux) is taken to have been begun with this recipe."""
    path = layout.train_config(system)
    if layout.old_train_config(system).exists() and not path.exists():
        layout.old_train_config(system).rename(path)
    if path.exists() and "recipe" not in (saved := yaml.safe_load(path.read_text(encoding="utf-8")) or {}):
        write_atomic(path, yaml.safe_dump({**saved, "recipe": asdict(continuation)}, sort_keys=False))
    save_config(path, {"model": model, "train": train, "recipe": continuation}, outputs=training_outputs(layout, system),
                inputs=inputs)


def training_outputs(layout: RunLayout, system: str) -> list[Path]:
    """What a training writes once it has begun in earnest: until one of them holds something, its saved config is
    replaced, not compared, and the sets it was claimed on may still change (`training_begun`)."""
    return [layout.checkpoint(system), layout.train_log(system), layout.adapter(system) / ADAPTER_WEIGHTS,
            layout.reference_logps(system)]


def training_begun(layout: RunLayout, system: str) -> bool:
    return holds_something(training_outputs(layout, system))


def reference(path: Path, term: PreferenceTerm, lm, rows: list[Row], batches: list[list[int]], pad_id: int,
              device: torch.device, packed: bool, autocast: bool, max_row_tokens: int, alone: bool) -> dict:
    """The pair rows' reference log-probs for every pass the training will run: read from `path` where a
    begun training saved them, else computed now (the model at step 0, under the training's autocast and tree
    attention, in its passes) and saved there before step 1. `alone`: as `backward_passes` cuts a batch into
    passes (a plain single process; under FSDP or DeepSpeed a batch is one pass), so the parts are its parts."""
    parts = [part for batch in batches for part in batch_parts(rows, batch, packed, alone, max_row_tokens,
                                                                 term.units(batch))]
    if path.exists():
        return load_reference(path, term.needed(parts))
    with (torch.autocast(device.type, torch.bfloat16, enabled=autocast),
          tree_attention(unwrapped(lm)) if packed else nullcontext()):
        computed = term.compute_reference(lm, rows, parts, pad_id, device, packed)
    save_reference(path, computed)
    return computed


def score_on_dev(dev: DevScorer, lm, tokenizer, autocast: bool, step: int) -> dict:
    """The adapter as it is after `step`, answering dev questions: no dropout, no gradients, then back to training."""
    model = unwrapped(lm)
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(model.device.type, torch.bfloat16, enabled=autocast):
            return dev(model, tokenizer, f"at step {step}")
    finally:
        model.train()


def claim_adapter(layout: RunLayout, system: str, model: ModelConfig, train: TrainConfig, init: Path | None = None,
                  aux_weight: float | None = None, preference: Preference | None = None) -> None:
    """Before a training starts, resumes or is skipped as finished: a checkpoint left set aside by a crash put
    back, and the adapter's config saved, or checked (ConfigError) against the settings, recipe and sets
    (their fingerprints) it was begun with. `train` calls it; so does `laffi run` before it hands a training
    to a launcher, which skips a finished one."""
    continuation = Continuation(init.name if init is not None else "", aux_weight or 0.0, preference)
    sets = {"set": layout.training_set(system), "aux": layout.aux_set(system) if aux_weight is not None else None,
            "preference": layout.preference_set(system, preference.loss) if preference is not None else None}
    inputs = {name: fingerprint(path) for name, path in sets.items() if path is not None}
    if init is not None and adapter_finished(init):  # retrained since, it makes this one stale (once finished, a
        inputs["init"] = fingerprint(adapter_weights(init))  # second stage no longer needs its first: then unchecked)
    recover_checkpoint(layout.checkpoint(system))
    save_train_config(layout, system, model, train, continuation, inputs=inputs)


def system_recipe(layout: RunLayout, system: System, config: TrainConfig, init: Path | None = None) -> dict:
    """What `train` takes for a system's recipe on the run's train section `config`: its steps
    (train.steps_multiple), its train.init adapter if it has one (or `init`: the round before's,
    laffi.stages.rounds), its auxiliary weight (train.aux) and preference term."""
    return {"train": system.training(config), "init": init or (layout.adapter(system.init) if system.init else None),
            "aux_weight": system.recipe.aux_weight if system.aux else None, "preference": system.preference}


def train_system(layout: RunLayout, system: System, model: ModelConfig, data: DataConfig, generate: GenerateConfig,
                 config: TrainConfig, init: Path | None = None) -> Path:
    """`train` a system's recipe (`system_recipe`), scored on dev every train.eval_every steps (answering as
    `data` and `generate` say). One training: a system with train.rounds trains through laffi.stages.rounds."""
    return train(layout, system.name, model, dev=dev_scorer(layout, data, generate, config),
                 **system_recipe(layout, system, config, init))


def check_init(init: Path, train: TrainConfig) -> None:
    """An adapter that a training can continue (laffi.systems' train.init): finished, with this LoRA's shape."""
    if not adapter_finished(init):
        raise ConfigError(f"train.init: no finished adapter in {init}; train that system first")
    saved = json.loads((init / ADAPTER_CONFIG).read_text())
    if (saved.get("r"), saved.get("lora_alpha")) != (train.lora_r, train.lora_alpha):
        raise ConfigError(f"train.init: {init} has LoRA r={saved.get('r')}, alpha={saved.get('lora_alpha')}; this "
                          f"training has train.lora_r={train.lora_r}, train.lora_alpha={train.lora_alpha}")


def start_from(lm, init: Path, train: TrainConfig) -> None:
    """Load the trained adapter `init` into the new LoRA `lm`, to continue its training."""
    result = set_peft_model_state_dict(lm, load_file(init / ADAPTER_WEIGHTS, device="cpu"))
    if result.unexpected_keys:  # another train.target_modules
        raise ConfigError(f"train.init: {init} adapts other modules than train.target_modules={train.target_modules}")


def preference_term(layout: RunLayout, system: str, preference: Preference,
                    examples: list[TrainingExample]) -> PreferenceTerm:
    """The term of train.preference over the set's pairs (dpo) or labelled answers (kto)."""
    path = layout.preference_set(system, preference.loss)
    if preference.loss == "kto":
        return PreferenceTerm.labelled(preference, examples, read_records(path, LabelledAnswer), path)
    return PreferenceTerm.of(preference, examples, read_records(path, PreferencePair), path)


def answered_by_another_model(layout: RunLayout, model: ModelConfig) -> str | None:
    """What to say where the run's answers (which its feedback sets are made from) came from another model.name
    than the one about to train: a stage command reads --config, else RUN/config.yaml, which holds what `laffi prepare`
    or `laffi run` was given, so a model.name given to `laffi generate` alone is easily left off `laffi train`."""
    saved = sidecar_config(layout.answers)
    answered_by = (read_yaml(saved).get("model") or {}).get("name") if saved.exists() else None
    if answered_by is None or answered_by == model.name:
        return None
    return (f"{layout.answers.name} was answered by model.name={answered_by}, and this training loads model.name="
            f"{model.name}: LaFFi's feedback is on the model's own answers; give every stage the same model.name")


def train(layout: RunLayout, system: str, model: ModelConfig, train: TrainConfig, dev: DevScorer | None = None,
          init: Path | None = None, aux_weight: float | None = None, preference: Preference | None = None) -> Path:
    """`dev`: with train.eval_every, how to score the adapter on dev questions (laffi.stages.evaluate.dev_scorer).
    `init`: a trained adapter (adapters/OTHER) to continue instead of a new LoRA. `aux_weight`: every step
    also trains on the auxiliary examples (layout.aux_set) of its questions, their mean loss weighted by it.
    `preference`: every step also trains a DPO term on the pairs (layout.pair_set) of its questions, or a KTO
    term on their labelled answers (layout.labelled_set)."""
    out = layout.adapter(system)
    if init is not None and not adapter_finished(out):  # a finished second stage no longer needs its first
        check_init(init, train)
    if not layout.training_set(system).exists():  # `laffi build` writes the sets of systems.names only
        raise FileNotFoundError(f"{layout.training_set(system)}: no training set for {system}; `laffi build "
                                f"{layout.root} systems.names=...,{system}` writes it (build writes the sets of the "
                                "systems in systems.names)")
    examples = read_records(layout.training_set(system), TrainingExample)
    if not examples:
        raise ValueError(f"{layout.training_set(system)}: no training examples; its system's questions got no "
                         "feedback, or `laffi build` wrote it for no questions")
    auxiliary = [] if aux_weight is None else read_records(layout.aux_set(system), TrainingExample)
    if aux_weight is not None and list(first_rows(auxiliary)) != list(first_rows(examples)):
        raise ValueError(f"{layout.aux_set(system)}: not the questions of {layout.training_set(system)} in its order; "
                         "run `laffi build` again")
    term = None if preference is None else preference_term(layout, system, preference, examples)
    wanted = pick_device(model.device)
    if wanted.type == "cuda" and wanted.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(wanted)  # model.device=cuda:N in one process: accelerate's default is the current GPU
    # one process, or one of many under accelerate launch / torchrun (read from the environment)
    accelerator = Accelerator(cpu=wanted.type == "cpu", step_scheduler_with_optimizer=False)
    if (other := answered_by_another_model(layout, model)) and accelerator.is_main_process:
        print(f"train {system}: note: {other}", flush=True)
    plan = plan_batches(train, accelerator.num_processes)
    if train.eval_every and accelerator.num_processes > 1:
        raise ConfigError("train.eval_every: QA evaluation during training runs in one process; set it to 0 "
                          "under a launcher and score the dev set after (`laffi evaluate RUN --system NAME eval.split=dev`)")
    if aux_weight is not None and accelerator.num_processes > 1:
        raise ConfigError(f"train.aux ({system}): auxiliary examples train in one process, not under a launcher")
    if term is not None and accelerator.num_processes > 1:  # a pair's rows must run in one pass of one process
        raise ConfigError(f"train.preference ({system}): preference pairs train in one process, not under a launcher")
    if train.eval_every and dev is None:
        raise ValueError("train.eval_every is set, but no dev scorer was given (laffi.stages.evaluate.dev_scorer)")
    accelerator.gradient_accumulation_steps = plan.per_device_accum
    main = accelerator.is_main_process
    # the main process writes the config; if it differs from the one there, every process stops
    shard = Shard(accelerator.process_index, accelerator.num_processes)
    shard.on_main(lambda: claim_adapter(layout, system, model, train, init, aux_weight, preference))
    if adapter_finished(out):  # finished earlier (a crash after its weights may have left its checkpoint)
        shard.on_main(lambda: shutil.rmtree(layout.checkpoint(system), ignore_errors=True))
        return out

    set_seed(train.seed)  # the same LoRA initialisation on every process
    lm, tokenizer = load_model(replace(model, device=model_device(accelerator, model)), on_cpu=sharded(accelerator))
    rows = tokenize(tokenizer, examples + auxiliary, train.max_seq_len)
    if at_limit := sum(len(ids) == train.max_seq_len for ids, _ in rows):
        accelerator.print(f"train {system}: {at_limit} of {len(rows)} examples reach train.max_seq_len="
                          f"{train.max_seq_len} (longer ones lost prompt tokens from the left)")
    aux = set(range(len(examples), len(rows)))  # rows n, n + 1, ...: the auxiliary examples
    if term is not None:  # dpo: row n + 2k pair k's chosen completion, n + 2k + 1 its rejected one; kto: n + k
        rows += tokenize(tokenizer, term.pair_examples, train.max_seq_len)
    packed = train.pack and can_pack(lm, "train.pack", "its batches run padded", accelerator.print)
    # bf16 base weights: the fp32 adapters run under autocast, as TRL's bf16=True does
    autocast = not model.load_in_4bit and lm.dtype == torch.bfloat16
    lm = add_lora(lm, model, train, autocast)
    if init is not None:
        start_from(lm, init, train)
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad],
                                  lr=train.lr, weight_decay=train.weight_decay)
    scheduler = get_scheduler(train.schedule, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=train.steps)
    configure_deepspeed(accelerator, plan, train)
    lm, optimizer, scheduler = accelerator.prepare(lm, optimizer, scheduler)
    keep_model_weights_out_of_state(accelerator)
    if accelerator.num_processes > 1:
        set_seed(train.seed, device_specific=True)  # but each process its own dropout masks
    # accelerate calls one process "NO" (no distribution); name only a distributed kind (FSDP, DEEPSPEED...)
    kind = "" if accelerator.distributed_type == DistributedType.NO else f"{accelerator.distributed_type.value}, "
    accelerator.print(f"train {system}: {kind}{plan.describe()}"
                      + (f", each with its auxiliary example (weight {aux_weight:g})" if aux else "")
                      + (f", and {term.describe(len(first_rows(examples)))}" if term is not None else ""))

    checkpoint = layout.checkpoint(system)
    start = load_checkpoint(checkpoint, accelerator, lm) if checkpoint.exists() else 0
    log_path = layout.train_log(system)
    log = [e for e in read_records(log_path, TrainLogEntry) if e.step <= start] if log_path.exists() else []
    if train.keep_best and main:  # best/ as it was at that step: a best step after it is trained again
        restore_carried(checkpoint if start else None, layout.best_adapter(system))
    batches = batch_order(rows[:len(examples)], train.batch_size, train.steps * train.grad_accum, train.seed,
                          group_by=train.group_by)
    if aux:  # each question's auxiliary examples in its batch: in a packed row they share its QA prompt
        aux_of = auxiliary_rows(examples, auxiliary)
        batches = [[*batch, *(j for i in batch for j in aux_of.get(i, ()))] for batch in batches]
    pad_id = tokenizer.pad_token_id
    reference_seconds = None
    if term is not None:
        batches = [term.with_pairs(batch) for batch in batches]
        started = time.perf_counter()
        term.reference = reference(layout.reference_logps(system), term, lm, rows, batches, pad_id,
                                   accelerator.device, packed, autocast, train.max_row_tokens,
                                   alone=accelerator.distributed_type == DistributedType.NO)
        reference_seconds = round(time.perf_counter() - started, 2)  # about 0 where a begun training saved them
    began, tokens_seen, completion_seen = time.perf_counter(), 0, 0
    bar = tqdm(total=train.steps, initial=start, desc=f"train {system}", unit="step", disable=not main)
    if accelerator.device.type == "cpu":
        hold_heap()  # each step reuses the memory the last one freed
    for step in range(start + 1, train.steps + 1):
        window = batches[(step - 1) * train.grad_accum: step * train.grad_accum]
        weights = step_weights(rows, window, aux, aux_weight) if aux else None
        share = backward_passes(accelerator, lm, rows, window, plan, pad_id, packed, autocast, train.max_row_tokens,
                                weights, term)
        norm = accelerator.clip_grad_norm_(lm.parameters(), train.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step trained at (scheduler.step() sets the next one's)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens, step_completion, *pair_stats = totals(accelerator, share)
        tokens_seen += step_tokens
        completion_seen += step_completion
        elapsed = time.perf_counter() - began
        entry = TrainLogEntry(step, round(step_loss, 5), lr,
                              round(tokens_seen / elapsed, 1), round(completion_seen / elapsed, 1), round(elapsed, 2),
                              grad_norm(norm))
        if pair_stats and pair_stats[2]:  # the term's loss and reward margin, means over the step's groups
            entry = replace(entry, preference_loss=round(pair_stats[0] / pair_stats[2], 6),
                            reward_margin=round(pair_stats[1] / pair_stats[2], 6))
        if train.eval_every and (step % train.eval_every == 0 or step == train.steps):
            scores = score_on_dev(dev, lm, tokenizer, autocast, step)
            entry = replace(entry, dev_exact=scores["exact"], dev_f1=scores["f1"])
            if train.keep_best and scores["f1"] > max((e.dev_f1 for e in log if e.dev_f1 is not None), default=-1):
                accelerator.unwrap_model(lm).save_pretrained(layout.best_adapter(system))
        log.append(entry)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{entry.tokens_per_s:.0f}",
                        **({"dev_f1": f"{entry.dev_f1:.1f}"} if entry.dev_f1 is not None else {}))
        bar.update()
        if train.checkpoint_every and step % train.checkpoint_every == 0 and step < train.steps:
            if main:
                write_records(log_path, log)
            save_checkpoint(checkpoint, accelerator, lm, step,
                            carry=layout.best_adapter(system) if train.keep_best else None)
    bar.close()

    best = max((e for e in log if e.dev_f1 is not None), key=lambda e: e.dev_f1, default=None)  # first of ties
    if train.keep_best and best is not None:  # the best step's weights, saved when it happened
        set_peft_model_state_dict(accelerator.unwrap_model(lm),
                                  load_file(layout.best_adapter(system) / ADAPTER_WEIGHTS, device="cpu"))
    state_dict = full_state_dict(accelerator, lm)  # gathered where sharded; every process takes part
    trained = accelerator.unwrap_model(lm)
    if main:
        write_records(log_path, log)
        # the weights file marks the training finished (adapter_finished): written aside, with its config, and
        # renamed into place after summary.json, so a crash leaves either no weights or weights and summary
        staging = out.with_name(f".{out.name}.saving")
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        trained.save_pretrained(staging, **({"state_dict": state_dict} if state_dict is not None else {}))
        summary = {"system": system, "examples": len(examples), "steps": train.steps, "resumed_from_step": start,
                   "init": str(init) if init else None,
                   "aux": {"examples": len(auxiliary), "weight": aux_weight} if aux_weight is not None else None,
                   "preference": term.summary() if term is not None else None,
                   "packed": packed, "autocast": autocast, "processes": plan.processes, "per_device_batch": plan.per_device_batch,
                   "per_device_accum": plan.per_device_accum, "examples_per_step": plan.examples_per_step,
                   "first_loss": log[0].loss if log else None, "final_loss": log[-1].loss if log else None,
                   "seconds_this_process": round(time.perf_counter() - began, 2),
                   "tokens_this_process": tokens_seen,  # prompt and completion tokens trained on since it began
                   # a preference term's reference pass before step 1 (not in the seconds above; no tokens trained)
                   "reference_seconds_this_process": reference_seconds,
                   "tokens_per_s": log[-1].tokens_per_s if log else None,
                   "completion_tokens_per_s": log[-1].completion_tokens_per_s if log else None,
                   "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
                   "dev_best": {"step": best.step, "f1": best.dev_f1, "exact": best.dev_exact} if best else None,
                   "kept": f"step {best.step} (best dev F1)" if train.keep_best and best else "last step",
                   "trainable_parameters": sum(p.numel() for p in trained.parameters() if p.requires_grad),
                   # which of two trainings of the same system is the later (experiments' `current_jobs`): a
                   # copy of a directory keeps it where it may not keep file times
                   "finished_at": datetime.now(timezone.utc).isoformat()}
        write_json(layout.train_summary(system), summary)
        for saved in sorted(staging.iterdir(), key=lambda p: p.name == ADAPTER_WEIGHTS):  # the weights last
            os.replace(saved, out / saved.name)
        staging.rmdir()
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(layout.best_adapter(system), ignore_errors=True)
    accelerator.wait_for_everyone()  # no process returns before the adapter is on disk
    return out
