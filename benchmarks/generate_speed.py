"""Generation throughput on the held-out prompts: the in-process backend at several batch sizes, with
shared-prefix packing (generate.share_prefix=true, the default) or padded batches (false), and
llama.cpp (llama-cpp-python) on the same GGUF, batch 1, when it is installed.

    python benchmarks/speed_setup.py runs/bench-speed
    python benchmarks/generate_speed.py runs/bench-speed --batch-sizes 1,8 generate.share_prefix=false --json gen.json
    python benchmarks/generate_speed.py runs/bench-speed --batch-sizes 8,16 model.dtype=bfloat16 --json gen.json
    python benchmarks/generate_speed.py runs/bench-speed --backend llama.cpp --json llamacpp.json

The prompts are those `laffi evaluate` builds with the default preset (plain layout, 2 shots),
for the first --questions held-out questions; decoding is greedy, at most generate.max_new_tokens
new tokens, stopping at the end of the line. New tokens/s = tokens generated (up to and including
the one that stops a row, never padding) / wall time, prompt processing included: what a user
waits for. A short warm-up batch runs first and is not timed.

llama.cpp runs the GGUF's own Q4_1 weights (the in-process model is their fp32 dequantisation),
gets the same prompt token ids, and has its KV cache reset before each prompt, so it gets no
prefix reuse the in-process backend lacks. Its answers are compared with the in-process ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

from laffi.backends.answering import build_prompts, decoder
from laffi.config import load_config
from laffi.layout import RunLayout
from laffi.models import embedded_gguf, load_model, load_tokenizer
from laffi.prompts import extract_answer
from laffi.records import QAExample, read_records


def held_out_prompts(run_dir: Path, questions: int, tokenizer, run) -> dict[str, list[int]]:
    examples = read_records(RunLayout(run_dir).eval_examples, QAExample)[:questions]
    return build_prompts(tokenizer, examples, read_records(RunLayout(run_dir).shots, QAExample), run.data)


def in_process(prompts: dict[str, list[int]], batch_sizes: list[int], run) -> list[dict]:
    model, tokenizer = load_model(run.model)
    stops = ["\n"] if run.generate.stop_at_newline else None
    generate = decoder(model, run.generate)  # what `laffi evaluate` decodes with under this config
    warm = dict(list(prompts.items())[:2])
    for _ in generate(model, tokenizer, warm, 2, run.generate.max_new_tokens, stops):
        pass
    rows = []
    for batch_size in batch_sizes:
        load_before, started = os.getloadavg()[0], time.perf_counter()
        new_tokens, answers = 0, {}
        for batch in generate(model, tokenizer, prompts, batch_size, run.generate.max_new_tokens, stops):
            new_tokens += sum(g.new_tokens for g in batch)
            answers.update((g.id, extract_answer(g.text)) for g in batch)
        seconds = time.perf_counter() - started
        rows.append({"backend": "transformers", "engine": "shared prefix" if generate.__name__ == "shared_prefix_generate"
                     else "padded", "batch_size": batch_size, "questions": len(prompts),
                     "prompt_tokens": sum(len(p) for p in prompts.values()), "new_tokens": new_tokens,
                     "seconds": round(seconds, 2), "new_tokens_per_s": round(new_tokens / seconds, 2),
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                     "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
        print(json.dumps(rows[-1]), flush=True)
        rows[-1]["answers"] = answers
    return rows


def llama_cpp(prompts: dict[str, list[int]], run, threads: int) -> list[dict]:
    from llama_cpp import Llama, llama_print_system_info

    longest = max(len(p) for p in prompts.values()) + run.generate.max_new_tokens
    llm = Llama(model_path=str(embedded_gguf()), n_ctx=max(2048, longest), n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    stop = ["\n"] if run.generate.stop_at_newline else []

    def complete(ids: list[int]) -> dict:
        llm.reset()  # no KV-cache prefix reuse across prompts
        return llm.create_completion(prompt=ids, max_tokens=run.generate.max_new_tokens, temperature=0.0,
                                     top_k=1, stop=stop)

    for ids in list(prompts.values())[:2]:  # warm-up
        complete(ids)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    answers, new_tokens = {}, 0
    for question_id, ids in prompts.items():
        out = complete(ids)
        new_tokens += out["usage"]["completion_tokens"]
        answers[question_id] = extract_answer(out["choices"][0]["text"])
    seconds = time.perf_counter() - started
    row = {"backend": "llama.cpp", "batch_size": 1, "questions": len(prompts),
           "prompt_tokens": sum(len(p) for p in prompts.values()), "new_tokens": new_tokens,
           "seconds": round(seconds, 2), "new_tokens_per_s": round(new_tokens / seconds, 2), "threads": threads,
           "weights": "Q4_1 (the GGUF as shipped)", "build": llama_print_system_info().decode().strip(),
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    row["answers"] = answers
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--backend", choices=["transformers", "llama.cpp"], default="transformers")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--questions", type=int, default=32, help="the first N held-out questions")
    parser.add_argument("--answers", help="the in-process batch-1 answers (JSON), to compare llama.cpp's with")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.threads=2")
    args = parser.parse_intermixed_args()  # key=value overrides may come before the options
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    run = load_config(overrides=args.overrides)  # the default preset: what `laffi run` evaluates with
    prompts = held_out_prompts(Path(args.run_dir), args.questions, load_tokenizer(run.model), run)
    if args.backend == "transformers":
        result = {"rows": in_process(prompts, [int(b) for b in args.batch_sizes.split(",")], run)}
    elif importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp: skipped, llama-cpp-python is not installed (pip install -e '.[llamacpp]'; "
              "it compiles llama.cpp, minutes on 2 cores)")
        result = {"rows": [], "skipped": "llama-cpp-python is not installed"}
    else:
        import torch

        result = {"rows": llama_cpp(prompts, run, run.model.threads or torch.get_num_threads())}
    # the same answers as the reference (--answers), or as batch 1 of this run?
    reference = json.loads(Path(args.answers).read_text()) if args.answers else next(
        (row["answers"] for row in result["rows"] if row["batch_size"] == 1), None)
    for row in result["rows"]:
        if reference is not None and row["answers"] is not reference:
            same = sum(reference.get(k) == v for k, v in row["answers"].items())
            row["same_answers"] = f"{same}/{len(row['answers'])}"
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
