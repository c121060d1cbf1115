"""The LightningModule of stage=rl: sample with the engine, then learn from the samples, once per optimizer step.

The one idea: an RL step has two phases that never hold memory at the same time. Rollouts are generated under
inference mode (no autograd graph, a KV cache that is freed when generation ends); then the model trains on
them in device-sized chunks, each chunk's activations freed by its backward before the next forward. Manual
optimisation is used because a step is not one batch from a loader: the step number alone says which
questions are asked and which seed samples them (`nanochat.rl`), so a resumed run repeats the uninterrupted
one exactly. The data loader only counts steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch

from nanochat.engine import Engine
from nanochat.gpt import GPT
from nanochat.lit.callbacks import StepProgressBar
from nanochat.optim import build_optimizer, lr_multiplier, update_muon_groups
from nanochat.rl import build_train_rows, collect_rollouts, evaluate_pass_at_k, mix_seed, pack_rows, policy_loss, \
    step_questions
from nanochat.scaling import Plan


@dataclass
class RLSettings:
    examples_per_step: int = 16  # questions per step
    num_samples: int = 16  # samples per question
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 50
    device_batch_size: int = 8  # rows per training forward
    rollout_batch: int = 64  # rows per generation call
    eval_every: int = 60  # <= 0: no in-loop evaluation
    eval_examples: int = 400
    eval_samples: int = 8
    eval_temperature: float = 1.0
    seed: int = 42


# cumulative counters kept in the checkpoint (a resumed run's summary covers the whole run)
COUNTERS = ("samples", "sampled_tokens", "forced_tokens", "truncated", "long_prompts", "nan_rewards",
            "zero_adv_groups", "groups", "skipped_steps", "nonfinite_steps", "trained_tokens")


class StepCounter(torch.utils.data.Dataset):
    """One item per optimizer step; the module reads the step from trainer.global_step, not from the item."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class RLProgressBar(StepProgressBar):
    """Optimizer steps with ETA, showing the mean reward, the latest pass@1 and the sampling speed."""

    def get_metrics(self, trainer, pl_module):
        m = trainer.progress_bar_metrics
        out = {}
        if "train/reward" in m:
            out["reward"] = f"{float(m['train/reward']):.3f}"
        last = getattr(pl_module, "_last_eval", {})
        if "eval/pass@1" in last:
            out["pass@1"] = f"{last['eval/pass@1']:.3f}"
        if "perf/rollout_tok_per_s" in m:
            out["sample tok/s"] = f"{float(m['perf/rollout_tok_per_s']):,.0f}"
        return out


class RLModule(L.LightningModule):
    def __init__(self, plan: Plan, tokenizer, train_task, eval_task, settings: RLSettings,
                 init_state: dict):
        super().__init__()
        self.automatic_optimization = False
        self.plan, self.config = plan, plan.model
        self.tokenizer, self.train_task, self.eval_task = tokenizer, train_task, eval_task
        self.s = settings
        self.init_state = init_state  # the input model's weights (a resumed run's checkpoint replaces them)
        self.model: GPT | None = None
        self.counters = {k: 0 for k in COUNTERS}
        self.evals: list[dict] = []  # {"step", "pass@1", ...} of every in-loop evaluation
        self.rewards: list[tuple[int, float]] = []  # (step, mean reward)
        self.timing = {"sample_s": 0.0, "learn_s": 0.0}
        self._last_eval: dict[str, float] = {}

    def configure_model(self):
        if self.model is not None:
            return
        model = GPT.build(self.config, device=self.device, init_weights=False)
        model.load_state_dict(self.init_state)
        self.init_state = None
        self.model = model  # uncompiled: rollout lengths vary every step (a compiled graph would recompile)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, **self.plan.optimizer_kwargs())
        total, sched = self.plan.num_steps, self.plan.schedule_kwargs()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total, **sched))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """pass@1..k on the first eval_examples test questions (seeded: the same samples on a resume)."""
        s = self.s
        self.model.eval()
        n = min(s.eval_examples, len(self.eval_task))
        result = evaluate_pass_at_k(
            Engine(self.model, self.tokenizer), self.tokenizer, self.eval_task, range(n),
            num_samples=s.eval_samples, max_new_tokens=s.max_new_tokens, temperature=s.eval_temperature,
            top_k=s.top_k, seed=mix_seed(s.seed, 1, step), rows_per_call=s.rollout_batch,
            context_len=self.config.sequence_len)
        return result

    # -- one RL step --------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        s, step = self.s, self.global_step
        opt, sched = self.optimizers(), self.lr_schedulers()
        if s.eval_every > 0 and step % s.eval_every == 0:
            result = self.evaluate(step)
            self.evals.append({"step": step, **result})
            passk = {f"eval/{k}": v for k, v in result.items() if k.startswith("pass@")}
            if self.logger is not None:  # straight to the logger: one row at this step, not carried forward
                self.logger.log_metrics(passk, step=step)
            self._last_eval = passk

        t0 = time.perf_counter()
        self.model.eval()
        questions = step_questions(len(self.train_task), s.examples_per_step, step)
        groups, stats = collect_rollouts(
            Engine(self.model, self.tokenizer), self.tokenizer, self.train_task, questions,
            num_samples=s.num_samples, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
            seed=mix_seed(s.seed, 0, step), rows_per_call=s.rollout_batch, context_len=self.config.sequence_len)
        rows = build_train_rows(groups)
        t1 = time.perf_counter()

        self.model.train()
        loss_sum = 0.0
        bos = self.tokenizer.bos_token_id
        for chunk in rows.chunks(s.device_batch_size):
            inputs, targets, adv = pack_rows([rows.tokens[i] for i in chunk], [rows.masks[i] for i in chunk],
                                             [rows.advantages[i] for i in chunk], pad_id=bos, device=self.device)
            loss = policy_loss(self.model, inputs, targets, adv, rows.num_tokens)
            self.manual_backward(loss)
            loss_sum += float(loss.detach())
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not grads or not finite:
            # nothing to learn (every group had equal rewards), or a non-finite gradient: no update at all
            # (the optimizer skips parameters without a gradient, so its moments stay as they were)
            opt.zero_grad(set_to_none=True)
            self.counters["skipped_steps" if finite else "nonfinite_steps"] += 1
        elif self.plan.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.plan.grad_clip, gradient_clip_algorithm="norm")
        p = self.plan
        lr_mult = sched.get_last_lr()[0] / opt.optimizer.param_groups[0]["initial_lr"]  # this step's
        update_muon_groups(opt.optimizer, step, p.num_steps, **p.momentum_kwargs())
        opt.step()  # counts the step (trainer.global_step) even when no parameter has a gradient
        sched.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()

        rewards = [r for g in groups for r in g.rewards if isinstance(r, (int, float)) and math.isfinite(r)]
        mean_reward = sum(rewards) / len(rewards) if rewards else float("nan")
        self.rewards.append((step, mean_reward))
        for name in ("samples", "sampled_tokens", "forced_tokens", "truncated", "long_prompts", "nan_rewards"):
            self.counters[name] += getattr(stats, name)
        self.counters["zero_adv_groups"] += rows.zero_adv_groups
        self.counters["groups"] += len(groups)
        self.counters["trained_tokens"] += sum(sum(m) for m in rows.masks)
        self.timing["sample_s"] += t1 - t0
        self.timing["learn_s"] += t2 - t1
        lengths = [len(c) for g in groups for c in g.completions]
        self.log_dict({
            "train/loss": loss_sum, "train/reward": mean_reward,
            "train/seq_len": sum(lengths) / len(lengths) if lengths else 0.0,
            "train/zero_adv_groups": float(rows.zero_adv_groups), "train/truncated": float(stats.truncated),
            "train/nan_rewards": float(stats.nan_rewards), "lr_mult": float(lr_mult),
            "perf/sample_s": t1 - t0, "perf/learn_s": t2 - t1,
            "perf/rollout_tok_per_s": stats.sampled_tokens / max(t1 - t0, 1e-9),
        }, on_step=True, on_epoch=False, prog_bar=True)

    # -- checkpoint extras ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["nanochat_model_config"] = asdict(self.config)
        checkpoint["nanochat_plan"] = self.plan.as_dict()
        checkpoint["nanochat_rl"] = {"counters": dict(self.counters), "evals": list(self.evals),
                                     "rewards": list(self.rewards), "timing": dict(self.timing)}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("nanochat_rl") or {}
        self.counters.update(saved.get("counters", {}))
        self.evals = list(saved.get("evals", []))
        self.rewards = [tuple(r) for r in saved.get("rewards", [])]
        self.timing.update(saved.get("timing", {}))
