"""stage=rl: reinforcement learning on GSM8K from the latest SFT model, with pass@k evaluation in the loop.

Each step asks `examples_per_step` training questions `num_samples` times each (engine: temperature, top-k,
calculator on), rewards a correct `####` answer with 1, and trains on -advantage x log-prob of the sampled
tokens (advantage = reward - mean reward of the question's group; normalised by the step's sampled-token
count; no KL). LR = 0.05 x the base LRs, linear decay to 0 over one epoch of GSM8K train (the reference's
defaults). The pure pieces live in `nanochat.rl`, the step in `nanochat.lit.rl_module`; this file resolves the
input model and data, prints the plan, runs the Trainer and leaves the run folder every stage leaves:
`outputs/rl/<run_name>/` with config.yaml, tokenizer/, checkpoints/, logs/, summary.json and model/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
import warnings

import torch
from omegaconf import DictConfig

from nanochat.common import NanochatError

# reference values (GPU) and the small CPU ones for the in-loop evaluation, when the config leaves them null
EVAL_DEFAULTS = {"gpu": {"eval_every": 60, "eval_examples": 400}, "cpu": {"eval_every": 20, "eval_examples": 16}}


def settings_from(cfg: DictConfig):
    """RLSettings from stage.* (checked when the config was composed; nulls = the hardware's evaluation defaults)."""
    from nanochat.lit.rl_module import RLSettings

    st = cfg.stage
    defaults = EVAL_DEFAULTS["gpu" if cfg.hardware.accelerator == "gpu" else "cpu"]
    values = {}
    for f in dataclasses.fields(RLSettings):
        value = st.get(f.name) if f.name != "seed" else cfg.seed
        if value is None:
            value = defaults.get(f.name, f.default)
        values[f.name] = {"int": int, "float": float}[f.type](value)  # 1 -> 1.0 for float keys
    return RLSettings(**values)


def load_tasks(st: DictConfig):
    from nanochat.tasks.registry import build_task

    path = st.get("gsm8k_path")
    train = build_task("gsm8k", split="train", local_path=path)
    test = build_task("gsm8k", split="test", local_path=path)
    if len(train) == 0 or len(test) == 0:
        raise NanochatError(f"GSM8K {'train' if len(train) == 0 else 'test'} split is empty"
                            + (f" in {path}" if path else ""))
    return train, test


def plan_for(cfg: DictConfig, model_cfg, vocab_size: int, num_train: int, s):
    """The plan that trains: steps from the epochs, 0.05 x the base LRs (stage.lr_multiplier), linear decay."""
    from nanochat.lit.runner import build_plan

    st = cfg.stage
    steps = int(st.num_iterations)
    if steps <= 0:
        steps = max(1, int(num_train * float(st.num_epochs)) // s.examples_per_step)
    rows = s.examples_per_step * s.num_samples
    batch = s.device_batch_size
    per_step = -(-rows // batch) * batch * model_cfg.sequence_len  # rows of at most one context
    plan = build_plan(cfg, vocab_size, model=model_cfg, num_iterations=steps, device_batch_size=batch,
                      total_batch_tokens=per_step)
    # the reference's RL keeps Muon's momentum constant (no warm-up from 0.85)
    return dataclasses.replace(plan, optim=dataclasses.replace(plan.optim, momentum_warmup=0,
                                                              momentum_start=plan.optim.momentum_end))


def describe(s, n_train: int, n_test: int) -> str:
    ev = (f"pass@1..{s.eval_samples} on {min(s.eval_examples, n_test)} test questions every {s.eval_every} steps"
          if s.eval_every > 0 else "no in-loop evaluation")
    return (f"  rl         {s.examples_per_step} questions x {s.num_samples} samples per step (of {n_train:,}), "
            f"<= {s.max_new_tokens} new tokens, temperature {s.temperature:g}, top-k {s.top_k}, calculator on; "
            f"training forward {s.device_batch_size} rows, generation {s.rollout_batch} rows\n"
            f"  eval       {ev} (temperature {s.eval_temperature:g}), and on the final model")


def run(cfg: DictConfig) -> dict:
    import lightning as L

    from nanochat.checkpoint import load_model
    from nanochat.lit.rl_module import RLModule, RLProgressBar, StepCounter
    from nanochat.lit.runner import begin, finish, make_logger, make_trainer, open_run, record_start, world_size
    from nanochat.stages.chat_common import input_model

    out = begin(cfg)
    hw, st = cfg.hardware, cfg.stage
    s = settings_from(cfg)
    if world_size(hw) > 1:
        raise NanochatError("stage=rl runs on one device (hardware.devices=1, hardware.num_nodes=1)")
    source = input_model(cfg, out)  # the newest sft model (layout.STAGES), or stage.init_from
    model, tokenizer, _ = load_model(source)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise NanochatError(f"the tokenizer beside {source} has {tokenizer.vocab_size:,} tokens but the model "
                            f"expects {model.config.vocab_size:,}")
    train_task, test_task = load_tasks(st)
    plan = plan_for(cfg, model.config, tokenizer.vocab_size, len(train_task), s)
    print(plan.describe() + "\n" + describe(s, len(train_task), len(test_task)), flush=True)
    if cfg.plan_only:
        return {"plan": plan}

    folder, ckpt_path = open_run(cfg, out)
    record_start(cfg, folder, tokenizer, str(source))

    L.seed_everything(cfg.seed, verbose=False)
    # the checkpoint of a step holds the weights after its update: exactly what a resume needs
    warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
    module = RLModule(plan, tokenizer, train_task, test_task, s, init_state=model.state_dict())
    del model
    trainer = make_trainer(cfg, folder, plan.num_steps, [RLProgressBar(plan.num_steps, stage="rl")],
                           make_logger(cfg, out), limit_val_batches=0)
    loader = torch.utils.data.DataLoader(StepCounter(plan.num_steps), batch_size=None, shuffle=False)
    t0 = time.time()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    fit_s = time.time() - t0

    # the final model's pass@k (the in-loop evaluations run before a step's update, so never on it)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if hw.accelerator == "gpu" and "bf16" in hw.precision
                else contextlib.nullcontext())
    t1 = time.time()
    with autocast:
        final = module.evaluate(trainer.global_step)
    eval_s = time.time() - t1
    rewards = [r for _, r in module.rewards if r == r]
    timing = module.timing
    busy = timing["sample_s"] + timing["learn_s"]
    summary = {
        "stage": "rl", "steps": trainer.global_step, "fit_seconds": fit_s, "eval_seconds": eval_s,
        "input_model": str(source), **{k: v for k, v in final.items() if k.startswith("pass@")},
        "eval_questions": int(final["questions"]),
        "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
        "reward_mean": statistics.fmean(rewards) if rewards else None,
        "evals": module.evals, "counts": dict(module.counters),
        "sample_seconds": timing["sample_s"], "learn_seconds": timing["learn_s"],
        "sample_share": timing["sample_s"] / busy if busy else None,
        "settings": dataclasses.asdict(s), "plan": plan.as_dict(),
    }
    if trainer.is_global_zero:
        model_dir = finish(folder, module.model, tokenizer, summary, meta_skip=("evals", "plan"))
        c = module.counters
        passk = ", ".join(f"{k} {summary[k]:.4f}" for k in summary if k.startswith("pass@"))
        print(f"\nrl: {trainer.global_step} steps in {fit_s:.0f} s ({100 * (summary['sample_share'] or 0):.0f}% "
              f"sampling); reward {summary['reward_first']} -> {summary['reward_last']}; final {passk} on "
              f"{summary['eval_questions']} test questions\n"
              f"skipped: {c['zero_adv_groups']} zero-advantage groups, {c['skipped_steps']} steps with nothing to "
              f"learn, {c['nonfinite_steps']} non-finite steps, {c['nan_rewards']} NaN rewards, {c['truncated']} "
              f"truncated completions, {c['long_prompts']} over-long prompts\nmodel: {model_dir}", flush=True)
    return summary
