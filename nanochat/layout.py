"""Where runs live on disk: the stage table, the outputs root and the layout of one run folder.

The one idea: every module that reads or writes a run asks this file for the path - nobody spells
`summary.json` or `model/` itself - so the layout, the stage order and the outputs root can change in one place.

    outputs/<stage>/<run_name>/          RunFolder(outputs_root() / stage / run_name)
        config.yaml  summary.json  eval.json  eval.md  tokenizer/  checkpoints/  logs/metrics.csv  model/
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline's stage table."""

    name: str
    module: str  # the Hydra-side module with run(cfg) (nanochat.stages.<name>)
    starts_from: tuple[str, ...]  # stages whose newest model this one starts from, in order of preference
    evals: tuple[str, ...]  # evaluations that fit its models (evaluate.py's default)
    makes_model: bool = True
    label: str = ""  # display name in the report

    @property
    def train_command(self) -> str:
        return f"python train.py stage={self.name}"


BASE_EVALS = ("core", "bpb")
CHAT_EVALS = ("arc_easy", "arc_challenge", "mmlu", "gsm8k", "humaneval", "spellingbee")

# pipeline order: a later stage starts from an earlier one
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("tokenizer", "nanochat.stages.tokenizer", (), (), makes_model=False, label="Tokenizer"),
    Stage("base", "nanochat.stages.base", (), BASE_EVALS, label="BASE"),
    Stage("mid", "nanochat.stages.mid", ("base",), CHAT_EVALS, label="MID"),
    Stage("sft", "nanochat.stages.sft", ("mid", "base"), CHAT_EVALS, label="SFT"),
    Stage("rl", "nanochat.stages.rl", ("sft",), CHAT_EVALS, label="RL"),
)}
MODEL_STAGES = tuple(name for name, s in STAGES.items() if s.makes_model)
PIPELINE_MODULE = "nanochat.stages.pipeline"  # stage=all

_outputs_override: Path | None = None


def outputs_root() -> Path:
    """Root of every run folder: the config's `paths.outputs` when a run set it, else $NANOCHAT_OUTPUTS, else ./outputs."""
    if _outputs_override is not None:
        return _outputs_override
    return Path(os.environ.get("NANOCHAT_OUTPUTS") or "outputs")


def set_outputs_root(path: str | os.PathLike | None) -> None:
    """Point every lookup of this process at `path` (None: back to the environment / ./outputs)."""
    global _outputs_override
    _outputs_override = None if path is None else Path(path)


@dataclass(frozen=True)
class RunFolder:
    """One run's folder and the names of what a stage leaves in it."""

    path: Path

    @classmethod
    def of(cls, stage: str, run_name: str, root: str | os.PathLike | None = None) -> RunFolder:
        return cls((outputs_root() if root is None else Path(root)) / stage / run_name)

    @classmethod
    def containing(cls, model_path: str | os.PathLike) -> RunFolder:
        """The run folder a model path belongs to (`<run>/model`, `<run>/checkpoints/x.ckpt`), else the path itself."""
        p = Path(model_path)
        if p.suffix == ".ckpt":  # a checkpoint elsewhere: the folder that holds it
            return cls(p.parent.parent if p.parent.name == "checkpoints" else p.parent)
        return cls(p.parent if p.name == "model" else p)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def eval_json(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.path / "eval.md"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    @property
    def tokenizer_report(self) -> Path:
        return self.path / "tokenizer_report.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "logs" / "metrics.csv"

    @property
    def started_from(self) -> Path:
        """The input model a chat stage started from (a resumed run keeps it even if a newer one appeared)."""
        return self.path / "started_from.txt"

    def has_model(self) -> bool:
        return (self.model / "config.json").exists() and (self.model / "model.pt").exists()

    def checkpoint_files(self) -> list[Path]:
        return sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.exists() else []


SWEEP_DIR = "multirun"  # Hydra's sweep jobs of a stage: outputs/<stage>/multirun/<job>/ (conf/train.yaml)


def sweep_folders(stage: str, root: str | os.PathLike | None = None) -> list[RunFolder]:
    """The sweep jobs (`python train.py -m ...`) of a stage, in name order."""
    base = (outputs_root() if root is None else Path(root)) / stage / SWEEP_DIR
    return [RunFolder(p) for p in sorted(base.glob("*")) if p.is_dir()]


def run_folders(stage: str, root: str | os.PathLike | None = None) -> list[RunFolder]:
    """Every run folder of a stage, in name order: single runs `<stage>/<name>/`, then its sweep jobs."""
    base = (outputs_root() if root is None else Path(root)) / stage
    singles = [RunFolder(p) for p in sorted(base.glob("*")) if p.is_dir() and p.name != SWEEP_DIR]
    return singles + sweep_folders(stage, root)
