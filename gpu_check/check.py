"""The prepared GPU check: laffi's CUDA paths on a tiny model, in a few minutes, with no network.

    bash gpu_check/run.sh                      # on the GPU machine: installs the wheelhouse, then this
    python gpu_check/check.py --device cpu     # the same parts on a CPU (tests/test_gpu_check.py)

It makes a tiny Llama, its tokenizer (byte-level BPE, trained here) and a SQuAD-format data file on
the spot, then runs laffi's own code in four parts, each timed and reported PASS or FAIL:

- setup: the tiny model, tokenizer and data;
- placement: `load_model` with model.device=auto and model.dtype=auto (cuda and bf16 on an H100):
  where every parameter is, and a forward under bf16 autocast;
- pipeline: `laffi prepare, generate, annotate, build, train --system sft` and `--system laffi-aux-half
  train.pack=false`, `evaluate --system base and sft` on the held-out questions and sft's on dev in padded
  batches (`generate.share_prefix=false`), in this process: decoding with shared-prefix answering and with
  model.generate, packed and padded LoRA training under autocast, an auxiliary loss, checkpoints, and decoding
  with the adapter beside the bf16 weights (merged into them only in fp32, as on a CPU without bf16 units);
- accelerate: `accelerate launch --config_file configs/accelerate/one-gpu.yaml -m laffi.cli train
  RUN --system laffi` in a process of its own (on a CPU: --cpu, one process, no mixed precision).

Writes a JSON summary (--summary) and exits 1 if any part failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)  # no network; the accelerate launch inherits these

REPO = Path(__file__).resolve().parent.parent
ONE_GPU = REPO / "configs" / "accelerate" / "one-gpu.yaml"
PARTS = ("setup", "placement", "pipeline", "accelerate")
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


# --- what is made on the spot -------------------------------------------------------------------

TOWNS = ["Alvar", "Bemo", "Corrin", "Dalsk", "Evenmoor", "Farrow", "Glenna", "Holt", "Istra", "Jorvik", "Kelda",
         "Lunde"]
RIVERS = ["Aire", "Brenn", "Calder", "Dove", "Esk", "Frome", "Greta", "Hodder"]
PEOPLE = ["Ada Marsh", "Bram Tolle", "Cora Venn", "Dirk Holm", "Edda Pryce", "Finn Oakes", "Gwen Rook", "Hugo Lind"]
GOODS = ["wool", "cheese", "glass", "copper bells", "rope", "apple cider", "slate", "clocks"]


def make_squad(path: Path, articles: int = 10, seed: int = 0) -> dict:
    """A SQuAD v1.1 JSON file: one article per town, one paragraph of four facts, a question on each."""
    rng = random.Random(seed)
    data, questions = [], 0
    for a, town in enumerate(TOWNS[:articles]):
        year, river = str(rng.randint(1100, 1950)), rng.choice(RIVERS)
        mayor, good = rng.choice(PEOPLE), rng.choice(GOODS)
        facts = [(f"{town} was founded in {year}.", f"When was {town} founded?", year),
                 (f"The town lies on the river {river}, north of the hills.", f"Which river does {town} lie on?",
                  river),
                 (f"Its mayor is {mayor}, elected by the guilds.", f"Who is the mayor of {town}?", mayor),
                 (f"{town} is known for its {good} across the region.", f"What is {town} known for?", good)]
        context = " ".join(sentence for sentence, _, _ in facts)
        qas = [{"id": f"{town.lower()}-{k}", "question": question,
                "answers": [{"text": answer, "answer_start": context.index(answer)}]}
               for k, (_, question, answer) in enumerate(facts)]
        questions += len(qas)
        data.append({"title": town, "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}, indent=1), encoding="utf-8")
    return {"articles": len(data), "questions": questions}


def make_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained on `corpus` (any text round-trips), with <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=4096, **SPECIAL)


def make_model(folder: Path, data_file: Path) -> dict:
    """The tiny Llama (2 layers, hidden 64, 4 heads, 2 key/value heads) and its tokenizer, saved in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = json.loads(data_file.read_text(encoding="utf-8"))
    corpus = [p["context"] for a in root["data"] for p in a["paragraphs"]]
    corpus += [qa["question"] for a in root["data"] for p in a["paragraphs"] for qa in p["qas"]]
    corpus += ["Answer the question from the passage. Passage: Question: Answer: Feedback: The answer is correct, "
               "incorrect, partly right; the passage says so. A good answer is short."] * 4
    tokenizer = make_tokenizer(corpus)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"vocab": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())}


# --- the parts ----------------------------------------------------------------------------------

def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected(device: str):
    """(device type, dtype) that model.device and model.dtype=auto must give on this machine."""
    import torch

    from laffi.models import pick_dtype

    if device == "cuda":
        # bf16 units (compute capability 8+): torch's default answer counts emulation (V100, T4), laffi's does not
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return "cpu", pick_dtype("auto", torch.device("cpu"))  # bf16 where the CPU has bf16 units


def part_setup(ctx: dict) -> dict:
    data = make_squad(ctx["data"])
    return {**data, **make_model(ctx["model"], ctx["data"])}


def part_placement(ctx: dict) -> dict:
    import torch

    from laffi.config import ModelConfig
    from laffi.models import load_model, pick_device

    device_type, dtype = expected(ctx["device"])
    if ctx["device"] == "cuda":
        check(torch.cuda.is_available(), "torch.cuda.is_available() is False")
        check(pick_device("auto").type == "cuda", f"model.device=auto picked {pick_device('auto')}, not cuda")
    config = ModelConfig(name=str(ctx["model"]), device=ctx["model_device"], dtype="auto", threads=ctx["threads"])
    model, tokenizer = load_model(config)
    placed = {f"{p.device.type}/{str(p.dtype).removeprefix('torch.')}" for p in model.parameters()}
    check(placed == {f"{device_type}/{str(dtype).removeprefix('torch.')}"},
          f"parameters are {sorted(placed)}, expected {device_type}/{dtype}")
    ids = tokenizer("Istra was founded in 1820. When was Istra founded?", return_tensors="pt").to(model.device)
    with torch.no_grad(), torch.autocast(device_type, torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = model(**ids).logits
    check(bool(torch.isfinite(logits).all()), "the forward pass gave non-finite logits")
    details = {"device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
               "attention": getattr(model.config, "_attn_implementation", None),
               "logits_dtype": str(logits.dtype).removeprefix("torch.")}
    if device_type == "cuda":
        details["memory_allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    del model
    return details


def overrides(ctx: dict) -> list[str]:
    """A whole run made small (tests/conftest.py's tiny_overrides, on the data made here)."""
    return [f"model.name={ctx['model']}", f"model.device={ctx['model_device']}", f"model.threads={ctx['threads']}",
            f"data.source={ctx['data']}", "data.eval_size=8", "data.train_size=8", "data.dev_size=4",
            "generate.max_new_tokens=8", "generate.batch_size=4", "train.steps=4", "train.warmup_steps=1",
            "train.batch_size=2", "train.max_seq_len=256", "train.checkpoint_every=2", "eval.bootstrap_samples=200",
            "systems.names=base,sft,laffi,laffi-aux-half"]


def laffi_cli(*argv: str) -> None:
    from laffi.cli import main

    print(f"$ laffi {' '.join(argv[:3])} ...", flush=True)
    code = main(list(argv))
    check(code == 0, f"laffi {' '.join(argv[:3])} exited {code}")


def check_training(ctx: dict, system: str, processes: int) -> dict:
    from laffi.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunLayout

    layout = RunLayout(ctx["run"])
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        check((layout.adapter(system) / name).is_file(), f"{layout.adapter(system) / name} is missing")
    summary = json.loads(layout.train_summary(system).read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in read_jsonl(layout.train_log(system))]
    check(len(losses) == summary["steps"] == 4,
          f"{system}: {len(losses)} logged steps, {summary['steps']} in the summary, expected 4")
    check(all(math.isfinite(loss) for loss in losses), f"{system}: non-finite training loss {losses}")
    import torch

    bf16 = expected(ctx["device"])[1] == torch.bfloat16
    check(summary["autocast"] == bf16, f"{system}: autocast={summary['autocast']}, expected {bf16} (bf16 base weights)")
    check(summary["processes"] == processes, f"{system}: {summary['processes']} processes, expected {processes}")
    check(summary["peak_memory_mb"] > 0, f"{system}: peak memory {summary['peak_memory_mb']} MB")
    return {key: summary[key] for key in ("first_loss", "final_loss", "autocast", "packed", "processes",
                                          "peak_memory_mb", "tokens_per_s", "seconds_this_process")}


def part_pipeline(ctx: dict) -> dict:
    from laffi.layout import RunLayout

    run, extra = str(ctx["run"]), overrides(ctx)
    layout = RunLayout(ctx["run"])
    laffi_cli("prepare", run, *extra)
    laffi_cli("generate", run, *extra)
    answers = read_jsonl(layout.answers)
    check(len(answers) == 8, f"{len(answers)} answers, expected 8")
    decoded = sum(bool(a["output"]) for a in answers)
    check(decoded > 0, "decoding produced no text for any of the 8 train questions")
    laffi_cli("annotate", run, *extra)
    laffi_cli("build", run, *extra)
    laffi_cli("train", run, "--system", "sft", *extra)
    details = {"answers": len(answers), "answers_with_text": decoded, "train_sft": check_training(ctx, "sft", 1)}
    # an auxiliary loss (laffi-aux-half), in padded batches rather than packed rows
    laffi_cli("train", run, "--system", "laffi-aux-half", *extra, "train.pack=false")
    details["train_laffi_aux_half_padded"] = check_training(ctx, "laffi-aux-half", 1)
    check(not details["train_laffi_aux_half_padded"]["packed"], "train.pack=false trained packed rows")
    # held-out questions with shared-prefix answering; dev questions with padded batches (model.generate)
    for system, split, size, more in (("base", "heldout", 8, []), ("sft", "heldout", 8, []),
                                      ("sft", "dev", 4, ["eval.split=dev", "generate.share_prefix=false"])):
        laffi_cli("evaluate", run, "--system", system, *extra, *more)
        metrics = json.loads(layout.metrics(system, split).read_text(encoding="utf-8"))
        predictions = read_jsonl(layout.predictions(system, split))
        check(metrics["total"] == len(predictions) == size, f"evaluate {system} ({split}): {metrics['total']} scored, "
                                                            f"{len(predictions)} predictions, expected {size}")
        details[f"eval_{system}_{split}"] = {"exact": metrics["exact"], "f1": metrics["f1"], "total": metrics["total"]}
    return details


def part_accelerate(ctx: dict) -> dict:
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if ctx["device"] == "cuda":
        launch += ["--config_file", str(ONE_GPU)]
    else:  # one-gpu.yaml asks for a GPU; the same launch on the CPU
        launch += ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]
    command = [*launch, "-m", "laffi.cli", "train", str(ctx["run"]), "--system", "laffi", *overrides(ctx)]
    print("$ " + " ".join(command[:12]) + " ...", flush=True)
    done = subprocess.run(command, timeout=ctx["accelerate_timeout"])
    check(done.returncode == 0, f"accelerate launch exited {done.returncode}")
    return {"train_laffi": check_training(ctx, "laffi", 1)}


# --- running them -------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata

    found = {"python": platform.python_version(), "executable": sys.executable}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "pydantic", "pydantic-core",
                 "typing-extensions"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    import torch

    import laffi

    found["laffi_from"] = ", ".join(laffi.__path__)  # a namespace package: no __file__
    found["cuda"] = torch.version.cuda
    found["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["bf16_supported"] = torch.cuda.is_bf16_supported(including_emulation=False)
    return found


def third_party_modules() -> list[str]:
    """The non-standard-library packages this process imported: what the wheelhouse must provide."""
    tops = {name.split(".")[0] for name in list(sys.modules)}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default): model.device=auto must pick it; cpu: model.device=cpu")
    parser.add_argument("--work", help="where the model, data and run go (default: a new temporary folder)")
    parser.add_argument("--summary", help="the JSON summary (default: WORK/gpu_check.json)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS[1:], help="parts to leave out")
    parser.add_argument("--threads", type=int, default=0, help="model.threads (CPU threads; 0: torch's choice)")
    parser.add_argument("--accelerate-timeout", type=int, default=300, help="seconds for the accelerate launch")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="laffi-gpu-check-")).resolve()
    if (work / "run").exists():  # a fresh run each time: laffi would resume the old one
        shutil.rmtree(work / "run")
    (work / "model").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LAFFI_CACHE", str(work / "cache"))
    summary_path = Path(args.summary) if args.summary else work / "gpu_check.json"
    ctx = {"device": args.device, "model_device": "auto" if args.device == "cuda" else "cpu", "threads": args.threads,
           "model": work / "model", "data": work / "squad-tiny.json", "run": work / "run",
           "accelerate_timeout": args.accelerate_timeout}
    summary = {"device": args.device, "work": str(work), "passed": False, "parts": {}}
    try:
        summary["versions"] = versions()
    except Exception as error:  # torch or laffi does not import: nothing else can run
        traceback.print_exc()
        summary["versions"] = {"error": f"{type(error).__name__}: {error}"}
    print("versions: " + json.dumps(summary["versions"]), flush=True)

    runners = {"setup": part_setup, "placement": part_placement, "pipeline": part_pipeline,
               "accelerate": part_accelerate}
    needs = {"placement": "setup", "pipeline": "setup", "accelerate": "pipeline"}
    no_gpu = args.device == "cuda" and not summary["versions"].get("cuda_available")
    for name in PARTS:
        if name in args.skip:
            summary["parts"][name] = {"status": "SKIP"}
            continue
        if "error" in summary["versions"]:
            summary["parts"][name] = {"status": "FAIL", "error": "torch or laffi does not import"}
            continue
        if no_gpu and name != "setup":  # model.device=auto would quietly run it all on the CPU
            summary["parts"][name] = {"status": "FAIL", "error": "torch sees no CUDA GPU (--device cpu: on the CPU)"}
            continue
        if name in needs and summary["parts"][needs[name]]["status"] != "PASS":
            skipped = summary["parts"][needs[name]]["status"] == "SKIP"
            why = f"needs part {needs[name]}, which {'was skipped' if skipped else 'failed'}"
            summary["parts"][name] = {"status": "SKIP" if skipped else "FAIL", "error": why}
            continue
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            details = runners[name](ctx)
            summary["parts"][name] = {"status": "PASS", **details}
        except BaseException as error:  # a timeout, an assertion, an exception from laffi: this part failed
            if isinstance(error, KeyboardInterrupt):
                raise
            traceback.print_exc()
            summary["parts"][name] = {"status": "FAIL", "error": f"{type(error).__name__}: {error}"}
        summary["parts"][name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"=== {name}: {summary['parts'][name]['status']} ({summary['parts'][name]['seconds']} s) ===",
              flush=True)

    summary["seconds"] = round(time.perf_counter() - began, 1)
    summary["passed"] = all(p["status"] in ("PASS", "SKIP") for p in summary["parts"].values())
    summary["third_party_modules"] = third_party_modules()
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\nGPU check" if args.device == "cuda" else "\nGPU check (on the CPU)")
    for name, part in summary["parts"].items():
        print(f"  {part['status']:4}  {name:10} {part.get('seconds', '')!s:>6} s  {part.get('error', '')}")
    print(f"{'PASS' if summary['passed'] else 'FAIL'} in {summary['seconds']} s; summary: {summary_path}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
