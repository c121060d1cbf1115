"""What the chat stages (mid, sft) share: finding the model they start from and building their mixtures.

Each stage finds its input without arguments - `stage=mid` the latest base model, `stage=sft` the latest mid
model (or base when there is none), `stage=rl` the latest sft model - and trains with the tokenizer that model
was trained with. `stage.init_from=path` overrides. A mixture (`mixture=`) is a name in nanochat/mixtures/ or a
path to a YAML file of the same shape; `stage.task_options` (e.g. `stage.task_options.gsm8k.local_path=/data/gsm8k`)
adds to its task options.

A mixture may also carry a `recipe` for one stage (sft2026 does): the stages its input model comes from, its row
layout, whether the batch is the input model's run's, and stage settings. Choosing the mixture chooses the
recipe; a stage key the run sets itself (on the command line, or to anything but the stage's stock value) wins.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nanochat.common import NanochatError


def input_model(cfg: DictConfig, out: Path) -> Path:
    """The model folder (or .ckpt) this stage starts from: stage.init_from, else the newest model of the stages
    it starts from (`starts_from`); a resumed run keeps the input it started with (the runner records it)."""
    from nanochat.checkpoint import resolve_model_path
    from nanochat.layout import RunFolder

    record = RunFolder(out).started_from
    if cfg.ckpt_path is not None and record.exists():
        started_from = Path(record.read_text().strip())
        if started_from.exists():
            return started_from
    return resolve_model_path(cfg.stage.init_from, prefer=starts_from(cfg))


def starts_from(cfg: DictConfig) -> tuple[str, ...]:
    """The stages whose newest model this stage starts from: its mixture's recipe's, else layout.STAGES'."""
    from nanochat.layout import STAGES

    recipe = mixture_recipe(cfg) if cfg.stage.name in CHAT_STAGES else {}
    return tuple(recipe.get("starts_from") or STAGES[cfg.stage.name].starts_from)


def stage_inputs(stage: str, mixture: str | None) -> tuple[str, ...]:
    """`starts_from` for a stage and a `mixture=` value, without a composed config (e.g. stage=all chaining
    sft after base when pipeline.sft.mixture=sft2026)."""
    return starts_from(OmegaConf.create({"mixture": mixture, "stage": {"name": stage, "task_options": {}}}))


def load_input(path: Path):
    """(GPTConfig, tokenizer) of the input model, checking the tokenizer matches the weights."""
    from nanochat.checkpoint import load_model

    model, tokenizer, meta = load_model(path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise NanochatError(f"the tokenizer beside {path} has {tokenizer.vocab_size:,} tokens but the model expects "
                            f"{model.config.vocab_size:,}; it is not the tokenizer this model was trained with")
    return model.config, tokenizer, meta


MIXTURES_DIR = Path(__file__).resolve().parent.parent / "mixtures"


def mixture_name(cfg: DictConfig) -> str:
    """The `mixture=` key, else the stage's own offline mixture (offline_mid, offline_sft)."""
    return cfg.mixture or f"offline_{cfg.stage.name}"


def mixture_config(cfg: DictConfig) -> dict:
    """The mixture mapping (seed, task_options, train, val) with the stage's task options merged in."""
    name = mixture_name(cfg)
    is_file = str(name).endswith((".yaml", ".yml"))
    path = Path(name) if is_file else MIXTURES_DIR / f"{name}.yaml"
    if not path.exists():
        if is_file:
            raise NanochatError(f"mixture file not found: {path}")
        known = ", ".join(sorted(p.stem for p in MIXTURES_DIR.glob("*.yaml")))
        raise NanochatError(f"unknown mixture {name!r}; choose one of: {known}, or give a path to a YAML file")
    mix = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    extra = OmegaConf.to_container(cfg.stage.task_options, resolve=True) if cfg.stage.get("task_options") else {}
    options = dict(mix.get("task_options") or {})
    for task, opts in (extra or {}).items():
        given = {k: v for k, v in (opts or {}).items() if v is not None}
        if given:
            options[task] = {**(options.get(task) or {}), **given}
    mix["task_options"] = options
    return mix


CHAT_STAGES = ("mid", "sft")
RECIPE_FIELDS = {"stage": "the stage it is for", "starts_from": "stages of the input model, in order of preference",
                 "layout": "rows: pad (one conversation each) or bestfit (packed)",
                 "inherit_run": "model.preset, total batch tokens and rows per device of the input model's run",
                 "settings": "stage keys"}
RECIPE_LAYOUTS = ("pad", "bestfit")


def mixture_recipe(cfg: DictConfig) -> dict:
    """The mixture's `recipe` when it is for this stage, checked (else {}: the stage's own settings)."""
    from nanochat.config.schema import STAGE_SCHEMAS
    from nanochat.layout import MODEL_STAGES

    recipe = mixture_config(cfg).get("recipe")
    if recipe is None:
        return {}
    where = f"mixture {mixture_name(cfg)!r}: recipe"
    if not isinstance(recipe, dict):
        raise NanochatError(f"{where} must be a mapping of {', '.join(RECIPE_FIELDS)}")
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
    if unknown:
        raise NanochatError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(RECIPE_FIELDS)}")
    if recipe.get("stage") not in CHAT_STAGES:
        raise NanochatError(f"{where}: stage must be one of {', '.join(CHAT_STAGES)}, got {recipe.get('stage')!r}")
    if recipe["stage"] != cfg.stage.name:
        return {}
    bad = [s for s in recipe.get("starts_from") or () if s not in MODEL_STAGES]
    if bad:
        raise NanochatError(f"{where}: starts_from names no model stage: {', '.join(map(str, bad))}")
    if recipe.get("layout", "pad") not in RECIPE_LAYOUTS:
        raise NanochatError(f"{where}: layout must be one of {', '.join(RECIPE_LAYOUTS)}, got {recipe['layout']!r}")
    fields = set(STAGE_SCHEMAS[recipe["stage"]].__dataclass_fields__) - {"name", "run_name", "init_from"}
    unknown = sorted(set(recipe.get("settings") or {}) - fields)
    if unknown:
        raise NanochatError(f"{where}: settings has no stage key(s) {', '.join(unknown)}")
    return recipe


def stock_stage_values(name: str) -> dict:
    """A stage's keys as `stage=<name>` alone gives them: the schema's defaults under conf/stage/<name>.yaml."""
    from nanochat.config.app import CONF_DIR
    from nanochat.config.schema import STAGE_SCHEMAS

    stock = OmegaConf.to_container(OmegaConf.structured(STAGE_SCHEMAS[name]))
    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "stage" / f"{name}.yaml"))
    conf.pop("defaults", None)
    return {**stock, **conf}


def command_line_keys(group: str = "stage") -> set[str]:
    """Keys of a group named by this process's overrides (`stage.<key>=...`; the pipeline passes its options so)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith(f"{group}."):
            keys.add(key.split(".")[1])
    return keys


def keys_set_by_run(cfg: DictConfig, keys) -> set[str]:
    """Which of these stage keys the run sets itself: on the command line, or to other than the stock value."""
    stock = stock_stage_values(cfg.stage.name)
    given = command_line_keys("stage")
    out = set()
    for key in keys:
        value = cfg.stage.get(key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if key in given or value != stock.get(key):
            out.add(key)
    return out


def apply_recipe(cfg: DictConfig) -> dict:
    """Write the mixture recipe's settings into cfg.stage (keys the run sets itself keep their value).

    Returns {"recipe": the recipe ({} = none), "applied": {key: value}, "kept": {key: the run's value}}; the
    composed config is changed in place, so the config a run folder records is the one that trained.
    """
    from nanochat.config.schema import STAGE_SCHEMAS
    from nanochat.config.typed import check_ranges

    recipe = mixture_recipe(cfg)
    settings = dict(recipe.get("settings") or {})
    own = keys_set_by_run(cfg, settings)
    applied = {k: v for k, v in settings.items() if k not in own}
    kept = {k: OmegaConf.to_container(cfg.stage[k]) if OmegaConf.is_config(cfg.stage[k]) else cfg.stage[k]
            for k in settings if k in own}
    for key, value in applied.items():
        cfg.stage[key] = value  # typed node: a wrong type fails here
    check_ranges(cfg.stage, STAGE_SCHEMAS[cfg.stage.name], prefix="stage.")
    return {"recipe": recipe, "applied": applied, "kept": kept}


def preset_set_by_run(cfg: DictConfig) -> bool:
    """Whether the run chooses model.preset itself (on the command line, or other than the schema's default)."""
    from nanochat.config.schema import ModelConfig

    return "preset" in command_line_keys("model") or cfg.model.preset != ModelConfig.preset


def recorded_run(source: Path, meta: dict) -> tuple[dict, str | None]:
    """({"total_batch_tokens", "device_batch_size", "preset"} the input model's run trained with, where read).

    Read from the plan the runner stores in the model folder's metadata, else the run folder's summary.json;
    ({}, None) when neither records one (a foreign model).
    """
    from nanochat.layout import RunFolder

    plan = (meta or {}).get("plan")
    where = str(source)
    if not isinstance(plan, dict):
        summary = RunFolder.containing(source).summary
        try:
            plan = json.loads(summary.read_text()).get("plan") if summary.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NanochatError(f"{summary} is corrupt") from None
        where = str(summary)
    if not isinstance(plan, dict):
        return {}, None
    out = {k: int(plan[k]) for k in ("total_batch_tokens", "device_batch_size") if isinstance(plan.get(k), int)}
    if isinstance(plan.get("preset"), str):
        out["preset"] = plan["preset"]
    return out, (where if out else None)


def build_tasks(cfg: DictConfig):
    """(train mixture, val mixture or None)."""
    from nanochat.tasks import build_from_config

    mix = mixture_config(cfg)
    train = build_from_config(mix, "train")
    if len(train) == 0:
        raise NanochatError(f"mixture {mixture_name(cfg)!r} has no training conversations")
    val = build_from_config(mix, "val") if mix.get("val") else None
    return train, val


def mean_tokens(task, tokenizer, sample: int = 2000) -> float:
    """Mean rendered length of a task's conversations, from an evenly spaced sample (cheap for big mixtures)."""
    from nanochat.chat import render_conversation

    n = len(task)
    idx = range(0, n, max(1, n // sample))
    lengths = [len(render_conversation(tokenizer, task[i])[0]) for i in idx]
    return sum(lengths) / max(1, len(lengths))


def steps_for(total: float, per_step: float) -> int:
    return max(1, math.ceil(total / per_step))


def conversations_per_row(task, tokenizer, row: int, buffer: int, sample: int = 2000) -> float:
    """Mean conversations per best-fit packed row (bestfit layout), from an evenly spaced sample of the task.

    The sample's lengths (cut to the row) are packed as the loader packs them - largest that fits, the rest of a
    row padded - cycling the sample so the buffer stays full as in training's endless stream.
    """
    from nanochat.chat import render_conversation

    n = len(task)
    lengths = [min(row, len(render_conversation(tokenizer, task[i])[0])) for i in range(0, n, max(1, n // sample))]
    stream = iter(lengths * max(1, math.ceil(4 * buffer / len(lengths))))
    pool: list[int] = []
    rows = placed = 0
    while True:
        used = count = 0
        while True:
            pool += [x for _, x in zip(range(buffer - len(pool)), stream)]  # topped up before every placement
            fits = [x for x in pool if x <= row - used]
            if not fits:
                break
            pool.remove(max(fits))
            used, count = used + max(fits), count + 1
        if len(pool) < buffer:  # the sample ran out: this last row is not representative
            return placed / rows if rows else float(max(1, count))
        rows, placed = rows + 1, placed + count
