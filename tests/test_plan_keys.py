"""Every Hydra key of the plan reaches what trains (optimizer, schedule, model, Trainer), the printed plan is the
trained plan, bad values are one clear line, eval_every=-1 runs, plan_only never touches the run folder."""
import json
import math

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from nanochat.config.app import compose
from tests.helpers import run_train, tiny_train_overrides


def compose_cfg(*overrides):
    GlobalHydra.instance().clear()
    return compose("train", ["hardware=cpu", "model.depth=2", "model.sequence_len=64",
                             "hardware.device_batch_size=2", "stage.total_batch_tokens=128", *overrides])


def groups_for(*overrides, preset="v0"):
    from nanochat.gpt import GPT
    from nanochat.lit.runner import build_plan
    from nanochat.optim import build_optimizer

    plan = build_plan(compose_cfg(f"model.preset={preset}", *overrides), vocab_size=300)
    opt = build_optimizer(GPT.build(plan.model), **plan.optimizer_kwargs())
    return plan, {g["name"]: g for g in opt.param_groups}


def ratio(key, overrides, group, field, preset="v0"):
    _, base = groups_for(preset=preset)
    _, changed = groups_for(*overrides, preset=preset)
    return changed[group][field] / base[group][field]


@pytest.mark.parametrize("key,group", [("matrix_lr", "matrix"), ("embedding_lr", "embedding"),
                                       ("unembedding_lr", "lm_head")])
def test_learning_rate_keys_reach_their_group(key, group):
    plan, _ = groups_for()
    default = getattr(plan.optim, key)
    assert ratio(key, [f"stage.{key}={default * 2}"], group, "lr") == pytest.approx(2.0)


def test_scalar_lr_reaches_the_residual_scalars():
    assert ratio("scalar_lr", ["stage.scalar_lr=1.0"], "x0_scalars", "lr", preset="jan2026") == pytest.approx(2.0)


def test_each_betas_key_reaches_its_adamw_groups():
    _, groups = groups_for("stage.adam_betas=[0.7,0.9]", "stage.unembedding_betas=[0.6,0.91]",
                           "stage.embedding_betas=[0.5,0.92]", "stage.x0_betas=[0.4,0.93]", "model.resid_scalars=true",
                           "model.value_embeds=true")
    assert groups["lm_head"]["betas"] == (0.6, 0.91)
    assert groups["embedding"]["betas"] == groups["value_embeds"]["betas"] == (0.5, 0.92)
    assert groups["resid_scalars"]["betas"] == (0.7, 0.9) and groups["x0_scalars"]["betas"] == (0.4, 0.93)


def test_weight_decays_are_distinct_and_reach_their_optimizer():
    _, groups = groups_for("stage.adamw_weight_decay=0.01", "stage.embedding_weight_decay=0.002",
                           "stage.resid_weight_decay=0.03", "stage.muon_weight_decay=0.5", "model.resid_scalars=true",
                           "model.value_embeds=true")
    assert groups["lm_head"]["weight_decay"] == groups["value_embeds"]["weight_decay"] == pytest.approx(0.01)
    assert groups["embedding"]["weight_decay"] == pytest.approx(0.002)
    assert groups["resid_scalars"]["weight_decay"] == pytest.approx(0.03) and groups["x0_scalars"]["weight_decay"] == 0
    assert groups["matrix"]["weight_decay"] == pytest.approx(0.5 * (12 / 2) ** 2)  # scaled from d12


def test_lr_multiplier_scales_every_group():
    _, base = groups_for()
    _, half = groups_for("stage.lr_multiplier=0.5")
    for name in base:
        assert half[name]["lr"] == pytest.approx(base[name]["lr"] * 0.5)


def test_schedule_keys_reach_the_lr_schedule():
    from nanochat.optim import lr_multiplier

    plan, _ = groups_for("stage.num_iterations=10", "stage.warmup_ratio=0.2", "stage.warmdown_ratio=0.5",
                         "stage.final_lr_frac=0.1")
    assert plan.schedule.warmup_steps == 2
    sched = plan.schedule_kwargs()
    assert lr_multiplier(0, 10, **sched) < 1 and lr_multiplier(3, 10, **sched) == 1.0
    assert lr_multiplier(10, 10, **sched) == pytest.approx(0.1)


def test_grad_clip_and_model_keys():
    plan, _ = groups_for("stage.grad_clip=0.5", "model.x0_init=0.3", "model.resid_scalars=true",
                         "model.window_pattern=SL", "model.short_window_frac=0.5")
    assert plan.grad_clip == 0.5
    assert plan.model.x0_init == 0.3 and plan.model.short_window_frac == 0.5
    assert groups_for(preset="jan2026")[0].grad_clip == 0.0  # the reference never clips


def test_target_flops_sets_the_horizon():
    plan, _ = groups_for("stage.num_iterations=-1", "stage.target_flops=1e12")
    assert plan.horizon_source == "target_flops"
    assert plan.num_steps == round(1e12 / (plan.flops_per_token * plan.total_batch_tokens))


@pytest.mark.parametrize("override,needle", [
    ("model.depth=four", "model.depth: 'four' is not an integer"),
    ("stage.warmdown_ratio=1.5", "stage.warmdown_ratio: 1.5 is out of range; expected a value between 0 and 1"),
    ("stage.adam_betas=[0.9]", "stage.adam_betas: [0.9] must hold 2 numbers"),
    ("hardware.precision=fp13", "hardware.precision: 'fp13' is not allowed; expected one of"),
    ("stage.weight_decay=0.1", "stage.weight_decay: unknown key"),
    ("stage.total_batch_tokens=big", "stage.total_batch_tokens: 'big' is not allowed; expected a positive integer or auto"),
])
def test_bad_values_are_one_clear_line(tmp_path, override, needle):
    proc = run_train(["hardware=cpu", override, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and needle in last, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_printed_plan_is_the_trained_plan_and_eval_every_minus_one_runs(tiny_env):
    root, corpus, tok = tiny_env
    args = tiny_train_overrides("plan_keys", corpus, tok, steps=4, **{
        "stage.warmup_ratio": 0.5, "stage.matrix_lr": 0.03, "stage.grad_clip": 0, "stage.eval_every": -1})
    proc = run_train(args, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "outputs" / "plan_keys"
    plan = json.loads((out / "summary.json").read_text())["plan"]
    assert "warmup 2 steps" in proc.stdout and "matrix (Muon) 0.03" in proc.stdout and "no grad clipping" in proc.stdout
    assert plan["schedule"]["warmup_steps"] == 2 and plan["optim"]["matrix_lr"] == 0.03
    assert plan["optim"]["grad_clip"] == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert json.loads(json.dumps(ckpt["nanochat_plan"])) == plan  # the module trained with exactly this plan
    assert math.isfinite(json.loads((out / "summary.json").read_text())["val_bpb"])  # the final evaluation ran


def test_plan_only_never_touches_the_run_folder(tiny_env):
    root, corpus, tok = tiny_env
    first = run_train(tiny_train_overrides("plan_only_run", corpus, tok, steps=2), root)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = root / "outputs" / "plan_only_run"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = run_train(tiny_train_overrides("plan_only_run", corpus, tok, steps=2, plan_only="true"), root)
    assert again.returncode == 0 and "plan: preset" in again.stdout, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
