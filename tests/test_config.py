"""The typed configuration: every combination composes, every key has one typed definition, every documented
Hydra form works in any argument order, and bad input is one line."""
import dataclasses
import itertools
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nanochat.config import schema
from nanochat.config.app import compose, group_choices
from nanochat.config.typed import iter_fields

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def train_cfg(*overrides):
    return compose("train", list(overrides))


def cli(*args, script="train.py", timeout=120):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**__import__("os").environ, "NANOCHAT_HARDWARE": "cpu"})


def one_error_line(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("hardware,stage,data", list(itertools.product(
    [h for h in group_choices("hardware")], group_choices("stage"), group_choices("data"))))
def test_every_combination_composes(hardware, stage, data):
    overrides = [f"hardware={hardware}", f"stage={stage}", f"data={data}"]
    if data == "local":
        overrides.append("data.path=/tmp/corpus")
    cfg = train_cfg(*overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.stage.name == stage and cfg.data.name == data


def test_profiles_set_the_machine_and_their_defaults():
    spark = train_cfg("hardware=dgx_spark")
    assert spark.model.depth == 16 and spark.hardware.precision == "bf16-mixed"
    assert spark.hardware.peak_flops == "auto" and spark.hardware.peak_flops_nominal > 0  # measured on the GB10
    h100 = train_cfg("hardware=8xh100")
    assert h100.hardware.devices == 8 and h100.hardware.strategy == "ddp" and h100.model.depth == 20
    assert h100.stage.num_iterations == -1 and h100.stage.total_batch_tokens is None  # the preset's 2^19
    cpu = train_cfg("hardware=cpu")
    assert (cpu.model.depth, cpu.model.sequence_len, cpu.stage.num_iterations, cpu.stage.total_batch_tokens) == \
        (4, 256, 60, 8192)
    assert train_cfg("hardware=cpu", "stage=mid").stage.total_batch_tokens == 8192
    # a user's value wins over the profile's default, in any order
    assert train_cfg("model.depth=6", "hardware=dgx_spark").model.depth == 6
    assert train_cfg("hardware=cpu", "stage.num_iterations=5").stage.num_iterations == 5


def test_hardware_auto_is_a_defaults_list_choice(monkeypatch):
    monkeypatch.setenv("NANOCHAT_HARDWARE", "dgx_spark")
    cfg = compose("train", ["hardware=auto"], return_hydra_config=True)
    assert cfg.hardware.name == "dgx_spark" and cfg.model.depth == 16
    assert cfg.hydra.runtime.choices.hardware == "auto"
    GlobalHydra.instance().clear()
    monkeypatch.setenv("NANOCHAT_HARDWARE", "cpu")
    assert train_cfg().hardware.name == "cpu" and train_cfg().model.depth == 4


def test_experiments_and_debug_compose():
    for exp in group_choices("experiment"):
        OmegaConf.resolve(train_cfg(f"experiment={exp}"))
    for stage in ("base", "mid", "sft", "rl"):
        assert train_cfg(f"stage={stage}", "debug=fast").stage.num_iterations == 4


def _leaf_keys(node, prefix=""):
    for key in node:
        value = node[key]
        if OmegaConf.is_dict(value) and key not in ("task_options", "source", "tasks") and not key.endswith("_options"):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _typed_fields(cls, prefix=""):
    return {key: f for key, f, _ in iter_fields(cls, prefix)}


@pytest.mark.parametrize("stage", ["tokenizer", "base", "mid", "sft", "rl", "all"])
def test_one_definition_per_key(stage):
    """Every key of the composed config is one dataclass field with a type and a doc."""
    cfg = train_cfg(f"stage={stage}")
    defined = {**_typed_fields(schema.TrainConfig), **_typed_fields(schema.STAGE_SCHEMAS[stage], "stage."),
               **_typed_fields(schema.DATA_SCHEMAS[cfg.data.name], "data.")}
    for key in _leaf_keys(cfg):
        top = key.split(".")[0]
        if key.startswith(("stage.task_options", "pipeline.")):
            continue
        assert key in defined, f"{key} has no typed definition"
        f = defined[key]
        assert f.metadata.get("doc"), f"{key} has no doc"
        assert top in {f.name for f in dataclasses.fields(schema.TrainConfig)}


def test_every_plan_field_comes_from_one_key():
    """Recipe settings are stage keys (inherited from nanochat.recipe, never re-declared), model switches are
    model keys; the Plan's optimizer and schedule objects are exactly those classes."""
    from nanochat import recipe, scaling
    from nanochat.gpt import GPTConfig

    stage_keys = {f.name for f in dataclasses.fields(schema.BaseStage)}
    for cls in recipe.SETTINGS_CLASSES:
        for f in dataclasses.fields(cls):
            assert f.name in stage_keys
            owners = [c for c in schema.BaseStage.__mro__ if f.name in getattr(c, "__annotations__", {})]
            assert owners == [cls], f"{f.name} is declared in {owners}"
    hints = typing.get_type_hints(scaling.Plan)
    assert hints["optim"] is recipe.OptimSettings and hints["schedule"] is recipe.ScheduleSettings
    gpt_fields = {f.name for f in dataclasses.fields(GPTConfig)}
    for name in set(schema.model_switches(train_cfg().model)) | {f.name for f in dataclasses.fields(schema.ModelConfig)
                                                             if f.name not in schema.MODEL_SHAPE_KEYS}:
        assert name in gpt_fields
    # no key lives in two groups
    names = [key for key, _, _ in iter_fields(schema.TrainConfig) if key.startswith(("hardware.", "model."))]
    leaves = [k.split(".", 1)[1] for k in names]
    assert len(leaves) == len(set(leaves))


def test_pipeline_options_are_typed_and_need_no_plus():
    cfg = train_cfg("stage=all", "pipeline.base.num_iterations=200", "pipeline.sft.mixture=sft",
                    "pipeline.mid.matrix_lr=0.01")
    assert cfg.pipeline.base.num_iterations == 200 and cfg.pipeline.sft.mixture == "sft"
    with pytest.raises(Exception, match="pipeline.base.num_iterations=lots"):
        train_cfg("stage=all", "pipeline.base.num_iterations=lots")


@pytest.mark.parametrize("args,expected", [
    (["model.depth=four"], "error: model.depth: 'four' is not an integer"),
    (["model.foo=1"], "error: model.foo: unknown key"),
    (["hardware=tpu"], "error: unknown hardware 'tpu'; choose one of:"),
    (["stage=pretrain"], "error: unknown stage 'pretrain'; choose one of:"),
    (["stage.weight_decay=0.1", "plan_only=true"], "error: stage.weight_decay: unknown key"),
    (["hardware.precision=fp8", "plan_only=true"], "error: hardware.precision: 'fp8' is not allowed"),
    (["model.depth=0", "plan_only=true"], "error: model.depth: 0 is out of range"),
    (["stage.warmdown_ratio=2", "plan_only=true"], "error: stage.warmdown_ratio: 2"),
    (["hardware.device_batch_size=big", "plan_only=true"], "error: hardware.device_batch_size: 'big'"),
])
def test_bad_values_are_one_line(args, expected):
    line = one_error_line(cli(*args))
    assert line.startswith(expected), line


@pytest.mark.parametrize("args", [
    ["model.depth=8", "--cfg", "job"],
    ["--cfg", "job", "model.depth=8"],
])
def test_cfg_job_in_any_order(args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "depth: 8" in proc.stdout and "hardware:" in proc.stdout


def test_multirun_with_cfg_prints_every_sweep_job():
    proc = cli("-m", "model.depth=4,6", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "# sweep job 0: model.depth=4" in proc.stdout and "# sweep job 1: model.depth=6" in proc.stdout
    assert proc.stdout.count("  depth: 4") == 1 and proc.stdout.count("  depth: 6") == 1
    proc = cli("--cfg", "job", "-m", "stage=base,mid", "-p", "stage.name")
    assert proc.returncode == 0 and proc.stdout.split() == ["#", "sweep", "job", "0:", "stage=base", "base",
                                                            "#", "sweep", "job", "1:", "stage=mid", "mid"], proc.stdout
    assert one_error_line(cli("-m", "model.depth=4,x", "--cfg", "job")).startswith("error: model.depth: 'x'")


def test_pipeline_options_exist_only_for_the_pipeline():
    assert train_cfg().pipeline is None
    assert "unknown key" in one_error_line(cli("pipeline.base.num_iterations=1", "--cfg", "job"))


def test_help_lists_keys_with_types_defaults_and_docs():
    proc = cli("model.depth=8", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "model.depth" in out and "int" in out and "transformer layers" in out
    assert "stage.matrix_lr" in out and "Muon lr" in out and "hardware: " in out and "stage: " in out
    assert "${" not in out
    assert cli("--info", "config").returncode == 0
    assert cli("ckpt=latest:sft", "--cfg", "job", script="evaluate.py").returncode == 0
    serve = cli("--help", script="serve.py")
    assert serve.returncode == 0 and "port" in serve.stdout


def test_serve_rejects_a_bad_port():
    line = one_error_line(cli("port=99999", script="serve.py"))
    assert line.startswith("error: port: 99999 is out of range"), line


def test_pipeline_bad_stage_value_fails_before_any_stage(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "stage=all", "pipeline.sft.warmdown_ratio=3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**__import__("os").environ, "NANOCHAT_HARDWARE": "cpu",
                               "NANOCHAT_OUTPUTS": str(tmp_path / "outputs")})
    assert one_error_line(proc).startswith("error: pipeline.sft.warmdown_ratio: 3.0 is out of range")
    assert not (tmp_path / "outputs" / "tokenizer").exists()  # nothing started


def test_pipeline_plan_only_prints_every_stage_and_trains_nothing(tmp_path):
    out = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "stage=all", "plan_only=true",
                           "pipeline.base.num_iterations=200", "data.tokenizer.vocab_size=4096"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**__import__("os").environ, "NANOCHAT_HARDWARE": "cpu", "NANOCHAT_OUTPUTS": str(out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "=== tokenizer: vocab 4,096" in proc.stdout
    assert "vocab 4,096" in proc.stdout.split("=== base")[1]  # planned with the tokenizer the pipeline will train
    assert "horizon    200 steps" in proc.stdout
    assert "=== mid: starts from" in proc.stdout and "=== sft: starts from" in proc.stdout
    assert not any(p.is_file() for p in out.rglob("*"))  # nothing trained, nothing written
