"""Compare settings and systems on the dev set over several seeds, against the seed-to-seed spread.

    laffi run --out runs/demo     # or any run whose answers are annotated
    python benchmarks/dev_seeds.py runs/demo --arm fp32 model.dtype=float32 --arm bf16 model.dtype=bfloat16
    python benchmarks/dev_seeds.py runs/demo --arm default --systems sft,laffi-mix,laffi-refine-mix

Each arm is the run's own config (RUN/config.yaml) with its overrides. The training sets of the
systems (laffi.systems) are built into the run's sets/ first. For every arm and seed (train.seed:
the LoRA initialisation and the batch order) it trains each system that has a train recipe and
scores every system on the dev set (data/dev.jsonl: train-pool articles neither training nor the
held-out set uses), never on the held-out set; the base model on seed 0 only. Everything lands in
RUN/dev-seeds/ARM/sSEED/ (run directories on the run's data/ and sets/; resumable), the summary in
RUN/dev-seeds/summary.{json,md}: per system and arm, mean F1 and EM over seeds and their standard
deviation; per system, the mean paired difference of each arm from the first with the seed-to-seed
spread it is to be compared with, and the share of dev questions both arms answer identically; and
within each arm, each system minus SFT of the same seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from laffi.config import build_section, merge_values, parse_overrides, read_yaml, RunConfig
from laffi.experiments.run import evaluate_system
from laffi.layout import RunLayout
from laffi.records import Prediction, read_records
from laffi.stages.build import build
from laffi.stages.train import train_system
from laffi.systems import load_systems, training_order

SYSTEMS = ("base", "sft", "laffi")


def arm_config(run_dir: Path, overrides: list[str], seed: int, split: str = "dev") -> RunConfig:
    values = merge_values(read_yaml(run_dir / "config.yaml"), parse_overrides([*overrides, f"train.seed={seed}",
                                                                               f"eval.split={split}"]))
    return build_section(RunConfig, values)


def record_arm(run_dir: Path, arm: str, overrides: list[str]) -> None:
    """RUN/dev-seeds/ARM/arm.json: the arm's overrides, which heldout_seeds.py trains and scores with. An arm
    name keeps its overrides: adapters trained with others are not this arm's."""
    path = run_dir / "dev-seeds" / arm / "arm.json"
    if path.exists() and (saved := json.loads(path.read_text())["overrides"]) != overrides:
        raise SystemExit(f"--arm {arm}: {path} was run with {saved}, not {overrides}; name the arm anew")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overrides": overrides}) + "\n")


def arm_overrides(run_dir: Path, arm: str) -> list[str]:
    """The overrides dev_seeds.py ran ARM with (none for an arm run before they were recorded: "default")."""
    path = run_dir / "dev-seeds" / arm / "arm.json"
    if not path.exists():
        if arm != "default":
            raise SystemExit(f"--arm {arm}: no {path}; run dev_seeds.py with this arm first")
        return []
    return json.loads(path.read_text())["overrides"]


def seed_layout(run_dir: Path, arm: str, seed: int) -> RunLayout:
    """RUN/dev-seeds/ARM/sSEED: a run directory on the run's data/ and sets/."""
    shared = RunLayout.of(run_dir)
    layout = RunLayout(run_dir / "dev-seeds" / arm / f"s{seed}", data=shared.data, sets=shared.sets)
    layout.record()
    return layout


def run_arm(run_dir: Path, name: str, overrides: list[str], seed: int, systems: list[str]) -> dict[str, dict]:
    """Every system of one arm and seed, scored on dev; untrained ones (base) on seed 0 only: they have no seed."""
    layout = seed_layout(run_dir, name, seed)
    config = arm_config(run_dir, overrides, seed)
    common = (config.model, config.data, config.generate, config.eval)
    scores = {}
    chosen = load_systems(systems)
    for system in training_order(chosen):
        train_system(layout, system, config.model, config.data, config.generate, config.train)
    for system in chosen:
        if system.adapter is None and not system.guided and seed != 0:
            continue
        metrics = evaluate_system(layout, system, *common)
        answers = {p.id: p.prediction for p in read_records(layout.predictions(system.name, "dev"), Prediction)}
        scores[system.name] = {"f1": metrics["f1"], "exact": metrics["exact"], "answers": answers}
    return scores


def summarize(results: dict[str, dict[int, dict]], arms: list[str], systems: list[str]) -> dict:
    summary: dict = {"systems": {}}
    first = arms[0]
    for system in systems:
        per_arm = {}
        for arm in arms:
            runs = [results[arm][s][system] for s in sorted(results[arm]) if system in results[arm][s]]
            f1, em = [r["f1"] for r in runs], [r["exact"] for r in runs]
            per_arm[arm] = {"f1": f1, "exact": em, "f1_mean": round(statistics.mean(f1), 2),
                            "exact_mean": round(statistics.mean(em), 2),
                            "f1_sd": round(statistics.stdev(f1), 2) if len(f1) > 1 else None}
        comparisons = {}
        for arm in arms[1:]:
            seeds = [s for s in sorted(results[arm]) if system in results[arm][s] and system in results[first].get(s, {})]
            diffs = [results[arm][s][system]["f1"] - results[first][s][system]["f1"] for s in seeds]
            same = [sum(results[arm][s][system]["answers"][q] == a for q, a in results[first][s][system]["answers"].items())
                    / len(results[first][s][system]["answers"]) for s in seeds]
            spread = per_arm[first]["f1_sd"]
            mean = statistics.mean(diffs)
            comparisons[arm] = {"f1_differences": [round(d, 2) for d in diffs], "f1_difference_mean": round(mean, 2),
                                "seed_sd_of_first": spread, "same_answers": round(statistics.mean(same), 3),
                                "within_seed_spread": None if spread is None else abs(mean) <= spread}
        summary["systems"][system] = {"arms": per_arm, "vs_" + first: comparisons}
        if system != "sft":
            summary["systems"][system]["minus_sft"] = {arm: minus_sft(results[arm], system) for arm in arms}
    return summary


def minus_sft(by_seed: dict[int, dict], system: str) -> dict | None:
    """The system's dev F1 minus SFT's, seed by seed (same seed: same batches and LoRA initialisation)."""
    seeds = [s for s in sorted(by_seed) if system in by_seed[s] and "sft" in by_seed[s]]
    if not seeds:
        return None
    diffs = [by_seed[s][system]["f1"] - by_seed[s]["sft"]["f1"] for s in seeds]
    return {"seeds": seeds, "f1_differences": [round(d, 2) for d in diffs], "f1_difference_mean": round(statistics.mean(diffs), 2),
            "f1_difference_sd": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else None}


def markdown(summary: dict, arms: list[str]) -> str:
    lines = ["| system | " + " | ".join(f"{a} F1 (sd) / EM" for a in arms) + " | "
             + " | ".join(f"{a} - {arms[0]} F1 (per seed) | same answers" for a in arms[1:])
             + f"{' | ' if len(arms) > 1 else ''}{arms[0]}: minus SFT F1 (per seed) |",
             "|---|" + "---:|" * len(arms) + "---:|---:|" * (len(arms) - 1) + "---:|"]
    for system, entry in summary["systems"].items():
        cells = []
        for arm in arms:
            a = entry["arms"][arm]
            sd = f" ({a['f1_sd']:.2f})" if a["f1_sd"] is not None else ""
            cells.append(f"{a['f1_mean']:.2f}{sd} / {a['exact_mean']:.2f}")
        for arm in arms[1:]:
            c = entry[f"vs_{arms[0]}"][arm]
            cells.append(f"{c['f1_difference_mean']:+.2f} ({', '.join(f'{d:+.2f}' for d in c['f1_differences'])})")
            cells.append(f"{100 * c['same_answers']:.1f}%")
        versus = (entry.get("minus_sft") or {}).get(arms[0])
        cells.append(f"{versus['f1_difference_mean']:+.2f} ({', '.join(f'{d:+.2f}' for d in versus['f1_differences'])})"
                     if versus else "")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                        help="a name and its overrides; the first arm is the one the others are compared with")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="systems (laffi.systems), in table order")
    args = parser.parse_args()
    arms = {arm[0]: arm[1:] for arm in args.arm}
    seeds = [int(s) for s in args.seeds.split(",")]
    systems = args.systems.split(",")
    shared = RunLayout.of(args.run_dir)
    build(shared, arm_config(args.run_dir, [], 0).data, load_systems(systems))  # every arm trains on these
    for name, overrides in arms.items():
        record_arm(args.run_dir, name, overrides)
    results = {name: {seed: run_arm(args.run_dir, name, overrides, seed, systems) for seed in seeds}
               for name, overrides in arms.items()}
    summary = summarize(results, list(arms), systems)
    summary["arms"], summary["seeds"], summary["systems_run"] = arms, seeds, systems
    out = args.run_dir / "dev-seeds"
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary, list(arms))
    (out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
