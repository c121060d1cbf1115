"""stage=sft: supervised fine-tuning, loss on what the assistant writes; the mixture chooses the recipe.

- One conversation per row (offline_sft, sft: the default mid -> sft chain). Starts from the latest mid model (or
  base when there is none); rows are padded to the longest of their micro-batch; `stage.examples_per_step`
  conversations per step; LR = 0.02 x the base LRs, linear decay to 0 (conf/stage/sft.yaml).
- Packed rows (`mixture=sft2026`: the reference's SFT since 2026, no mid-training). The mixture's recipe starts
  from the latest base model, packs whole conversations best-fit into rows of the context (the rest of a row
  padded, assistant-only targets), trains with the preset and batch the base run trained with (total tokens and
  rows per device, unless set), LR x 0.8 (no batch scaling), flat then a linear warmdown over the last 50% to 0,
  Muon weight decay 0, Muon momentum 0.85 -> 0.95 over 300 steps, no gradient clipping.

Either way the loss is summed over supervised tokens and divided by their count across the whole optimizer step
and all ranks (nanochat.lit.module), so splitting a step into micro-batches changes nothing and a micro-batch
with no supervised token adds exactly zero.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nanochat.common import NanochatError
from nanochat.lit.runner import StageRun, build_plan, run_training, token_batch, world_size
from nanochat.stages.chat_common import (apply_recipe, build_tasks, conversations_per_row, input_model,
                                         keys_set_by_run, load_input, mixture_name, preset_set_by_run, recorded_run,
                                         steps_for)


def _input_stage(source: Path) -> str | None:
    """The stage whose run folder holds this model (outputs/<stage>/<run>/model), if it is one."""
    from nanochat.layout import MODEL_STAGES, RunFolder

    stage = RunFolder.containing(source).path.parent.name
    return stage if stage in MODEL_STAGES else None


def describe_recipe(cfg: DictConfig, applied: dict, source: Path, batch_line: str) -> str:
    """The lines printed above the plan: mixture, recipe, input model and where the batch comes from."""
    recipe = applied["recipe"]
    packed = recipe.get("layout") == "bestfit"
    rows = ("best-fit packed rows (padding when nothing fits), assistant-only loss" if packed
            else "one conversation per row, assistant-only loss")
    lines = [f"sft: mixture {mixture_name(cfg)} - {rows}"]
    if applied["applied"] or applied["kept"]:
        lines.append("  recipe     " + ", ".join(f"{k}={v}" for k, v in applied["applied"].items()) + " (the mixture's)"
                     + "".join(f"; stage.{k}={v} (this run's)" for k, v in applied["kept"].items()))
    stage = _input_stage(source)
    prefer = recipe.get("starts_from")
    lines.append(f"  input      {source}" + (f" ({stage} model)" if stage else "")
                 + (f"; the recipe starts from {'/'.join(prefer)}" if prefer else ""))
    if prefer and stage and stage not in prefer:
        lines.append(f"  note       stage.init_from is a {stage} model; this recipe is meant to start from "
                     f"{'/'.join(prefer)}")
    lines.append(f"  batch      {batch_line}")
    return "\n".join(lines)


def _inherit_run(cfg: DictConfig, source: Path, meta: dict, model_cfg, recipe: dict) -> tuple[int, int | None, str]:
    """Packed SFT's batch - (total batch tokens, rows per device or None = the profile's, where they come from) -
    and, when the recipe inherits the input model's run, that run's preset (model.preset, unless the run sets it)."""
    st = cfg.stage
    own = keys_set_by_run(cfg, ("total_batch_tokens", "device_batch_size", "examples_per_step"))
    if "examples_per_step" in own:
        raise NanochatError(f"stage.examples_per_step counts conversations of one-per-row SFT; mixture "
                            f"{mixture_name(cfg)} packs rows - set stage.total_batch_tokens instead")
    inherited, where = recorded_run(source, meta) if recipe.get("inherit_run") else ({}, None)
    preset_from = "this run's" if preset_set_by_run(cfg) else "the schema default"
    if "preset" in inherited and not preset_set_by_run(cfg):
        cfg.model.preset, preset_from = inherited["preset"], "the input model's run"
    if "total_batch_tokens" in own:
        total, total_from = token_batch(cfg, model=model_cfg), "this run's"
    elif "total_batch_tokens" in inherited:
        total, total_from = inherited["total_batch_tokens"], f"the input model's run ({where})"
    else:
        total, total_from = token_batch(cfg, model=model_cfg), f"the {cfg.model.preset} preset's"
    if "device_batch_size" in own:
        batch, batch_from = int(st.device_batch_size), "this run's"
    elif "device_batch_size" in inherited:
        batch, batch_from = inherited["device_batch_size"], "the input model's run"
    else:
        batch, batch_from = None, "the hardware profile's"
    return total, batch, f"total from {total_from}, rows per device from {batch_from}; preset from {preset_from}"


def prepare(cfg: DictConfig, out: Path) -> StageRun:
    from nanochat.chat_data import REFERENCE_SFT_BUFFER
    from nanochat.lit.chat_datamodule import ChatDataModule

    applied = apply_recipe(cfg)  # before anything reads cfg.stage: the recipe's settings are the run's
    recipe = applied["recipe"]
    st = cfg.stage
    source = input_model(cfg, out)
    model_cfg, tokenizer, meta = load_input(source)
    train, val = build_tasks(cfg)
    seq_len = model_cfg.sequence_len
    steps = int(st.num_iterations)
    info = {"input_model": str(source), "mixture": mixture_name(cfg), "train_conversations": len(train),
            "val_conversations": len(val) if val is not None else 0}
    if recipe.get("layout") == "bestfit":
        total, batch, batch_from = _inherit_run(cfg, source, meta, model_cfg, recipe)
        per_row = None
        if steps <= 0:  # num_epochs over the mixture's conversations, at the packing's conversations per row
            per_row = conversations_per_row(train, tokenizer, seq_len + 1, REFERENCE_SFT_BUFFER)
            steps = steps_for(st.num_epochs * len(train), total // seq_len * per_row)
        plan = build_plan(cfg, tokenizer.vocab_size, model=model_cfg, num_iterations=steps, device_batch_size=batch,
                          total_batch_tokens=total)
        st.total_batch_tokens, st.device_batch_size = plan.total_batch_tokens, plan.device_batch_size  # as trained
        dm = ChatDataModule(train, val, tokenizer, batch_size=plan.device_batch_size, seq_len=seq_len,
                            layout="bestfit", mask=True, accum=plan.grad_accum, val_steps=max(1, int(st.eval_batches)),
                            buffer_size=REFERENCE_SFT_BUFFER)
        info.update(layout="bestfit", batch_from=batch_from,
                    **({"conversations_per_row": round(per_row, 3)} if per_row else {}))
        batch_line = f"{plan.total_batch_tokens:,} tokens per step, {plan.device_batch_size} rows per device ({batch_from})"
    else:
        if "total_batch_tokens" in keys_set_by_run(cfg, ("total_batch_tokens",)):
            raise NanochatError(f"stage.total_batch_tokens applies to packed SFT (mixture=sft2026); mixture "
                                f"{mixture_name(cfg)} has one conversation per row - set stage.examples_per_step")
        batch, world, per_step = int(st.device_batch_size), world_size(cfg.hardware), int(st.examples_per_step)
        if per_step % (batch * world):
            raise NanochatError(f"stage.examples_per_step ({per_step}) must be a multiple of stage.device_batch_size "
                                f"x devices ({batch} x {world})")
        if steps <= 0:
            steps = steps_for(st.num_epochs * len(train), per_step)
        # the plan's batch arithmetic in conversations: rows of at most seq_len
        plan = build_plan(cfg, tokenizer.vocab_size, model=model_cfg, num_iterations=steps, device_batch_size=batch,
                          total_batch_tokens=per_step * seq_len)
        dm = ChatDataModule(train, val, tokenizer, batch_size=batch, seq_len=seq_len, layout="pad", mask=True,
                            accum=plan.grad_accum, val_steps=max(1, int(st.eval_batches)))
        info.update(layout="pad", examples_per_step=per_step)
        batch_line = f"{per_step} conversations per step, {batch} per device"
    info["recipe"] = {**applied["applied"], **applied["kept"]}
    print(describe_recipe(cfg, applied, source, batch_line), flush=True)
    return StageRun(plan=plan, datamodule=dm, tokenizer=tokenizer, init_from=str(source),
                    sample_prompts=list(st.sample_prompts), chat_samples=True, info=info)


def run(cfg: DictConfig) -> dict:
    return run_training(cfg, prepare)
