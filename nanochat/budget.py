"""time_budget=: "I have N hours; give me the best model that finishes in N hours".

The one idea: a run's time is the sum of its stages' work, each converted to seconds by rates measured on this
device (`nanochat.throughput_probe`). For each candidate depth the planner adds up the stages the run will do -
tokenizer, base pretraining at a horizon, mid-training and SFT on their mixtures, the evaluations - and picks the
largest depth whose whole run fits the budget, then the longest base horizon that still fits, within the
preset's sensible range: half to twice its tokens-per-parameter ratio (a bigger model cut short, or a smaller one
trained longer). The run always ends at the budget: when the next depth does not fit even at half the ratio,
the chosen one trains past twice it; when even the smallest model does not fit at half the ratio, it trains for
what the budget allows. Both cases are said in the table. The seconds spent before training (start-up, planning,
the probe) come out of the budget first.

The choice is ordinary overrides (`model.depth`, `stage.param_data_ratio`, `stage.num_iterations=-1`,
`stage.target_flops=null`): the run that follows is the run the same keys typed by hand would give.
Plain Python; the config side (composing each stage, printing, recording) is `nanochat.stages.budget_plan`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

from nanochat.common import NanochatError
from nanochat.hardware import cost_lines, duration

RATIO_RANGE = (0.5, 2.0)  # the base horizon: this x the preset's param_data_ratio
STARTUP_S = {"cpu": 8.0, "gpu": 20.0}  # one stage process: imports, data set-up, export (measured on each kind)
LOOP_OVERHEAD = 0.05  # data loading, logging and callbacks on top of the model's own step time
EVAL_ITEM_TOKENS = 160  # a multiple-choice item's prompt tokens (forward only)
CORE_TASKS, CORE_CHOICES = 22, 4  # the CORE bundle: tasks, continuations scored per item
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([dhms])")


def parse_duration(text) -> float:
    """'10h', '20m', '90s', '1h30m', '2.5h', '1d' (or a bare number of hours) -> seconds."""
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
        seconds = float(s) * 3600.0
    else:
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s or len({u for _, u in parts}) != len(parts):
            raise NanochatError(f"time_budget={text!r} is not a duration; write it like 10h, 20m, 90s, 1h30m or 2.5h")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise NanochatError(f"time_budget={text!r} must be longer than zero")
    return seconds


@dataclass
class Workload:
    """What the run does besides the base horizon, in the units the probe's rates convert into seconds."""

    stages: tuple[str, ...]  # of tokenizer, base, mid, sft, eval
    device_kind: str = "cpu"  # "cpu" or "gpu": process start-up
    running: tuple[str, ...] = ()  # stages whose process is this one (started already: its start-up is spent)
    tokenizer_s: float = 0.0
    base_eval_tokens: int = 0  # per validation pass
    base_eval_every: int = 0  # <= 0: only the final validation
    base_sample_every: int = 0
    base_sample_tokens: int = 0  # generated tokens per sampling round
    mid_tokens: float = 0.0  # training tokens of mid (all epochs)
    mid_batch_tokens: int = 0
    mid_eval_tokens: int = 0  # per validation pass
    mid_eval_every: int = 0
    sft_steps: int = 0
    sft_tokens_per_step: float = 0.0  # padded rows
    eval_forward_tokens: dict = field(default_factory=dict)  # {stage evaluated: forward tokens}
    eval_decode_tokens: dict = field(default_factory=dict)  # {stage evaluated: generated tokens, batch 1}


@dataclass
class StageCost:
    name: str
    seconds: float
    detail: str


@dataclass
class Choice:
    """The planner's answer: a depth, a base horizon and what each stage costs."""

    budget_s: float
    depth: int
    param_data_ratio: float
    preset_ratio: float
    plan: object  # the base scaling.Plan
    stages: list[StageCost]
    probe_s: float = 0.0  # seconds spent before training: start-up, planning, the probe (out of the budget)
    below_range: bool = False  # even the smallest model needed a shorter horizon than the range allows
    beyond_range: bool = False  # the next depth did not fit: this one trains longer than the range, to the budget
    candidates: list[tuple[int, float | None]] = field(default_factory=list)  # (depth, fitting ratio or None)
    expected_mfu: float | None = None  # the probe's measured MFU at this depth (the base run's estimate uses it)

    @property
    def total_s(self) -> float:
        return self.probe_s + sum(s.seconds for s in self.stages)

    def overrides(self, prefix: str = "stage.") -> list[str]:
        """The choice as Hydra overrides; `prefix` "pipeline.base." for stage=all."""
        return [f"model.depth={self.depth}", f"{prefix}param_data_ratio={self.param_data_ratio:g}",
                f"{prefix}num_iterations=-1", f"{prefix}target_flops=null",
                *([f"hardware.expected_mfu={self.expected_mfu:.4g}"] if self.expected_mfu else [])]

    def as_dict(self) -> dict:
        return {"time_budget_s": self.budget_s, "depth": self.depth, "param_data_ratio": self.param_data_ratio,
                "preset_ratio": self.preset_ratio, "below_range": self.below_range,
                "beyond_range": self.beyond_range, "probe_s": self.probe_s,
                "estimated_s": self.total_s, "base_steps": self.plan.num_steps, "expected_mfu": self.expected_mfu,
                "stages": {s.name: s.seconds for s in self.stages},
                "candidates": {f"d{d}": r for d, r in self.candidates}}

    def describe(self, hardware=None, devices: int = 1) -> str:
        """The per-stage table printed before anything trains."""
        lo, hi = (self.preset_ratio * r for r in RATIO_RANGE)
        fits = ", ".join(f"d{d}" + (f" {r:.3g}" if r else " -") for d, r in self.candidates)
        lines = [f"time budget {duration(self.budget_s / 3600)}: depth {self.depth}, base horizon "
                 f"{self.param_data_ratio:g} tokens/param ({self.plan.num_steps:,} steps; preset {self.preset_ratio:g}, "
                 f"range {lo:g}-{hi:g})"]
        if self.below_range:
            lines.append(f"  note      the smallest model does not fit at {lo:g} tokens/param: it trains for what the "
                         f"budget allows")
        if self.beyond_range:
            lines.append(f"  note      d{self.depth + 1} does not fit at {lo:g} tokens/param: d{self.depth} trains past "
                         f"{hi:g}, to the end of the budget")
        if fits:
            lines.append(f"  fitting   tokens/param that fit per depth: {fits}")
        rows = [StageCost("so far", self.probe_s, "start-up, planning and throughput probe")] if self.probe_s else []
        for s in [*rows, *self.stages]:
            lines.append(f"  {s.name:<9} {s.seconds:>9,.0f} s  {s.seconds / 3600:6.2f} h  {s.detail}")
        total_h = self.total_s / 3600
        lines.append(f"  {'total':<9} {self.total_s:>9,.0f} s  {total_h:6.2f} h  of {self.budget_s:,.0f} s "
                     f"({100 * self.total_s / self.budget_s:.0f}% of the budget)")
        if hardware is not None:
            lines += cost_lines(total_h, hardware, devices)
        return "\n".join(lines)


def stage_costs(plan, rates, w: Workload) -> list[StageCost]:
    """Each stage's seconds for a base plan (depth, model and horizon) at the probed rates."""
    d, fpt = plan.depth, plan.flops_per_token
    startup = STARTUP_S.get(w.device_kind, STARTUP_S["gpu"])
    start = startup + rates.warmup_seconds(d)

    def train(tokens: float) -> float:
        return rates.micro_seconds(d, fpt, tokens) * (1 + LOOP_OVERHEAD)

    def forward(tokens: float) -> float:  # evaluation: no backward pass, about a third of a training step
        return rates.micro_seconds(d, fpt, tokens) / 3

    opt = rates.optimizer_seconds(plan.n_params)
    decode = rates.decode_seconds(d)
    out = []
    if "tokenizer" in w.stages:
        out.append(StageCost("tokenizer", w.tokenizer_s, "BPE training on the data"))
    if "base" in w.stages:
        steps = plan.num_steps
        vals = 1 + (steps // w.base_eval_every if w.base_eval_every > 0 else 0)
        samples = steps // w.base_sample_every if w.base_sample_every > 0 else 0
        s = ((start - startup if "base" in w.running else start) + steps * (train(plan.total_batch_tokens) + opt)
             + vals * forward(w.base_eval_tokens)
             + samples * w.base_sample_tokens * decode)
        out.append(StageCost("base", s, f"{steps:,} steps x {plan.total_batch_tokens:,} tokens, {vals} validation(s)"))
    if "mid" in w.stages and w.mid_tokens > 0:
        steps = max(1, math.ceil(w.mid_tokens / w.mid_batch_tokens))
        vals = 1 + (steps // w.mid_eval_every if w.mid_eval_every > 0 else 0)
        s = start + steps * (train(w.mid_batch_tokens) + opt) + vals * forward(w.mid_eval_tokens)
        out.append(StageCost("mid", s, f"{steps:,} steps x {w.mid_batch_tokens:,} tokens of its mixture"))
    if "sft" in w.stages and w.sft_steps > 0:
        s = start + w.sft_steps * (train(w.sft_tokens_per_step) + opt)
        out.append(StageCost("sft", s, f"{w.sft_steps:,} steps x ~{w.sft_tokens_per_step:,.0f} padded tokens"))
    if "eval" in w.stages:
        for stage in w.eval_forward_tokens:
            fwd, gen = w.eval_forward_tokens[stage], w.eval_decode_tokens.get(stage, 0)
            s = startup + forward(fwd) + gen * decode
            out.append(StageCost(f"eval {stage}", s, f"{fwd:,.0f} tokens scored, up to {gen:,.0f} generated"))
    return out


def choose(budget_s: float, plan_for: Callable, rates, workload: Workload, depths, preset_ratio: float,
           spent_s: float = 0.0, iterations: int = 30) -> Choice:
    """The largest depth whose whole run fits `budget_s - spent_s`, then the longest base horizon in range.

    `plan_for(depth, ratio)` is the base scaling.Plan at that tokens-per-parameter ratio; `rates` a
    throughput_probe.RateModel (or anything with its methods).
    """
    available = budget_s - spent_s
    lo, hi = (preset_ratio * r for r in RATIO_RANGE)

    def total(depth, ratio):
        plan = plan_for(depth, ratio)
        return plan, sum(s.seconds for s in stage_costs(plan, rates, workload))

    def longest(depth, low, high):
        """The longest ratio in [low, high] that fits (None if not even `low` does)."""
        if total(depth, high)[1] <= available:
            return high
        if total(depth, low)[1] > available:
            return None
        for _ in range(iterations):
            mid = (low + high) / 2
            low, high = (mid, high) if total(depth, mid)[1] <= available else (low, mid)
        return low

    candidates = []
    best = None
    for depth in sorted(depths):
        try:
            ratio = longest(depth, lo, hi)
        except NanochatError:  # e.g. a horizon under one step at this depth
            ratio = None
        candidates.append((depth, ratio))
        if ratio is not None:
            best = (depth, ratio)
    below = best is None
    if below:  # the smallest model, trained for what the budget allows
        depth = min(depths)
        ratio = None
        for floor in (lo / 2 ** k for k in range(1, 40)):
            try:
                if total(depth, floor)[1] <= available:
                    ratio = longest(depth, floor, lo)
                    break
            except NanochatError:  # under one step: nothing shorter trains
                break
        if ratio is None:
            need = _shortest(depth, lo, total)
            raise NanochatError(f"time_budget {duration(budget_s / 3600)} is too short: the smallest model (d{depth}) "
                                f"needs at least {need} here" + (f" after the {spent_s:.0f} s probe" if spent_s else ""))
        best = (depth, ratio)
    depth, ratio = best
    beyond = False
    if not below and ratio >= hi:  # the next depth does not fit: this one trains for the rest of the budget
        top = hi
        while total(depth, top * 2)[1] <= available and top < hi * 2 ** 20:
            top *= 2
        extended = longest(depth, top, top * 2)
        beyond = extended > hi * 1.001
        ratio = extended
    ratio = _round_down(ratio)
    plan, _ = total(depth, ratio)
    return Choice(budget_s=budget_s, depth=depth, param_data_ratio=ratio, preset_ratio=preset_ratio, plan=plan,
                  stages=stage_costs(plan, rates, workload), probe_s=spent_s, below_range=below, beyond_range=beyond,
                  candidates=[(d, _round_down(r) if r else None) for d, r in candidates])


def _shortest(depth: int, lo: float, total) -> str:
    """The time of the shortest run the smallest model can make (one step or a tiny horizon), for the error."""
    best = math.inf
    for ratio in (lo / 2 ** k for k in range(0, 40)):
        try:
            best = min(best, total(depth, ratio)[1])
        except NanochatError:
            break
    return duration(best / 3600) if math.isfinite(best) else "more"


def _round_down(ratio: float) -> float:
    """Three significant digits, rounded down (the override printed is the horizon trained)."""
    if ratio <= 0:
        return ratio
    scale = 10 ** (2 - math.floor(math.log10(ratio)))
    return math.floor(ratio * scale) / scale


def probe_depths(guess: int, max_depth: int) -> list[int]:
    """Two or three depths to probe around a first guess: below it, at it, above it."""
    guess = min(max(1, guess), max_depth)
    return sorted({max(1, round(guess * 0.6)), guess, min(max_depth, max(guess + 1, round(guess * 1.4)))})


class AssumedRates:
    """Rates from one FLOP/s figure (the profile's peak x expected MFU): the first guess, before any measurement."""

    def __init__(self, flops_per_s: float):
        if flops_per_s <= 0:
            raise NanochatError(f"an assumed rate must be positive, got {flops_per_s}")
        self.rate = float(flops_per_s)

    def micro_seconds(self, depth: int, flops_per_token: float, tokens: float) -> float:
        return tokens * flops_per_token / self.rate

    def optimizer_seconds(self, n_params: int) -> float:
        return 0.0

    def decode_seconds(self, depth: int) -> float:
        return 0.0

    def warmup_seconds(self, depth: int) -> float:
        return 0.0
