"""The report card's PNG plots: training curves of a run, evaluation scores by stage, a sweep's scaling law.

The one idea: a plot is drawn only from data that is really there; with nothing to draw it returns None (or,
for an explicitly asked-for scaling plot, a NanochatError saying what is missing) and never an empty canvas.
Matplotlib runs headless (Agg) and each PNG is written atomically.
"""
from __future__ import annotations

from pathlib import Path

from nanochat.common import NanochatError, atomic_path
from nanochat.layout import MODEL_STAGES, STAGES
from nanochat.report_runs import TABLE, Run


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def curves_plot(run: Run, path: Path) -> Path | None:
    """Training loss and validation bpb against the optimizer step; None when the run logged neither."""
    panels = [(c, t) for c, t in (("train/loss", "training loss (nats/token)"), ("val/bpb", "validation bits per byte"))
              if run.metrics.get(c)]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        steps, values = zip(*run.metrics[column])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=f"{run.stage} {column}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(title)
        ax.set_title(f"{run.stage}: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{run.stage} run {run.path.name}")
    return _save(fig, path)


def eval_plot(runs: dict[str, Run], path: Path) -> Path | None:
    """Grouped bars: one group per table metric, one bar per stage that measured it."""
    stages = [s for s in MODEL_STAGES if s in runs and any(runs[s].score(k) is not None for _, k in TABLE)]
    if not stages:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(TABLE))]
        ys = [runs[stage].score(k) or 0.0 for _, k in TABLE]
        bars = ax.bar(xs, ys, width, label=STAGES[stage].label)
        for bar, (_, key) in zip(bars, TABLE):
            value = runs[stage].score(key)
            if value is not None:
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(TABLE)), [label for label, _ in TABLE])
    ax.set_ylabel("score (accuracy; CORE/ChatCORE centred)")
    ax.set_title("evaluation by stage")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="stage")
    return _save(fig, path)


def scaling_plot(runs, path=None) -> Path:
    """Validation bpb (and CORE where evaluated) against training FLOPs for a sweep of runs.

    `runs`: run folders or `Run`s (e.g. `report_runs.find_runs(outputs, "base")`, the `-m` sweep jobs under
    `outputs/base/multirun/*`). Runs without a FLOP count or a val bpb are left out.
    """
    runs = [r if isinstance(r, Run) else Run.load(r) for r in runs]
    points = [(r.flops(), r.val_bpb(), r.score("core"), r) for r in runs]
    points = sorted((p for p in points if p[0] and p[1] is not None), key=lambda p: p[0])
    if not points:
        raise NanochatError("no run has both a training FLOP count and a validation bpb to plot")
    path = Path(path) if path is not None else Path(runs[0].path).parent / "scaling.png"
    has_core = any(p[2] is not None for p in points)
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if has_core else 1, figsize=(11 if has_core else 6, 4), squeeze=False)
    panels = [(1, "validation bits per byte")] + ([(2, "CORE")] if has_core else [])
    for ax, (idx, label) in zip(axes[0], panels):
        pts = [p for p in points if p[idx] is not None]
        ax.plot([p[0] for p in pts], [p[idx] for p in pts], marker="o", label=label)
        for p in pts:
            depth = p[3].model_config.get("n_layer") or p[3].cfg("model.depth")
            ax.annotate(f"d{depth}" if depth else p[3].path.name, (p[0], p[idx]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.1)  # room for the depth labels
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs compute")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)
