"""stage=sft: supervised fine-tuning, one conversation per row, loss on what the assistant writes.

Starts from the latest mid model (or base when there is none). Rows are padded to the longest of their
micro-batch; the loss is summed over supervised tokens and divided by their count across the whole optimizer
step and all ranks (nanochat.lit.module), so splitting a step into micro-batches changes nothing and a
micro-batch with no supervised token adds exactly zero. LR = 0.02 x the base LRs, linear decay to 0.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nanochat.common import NanochatError
from nanochat.lit.runner import StageRun, build_plan, run_training, world_size
from nanochat.stages.chat_common import build_tasks, input_model, load_input, mixture_name, steps_for


def prepare(cfg: DictConfig, out: Path) -> StageRun:
    from nanochat.lit.chat_datamodule import ChatDataModule

    st = cfg.stage
    source = input_model(cfg, out)
    model_cfg, tokenizer, _ = load_input(source)
    train, val = build_tasks(cfg)
    seq_len = model_cfg.sequence_len
    batch, world, per_step = int(st.device_batch_size), world_size(cfg.hardware), int(st.examples_per_step)
    if per_step % (batch * world):
        raise NanochatError(f"stage.examples_per_step ({per_step}) must be a multiple of stage.device_batch_size x "
                            f"devices ({batch} x {world})")
    steps = int(st.num_iterations)
    if steps <= 0:
        steps = steps_for(st.num_epochs * len(train), per_step)
    # the plan's batch arithmetic in conversations: rows of at most seq_len
    plan = build_plan(cfg, tokenizer.vocab_size, model=model_cfg, num_iterations=steps, device_batch_size=batch,
                      total_batch_tokens=per_step * seq_len)
    dm = ChatDataModule(train, val, tokenizer, batch_size=batch, seq_len=seq_len, layout="pad", mask=True,
                        accum=plan.grad_accum, val_steps=max(1, int(st.eval_batches)))
    info = {"input_model": str(source), "mixture": mixture_name(cfg), "train_conversations": len(train),
            "val_conversations": len(val) if val is not None else 0, "examples_per_step": per_step}
    return StageRun(plan=plan, datamodule=dm, tokenizer=tokenizer, init_from=str(source),
                    sample_prompts=list(st.sample_prompts), chat_samples=True, info=info)


def run(cfg: DictConfig) -> dict:
    return run_training(cfg, prepare)
