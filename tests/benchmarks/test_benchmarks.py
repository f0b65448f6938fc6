"""The speed benchmarks run, and compare like with like: on the tiny model, laffi and TRL's
SFTTrainer train on the same token sequences with the same completion tokens, and larger batches
of the in-process backend give batch 1's answers. (The numbers themselves are the benchmark's.)

    python -m pytest tests/benchmarks/test_benchmarks.py
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the tests below import speed.py's table and comparisons


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], check=True,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("bench-speed")
    printed = bench("speed_setup.py", run_dir, "--train-size", "8").stdout
    for name in ("sft", "laffi", "laffi-aux-half"):
        assert f"8 examples in {run_dir / 'sets' / name}.jsonl" in printed
    return run_dir


@pytest.mark.slow
def test_laffi_and_trl_train_on_the_same_sequences(bench_dir, tiny_model_dir, tmp_path):
    tiny = [f"model.name={tiny_model_dir}", "model.threads=2", "train.batch_size=2", "train.warmup_steps=1"]
    results = {}
    for tool in ("laffi", "trl"):
        out = tmp_path / f"{tool}.json"
        bench("train_speed.py", bench_dir, "--tool", tool, "--steps", "3", "--json", out, *tiny)
        results[tool] = json.loads(out.read_text())
    laffi, trl = results["laffi"], results["trl"]
    # both rows count tokens from laffi's tokenisation; whether TRL's matches is this check
    check = trl["tokenisation_check"]
    assert check["same_lengths"] and check["same_completion_tokens"], check
    assert check["trl_tokens"] == check["laffi_tokens"] > 0
    for result in (laffi, trl):  # steps 2-3, timed from the end of step 1
        assert result["measured_steps"] == 2 and len(result["step_end_seconds"]) == 3
        assert result["tokens_per_s"] > 0 and result["peak_memory_mb"] > 0
        assert 0 < result["completion_tokens"] < result["tokens"] <= result["padded_tokens"]


@pytest.mark.slow
def test_batched_generation_gives_batch_one_answers(bench_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "generate.json"
    bench("generate_speed.py", bench_dir, "--batch-sizes", "1,3", "--questions", "6", "--json", out,
          f"model.name={tiny_model_dir}", "model.threads=2", "generate.max_new_tokens=4")
    one, three = json.loads(out.read_text())["rows"]
    assert (one["batch_size"], three["batch_size"]) == (1, 3)
    assert one["new_tokens"] == three["new_tokens"] > 0
    assert three["same_answers"] == "6/6"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_answers_the_same_prompts_from_the_embedded_gguf(bench_dir, tmp_path):
    out = tmp_path / "llamacpp.json"
    bench("generate_speed.py", bench_dir, "--backend", "llama.cpp", "--questions", "2", "--json", out,
          "model.threads=2")
    (row,) = json.loads(out.read_text())["rows"]
    assert row["backend"] == "llama.cpp" and row["questions"] == 2 and row["new_tokens"] > 0
    assert len(row["answers"]) == 2


@pytest.mark.slow
def test_an_exported_laffi_trains_the_same_batches_beside_this_one_and_the_table_compares_them(
        bench_dir, tiny_model_dir, tmp_path):
    """The before/after rows of `make bench`: another laffi's src/ (here HEAD's, exported as the
    benchmark exports 19199e7) on PYTHONPATH trains the same batches, auxiliary examples included."""
    from speed import BEFORE, child, export_source, table, train_comparisons  # noqa: E402

    source = export_source("HEAD", tmp_path / "exported")
    assert source is not None and (source / "laffi" / "stages" / "train.py").exists()
    tiny = [f"model.name={tiny_model_dir}", "model.threads=2", "train.batch_size=2", "train.warmup_steps=1"]
    rows = [child("train_speed.py", bench_dir, "--tool", "laffi", "--set", "laffi-aux-half", "--aux-weight", "0.5",
                  "--steps", "3", "--label", label, *tiny, source=version)
            for label, version in ((f"laffi {BEFORE}", source), ("laffi default", None))]
    before, after = rows
    assert before["laffi"].startswith(str(source)) and not after["laffi"].startswith(str(source))
    assert before["set"] == after["set"] == "laffi-aux-half" and before["aux_weight"] == 0.5
    assert before["examples"] == after["examples"] == 8  # steps 2-3: 2 questions each, with their auxiliary examples
    assert before["losses"] == pytest.approx(after["losses"], rel=1e-3)  # the same code, the same batches
    comparisons = train_comparisons(rows)
    (name, value), = comparisons.items()
    assert name == f"default / {BEFORE} examples/s, laffi-aux-half set, same batches" and "within" in value
    for row in rows:
        row.update(achieved_flops=1e9, fraction_of_peak=0.1)
    result = {"machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "torch": "t", "torch_threads": 2, "gpu": None},
              "peak": {"device": "cpu", "fp32_flops": 1e11, "bf16_flops": 2e11, "copy_bytes_per_s": 2.6e10},
              "train_setup": "tiny",
              "train": rows, "train_comparisons": comparisons, "generate_setup": "none", "generate": []}
    printed = table(result)
    assert f"| laffi-aux-half | laffi {BEFORE} |" in printed and "| laffi-aux-half | laffi default |" in printed
    assert "200 bf16; each row's fraction is of its dtype's peak; memory copies 26.0 GB/s" in printed


def test_the_bf16_comparison_with_trl_pairs_bf16_rows_only():
    from speed import train_comparisons  # noqa: E402

    def row(tool, label, dtype, examples_per_s):
        return {"tool": tool, "label": label, "set": "laffi", "dtype": dtype, "examples_per_s": examples_per_s}

    trl = [row("trl", "TRL fp32", "float32", 0.22), row("trl", "TRL bf16", "bfloat16", 0.05)]
    fp32 = row("laffi", "laffi fp32", "float32", 0.44)
    # a CPU without bf16 units: laffi's default trains in fp32, so there is no bf16 pair (was 0.45 / 0.05 = 9x)
    assert train_comparisons([*trl, fp32, row("laffi", "laffi default", "float32", 0.45)]) == {
        "laffi packed / TRL examples/s, float32": "2.00x"}
    with_bf16 = train_comparisons([*trl, fp32, row("laffi", "laffi default", "bfloat16", 0.8)])
    assert with_bf16["laffi packed / TRL examples/s, bfloat16"] == "16.00x"


@pytest.mark.slow
def test_the_profile_of_a_training_names_its_ops(bench_dir, tiny_model_dir):
    printed = bench("profile_train.py", bench_dir, "--set", "sft", "--steps", "2", "--shapes",
                    f"model.name={tiny_model_dir}", "model.threads=2", "train.batch_size=2", "train.warmup_steps=1").stdout
    assert "\nsft: 2 steps, seconds at the end of each: [" in printed
    assert "aten::mm" in printed and "Self CPU" in printed


def test_the_comparison_gives_each_repeats_ratio_beside_the_best_runs_ratio():
    from speed import BEFORE, train_comparisons  # noqa: E402

    def row(label, runs):
        return {"tool": "laffi", "label": label, "set": "sft", "losses": [2.0, 1.0],
                "examples_per_s": max(runs), "examples_per_s_each_run": runs}
    value, = train_comparisons([row(f"laffi {BEFORE}", [1.0, 1.2]), row("laffi default", [1.7, 2.3])]).values()
    assert value.startswith("1.92x (repeat by repeat: 1.70x, 1.92x); step losses differ by at most 0.00% (within")


def test_the_annotation_app_bench_serves_both_phases_without_errors():
    # its throwaway run directory must be one `laffi serve` and `laffi annotators add` accept
    printed = bench("annotation_app.py", "--clients", "2", "--seconds", "1", "--items", "400").stdout
    phases = dict(line.split(maxsplit=1) for line in printed.splitlines() if line.startswith(("annotate", "submit")))
    assert phases.keys() == {"annotate", "submit"}
    for line in phases.values():
        assert line.endswith("errors 0") and int(line.split(": ")[1].split()[0]) > 0, line
