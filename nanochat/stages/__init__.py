"""The pipeline's stages behind one registry (`nanochat.layout.STAGES`): `train.py` dispatches on `stage.name`.

Each stage is one small module with a `run(cfg) -> dict` function. Training stages (base, mid, sft, rl) only say
what is particular to them (where their weights start, which data they read, how the plan is derived); the run
mechanics they share (run folder, resume, Trainer, summary, export) live once in `nanochat.lit.runner`.
This package is the Hydra/Lightning side of the project; the plain-PyTorch core never imports it.
"""
from __future__ import annotations

import importlib


def validate(cfg) -> None:
    """Check every value of the composed config against its field's range (types were checked by Hydra)."""
    from nanochat.config import schema
    from nanochat.config.typed import check_ranges

    check_ranges(cfg, schema.TrainConfig)  # top-level keys and the typed groups (hardware, model, logger, paths)
    for key, cls in (("data", schema.DATA_SCHEMAS.get(cfg.data.name)), ("stage", schema.STAGE_SCHEMAS.get(cfg.stage.name)),
                     ("pipeline", schema.PipelineOptions)):
        if cls is not None and cfg[key] is not None:
            check_ranges(cfg[key], cls, prefix=f"{key}.")
    from nanochat.layout import STAGES
    from nanochat.lit.memfit import check_device_batch
    from nanochat.recipe import check_batch_tokens, get_preset

    get_preset(cfg.model.preset)
    from nanochat.stages.budget_plan import check as check_budget

    check_budget(cfg)  # time_budget= only with stage=all or base, and a duration
    check_device_batch(cfg.hardware.device_batch_size)
    from nanochat.probe import check_peak_flops

    check_peak_flops(cfg.hardware.peak_flops)
    check_batch_tokens(cfg.stage.get("total_batch_tokens"))
    for name, options in (cfg.get("pipeline") or {}).items():  # an integer or auto, per stage
        if name in STAGES:
            check_batch_tokens((options or {}).get("total_batch_tokens"), f"pipeline.{name}.total_batch_tokens")
    if cfg.hardware.fp8:  # before anything is written; a plan for another machine checks only the profile
        from nanochat.fp8 import check_fp8

        check_fp8(cfg.hardware.accelerator, cfg.hardware.precision, check_device=not cfg.get("plan_only", False))


def run_stage(cfg) -> dict:
    """Run the stage `cfg.stage.name` names."""
    from nanochat.layout import PIPELINE_MODULE, STAGES, set_outputs_root

    validate(cfg)
    set_outputs_root(cfg.paths.outputs)
    name = cfg.stage.name
    module = importlib.import_module(PIPELINE_MODULE if name == "all" else STAGES[name].module)
    result = module.run(cfg)
    if cfg.plan_only:
        _remove_empty_run_dir(cfg.paths.outputs)
    return result


def _remove_empty_run_dir(outputs) -> None:
    """Hydra makes the run folder before the job starts; a plan_only job leaves nothing behind, not even that."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    folder, root = Path(HydraConfig.get().runtime.output_dir).resolve(), Path(outputs).resolve()
    while (folder == root or root in folder.parents) and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # the run folder, then its empty parents up to and including the outputs root
        folder = folder.parent
