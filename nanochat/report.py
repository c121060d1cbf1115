"""The report card: one markdown page (plus PNG plots) summarising the newest run of every pipeline stage.

The one idea: the report only *reads* what the stages leave in their run folders (`report_runs` reads them,
`report_plots` draws them, this file writes the page) and never trusts any of it to exist; a missing file or
key becomes "-" or a sentence saying what is missing, never an exception. Stages, their order and their
labels come from `nanochat.layout.STAGES`.

    python -m nanochat.report [outputs=DIR] [out=FILE] [price_per_hour=3.0]
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nanochat.common import NanochatError, atomic_write_bytes, knob
from nanochat import layout
from nanochat.layout import MODEL_STAGES, STAGES, RunFolder, sweep_folders
from nanochat.report_plots import curves_plot, eval_plot, scaling_plot
from nanochat.report_runs import TABLE, Run, dig, find_runs, latest_runs, num, run_time

__all__ = ["build_report", "main", "find_runs", "latest_runs", "scaling_plot", "Run", "NanochatError"]

DEFAULT_PRICE_PER_HOUR = 3.0  # one H100, USD
PLOTS_DIR = "report_plots"
_FILES = RunFolder(Path())  # the run-folder file names, for the sentences that mention them


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
    """The machine and code the report is generated on (git commit, CPU, GPU, library versions)."""
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


# -- markdown -------------------------------------------------------------------------------------------------
def _f(x, spec: str = ".4f", suffix: str = "") -> str:
    v = num(x)
    return "-" if v is None else format(v, spec) + suffix


def _duration(seconds: float | None) -> str:
    s = num(seconds)
    if s is None:
        return "-"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _si(x) -> str:
    v = num(x)
    if v is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:g}"


def _image(alt: str, plot: Path, out_dir: Path) -> list[str]:
    return [f"![{alt}]({plot.relative_to(out_dir).as_posix()})", ""]


def header_section(env: dict, root: Path) -> list[str]:
    dirty = {True: " (uncommitted changes)", False: " (clean)", None: ""}[env["dirty"]]
    return ["# nanochat report card", "", f"Generated {env['date']} from `{root}`.", "", "## Environment", "",
            f"- git commit: `{env['commit']}`{dirty}", f"- CPU: {env['cpu']} ({env['cores']} logical cores)",
            f"- GPU: {env['gpu'] or 'none visible'}", f"- Python {env['python']}, torch {env['torch']}, "
            f"lightning {env['lightning']}", f"- platform: {env['platform']}", ""]


def tokenizer_section(run: Run | None) -> list[str]:
    stage = STAGES["tokenizer"]
    lines = [f"## {stage.label}", ""]
    if run is None:
        return lines + [f"No tokenizer run found (`{stage.train_command}`).", ""]
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
        lines.append(f"- {_FILES.summary.name} missing: the run did not finish")
    return lines + [""]


def _eval_lines(run: Run) -> list[str]:
    results = run.evals.get("results") if isinstance(run.evals.get("results"), dict) else {}
    if not results:
        return [f"Not evaluated (no `{_FILES.eval_json.name}`; run `python evaluate.py`).", ""]
    lines = [f"Evaluation (`{_FILES.eval_json.name}`, {_duration(run.evals.get('seconds'))}):", "",
             "| metric | score |", "|---|---|"]
    labels = {key: label for label, key in TABLE} | {"bpb": "bits per byte", "spellingbee": "SpellingBee"}
    mode = dig(results, "core.prompts")  # how CORE's few-shot prompts were run (older records: not said)
    if mode in ("full", "crop"):
        labels["core"] += " (full prompts)" if mode == "full" else " (prompts cropped to the context)"
    lines += [f"| {labels.get(name, name)} | {_f(run.score(name))} |" for name in results]
    core_tasks = dig(results, "core.tasks")
    if isinstance(core_tasks, dict) and core_tasks:
        lines += ["", "<details><summary>CORE tasks</summary>", "", "| task | accuracy | centred | n |",
                  "|---|---|---|---|"]
        lines += [f"| {t} | {_f(dig(v, 'accuracy'))} | {_f(dig(v, 'centered'))} | {dig(v, 'n') or '-'} |"
                  for t, v in core_tasks.items() if isinstance(v, dict)]
        lines += ["", "</details>"]
    return lines + [""]


def stage_section(stage: str, run: Run | None, plot: Path | None, out_dir: Path) -> list[str]:
    lines = [f"## {STAGES[stage].label}", ""]
    if run is None:
        return lines + [f"Not run (`{STAGES[stage].train_command}`).", ""]
    s = run.summary
    lines += [f"Run folder: `{run.path}`", ""]
    if not s:
        lines += [f"{_FILES.summary.name} missing: the run did not finish (or is still running).", ""]
    mfu = num(s.get("mfu"))
    rows = [("depth", run.cfg("model.depth") or run.model_config.get("n_layer")),
            ("preset", run.cfg("model.preset")), ("hardware", run.cfg("hardware.name")),
            ("devices", run.cfg("hardware.devices")), ("precision", run.cfg("hardware.precision")),
            ("parameters", _si(run.params())), ("training tokens", _si(run.tokens())),
            ("training FLOPs", _si(run.flops())), ("steps", s.get("steps")),
            ("training time", _duration(s.get("fit_seconds"))),
            ("final training loss", _f(run.last("train/loss"))), ("validation bpb", _f(run.val_bpb())),
            ("throughput", _f(s.get("tok_per_s"), ",.0f", " tok/s")),
            ("MFU", "-" if mfu is None else f"{100 * mfu:.1f}%")]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {'-' if v is None else v} |" for k, v in rows] + [""]
    lines += _eval_lines(run)
    failed = run.evals.get("failed") if isinstance(run.evals.get("failed"), dict) else {}
    if failed:
        lines += ["Evaluations that failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
    if plot is not None:
        lines += _image(f"{stage} training curves", plot, out_dir)
    elif not run.metrics:
        metrics = _FILES.metrics.relative_to(_FILES.path).as_posix()
        lines += [f"No training curves (`{metrics}` missing or empty; logger=none?).", ""]
    return lines


def summary_section(runs: dict[str, Run], plot: Path | None, out_dir: Path, price_per_hour: float) -> list[str]:
    lines = ["## Summary", "", "| metric | " + " | ".join(STAGES[s].label for s in MODEL_STAGES) + " |",
             "|---|" + "---|" * len(MODEL_STAGES)]
    for label, key in TABLE:
        cells = [_f(runs[s].score(key)) if s in runs else "-" for s in MODEL_STAGES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if plot is not None:
        lines += _image("evaluation by stage", plot, out_dir)
    total = sum(r.seconds() for r in runs.values())
    gpu_hours = sum(r.seconds() * r.gpus() for r in runs.values()) / 3600
    lines.append(f"Total wall time (training + evaluation, all stages): {_duration(total)}.")
    if gpu_hours > 0:
        lines.append(f"Estimated cost: ${gpu_hours * price_per_hour:,.2f} ({gpu_hours:.2f} GPU-hours at "
                     f"${price_per_hour:g} per GPU-hour; pass price_per_hour=... for your rate).")
    elif runs:
        lines.append("Cost: a CPU run (no GPU time to pay for).")
    return lines + [""]


def scaling_section(root: Path, out_dir: Path) -> list[str]:
    sweep = sweep_folders("base", root)
    if len(sweep) < 2:
        return []
    try:
        plot = scaling_plot(sorted((f.path for f in sweep), key=run_time), out_dir / PLOTS_DIR / "scaling.png")
    except NanochatError as e:
        return ["## Scaling sweep", "", f"{len(sweep)} sweep runs, but no plot: {e}.", ""]
    return ["## Scaling sweep", "", f"{len(sweep)} base runs under `{sweep[0].path.parent}`.", "",
            *_image("scaling", plot, out_dir)]


def build_report(outputs_root=None, out_path=None, price_per_hour: float = DEFAULT_PRICE_PER_HOUR) -> Path:
    """Write the report card (markdown, atomically) and its plots; returns the markdown path.

    outputs_root: the run folders' root (default `nanochat.layout.outputs_root()`);
    out_path: the markdown file (default `<outputs_root>/report.md`); plots go to `report_plots/` beside it.
    """
    root = Path(outputs_root) if outputs_root is not None else layout.outputs_root()
    if not root.is_dir():
        raise NanochatError(f"no outputs folder at {root}; train something first (`python train.py`)")
    if not (num(price_per_hour) is not None and price_per_hour >= 0):
        raise NanochatError(f"price per hour must be a non-negative number, got {price_per_hour!r}")
    out_path = Path(out_path) if out_path is not None else root / "report.md"
    if out_path.is_dir():
        raise NanochatError(f"out: {out_path} is a folder; give the markdown file to write")
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


# -- command line ---------------------------------------------------------------------------------------------
@dataclass
class ReportSettings:
    """`python -m nanochat.report` (and `python evaluate.py report`)."""

    outputs: Optional[str] = knob(None, "the run folders' root (default: $NANOCHAT_OUTPUTS, else ./outputs)")
    out: Optional[str] = knob(None, "the markdown file to write (default: <outputs>/report.md); plots go beside it")
    price_per_hour: float = knob(DEFAULT_PRICE_PER_HOUR, "USD per GPU-hour for the cost estimate (3.0: one H100)",
                                 low=0)


def _write(settings: ReportSettings) -> None:
    path = build_report(settings.outputs, settings.out, settings.price_per_hour)
    print(f"report written to {path}")


def main(argv=None) -> int:
    """Write the report card from `key=value` arguments; a bad one is one `error:` line and exit code 1."""
    from nanochat.config.command import run_command

    return run_command(ReportSettings, argv, _write, prog="python -m nanochat.report",
                       summary="Write the nanochat report card: the newest run of every stage, in markdown and plots.")


if __name__ == "__main__":
    sys.exit(main())
