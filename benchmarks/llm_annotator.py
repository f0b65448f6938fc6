"""The LLM annotator and the openai generation backend against a running server, on a real run:
agreement with the reference annotator, requests per second, and whether the server's answers
match the in-process model's.

    python -m llama_cpp.server --model "$(python -c 'from laffi.models import embedded_gguf; print(embedded_gguf())')" \\
        --model_alias smollm2 --port 8080 --n_threads 2 --n_ctx 4096 &
    laffi run --out runs/default                      # or any run with answers.jsonl from the in-process model
    python benchmarks/llm_annotator.py runs/default --base-url http://127.0.0.1:8080/v1 --model smollm2 \
        --template feedback-fewshot-v1 --limit 64

Works on a copy (RUN_DIR/../NAME-llm-bench): regenerates the train answers through the server and
compares them with RUN_DIR/answers.jsonl, annotates the in-process answers with the reference
annotator and with the LLM annotator (a fresh reply cache, so every request is really sent), and
prints `laffi stats` and the speeds. Writes results.json in the copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from laffi.analysis.agreement import stats
from laffi.config import load_config
from laffi.layout import RunLayout, summary_file
from laffi.records import Answer, read_records, write_json
from laffi.report.tables import stats_markdown
from laffi.stages.annotate import annotate
from laffi.stages.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run with data/ and answers.jsonl")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True, help="the model's name on the server")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--template", default="feedback-v1", help="annotate.template (feedback-fewshot-v1 for small models)")
    parser.add_argument("--limit", type=int, default=0, help="annotate only the first N answers (0: all)")
    args = parser.parse_args()

    source = RunLayout(args.run_dir)
    out = RunLayout(source.root.parent / f"{source.root.name}-llm-bench")
    shutil.rmtree(out.root, ignore_errors=True)
    shutil.copytree(source.data, out.data)
    answers = read_records(source.answers, Answer)[: args.limit or None]
    kept = {a.id for a in answers}
    out.answers.write_text(
        "".join(line for line in source.answers.read_text().splitlines(keepends=True)
                if json.loads(line)["id"] in kept))
    train = [line for line in source.train_examples.read_text().splitlines(keepends=True)
             if json.loads(line)["id"] in kept]
    out.train_examples.write_text("".join(train))
    config = load_config(source.config if source.config.exists() else None, overrides=[
        "generate.backend=openai", f"generate.base_url={args.base_url}", f"generate.served_model={args.model}",
        "generate.exact_prompts=false",  # a text-only server (llama-cpp-python) splits a few rare characters differently
        f"generate.batch_size={args.concurrency}",
        "annotate.annotator=llm", f"annotate.base_url={args.base_url}", f"annotate.model={args.model}",
        f"annotate.concurrency={args.concurrency}", f"annotate.template={args.template}",
        f"annotate.cache_dir={out.root / 'llm-cache'}"])
    result: dict = {"server": args.base_url, "model": args.model, "answers": len(answers)}

    # 1. the same questions, answered through the server
    served = RunLayout(out.root / "served")
    shutil.copytree(out.data, served.data)
    started = time.perf_counter()
    via_server = {a.id: a for a in generate(served, config.model, config.data, config.generate)}
    seconds = time.perf_counter() - started
    same = sum(via_server[a.id].prediction == a.prediction for a in answers)
    result["generation"] = {"requests": len(answers), "seconds": round(seconds, 1),
                            "requests_per_s": round(len(answers) / seconds, 2),
                            "same_prediction_as_in_process": same}

    # 2. feedback on the in-process answers: reference, then the LLM
    annotate(out, load_config(overrides=[]).annotate)
    annotate(out, config.annotate, out="feedback-llm.jsonl")
    result["annotation"] = json.loads(summary_file(out.root / "feedback-llm.jsonl").read_text())
    result["stats"] = stats(out.root)
    write_json(out.results_json, result)

    print(stats_markdown(result["stats"]))
    g, a = result["generation"], result["annotation"]
    print(f"\ngeneration through the server: {g['requests']} requests in {g['seconds']} s "
          f"({g['requests_per_s']} req/s); {g['same_prediction_as_in_process']}/{g['requests']} predictions "
          "identical to the in-process model's")
    print(f"LLM annotation: {a['requests']} requests in {a['seconds']} s ({a['requests_per_s']} req/s), "
          f"{a['feedback']} feedback, {a['failed_unparseable']} unparseable, {a['failed_request']} request failures, "
          f"{a['prompt_tokens']} prompt + {a['completion_tokens']} completion tokens")
    print(f"\nwritten: {out.results_json}")


if __name__ == "__main__":
    main()
