"""The report card: one markdown page (plus PNG plots) summarising the newest run of every pipeline stage.

The one idea: the report only *reads* what the stages leave on disk (`outputs/<stage>/<run>/summary.json`,
`config.yaml`, `logs/metrics.csv`, `model/config.json`, `eval.json`) and never trusts any of it to exist; a
missing file or key becomes "-" or a sentence saying what is missing, never an exception.

    python -m nanochat.report [--outputs DIR] [--out FILE] [--price-per-hour 3.0]
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import NanochatError, atomic_path, atomic_write_bytes

STAGES = ("tokenizer", "base", "mid", "sft", "rl")
MODEL_STAGES = ("base", "mid", "sft", "rl")
# (row label, eval.json results key) of the summary table
TABLE = (("CORE", "core"), ("ARC-Easy", "arc_easy"), ("ARC-Challenge", "arc_challenge"), ("MMLU", "mmlu"),
         ("GSM8K", "gsm8k"), ("HumanEval", "humaneval"), ("ChatCORE", "chatcore"))
DEFAULT_PRICE_PER_HOUR = 3.0  # one H100, USD
PLOTS_DIR = "report_plots"


# -- reading run folders --------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}
    except Exception:  # missing file, no PyYAML, or a broken file: the report shows "-"
        return {}


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Columns of a Lightning CSVLogger file as {name: [(step, value), ...]}, skipping empty cells."""
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = _num(row.get("step"))
                if step is None:
                    continue
                for key, value in row.items():
                    v = _num(value)
                    if key and key not in ("step", "epoch") and v is not None:
                        series.setdefault(key, []).append((step, v))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return series


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


@dataclass
class Run:
    """Everything the report needs about one run folder (every field may be empty)."""

    stage: str
    path: Path
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)  # the whole eval.json
    model_config: dict = field(default_factory=dict)  # GPTConfig fields

    @classmethod
    def load(cls, path, stage: str | None = None) -> "Run":
        path = Path(path)
        summary = _read_json(path / "summary.json")
        model_dir = Path(summary["model_dir"]) if isinstance(summary.get("model_dir"), str) else path / "model"
        if not (model_dir / "config.json").exists():
            model_dir = path / "model"
        return cls(stage=stage or summary.get("stage") or path.parent.name, path=path, summary=summary,
                   config=_read_yaml(path / "config.yaml"), metrics=read_metrics(path / "logs" / "metrics.csv"),
                   evals=_read_json(path / "eval.json"),
                   model_config=_read_json(model_dir / "config.json").get("config") or {})

    # derived facts -----------------------------------------------------------------------------------------
    def cfg(self, dotted: str):
        return _get(self.config, dotted)

    def plan(self, *keys):
        plan = self.summary.get("plan") if isinstance(self.summary.get("plan"), dict) else {}
        return next((plan[k] for k in keys if _num(plan.get(k)) is not None), None)

    def _gpt(self):
        try:
            import torch

            from nanochat.gpt import GPT, GPTConfig

            with torch.device("meta"):  # shapes only: no memory, no init
                return GPT(GPTConfig(**self.model_config))
        except Exception:
            return None

    def params(self) -> int | None:
        p = self.plan("params", "n_params")
        if p is None and self.model_config:
            model = self._gpt()
            p = model.num_params() if model is not None else None
        return int(p) if p is not None else None

    def tokens(self) -> int | None:
        t = self.plan("tokens", "total_tokens")
        batch = _num(self.cfg("stage.total_batch_tokens")) or _num(self.cfg("hardware.total_batch_tokens"))
        if t is None and _num(self.summary.get("steps")) is not None and batch:
            t = self.summary["steps"] * batch
        return int(t) if t is not None else None

    def flops(self) -> float | None:
        f = self.plan("flops", "total_flops")
        if f is None and self.tokens() and self.model_config:
            model = self._gpt()
            f = model.estimate_flops() * self.tokens() if model is not None else None
        return _num(f)

    def last(self, column: str) -> float | None:
        points = self.metrics.get(column) or []
        return points[-1][1] if points else None

    def score(self, key: str) -> float | None:
        res = _get(self.evals, f"results.{key}")
        return _num(res.get("score")) if isinstance(res, dict) else _num(res)

    def seconds(self) -> float:
        return (_num(self.summary.get("fit_seconds")) or 0.0) + (_num(self.evals.get("seconds")) or 0.0)

    def gpus(self) -> int:
        if self.cfg("hardware.accelerator") != "gpu":
            return 0
        return int(_num(self.cfg("hardware.devices")) or 1) * int(_num(self.cfg("hardware.num_nodes")) or 1)


def _run_time(path: Path) -> float:
    files = [path / n for n in ("summary.json", "eval.json", "config.yaml")] + [path]
    return max(f.stat().st_mtime for f in files if f.exists())


def find_runs(root, stage: str) -> list[Path]:
    """Run folders of a stage, oldest first (single runs and `multirun/*` sweep jobs)."""
    base = Path(root) / stage
    candidates = [p for p in base.glob("*") if p.is_dir() and p.name != "multirun"]
    candidates += [p for p in base.glob("multirun/*") if p.is_dir()]
    runs = [p for p in candidates
            if any((p / n).exists() for n in ("summary.json", "eval.json", "config.yaml", "logs/metrics.csv"))]
    return sorted(runs, key=_run_time)


def latest_runs(root) -> dict[str, Run]:
    out = {}
    for stage in STAGES:
        runs = find_runs(root, stage)
        if runs:
            out[stage] = Run.load(runs[-1], stage)
    return out


# -- environment ----------------------------------------------------------------------------------------------
def _git(args: list[str]) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict:
    commit = _git(["rev-parse", "--short=12", "HEAD"])
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    return {"commit": commit or "unknown (not a git checkout)", "dirty": bool(dirty) if commit else None,
            "cpu": _cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": _version("torch"), "lightning": _version("lightning"), "platform": platform.platform(),
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


# -- plots ----------------------------------------------------------------------------------------------------
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
        bars = ax.bar(xs, ys, width, label=stage.upper())
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

    `runs`: run folders or `Run`s (e.g. `find_runs(outputs, "base")`, the `-m` sweep jobs under
    `outputs/base/multirun/*`). Runs without a FLOP count or a val bpb are left out.
    """
    runs = [r if isinstance(r, Run) else Run.load(r) for r in runs]
    points = [(r.flops(), _num(r.summary.get("val_bpb")) or r.last("val/bpb"), r.score("core"), r) for r in runs]
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


# -- markdown -------------------------------------------------------------------------------------------------
def _f(x, spec: str = ".4f", suffix: str = "") -> str:
    v = _num(x)
    return "-" if v is None else format(v, spec) + suffix


def _duration(seconds: float | None) -> str:
    s = _num(seconds)
    if s is None:
        return "-"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _si(x) -> str:
    v = _num(x)
    if v is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:g}"


def header_section(env: dict, root: Path) -> list[str]:
    dirty = {True: " (uncommitted changes)", False: " (clean)", None: ""}[env["dirty"]]
    return ["# nanochat report card", "", f"Generated {env['date']} from `{root}`.", "", "## Environment", "",
            f"- git commit: `{env['commit']}`{dirty}", f"- CPU: {env['cpu']} ({env['cores']} logical cores)",
            f"- GPU: {env['gpu'] or 'none visible'}", f"- Python {env['python']}, torch {env['torch']}, "
            f"lightning {env['lightning']}", f"- platform: {env['platform']}", ""]


def tokenizer_section(run: Run | None) -> list[str]:
    lines = ["## Tokenizer", ""]
    if run is None:
        return lines + ["No tokenizer run found (`python train.py stage=tokenizer`).", ""]
    s = run.summary
    lines += [f"Run folder: `{run.path}`", "", f"- vocabulary: {s.get('vocab_size', '-')} tokens "
              f"(split pattern {s.get('pattern', '-')})", f"- training time: {_duration(s.get('fit_seconds'))}"]
    comp = s.get("compression") if isinstance(s.get("compression"), dict) else {}
    if comp:
        lines += ["", "| tokenizer | vocab | bytes per token |", "|---|---|---|"]
        for name, row in comp.items():
            vocab, ratio = (row + [None, None])[:2] if isinstance(row, list) else (None, row)
            lines.append(f"| {name} | {vocab if vocab is not None else '-'} | {_f(ratio, '.3f')} |")
    elif not s:
        lines.append("- summary.json missing: the run did not finish")
    return lines + [""]


def stage_section(stage: str, run: Run | None, plot: Path | None, out_dir: Path) -> list[str]:
    lines = [f"## {stage.upper()}", ""]
    if run is None:
        return lines + [f"Not run (`python train.py stage={stage}`).", ""]
    s = run.summary
    lines += [f"Run folder: `{run.path}`", ""]
    if not s:
        lines += ["summary.json missing: the run did not finish (or is still running).", ""]
    mfu = _num(s.get("mfu"))
    devices = run.cfg("hardware.devices")
    rows = [("depth", run.cfg("model.depth") or run.model_config.get("n_layer")),
            ("preset", run.cfg("model.preset")), ("hardware", run.cfg("hardware.name")),
            ("devices", devices if devices is not None else None), ("precision", run.cfg("hardware.precision")),
            ("parameters", _si(run.params())), ("training tokens", _si(run.tokens())),
            ("training FLOPs", _si(run.flops())), ("steps", s.get("steps")),
            ("training time", _duration(s.get("fit_seconds"))),
            ("final training loss", _f(run.last("train/loss"))),
            ("validation bpb", _f(_num(s.get("val_bpb")) if _num(s.get("val_bpb")) is not None else run.last("val/bpb"))),
            ("throughput", _f(s.get("tok_per_s"), ",.0f", " tok/s")),
            ("MFU", "-" if mfu is None else f"{100 * mfu:.1f}%")]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {'-' if v is None else v} |" for k, v in rows] + [""]
    results = run.evals.get("results") if isinstance(run.evals.get("results"), dict) else {}
    if results:
        lines += [f"Evaluation (`eval.json`, {_duration(run.evals.get('seconds'))}):", "", "| metric | score |",
                  "|---|---|"]
        labels = {key: label for label, key in TABLE} | {"bpb": "bits per byte", "spellingbee": "SpellingBee"}
        lines += [f"| {labels.get(name, name)} | {_f(run.score(name))} |" for name in results]
        core_tasks = _get(results, "core.tasks")
        if isinstance(core_tasks, dict) and core_tasks:
            lines += ["", "<details><summary>CORE tasks</summary>", "", "| task | accuracy | centred | n |",
                      "|---|---|---|---|"]
            lines += [f"| {t} | {_f(_get(v, 'accuracy'))} | {_f(_get(v, 'centered'))} | {_get(v, 'n') or '-'} |"
                      for t, v in core_tasks.items() if isinstance(v, dict)]
            lines += ["", "</details>"]
        lines.append("")
    else:
        lines += ["Not evaluated (no `eval.json`; run `python evaluate.py`).", ""]
    failed = run.evals.get("failed") if isinstance(run.evals.get("failed"), dict) else {}
    if failed:
        lines += ["Evaluations that failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
    if plot is not None:
        lines += [f"![{stage} training curves]({plot.relative_to(out_dir).as_posix()})", ""]
    elif not run.metrics:
        lines += ["No training curves (`logs/metrics.csv` missing or empty; logger=none?).", ""]
    return lines


def summary_section(runs: dict[str, Run], plot: Path | None, out_dir: Path, price_per_hour: float) -> list[str]:
    lines = ["## Summary", "", "| metric | " + " | ".join(s.upper() for s in MODEL_STAGES) + " |",
             "|---|" + "---|" * len(MODEL_STAGES)]
    for label, key in TABLE:
        cells = [_f(runs[s].score(key)) if s in runs else "-" for s in MODEL_STAGES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if plot is not None:
        lines += [f"![evaluation by stage]({plot.relative_to(out_dir).as_posix()})", ""]
    total = sum(r.seconds() for r in runs.values())
    gpu_hours = sum(r.seconds() * r.gpus() for r in runs.values()) / 3600
    lines.append(f"Total wall time (training + evaluation, all stages): {_duration(total)}.")
    if gpu_hours > 0:
        lines.append(f"Estimated cost: ${gpu_hours * price_per_hour:,.2f} ({gpu_hours:.2f} GPU-hours at "
                     f"${price_per_hour:g} per GPU-hour; pass --price-per-hour for your rate).")
    elif runs:
        lines.append("Cost: a CPU run (no GPU time to pay for).")
    return lines + [""]


def scaling_section(root: Path, out_dir: Path) -> list[str]:
    sweep = [p for p in (root / "base" / "multirun").glob("*") if p.is_dir()]
    if len(sweep) < 2:
        return []
    try:
        plot = scaling_plot(sorted(sweep, key=_run_time), out_dir / PLOTS_DIR / "scaling.png")
    except NanochatError as e:
        return ["## Scaling sweep", "", f"{len(sweep)} sweep runs, but no plot: {e}.", ""]
    return ["## Scaling sweep", "", f"{len(sweep)} base runs under `{root / 'base' / 'multirun'}`.", "",
            f"![scaling]({plot.relative_to(out_dir).as_posix()})", ""]


def build_report(outputs_root=None, out_path=None, price_per_hour: float = DEFAULT_PRICE_PER_HOUR) -> Path:
    """Write the report card (markdown, atomically) and its plots; returns the markdown path.

    outputs_root: the run folders' root (default `nanochat.checkpoint.outputs_dir()`);
    out_path: the markdown file (default `<outputs_root>/report.md`); plots go to `report_plots/` beside it.
    """
    from nanochat.checkpoint import outputs_dir

    root = Path(outputs_root) if outputs_root is not None else outputs_dir()
    if not root.is_dir():
        raise NanochatError(f"no outputs folder at {root}; train something first (`python train.py`)")
    if not (_num(price_per_hour) is not None and price_per_hour >= 0):
        raise NanochatError(f"price per hour must be a non-negative number, got {price_per_hour!r}")
    out_path = Path(out_path) if out_path is not None else root / "report.md"
    out_dir = out_path.parent
    runs = latest_runs(root)
    plots = out_dir / PLOTS_DIR
    lines = header_section(environment(), root.resolve())
    if not runs:
        lines += [f"No runs found under `{root}` (expected `<stage>/<run_name>/` folders).", ""]
    lines += tokenizer_section(runs.get("tokenizer"))
    for stage in MODEL_STAGES:
        run = runs.get(stage)
        plot = curves_plot(run, plots / f"{stage}_curves.png") if run is not None else None
        lines += stage_section(stage, run, plot, out_dir)
    lines += summary_section(runs, eval_plot(runs, plots / "evaluation.png"), out_dir, price_per_hour)
    lines += scaling_section(root, out_dir)
    atomic_write_bytes(out_path, "\n".join(lines).encode())
    return out_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanochat.report", description="Write the nanochat report card.")
    parser.add_argument("--outputs", default=None, help="run folders' root (default $NANOCHAT_OUTPUTS or ./outputs)")
    parser.add_argument("--out", default=None, help="markdown file to write (default <outputs>/report.md)")
    parser.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR,
                        help="USD per GPU-hour for the cost estimate (default 3.0, an H100)")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.outputs, args.out, args.price_per_hour)
    except NanochatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
