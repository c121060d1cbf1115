"""Command-line plumbing shared by the entry points (Hydra side): argv checks before Hydra, one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
# groups whose choice we validate up front so a typo gives one clear line instead of a Hydra traceback
CHECKED_GROUPS = ("stage", "hardware", "model", "data", "logger", "experiment", "debug")


def fail(message: str, code: int = 1):
    """Print one clear error line and exit non-zero."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def detect_hardware() -> str:
    """The profile `hardware=auto` stands for on this machine."""
    try:
        import torch

        if torch.cuda.is_available():
            # GB10 is the DGX Spark's GPU; any other GPU gets the single-H100 profile
            return "dgx_spark" if "GB10" in torch.cuda.get_device_name(0) else "h100"
    except Exception:
        pass
    return "cpu"


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def prepare_argv(argv: list[str], config_name: str) -> None:
    """Validate config-group choices and resolve `hardware=auto` in place (before Hydra parses argv).

    Resolving auto here, rather than inside the job, keeps `--cfg job` and the saved config honest about
    which profile actually ran.
    """
    from nanochat.stages.schema import RENAMED

    saw_hardware = False
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key in RENAMED:
            fail(f"{key} was renamed: use {RENAMED[key]}")
        if key == "plan_only" and value.lower() == "true":
            # a plan is only printed: write nothing into the run folder (no .hydra/ copy, no job log)
            argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
        if key.startswith("override "):
            key = key[len("override "):]
        if key.startswith("/"):
            key = key[1:]
        if key not in CHECKED_GROUPS:
            continue
        if key == "hardware":
            saw_hardware = True
        for choice in value.split(","):
            if choice in ("null", "") and key in ("experiment", "debug"):
                continue
            if choice not in group_choices(key):
                fail(f"unknown {key} '{choice}'; choose one of: {', '.join(group_choices(key))}")
        if key == "hardware" and value == "auto":
            argv[i] = f"hardware={detect_hardware()}"
    if config_name in ("train", "evaluate") and not saw_hardware and not _experiment_sets_hardware(argv):
        argv.append(f"hardware={detect_hardware()}")


def _experiment_sets_hardware(argv: list[str]) -> bool:
    for arg in argv[1:]:
        if arg.startswith("experiment="):
            for name in arg.split("=", 1)[1].split(","):
                path = CONF_DIR / "experiment" / f"{name}.yaml"
                if path.exists() and "override /hardware" in path.read_text():
                    return True
    return False


def source_options(data_cfg) -> tuple[str, dict]:
    """(source name, get_source options) from a `data=` config group (sample, fineweb_edu, local)."""
    from omegaconf import OmegaConf

    opts = OmegaConf.to_container(data_cfg, resolve=True)
    name = opts.pop("name")
    for key in ("tokenizer", "loader"):  # consumed by the stages, not by the source
        opts.pop(key, None)
    return name, opts


def open_source(data_cfg):
    """The document source a `data=` config group describes (downloading missing shards if it says so)."""
    from nanochat.dataset import get_source

    name, opts = source_options(data_cfg)
    return get_source(name, **opts)


def run_dir(create: bool = True) -> Path:
    """This job's output folder (Hydra 1.3 does not chdir into it)."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(HydraConfig.get().runtime.output_dir)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
