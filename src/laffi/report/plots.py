"""Every figure laffi draws, as PNG bytes: results with intervals, ablation charts, loss curves and
attention maps. `laffi report` embeds them; `laffi attention` also saves its own as files.

Matplotlib's Agg backend draws without a display (servers, CI), so it is chosen before pyplot loads.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from laffi.layout import RunLayout  # noqa: E402
from laffi.records import write_atomic  # noqa: E402
from laffi.report.tables import difference_axes  # noqa: E402

COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "laffi": "#d62728"}
ATTENTION_TITLES = {"entropy": "attention entropy (nats)", "distance": "mean attention distance (tokens)",
                    "local_share": "local share (within the window)", "gold_mass": "mass on the gold answer span"}
METRIC_NAMES = {"exact": "exact match (%)", "f1": "F1 (%)"}


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _color(name: str, index: int) -> str:
    return COLORS.get(name, plt.get_cmap("tab10")(index % 10))


def results_chart(results: dict[str, dict]) -> bytes:
    """EM and F1 per system with their 95% intervals (results.json)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("exact", "f1")):
        names = list(results)
        values = [results[s][metric] for s in names]
        low = [v - results[s][f"{metric}_ci95"][0] for s, v in zip(names, values)]
        high = [results[s][f"{metric}_ci95"][1] - v for s, v in zip(names, values)]
        ax.bar(names, values, yerr=[low, high], capsize=6, color=[_color(s, i) for i, s in enumerate(names)])
        ax.set_title(METRIC_NAMES[metric])
        ax.grid(axis="y", alpha=0.3)
    return png(fig)


def ablation_charts(summary: dict, axes_shown: list[str]) -> list[tuple[str, bytes]]:
    """One chart per varying axis (x) with a line per system (and other varying axes), error bars
    = the 95% intervals; then the paired system - SFT differences."""
    cells, base = summary["cells"], summary.get("base")
    charts = []
    for axis in [a for a in axes_shown if a != "system"] or ["system"]:
        values = list(dict.fromkeys(c[axis] for c in cells))
        series: dict[tuple, dict] = {}
        for c in cells:
            key = tuple((a, c[a]) for a in axes_shown if a != axis)
            series.setdefault(key, {})[c[axis]] = c
        fig, panels = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, metric in zip(panels, ("exact", "f1")):
            for index, (key, points) in enumerate(series.items()):
                xs = [values.index(v) + (index - (len(series) - 1) / 2) * 0.06 for v in points]
                ys = [p[metric] for p in points.values()]
                err = [[y - p[f"{metric}_ci95"][0] for y, p in zip(ys, points.values())],
                       [p[f"{metric}_ci95"][1] - y for y, p in zip(ys, points.values())]]
                name = ", ".join(f"{v}" if a == "system" else f"{a}={v}" for a, v in key) or axis
                system = dict(key).get("system", "")
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=name, color=_color(system, index),
                            linestyle="-" if len(values) > 1 else "none", alpha=0.9)
            if base:
                ax.axhline(base[metric], color=COLORS["base"], linestyle="--", label="base")
            ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlabel(axis)
            ax.set_title(METRIC_NAMES[metric])
            ax.grid(alpha=0.3)
        panels[1].legend(fontsize=8, loc="best")
        charts.append((f"Exact match and F1 by {axis}", png(fig)))
    differences = summary.get("differences") or []
    if differences:
        others = difference_axes(summary)
        names = [", ".join(f"{a}={d[a]}" for a in others) or "all" for d in differences]
        fig, panels = plt.subplots(1, 2, figsize=(10, 0.35 * len(names) + 1.3))
        for ax, metric in zip(panels, ("exact", "f1")):
            mean = [d[metric][0] for d in differences]
            err = [[m - d[metric][1] for m, d in zip(mean, differences)],
                   [d[metric][2] - m for m, d in zip(mean, differences)]]
            ax.errorbar(mean, range(len(names)), xerr=err, fmt="o", capsize=4, color=COLORS["laffi"])
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(range(len(names)), names if ax is panels[0] else [""] * len(names))
            ax.set_title(f"system - SFT, {METRIC_NAMES[metric].replace('(%)', '(points)')}")
            ax.grid(alpha=0.3)
        charts.append(("system - SFT, paired by seed and question", png(fig)))
    return charts


def loss_curves(logs: dict[str, list[Any]]) -> bytes:
    """Training loss per optimizer step, a line per adapter; `logs`: label -> TrainLogEntry list."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    # shades of each system's colour, so a dozen lines still read as two families
    shades = {"sft": plt.get_cmap("Blues"), "laffi": plt.get_cmap("Reds")}
    family = {name: "laffi" if "laffi" in name else "sft" if "sft" in name else "" for name in logs}
    for index, (name, entries) in enumerate(logs.items()):
        system = family[name]
        members = [n for n in logs if family[n] == system]
        color = (shades[system](0.45 + 0.5 * members.index(name) / max(len(members) - 1, 1))
                 if system in shades and len(members) > 1 else _color(system, index))
        ax.plot([e.step for e in entries], [e.loss for e in entries], label=name, alpha=0.9, color=color,
                linestyle="-" if system != "sft" else "--", marker=".")
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
    fig, panels = plt.subplots(1, len(metrics), figsize=(16, 3.4), layout="constrained")
    for ax, metric in zip(panels, metrics):
        for name, style in (("base", "--"), (system, "-")):
            values = np.array(results[name][metric])
            ax.plot(range(values.shape[0]), values.mean(axis=1), style, marker=".", label=name,
                    color=_color(name if name == "base" else system, 0))
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
