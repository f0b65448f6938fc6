"""laffi's tables of numbers, each built once as (header, rows) of formatted strings, rendered as
Markdown (results.md, ablation.md, `laffi stats`) by `markdown` or as HTML (report.html) by
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


# --- an ablation: ablation.json -------------------------------------------------------------------

def varying_axes(summary: dict) -> list[str]:
    """The axes with more than one value in the grid (system always): the columns worth showing."""
    cells = summary["cells"]
    return [a for a in summary["axes"] if a == "system" or len({c[a] for c in cells}) > 1]


def fixed_axes(summary: dict) -> list[str]:
    """"axis=value" for each axis with one value throughout the grid."""
    axes, first = varying_axes(summary), summary["cells"][0]
    return [f"{a}={first[a]}" for a in summary["axes"] if a not in axes]


def ablation_table(summary: dict) -> Table:
    """One row per cell (the base model's first, if the summary has it): its varying axes, mean EM and
    F1 with intervals over seeds and questions, EM per seed, and which cell's adapters it repeats."""
    axes = varying_axes(summary)
    rows = []
    base = summary.get("base")
    if base:
        rows.append(["", "base", *[""] * (len(axes) - 1), *_scores(base), "", "no training"])
    for i, c in enumerate(summary["cells"]):
        per_seed = " / ".join(f"{s['exact']:.1f}" for s in c["per_seed"])
        note = f"same adapters as #{c['same_adapters_as'][0]}" if c["same_adapters_as"] else ""
        rows.append([str(i), *[str(c[a]) for a in axes], *_scores(c), per_seed, note])
    n = len(axes)
    return Table(["#", *axes, *SCORES, "EM per seed", "note"], rows, frozenset({0, n + 1, n + 3}))


def difference_axes(summary: dict) -> list[str]:
    """The axes that tell the system - SFT differences apart: the other varying axes, and the system
    once the grid has more than LaFFi besides SFT."""
    others = [a for a in varying_axes(summary) if a != "system"]
    several = {d.get("system", "laffi") for d in summary["differences"]} != {"laffi"}
    return ["system", *others] if several else others


def ablation_differences_table(summary: dict) -> Table:
    """System - SFT per pair of cells that differ only in the system (its other varying axes)."""
    others = difference_axes(summary)
    return Table([*others, *DIFFERENCES],
                 [[*[str(d[a]) for a in others], *difference(d["exact"]), *difference(d["f1"])]
                  for d in summary["differences"]],
                 frozenset({len(others), len(others) + 2}))


def ablation_markdown(summary: dict) -> str:
    """ablation.md."""
    cells, fixed = summary["cells"], fixed_axes(summary)
    lines = ["# LaFFi ablation", "",
             f"Held-out questions: {cells[0]['questions']}; seeds: {', '.join(map(str, cells[0]['seeds']))}"
             + (f"; fixed: {', '.join(fixed)}" if fixed else ""), "",
             "Mean over seeds, 95% interval over seeds and held-out questions (percent).", "",
             markdown(*ablation_table(summary))]
    if summary["differences"]:
        lines += ["", "Each system - SFT, paired by seed and question (percentage points, 95% interval):", "",
                  markdown(*ablation_differences_table(summary))]
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
