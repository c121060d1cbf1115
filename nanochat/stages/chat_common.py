"""What the chat stages (mid, sft) share: finding the model they start from and building their mixtures.

Each stage finds its input without arguments - `stage=mid` the latest base model, `stage=sft` the latest mid
model (or base when there is none), `stage=rl` the latest sft model - and trains with the tokenizer that model
was trained with. `stage.init_from=path` overrides. A mixture (`mixture=`) is a name in nanochat/mixtures/ or a
path to a YAML file of the same shape; `stage.task_options` (e.g. `stage.task_options.gsm8k.local_path=/data/gsm8k`)
adds to its task options.
"""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nanochat.common import NanochatError


def input_model(cfg: DictConfig, out: Path) -> Path:
    """The model folder (or .ckpt) this stage starts from: stage.init_from, else the newest model of the stages
    it starts from (layout.STAGES); a resumed run keeps the input it started with (the runner records it)."""
    from nanochat.checkpoint import resolve_model_path
    from nanochat.layout import STAGES, RunFolder

    record = RunFolder(out).started_from
    if cfg.ckpt_path is not None and record.exists():
        started_from = Path(record.read_text().strip())
        if started_from.exists():
            return started_from
    return resolve_model_path(cfg.stage.init_from, prefer=STAGES[cfg.stage.name].starts_from)


def load_input(path: Path):
    """(GPTConfig, tokenizer) of the input model, checking the tokenizer matches the weights."""
    from nanochat.checkpoint import load_model

    model, tokenizer, meta = load_model(path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise NanochatError(f"the tokenizer beside {path} has {tokenizer.vocab_size:,} tokens but the model expects "
                            f"{model.config.vocab_size:,}; it is not the tokenizer this model was trained with")
    return model.config, tokenizer, meta


MIXTURES_DIR = Path(__file__).resolve().parent.parent / "mixtures"


def mixture_name(cfg: DictConfig) -> str:
    """The `mixture=` key, else the stage's own offline mixture (offline_mid, offline_sft)."""
    return cfg.mixture or f"offline_{cfg.stage.name}"


def mixture_config(cfg: DictConfig) -> dict:
    """The mixture mapping (seed, task_options, train, val) with the stage's task options merged in."""
    name = mixture_name(cfg)
    is_file = str(name).endswith((".yaml", ".yml"))
    path = Path(name) if is_file else MIXTURES_DIR / f"{name}.yaml"
    if not path.exists():
        if is_file:
            raise NanochatError(f"mixture file not found: {path}")
        known = ", ".join(sorted(p.stem for p in MIXTURES_DIR.glob("*.yaml")))
        raise NanochatError(f"unknown mixture {name!r}; choose one of: {known}, or give a path to a YAML file")
    mix = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    extra = OmegaConf.to_container(cfg.stage.task_options, resolve=True) if cfg.stage.get("task_options") else {}
    options = dict(mix.get("task_options") or {})
    for task, opts in (extra or {}).items():
        given = {k: v for k, v in (opts or {}).items() if v is not None}
        if given:
            options[task] = {**(options.get(task) or {}), **given}
    mix["task_options"] = options
    return mix


def build_tasks(cfg: DictConfig):
    """(train mixture, val mixture or None)."""
    from nanochat.tasks import build_from_config

    mix = mixture_config(cfg)
    train = build_from_config(mix, "train")
    if len(train) == 0:
        raise NanochatError(f"mixture {mixture_name(cfg)!r} has no training conversations")
    val = build_from_config(mix, "val") if mix.get("val") else None
    return train, val


def mean_tokens(task, tokenizer, sample: int = 2000) -> float:
    """Mean rendered length of a task's conversations, from an evenly spaced sample (cheap for big mixtures)."""
    from nanochat.chat import render_conversation

    n = len(task)
    idx = range(0, n, max(1, n // sample))
    lengths = [len(render_conversation(tokenizer, task[i])[0]) for i in idx]
    return sum(lengths) / max(1, len(lengths))


def steps_for(total: float, per_step: float) -> int:
    return max(1, math.ceil(total / per_step))
