"""Score the final systems on the held-out set, once, over the seeds `dev_seeds.py` trained them with.

    python benchmarks/dev_seeds.py runs/demo --arm default --systems sft,laffi,laffi-mix   # choose on dev
    python benchmarks/heldout_seeds.py runs/demo --systems base,sft,laffi,laffi-mix --seeds 0,1,2

For every seed it trains what is not trained yet (the adapters of RUN/dev-seeds/ARM/sSEED/, the
same ones the dev scores came from, with the arm's overrides: ARM/arm.json) and evaluates each
system on the held-out questions into that directory's eval/; the base model once (RUN/eval/base, which `laffi run` wrote). The summary, in
RUN/heldout-seeds.{json,md}: per system, EM and F1 averaged over seeds with a 95% interval over
seeds and questions (the two-level bootstrap of laffi.analysis.bootstrap), and each system minus
SFT, paired by seed and question. Run it once per final set of systems: choosing anything on
these numbers would make them a dev set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dev_seeds import arm_config, arm_overrides, seed_layout

from laffi.analysis.bootstrap import bootstrap_interval, paired_bootstrap_difference
from laffi.experiments.run import evaluate_system
from laffi.layout import RunLayout
from laffi.records import Prediction, QAExample, read_records
from laffi.report.tables import markdown
from laffi.stages.train import train_system
from laffi.systems import load_systems, training_order


def scores(layout: RunLayout, system: str, ids: list[str]) -> dict[str, list[float]]:
    by_id = {p.id: p for p in read_records(layout.predictions(system), Prediction)}
    return {metric: [getattr(by_id[i], metric) for i in ids] for metric in ("exact", "f1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--systems", required=True, help="systems (laffi.systems), in table order; include sft")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arm", default="default", help="the dev_seeds.py arm whose adapters to score")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    systems = load_systems(args.systems.split(","))
    run = RunLayout.of(args.run_dir)
    ids = [e.id for e in read_records(run.eval_examples, QAExample)]
    overrides = arm_overrides(args.run_dir, args.arm)  # the adapters' own settings
    per_system: dict[str, dict[str, list[list[float]]]] = {}
    for seed in seeds:
        layout, config = seed_layout(args.run_dir, args.arm, seed), arm_config(args.run_dir, overrides, seed, "heldout")
        for system in training_order(systems):
            train_system(layout, system, config.model, config.data, config.generate, config.train)
        for system in systems:
            untrained = system.adapter is None and not system.guided
            if untrained and seed != seeds[0]:
                continue
            where = run if untrained else layout  # the base model has no seed: `laffi run`'s evaluation
            if not untrained:
                evaluate_system(layout, system, config.model, config.data, config.generate, config.eval)
            for metric, values in scores(where, system.name, ids).items():
                per_system.setdefault(system.name, {}).setdefault(metric, []).append(values)
    summary = {"seeds": seeds, "questions": len(ids), "systems": {}, "minus_sft": {}}
    for name, by_metric in per_system.items():
        entry = {}
        for metric, grid in by_metric.items():
            low, high = bootstrap_interval(grid, samples=args.samples, seed=0)
            mean = sum(map(sum, grid)) / (len(grid) * len(ids))
            entry[metric] = [round(100 * mean, 2), round(100 * low, 2), round(100 * high, 2)]
        entry["seeds"] = len(by_metric["f1"])
        summary["systems"][name] = entry
        if name != "sft" and "sft" in per_system and entry["seeds"] == len(seeds):
            summary["minus_sft"][name] = {
                metric: [round(100 * v, 2) for v in paired_bootstrap_difference(
                    grid, per_system["sft"][metric], samples=args.samples, seed=0)]
                for metric, grid in by_metric.items()}
    out = args.run_dir / "heldout-seeds.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    rows = [[name, str(e["seeds"]), f"{e['exact'][0]:.2f}", f"{e['exact'][1]:.2f}-{e['exact'][2]:.2f}",
             f"{e['f1'][0]:.2f}", f"{e['f1'][1]:.2f}-{e['f1'][2]:.2f}",
             *([f"{d['f1'][0]:+.2f}", f"{d['f1'][1]:+.2f} to {d['f1'][2]:+.2f}"]
               if (d := summary["minus_sft"].get(name)) else ["", ""])]
            for name, e in summary["systems"].items()]
    table = markdown(["system", "seeds", "EM", "EM 95% CI", "F1", "F1 95% CI", "F1 - SFT", "95% CI"], rows,
                     {1, 2, 4, 6})
    out.with_suffix(".md").write_text(f"Held-out questions: {len(ids)}; seeds: {args.seeds}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
