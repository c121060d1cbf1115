"""stage=base: pretrain a GPT from scratch on a document source (packed BOS-aligned rows)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nanochat.lit.runner import StageRun, build_plan, run_training
from nanochat.stages.cli import source_options


def default_packing(cfg: DictConfig) -> str:
    """The data config's packing, else the preset's (jan2026: reference best-fit; v0: plain concatenation)."""
    packing = cfg.data.loader.get("packing")
    if packing:
        return packing
    from nanochat.dataloader import default_packing as preset_packing

    return preset_packing(cfg.model.preset)


def prepare(cfg: DictConfig, out: Path) -> StageRun:
    from nanochat.lit.datamodule import NanochatDataModule
    from nanochat.provenance import warn_if_other_data
    from nanochat.stages.budget_plan import apply_to_base
    from nanochat.tokenizer import Tokenizer, get_tokenizer

    decision = apply_to_base(cfg, out)  # time_budget=: the chosen depth and horizon, set as overrides would be
    st = cfg.stage
    # a resumed run keeps the tokenizer it started with (a newer one may have been trained since)
    run_tok = out / "tokenizer"
    if (run_tok / "tokenizer.pkl").exists() and cfg.ckpt_path is not None:
        tokenizer = Tokenizer.load(run_tok)
    elif cfg.plan_only and cfg.tokenizer_dir and not Path(cfg.tokenizer_dir).exists():
        # stage=all plan_only=true before its tokenizer exists: plan with the vocabulary it will be trained to
        return StageRun(plan=build_plan(cfg, cfg.data.tokenizer.vocab_size), datamodule=None, tokenizer=None)
    else:
        tokenizer = get_tokenizer(cfg.tokenizer_dir)
    plan = build_plan(cfg, tokenizer.vocab_size)
    # the data module builds the source itself so a download happens once per node (prepare_data), not per rank
    source_name, source_cfg = source_options(cfg.data)
    warn_if_other_data(tokenizer, source_name, source_cfg)  # one line; training on other data is allowed
    dm = NanochatDataModule(
        source=source_name, source_cfg=source_cfg, tokenizer=tokenizer, batch_size=plan.device_batch_size,
        seq_len=plan.seq_len, buffer_docs=cfg.data.loader.buffer_docs,
        tokenizer_threads=cfg.data.loader.tokenizer_threads, val_tokens=st.eval_tokens,
        packing=default_packing(cfg),
    )
    return StageRun(plan=plan, datamodule=dm, tokenizer=tokenizer, init_from=st.init_from,
                    sample_prompts=list(st.sample_prompts),
                    info={"packing": default_packing(cfg), **({"time_budget": decision} if decision else {})})


def run(cfg: DictConfig) -> dict:
    return run_training(cfg, prepare)
