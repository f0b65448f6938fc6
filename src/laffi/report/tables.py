"""laffi's tables of numbers, each built once as (header, rows) of formatted strings, rendered as
Markdown (results.md, experiment.md, `laffi stats`) by `markdown` or as HTML (report.html) by
laffi.report.html.table.

    from laffi.report.tables import markdown, results_table
    print(markdown(*results_table(results)))          # results: results.json
    html.table(*results_table(results), id="results")

A `Table` is (header, rows, numeric): `numeric` holds the indices of the right-aligned columns.
Intervals read "low-high" (percent) and differences "+low to +high" (percentage points), in
both renderings. Cells are taken as they are: a caller escapes what is not already Markdown.
"""

from __future__ import annotations

from typing import NamedTuple

from laffi.records import VERDICTS


class Table(NamedTuple):
    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()


def markdown(header: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """A Markdown table: header, the alignment line (numeric columns right-aligned), one line per row."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---:|" if i in numeric else "---|" for i in range(len(header)))]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def interval(values: list[float]) -> str:
    """A 95% interval in percent: "41.00-59.00"."""
    return f"{values[0]:.2f}-{values[1]:.2f}"


def difference(values: list[float]) -> list[str]:
    """[mean, low, high] of a difference in percentage points -> ["+3.00", "-1.50 to +7.25"]."""
    return [f"{values[0]:+.2f}", f"{values[1]:+.2f} to {values[2]:+.2f}"]


def _scores(m: dict) -> list[str]:
    return [f"{m['exact']:.2f}", interval(m["exact_ci95"]), f"{m['f1']:.2f}", interval(m["f1_ci95"])]


SCORES = ["EM", "EM 95% CI", "F1", "F1 95% CI"]
DIFFERENCES = ["EM diff", "EM 95% CI", "F1 diff", "F1 95% CI"]


# --- a run: results.json, run_info.json ---------------------------------------------------------

def results_table(results: dict) -> Table:
    """System -> EM, F1 and their intervals (results.json)."""
    return Table(["system", *SCORES], [[system, *_scores(m)] for system, m in results.items()], frozenset({1, 3}))


def paired_differences_table(differences: dict) -> Table:
    """"a - b" -> {"exact": [mean, low, high], "f1": [...]} (run_info.json "paired_differences")."""
    return Table(["comparison", *DIFFERENCES],
                 [[name, *difference(d["exact"]), *difference(d["f1"])] for name, d in differences.items()],
                 frozenset({1, 3}))


# --- an experiment: experiment.json -----------------------------------------------------------------

def varying_axes(summary: dict) -> list[str]:
    """The grid's axes with more than one value among the cells: the columns worth showing."""
    cells = summary["cells"]
    return [a for a in summary["axes"] if len({str(c[a]) for c in cells}) > 1]


def fixed_axes(summary: dict) -> list[str]:
    """"axis=value" for each axis with one value throughout the grid."""
    axes, first = varying_axes(summary), summary["cells"][0]
    return [f"{a}={first[a]}" for a in summary["axes"] if a not in axes]


def _dev(d: dict) -> str:
    return f"{d['f1']:.2f}" + (f" ({d['f1_sd']:.2f})" if d.get("f1_sd") is not None else "")


EXPERIMENT_SCORES = ["held-out EM", "EM 95% CI", "held-out F1", "F1 95% CI", "F1 95% CI, articles"]


def experiment_table(summary: dict) -> Table:
    """One row per system and cell (the base model's first): its varying axes, the budget chosen on dev,
    dev F1 (sd over seeds) at that budget, held-out EM and F1 with intervals over seeds and questions
    (and over seeds and articles), the training's mean seconds and tokens, and a note."""
    axes = varying_axes(summary)
    rows = []
    base = summary.get("base")
    if base:
        rows.append(["", base.get("system", "base"), *[""] * len(axes), "untrained", f"{base['dev']['f1']:.2f}",
                     f"{base['exact']:.2f}", interval(base["exact_ci95"]), f"{base['f1']:.2f}",
                     interval(base["f1_ci95"]), interval(base["f1_ci95_articles"]), "", "", ""])
    for i, c in enumerate(summary["cells"]):
        notes = []
        if c.get("best_of_family"):
            notes.append(f"best {c['family']} on dev")
        if len(c["budgets"]) > 1 and c["budget"] == max(c["budgets"]):
            notes.append("chosen budget is the largest tried")
        if c["same_adapters_as"]:
            notes.append(f"same adapters as #{c['same_adapters_as'][0]}")
        rows.append([str(i), c["system"], *[str(c[a]) for a in axes], str(c["budget"]), _dev(c["dev"]),
                     f"{c['exact']:.2f}", interval(c["exact_ci95"]), f"{c['f1']:.2f}", interval(c["f1_ci95"]),
                     interval(c["f1_ci95_articles"]), f"{c['cost']['train_seconds']:.0f}",
                     f"{c['cost']['train_tokens']:,}", "; ".join(notes)])
    n = len(axes)
    return Table(["#", "system", *axes, "budget (steps)", "dev F1 (sd)", *EXPERIMENT_SCORES, "train s",
                  "train tokens", "note"], rows, frozenset({0, n + 2, n + 3, n + 4, n + 6, n + 9, n + 10}))


def experiment_differences_table(summary: dict) -> Table:
    """Each system - the baseline, paired by seed and question, per cell of its varying axes."""
    axes = varying_axes(summary)
    rows = [[d["system"], *[str(d[a]) for a in axes], *difference(d["exact"]), *difference(d["f1"]),
             f"{d['f1_articles'][0]:+.2f} to {d['f1_articles'][1]:+.2f}"] for d in summary["differences"]]
    return Table(["system", *axes, *DIFFERENCES, "F1 95% CI, articles"], rows,
                 frozenset({len(axes) + 1, len(axes) + 3}))


def dev_curve_table(summary: dict) -> Table:
    """Mean dev F1 (per seed) of each system and cell at every budget tried: what the choice was made on."""
    axes = varying_axes(summary)
    budgets = sorted({p["budget"] for p in summary["dev_curves"]})
    rows: dict[tuple, list[str]] = {}
    for point in summary["dev_curves"]:
        key = (point["system"], *[str(point[a]) for a in axes])
        row = rows.setdefault(key, [*key, *[""] * len(budgets)])
        per_seed = " / ".join(f"{v:.1f}" for v in point["per_seed"].values())
        row[len(key) + budgets.index(point["budget"])] = f"{point['f1']:.2f} ({per_seed})"
    return Table(["system", *axes, *(f"{b} steps" for b in budgets)], list(rows.values()),
                 frozenset(range(1 + len(axes), 1 + len(axes) + len(budgets))))


def experiment_markdown(summary: dict) -> str:
    """experiment.md, and what `laffi experiment` prints."""
    cells, fixed = summary["cells"], fixed_axes(summary)
    first = cells[0]
    lines = ["# laffi experiment", "",
             f"Held-out questions: {first['questions']}; dev questions: {summary['dev_questions']}; seeds: "
             f"{', '.join(map(str, summary['seeds']))}; budgets tried: {', '.join(map(str, summary['budgets']))} "
             f"steps" + (f"; fixed: {', '.join(fixed)}" if fixed else ""), "",
             "Each system's budget (optimizer steps, a whole schedule each) is the one with the best mean dev F1 "
             "over seeds. Held-out scores at that budget: mean over seeds, 95% interval over seeds and questions "
             "(and over seeds and articles).", "",
             markdown(*experiment_table(summary))]
    if summary["differences"]:
        lines += ["", f"Each system - {summary['baseline']}, each at its chosen budget, paired by seed and question "
                      "(percentage points, 95% interval):", "",
                  markdown(*experiment_differences_table(summary))]
    lines += ["", "Dev F1 at every budget (mean, then per seed): what the budgets were chosen on.", "",
              markdown(*dev_curve_table(summary))]
    if summary.get("reselected"):
        lines += ["", "Note: these choices differ from an earlier one whose held-out scores were written "
                      f"(selections.jsonl): {', '.join(summary['reselected'])}."]
    return "\n".join(lines) + "\n"


def dev_screen_table(summary: dict) -> Table:
    """`--dev-only`: each system at its budget chosen on dev, its dev F1 and its paired dev difference."""
    axes = varying_axes(summary)
    rows = []
    if summary.get("base"):
        rows.append([summary["base"]["system"], *[""] * len(axes), "untrained", f"{summary['base']['f1']:.2f}", "", ""])
    for c in summary["cells"]:
        d = c["difference"]
        rows.append([c["system"], *[str(c[a]) for a in axes], str(c["budget"]), _dev(c),
                     " / ".join(f"{v:.1f}" for v in c["per_seed"].values()),
                     f"{d['mean']:+.2f} ({' / '.join(f'{v:+.1f}' for v in d['per_seed'])})" if d else ""])
    return Table(["system", *axes, "budget (steps)", "dev F1 (sd)", "per seed", f"- {summary['baseline']}, per seed"],
                 rows, frozenset({len(axes) + 1, len(axes) + 2}))


def dev_screen_markdown(summary: dict) -> str:
    """What `laffi experiment --dev-only` prints and writes (summaries/PLAN.dev.md): no held-out number."""
    fixed = fixed_axes(summary)
    lines = ["# laffi experiment --dev-only", "",
             f"Dev questions: {summary['dev_questions']}; seeds: {', '.join(map(str, summary['seeds']))}; budgets "
             f"tried: {', '.join(map(str, summary['budgets']))} steps" + (f"; fixed: {', '.join(fixed)}" if fixed else ""),
             "", "A screen: each system at the budget with its best mean dev F1 over seeds; the difference from "
             f"{summary['baseline']} pairs each seed with {summary['baseline']}'s at its own chosen budget. The "
             "held-out set is not scored; run without --dev-only for the finalists.", "",
             markdown(*dev_screen_table(summary)), "", "Dev F1 at every budget (mean, then per seed).", "",
             markdown(*dev_curve_table(summary))]
    return "\n".join(lines) + "\n"


# --- annotators: stats.json (`laffi stats`) -------------------------------------------------------

def raters_table(result: dict) -> Table:
    """Each rater's number of answers judged and of each verdict."""
    return Table(["rater", "answers", *VERDICTS],
                 [[name, str(sum(counts.values())), *[str(counts.get(v, 0)) for v in VERDICTS]]
                  for name, counts in result["raters"].items()],
                 frozenset(range(1, 2 + len(VERDICTS))))


def pairs_table(result: dict) -> Table:
    """Each two raters' shared answers, percent agreement and Cohen's kappa."""
    rows = [[p["a"], p["b"], str(p["answers"]), f"{p['agreement']:.1f}",
             "n/a" if p["kappa"] is None else f"{p['kappa']:.3f}"] for p in result["pairs"]]
    return Table(["rater a", "rater b", "same answers", "agreement %", "Cohen's kappa"],
                 rows or [["(no two raters judged the same answers)", "", "", "", ""]], frozenset({2, 3, 4}))


def stats_markdown(result: dict) -> str:
    """What `laffi stats` prints."""
    return markdown(*raters_table(result)) + "\n\n" + markdown(*pairs_table(result))
