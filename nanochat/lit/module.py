"""The one LightningModule all training stages share: they differ in data and loss masks, not in the loop.

Lightning owns precision, accumulation, clipping, checkpointing, logging and multi-GPU; this module only says
how to compute the loss, how to build the optimizer and how the schedules move.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import lightning as L
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.optim import build_optimizer, lr_multiplier, update_muon_groups


class NanochatLM(L.LightningModule):
    def __init__(
        self,
        model_config: dict,
        total_steps: int,
        optimizer: dict | None = None,
        schedule: dict | None = None,
        momentum: dict | None = None,
        compile: bool = False,
        init_weights_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = GPTConfig(**model_config)
        self.model: GPT | None = None
        # validation accumulators for bits per byte (summed over the whole validation pass, all ranks)
        self._val_nats = None
        self._val_bytes = None
        self.token_bytes: torch.Tensor | None = None  # set by the runner from the tokenizer

    # -- model ---------------------------------------------------------------------------------------------
    def configure_model(self):
        if self.model is not None:
            return
        model = GPT(self.config)
        model.init_weights()
        if self.hparams.init_weights_from:
            from nanochat.checkpoint import load_state_dict

            model.load_state_dict(load_state_dict(self.hparams.init_weights_from))
        if self.hparams.compile:
            # in-place compile keeps state_dict keys free of `_orig_mod.`
            model.compile(dynamic=False)
        self.model = model

    def forward(self, idx, targets=None, loss_reduction="mean"):
        return self.model(idx, targets, loss_reduction=loss_reduction)

    # -- training ------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        loss = self.model(inputs, targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        # Muon momentum warm-up (and the preset's weight-decay schedule); global_step = optimizer steps so far
        update_muon_groups(optimizer, self.global_step, self.hparams.total_steps, **(self.hparams.momentum or {}))

    def configure_optimizers(self):
        h = self.hparams
        kwargs = {"embedding_lr": 0.2, "unembedding_lr": 0.004, "matrix_lr": 0.02, **(h.optimizer or {})}
        kwargs.setdefault("d_model", self.config.n_embd)
        optimizer = build_optimizer(self.model, **kwargs)
        # total steps come from the config, never from trainer.estimated_stepping_batches (that would
        # iterate the train loader and can defeat the data-cursor restore)
        total, sched = h.total_steps, dict(h.schedule or {})

        def schedule(step):
            return lr_multiplier(step, total, **sched)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: bits per byte ------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_nats = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_bytes = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        nats = self.model(inputs, targets, loss_reduction="none").double()  # (B, T); 0 where target == -1
        token_bytes = self.token_bytes.to(targets.device)
        nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0).double()
        counted = nbytes > 0  # special tokens and masked targets do not count
        self._val_nats += (nats * counted).sum()
        self._val_bytes += nbytes.sum()

    def on_validation_epoch_end(self):
        nats = self.trainer.strategy.reduce(self._val_nats, reduce_op="sum")
        nbytes = self.trainer.strategy.reduce(self._val_bytes, reduce_op="sum")
        bpb = (nats / (math.log(2) * nbytes)).float() if nbytes > 0 else torch.tensor(float("nan"))
        self.log("val/bpb", bpb, prog_bar=True, sync_dist=False)

    # -- checkpoint extras ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["nanochat_model_config"] = asdict(self.config)
