"""Depth is the one dial: everything else about a run is derived here with pure functions.

- `model_config(depth)`: width, heads and switches for a depth.
- `count_params(cfg)` / `flops_per_token(cfg)`: analytic counts (equal to the model's own numbers).
- `plan(depth, ...)`: horizon, gradient accumulation, learning rates, weight decay, FLOPs and time estimate.
- `PRESETS`: named settings that reproduce a specific nanochat version ("v0", "jan2026"); see docs/presets.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from nanochat.common import NanochatError
from nanochat.gpt import GPTConfig, has_value_embed, window_sizes

REFERENCE_BATCH_TOKENS = 2**19  # 524,288: the total batch all reference learning rates were tuned at
REFERENCE_D_MODEL = 768  # AdamW learning rates were tuned at this width
REFERENCE_WD_DEPTH = 12  # the Jan-2026 Muon weight decay was tuned at d12 and scales as (12 / depth)^2


@dataclass(frozen=True)
class Preset:
    """Everything that distinguishes one reference version of nanochat's pretraining recipe."""

    name: str
    description: str
    vocab_size: int
    model: dict = field(default_factory=dict)  # GPTConfig switches
    # horizon
    param_data_ratio: float = 20.0
    scaling_params: str = "total"  # "total" (all parameters) or "matrices+lm_head"
    total_batch_tokens: int = REFERENCE_BATCH_TOKENS
    # learning rates (before width / batch scaling)
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    batch_lr_scaling: bool = False  # multiply every lr by sqrt(total_batch / 2^19)
    adam_betas: tuple[float, float] = (0.8, 0.95)
    x0_betas: tuple[float, float] = (0.96, 0.95)
    adam_eps: float = 1e-10
    weight_decay: float = 0.0  # AdamW weight decay (embedding / lm_head)
    # Muon
    muon_orthogonalizer: str = "newton_schulz"  # or "polar_express"
    muon_beta2: float | None = None  # NorMuon-style variance reduction when set
    muon_weight_decay: float = 0.0  # cautious weight decay, value at d12 (scaled by (12/depth)^2)
    muon_weight_decay_schedule: str = "constant"  # or "linear" (to zero at the end of training)
    momentum_warmup: int = 300
    momentum_start: float = 0.85
    momentum_end: float = 0.95
    # learning-rate schedule
    warmup_steps: int = 0
    warmup_ratio: float | None = None  # when set, warmup = round(ratio x steps) (wins over warmup_steps)
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    lr_multiplier: float = 1.0  # every lr x this (chat stages: mid 1.0, SFT 0.02, RL 0.05 of the base lrs)


# Keys a user may override on top of a preset (Hydra: stage.<key>, model.<key>); one place lists them.
PRESET_OVERRIDES = ("param_data_ratio", "total_batch_tokens", "embedding_lr", "unembedding_lr", "matrix_lr",
                    "scalar_lr", "adam_betas", "weight_decay", "muon_weight_decay", "warmup_steps", "warmup_ratio",
                    "warmdown_ratio", "final_lr_frac", "grad_clip", "lr_multiplier")


PRESETS: dict[str, Preset] = {
    "v0": Preset(
        name="v0",
        description="nanochat first release (Oct 2025): full attention, Newton-Schulz Muon, 20 tokens/param",
        vocab_size=65536,
    ),
    "jan2026": Preset(
        name="jan2026",
        description="nanochat commit 348fbb3 (Jan 29 2026, 'time to GPT-2' run 1)",
        vocab_size=32768,
        model=dict(
            window_pattern="SSSL",
            short_window_frac=0.5,
            value_embeds=True,
            ve_gate_channels=32,
            resid_scalars=True,
            x0_init=0.1,
            init="jan2026",
        ),
        param_data_ratio=10.5,
        scaling_params="matrices+lm_head",
        embedding_lr=0.3,
        unembedding_lr=0.004,
        matrix_lr=0.02,
        scalar_lr=0.5,
        batch_lr_scaling=True,
        muon_orthogonalizer="polar_express",
        muon_beta2=0.95,
        muon_weight_decay=0.2,
        muon_weight_decay_schedule="linear",
        warmup_steps=0,
        warmdown_ratio=0.5,
        final_lr_frac=0.0,
        grad_clip=0.0,  # the reference never clips
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise NanochatError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


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
        "scalars": 2 * L if cfg.resid_scalars else 0,
    }
    out["total"] = sum(out.values())
    return out


def count_params(cfg: GPTConfig) -> int:
    return count_params_breakdown(cfg)["total"]


def flops_per_token(cfg: GPTConfig) -> float:
    """Same formula as GPT.estimate_flops(): 6 * dense params + 12 * n_head * head_dim * window per layer."""
    c = count_params_breakdown(cfg)
    dense = c["total"] - c["wte"] - c["value_embeds"] - c["scalars"]
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
    grad_accum: int
    num_steps: int
    total_tokens: int
    total_flops: float
    horizon_source: str  # "num_iterations" | "target_flops" | "param_data_ratio"
    # base learning rates (as given) and the effective ones after width/batch scaling
    embedding_lr: float
    unembedding_lr: float
    matrix_lr: float
    scalar_lr: float
    lr_scale: float  # batch scaling applied to every lr (1.0 unless the preset scales with batch)
    adamw_lr_scale: float  # (d_model / 768)^-0.5
    adam_betas: tuple[float, float]
    x0_betas: tuple[float, float]
    adam_eps: float
    weight_decay: float
    muon_orthogonalizer: str
    muon_beta2: float | None
    muon_weight_decay: float  # already scaled for depth
    muon_weight_decay_schedule: str
    momentum_warmup: int
    momentum_start: float
    momentum_end: float
    warmup_steps: int
    warmdown_ratio: float
    final_lr_frac: float
    grad_clip: float
    lr_multiplier: float

    @property
    def tokens_per_param(self) -> float:
        return self.total_tokens / self.n_scaling_params

    @property
    def effective_lrs(self) -> dict[str, float]:
        s = self.lr_scale
        return {
            "embedding": self.embedding_lr * self.adamw_lr_scale * s,
            "unembedding": self.unembedding_lr * self.adamw_lr_scale * s,
            "matrix": self.matrix_lr * s,
            "scalar": self.scalar_lr * s,
        }

    def optimizer_kwargs(self) -> dict:
        """Keyword arguments for nanochat.optim.build_optimizer (it applies the width scaling itself)."""
        return dict(
            embedding_lr=self.embedding_lr,
            unembedding_lr=self.unembedding_lr,
            matrix_lr=self.matrix_lr,
            weight_decay=self.weight_decay,
            d_model=self.model.n_embd,
            scalar_lr=self.scalar_lr,
            adam_betas=self.adam_betas,
            x0_betas=self.x0_betas,
            adam_eps=self.adam_eps,
            muon_orthogonalizer=self.muon_orthogonalizer,
            muon_beta2=self.muon_beta2,
            muon_weight_decay=self.muon_weight_decay,
            muon_weight_decay_schedule=self.muon_weight_decay_schedule,
            lr_scale=self.lr_scale,
        )

    def schedule_kwargs(self) -> dict:
        """Keyword arguments for nanochat.optim.lr_multiplier (besides step and total_steps)."""
        return dict(warmup_steps=self.warmup_steps, warmdown_ratio=self.warmdown_ratio, final_lr_frac=self.final_lr_frac)

    def estimated_hours(self, peak_flops: float, mfu: float = 0.4) -> float:
        """Wall-clock hours at `mfu` of `peak_flops` (per device) on world_size devices."""
        if peak_flops <= 0 or not 0 < mfu <= 1:
            raise NanochatError(f"peak_flops must be positive and mfu in (0, 1], got {peak_flops} and {mfu}")
        return self.total_flops / (peak_flops * self.world_size * mfu) / 3600.0

    def describe(self, peak_flops: float | None = None, mfu: float = 0.4) -> str:
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
        if extras:
            lines.append("  features   " + ", ".join(extras))
        lines += [
            f"  params     {self.n_params:,} total; {self.n_scaling_params:,} for the horizon ({self.scaling_params})",
            f"  FLOPs      {self.flops_per_token:.3e} per token, {self.total_flops:.3e} in total",
            f"  batch      {self.total_batch_tokens:,} tokens = {self.device_batch_size} x {self.seq_len:,} x "
            f"{self.world_size} device(s) x {self.grad_accum} accumulation step(s)",
            f"  horizon    {self.num_steps:,} steps, {self.total_tokens:,} tokens "
            f"({self.tokens_per_param:.2f} tokens/param; from {self.horizon_source})",
            f"  lr         embedding {lrs['embedding']:.6g}, lm_head {lrs['unembedding']:.6g}, "
            f"matrix (Muon) {lrs['matrix']:.6g}" + (f", scalars {lrs['scalar']:.6g}" if m.resid_scalars else ""),
            f"  muon       {self.muon_orthogonalizer}, momentum {self.momentum_start}->{self.momentum_end} over "
            f"{self.momentum_warmup} steps"
            + (f", variance reduction beta2 {self.muon_beta2}" if self.muon_beta2 is not None else "")
            + (
                f", cautious wd {self.muon_weight_decay:.4g} ({self.muon_weight_decay_schedule})"
                if self.muon_weight_decay
                else ""
            ),
            f"  schedule   warmup {self.warmup_steps} steps, warmdown last {self.warmdown_ratio:.0%}, "
            f"final lr x{self.final_lr_frac:g}" + (f", lrs x{self.lr_multiplier:g}" if self.lr_multiplier != 1 else "")
            + (f", grad clip {self.grad_clip:g}" if self.grad_clip else ", no grad clipping"),
        ]
        if peak_flops:
            lines.append(
                f"  time       ~{self.estimated_hours(peak_flops, mfu):.2f} h at {mfu:.0%} MFU of "
                f"{peak_flops:.3g} FLOP/s per device"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["model"] = asdict(self.model)
        return d


def plan(
    depth: int | GPTConfig,
    vocab_size: int | None = None,
    seq_len: int = 2048,
    device_batch_size: int = 32,
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
    Horizon precedence (as in nanochat): num_iterations > 0, else target_flops > 0, else
    param_data_ratio x (scaling params) / total batch (floor).
    `muon_weight_decay` is the d12 value; it is scaled by (12 / depth)^2.
    `overrides`: any of PRESET_OVERRIDES (None = keep the preset's) and GPTConfig switches (window_pattern,
    x0_init, short_window_frac, ...).
    """
    p = get_preset(preset)
    preset_changes = {k: overrides.pop(k) for k in list(overrides) if k in PRESET_OVERRIDES}
    p = replace(p, **{k: (tuple(v) if k == "adam_betas" else v) for k, v in preset_changes.items() if v is not None})
    model_switches = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(model_switches) - {f.name for f in fields(GPTConfig)}
    if unknown:
        raise NanochatError(f"unknown plan option(s): {', '.join(sorted(unknown))}")
    total_batch_tokens, param_data_ratio = p.total_batch_tokens, p.param_data_ratio
    if isinstance(depth, GPTConfig):
        if model_switches:
            raise NanochatError("give model switches either in the GPTConfig or as keywords, not both")
        cfg = depth
        depth, seq_len = cfg.n_layer, cfg.sequence_len
    else:
        vocab_size = p.vocab_size if vocab_size is None else vocab_size
        switches = {**p.model, **model_switches}
        cfg = model_config(depth, vocab_size, seq_len, aspect_ratio, head_dim, n_kv_head, **switches)
    accum = grad_accum_steps(total_batch_tokens, device_batch_size, seq_len, world_size)

    n_params = count_params(cfg)
    n_scaling = scaling_param_count(cfg, p.scaling_params)
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
    warmup = round(p.warmup_ratio * steps) if p.warmup_ratio is not None else p.warmup_steps
    return Plan(
        preset=p.name,
        depth=depth,
        model=cfg,
        n_params=n_params,
        n_scaling_params=n_scaling,
        scaling_params=p.scaling_params,
        flops_per_token=fpt,
        seq_len=seq_len,
        device_batch_size=device_batch_size,
        world_size=world_size,
        total_batch_tokens=total_batch_tokens,
        grad_accum=accum,
        num_steps=steps,
        total_tokens=total_tokens,
        total_flops=fpt * total_tokens,
        horizon_source=source,
        embedding_lr=p.embedding_lr,
        unembedding_lr=p.unembedding_lr,
        matrix_lr=p.matrix_lr,
        scalar_lr=p.scalar_lr,
        lr_scale=(batch_lr_scale(total_batch_tokens) if p.batch_lr_scaling else 1.0) * p.lr_multiplier,
        adamw_lr_scale=adamw_lr_scale(cfg.n_embd),
        adam_betas=p.adam_betas,
        x0_betas=p.x0_betas,
        adam_eps=p.adam_eps,
        weight_decay=p.weight_decay,
        muon_orthogonalizer=p.muon_orthogonalizer,
        muon_beta2=p.muon_beta2,
        muon_weight_decay=muon_weight_decay_for_depth(p.muon_weight_decay, depth),
        muon_weight_decay_schedule=p.muon_weight_decay_schedule,
        momentum_warmup=p.momentum_warmup,
        momentum_start=p.momentum_start,
        momentum_end=p.momentum_end,
        warmup_steps=warmup,
        warmdown_ratio=p.warmdown_ratio,
        final_lr_frac=p.final_lr_frac,
        grad_clip=p.grad_clip,
        lr_multiplier=p.lr_multiplier,
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
    "batch_lr_scale",
    "count_params",
    "count_params_breakdown",
    "flops_per_token",
    "get_preset",
    "grad_accum_steps",
    "model_config",
    "model_dim",
    "muon_weight_decay_for_depth",
    "plan",
    "scaling_param_count",
]
