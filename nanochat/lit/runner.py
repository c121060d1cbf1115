"""Hydra config -> Lightning Trainer for the training stages (base now; mid/sft/rl reuse the same path)."""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from nanochat import scaling
from nanochat.cli import run_dir, source_options
from nanochat.common import NanochatError, atomic_write_bytes
from nanochat.lit.callbacks import AtomicCheckpointIO, NonFiniteGuard, SampleGenerations, ThroughputMFU
from nanochat.lit.module import NanochatLM


MODEL_SWITCHES = ("rope_base", "logit_softcap", "window_pattern", "value_embeds", "resid_scalars")
PLAN_OVERRIDES = ("total_batch_tokens", "param_data_ratio", "embedding_lr", "unembedding_lr", "matrix_lr",
                  "weight_decay")


def world_size(hw) -> int:
    devices = hw.devices
    n = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else int(devices)
    return n * int(hw.num_nodes)


def build_plan(cfg: DictConfig, vocab_size: int) -> scaling.Plan:
    """The whole run derived from the depth (nanochat.scaling); null config values fall back to the preset."""
    m, hw, st = cfg.model, cfg.hardware, cfg.stage
    switches = {k: m[k] for k in MODEL_SWITCHES if m.get(k) is not None}
    overrides = {k: st[k] for k in PLAN_OVERRIDES if st.get(k) is not None}
    plan = scaling.plan(
        m.depth, vocab_size=vocab_size, seq_len=m.sequence_len, device_batch_size=hw.device_batch_size,
        world_size=world_size(hw), num_iterations=st.num_iterations, preset=m.preset,
        aspect_ratio=m.aspect_ratio, head_dim=m.head_dim, n_kv_head=m.n_kv_head, **overrides, **switches,
    )
    return plan


def resolve_ckpt_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    existing = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.exists() else []
    if cfg.ckpt_path is None:
        if existing:
            raise NanochatError(
                f"{ckpt_dir} already holds checkpoints; resume with ckpt_path=last or start another run with run_name=...")
        return None
    if cfg.ckpt_path == "last":
        if not existing:
            raise NanochatError(f"ckpt_path=last but {ckpt_dir} holds no checkpoint (nothing to resume in this run folder)")
        # every file is complete (atomic writes); a crash between writing step<N>.ckpt and its copy last.ckpt
        # leaves the step file newest, so take the most recently written one
        return str(max(existing, key=lambda p: p.stat().st_mtime_ns))
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise NanochatError(f"checkpoint not found: {path}")
    return str(path)


def make_logger(cfg: DictConfig, out: Path):
    lg = cfg.logger
    if lg.name == "none":
        return False
    if lg.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        try:
            import wandb  # noqa: F401
        except ImportError:
            raise NanochatError("logger=wandb needs the wandb package: pip install 'nanochat[wandb]'") from None
        if lg.get("offline"):
            os.environ["WANDB_MODE"] = "offline"
        return WandbLogger(project=lg.project, name=cfg.run_name, save_dir=str(out), offline=bool(lg.get("offline")))
    return CSVLogger(save_dir=str(out), name="logs", version="")


def _point_triton_at_cuda_ptxas() -> None:
    """GB10 (sm_121) needs CUDA 13's ptxas; Triton's bundled one may predate it."""
    if os.environ.get("TRITON_PTXAS_PATH") or "GB10" not in torch.cuda.get_device_name(0):
        return
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    ptxas = Path(cuda_home) / "bin" / "ptxas"
    if ptxas.exists():
        os.environ["TRITON_PTXAS_PATH"] = str(ptxas)


def run_training_stage(cfg: DictConfig) -> dict:
    from nanochat.checkpoint import export_model
    from nanochat.lit.datamodule import NanochatDataModule
    from nanochat.tokenizer import Tokenizer, get_tokenizer

    out = run_dir()
    hw, st = cfg.hardware, cfg.stage
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning has its own handler; Hydra's would repeat it
        logging.getLogger(name).propagate = False
    if hw.get("num_threads"):
        torch.set_num_threads(int(hw.num_threads))

    # the run folder keeps its own copy of the tokenizer so it stays loadable after a new tokenizer is trained
    run_tok = out / "tokenizer"
    if (run_tok / "tokenizer.pkl").exists() and cfg.ckpt_path is not None:
        tokenizer = Tokenizer.load(run_tok)
    else:
        tokenizer = get_tokenizer(cfg.tokenizer_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_path = resolve_ckpt_path(cfg, ckpt_dir)

    plan = build_plan(cfg, tokenizer.vocab_size)
    model_cfg = plan.model
    print(plan.describe(peak_flops=hw.peak_flops), flush=True)
    if cfg.plan_only:
        return {"plan": plan}
    if hw.accelerator == "gpu" and not torch.cuda.is_available():
        raise NanochatError(f"hardware={hw.name} needs a CUDA GPU but none is visible; use hardware=cpu or hardware=auto")
    if hw.accelerator == "gpu" and hw.compile:
        _point_triton_at_cuda_ptxas()
    tokenizer.save(run_tok)
    atomic_write_bytes(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())

    L.seed_everything(cfg.seed, verbose=False)
    # the data module builds the source itself so a download happens once per node (prepare_data), not per rank
    source_name, source_cfg = source_options(cfg.data)
    dm = NanochatDataModule(
        source=source_name, source_cfg=source_cfg, tokenizer=tokenizer, batch_size=hw.device_batch_size,
        seq_len=model_cfg.sequence_len, buffer_docs=cfg.data.loader.buffer_docs,
        tokenizer_threads=cfg.data.loader.tokenizer_threads, val_tokens=st.eval_tokens,
    )
    schedule = plan.schedule_kwargs()
    schedule.update({k: st[k] for k in schedule if st.get(k) is not None})
    module = NanochatLM(
        model_config=asdict(model_cfg), total_steps=plan.num_steps, optimizer=plan.optimizer_kwargs(),
        schedule=schedule, compile=bool(hw.compile), init_weights_from=st.init_from,
        momentum={"warmup": plan.momentum_warmup, "start": plan.momentum_start, "end": plan.momentum_end},
    )
    module.token_bytes = tokenizer.token_bytes()

    throughput = ThroughputMFU(plan.flops_per_token, plan.total_batch_tokens, hw.peak_flops)
    samples = SampleGenerations(tokenizer, list(st.sample_prompts), every=st.sample_every, max_tokens=st.sample_tokens)
    logger = make_logger(cfg, out)
    callbacks = [
        NonFiniteGuard(),
        throughput,
        samples,
        *([LearningRateMonitor(logging_interval="step")] if logger else []),
        TQDMProgressBar(refresh_rate=plan.grad_accum),  # one refresh per optimizer step
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step:06d}", auto_insert_metric_name=False,
                        every_n_train_steps=st.save_every, save_top_k=1, save_last=True),
    ]
    trainer = L.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes, strategy=hw.strategy,
        precision=hw.precision, max_steps=plan.num_steps, accumulate_grad_batches=plan.grad_accum,
        gradient_clip_val=st.grad_clip, val_check_interval=st.eval_every * plan.grad_accum,
        check_val_every_n_epoch=None, num_sanity_val_steps=0,  # val length: the data module's val_tokens
        logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out), log_every_n_steps=1, enable_model_summary=False,
    )
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    fit_s = time.time() - t0
    if plan.num_steps % st.eval_every == 0 and "val/bpb" in trainer.callback_metrics:
        val_bpb = float(trainer.callback_metrics["val/bpb"])  # the last in-training evaluation was at the end
    else:
        val = trainer.validate(module, datamodule=dm, verbose=False)
        val_bpb = float(val[0]["val/bpb"]) if val else float("nan")

    summary = {"stage": st.name, "steps": trainer.global_step, "val_bpb": val_bpb, "fit_seconds": fit_s}
    if throughput.history:
        steady = throughput.history[1:] or throughput.history  # the first step includes one-off warm-up
        summary.update(tok_per_s=statistics.median(r for _, r, _ in steady),
                       mfu=statistics.median(m for _, _, m in steady))
    summary["samples"] = samples.samples
    if trainer.is_global_zero:
        model_dir = export_model(module.model, tokenizer, out / "model", meta={"stage": st.name, **summary})
        summary["model_dir"] = str(model_dir)
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
        print(f"\n{st.name}: {trainer.global_step} steps in {fit_s:.0f} s, val bpb {val_bpb:.4f}"
              + (f", {summary['tok_per_s']:,.0f} tok/s, MFU {100 * summary['mfu']:.1f}%" if "mfu" in summary else "")
              + f"\nmodel: {model_dir}", flush=True)
    return summary
