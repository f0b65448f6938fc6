"""laffi's speed, side by side with its peers, on the embedded model and data: one command.

    python benchmarks/speed.py                      # about 6-10 minutes on 2 CPU cores
    python benchmarks/speed.py --json benchmarks/results/speed.json --train-steps 8 --questions 32

- training: laffi's LoRA loop and TRL's SFTTrainer on the same batches (benchmarks/train_speed.py):
  tokens/s, completion tokens/s, peak memory, and the FLOP/s achieved as a fraction of the peak;
- generation over held-out prompts (benchmarks/generate_speed.py): the in-process backend at
  batch 1 and larger batches, bf16 for reference, and llama.cpp on the same GGUF when
  llama-cpp-python is installed;
- the peak: the best FLOP/s of large matmuls in the training dtype here (benchmarks/flops.py).
Every measurement runs in a process of its own. Prints a table and writes JSON (the machine, the
load average before and after each measurement, every number). Other work on the machine slows
everything down: look at the load column before believing a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flops import DTYPES, lora_params, peak, training_flops  # noqa: E402
from speed_setup import setup  # noqa: E402


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def child(script: str, *args: str) -> dict:
    """Run one measurement in a fresh process; it writes its JSON to a temporary file."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(HERE / script), *args, "--json", out.name]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
        return json.loads(Path(out.name).read_text())


def with_flops(row: dict, model_config, lora: int, peak_flops: float) -> dict:
    lengths = row["lengths"]
    total = training_flops(model_config, lengths, row["completion_tokens"], lora)
    row["flops_per_step"] = total / row["measured_steps"]
    row["achieved_flops"] = total / row["seconds"]
    row["fraction_of_peak"] = row["achieved_flops"] / peak_flops
    return row


def table(result: dict) -> str:
    m, p = result["machine"], result["peak"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, torch {m['torch']} "
             f"({m['torch_threads']} threads){', ' + m['gpu'] if m['gpu'] else ''}",
             f"peak on {p['device']}, measured: {p['fp32_flops'] / 1e9:.0f} GFLOP/s fp32 matmul, "
             f"{p['bf16_flops'] / 1e9:.0f} bf16; the fraction is of {p['training_dtype']}'s",
             "", f"training: {result['train_setup']}",
             "| tool | s/step | tokens/s | completion tokens/s | peak memory MB | GFLOP/s | fraction of peak | load |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["train"]:
        lines.append(f"| {row['tool']} | {row['seconds_per_step']:.2f} | {row['tokens_per_s']:.0f} | "
                     f"{row['completion_tokens_per_s']:.1f} | {row['peak_memory_mb']:.0f} | "
                     f"{row['achieved_flops'] / 1e9:.1f} | {row['fraction_of_peak']:.2f} | "
                     f"{row['load_before']:.1f}-{row['load_after']:.1f} |")
    if len(result["train"]) == 2:
        lines.append(f"laffi / TRL tokens/s: {result['train_ratio']:.2f}x")
    lines += ["", f"generation: {result['generate_setup']}",
              "| backend | batch | new tokens/s | seconds | same answers as fp32 batch 1 | load |",
              "|---|---:|---:|---:|---|---|"]
    for row in result["generate"]:
        lines.append(f"| {row['backend']} | {row['batch_size']} | {row['new_tokens_per_s']:.1f} | "
                     f"{row['seconds']:.1f} | "
                     f"{row.get('same_answers', '')} | {row['load_before']:.1f}-{row['load_after']:.1f} |")
    lines += [f"llama.cpp: {result['llamacpp_skipped']}"] if result.get("llamacpp_skipped") else []
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/bench-speed", help="made once by benchmarks/speed_setup.py")
    parser.add_argument("--json", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--train-steps", type=int, default=8, help="the first is a warm-up, not measured")
    parser.add_argument("--questions", type=int, default=32, help="held-out questions for generation")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--skip", default="", help="comma-separated: trl, llama.cpp, bf16")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "1" not in args.batch_sizes.split(","):
        parser.error("--batch-sizes: include 1, the reference the other answers are compared with")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()

    run = setup(args.run_dir)
    from laffi.models import load_model  # converts the embedded GGUF once (about 30 s), before any timing
    model, _ = load_model(run.model)
    model_config, device, dtype = model.config, model.device, next(model.parameters()).dtype
    del model
    result = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": os.getloadavg()}
    training_dtype = next(name for name, d in DTYPES.items() if d == dtype)
    result["peak"] = peak(str(device), training_dtype)
    peak_flops = result["peak"][f"{training_dtype}_flops"]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children measure their GPU memory; this process should hold little
    lora = lora_params(model_config, run.train.lora_r, run.train.target_modules)
    steps = str(args.train_steps)
    result["train"] = [with_flops(child("train_speed.py", args.run_dir, "--tool", tool, "--steps", steps),
                                  model_config, lora, peak_flops)
                       for tool in ("laffi", "trl") if tool not in skip]
    if len(result["train"]) == 2:
        result["train_ratio"] = result["train"][0]["tokens_per_s"] / result["train"][1]["tokens_per_s"]
    first = result["train"][0]
    result["train_setup"] = (f"LaFFi set, batch {first['batch_size']}, LoRA r={first['lora_r']} on "
                             f"{','.join(first['target_modules'])}, steps 2-{args.train_steps} of {args.train_steps} "
                             f"({first['tokens']} tokens, {first['completion_tokens']} completion tokens)")

    questions = str(args.questions)
    generated = child("generate_speed.py", args.run_dir, "--batch-sizes", args.batch_sizes, "--questions", questions)
    rows = generated["rows"]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as answers:  # batch 1, fp32: the reference
        json.dump(next(r["answers"] for r in rows if r["batch_size"] == 1), answers)
        answers.flush()
        if "bf16" not in skip:  # for reference: what bf16 would give here, at the best batch size
            best = max(rows, key=lambda r: r["new_tokens_per_s"])["batch_size"]
            bf16 = child("generate_speed.py", args.run_dir, "--batch-sizes", str(best), "--questions", questions,
                         "--answers", answers.name, "model.dtype=bfloat16")
            rows += [{**row, "backend": "transformers bf16"} for row in bf16["rows"]]
        if "llama.cpp" not in skip:
            cpp = child("generate_speed.py", args.run_dir, "--backend", "llama.cpp", "--questions", questions,
                        "--answers", answers.name)
            rows += cpp["rows"]
            if cpp.get("skipped"):
                result["llamacpp_skipped"] = cpp["skipped"]
    result["generate"] = rows
    result["generate_setup"] = (f"{args.questions} held-out questions, default preset prompts, greedy, "
                                f"at most {run.generate.max_new_tokens} new tokens, stop at newline")
    result["load_end"] = os.getloadavg()
    result["minutes"] = round((time.time() - started) / 60, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\n{result['minutes']} minutes; JSON: {out}")


if __name__ == "__main__":
    main()
