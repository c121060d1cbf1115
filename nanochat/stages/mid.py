"""stage=mid: mid-training on a conversation mixture, packed into BOS-aligned rows like pretraining.

Starts from the latest base model, keeps the base learning rates (constant, then linear decay over the last
20%), and measures val bpb on held-out conversations. Masking the prompts is a switch (`stage.mask_prompts`):
the reference trains on every token of the packed rows here.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nanochat.lit.runner import StageRun, build_plan, run_training, token_batch
from nanochat.stages.chat_common import build_tasks, input_model, load_input, mean_tokens, mixture_name, steps_for


def prepare(cfg: DictConfig, out: Path) -> StageRun:
    from nanochat.lit.chat_datamodule import ChatDataModule

    st = cfg.stage
    source = input_model(cfg, out)
    model_cfg, tokenizer, _ = load_input(source)
    train, val = build_tasks(cfg)
    seq_len = model_cfg.sequence_len
    steps = int(st.num_iterations)
    if steps <= 0:  # num_epochs over the mixture's tokens
        tokens = st.num_epochs * len(train) * mean_tokens(train, tokenizer)
        steps = steps_for(tokens, token_batch(cfg, model=model_cfg))
    plan = build_plan(cfg, tokenizer.vocab_size, model=model_cfg, num_iterations=steps)
    val_steps = max(1, int(st.eval_tokens) // (plan.device_batch_size * seq_len * plan.world_size))
    dm = ChatDataModule(train, val, tokenizer, batch_size=plan.device_batch_size, seq_len=seq_len, layout="pack",
                        mask=bool(st.mask_prompts), val_steps=val_steps)
    info = {"input_model": str(source), "mixture": mixture_name(cfg), "train_conversations": len(train),
            "val_conversations": len(val) if val is not None else 0}
    return StageRun(plan=plan, datamodule=dm, tokenizer=tokenizer, init_from=str(source),
                    sample_prompts=list(st.sample_prompts), chat_samples=True, info=info)


def run(cfg: DictConfig) -> dict:
    return run_training(cfg, prepare)
