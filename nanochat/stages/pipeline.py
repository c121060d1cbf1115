"""stage=all: the whole run in one command - tokenizer -> base -> mid -> sft -> (rl) -> evaluation -> report.

Each stage runs as its own `train.py` process in its own run folder (`outputs/<stage>/<run_name>/`), chained by
path: base trains with the tokenizer this pipeline trained, mid starts from this base model, and so on. The
run is idempotent: a stage whose `summary.json` and `model/` exist is done and skipped; a stage with checkpoints
but no summary was interrupted and resumes with `ckpt_path=last`; evaluations with an `eval.json` are skipped.
So after a crash or Ctrl-C, the same command carries on where it stopped and redoes nothing.

With FineWeb-EDU, the shards download in a background process while the tokenizer trains (as the reference
speedrun does); base training waits for it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nanochat.common import NanochatError
from nanochat.layout import RunFolder
from nanochat.config.app import CONF_DIR

ROOT = CONF_DIR.parent
TRAIN_STAGES = ("tokenizer", "base", "mid", "sft", "rl")


def _user_overrides() -> list[str]:
    """The command line's overrides, minus the ones that choose this stage or belong to the pipeline itself."""
    from hydra.core.hydra_config import HydraConfig

    keep = []
    for o in HydraConfig.get().overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in ("stage", "run_name", "ckpt_path", "plan_only", "time_budget") or key.startswith(
                ("stage.", "hydra.", "pipeline.")):
            continue
        keep.append(o)
    return keep


def _flat(d: dict | None, prefix: str = "") -> list[str]:
    """Nested override dicts -> Hydra `a.b=c` strings."""
    out = []
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={'null' if v is None else json.dumps(v) if isinstance(v, list) else v}")
    return out


def stage_overrides(cfg: DictConfig, stage: str) -> list[str]:
    """`pipeline.<stage>.<key>=v` as the stage's own overrides: its stage keys, and top-level keys like mixture."""
    from nanochat.config.schema import TrainConfig

    top = {f.name for f in fields(TrainConfig)}
    options = OmegaConf.to_container(cfg.pipeline[stage], resolve=True)
    given = {k: v for k, v in options.items() if v is not None}
    return _flat({k: v for k, v in given.items() if k in top}) + _flat({k: v for k, v in given.items() if k not in top},
                                                                        "stage.")


def input_stage(cfg: DictConfig, stage: str, before: list[str]) -> str | None:
    """The earlier pipeline stage whose model `stage` continues: the latest of the stages its mixture starts from
    (sft2026 starts from base even when mid ran), else the stage just before it."""
    from nanochat.stages.chat_common import stage_inputs

    options = cfg.pipeline[stage] if cfg.get("pipeline") is not None and stage in cfg.pipeline else {}
    mixture = options.get("mixture") if options.get("mixture") is not None else cfg.get("mixture")
    wanted = stage_inputs(stage, mixture)
    trained = [s for s in before if s != "tokenizer"]
    return next((s for s in reversed(trained) if s in wanted), trained[-1] if trained else None)


def check_stages(cfg: DictConfig, stages: list[str], common: list[str]) -> None:
    """Compose and check every stage's config before the first one starts: a bad per-stage value fails in seconds."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nanochat.config.app import compose
    from nanochat.config.typed import one_line
    from nanochat.stages import validate

    for stage in stages:
        try:
            plan = ["plan_only=true"] if cfg.plan_only else []  # a plan for another machine checks only the profile
            validate(compose("train", [*common, f"stage={stage}", *plan, *stage_overrides(cfg, stage)]))
        except NanochatError as e:
            raise NanochatError(f"pipeline.{stage}: {e}") from None
        except (HydraException, OmegaConfBaseException) as e:  # composition errors
            raise NanochatError(f"pipeline.{stage}: {one_line(e)}") from None


def _run(cmd: list[str], what: str) -> None:
    print(f"\n=== {what}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise NanochatError(f"{what} failed (exit code {proc.returncode}); run the same command again to resume it")


def stage_state(folder: Path) -> str:
    """'done', 'interrupted' (checkpoints but no summary) or 'new'."""
    if (folder / "summary.json").exists() and ((folder / "model" / "model.pt").exists() or
                                               (folder / "tokenizer" / "tokenizer.pkl").exists()):
        try:
            json.loads((folder / "summary.json").read_text())
            return "done"
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NanochatError(f"{folder / 'summary.json'} is corrupt; delete {folder} to redo that stage") from None
    if list((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").exists() else []:
        return "interrupted"
    return "new"


def apply_budget(cfg: DictConfig, stages: list[str], common: list[str], root: Path,
                 name: str) -> tuple[list[str], list[str], str]:
    """time_budget=: probe, choose, print the per-stage table; returns (common overrides with the chosen depth,
    base's chosen horizon overrides, the run name - which follows the chosen depth unless run_name is set)."""
    from nanochat.stages.budget_plan import last_wins, plan_pipeline
    from nanochat.stages.cli import run_dir

    extras = {s: stage_overrides(cfg, s) for s in stages if s != "tokenizer"}
    if "base" in extras and "tokenizer" in stages:
        extras["base"].append(f"tokenizer_dir={RunFolder.of('tokenizer', name, root).tokenizer}")
    chosen = plan_pipeline(cfg, stages, common, extras, None if cfg.plan_only else run_dir())
    model = [o for o in chosen if o.startswith("model.")]
    for o in model:
        OmegaConf.update(cfg, o.split("=", 1)[0], int(o.split("=", 1)[1]), merge=False)
    shared = [*model, *(o for o in chosen if o.startswith("hardware."))]  # every stage: the model and its rate
    return last_wins([*common, *shared]), [o for o in chosen if o not in shared], cfg.run_name


def plan_all(cfg: DictConfig, stages: list[str], common: list[str], root: Path, name: str,
             base_extra: tuple[str, ...] = ()) -> dict:
    """stage=all plan_only=true: every stage's plan, nothing trained or written."""
    python = sys.executable
    for i, stage in enumerate(stages):
        extra = [f"stage={stage}", f"run_name={name}", "plan_only=true", *stage_overrides(cfg, stage),
                 *(base_extra if stage == "base" else ())]
        if stage == "tokenizer":
            print(f"\n=== tokenizer: vocab {cfg.data.tokenizer.vocab_size:,} from up to {cfg.data.tokenizer.max_chars:,} "
                  f"characters of '{cfg.data.name}' -> {RunFolder.of('tokenizer', name, root).tokenizer}", flush=True)
            continue
        if stage == "base" and "tokenizer" in stages:  # the tokenizer this pipeline trains (or will train)
            extra.append(f"tokenizer_dir={RunFolder.of('tokenizer', name, root).tokenizer}")
        source_stage = input_stage(cfg, stage, stages[:i])
        if source_stage is not None:
            source = RunFolder.of(source_stage, name, root)
            if not source.has_model():
                print(f"\n=== {stage}: starts from {source.model} once {source_stage} has trained; its plan (steps "
                      f"from its data) is printed then", flush=True)
                continue
            extra.append(f"stage.init_from={source.model}")
        _run([python, str(ROOT / "train.py"), *common, *extra], f"{stage} (plan)")
    return {"stages": stages, "plan_only": True}


def run(cfg: DictConfig) -> dict:
    from nanochat.hub_shards import hub_dataset
    from nanochat.layout import outputs_root

    st = cfg.stage
    stages = [s for s in cfg.pipeline.stages if s != "rl" or st.rl]
    unknown = [s for s in stages if s not in TRAIN_STAGES]
    if unknown:
        raise NanochatError(f"unknown stage(s) in pipeline.stages: {', '.join(unknown)}; known: {', '.join(TRAIN_STAGES)}")
    root = outputs_root()
    name = cfg.run_name
    common = _user_overrides()
    check_stages(cfg, stages, common)
    base_extra: list[str] = []
    if cfg.get("time_budget") is not None:  # the chosen depth and base horizon, as overrides
        common, base_extra, name = apply_budget(cfg, stages, common, root, name)
    python = sys.executable
    if cfg.plan_only:
        return plan_all(cfg, stages, common, root, name, tuple(base_extra))
    t0 = time.time()
    downloader = None
    hub = hub_dataset(cfg.data.name)
    if hub is not None and cfg.data.get("download") and "tokenizer" in stages:
        cmd = [python, "-m", "nanochat.dataset", "download", f"data={hub.name}", f"n={cfg.data.num_shards}"]
        for key in ("dir", "base_url"):
            if cfg.data.get(key):
                cmd.append(f"{key}={cfg.data[key]}")
        print(f"downloading {cfg.data.num_shards} {hub.title} shards in the background", flush=True)
        downloader = subprocess.Popen(cmd, cwd=ROOT)
    summaries = {}
    try:
        for stage in stages:
            folder = root / stage / name
            state = stage_state(folder)
            extra = [f"stage={stage}", f"run_name={name}", f"hydra.run.dir={folder}",
                     *stage_overrides(cfg, stage), *(base_extra if stage == "base" else ())]
            if stage == "base" and "tokenizer" in stages:
                extra.append(f"tokenizer_dir={root / 'tokenizer' / name / 'tokenizer'}")
            source_stage = input_stage(cfg, stage, stages[:stages.index(stage)])
            if stage in ("mid", "sft", "rl") and source_stage is not None:
                extra.append(f"stage.init_from={root / source_stage / name / 'model'}")
            if stage == "base" and downloader is not None:
                if downloader.wait() != 0:
                    raise NanochatError("the FineWeb-EDU download failed; run the same command again to resume it")
                downloader = None
            if state == "done":
                print(f"=== {stage}: done ({folder}), skipped", flush=True)
            else:
                if state == "interrupted":
                    extra.append("ckpt_path=last")
                _run([python, str(ROOT / "train.py"), *common, *extra],
                     f"{stage} ({'resuming' if state == 'interrupted' else 'training'})")
            summaries[stage] = json.loads((folder / "summary.json").read_text())
        if st.evaluate:
            for stage in stages:
                folder = root / stage / name
                if stage == "tokenizer" or (folder / "eval.json").exists():
                    continue
                eval_args = [f"ckpt={folder / 'model'}", "report=false",
                             *_flat(OmegaConf.to_container(st.eval, resolve=True)),
                             *[o for o in common if o.startswith("hardware=")]]
                _run([python, str(ROOT / "evaluate.py"), *eval_args], f"evaluate {stage}")
    finally:
        if downloader is not None:
            downloader.terminate()
    from nanochat.report import build_report

    report = build_report(root)
    print(f"\npipeline '{name}' finished in {time.time() - t0:.0f} s (stages: {', '.join(stages)})")
    print(f"report card: {report}")
    last = next((s for s in reversed(stages) if s in ("rl", "sft", "mid")), None)
    if last:
        print(f"chat with it: python -m nanochat.chat_cli ckpt={root / last / name / 'model'}   "
              f"(web UI: python serve.py ckpt={root / last / name / 'model'})")
    return {"stages": summaries, "report": str(report)}
