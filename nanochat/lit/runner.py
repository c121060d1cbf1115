"""The run mechanics every training stage shares: run folder, resume, Trainer, summary, export.

A stage module (nanochat/stages/) only says what is particular to it: where its weights start, which data it
reads and how its plan is derived. It hands a `StageRun` to `run_training`, which prints the plan (after every
override: the plan printed is the plan trained), then trains, evaluates, writes `summary.json` and exports the
model folder.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from nanochat import scaling
from nanochat.common import NanochatError, atomic_write_bytes
from nanochat.gpt import GPTConfig
from nanochat.hardware import estimate_run, resolve_attention
from nanochat.lit.callbacks import AtomicCheckpointIO, NonFiniteGuard, SampleGenerations, StepProgressBar, ThroughputMFU
from nanochat.lit.memfit import apply_fit
from nanochat.layout import RunFolder
from nanochat.lit.module import NanochatLM, lightning_precision
from nanochat.probe import resolved_hardware
from nanochat.stages.cli import hardware_of, run_dir

@dataclass
class StageRun:
    """What a stage module hands the shared runner."""

    plan: scaling.Plan
    datamodule: L.LightningDataModule | None  # None only for a plan that is printed, never trained
    tokenizer: Any
    init_from: str | None = None  # model folder / .ckpt the weights start from (None = fresh init)
    sample_prompts: list[str] = field(default_factory=list)  # rendered with the tokenizer, greedy continuations
    chat_samples: bool = False  # prompts are user messages: render them as conversations
    info: dict = field(default_factory=dict)  # extra figures for summary.json (input model, data stats...)


def world_size(hw) -> int:
    devices = hw.devices
    n = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else int(devices)
    return n * int(hw.num_nodes)


def plan_overrides(cfg: DictConfig) -> dict:
    """Every recipe setting the stage config sets (null = the preset's): the fields of nanochat.recipe."""
    st = cfg.stage
    out = {}
    for key in scaling.RECIPE_KEYS:
        value = st.get(key)
        if value is not None:
            out[key] = list(value) if OmegaConf.is_list(value) else value
    return out


def token_batch(cfg: DictConfig, given: int | None = None, model: GPTConfig | None = None) -> int:
    """Tokens per optimizer step: `given` (a stage that derives it), else stage.total_batch_tokens, else the preset's;
    `auto` is resolved for `model` (None = the config's model) by the plan's rule."""
    value = given or cfg.stage.get("total_batch_tokens") or scaling.get_preset(cfg.model.preset).batch.total_batch_tokens
    if value != scaling.AUTO:
        return value
    return build_plan(cfg, scaling.get_preset(cfg.model.preset).vocab_size, model=model, num_iterations=1,
                      device_batch_size=scaling.AUTO).total_batch_tokens


def build_plan(cfg: DictConfig, vocab_size: int, model: GPTConfig | None = None, num_iterations: int | None = None,
               device_batch_size=None, **extra) -> scaling.Plan:
    """The run's plan: from the depth (base) or an existing model's config (later stages), plus every override.

    `device_batch_size`: the stage's own rows per micro-batch (sft, rl); None = hardware.device_batch_size
    (`auto`: the largest candidate, which the memory fit then lowers to what fits).
    """
    from nanochat.config.schema import model_switches
    from nanochat.lit.memfit import check_device_batch

    m, hw, st = cfg.model, cfg.hardware, cfg.stage
    overrides = {**plan_overrides(cfg), **extra}
    iters = st.num_iterations if num_iterations is None else num_iterations
    if device_batch_size is None:
        check_device_batch(hw.device_batch_size)
        device_batch_size = hw.device_batch_size
    common = dict(device_batch_size=device_batch_size, world_size=world_size(hw), num_iterations=iters,
                  target_flops=st.get("target_flops") or -1.0, preset=m.preset)
    if model is not None:  # a trained model's architecture is fixed
        return scaling.plan(model, **common, **overrides)
    return scaling.plan(m.depth, vocab_size=vocab_size, seq_len=m.sequence_len, aspect_ratio=m.aspect_ratio,
                        head_dim=m.head_dim, n_kv_head=m.n_kv_head, **common, **overrides, **model_switches(m))


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
    try:
        from nanochat.lit.loggers import ResumableCSVLogger as CSV
    except ImportError:  # pragma: no cover
        from lightning.pytorch.loggers import CSVLogger as CSV
    return CSV(save_dir=str(out), name="logs", version="")


def device_type(accelerator: str) -> str:
    """The torch device type a Lightning accelerator trains on ("auto": CUDA when visible)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "mps" if accelerator == "mps" else "cpu"


def _point_triton_at_cuda_ptxas() -> None:
    """GB10 (sm_121) needs CUDA 13's ptxas; Triton's bundled one may predate it."""
    if os.environ.get("TRITON_PTXAS_PATH") or "GB10" not in torch.cuda.get_device_name(0):
        return
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    ptxas = Path(cuda_home) / "bin" / "ptxas"
    if ptxas.exists():
        os.environ["TRITON_PTXAS_PATH"] = str(ptxas)


def record_start(cfg: DictConfig, folder: RunFolder, tokenizer, init_from: str | None) -> None:
    """What a run folder holds before training: its tokenizer, the composed config, the input model it started from."""
    folder.path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder.tokenizer)
    atomic_write_bytes(folder.config, OmegaConf.to_yaml(cfg, resolve=True).encode())
    if init_from:
        atomic_write_bytes(folder.started_from, str(init_from).encode())


def finish(folder: RunFolder, model, tokenizer, summary: dict, meta_skip: tuple[str, ...] = ()) -> Path:
    """Export the trained model folder and write summary.json (rank 0): the end of every training stage."""
    from nanochat.checkpoint import export_model

    meta = {k: v for k, v in summary.items() if k not in meta_skip}
    model_dir = export_model(model, tokenizer, folder.model, meta=meta)
    summary["model_dir"] = str(model_dir)
    atomic_write_bytes(folder.summary, json.dumps(summary, indent=2, default=str).encode())
    return model_dir


def begin(cfg: DictConfig) -> Path:
    """Process set-up every training stage shares; returns the run folder Hydra chose (not created yet)."""
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning has its own handler; Hydra's would repeat it
        logging.getLogger(name).propagate = False
    if cfg.hardware.get("num_threads"):
        torch.set_num_threads(int(cfg.hardware.num_threads))
    return run_dir(create=False)


def open_run(cfg: DictConfig, out: Path) -> tuple[RunFolder, str | None]:
    """(run folder, checkpoint to resume or None), after checking the resume request and the device."""
    folder = RunFolder(out)
    ckpt_path = resolve_ckpt_path(cfg, folder.checkpoints)
    hw = cfg.hardware
    if hw.accelerator == "gpu" and not torch.cuda.is_available():
        raise NanochatError(f"hardware={hw.name} needs a CUDA GPU but none is visible; use hardware=cpu or hardware=auto")
    return folder, ckpt_path


def make_trainer(cfg: DictConfig, folder: RunFolder, max_steps: int, callbacks: list, logger, **options) -> L.Trainer:
    """The Lightning Trainer of every training stage: the profile's devices and precision, atomic checkpoints every
    stage.save_every steps (+ last), one CSV/W&B logger; `options` are the stage's own Trainer arguments."""
    hw = cfg.hardware
    checkpoints = ModelCheckpoint(dirpath=str(folder.checkpoints), filename="step{step:06d}",
                                  auto_insert_metric_name=False, every_n_train_steps=int(cfg.stage.save_every),
                                  save_top_k=1, save_last=True)
    return L.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes, strategy=hw.strategy,
        precision=lightning_precision(hw.precision), max_steps=max_steps, logger=logger, callbacks=[*callbacks, checkpoints],
        plugins=[AtomicCheckpointIO()], default_root_dir=str(folder.path), num_sanity_val_steps=0,
        log_every_n_steps=1, enable_model_summary=False, **options)


def run_training(cfg: DictConfig, prepare: Callable[[DictConfig, Path], StageRun]) -> dict:
    """Plan, train, evaluate and export one training stage; `prepare(cfg, run_folder)` is the stage's part."""
    out = begin(cfg)
    hw, st = cfg.hardware, cfg.stage
    run = prepare(cfg, out)
    plan, tokenizer = run.plan, run.tokenizer
    print(plan.describe(), flush=True)
    # peak_flops=auto is measured (or, for a plan made elsewhere, the profile's nominal figure) once, here: the
    # estimate below and the MFU logged during training divide by the same number
    hardware, peak = resolved_hardware(hardware_of(cfg))
    print(estimate_run(plan, hardware, peak_source=peak.source if hw.peak_flops == "auto" else None), flush=True)
    if cfg.plan_only:  # before anything touches the run folder
        return {"plan": plan}
    folder, ckpt_path = open_run(cfg, out)
    # memory fit: on CUDA probe real steps; everywhere check the estimate (an explicit size that cannot fit stops here)
    if "device_batch_size" in st:  # the stage's own rows per micro-batch (sft), not the profile's
        hardware = dataclasses.replace(hardware, device_batch_size=plan.device_batch_size)
    fit = apply_fit(run, hardware, probe=hw.accelerator == "gpu")
    plan = run.plan
    if getattr(run.datamodule, "accum", None) is not None:
        run.datamodule.accum = plan.grad_accum
    print(fit.estimate.describe() + "\n" + fit.describe(), flush=True)
    attention = resolve_attention(str(hw.attention), plan.model, device_type(hw.accelerator), training=True)
    print(attention.describe(), flush=True)
    if hw.accelerator == "gpu" and hw.compile:
        _point_triton_at_cuda_ptxas()
    record_start(cfg, folder, tokenizer, run.init_from)

    L.seed_everything(cfg.seed, verbose=False)
    bytes_kind = scaling.get_preset(plan.preset).bpb_token_bytes  # val bpb as the preset's reference counts bytes
    module = NanochatLM(plan, tokenizer.token_bytes(bytes_kind), compile=bool(hw.compile), init_from=run.init_from,
                        fp8=bool(hw.fp8), precision=str(hw.precision), loss_chunk=int(hw.loss_chunk),
                        attention=attention.name)
    throughput = ThroughputMFU(plan.flops_per_token, plan.total_batch_tokens, hardware.peak_flops)
    samples = SampleGenerations(tokenizer, list(run.sample_prompts), every=st.sample_every,
                                max_tokens=st.sample_tokens, chat=run.chat_samples)
    logger = make_logger(cfg, out)
    eval_every = int(st.eval_every)
    callbacks = [
        NonFiniteGuard(),
        throughput,
        samples,
        *([LearningRateMonitor(logging_interval="step")] if logger else []),
        StepProgressBar(plan.num_steps, stage=st.name),
    ]
    trainer = make_trainer(
        cfg, folder, plan.num_steps, callbacks, logger, accumulate_grad_batches=plan.grad_accum,
        gradient_clip_val=plan.grad_clip or None,
        # eval_every <= 0 disables in-loop evaluation (the final evaluation below still runs)
        val_check_interval=eval_every * plan.grad_accum if eval_every > 0 else None,
        limit_val_batches=None if eval_every > 0 else 0,
        check_val_every_n_epoch=None,  # val length: the data module's val_tokens
    )
    on_cuda = hw.accelerator == "gpu" and torch.cuda.is_available()
    if on_cuda:  # the training peak alone, not the memory fit's probe before it
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    trainer.fit(module, datamodule=run.datamodule, ckpt_path=ckpt_path)
    fit_s = time.time() - t0
    memory = {"estimate_bytes": fit.estimate.total, "budget_bytes": fit.budget}
    if on_cuda:
        memory.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                      peak_reserved_bytes=torch.cuda.max_memory_reserved())
    if eval_every > 0 and plan.num_steps % eval_every == 0 and "val/bpb" in trainer.callback_metrics:
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    else:
        trainer.limit_val_batches = 1.0
        results = trainer.validate(module, datamodule=run.datamodule, verbose=False)
        val = {k: float(v) for k, v in results[0].items()} if results else {}
    val_bpb = val.get("val/bpb", float("nan"))
    if on_cuda:  # above the training peak only if evaluation needed more (e.g. a recompiled graph)
        memory["peak_reserved_with_eval_bytes"] = torch.cuda.max_memory_reserved()

    summary = {"stage": st.name, "steps": trainer.global_step, "val_bpb": val_bpb, "val_loss": val.get("val/loss"),
               "fit_seconds": fit_s, "plan": plan.as_dict(), "peak_flops": hardware.peak_flops,
               "peak_flops_source": peak.source, "memory": memory,
               "attention": {"backend": attention.name, "reason": attention.reason}, **run.info}
    if throughput.history:
        steady = throughput.history[1:] or throughput.history  # the first step includes one-off warm-up
        summary.update(tok_per_s=statistics.median(r for _, r, _ in steady),
                       mfu=statistics.median(m for _, _, m in steady))
        if throughput.supervised_history:
            sup = throughput.supervised_history[1:] or throughput.supervised_history
            summary["supervised_tok_per_s"] = statistics.median(sup)
    summary["samples"] = samples.samples
    if trainer.is_global_zero:
        model_dir = finish(folder, module.model, tokenizer, summary)
        print(f"\n{st.name}: {trainer.global_step} steps in {fit_s:.0f} s, val bpb {val_bpb:.4f}"
              + (f", {summary['tok_per_s']:,.0f} tok/s, MFU {100 * summary['mfu']:.1f}%" if "mfu" in summary else "")
              + f"\nmodel: {model_dir}", flush=True)
    return summary
