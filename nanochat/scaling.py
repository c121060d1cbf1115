"""Depth is the one dial: everything else about a run is derived here with pure functions.

- `model_config(depth)`: width, heads and switches for a depth.
- `count_params(cfg)` / `flops_per_token(cfg)`: analytic counts (equal to the model's own numbers).
- `plan(depth, ...)`: horizon, token batch (given, or `auto` from the model size), gradient accumulation, learning
  rates, weight decay, FLOPs and time estimate.
- The recipe settings and the presets that fill them live in `nanochat.recipe`; see docs/presets.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from nanochat.common import NanochatError
from nanochat.gpt import GPTConfig, has_value_embed, window_sizes
from nanochat.recipe import (AUTO, PRESETS, RECIPE_KEYS, REFERENCE_BATCH_TOKENS, OptimSettings,  # noqa: F401
                             Preset, ScheduleSettings, get_preset)

REFERENCE_D_MODEL = 768  # AdamW learning rates were tuned at this width
REFERENCE_DEPTH = 12  # Muon weight decay and the auto batch were tuned at d12
REFERENCE_WD_DEPTH = REFERENCE_DEPTH  # the Jan-2026 Muon weight decay scales as (12 / depth)^2
BATCH_EXPONENT = 0.383  # optimal batch ~ D^0.383 ("Power Lines", arXiv:2505.13738), the reference's auto batch


PRESET_OVERRIDES = RECIPE_KEYS  # every recipe setting may be overridden (stage.<key>)


# -----------------------------------------------------------------------------------------------------------
# model shape


def model_dim(depth: int, aspect_ratio: int = 64, head_dim: int = 128) -> int:
    """depth * aspect_ratio rounded up to a multiple of head_dim (so head_dim is exact)."""
    if depth <= 0 or aspect_ratio <= 0 or head_dim <= 0:
        raise NanochatError(f"depth ({depth}), aspect_ratio ({aspect_ratio}) and head_dim ({head_dim}) must be positive")
    return -(-depth * aspect_ratio // head_dim) * head_dim


def model_config(
    depth: int,
    vocab_size: int = 65536,
    seq_len: int = 2048,
    aspect_ratio: int = 64,
    head_dim: int = 128,
    n_kv_head: int | None = None,
    **switches,
) -> GPTConfig:
    """GPTConfig for a depth: d_model = 64 * depth rounded up to head_dim, n_head = d_model / head_dim."""
    d = model_dim(depth, aspect_ratio, head_dim)
    n_head = d // head_dim
    unknown = set(switches) - {f.name for f in fields(GPTConfig)}
    if unknown:
        raise NanochatError(f"unknown model switches: {', '.join(sorted(unknown))}")
    return GPTConfig(
        sequence_len=seq_len,
        vocab_size=vocab_size,
        n_layer=depth,
        n_head=n_head,
        n_kv_head=n_head if n_kv_head is None else n_kv_head,
        n_embd=d,
        **switches,
    )


def count_params_breakdown(cfg: GPTConfig) -> dict[str, int]:
    """Analytic parameter counts by role; identical to GPT(cfg).num_scaling_params()."""
    d, hd, L, V = cfg.n_embd, cfg.head_dim, cfg.n_layer, cfg.vocab_size
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_kv_head * hd
    per_layer = d * q_dim + 2 * d * kv_dim + q_dim * d + 8 * d * d
    ve_layers = [i for i in range(L) if has_value_embed(i, L)] if cfg.value_embeds else []
    gates = len(ve_layers) * min(cfg.ve_gate_channels, d) * cfg.n_kv_head
    out = {
        "wte": V * d,
        "value_embeds": len(ve_layers) * V * kv_dim,
        "lm_head": V * d,
        "transformer_matrices": L * per_layer + gates,
        "scalars": (2 * L if cfg.resid_scalars else 0) + smear_param_count(cfg),
    }
    out["total"] = sum(out.values())
    return out


def smear_param_count(cfg: GPTConfig) -> int:
    """The smear gate Linear(24 -> 1) and the smear/backout lambdas: scalars, never Muon matrices."""
    return (25 if cfg.smear else 0) + (1 if cfg.backout else 0)


def count_params(cfg: GPTConfig) -> int:
    return count_params_breakdown(cfg)["total"]


def flops_per_token(cfg: GPTConfig) -> float:
    """Same formula as GPT.estimate_flops(): 6 * matmul weights + 12 * n_head * head_dim * window per layer."""
    c = count_params_breakdown(cfg)
    smear_gate = 24 if cfg.smear else 0  # a matmul weight, though counted with the scalars
    dense = c["total"] - c["wte"] - c["value_embeds"] - c["scalars"] + smear_gate
    attn = sum(12 * cfg.n_head * cfg.head_dim * min(w, cfg.sequence_len) for w in window_sizes(cfg))
    return float(6 * dense + attn)


def scaling_param_count(cfg: GPTConfig, which: str = "total") -> int:
    c = count_params_breakdown(cfg)
    if which == "total":
        return c["total"]
    if which == "matrices+lm_head":
        return c["transformer_matrices"] + c["lm_head"]
    raise NanochatError(f"unknown scaling-params definition {which!r} (use 'total' or 'matrices+lm_head')")


def adamw_lr_scale(d_model: int) -> float:
    """AdamW learning rates were tuned at d_model 768 and scale as (d_model / 768)^-0.5."""
    return (d_model / REFERENCE_D_MODEL) ** -0.5


def batch_lr_scale(total_batch_tokens: int) -> float:
    """Late nanochat scales every learning rate by sqrt(total batch / 2^19)."""
    return (total_batch_tokens / REFERENCE_BATCH_TOKENS) ** 0.5


def muon_weight_decay_for_depth(weight_decay_d12: float, depth: int) -> float:
    """Jan-2026: the cautious Muon weight decay tuned at d12 scales as (12 / depth)^2."""
    return weight_decay_d12 * (REFERENCE_WD_DEPTH / depth) ** 2


def muon_weight_decay_for_horizon(weight_decay_ref: float, total_batch_tokens: int, horizon_ratio: float) -> float:
    """July 2026: keep B / (lr wd D) constant with lr ~ sqrt(B): wd = wd_ref x sqrt(B / 2^19) x (D_ref / D), where
    horizon_ratio = D / D_ref (the run's token horizon over the d12 one)."""
    return weight_decay_ref * batch_lr_scale(total_batch_tokens) / horizon_ratio


def auto_batch_tokens(horizon_ratio: float) -> int:
    """The reference's automatic token batch: 2^round(log2(2^19 x (D / D_ref)^0.383)), D / D_ref = horizon_ratio."""
    if horizon_ratio <= 0:
        raise NanochatError(f"the auto batch needs a positive horizon ratio, got {horizon_ratio}")
    return 2 ** round(math.log2(REFERENCE_BATCH_TOKENS * horizon_ratio**BATCH_EXPONENT))


def reference_config(cfg: GPTConfig, aspect_ratio: int = 64) -> GPTConfig:
    """The d12 model the reference tunes at, built as the reference builds it: the same vocabulary, context, head
    width and switches, d_model = 12 x aspect_ratio rounded up to the head width, n_kv_head = n_head."""
    d = model_dim(REFERENCE_DEPTH, aspect_ratio, cfg.head_dim)
    n_head = d // cfg.head_dim
    return replace(cfg, n_layer=REFERENCE_DEPTH, n_embd=d, n_head=n_head, n_kv_head=n_head)


def horizon_ratio(cfg: GPTConfig, scaling_params: str, param_data_ratio: float | None, aspect_ratio: int = 64,
                  ) -> tuple[float, int, float]:
    """(D / D_ref, D, D_ref): the ratio-derived token horizon of this model over that of the d12 reference.

    D = int(ratio x N) and D_ref = ratio x N_d12 as the reference computes them (also when the run's step count
    is given another way); without a positive ratio, N / N_d12 (the ratio cancels)."""
    n = scaling_param_count(cfg, scaling_params)
    n_ref = scaling_param_count(reference_config(cfg, aspect_ratio), scaling_params)
    if param_data_ratio and param_data_ratio > 0:
        d, d_ref = int(param_data_ratio * n), param_data_ratio * n_ref
    else:
        d, d_ref = n, float(n_ref)
    return d / d_ref, d, d_ref


def batch_candidates(total_batch_tokens: int, seq_len: int, world_size: int) -> list[int]:
    """Power-of-two device batches that divide the token batch exactly, largest (no accumulation) first."""
    per_seq = seq_len * world_size
    if total_batch_tokens % per_seq:
        raise NanochatError(f"total_batch_tokens {total_batch_tokens:,} is not a multiple of seq_len x world_size "
                            f"= {per_seq:,}: no device batch can keep it")
    rows = total_batch_tokens // per_seq
    out, b = [], 1
    while b <= rows and rows % b == 0:
        out.append(b)
        b *= 2
    return out[::-1]


# -----------------------------------------------------------------------------------------------------------
# gradient accumulation


def grad_accum_steps(total_batch_tokens: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """total_batch_tokens / (device_batch_size * seq_len * world_size), or a NanochatError that says how to fix it."""
    for name, value in (
        ("total_batch_tokens", total_batch_tokens),
        ("device_batch_size", device_batch_size),
        ("seq_len", seq_len),
        ("world_size", world_size),
    ):
        if not isinstance(value, int) or value <= 0:
            raise NanochatError(f"{name} must be a positive integer, got {value!r}")
    per_micro = device_batch_size * seq_len * world_size
    if total_batch_tokens % per_micro == 0:
        return total_batch_tokens // per_micro
    per_seq = seq_len * world_size
    fitting = [b for b in range(1, device_batch_size + 1) if total_batch_tokens % (b * per_seq) == 0]
    lower = (total_batch_tokens // per_micro) * per_micro
    upper = lower + per_micro
    options = []
    if fitting:
        options.append(f"device_batch_size={fitting[-1]} (the largest value <= {device_batch_size} that divides)")
    options.append(
        "total_batch_tokens="
        + (f"{lower:,} or {upper:,}" if lower > 0 else f"{upper:,}")
        + f" (a multiple of {per_micro:,})"
    )
    raise NanochatError(
        f"total batch of {total_batch_tokens:,} tokens is not divisible by the tokens per micro-step: "
        f"device_batch_size {device_batch_size} x seq_len {seq_len:,} x world_size {world_size} = {per_micro:,} "
        f"({total_batch_tokens:,} / {per_micro:,} = {total_batch_tokens / per_micro:.3f}). "
        f"Fix: set {' or '.join(options)}."
    )


# -----------------------------------------------------------------------------------------------------------
# the run plan


@dataclass
class Plan:
    """A whole run, derived: the model, the batch and horizon, and the resolved optimizer and schedule settings."""

    preset: str
    depth: int
    model: GPTConfig
    n_params: int
    n_scaling_params: int
    scaling_params: str
    flops_per_token: float
    seq_len: int
    device_batch_size: int
    world_size: int
    total_batch_tokens: int
    batch_source: str  # how the token batch was chosen (given, or the auto rule with its numbers)
    grad_accum: int
    num_steps: int
    total_tokens: int
    total_flops: float
    horizon_source: str  # "num_iterations" | "target_flops" | "param_data_ratio"
    lr_scale: float  # batch scaling x lr_multiplier, applied to every lr
    adamw_lr_scale: float  # (d_model / 768)^-0.5
    optim: OptimSettings  # every field set; muon_weight_decay already scaled (depth or horizon rule)
    schedule: ScheduleSettings  # every field set; warmup_steps already derived from warmup_ratio

    @property
    def grad_clip(self) -> float:
        return self.optim.grad_clip

    @property
    def tokens_per_param(self) -> float:
        return self.total_tokens / self.n_scaling_params

    @property
    def effective_lrs(self) -> dict[str, float]:
        o, s = self.optim, self.lr_scale
        return {
            "embedding": o.embedding_lr * self.adamw_lr_scale * s,
            "unembedding": o.unembedding_lr * self.adamw_lr_scale * s,
            "matrix": o.matrix_lr * s,
            "scalar": o.scalar_lr * s,
        }

    def optimizer_kwargs(self) -> dict:
        """Arguments of nanochat.optim.build_optimizer (it applies the width scaling itself)."""
        return dict(settings=self.optim, d_model=self.model.n_embd, lr_scale=self.lr_scale)

    def momentum_kwargs(self) -> dict:
        """Keyword arguments for nanochat.optim.update_muon_groups (besides optimizer, step and total_steps)."""
        o = self.optim
        return dict(warmup=o.momentum_warmup, start=o.momentum_start, end=o.momentum_end, final=o.momentum_final,
                    warmdown_ratio=self.schedule.warmdown_ratio)

    def schedule_kwargs(self) -> dict:
        """Keyword arguments for nanochat.optim.lr_multiplier (besides step and total_steps)."""
        sc = self.schedule
        return dict(warmup_steps=sc.warmup_steps, warmdown_ratio=sc.warmdown_ratio, final_lr_frac=sc.final_lr_frac)

    def estimated_hours(self, peak_flops: float, mfu: float = 0.4) -> float:
        """Wall-clock hours at `mfu` of `peak_flops` (per device) on world_size devices."""
        if peak_flops <= 0 or not 0 < mfu <= 1:
            raise NanochatError(f"peak_flops must be positive and mfu in (0, 1], got {peak_flops} and {mfu}")
        return self.total_flops / (peak_flops * self.world_size * mfu) / 3600.0

    def describe(self) -> str:
        """The plan in a few lines; the time, energy and cost estimate is nanochat.hardware.estimate_run's."""
        m = self.model
        lrs = self.effective_lrs
        lines = [
            f"plan: preset {self.preset}, depth {self.depth}",
            f"  model      d_model {m.n_embd}, {m.n_layer} layers, {m.n_head} heads x {m.head_dim} "
            f"(kv heads {m.n_kv_head}), vocab {m.vocab_size:,}, context {m.sequence_len:,}",
        ]
        extras = []
        if m.window_pattern:
            extras.append(f"windows {m.window_pattern} (short = {m.short_window_frac:g} x context)")
        if m.value_embeds:
            extras.append("value embeddings")
        if m.resid_scalars:
            extras.append("residual scalars")
        extras += [name for name in ("smear", "backout") if getattr(m, name)]
        if extras:
            lines.append("  features   " + ", ".join(extras))
        lines += [
            f"  params     {self.n_params:,} total; {self.n_scaling_params:,} for the horizon ({self.scaling_params})",
            f"  FLOPs      {self.flops_per_token:.3e} per token, {self.total_flops:.3e} in total",
            f"  batch      {self.total_batch_tokens:,} tokens = {self.device_batch_size} x {self.seq_len:,} x "
            f"{self.world_size} device(s) x {self.grad_accum} accumulation step(s); {self.batch_source}",
            f"  horizon    {self.num_steps:,} steps, {self.total_tokens:,} tokens "
            f"({self.tokens_per_param:.2f} tokens/param; from {self.horizon_source})",
            f"  lr         embedding {lrs['embedding']:.6g}, lm_head {lrs['unembedding']:.6g}, "
            f"matrix (Muon) {lrs['matrix']:.6g}" + (f", scalars {lrs['scalar']:.6g}" if m.resid_scalars else ""),
            f"  muon       {self.optim.muon_orthogonalizer}"
            + (" with MuonEq" if self.optim.muon_row_equilibration else "")
            + (" and Muon+" if self.optim.muon_renormalize else "")
            + f", momentum {self.optim.momentum_start}->{self.optim.momentum_end} over {self.optim.momentum_warmup} steps"
            + (f" ->{self.optim.momentum_final} over the warm-down" if self.optim.momentum_final else "")
            + (f", variance reduction beta2 {self.optim.muon_beta2}" if self.optim.muon_beta2 else "")
            + (
                f", cautious wd {self.optim.muon_weight_decay:.4g} ({self.optim.muon_weight_decay_schedule}, "
                f"{self.optim.muon_weight_decay_scaling}-scaled)"
                if self.optim.muon_weight_decay
                else ""
            ),
            f"  schedule   warmup {self.schedule.warmup_steps} steps, warmdown last {self.schedule.warmdown_ratio:.0%}, "
            f"final lr x{self.schedule.final_lr_frac:g}" + (f", lrs x{self.optim.lr_multiplier:g}" if self.optim.lr_multiplier != 1 else "")
            + (f", grad clip {self.grad_clip:g}" if self.grad_clip else ", no grad clipping"),
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["model"] = asdict(self.model)
        return d


def plan(
    depth: int | GPTConfig,
    vocab_size: int | None = None,
    seq_len: int = 2048,
    device_batch_size: int | str = 32,
    world_size: int = 1,
    num_iterations: int = -1,
    target_flops: float = -1.0,
    *,
    preset: str = "v0",
    aspect_ratio: int = 64,
    head_dim: int = 128,
    n_kv_head: int | None = None,
    **overrides,
) -> Plan:
    """Derive a whole pretraining run from the depth. Arguments left as None come from the preset.

    `depth` may also be a ready GPTConfig (e.g. from model_config); it is then used as is (its vocab size and
    sequence length win, the preset's model switches are not applied).
    Token batch: `total_batch_tokens` as given, or "auto" = 2^round(log2(2^19 x (D/D_ref)^0.383)) with D/D_ref the
    horizon of this model over that of the d12 reference (see horizon_ratio). `device_batch_size` "auto" = the
    largest power of two that divides the batch (no accumulation; the memory fit lowers it).
    Horizon precedence (as in nanochat): num_iterations > 0, else target_flops > 0, else
    param_data_ratio x (scaling params) / total batch (floor).
    `muon_weight_decay` is the reference value: x (12 / depth)^2 ("depth" scaling), or x sqrt(B / 2^19) x D_ref / D
    ("horizon" scaling).
    `overrides`: any recipe setting (nanochat.recipe; None = keep the preset's) and GPTConfig switches (window_pattern,
    x0_init, short_window_frac, ...).
    """
    p = get_preset(preset)
    recipe = {k: overrides.pop(k) for k in list(overrides) if k in RECIPE_KEYS}
    optim, schedule, horizon, batch = p.resolve(**recipe)
    model_switches = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(model_switches) - {f.name for f in fields(GPTConfig)}
    if unknown:
        raise NanochatError(f"unknown plan option(s): {', '.join(sorted(unknown))}")
    param_data_ratio = horizon.param_data_ratio
    if isinstance(depth, GPTConfig):
        if model_switches:
            raise NanochatError("give model switches either in the GPTConfig or as keywords, not both")
        cfg = depth
        depth, seq_len = cfg.n_layer, cfg.sequence_len
    else:
        vocab_size = p.vocab_size if vocab_size is None else vocab_size
        switches = {**p.model, **model_switches}
        cfg = model_config(depth, vocab_size, seq_len, aspect_ratio, head_dim, n_kv_head, **switches)

    n_params = count_params(cfg)
    n_scaling = scaling_param_count(cfg, horizon.scaling_params)
    ratio_to_ref, d_tokens, d_ref = horizon_ratio(cfg, horizon.scaling_params, param_data_ratio, aspect_ratio)
    if batch.total_batch_tokens == AUTO:
        total_batch_tokens = auto_batch_tokens(ratio_to_ref)
        batch_source = (f"auto: 2^round(log2(2^19 x (D/D_ref)^{BATCH_EXPONENT})) = "
                        f"2^{int(math.log2(total_batch_tokens))}, D/D_ref = {d_tokens:.4g}/{d_ref:.4g} tokens = "
                        f"{ratio_to_ref:.4g} (this model's horizon over the d{REFERENCE_DEPTH} reference's)")
    else:
        total_batch_tokens = int(batch.total_batch_tokens)
        batch_source = "fixed (total_batch_tokens=auto derives it from the model size)"
    if device_batch_size == AUTO:
        device_batch_size = batch_candidates(total_batch_tokens, seq_len, world_size)[0]
    accum = grad_accum_steps(total_batch_tokens, device_batch_size, seq_len, world_size)

    fpt = flops_per_token(cfg)
    if num_iterations is not None and num_iterations > 0:
        steps, source = int(num_iterations), "num_iterations"
    elif target_flops is not None and target_flops > 0:
        steps, source = round(target_flops / (fpt * total_batch_tokens)), "target_flops"
    elif param_data_ratio is not None and param_data_ratio > 0:
        steps, source = int(param_data_ratio * n_scaling) // total_batch_tokens, "param_data_ratio"
    else:
        raise NanochatError("no training horizon: give num_iterations > 0, target_flops > 0 or param_data_ratio > 0")
    if steps <= 0:
        raise NanochatError(
            f"the horizon comes out at {steps} steps (from {source}); the total batch of "
            f"{total_batch_tokens:,} tokens is too large for it - lower total_batch_tokens or raise the horizon"
        )
    total_tokens = steps * total_batch_tokens
    if schedule.warmup_ratio:
        schedule = replace(schedule, warmup_steps=round(schedule.warmup_ratio * steps))
    if optim.muon_weight_decay_scaling == "horizon":
        wd = muon_weight_decay_for_horizon(optim.muon_weight_decay, total_batch_tokens, ratio_to_ref)
    else:
        wd = muon_weight_decay_for_depth(optim.muon_weight_decay, depth)
    optim = replace(optim, muon_weight_decay=wd)
    return Plan(
        preset=p.name,
        depth=depth,
        model=cfg,
        n_params=n_params,
        n_scaling_params=n_scaling,
        scaling_params=horizon.scaling_params,
        flops_per_token=fpt,
        seq_len=seq_len,
        device_batch_size=device_batch_size,
        world_size=world_size,
        total_batch_tokens=total_batch_tokens,
        batch_source=batch_source,
        grad_accum=accum,
        num_steps=steps,
        total_tokens=total_tokens,
        total_flops=fpt * total_tokens,
        horizon_source=source,
        lr_scale=(batch_lr_scale(total_batch_tokens) if optim.batch_lr_scaling else 1.0) * optim.lr_multiplier,
        adamw_lr_scale=adamw_lr_scale(cfg.n_embd),
        optim=optim,
        schedule=schedule,
    )


def with_switches(cfg: GPTConfig, **switches) -> GPTConfig:
    """A copy of cfg with some fields replaced (validated again)."""
    return replace(cfg, **switches)


__all__ = [
    "PRESETS",
    "PRESET_OVERRIDES",
    "Plan",
    "Preset",
    "adamw_lr_scale",
    "auto_batch_tokens",
    "batch_candidates",
    "batch_lr_scale",
    "count_params",
    "count_params_breakdown",
    "flops_per_token",
    "get_preset",
    "grad_accum_steps",
    "horizon_ratio",
    "model_config",
    "model_dim",
    "muon_weight_decay_for_depth",
    "muon_weight_decay_for_horizon",
    "plan",
    "reference_config",
    "scaling_param_count",
]
