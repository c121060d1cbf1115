"""Typed configuration: every key a user may set, with its type and range, checked before any work starts.

Hydra composes untyped YAML, so `model.depth=four` would otherwise surface as a TypeError deep in the scaling
code. `validate_config(cfg)` walks this table once (interpolations resolved) and turns the first wrong type or
out-of-range value into one clear line naming the key. Keys missing from a group are not an error here (each
stage config carries only its own keys); unknown keys are rejected by Hydra itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanochat.common import NanochatError


@dataclass(frozen=True)
class Spec:
    kind: type | tuple  # int, float, bool, str, list, or a tuple of allowed string values
    low: float | None = None  # inclusive bounds
    high: float | None = None
    nullable: bool = True
    length: int | None = None  # lists of numbers: exact length

    def check(self, key: str, value: Any) -> None:
        if value is None:
            if not self.nullable:
                raise NanochatError(f"{key} must be set (got null)")
            return
        kind = self.kind
        if isinstance(kind, tuple):
            if value not in kind:
                raise NanochatError(f"{key} must be one of {', '.join(map(str, kind))} (got {value!r})")
            return
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is list:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
            if ok and self.length is not None and len(value) != self.length:
                raise NanochatError(f"{key} must be a list of {self.length} numbers (got {list(value)})")
        else:
            ok = isinstance(value, kind)
        if not ok:
            names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                     list: "a list of numbers"}
            raise NanochatError(f"{key} must be {names.get(kind, kind.__name__)} (got {value!r})")
        values = value if kind is list else [value]
        for v in values:
            if self.low is not None and v < self.low or self.high is not None and v > self.high:
                bounds = (f">= {self.low:g}" if self.high is None else f"<= {self.high:g}" if self.low is None
                          else f"between {self.low:g} and {self.high:g}")
                raise NanochatError(f"{key} must be {bounds} (got {value!r})")


POS_INT, NONNEG_INT, ANY_INT = Spec(int, 1), Spec(int, 0), Spec(int)
POS_FLOAT, NONNEG_FLOAT, FRACTION = Spec(float, 1e-30), Spec(float, 0.0), Spec(float, 0.0, 1.0)
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true", "transformer-engine")

SCHEMA: dict[str, Spec] = {
    # top level
    "seed": Spec(int, 0, nullable=False),
    "plan_only": Spec(bool, nullable=False),
    "run_name": Spec(str, nullable=False),
    # model
    "model.preset": Spec(str, nullable=False),
    "model.depth": Spec(int, 1, nullable=False),
    "model.aspect_ratio": Spec(int, 1, nullable=False),
    "model.head_dim": Spec(int, 2, nullable=False),
    "model.sequence_len": Spec(int, 2, nullable=False),
    "model.n_kv_head": POS_INT,
    "model.rope_base": POS_FLOAT,
    "model.logit_softcap": NONNEG_FLOAT,
    "model.window_pattern": Spec(str),
    "model.short_window_frac": Spec(float, 1e-9, 1.0),
    "model.value_embeds": Spec(bool),
    "model.resid_scalars": Spec(bool),
    "model.x0_init": Spec(float),
    # hardware
    "hardware.accelerator": Spec(("cpu", "gpu", "cuda", "mps", "auto"), nullable=False),
    "hardware.num_nodes": Spec(int, 1, nullable=False),
    "hardware.precision": Spec(PRECISIONS, nullable=False),
    "hardware.compile": Spec(bool, nullable=False),
    "hardware.peak_flops": NONNEG_FLOAT,
    "hardware.depth": POS_INT,
    "hardware.head_dim": POS_INT,
    "hardware.seq_len": POS_INT,
    "hardware.device_batch_size": Spec(int, 1, nullable=False),
    "hardware.total_batch_tokens": POS_INT,
    "hardware.num_iterations": ANY_INT,
    "hardware.eval_tokens": POS_INT,
    "hardware.num_threads": POS_INT,
    # training stages
    "stage.num_iterations": ANY_INT,
    "stage.target_flops": Spec(float),
    "stage.param_data_ratio": POS_FLOAT,
    "stage.total_batch_tokens": POS_INT,
    "stage.embedding_lr": NONNEG_FLOAT,
    "stage.unembedding_lr": NONNEG_FLOAT,
    "stage.matrix_lr": NONNEG_FLOAT,
    "stage.scalar_lr": NONNEG_FLOAT,
    "stage.adam_betas": Spec(list, 0.0, 0.999999, length=2),
    "stage.adamw_weight_decay": NONNEG_FLOAT,
    "stage.muon_weight_decay": NONNEG_FLOAT,
    "stage.lr_multiplier": NONNEG_FLOAT,
    "stage.grad_clip": NONNEG_FLOAT,
    "stage.warmup_steps": NONNEG_INT,
    "stage.warmup_ratio": FRACTION,
    "stage.warmdown_ratio": FRACTION,
    "stage.final_lr_frac": FRACTION,
    "stage.eval_every": ANY_INT,
    "stage.eval_tokens": POS_INT,
    "stage.sample_every": ANY_INT,
    "stage.save_every": POS_INT,
    "stage.sample_tokens": NONNEG_INT,
    "stage.examples_per_step": POS_INT,
    "stage.num_epochs": POS_FLOAT,
    "stage.mask_prompts": Spec(bool),
    "stage.device_batch_size": POS_INT,
    "stage.eval_batches": POS_INT,
    "stage.mixture": Spec(str),
    "stage.rl": Spec(bool),
    "stage.evaluate": Spec(bool),
    # tokenizer stage
    "stage.vocab_size": Spec(int, 265),
    "stage.max_chars": POS_INT,
    "stage.doc_cap": POS_INT,
    "stage.eval_docs": POS_INT,
    # data
    "data.num_shards": POS_INT,
    "data.download": Spec(bool),
    "data.download_workers": POS_INT,
    "data.val_fraction": Spec(float, 0.0, 1.0),
    "data.loader.buffer_docs": POS_INT,
    "data.loader.tokenizer_threads": POS_INT,
    "data.loader.packing": Spec(("bestfit", "concat", "cropfit")),
}

# renamed keys: a clear pointer instead of Hydra's "key not in struct"
RENAMED = {
    "stage.weight_decay": "stage.adamw_weight_decay (AdamW: embeddings, lm_head) or stage.muon_weight_decay "
                          "(Muon: the block matrices)",
}


def _select(cfg, key: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return True, OmegaConf.select(cfg, key, throw_on_missing=True, throw_on_resolution_failure=True)
    except OmegaConfBaseException as e:
        raise NanochatError(f"{key}: {str(e).splitlines()[0]}") from None


def validate_config(cfg) -> None:
    """Raise a NanochatError naming the first key whose value has the wrong type or is out of range."""
    from omegaconf import OmegaConf

    for key, spec in SCHEMA.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or not OmegaConf.is_dict(node) or leaf not in node:
            continue
        _, value = _select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        spec.check(key, value)
    depth = OmegaConf.select(cfg, "model.depth")
    if isinstance(depth, int) and OmegaConf.select(cfg, "model.preset") is not None:
        from nanochat.scaling import get_preset

        get_preset(cfg.model.preset)
