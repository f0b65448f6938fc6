"""laffi's speed, side by side with its peers, on the embedded model and data: one command.

    python benchmarks/speed.py                      # 17-25 minutes on 2 CPU cores (docs/speed.md)
    python benchmarks/speed.py --json benchmarks/results/speed.json --train-steps 8 --questions 32

- training (benchmarks/train_speed.py): laffi's default on the SFT, LaFFi and laffi-aux-half sets,
  each beside laffi as of 19199e7 (2026-12-04, before "Training twice as fast": its `src/`, exported
  with `git archive`, on PYTHONPATH in this same venv) on the same batches; the LaFFi set also with
  the old LoRA dropout on today's kernels, and in fp32; TRL's SFTTrainer on the length-grouped
  batches in fp32 and bf16. Per row: examples/s, tokens/s, peak memory, the losses, and the FLOP/s
  as a fraction of the peak (counted on the unpacked examples, so packing can exceed what the
  hardware computes);
- generation over held-out prompts (benchmarks/generate_speed.py): the in-process backend with padded
  batches (batch 1 is the reference every other row's answers are compared with) and with
  shared-prefix packing, in fp32 and bf16, and llama.cpp on the same GGUF when llama-cpp-python is
  installed;
- the peak: the best FLOP/s of large matmuls in the training dtype here, and the memory's copy rate
  (benchmarks/flops.py).
Every measurement runs in a process of its own. Prints a table and writes JSON (the machine, the
load average before and after each measurement, every number). Other work on the machine slows
everything down: look at the load column before believing a number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flops import DTYPES, lora_params, peak, training_flops  # noqa: E402
from speed_setup import AUX_SYSTEM, setup  # noqa: E402

from laffi.systems import load_system  # noqa: E402

BEFORE = "19199e7"  # laffi when issue "Training twice as fast" was filed: the speed it set out to double


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


def child(script: str, *args: str, source: Path | None = None) -> dict:
    """Run one measurement in a fresh process; it writes its JSON to a temporary file. `source`: another
    laffi's src/ to import instead of this one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source or ""), os.environ.get("PYTHONPATH")]))}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(HERE / script), *map(str, args), "--json", out.name]
        print("$", *([f"PYTHONPATH={source}"] if source else []), " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, env=env)
        return json.loads(Path(out.name).read_text())


def export_source(commit: str, into: Path) -> Path | None:
    """`commit`'s src/ under `into` (git archive), or None where this is not a git clone that has it."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", commit, "src"], capture_output=True)
    if archive.returncode:
        print(f"laffi {commit} left out: git archive failed ({archive.stderr.decode().strip()[:200]})")
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


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
             f"{p['bf16_flops'] / 1e9:.0f} bf16; each row's fraction is of its dtype's peak; "
             f"memory copies {p['copy_bytes_per_s'] / 1e9:.1f} GB/s",
             "", f"training: {result['train_setup']}",
             "| set | tool | dtype | batches | rows | examples/s | s/step | tokens/s | peak memory MB | final loss "
             "| GFLOP/s | fraction of peak | load |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["train"]:
        loss = f"{row['losses'][-1]:.4f}" if row.get("losses") else ""
        lines.append(f"| {row.get('set', 'laffi')} | {row['label']} | {row['dtype']} | {row['group_by']} | "
                     f"{'packed' if row['pack'] else 'padded'} | "
                     f"{row['examples_per_s']:.2f} | {row['seconds_per_step']:.2f} | {row['tokens_per_s']:.0f} | "
                     f"{row['peak_memory_mb']:.0f} | {loss} | {row['achieved_flops'] / 1e9:.1f} | "
                     f"{row['fraction_of_peak']:.2f} | {row['load_before']:.1f}-{row['load_after']:.1f} |")
    lines += [f"{name}: {value}" for name, value in result.get("train_comparisons", {}).items()]
    lines += ["", f"generation: {result['generate_setup']}",
              "| backend | engine | dtype | batch | new tokens/s | seconds | same answers as fp32 padded batch 1 | load |",
              "|---|---|---|---:|---:|---:|---|---|"]
    for row in result["generate"]:
        lines.append(f"| {row['backend']} | {row.get('engine', '')} | {row.get('dtype', '')} | {row['batch_size']} | "
                     f"{row['new_tokens_per_s']:.1f} | {row['seconds']:.1f} | "
                     f"{row.get('same_answers', '')} | {row['load_before']:.1f}-{row['load_after']:.1f} |")
    lines += [f"{name}: {value}" for name, value in result.get("generate_comparisons", {}).items()]
    lines += [f"llama.cpp: {result['llamacpp_skipped']}"] if result.get("llamacpp_skipped") else []
    return "\n".join(lines)


# (label, tool, set, overrides, laffi version: None for this one): each set before and after, same batches
TRAIN_ROWS = [
    (f"laffi {BEFORE}", "laffi", "sft", [], BEFORE),
    ("laffi default", "laffi", "sft", [], None),
    (f"laffi {BEFORE}", "laffi", "laffi", [], BEFORE),
    ("laffi default", "laffi", "laffi", [], None),
    ("laffi lora_dropout=0.05", "laffi", "laffi", ["train.lora_dropout=0.05"], None),
    (f"laffi {BEFORE}", "laffi", AUX_SYSTEM, [], BEFORE),
    ("laffi default", "laffi", AUX_SYSTEM, [], None),
    ("laffi fp32", "laffi", "laffi", ["model.dtype=float32"], None),
    ("trl", "trl", "laffi", ["model.dtype=float32", "train.group_by=length"], None),
    ("trl", "trl", "laffi", ["model.dtype=bfloat16", "train.group_by=length"], None),
]
LOSS_TOLERANCE = 0.02  # relative: bf16 rounding, new kernels and no dropout change each loss by about 1%


def pair_by_pair(before: dict, after: dict) -> str:
    """The ratio of each repeat's two runs, which ran minutes apart: the best runs of two rows can come
    from different repeats, and this machine's speed moves by a third between repeats."""
    runs = [row.get("examples_per_s_each_run", []) for row in (before, after)]
    if min(len(r) for r in runs) < 2:
        return ""
    return " (repeat by repeat: " + ", ".join(f"{a / b:.2f}x" for b, a in zip(*runs)) + ")"


def train_comparisons(rows: list[dict]) -> dict:
    def find(label, set_name):
        return next((r for r in rows if r["label"] == label and r["set"] == set_name and r["tool"] == "laffi"), None)
    out = {}
    for set_name in ("sft", "laffi", AUX_SYSTEM):
        before, after = find(f"laffi {BEFORE}", set_name), find("laffi default", set_name)
        if before and after:
            gap = max(abs(a - b) / b for a, b in zip(after["losses"], before["losses"]))
            verdict = "within" if gap <= LOSS_TOLERANCE else "OUTSIDE"
            out[f"default / {BEFORE} examples/s, {set_name} set, same batches"] = (
                f"{after['examples_per_s'] / before['examples_per_s']:.2f}x{pair_by_pair(before, after)}; step "
                f"losses differ by at most {gap:.2%} ({verdict} the {LOSS_TOLERANCE:.0%} tolerance)")
    dropout, default = find("laffi lora_dropout=0.05", "laffi"), find("laffi default", "laffi")
    before = find(f"laffi {BEFORE}", "laffi")
    if dropout and before:
        out[f"LaFFi set, today's kernels with {BEFORE}'s LoRA dropout / {BEFORE}"] = \
            f"{dropout['examples_per_s'] / before['examples_per_s']:.2f}x"
    for dtype in ("float32", "bfloat16"):
        trl = next((r for r in rows if r["tool"] == "trl" and r["dtype"] == dtype), None)
        # laffi's default row is bf16 only where the CPU has bf16 units (model.dtype=auto); else no bf16 pair
        ours = default if dtype == "bfloat16" else find("laffi fp32", "laffi")
        if trl and ours and ours["dtype"] == dtype:
            out[f"laffi packed / TRL examples/s, {dtype}"] = f"{ours['examples_per_s'] / trl['examples_per_s']:.2f}x"
    return out


def generate_comparisons(rows: list[dict]) -> dict:
    def find(engine, dtype, batch=None):
        found = [r for r in rows if r.get("engine") == engine and r.get("dtype") == dtype
                 and (batch is None or r["batch_size"] == batch)]
        return max(found, key=lambda r: r["new_tokens_per_s"]) if found else None
    before = find("padded", "float32", 8)
    out = {}
    for engine, dtype in (("shared prefix", "float32"), ("shared prefix", "bfloat16"), ("padded", "bfloat16")):
        row = find(engine, dtype)
        if before and row:
            out[f"best {engine} {dtype} / padded float32 batch 8 (before)"] = (
                f"{row['new_tokens_per_s'] / before['new_tokens_per_s']:.2f}x at batch {row['batch_size']}, "
                f"{row.get('same_answers', '')} answers as the reference")
    return out


def generate_rows(args, skip: set[str], result: dict) -> list[dict]:
    """The answering rows: fp32 padded batches 1 and 8 (batch 1's answers are the reference), then
    shared-prefix and padded batches in fp32 and bf16, and llama.cpp where it is installed."""
    questions = str(args.questions)
    sizes = args.batch_sizes.split(",")
    padded = ["generate.share_prefix=false"]
    reference = child("generate_speed.py", args.run_dir, "--batch-sizes", "1,8", "--questions", questions,
                      "model.dtype=float32", *padded)
    rows = reference["rows"]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as answers:  # fp32, padded, batch 1: the reference
        json.dump(next(r["answers"] for r in rows if r["batch_size"] == 1), answers)
        answers.flush()
        compare = ["--questions", questions, "--answers", answers.name]
        rows += child("generate_speed.py", args.run_dir, "--batch-sizes", ",".join(sizes), *compare,
                      "model.dtype=float32")["rows"]
        if "bf16" not in skip:
            rows += child("generate_speed.py", args.run_dir, "--batch-sizes", ",".join(sizes), *compare,
                          "model.dtype=bfloat16")["rows"]
            rows += child("generate_speed.py", args.run_dir, "--batch-sizes", "8", *compare, "model.dtype=bfloat16",
                          *padded)["rows"]
        if "llama.cpp" not in skip:
            cpp = child("generate_speed.py", args.run_dir, "--backend", "llama.cpp", *compare)
            rows += cpp["rows"]
            if cpp.get("skipped"):
                result["llamacpp_skipped"] = cpp["skipped"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/bench-speed", help="made once by benchmarks/speed_setup.py")
    parser.add_argument("--json", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--train-steps", type=int, default=8, help="the first is a warm-up, not measured")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each laffi training row; the fastest is kept")
    parser.add_argument("--questions", type=int, default=32, help="held-out questions for generation")
    parser.add_argument("--batch-sizes", default="8,16,32", help="for shared-prefix answering")
    parser.add_argument("--skip", default="", help=f"comma-separated: trl, llama.cpp, bf16, {BEFORE}, generation")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
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
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children measure their GPU memory; this process should hold little
    lora = lora_params(model_config, run.train.lora_r, run.train.target_modules)
    steps = str(args.train_steps)
    result["train"] = []
    aux_weight = load_system(AUX_SYSTEM).recipe.aux_weight
    sources = tempfile.TemporaryDirectory(prefix="laffi-before-")
    old = None if BEFORE in skip else export_source(BEFORE, Path(sources.name))
    # the machine's speed drifts by 10-20% over minutes: laffi's rows run `--repeats` times, interleaved
    # (all rows, then all again), and each keeps its fastest run (every run's examples/s is kept too)
    runs: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for label, tool, set_name, overrides, version in TRAIN_ROWS:
            if tool in skip or ("bf16" in skip and "model.dtype=bfloat16" in overrides) or (version and old is None) \
                    or (tool == "trl" and repeat):
                continue
            aux = ["--aux-weight", str(aux_weight)] if set_name == AUX_SYSTEM else []
            runs.setdefault((label, tool, set_name, *overrides), []).append(child(
                "train_speed.py", args.run_dir, "--tool", tool, "--set", set_name, *aux, "--steps", steps,
                "--label", label, *overrides, source=old if version else None))
    for measured in runs.values():
        row = {**max(measured, key=lambda r: r["examples_per_s"]),
               "examples_per_s_each_run": [r["examples_per_s"] for r in measured]}
        dtype = "bf16" if row["dtype"] == "bfloat16" else "fp32"
        result["train"].append(with_flops(row, model_config, lora, result["peak"][f"{dtype}_flops"]))
    sources.cleanup()
    result["train_comparisons"] = train_comparisons(result["train"])
    first = result["train"][0]
    result["train_setup"] = (f"batch {first['batch_size']}, LoRA r={first['lora_r']} on "
                             f"{','.join(first['target_modules'])}, steps 2-{args.train_steps} of {args.train_steps} "
                             f"(the {BEFORE} rows: laffi as of that commit, with its defaults)")

    result["generate"] = [] if "generation" in skip else generate_rows(args, skip, result)
    result["generate_comparisons"] = generate_comparisons(result["generate"])
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
