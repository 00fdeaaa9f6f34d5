"""Matplotlib figures for experiments: learning curves and confusion matrices (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for method, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["train_loss"] for h in hist], label=method)
        phys = [(h["epoch"], h["test_accuracy_physical"]) for h in hist if h.get("test_accuracy_physical") is not None]
        if phys:
            a2.plot(*zip(*phys), marker="o", ms=3, label=f"{method}: on the physical system")
        twin = [(h["epoch"], h["test_accuracy_twin"]) for h in hist if h.get("test_accuracy_twin") is not None]
        if twin:
            a2.plot(*zip(*twin), ls="--", label=f"{method}: on its twin")
    a1.set(xlabel="epoch", ylabel="training loss", title="training loss")
    a2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1.02))
    if not a2.lines:  # no test accuracy was monitored during training (e.g. monitor_physical: false)
        a2.text(0.5, 0.5, "not monitored during training", ha="center", va="center", transform=a2.transAxes)
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(cm: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    m = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(m, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(rows: list[dict[str, Any]], x_key: str, xlabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [r[x_key] for r in rows]
    for key, style in (("pat", "o-"), ("in_silico", "s-"), ("in_silico_twin", "s--"), ("exact", "^-")):
        if all(key in r for r in rows):
            label = {"in_silico_twin": "in_silico (what its twin believed)"}.get(key, f"{key} (physical)")
            if all(f"{key}_std" in r for r in rows):  # mean ± std over network seeds
                ax.errorbar(xs, [r[key] for r in rows], yerr=[r[f"{key}_std"] for r in rows], fmt=style, capsize=3,
                            label=f"{label}, mean ± std over {len(rows[0].get('seeds', []))} seeds")
            else:
                ax.plot(xs, [r[key] for r in rows], style, label=label)
    ax.set(xlabel=xlabel, ylabel="test accuracy", ylim=(0, 1.02))
    ax.set_xticks(xs)  # the sweep's points (layers: integers; scales: as given)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_experiment(results: dict[str, Any], histories: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    paths = [plot_learning_curves(histories, out / "learning_curves.png")] if histories else []
    if results.get("depth_sweep"):
        paths.append(plot_sweep(results["depth_sweep"], "layers", "physical layers", out / "depth_sweep.png"))
    if results.get("imperfection_sweep"):
        paths.append(plot_sweep(results["imperfection_sweep"], "scale", "imperfection scale (× default)",
                                out / "imperfection_sweep.png"))
    classes = results.get("experiment", {}).get("classes") or []
    for method, r in results["methods"].items():
        if r.get("confusion"):
            names = classes or [str(i) for i in range(len(r["confusion"]))]
            paths.append(plot_confusion(r["confusion"], names, f"{method} (physical, acc {r['test_accuracy']:.3f})",
                                        out / f"confusion_{method}.png"))
    return paths
