"""time_budget=: duration parsing, the throughput probe and its cache, the planner's choice (fake and real rates),
and (slow) a real run that finishes within its budget."""
import json
import time

import pytest

from nanochat import budget, scaling
from nanochat.common import NanochatError
from nanochat.throughput_probe import ProbeResult, ProbeSetup, RateModel, cached, load_cache, probe, save_result
from tests.helpers import ROOT, env_for, train_cmd


@pytest.mark.parametrize("text, seconds", [("10h", 36000), ("20m", 1200), ("90s", 90), ("1h30m", 5400),
                                           ("2.5h", 9000), ("1d", 86400), ("2", 7200), (" 1H 5M ", 3900)])
def test_parse_duration(text, seconds):
    assert budget.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "h", "1h1h", "0m", "-5m", "10 hours", "5m3"])
def test_parse_duration_rejects(text):
    with pytest.raises(NanochatError, match="time_budget"):
        budget.parse_duration(text)


def test_time_budget_only_with_base_or_all():
    from nanochat.config.app import compose
    from nanochat.stages.budget_plan import check

    with pytest.raises(NanochatError, match="stage=all or stage=base"):
        check(compose("train", ["stage=mid", "hardware=cpu", "time_budget=1h"]))
    with pytest.raises(NanochatError, match="not a duration"):
        check(compose("train", ["stage=base", "hardware=cpu", "time_budget=soon"]))
    check(compose("train", ["stage=all", "hardware=cpu", "time_budget=1h30m"]))


# -- the planner with injected probe results ---------------------------------------------------------------------
def fake_result(depth, flops_per_s=2e10, plan=None):
    """A measurement at a constant achieved FLOP/s (what an ideal device would show)."""
    plan = plan or tiny_plan(depth, 20.0)
    return ProbeResult(depth=depth, flops_per_token=plan.flops_per_token, n_params=plan.n_params,
                       micro_s=2048 * plan.flops_per_token / flops_per_s, optimizer_s=1e-3 * depth, decode_s=1e-3,
                       warmup_s=0.5, tokens_per_micro=2048)


def tiny_plan(depth, ratio):
    return scaling.plan(depth, vocab_size=512, seq_len=256, device_batch_size=8, head_dim=64, num_iterations=-1,
                        total_batch_tokens=8192, param_data_ratio=ratio)


WORK = budget.Workload(stages=("base",), base_eval_tokens=16384, base_eval_every=250)


def choose(hours, rates=None):
    rates = rates or RateModel({d: fake_result(d) for d in (2, 4, 6)})
    return budget.choose(hours * 3600, tiny_plan, rates, WORK, range(1, 13), 20.0)


def test_planner_fits_and_is_monotonic():
    choices = [choose(h) for h in (0.05, 0.25, 1, 3, 10)]
    depths = [c.depth for c in choices]
    assert depths == sorted(depths) and depths[0] < depths[-1], depths  # more time: never a smaller model
    for c in choices:
        assert c.total_s <= c.budget_s
        lo, hi = (20.0 * r for r in budget.RATIO_RANGE)
        assert c.below_range or c.param_data_ratio >= lo
        assert c.beyond_range or c.param_data_ratio <= hi
        assert c.total_s >= 0.97 * c.budget_s  # the run ends at the budget, not well before it
        assert c.plan.depth == c.depth and c.plan.horizon_source == "param_data_ratio"
    # the next depth does not fit even at the shortest horizon in range
    c = choices[2]
    assert dict(c.candidates)[c.depth + 1] is None


def test_planner_trains_past_the_range_when_the_next_depth_does_not_fit():
    rates = RateModel({d: fake_result(d) for d in (2, 4, 6)})
    c = budget.choose(3 * 3600, tiny_plan, rates, WORK, [1, 2], 20.0)  # d2 at 40 tokens/param ends far sooner
    assert c.depth == 2 and c.beyond_range and c.param_data_ratio > 40 and 0.97 * c.budget_s <= c.total_s
    assert c.total_s <= c.budget_s and "trains past" in c.describe()


def test_planner_below_range_and_too_short():
    c = choose(0.01)  # 36 s: the smallest model, for what the budget allows
    assert c.depth == 1 and c.below_range and c.param_data_ratio < 10 and c.total_s <= 36
    with pytest.raises(NanochatError, match="too short"):
        choose(2 / 3600)


def test_planner_probe_time_comes_out_of_the_budget():
    free, spent = choose(1), budget.choose(3600, tiny_plan, RateModel({d: fake_result(d) for d in (2, 4, 6)}), WORK,
                                           range(1, 13), 20.0, spent_s=1800)
    assert spent.total_s <= 3600 and spent.probe_s == 1800
    assert (spent.depth, spent.param_data_ratio) < (free.depth, free.param_data_ratio)
    assert "so far" in spent.describe() and "base" in spent.describe()


def test_choice_overrides_and_table():
    c = choose(1)
    assert c.overrides() == [f"model.depth={c.depth}", f"stage.param_data_ratio={c.param_data_ratio:g}",
                             "stage.num_iterations=-1", "stage.target_flops=null"]
    assert c.overrides("pipeline.base.")[1].startswith("pipeline.base.param_data_ratio=")
    assert tiny_plan(c.depth, c.param_data_ratio).num_steps == c.plan.num_steps
    from nanochat.hardware import HardwareConfig

    table = c.describe(HardwareConfig(power_watts=100, price_per_hour=2.0))
    assert "total" in table and "energy" in table and "cost" in table
    assert json.loads(json.dumps(c.as_dict()))["depth"] == c.depth


def test_rate_model_interpolates_through_flops():
    slow, fast = 1e10, 3e10
    rates = RateModel({2: fake_result(2, slow), 6: fake_result(6, fast)})
    assert rates.flops_per_s(4) == pytest.approx((slow + fast) / 2)
    assert rates.flops_per_s(1) == pytest.approx(slow) and rates.flops_per_s(12) == pytest.approx(fast)
    p = tiny_plan(4, 20.0)
    assert rates.micro_seconds(4, p.flops_per_token, 8192) == pytest.approx(8192 * p.flops_per_token / 2e10)


# -- the probe and its cache ---------------------------------------------------------------------------------
SETUP = ProbeSetup(device="cpu", torch="2.x", precision="32-true", compile=False, seq_len=64, device_batch_size=2,
                   preset="v0")


def test_cache_round_trip(tmp_path):
    path = tmp_path / "probe.json"
    assert cached(SETUP.key(2), path) is None
    save_result(SETUP.key(2), fake_result(2), path)
    save_result(SETUP.key(4), fake_result(4), path)
    assert cached(SETUP.key(2), path) == fake_result(2) and cached(SETUP.key(4), path) == fake_result(4)
    other = ProbeSetup(**{**SETUP.__dict__, "precision": "bf16-mixed"})
    assert cached(other.key(2), path) is None  # another precision is another measurement
    path.write_text("{not json")
    assert load_cache(path) == {}  # a damaged cache is measured again, never an error


def test_probe_measures_once_then_reads_the_cache(tmp_path):
    path, calls = tmp_path / "probe.json", []

    def measure(plan, setup):
        calls.append(plan.depth)
        return fake_result(plan.depth)

    plans = {d: tiny_plan(d, 20.0) for d in (1, 2)}
    first, spent = probe(plans, SETUP, path, measure_fn=measure, log=lambda *_: None)
    again, spent_again = probe(plans, SETUP, path, measure_fn=measure, log=lambda *_: None)
    assert calls == [1, 2] and first == again and spent_again == 0.0


def test_real_probe_measures_a_tiny_model(one_thread):
    from nanochat.throughput_probe import measure

    plan = scaling.plan(1, vocab_size=256, seq_len=32, device_batch_size=2, head_dim=32, num_iterations=4,
                        total_batch_tokens=64)
    r = measure(plan, ProbeSetup("cpu", "x", "32-true", False, 32, 2, "v0"), micro_steps=2, warmup_steps=1,
                decode_steps=2)
    assert r.tok_per_s > 0 and r.optimizer_s > 0 and r.decode_s > 0 and r.tokens_per_micro == 64


# -- on this CPU: a real probe, the planner, two budgets -------------------------------------------------------
def test_cpu_budget_20m_picks_a_smaller_model_than_4h(tmp_path, monkeypatch):
    from nanochat.config.app import compose
    from nanochat.stages.budget_plan import choose_for

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    args = ["stage=base", "hardware=cpu", "plan_only=true", "model.sequence_len=128", "hardware.device_batch_size=4",
            "data.tokenizer.vocab_size=512"]  # no tokenizer in the fresh base dir: base plans with this vocabulary
    lines = []
    picks = {}
    for b in ("20m", "4h"):
        t = time.perf_counter()
        cfg = compose("train", [*args, f"time_budget={b}"])
        picks[b] = choose_for(cfg, ["base"], {"base": cfg}, log=lines.append, since=t)
    assert picks["20m"].depth < picks["4h"].depth, "\n".join(lines)
    for c in picks.values():
        assert c.total_s <= c.budget_s
    assert "(cached)" in "\n".join(lines)  # the second budget reuses the first's measurements
    assert json.loads((tmp_path / "throughput_probe.json").read_text())


# -- a real run ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_base_run_finishes_within_its_budget(tmp_path):
    import subprocess

    from nanochat.tokenizer import Tokenizer
    from tests.helpers import write_text_corpus

    corpus = write_text_corpus(tmp_path / "corpus", n_files=6, words=1500)
    Tokenizer.byte_level().save(tmp_path / "tok")
    run = tmp_path / "out"
    budget_s = 180
    t = time.time()
    proc = subprocess.run(train_cmd(["stage=base", "hardware=cpu", "data=local", f"data.path={corpus}",
                                     "data.val_fraction=0.34", f"tokenizer_dir={tmp_path / 'tok'}", "logger=none",
                                     f"time_budget={budget_s}s", f"hydra.run.dir={run}"]),
                          cwd=ROOT, env=env_for(tmp_path / "base"), capture_output=True, text=True, timeout=600)
    wall = time.time() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time budget 3.0 min" in proc.stdout
    decision = json.loads((run / "summary.json").read_text())["time_budget"]
    assert decision == json.loads((run / "budget.json").read_text())
    table = proc.stdout[:proc.stdout.find("plan:")]
    trained = [line for line in proc.stdout.splitlines() if " steps in " in line]
    assert abs(wall - budget_s) <= 0.15 * budget_s, f"{wall:.0f} s for a {budget_s} s budget\n{table}{trained}"


def test_pipeline_workload_has_every_stage(tmp_path, monkeypatch):
    from nanochat.config.app import compose
    from nanochat.stages.budget_plan import last_wins, workload

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))  # no tokenizer yet: mixtures counted at a BPE's rate
    cfg = compose("train", ["stage=all", "hardware=cpu"])
    stages = ["tokenizer", "base", "mid", "sft"]
    stage_cfgs = {s: compose("train", ["hardware=cpu", f"stage={s}", "plan_only=true"]) for s in stages[1:]}
    w = workload(cfg, stages, stage_cfgs, lambda d: tiny_plan(d, 20.0))
    assert w.tokenizer_s > 0 and w.mid_tokens > 0 and w.mid_batch_tokens == 8192
    assert w.sft_steps == -(-1500 // 32)  # offline_sft: 1,500 conversations, 32 per step
    assert set(w.eval_forward_tokens) == {"base", "mid", "sft"} and w.eval_decode_tokens["sft"] > 0
    costs = budget.stage_costs(tiny_plan(2, 20.0), RateModel({2: fake_result(2)}), w)
    assert [c.name for c in costs] == ["tokenizer", "base", "mid", "sft", "eval base", "eval mid", "eval sft"]
    assert all(c.seconds > 0 for c in costs)
    assert last_wins(["model.depth=4", "a=1", "model.depth=2"]) == ["a=1", "model.depth=2"]
