"""What the report card knows about a run: the files a stage left in its run folder, read without trusting them.

The one idea: every reader here returns an empty value for a missing, broken or half-written file (a crashed
run, a run still going, an older layout), so the report shows "-" or a sentence instead of raising. The file
names come from `nanochat.layout.RunFolder`; this module only interprets their content.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.layout import STAGES, RunFolder, run_folders

# (row label, eval.json results key) of the summary table
TABLE = (("CORE", "core"), ("ARC-Easy", "arc_easy"), ("ARC-Challenge", "arc_challenge"), ("MMLU", "mmlu"),
         ("GSM8K", "gsm8k"), ("HumanEval", "humaneval"), ("ChatCORE", "chatcore"))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def read_yaml(path: Path) -> dict:
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}
    except Exception:  # missing file, no PyYAML, or a broken file: the report shows "-"
        return {}


def num(x) -> float | None:
    """`x` as a finite float, else None."""
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
                step = num(row.get("step"))
                if step is None:
                    continue
                for key, value in row.items():
                    v = num(value)
                    if key and key not in ("step", "epoch") and v is not None:
                        series.setdefault(key, []).append((step, v))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return series


def dig(d: dict, dotted: str):
    """`d["a"]["b"]` for "a.b", or None where a level is missing."""
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
        folder = RunFolder(Path(path))
        summary = read_json(folder.summary)
        model_dir = Path(summary["model_dir"]) if isinstance(summary.get("model_dir"), str) else folder.model
        if not (model_dir / "config.json").exists():
            model_dir = folder.model
        return cls(stage=stage or summary.get("stage") or folder.path.parent.name, path=folder.path,
                   summary=summary, config=read_yaml(folder.config), metrics=read_metrics(folder.metrics),
                   evals=read_json(folder.eval_json),
                   model_config=read_json(model_dir / "config.json").get("config") or {})

    # derived facts -----------------------------------------------------------------------------------------
    def cfg(self, dotted: str):
        return dig(self.config, dotted)

    def plan(self, *keys):
        plan = self.summary.get("plan") if isinstance(self.summary.get("plan"), dict) else {}
        return next((plan[k] for k in keys if num(plan.get(k)) is not None), None)

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
        batch = num(self.cfg("stage.total_batch_tokens")) or num(self.cfg("hardware.total_batch_tokens"))
        if t is None and num(self.summary.get("steps")) is not None and batch:
            t = self.summary["steps"] * batch
        return int(t) if t is not None else None

    def flops(self) -> float | None:
        f = self.plan("flops", "total_flops")
        if f is None and self.tokens() and self.model_config:
            model = self._gpt()
            f = model.estimate_flops() * self.tokens() if model is not None else None
        return num(f)

    def last(self, column: str) -> float | None:
        points = self.metrics.get(column) or []
        return points[-1][1] if points else None

    def val_bpb(self) -> float | None:
        """The summary's validation bpb, else the last one logged."""
        v = num(self.summary.get("val_bpb"))
        return v if v is not None else self.last("val/bpb")

    def score(self, key: str) -> float | None:
        res = dig(self.evals, f"results.{key}")
        return num(res.get("score")) if isinstance(res, dict) else num(res)

    def seconds(self) -> float:
        return (num(self.summary.get("fit_seconds")) or 0.0) + (num(self.evals.get("seconds")) or 0.0)

    def gpus(self) -> int:
        if self.cfg("hardware.accelerator") != "gpu":
            return 0
        return int(num(self.cfg("hardware.devices")) or 1) * int(num(self.cfg("hardware.num_nodes")) or 1)


def _records(folder: RunFolder) -> list[Path]:
    """The files whose presence shows that a run started (and whose times say when it last wrote)."""
    return [folder.summary, folder.eval_json, folder.config, folder.metrics]


def run_time(path) -> float:
    """When a run folder last recorded something (its newest record file, else the folder itself)."""
    folder = RunFolder(Path(path))
    files = [f for f in _records(folder) if f != folder.metrics] + [folder.path]
    return max(f.stat().st_mtime for f in files if f.exists())


def find_runs(root, stage: str) -> list[Path]:
    """Run folders of a stage, oldest first (single runs and `multirun/*` sweep jobs)."""
    runs = [f.path for f in run_folders(stage, root) if any(p.exists() for p in _records(f))]
    return sorted(runs, key=run_time)


def latest_runs(root) -> dict[str, Run]:
    """The newest run of every stage that has one, in pipeline order."""
    out = {}
    for stage in STAGES:
        runs = find_runs(root, stage)
        if runs:
            out[stage] = Run.load(runs[-1], stage)
    return out
