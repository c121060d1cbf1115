"""What the stage modules share on the Hydra side: the run folder Hydra made, typed views of config groups."""
from __future__ import annotations

from pathlib import Path


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


def hardware_of(cfg):
    """The run's hardware profile as a typed HardwareConfig."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg.hardware)


def run_dir(create: bool = True) -> Path:
    """This job's output folder (Hydra 1.3 does not chdir into it)."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(HydraConfig.get().runtime.output_dir)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
