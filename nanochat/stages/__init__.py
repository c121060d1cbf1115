"""The pipeline's stages behind one registry: `train.py` dispatches on `stage.name`.

Each stage is one small module with a `run(cfg) -> dict` function. Training stages (base, mid, sft, rl) only say
what is particular to them (where their weights start, which data they read, how the plan is derived); the run
mechanics they share (run folder, resume, Trainer, summary, export) live once in `nanochat.lit.runner`.
This package is the Hydra/Lightning side of the project; the plain-PyTorch core never imports it.
"""
from __future__ import annotations

import importlib

STAGES = {
    "tokenizer": "nanochat.stages.tokenizer",
    "base": "nanochat.stages.base",
    "mid": "nanochat.stages.mid",
    "sft": "nanochat.stages.sft",
    "rl": "nanochat.stages.rl",
    "all": "nanochat.stages.pipeline",
}


def run_stage(cfg) -> dict:
    """Run the stage `cfg.stage.name` names."""
    from nanochat.common import NanochatError

    name = cfg.stage.name
    if name not in STAGES:
        raise NanochatError(f"unknown stage {name!r}; choose one of: {', '.join(STAGES)}")
    try:
        module = importlib.import_module(STAGES[name])
    except ModuleNotFoundError as e:
        if e.name == STAGES[name]:
            raise NanochatError(f"stage {name!r} is not available in this version") from None
        raise
    return module.run(cfg)
