"""Every hardware x stage (x data) combination composes, and the key profile values are what users expect."""
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nanochat.stages.cli import CONF_DIR, group_choices, prepare_argv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hydra_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "hardware,stage,data",
    list(itertools.product(group_choices("hardware"), group_choices("stage"), group_choices("data"))),
)
def test_every_combination_composes(hydra_compose, hardware, stage, data):
    overrides = [f"hardware={hardware}", f"stage={stage}", f"data={data}"]
    if data == "local":
        overrides.append("data.path=/tmp/corpus")
    cfg = hydra_compose(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.stage.name == stage
    assert cfg.model.depth == cfg.hardware.depth
    assert cfg.stage.get("vocab_size", 1) > 0


def test_dgx_spark_profile(hydra_compose):
    cfg = hydra_compose(["stage=base", "hardware=dgx_spark"])
    assert cfg.model.depth == 16
    assert cfg.hardware.devices == 1
    assert cfg.hardware.precision == "bf16-mixed"
    assert cfg.hardware.peak_flops > 0


def test_8xh100_inherits_h100(hydra_compose):
    cfg = hydra_compose(["hardware=8xh100"])
    assert cfg.hardware.devices == 8 and cfg.hardware.strategy == "ddp"
    assert cfg.hardware.precision == "bf16-mixed" and cfg.model.depth == 20


def test_experiments_and_debug_compose(hydra_compose):
    for exp in group_choices("experiment"):
        OmegaConf.resolve(hydra_compose([f"experiment={exp}"]))
    cfg = hydra_compose(["debug=fast"])
    assert cfg.stage.num_iterations == 4


def test_auto_is_resolved_before_hydra(monkeypatch):
    monkeypatch.setattr("nanochat.stages.cli.detect_hardware", lambda: "cpu")
    argv = ["train.py", "stage=base"]
    prepare_argv(argv, "train")
    assert argv[-1] == "hardware=cpu"
    argv = ["train.py", "hardware=auto"]
    prepare_argv(argv, "train")
    assert argv == ["train.py", "hardware=cpu"]
    argv = ["train.py", "experiment=spark_d16"]
    prepare_argv(argv, "train")
    assert argv == ["train.py", "experiment=spark_d16"]  # the experiment picks its own hardware


@pytest.mark.parametrize("arg,word", [("hardware=tpu", "hardware"), ("stage=pretrain", "stage")])
def test_unknown_group_choice_is_one_clear_line(arg, word):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), arg, "--cfg", "job"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and f"unknown {word}" in lines[0], proc.stderr


def test_cfg_job_shows_dgx_spark():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "stage=base", "hardware=dgx_spark", "--cfg", "job"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.hardware.name == "dgx_spark" and cfg.hardware.devices == 1
    assert cfg.hardware.precision == "bf16-mixed" and cfg.hardware.depth == 16
