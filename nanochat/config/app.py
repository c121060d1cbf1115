"""The Hydra side of train.py / evaluate.py / serve.py: schemas in the ConfigStore, hardware=auto, help, errors.

The one idea: nothing edits argv. `register()` puts the structured configs into Hydra's ConfigStore, plus one
config that `hardware=auto` names: its defaults list picks this machine's profile (dgx_spark on a GB10, h100 on
another CUDA GPU, else cpu), and the size/budget files chosen by `${hardware}` get the same alias. So every Hydra
form (`--cfg job`, `--help`, `-m`, `--info`, completion) works in any argument order, and `run(main)` turns a
config error into one line and exit code 1.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from nanochat.config.command import fail

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
USER_GROUPS = ("stage", "hardware", "data", "logger", "experiment", "debug")  # what --help lists


def detect_hardware() -> str:
    """The profile `hardware=auto` stands for on this machine ($NANOCHAT_HARDWARE wins)."""
    forced = os.environ.get("NANOCHAT_HARDWARE")
    if forced:
        return forced
    if not (Path("/proc/driver/nvidia").exists() or os.environ.get("CUDA_VISIBLE_DEVICES")):
        return "cpu"  # no NVIDIA driver: skip importing torch (keeps --help and completion fast)
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


def _help_node(config_name: str) -> dict:
    from nanochat.config import schema
    from nanochat.config.typed import help_table

    def table(cls, prefix):
        return [re.sub(r"\$\{([^}]*)\}", r"<\1>", line) for line in help_table(cls, prefix)]  # no interpolation

    top = {"train": schema.TrainConfig, "evaluate": schema.EvaluateConfig, "serve": schema.ServeConfig}[config_name]
    lines = [f"python {config_name}.py [group=option ...] [key=value ...]   (Hydra: --cfg job, -m, --info, ...)", ""]
    if config_name == "train":
        lines += ["== Config groups (group=option) =="]
        lines += [f"{g}: {', '.join(group_choices(g) + (['auto'] if g == 'hardware' else []))}" for g in USER_GROUPS]
        lines += ["(a hardware profile also picks its model size, conf/size/, and per-stage budget, conf/budget/)", ""]
        lines += ["== Keys (key, type, default, doc); the chosen stage/hardware files may set other defaults,",
                  "   `python train.py <overrides> --cfg job` prints the composed values ==", ""]
        from dataclasses import fields as dc_fields
        plain = [f for f in dc_fields(top) if f.name not in ("stage", "data", "pipeline")]
        for line in table(top, ""):
            if line.split()[0].split(".")[0] in {f.name for f in plain}:
                lines.append(line)
        for name, cls in schema.DATA_SCHEMAS.items():
            lines += ["", f"data={name}:"] + table(cls, "data.")
        for name, cls in schema.STAGE_SCHEMAS.items():
            lines += ["", f"stage={name}:"] + table(cls, "stage.")
        lines += ["", "stage=all: pipeline.stages=[tokenizer,base,mid,sft,rl] (the chain, in order) and per-stage "
                      "options pipeline.<stage>.<key>=value (any stage key, and mixture for mid/sft), "
                      "e.g. pipeline.base.num_iterations=200"]
    else:
        lines += ["== Keys (key, type, default, doc) ==", ""] + table(top, "")
        if config_name == "evaluate":
            lines += ["", f"hardware=<profile> chooses the device: {', '.join(group_choices('hardware') + ['auto'])}"]
    text = "\n".join(lines).replace("$", "$$")  # the help template is a string.Template
    return {"app_name": config_name, "header": "", "footer": "", "template": text}


def register(config_name: str) -> None:
    """Put the schemas, the hardware=auto alias and the help page into Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from nanochat.config import schema

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=schema.TrainConfig)
    cs.store(name="evaluate_schema", node=schema.EvaluateConfig)
    cs.store(name="serve_schema", node=schema.ServeConfig)
    for name, cls in schema.STAGE_SCHEMAS.items():
        cs.store(group="schema/stage", name=name, node=cls)
    for name, cls in schema.DATA_SCHEMAS.items():
        cs.store(group="schema/data", name=name, node=cls)
    cs.store(group="schema", name="pipeline", node=schema.PipelineOptions)
    detected = detect_hardware()
    if detected not in group_choices("hardware"):
        fail(f"NANOCHAT_HARDWARE={detected!r} is not a hardware profile; choose one of: "
             f"{', '.join(group_choices('hardware'))}")
    cs.store(group="hardware", name="auto", node={"defaults": [detected, "_self_"]})
    # files chosen by `${hardware}` in the defaults lists: `auto` reads as the detected profile there too
    for group in ("size", "budget"):
        for option in group_choices(group):
            # size/<hardware>.yaml, budget/<stage>_<hardware>.yaml (stage names hold no underscore)
            head, hw = option.split("_", 1) if group == "budget" else (None, option)
            if hw == detected:
                cs.store(group=group, name=f"{head}_auto" if head else "auto", node={"defaults": [option, "_self_"]})
    cs.store(group="hydra/help", name="nanochat", node=_help_node(config_name))
    _register_resolvers()


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    # plan_only=true writes nothing into the run folder: no .hydra/ copy, no job log file
    if not OmegaConf.has_resolver("nanochat_unless_plan"):
        OmegaConf.register_new_resolver("nanochat_unless_plan",
                                        lambda plan_only, value: None if plan_only else value)
    if not OmegaConf.has_resolver("nanochat_log_file"):
        OmegaConf.register_new_resolver("nanochat_log_file",
                                        lambda plan_only, value: os.devnull if plan_only else value)


def run(main, config_name: str) -> None:
    """Call a @hydra.main function; config errors become one line on stderr and exit code 1."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from nanochat.config.typed import one_line

    register(config_name)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # we print the error ourselves, as one line
    try:
        if not print_sweep_configs(config_name, sys.argv[1:]):
            main()
    except MissingConfigException as e:
        options = getattr(e, "options", None)
        missing = str(getattr(e, "missing_cfg_file", "") or "")
        if options and "/" in missing:
            group, _, choice = missing.rpartition("/")
            fail(f"unknown {group} {choice!r}; choose one of: {', '.join(o for o in options if o != 'auto' or group == 'hardware')}")
        fail(one_line(e))
    except (HydraException, OmegaConfBaseException) as e:
        fail(one_line(e))
    except ValueError as e:  # Hydra's override grammar and flag combinations
        text = str(e)
        if text.startswith("Only one of"):
            fail(text.splitlines()[0])
        if any(w in text for w in ("mismatched input", "extraneous input", "no viable", "token recognition")):
            fail(text.splitlines()[0])
        raise


def print_sweep_configs(config_name: str, argv: list[str]) -> bool:
    """`-m ... --cfg job|hydra|all [--resolve]`: print every sweep job's config (Hydra itself refuses the pair).

    Returns False (nothing done) unless both -m and --cfg are given; argv is only read.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # Hydra's own sweep expansion
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    flags = {"-m", "--multirun"}
    if not flags & set(argv) or not {"-c", "--cfg"} & set(argv):
        return False
    overrides, what, resolve, package, i = [], "job", False, None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--cfg", "-p", "--package") and i + 1 < len(argv):
            what, package = (argv[i + 1], package) if arg in ("-c", "--cfg") else (what, argv[i + 1])
            i += 1
        elif arg == "--resolve":
            resolve = True
        elif not arg.startswith("-"):
            overrides.append(arg)
        i += 1
    if what not in ("job", "hydra", "all"):
        fail(f"--cfg takes job, hydra or all (got {what!r})")
    jobs = [job for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
            for job in batch]
    for n, job in enumerate(jobs):
        cfg = compose(config_name, job, return_hydra_config=what != "job")
        if what == "hydra":
            cfg = cfg.hydra
        elif what == "job" and "hydra" in cfg:
            del cfg["hydra"]
        node = OmegaConf.select(cfg, package) if package else cfg
        if resolve:
            OmegaConf.resolve(cfg)
        print(f"# sweep job {n}: {' '.join(job)}")
        print(OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else node, flush=True)
    return True


def compose(config_name: str, overrides: list[str] | tuple = (), return_hydra_config: bool = False):
    """The composed config, as the entry point would see it (compose API; for tests and the pipeline's checks).

    Inside a running Hydra app the app's own Hydra instance is reused; elsewhere one is set up and cleared.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register(config_name)
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
