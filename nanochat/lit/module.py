"""The one LightningModule all training stages share: they differ in data and loss masks, not in the loop.

Lightning owns precision, accumulation, clipping, checkpointing, logging and multi-GPU; this module only says
how to compute the loss, how to build the optimizer and how the schedules move. It is built from the stage's
`scaling.Plan` as is (the plan printed at the start is the plan that trains).

Loss normalisation (one training step for every stage):
- a batch `(inputs, targets)` is averaged over its non-ignored targets (base and mid, as the reference does);
- a batch `(inputs, targets, step_targets)` carries the number of supervised targets of the whole optimizer
  step on this rank (SFT): the summed loss is divided by that count summed over all ranks, so the gradient does
  not depend on how the step is split into micro-batches or ranks, and a micro-batch with nothing supervised
  contributes exactly zero (never 0/0).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import lightning as L
import torch

from nanochat.gpt import GPT, cast_compute_dtype
from nanochat.loss_eval import bpb_sums
from nanochat.optim import build_optimizer, lr_multiplier, update_muon_groups
from nanochat.scaling import Plan


def lightning_precision(precision: str) -> str:
    """What the Trainer gets for a hardware precision: "bf16-cast" is done by the model itself (no autocast)."""
    return "32-true" if str(precision) == "bf16-cast" else str(precision)


class NanochatLM(L.LightningModule):
    def __init__(self, plan: Plan, token_bytes: torch.Tensor, compile: bool = False, init_from: str | None = None,
                 fp8: bool = False, precision: str = "32-true", loss_chunk: int = 0, attention: str = "sdpa"):
        super().__init__()
        self.attention = attention  # the uncached attention kernel, "sdpa" or "flex" (GPT.set_attention)
        self.loss_chunk = loss_chunk  # training loss n tokens at a time, no full logits (GPT.set_loss_chunk)
        self.compute_precision = str(precision)  # "bf16-cast": embeddings (hence activations) in bf16 on sm80+ GPUs
        self.plan = plan
        self.config = plan.model
        self.compile_model = compile
        self.fp8 = fp8  # train the large Linear layers in fp8 (nanochat.fp8); eval mode stays full precision
        self.init_from = init_from
        self.model: GPT | None = None
        self.register_buffer("token_bytes", token_bytes.clone().to(torch.int32), persistent=False)
        # validation accumulators for bits per byte and mean loss (summed over the whole pass, all ranks)
        self._val_sums = None

    # -- model ---------------------------------------------------------------------------------------------
    def configure_model(self):
        if self.model is not None:
            return
        # meta construction then the reference's init draws (skipped when weights are loaded right after)
        compute_dtype = cast_compute_dtype(self.device) if self.compute_precision == "bf16-cast" else None
        model = GPT.build(self.config, device=self.device, init_weights=not self.init_from,
                          compute_dtype=compute_dtype)
        if self.init_from:
            from nanochat.checkpoint import load_state_dict

            model.load_state_dict(load_state_dict(self.init_from))
        model.set_loss_chunk(int(self.loss_chunk))
        model.set_attention(self.attention)  # before compile: flex block masks are built outside the graph
        if self.fp8:  # before compile; same Parameters and state-dict keys, so checkpoints and export are unchanged
            from nanochat.fp8 import convert_to_fp8, describe_conversion

            converted = convert_to_fp8(model)
            if self.global_rank == 0:
                print(describe_conversion(model, converted), flush=True)
        if self.compile_model:
            # in-place compile keeps state_dict keys free of `_orig_mod.`
            model.compile(dynamic=False)
        self.model = model

    def forward(self, idx, targets=None, loss_reduction="mean"):
        return self.model(idx, targets, loss_reduction=loss_reduction)

    # -- training ------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        if len(batch) < 3:
            loss = self.model(inputs, targets)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            return loss
        # token-normalised over the whole accumulated step, all ranks (see the module docstring)
        step_targets = self.trainer.strategy.reduce(batch[2].sum().double(), reduce_op="sum")
        nats = self.model(inputs, targets, loss_reduction="sum")
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        loss = nats * (scale / step_targets.clamp(min=1.0)).to(nats.dtype)
        supervised = (targets >= 0).sum()
        self.log("train/loss", (nats.detach() / supervised.clamp(min=1)).float(), prog_bar=True, on_step=True,
                 on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        # Muon momentum schedule (and the preset's weight-decay schedule); global_step = optimizer steps so far
        p = self.plan
        update_muon_groups(optimizer, self.global_step, p.num_steps, **p.momentum_kwargs())

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, **self.plan.optimizer_kwargs())
        # total steps come from the plan, never from trainer.estimated_stepping_batches (that would
        # iterate the train loader and can defeat the data-cursor restore)
        total, sched = self.plan.num_steps, self.plan.schedule_kwargs()

        def schedule(step):
            return lr_multiplier(step, total, **sched)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: bits per byte and loss per supervised token ------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        nats = self.model(inputs, targets, loss_reduction="none").double()  # (B, T); 0 where target == -1
        bpb_nats, nbytes = bpb_sums(nats, targets, self.token_bytes)
        self._val_sums += torch.stack([bpb_nats, nbytes, nats.sum(), (targets >= 0).sum().double()])

    def on_validation_epoch_end(self):
        nats, nbytes, loss_nats, n = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").unbind()
        bpb = (nats / (math.log(2) * nbytes)).float() if nbytes > 0 else torch.tensor(float("nan"))
        self.log("val/bpb", bpb, prog_bar=True, sync_dist=False)
        self.log("val/loss", (loss_nats / n).float() if n > 0 else torch.tensor(float("nan")), sync_dist=False)

    # -- checkpoint extras ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["nanochat_model_config"] = asdict(self.config)
        checkpoint["nanochat_plan"] = self.plan.as_dict()
