"""The training recipe: every optimizer, schedule and horizon setting, defined once, and the presets that fill them.

The one idea: each setting is one dataclass field here (type, doc, range via `knob`), whose default `None` means
"the preset's value". The config layer inherits these classes into the stage configs (so `stage.matrix_lr=0.03`
is this field), the presets below give complete values, and the Plan carries the resolved objects into the
optimizer and the schedule. A new setting is one field here, its value in the v0 preset, and the code that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, List, Optional

from nanochat.common import NanochatError, knob

REFERENCE_BATCH_TOKENS = 2**19  # 524,288: the total batch all reference learning rates were tuned at


@dataclass
class OptimSettings:
    """MuonAdamW: AdamW for embeddings / lm_head / scalars, Muon for the block matrices."""

    embedding_lr: Optional[float] = knob(None, "AdamW lr of the token and value embeddings (x (d_model/768)^-0.5)", low=0)
    unembedding_lr: Optional[float] = knob(None, "AdamW lr of lm_head (x (d_model/768)^-0.5)", low=0)
    matrix_lr: Optional[float] = knob(None, "Muon lr of the block matrices", low=0)
    scalar_lr: Optional[float] = knob(None, "lr of the x0 residual scalars (per-layer residual scalars: x 0.01)", low=0)
    value_embed_lr_frac: Optional[float] = knob(None, "value embeddings' lr as a fraction of embedding_lr", low=0)
    smear_lr: Optional[float] = knob(None, "fixed AdamW lr of the smear/backout scalars (no width or batch scaling)",
                                     low=0)
    unembedding_betas: Optional[List[float]] = knob(None, "AdamW betas of lm_head", low=0, high=0.999999, length=2)
    embedding_betas: Optional[List[float]] = knob(None, "AdamW betas of the token and value embeddings", low=0,
                                                  high=0.999999, length=2)
    adam_betas: Optional[List[float]] = knob(None, "AdamW betas of the residual and smear/backout scalars", low=0,
                                             high=0.999999, length=2)
    x0_betas: Optional[List[float]] = knob(None, "AdamW betas of the x0 scalars", low=0,
                                        high=0.999999, length=2)
    adam_eps: Optional[float] = knob(None, "AdamW epsilon", low=0)
    adamw_weight_decay: Optional[float] = knob(None, "AdamW weight decay of lm_head and the value embeddings", low=0)
    embedding_weight_decay: Optional[float] = knob(None, "AdamW weight decay of the token embedding", low=0)
    resid_weight_decay: Optional[float] = knob(None, "AdamW weight decay of the per-layer residual scalars", low=0)
    muon_orthogonalizer: Optional[str] = knob(None, "Muon's orthogonalisation",
                                              choices=("newton_schulz", "polar_express"))
    muon_ns_steps: Optional[int] = knob(None, "iterations of the orthogonaliser", low=1)
    muon_norm_factor: Optional[float] = knob(None, "polar_express input divided by this x its Frobenius norm", low=1)
    muon_ortho_dtype: Optional[str] = knob(None, "dtype of the orthogonaliser: always bf16, or the compute dtype "
                                                 "(bf16 on CUDA sm80+, fp32 elsewhere)", choices=("bf16", "compute"))
    muon_row_equilibration: Optional[bool] = knob(None, "MuonEq: scale every row to the mean row norm first")
    muon_renormalize: Optional[bool] = knob(None, "Muon+: set the orthogonalised update's Frobenius norm to "
                                                  "sqrt(min(rows, cols))")
    muon_beta2: Optional[float] = knob(None, "NorMuon-style variance reduction beta2 (0 = off)", low=0, high=0.999999)
    muon_weight_decay: Optional[float] = knob(None, "Muon's cautious weight decay at the reference (d12, 2^19 batch)",
                                              low=0)
    muon_weight_decay_scaling: Optional[str] = knob(
        None, "how the Muon weight decay moves off the reference: depth = x (12/depth)^2; horizon = "
              "x sqrt(batch/2^19) x (d12 tokens / tokens)", choices=("depth", "horizon"))
    muon_weight_decay_schedule: Optional[str] = knob(None, "Muon weight decay over the run",
                                                     choices=("constant", "linear", "cosine"))
    momentum_warmup: Optional[int] = knob(None, "steps over which Muon's momentum rises", low=0)
    momentum_start: Optional[float] = knob(None, "Muon momentum at step 0", low=0, high=1)
    momentum_end: Optional[float] = knob(None, "Muon momentum after the warm-up", low=0, high=1)
    momentum_final: Optional[float] = knob(None, "Muon momentum at the end of the lr warm-down, linearly from "
                                                 "momentum_end (0 = stays at momentum_end)", low=0, high=1)
    lr_multiplier: Optional[float] = knob(None, "every lr x this (mid 1.0, sft 0.02, rl 0.05 of the base lrs)", low=0)
    batch_lr_scaling: Optional[bool] = knob(None, "scale every lr by sqrt(total batch / 2^19)")
    grad_clip: Optional[float] = knob(None, "max gradient norm (0 = no clipping)", low=0)


@dataclass
class ScheduleSettings:
    """Learning-rate schedule: linear warm-up, constant, linear warm-down to final_lr_frac."""

    warmup_steps: Optional[int] = knob(None, "linear warm-up steps", low=0)
    warmup_ratio: Optional[float] = knob(None, "warm-up as a fraction of the steps (> 0 wins over warmup_steps)",
                                         low=0, high=1)
    warmdown_ratio: Optional[float] = knob(None, "fraction of the run that decays linearly at the end", low=0, high=1)
    final_lr_frac: Optional[float] = knob(None, "lr at the end as a fraction of the peak", low=0, high=1)


@dataclass
class HorizonSettings:
    """How many tokens a from-scratch run trains on, when no fixed step count or FLOP budget is given."""

    param_data_ratio: Optional[float] = knob(None, "tokens = this x the scaling parameters", low=0)
    scaling_params: Optional[str] = knob(None, "which parameters the ratio counts",
                                         choices=("total", "matrices+lm_head"))


AUTO = "auto"


@dataclass
class BatchSettings:
    # typed Any: an integer or the word "auto" (checked by check_batch_tokens)
    total_batch_tokens: Any = knob(None, "tokens per optimizer step, all devices (accumulation is derived), or auto "
                                         "= 2^round(log2(2^19 x (N/N_d12)^0.383)), N the scaling params", low=1)


def check_batch_tokens(value, key: str = "stage.total_batch_tokens"):
    """A token batch is a positive integer or "auto" (None = the preset's); anything else is one clear error."""
    if value is None or value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise NanochatError(f"{key}: {value!r} is not allowed; expected a positive integer or auto")


SETTINGS_CLASSES = (OptimSettings, ScheduleSettings, HorizonSettings, BatchSettings)
RECIPE_KEYS = tuple(f.name for cls in SETTINGS_CLASSES for f in fields(cls))


@dataclass(frozen=True)
class Preset:
    """One reference version of nanochat's recipe: complete values for every setting."""

    name: str
    description: str
    vocab_size: int
    model: dict = field(default_factory=dict)  # GPTConfig switches
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    horizon: HorizonSettings = field(default_factory=HorizonSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    # how bits per byte count a token's bytes: "decoded" (UTF-8 length of its decoded text; v0, jan2026) or
    # "raw" (its byte length, as the July-2026 reference's decode_single_token_bytes; 193 of 32,768 tokens differ)
    bpb_token_bytes: str = "decoded"

    def resolve(self, **overrides) -> tuple[OptimSettings, ScheduleSettings, HorizonSettings, BatchSettings]:
        """The preset's settings with every non-None override applied (unknown names raise)."""
        unknown = set(overrides) - set(RECIPE_KEYS)
        if unknown:
            raise NanochatError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}")
        out = []
        for part in (self.optim, self.schedule, self.horizon, self.batch):
            names = {f.name for f in fields(part)}
            out.append(replace(part, **{k: v for k, v in overrides.items() if k in names and v is not None}))
        check_batch_tokens(out[-1].total_batch_tokens, "total_batch_tokens")
        return tuple(out)


V0 = Preset(
    name="v0",
    description="nanochat first release (Oct 2025): full attention, Newton-Schulz Muon, 20 tokens/param",
    vocab_size=65536,
    optim=OptimSettings(
        embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.5, value_embed_lr_frac=1.0,
        smear_lr=0.2, unembedding_betas=[0.8, 0.95], embedding_betas=[0.8, 0.95], adam_betas=[0.8, 0.95],
        x0_betas=[0.96, 0.95], adam_eps=1e-10, adamw_weight_decay=0.0, embedding_weight_decay=0.0,
        resid_weight_decay=0.0, muon_orthogonalizer="newton_schulz", muon_ns_steps=5, muon_norm_factor=1.02, muon_ortho_dtype="bf16",
        muon_row_equilibration=False, muon_renormalize=False, muon_beta2=0.0, muon_weight_decay=0.0,
        muon_weight_decay_scaling="depth", muon_weight_decay_schedule="constant", momentum_warmup=300,
        momentum_start=0.85, momentum_end=0.95, momentum_final=0.0, lr_multiplier=1.0, batch_lr_scaling=False,
        grad_clip=1.0,
    ),
    schedule=ScheduleSettings(warmup_steps=0, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0),
    horizon=HorizonSettings(param_data_ratio=20.0, scaling_params="total"),
    batch=BatchSettings(total_batch_tokens=REFERENCE_BATCH_TOKENS),
)

JAN2026 = Preset(
    name="jan2026",
    description="nanochat commit 348fbb3 (Jan 29 2026, 'time to GPT-2' run 1)",
    vocab_size=32768,
    model=dict(window_pattern="SSSL", short_window_frac=0.5, value_embeds=True, ve_gate_channels=32,
               resid_scalars=True, x0_init=0.1, init="jan2026"),
    optim=replace(V0.optim, embedding_lr=0.3, batch_lr_scaling=True, muon_orthogonalizer="polar_express",
                  muon_beta2=0.95, muon_weight_decay=0.2, muon_weight_decay_schedule="linear",
                  grad_clip=0.0),  # the reference never clips
    schedule=replace(V0.schedule, warmdown_ratio=0.5),
    horizon=HorizonSettings(param_data_ratio=10.5, scaling_params="matrices+lm_head"),
    batch=V0.batch,
)

JUL2026 = Preset(
    name="jul2026",
    description="nanochat commit 92d63d4 (July 2026): smear/backout, MuonEq + Muon+, per-group AdamW, auto batch",
    vocab_size=32768,
    model=dict(window_pattern="SSSL", short_window_frac=0.25, short_window_multiple=128, value_embeds=True,
               ve_gate_channels=12, ve_gate_scale=3.0, resid_scalars=True, smear=True, backout=True, qk_scale=1.2,
               rope_base=100000.0, logit_softcap=15.0, init="jul2026"),
    optim=replace(JAN2026.optim, unembedding_lr=0.008, value_embed_lr_frac=0.5, unembedding_betas=[0.8, 0.96],
                  embedding_betas=[0.8, 0.995], adamw_weight_decay=0.01, embedding_weight_decay=0.001,
                  resid_weight_decay=0.05, muon_norm_factor=1.01, muon_ortho_dtype="compute", muon_row_equilibration=True, muon_renormalize=True,
                  muon_beta2=0.9, muon_weight_decay=0.28, muon_weight_decay_scaling="horizon",
                  muon_weight_decay_schedule="cosine", momentum_warmup=400, momentum_end=0.97, momentum_final=0.90),
    schedule=ScheduleSettings(warmup_steps=40, warmup_ratio=0.0, warmdown_ratio=0.65, final_lr_frac=0.05),
    horizon=HorizonSettings(param_data_ratio=12.0, scaling_params="matrices+lm_head"),
    batch=BatchSettings(total_batch_tokens=AUTO),
    bpb_token_bytes="raw",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (V0, JAN2026, JUL2026)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise NanochatError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
