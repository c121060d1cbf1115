"""time_budget= on the config side: what each stage of this run will do, measured rates, the choice as overrides.

`stage=base time_budget=...` plans base alone (in its own process, then trains); `stage=all time_budget=...` plans
the whole pipeline - tokenizer, base, mid, SFT, evaluations - from each stage's composed config, and passes the
choice to the stages as the overrides a user would type. The arithmetic is `nanochat.budget`'s; the
measurements `nanochat.throughput_probe`'s.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nanochat import budget, scaling
from nanochat.common import NanochatError, atomic_write_bytes, get_base_dir
from nanochat.throughput_probe import DoesNotFit, RateModel, probe, setup_for

BUDGET_STAGES = ("base", "all")
BUDGET_FILE = "budget.json"  # the decision, in the run folder (base) or the pipeline's folder (all)
TOKENIZER_CHARS_PER_S = 5e6  # BPE training (rustbpe), reading included
BPB_TOKENS = 16 * 8  # evaluate.py's bits per byte: steps x rows (x the context)
CORE_BUNDLE = "eval_bundle"
BPE_BYTES_PER_TOKEN = 4.0  # a trained BPE of 8K-32K tokens on English (the sample's 8K tokenizer: 4.0)


def check(cfg: DictConfig) -> None:
    """time_budget= plans base pretraining or the whole pipeline; any other stage is one clear error."""
    if cfg.get("time_budget") is None:
        return
    if cfg.stage.name not in BUDGET_STAGES:
        raise NanochatError(f"time_budget applies to stage=all or stage=base, not stage={cfg.stage.name}; set the "
                            f"horizon of that stage with stage.num_iterations or stage.num_epochs")
    budget.parse_duration(cfg.time_budget)


def _vocab_size(cfg: DictConfig, tokenizer_dir) -> int:
    """The vocabulary base trains with: the tokenizer's when it exists, else the one the data config will train."""
    from nanochat.tokenizer import default_tokenizer_dir, get_tokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir else default_tokenizer_dir()
    if (folder / "tokenizer.pkl").exists():
        return get_tokenizer(folder).vocab_size
    return int(cfg.data.tokenizer.vocab_size)


def _chat_tokenizer(tokenizer_dir) -> tuple[object, float]:
    """A tokenizer to measure the mixtures with, and the factor its counts take: the run's or the latest (1), else
    byte-level with a BPE's typical bytes per token (the pipeline trains its tokenizer first)."""
    from nanochat.tokenizer import Tokenizer, default_tokenizer_dir, get_tokenizer

    for folder in (tokenizer_dir, default_tokenizer_dir()):
        if folder and (Path(folder) / "tokenizer.pkl").exists():
            return get_tokenizer(folder), 1.0
    return Tokenizer.byte_level(), 1 / BPE_BYTES_PER_TOKEN


def plan_function(base_cfg: DictConfig, vocab: int):
    """plan_for(depth, ratio): the base plan the overrides model.depth / stage.param_data_ratio will give."""
    from nanochat.config.schema import model_switches
    from nanochat.lit.runner import plan_overrides, world_size

    m, hw = base_cfg.model, base_cfg.hardware
    recipe = plan_overrides(base_cfg)
    switches = model_switches(m)
    fixed = dict(vocab_size=vocab, seq_len=int(m.sequence_len), aspect_ratio=int(m.aspect_ratio),
                 head_dim=int(m.head_dim), n_kv_head=m.n_kv_head, device_batch_size=hw.device_batch_size,
                 world_size=world_size(hw), num_iterations=-1, target_flops=-1.0, preset=m.preset)
    cache = {}

    def plan_for(depth: int, ratio: float):
        key = (depth, ratio)
        if key not in cache:
            cache[key] = scaling.plan(depth, **fixed, **{**recipe, "param_data_ratio": ratio}, **switches)
        return cache[key]

    return plan_for


def workload(cfg: DictConfig, stages: list[str], stage_cfgs: dict, plan_at) -> budget.Workload:
    """What every stage will do, from its composed config (`plan_at(depth)`: a base plan, for the chat batches)."""
    from nanochat.evaluation import BASE_EVALS, CHAT_EVALS, default_evals
    from nanochat.stages.chat_common import build_tasks, mean_tokens, mixture_recipe

    kind = "cpu" if cfg.hardware.accelerator == "cpu" else "gpu"
    w = budget.Workload(stages=tuple(stages), device_kind=kind)
    tok_cfg = cfg.data.tokenizer
    if "tokenizer" in stages:
        w.tokenizer_s = budget.STARTUP_S[kind] + int(tok_cfg.max_chars) / TOKENIZER_CHARS_PER_S
    b = stage_cfgs["base"].stage
    w.base_eval_tokens, w.base_eval_every = int(b.eval_tokens), int(b.eval_every)
    w.base_sample_every = int(b.sample_every)
    w.base_sample_tokens = len(b.sample_prompts) * int(b.sample_tokens)
    tokenizer, scale = None, 1.0
    seq_len = int(cfg.model.sequence_len)
    reference = plan_at(int(cfg.model.depth))
    for name in ("mid", "sft"):
        if name not in stages:
            continue
        sc = stage_cfgs[name]
        if tokenizer is None:
            tokenizer, scale = _chat_tokenizer(stage_cfgs["base"].get("tokenizer_dir"))
        train, _ = build_tasks(sc)
        mean = min(seq_len, scale * mean_tokens(train, tokenizer))
        st = sc.stage
        if name == "mid":
            batch = st.total_batch_tokens or scaling.get_preset(cfg.model.preset).batch.total_batch_tokens
            w.mid_batch_tokens = reference.total_batch_tokens if batch == scaling.AUTO else int(batch)
            steps = int(st.num_iterations)
            w.mid_tokens = (steps * w.mid_batch_tokens if steps > 0 else float(st.num_epochs) * len(train) * mean)
            w.mid_eval_tokens, w.mid_eval_every = int(st.eval_tokens), int(st.eval_every)
        elif mixture_recipe(sc).get("layout") == "bestfit":  # packed rows of the base run's batch
            w.sft_tokens_per_step = reference.total_batch_tokens
            tokens = float(st.num_epochs) * len(train) * mean
            w.sft_steps = int(st.num_iterations) if st.num_iterations > 0 else math.ceil(tokens / w.sft_tokens_per_step)
        else:  # one conversation per row, padded to the longest of its micro-batch
            per_step = int(st.examples_per_step)
            w.sft_steps = int(st.num_iterations) if st.num_iterations > 0 else math.ceil(
                float(st.num_epochs) * len(train) / per_step)
            w.sft_tokens_per_step = per_step * min(seq_len, 2 * mean)
    pipeline = cfg.stage.name == "all"
    if pipeline and cfg.stage.evaluate:
        w.stages = (*w.stages, "eval")
        opts = cfg.stage.eval
        for name in (s for s in stages if s != "tokenizer"):
            evals = list(opts.evals) if opts.evals is not None else default_evals(name)
            per_task = int(opts.max_per_task or 50)
            fwd = gen = 0.0
            if "bpb" in evals:
                fwd += BPB_TOKENS * seq_len
            if "core" in evals and (get_base_dir() / CORE_BUNDLE).exists():
                fwd += budget.CORE_TASKS * per_task * budget.CORE_CHOICES * budget.EVAL_ITEM_TOKENS
            for e in evals:
                if e in ("arc_easy", "arc_challenge", "mmlu"):
                    fwd += per_task * budget.EVAL_ITEM_TOKENS
                elif e in CHAT_EVALS:
                    gen += per_task * int(opts.max_new_tokens)
            if any(e in BASE_EVALS + CHAT_EVALS for e in evals):
                w.eval_forward_tokens[name], w.eval_decode_tokens[name] = fwd, gen
    return w


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 where that cannot be read)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def choose_for(cfg: DictConfig, stages: list[str], stage_cfgs: dict, log=print,
               since: float | None = None) -> budget.Choice:
    """Probe this device and choose the depth and horizon for `cfg.time_budget` (printing the per-stage table).

    The budget's clock started at `since` (a time.perf_counter() value; None = when this process started)."""
    from nanochat.stages.cli import hardware_of

    t0 = time.perf_counter() - process_age() if since is None else since
    budget_s = budget.parse_duration(cfg.time_budget)
    base_cfg = stage_cfgs["base"]
    vocab = _vocab_size(cfg, base_cfg.get("tokenizer_dir"))
    plan_for = plan_function(base_cfg, vocab)
    preset_ratio = scaling.get_preset(cfg.model.preset).resolve(**_recipe(base_cfg))[2].param_data_ratio
    depths = list(range(1, max(8, 2 * int(cfg.model.depth)) + 1))
    w = workload(cfg, stages, stage_cfgs, lambda d: plan_for(d, preset_ratio))
    if cfg.stage.name == "base":
        w.running = ("base",)
    hw = cfg.hardware
    first = plan_for(depths[0], preset_ratio)
    setup = setup_for(hw.accelerator, hw.precision, bool(hw.compile), first.seq_len, first.device_batch_size,
                      cfg.model.preset, attention=hw.attention, loss_chunk=int(hw.loss_chunk), fp8=bool(hw.fp8))
    log(f"time budget: probing training throughput on {setup.device} ({setup.precision}"
        f"{', compiled' if setup.compile else ''})")
    probed: dict = {}

    def measure_and_choose(targets) -> budget.Choice:
        nonlocal depths
        for d in sorted(set(targets) - set(probed)):
            if d > depths[-1]:
                continue
            try:
                probed.update(probe({d: plan_for(d, preset_ratio)}, setup, log=log)[0])
            except DoesNotFit as e:  # this depth and deeper ones are out
                log(f"  probe d{d}: {e}")
                depths = [x for x in depths if x < d]
                if not depths or not probed:
                    raise NanochatError(f"time_budget: {e}; lower hardware.device_batch_size") from None
        return budget.choose(budget_s, plan_for, RateModel(probed), w, depths, preset_ratio,
                             spent_s=time.perf_counter() - t0)

    from nanochat.probe import resolve_peak_flops

    peak = resolve_peak_flops(hardware_of(cfg)).value  # "auto": measured on this GPU (cached), else nominal
    if peak and hw.accelerator != "cpu":  # a GPU profile's peak x expected MFU is a fair first guess
        try:
            guess = budget.choose(budget_s, plan_for, budget.AssumedRates(float(peak) * float(hw.expected_mfu)), w,
                                  depths, preset_ratio).depth
        except NanochatError:
            guess = depths[0]
    else:  # elsewhere the smallest model, measured (seconds), says more than a nominal peak
        guess = measure_and_choose([depths[0]]).depth
    choice = measure_and_choose(budget.probe_depths(guess, depths[-1]))
    for _ in range(2):  # a choice outside the probed depths is measured too
        if min(probed) <= choice.depth <= max(probed):
            break
        choice = measure_and_choose([choice.depth])
    if peak:  # the base run's own estimate then uses the measured rate, so the plan shows one figure
        choice.expected_mfu = min(1.0, max(0.001, RateModel(probed).flops_per_s(choice.depth) / float(peak)))
    log(choice.describe(hardware_of(cfg), first.world_size))
    return choice


def _recipe(stage_cfg: DictConfig) -> dict:
    from nanochat.lit.runner import plan_overrides

    return plan_overrides(stage_cfg)


def apply_to_base(cfg: DictConfig, out: Path) -> dict | None:
    """stage=base time_budget=...: choose, then set the chosen keys on this run's config (as typed overrides
    would); returns the decision for the summary (None without a budget). The decision is kept in the run
    folder's budget.json, so a resumed run (ckpt_path=...) trains what it started with."""
    if cfg.get("time_budget") is None:
        return None
    record = out / BUDGET_FILE
    if cfg.ckpt_path is not None and record.exists():
        decision = json.loads(record.read_text())
        print(f"time budget: resuming the recorded choice ({' '.join(decision['overrides'])})", flush=True)
    else:
        choice = choose_for(cfg, ["base"], {"base": cfg})
        decision = {"time_budget": str(cfg.time_budget), **choice.as_dict(), "overrides": choice.overrides()}
        if not cfg.plan_only:
            atomic_write_bytes(record, json.dumps(decision, indent=2).encode())
    set_overrides(cfg, decision["overrides"])
    return decision


def set_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply `key=value` overrides to a composed config, as the command line would have."""
    for override in overrides:
        key, value = override.split("=", 1)
        OmegaConf.update(cfg, key, None if value == "null" else _number(value), merge=False)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def plan_pipeline(cfg: DictConfig, stages: list[str], common: list[str], extras: dict, folder: Path | None,
                  log=print) -> list[str]:
    """stage=all time_budget=...: the base overrides of the choice (printed with the per-stage table).

    `extras[stage]`: the overrides the pipeline gives that stage (its pipeline.<stage>.* keys, the tokenizer it
    trains with). `folder`: where the decision is kept (budget.json; None = plan_only, nothing written); a run
    started again with the same budget reuses it, so a resumed pipeline trains what it started with.
    """
    from nanochat.config.app import compose

    record = folder / BUDGET_FILE if folder is not None else None
    if record is not None and record.exists():
        decision = json.loads(record.read_text())
        if decision.get("time_budget") == str(cfg.time_budget):
            log(f"time budget: the recorded choice ({' '.join(decision['overrides'])}) from {record}")
            return decision["overrides"]
    planned = [s for s in stages if s in ("tokenizer", "base", "mid", "sft")]
    stage_cfgs = {s: compose("train", [*common, f"stage={s}", "plan_only=true", *extras.get(s, [])])
                  for s in planned if s != "tokenizer"}
    if "base" not in stage_cfgs:
        raise NanochatError("time_budget with stage=all needs the base stage in pipeline.stages (it chooses the "
                            "model base trains)")
    if "rl" in stages:
        log("time budget: the rl stage is not in the estimate (its time depends on generation lengths)")
    choice = choose_for(cfg, planned, stage_cfgs, log=log)
    overrides = choice.overrides()
    if record is not None:
        decision = {"time_budget": str(cfg.time_budget), **choice.as_dict(), "overrides": overrides}
        atomic_write_bytes(record, json.dumps(decision, indent=2).encode())
    return overrides


def last_wins(overrides: list[str]) -> list[str]:
    """Overrides with one value per key, the last one given (the budget's choice after the user's keys)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return [o for i, (o, k) in enumerate(zip(overrides, keys)) if k not in keys[i + 1:]]
