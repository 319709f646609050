"""The trade-off plots of the report (PNG, written next to report.md)."""

from __future__ import annotations

import math
from pathlib import Path


GROUP_COLOURS = {"synthetic/heldout": "tab:blue", "adversarial/all": "tab:red", "real/i2p-target": "tab:green"}


def plot_tradeoffs(data: dict, out: Path) -> list[str]:
    """One plot per swept method (tradeoff_sanitizer.png, tradeoff_safree.png), then all methods
    together on each headline group (tradeoff.png). Returns the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, sweep in data["sweeps"].items():
        if key == "points" or not sweep.get("groups"):
            continue
        name = "tradeoff_sanitizer.png" if key == "sanitizer" else "tradeoff_safree.png"
        _plot_sweep(plt, data, key, sweep).savefig(out / name, dpi=110)
        plt.close("all")
        files.append(name)
    if data["sweeps"]["sanitizer"]["groups"]:
        _plot_all_methods(plt, data).savefig(out / "tradeoff.png", dpi=110)
        plt.close("all")
        files.append("tradeoff.png")
    return files


def _number(value) -> float:
    """A metric as plotted: report.json writes an undefined one (NaN) as null."""
    return math.nan if value is None else float(value)


def _plot_sweep(plt, data: dict, key: str, sweep: dict):
    """A method's sweep: probe ASR and concept residual against benign cosine, one line per group."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for group, pts in sweep["groups"].items():
        c = GROUP_COLOURS.get(group, None)
        x = [_number(p["benign_cosine_mean"]) for p in pts]
        for ax, metric in zip(axes, ("probe_asr_after", "concept_residual")):
            y = [_number(p[metric]) for p in pts]
            ax.plot(x, y, "o-", color=c, label=group)
            for p, xi, yi in zip(pts, x, y):
                if math.isnan(xi) or math.isnan(yi):
                    continue
                ax.annotate(f"{p['setting']:g}", (xi, yi), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    for ax, title in zip(axes, ("probe attack success rate (lower = more erased)",
                                "concept residual (0 = benign level, 1 = unchanged)")):
        ax.set_xlabel("benign cosine to original (preservation)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{key}: {sweep['knob']} sweep ({data['encoder']['family']})", fontsize=11)
    fig.tight_layout()
    return fig


def _plot_all_methods(plt, data: dict):
    """Every method's probe ASR against benign cosine, one panel per headline group."""
    groups = list(data["sweeps"]["sanitizer"]["groups"])
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for key, style in (("sanitizer", "o-"), ("SAFREE-style projection", "s--")):
            pts = data["sweeps"][key]["groups"].get(group, [])
            ax.plot([p["benign_cosine_mean"] for p in pts], [p["probe_asr_after"] for p in pts], style,
                    label=f"{key} ({data['sweeps'][key]['knob']} sweep)")
        for name, marker in (("keyword filter", "^"), ("no defence", "x")):
            p = data["sweeps"].get("points", {}).get(group, {}).get(name)
            if p:
                ax.plot([p["benign_cosine_mean"]], [p["probe_asr_after"]], marker, ms=10, label=name)
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("benign cosine to original (preservation)")
        ax.set_ylabel("probe attack success rate")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Erasure vs preservation ({data['encoder']['family']}; lower-right is better)", fontsize=11)
    fig.tight_layout()
    return fig
