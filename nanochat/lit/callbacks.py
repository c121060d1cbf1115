"""Training callbacks: throughput/MFU, sample generations, non-finite loss guard, atomic checkpoint files."""
from __future__ import annotations

import os
import time

import lightning as L
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from nanochat.common import NanochatError, atomic_path


class AtomicCheckpointIO(CheckpointIO):
    """Checkpoints go to a temporary file beside the target and are renamed over it only when complete,
    so a crash or a full disk mid-save never damages the last good checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as e:
            raise NanochatError(f"could not save checkpoint {path}: {e.strerror or e}; the previous checkpoint is intact") from e

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=False)
        except FileNotFoundError:
            raise NanochatError(f"checkpoint not found: {path}") from None
        except Exception as e:
            raise NanochatError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e})") from None

    def remove_checkpoint(self, path):
        if os.path.exists(path):
            os.remove(path)


class ThroughputMFU(L.Callback):
    """Tokens/s and MFU per optimizer step, with peak FLOPS taken from the hardware profile (so GB10 works)."""

    def __init__(self, flops_per_token: float, tokens_per_step: int, peak_flops: float, log_every: int = 1):
        self.flops_per_token = flops_per_token
        self.tokens_per_step = tokens_per_step  # all ranks, all micro-batches
        self.peak_flops = peak_flops
        self.log_every = log_every
        self._t0 = None
        self._step_seen = -1
        self.history: list[tuple[int, float, float]] = []  # (step, tok/s, mfu)
        self.supervised_history: list[float] = []  # supervised (target >= 0) tokens/s per step
        self._tokens = self._supervised = 0

    def on_train_start(self, trainer, pl_module):
        self._step_seen = trainer.global_step  # a resumed run counts from the checkpoint's step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # real token counts when the batch has them (chat rows are padded to their micro-batch's longest)
        if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
            self._tokens += batch[0].numel()
            self._supervised += int((batch[1] >= 0).sum())
        step = trainer.global_step
        if step == self._step_seen:
            return  # mid-accumulation
        self._step_seen = step
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        dt = now - self._t0
        self._t0 = now
        world = trainer.world_size
        counted = self._tokens > 0
        tok_s = (self._tokens * world if counted else self.tokens_per_step) / dt
        mfu = self.flops_per_token * tok_s / (self.peak_flops * world) if self.peak_flops else float("nan")
        self.history.append((step, tok_s, mfu))
        metrics = {"perf/tok_per_s": tok_s, "perf/mfu": mfu, "perf/step_s": dt}
        if counted:
            self.supervised_history.append(self._supervised * world / dt)
            metrics["perf/supervised_tok_per_s"] = self.supervised_history[-1]
        self._tokens = self._supervised = 0
        if step % self.log_every == 0:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True)

    def on_validation_start(self, trainer, pl_module):
        self._t0 = None  # validation time is not training time

    def on_validation_end(self, trainer, pl_module):
        self._t0 = time.perf_counter()


class NonFiniteGuard(L.Callback):
    """Stop with a clear message on NaN/inf loss, before any checkpoint of the broken weights is written."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            ckpt_dir = None
            if trainer.checkpoint_callback is not None:
                ckpt_dir = trainer.checkpoint_callback.dirpath
            where = f"; the last good checkpoint is in {ckpt_dir}" if ckpt_dir else ""
            raise NanochatError(f"non-finite loss ({loss.item()}) at step {trainer.global_step}{where}")


class SampleGenerations(L.Callback):
    """Greedy continuations of a few prompts every N optimizer steps and at the end of training."""

    def __init__(self, tokenizer, prompts: list[str], every: int, max_tokens: int = 16, chat: bool = False):
        self.tokenizer = tokenizer
        self.chat = chat  # prompts are user messages of a conversation (chat stages)
        self.prompts = list(prompts)
        self.every = every
        self.max_tokens = max_tokens
        self._last_step = -1
        self.samples: list[str] = []

    def _generate(self, trainer, pl_module):
        if not trainer.is_global_zero or not self.prompts:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        self.samples = []
        bos = self.tokenizer.bos_token_id
        for prompt in self.prompts:
            if self.chat:
                from nanochat.chat import render_for_completion

                ids = render_for_completion(self.tokenizer, {"messages": [{"role": "user", "content": prompt}]})
            else:
                ids = self.tokenizer.encode(prompt, prepend=bos)
            out = list(model.generate(ids, max_tokens=self.max_tokens, temperature=0.0))
            if self.chat and self.tokenizer.encode_special("<|assistant_end|>") in out:
                out = out[: out.index(self.tokenizer.encode_special("<|assistant_end|>"))]
            self.samples.append(prompt + (" -> " if self.chat else "") + self.tokenizer.decode(out))
        model.train(was_training)
        text = "\n".join(f"  {s!r}" for s in self.samples)
        print(f"\n[samples @ step {trainer.global_step}]\n{text}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._last_step:
            self._last_step = step
            self._generate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self._generate(trainer, pl_module)


class StepProgressBar(TQDMProgressBar):
    """Counts optimizer steps against the plan's total (with ETA), showing loss, tok/s and MFU.

    Lightning's bar counts micro-batches of an epoch, which for an endless streaming loader has no total.
    """

    SHOWN = {"train/loss": "loss", "perf/tok_per_s": "tok/s", "perf/mfu": "mfu", "val/bpb": "val_bpb",
             "val/loss": "val_loss"}

    def __init__(self, total_steps: int, stage: str = "train"):
        super().__init__(refresh_rate=1)
        self.total_steps = total_steps
        self.stage = stage
        self._shown_step = -1

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def on_train_epoch_start(self, trainer, *_):
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=self.total_steps)
        bar.initial = trainer.global_step  # resumed runs: the ETA counts only the steps still to run
        bar.n = trainer.global_step
        bar.set_description(self.stage)
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._shown_step or self.train_progress_bar is None:
            return  # mid-accumulation: nothing new to show
        self._shown_step = step
        bar = self.train_progress_bar
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer, pl_module):
        metrics = trainer.progress_bar_metrics
        out = {}
        for key, short in self.SHOWN.items():
            if key in metrics:
                value = float(metrics[key])
                out[short] = f"{value:.1%}" if key == "perf/mfu" else (f"{value:,.0f}" if key == "perf/tok_per_s"
                                                                         else f"{value:.4f}")
        return out

    def on_train_epoch_end(self, trainer, pl_module):
        if self.train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
