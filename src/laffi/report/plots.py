"""Every figure laffi draws, as PNG bytes: results with intervals, experiment charts (dev curves), loss curves and
attention maps. `laffi report` embeds them; `laffi attention` also saves its own as files.

Matplotlib's Agg backend draws without a display (servers, CI), so it is chosen before pyplot loads.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from laffi.layout import RunLayout  # noqa: E402
from laffi.records import write_atomic  # noqa: E402
from laffi.systems import family_of  # noqa: E402
from laffi.report.tables import varying_axes  # noqa: E402

# Each family's colour (laffi.systems: a system's `family`; never its name), the shades of it that tell
# several of one family apart, and its line style in loss curves. A family not here (a user's own, or
# None: a system whose file is gone) gets one of tab10's colours, by its place.
COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "laffi": "#d62728"}
SHADES = {"base": "Greys", "sft": "Blues", "laffi": "Reds"}
LINESTYLES = {"sft": "--"}
ATTENTION_TITLES = {"entropy": "attention entropy (nats)", "distance": "mean attention distance (tokens)",
                    "local_share": "local share (within the window)", "gold_mass": "mass on the gold answer span"}
METRIC_NAMES = {"exact": "exact match (%)", "f1": "F1 (%)"}


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _color(family: str | None, index: int) -> str:
    """A family's colour, or tab10's `index`th for a family without one."""
    return COLORS.get(family, plt.get_cmap("tab10")(index % 10))


def family_colors(names: list[str], families: Mapping[str, str | None]) -> dict[str, Any]:
    """A colour per name (a system, or a label of one): its family's (`families`: name -> family), in
    shades of it where several names here share the family; a family without a colour, tab10's by place."""
    members: dict[str | None, list[str]] = {}
    for name in names:
        members.setdefault(families.get(name), []).append(name)
    colors = {}
    for index, name in enumerate(names):
        family = families.get(name)
        group = members[family]
        if family in SHADES and len(group) > 1:
            colors[name] = plt.get_cmap(SHADES[family])(0.45 + 0.5 * group.index(name) / (len(group) - 1))
        else:
            colors[name] = _color(family, index)
    return colors


def error_bar(value: float, interval: list[float]) -> tuple[float, float]:
    """How far an interval reaches below and above its mean. The interval is stored rounded to 2 decimals and
    the mean may not be: where every draw scores the same (one question, say), the mean 66.666... lies above
    the interval [66.67, 66.67] by rounding alone, and a negative bar is an error to matplotlib."""
    return max(0.0, value - interval[0]), max(0.0, interval[1] - value)


def results_chart(results: dict[str, dict], families: Mapping[str, str | None] | None = None) -> bytes:
    """EM and F1 per system with their 95% intervals (results.json), coloured by `families` (system ->
    family; default: each system's, laffi.systems.family_of)."""
    names = list(results)
    colors = family_colors(names, families if families is not None else {s: family_of(s) for s in names})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("exact", "f1")):
        values = [results[s][metric] for s in names]
        bars = [error_bar(v, results[s][f"{metric}_ci95"]) for s, v in zip(names, values)]
        ax.bar(names, values, yerr=[[low for low, _ in bars], [high for _, high in bars]], capsize=6,
               color=[colors[s] for s in names])
        ax.set_title(METRIC_NAMES[metric])
        ax.grid(axis="y", alpha=0.3)
    return png(fig)


def experiment_charts(summary: dict) -> list[tuple[str, bytes]]:
    """Dev F1 against the budget (a line per system and cell, its seeds as dots): what the choice was made
    on; then held-out F1 at each chosen budget with both intervals, and each system - the baseline."""
    axes = varying_axes(summary)
    families = {c["system"]: c["family"] for c in summary["cells"]}
    curves: dict[str, list[dict]] = {}
    for point in summary["dev_curves"]:
        name = ", ".join([point["system"], *(f"{a}={point[a]}" for a in axes)])
        curves.setdefault(name, []).append(point)
    systems = list(dict.fromkeys(c["system"] for c in summary["cells"]))
    shade = family_colors(systems, families)  # systems of one family in shades of its colour
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, points in curves.items():
        color = shade[points[0]["system"]]
        budgets = [p["budget"] for p in points]
        ax.plot(budgets, [p["f1"] for p in points], marker="o", label=name, color=color)
        for p in points:
            ax.scatter([p["budget"]] * len(p["per_seed"]), list(p["per_seed"].values()), color=color, s=10, alpha=0.4)
    if summary.get("base"):
        ax.axhline(summary["base"]["dev"]["f1"], color=COLORS["base"], linestyle="--", label="base")
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary["budgets"], [str(b) for b in summary["budgets"]])
    ax.set_xlabel("budget (optimizer steps, a whole schedule each)")
    ax.set_ylabel("dev F1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    charts = [("Dev F1 at each budget (mean over seeds; dots: seeds)", png(fig))]
    cells = summary["cells"]
    names = [", ".join([c["system"], *(f"{a}={c[a]}" for a in axes), f"{c['budget']} steps"]) for c in cells]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(cells) + 1.3))
    for i, c in enumerate(cells):
        color = shade[c["system"]]
        ax.errorbar([c["f1"]], [i], xerr=[[side] for side in error_bar(c["f1"], c["f1_ci95_articles"])],
                    fmt="none", capsize=2, color=color, alpha=0.4)
        ax.errorbar([c["f1"]], [i], xerr=[[side] for side in error_bar(c["f1"], c["f1_ci95"])], fmt="o",
                    capsize=4, color=color)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("held-out F1 (%): 95% interval over questions (dark) and over articles (light)")
    ax.grid(alpha=0.3)
    charts.append(("Held-out F1 at the chosen budget", png(fig)))
    differences = summary.get("differences") or []
    if differences:
        labels = [", ".join([d["system"], *(f"{a}={d[a]}" for a in axes)]) for d in differences]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.3))
        mean = [d["f1"][0] for d in differences]
        ax.errorbar(mean, range(len(labels)), xerr=[[m - d["f1"][1] for m, d in zip(mean, differences)],
                                                    [d["f1"][2] - m for m, d in zip(mean, differences)]],
                    fmt="o", capsize=4, color="#333333")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel(f"F1 - {summary['baseline']} (points), paired by seed and question")
        ax.grid(alpha=0.3)
        charts.append((f"Each system - {summary['baseline']}", png(fig)))
    return charts


def loss_curves(logs: dict[str, list[Any]], families: Mapping[str, str | None] | None = None) -> bytes:
    """Training loss per optimizer step, a line per adapter; `logs`: label -> TrainLogEntry list,
    `families`: label -> the family of its system (none known: a colour each)."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    # shades of each family's colour, so a dozen lines still read as a few families
    families = families or {}
    colors = family_colors(list(logs), families)
    for name, entries in logs.items():
        ax.plot([e.step for e in entries], [e.loss for e in entries], label=name, alpha=0.9, color=colors[name],
                linestyle=LINESTYLES.get(families.get(name), "-"), marker=".")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.grid(alpha=0.3)
    scored = {name: [e for e in entries if getattr(e, "dev_f1", None) is not None] for name, entries in logs.items()}
    if any(scored.values()):  # train.eval_every: dev F1 on a second axis, in each line's colour
        dev = ax.twinx()
        colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
        for name, entries in scored.items():
            if entries:
                dev.plot([e.step for e in entries], [e.dev_f1 for e in entries], color=colors.get(name),
                         linestyle=":", marker="s", label=f"{name} dev F1")
        dev.set_ylabel("dev F1 (%), dotted")
    if len(logs) <= 12:
        ax.legend(fontsize=7, loc="upper right")
    return png(fig)


def attention_figures(results: dict) -> dict[str, bytes]:
    """Heatmaps (layer x head; base, adapter, difference) per metric, and per-layer lines."""
    system = results["system"]
    metrics = list(results["base"])  # laffi.analysis.attention.METRICS, in its order
    figures = {}
    for metric in metrics:
        base, tuned = np.array(results["base"][metric]), np.array(results[system][metric])
        fig, panels = plt.subplots(1, 3, figsize=(12, 0.12 * base.shape[0] + 2.6), layout="constrained")
        low, high = min(base.min(), tuned.min()), max(base.max(), tuned.max())
        for ax, values, title in ((panels[0], base, "base"), (panels[1], tuned, system)):
            image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=high)
            ax.set_title(title)
        fig.colorbar(image, ax=panels[:2])
        difference = tuned - base
        bound = float(np.abs(difference).max()) or 1.0
        image = panels[2].imshow(difference, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
        panels[2].set_title(f"{system} - base")
        fig.colorbar(image, ax=panels[2])
        for ax in panels:
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(ATTENTION_TITLES.get(metric, metric))
        figures[f"heatmap-{metric}"] = png(fig)
    # "base": attention.json's key for the model without the adapter, drawn as the base family
    lines = (("base", "--", COLORS["base"]), (system, "-", _color(family_of(system), 0)))
    fig, panels = plt.subplots(1, len(metrics), figsize=(16, 3.4), layout="constrained")
    for ax, metric in zip(panels, metrics):
        for name, style, color in lines:
            values = np.array(results[name][metric])
            ax.plot(range(values.shape[0]), values.mean(axis=1), style, marker=".", label=name, color=color)
        ax.set_title(ATTENTION_TITLES.get(metric, metric), fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    panels[0].legend()
    figures["layers"] = png(fig)
    return figures


def save_attention_figures(results: dict, layout: RunLayout) -> list[Path]:
    """`laffi attention`'s PNGs beside its attention.json (RUN/attention/SYSTEM/NAME.png)."""
    paths = []
    for name, data in attention_figures(results).items():
        paths.append(write_atomic(layout.attention_figure(results["system"], name), data))
    return paths
