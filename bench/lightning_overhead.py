"""Framework overhead: the Lightning training step vs the same model + optimizer in a plain PyTorch loop.

Same model config, same initial weights, same batches, same accumulation/clipping/schedules; runs alternate
(plain, lightning, plain, ...) in one process and the median step times are compared.

    python bench/lightning_overhead.py [--depth 4] [--steps 12] [--reps 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from nanochat import scaling
from nanochat.optim import build_optimizer, lr_multiplier, muon_momentum


def make_batches(n, batch, seq, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        row = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        out.append((row[:, :-1].contiguous(), row[:, 1:].contiguous()))
    return out


def plain_loop(model, batches, accum, steps, hp) -> list[float]:
    opt = build_optimizer(model, embedding_lr=hp["embedding_lr"], unembedding_lr=hp["unembedding_lr"],
                          matrix_lr=hp["matrix_lr"], adamw_weight_decay=0.0, d_model=model.config.n_embd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, steps, 0, 0.2, 0.0))
    times, it = [], iter(batches)
    for step in range(steps):
        t0 = time.perf_counter()
        for _ in range(accum):
            x, y = next(it)
            loss = model(x, y) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            if group.get("kind") == "muon":
                group["momentum"] = muon_momentum(step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


class Batches:
    """A plain iterable (a bare list would be taken for several dataloaders)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def lightning_loop(model, batches, accum, steps, hp) -> list[float]:
    import lightning as L

    from nanochat.lit.module import NanochatLM

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self._t0, self._last = [], None, -1

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self._t0 is None:
                self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step != self._last:
                self._last = trainer.global_step
                now = time.perf_counter()
                self.times.append(now - self._t0)
                self._t0 = now

    plan = scaling.plan(model.config, device_batch_size=batches[0][0].shape[0],
                        total_batch_tokens=batches[0][0].numel() * accum, num_iterations=steps, **hp)
    module = NanochatLM(plan, torch.ones(model.config.vocab_size, dtype=torch.int32))
    module.model = model
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
                        accumulate_grad_batches=accum, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=Batches(batches))
    return timer.times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = scaling.model_config(args.depth, vocab_size=args.vocab, seq_len=args.seq, head_dim=64)
    from nanochat.gpt import GPT

    base = GPT(cfg)
    base.init_weights()
    batches = make_batches(args.steps * args.accum, args.batch, args.seq, args.vocab)
    hp = dict(embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02)
    skip = 2  # first steps include one-off setup
    plain_med, lit_med = [], []
    for rep in range(args.reps):
        p = plain_loop(copy.deepcopy(base), batches, args.accum, args.steps, hp)
        q = lightning_loop(copy.deepcopy(base), batches, args.accum, args.steps, hp)
        plain_med.append(statistics.median(p[skip:]))
        lit_med.append(statistics.median(q[skip:]))
        print(f"rep {rep}: plain {plain_med[-1] * 1e3:.1f} ms/step, lightning {lit_med[-1] * 1e3:.1f} ms/step")
    p, q = statistics.median(plain_med), statistics.median(lit_med)
    print(f"step_time (d{args.depth}, {args.batch}x{args.seq}, accum {args.accum}): lightning {q * 1e3:.1f} ms, "
          f"plain {p * 1e3:.1f} ms, ratio {q / p:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
