import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.common import NanochatError
from nanochat.gpt import GPT
from nanochat.scaling import (
    PRESETS,
    count_params,
    grad_accum_steps,
    model_config,
    model_dim,
    muon_weight_decay_for_depth,
    plan,
)


@pytest.mark.parametrize(
    "depth,d_model,n_head", [(2, 128, 1), (4, 256, 2), (12, 768, 6), (16, 1024, 8), (20, 1280, 10), (25, 1664, 13)]
)
def test_model_config_widths(depth, d_model, n_head):
    cfg = model_config(depth)
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (d_model, n_head, n_head, 128)
    assert cfg.n_layer == depth and cfg.vocab_size == 65536 and cfg.sequence_len == 2048


def test_model_config_tiny_and_switches():
    cfg = model_config(3, vocab_size=500, seq_len=64, head_dim=64, n_kv_head=1, window_pattern="SL")
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (192, 3, 1, 64)
    assert model_dim(5, 64, 128) == 384  # 320 rounded up to a multiple of 128
    with pytest.raises(NanochatError):
        model_config(4, not_a_switch=True)


def test_reference_counts_and_v0_horizon():
    # v0: d20 (561M params) at 20 tokens/param with a 524,288-token batch is the 21,400-step speedrun
    p = plan(20, device_batch_size=32, world_size=8)
    assert p.n_params == 560_988_160 and p.num_steps == 21_400 and p.grad_accum == 1
    assert count_params(model_config(16)) == 335_544_320
    assert p.effective_lrs["embedding"] == pytest.approx(0.2 * (1280 / 768) ** -0.5)
    assert p.effective_lrs["unembedding"] == pytest.approx(0.004 * (1280 / 768) ** -0.5)
    assert p.effective_lrs["matrix"] == 0.02


def test_jan2026_preset_matches_the_reference_run():
    # leaderboard run 1 (commit 348fbb3): d24, ratio 12 -> step 16704, total_training_flops 4.330784131228946e19
    p = plan(24, preset="jan2026", param_data_ratio=12, device_batch_size=16, world_size=8)
    assert p.model.vocab_size == 32768 and p.model.n_embd == 1536
    assert p.num_steps == 16_704
    assert p.grad_accum == 2
    assert p.total_flops == pytest.approx(4.330784131228946e19, rel=1e-12)
    assert p.optim.muon_weight_decay == pytest.approx(0.2 * (12 / 24) ** 2)
    assert (p.schedule.warmup_steps, p.schedule.warmdown_ratio, p.schedule.final_lr_frac) == (0, 0.5, 0.0)
    with torch.device("meta"):
        model = GPT(p.model)
    assert model.num_params() == p.n_params
    assert model.estimate_flops() * p.total_tokens == pytest.approx(p.total_flops)


def test_horizon_precedence():
    kw = dict(depth=4, device_batch_size=8, seq_len=256, world_size=1, total_batch_tokens=8 * 256 * 2)
    assert plan(**kw, num_iterations=7, target_flops=1e15).num_steps == 7
    p = plan(**kw, target_flops=1e13)
    assert p.horizon_source == "target_flops"
    assert p.num_steps == round(1e13 / (p.flops_per_token * p.total_batch_tokens))
    p = plan(**kw, param_data_ratio=20)
    assert p.num_steps == 20 * p.n_params // p.total_batch_tokens
    with pytest.raises(NanochatError):
        plan(**kw, param_data_ratio=-1)


def test_grad_accum_and_error_message():
    assert grad_accum_steps(524288, 32, 2048, 8) == 1
    assert grad_accum_steps(524288, 4, 2048, 1) == 64
    with pytest.raises(NanochatError) as err:
        grad_accum_steps(524288, 3, 2048, 1)
    msg = str(err.value)
    for needle in ("524,288", "device_batch_size 3", "2,048", "world_size 1", "6,144", "device_batch_size=2"):
        assert needle in msg
    assert "522,240 or 528,384" in msg
    with pytest.raises(NanochatError):
        plan(12, device_batch_size=24, world_size=1)
    with pytest.raises(NanochatError):
        grad_accum_steps(524288, 0, 2048, 1)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 64), st.sampled_from([128, 256, 512, 1024, 2048]), st.integers(1, 8), st.integers(1, 64)
)
def test_grad_accum_property(batch, seq, world, accum):
    total = batch * seq * world * accum
    assert grad_accum_steps(total, batch, seq, world) == accum
    with pytest.raises(NanochatError):  # one token more never divides (a micro-step is >= 128 tokens)
        grad_accum_steps(total + 1, batch, seq, world)


def test_estimated_hours_and_describe():
    p = plan(16, device_batch_size=4, world_size=1)
    hours = p.estimated_hours(100e12, mfu=0.5)
    assert hours == pytest.approx(p.total_flops / (100e12 * 0.5) / 3600)
    text = p.describe()
    assert "MFU" not in text  # the one time estimate is nanochat.hardware.estimate_run's
    for needle in ("depth 16", "1024", "accumulation", "steps"):
        assert needle in text
    assert plan(24, preset="jan2026", device_batch_size=16, world_size=8).describe().count("\n") >= 8
    with pytest.raises(NanochatError):
        p.estimated_hours(0)


def test_presets_and_weight_decay_scaling():
    assert set(PRESETS) >= {"v0", "jan2026"}
    assert muon_weight_decay_for_depth(0.2, 12) == 0.2
    assert muon_weight_decay_for_depth(0.2, 20) == pytest.approx(0.072)
    with pytest.raises(NanochatError):
        plan(4, preset="nope")
    p = plan(4, preset="jan2026", device_batch_size=2, seq_len=256, total_batch_tokens=2 * 256 * 4, head_dim=64)
    assert p.lr_scale == pytest.approx((2048 / 2**19) ** 0.5)
    assert p.model.value_embeds and p.model.resid_scalars and p.model.window_pattern == "SSSL"
    kw = p.optimizer_kwargs()
    assert kw["settings"].muon_orthogonalizer == "polar_express" and kw["d_model"] == 256


def test_plan_accepts_a_model_config():
    cfg = model_config(4, vocab_size=1000, seq_len=256, head_dim=64, value_embeds=True)
    p = plan(cfg, device_batch_size=4, world_size=1, total_batch_tokens=4 * 256 * 2, num_iterations=None,
             param_data_ratio=None, matrix_lr=None)
    assert p.model is cfg and p.depth == 4 and p.seq_len == 256 and p.grad_accum == 2
    assert p.num_steps == 20 * count_params(cfg) // (4 * 256 * 2)
    with pytest.raises(NanochatError):
        plan(cfg, device_batch_size=4, total_batch_tokens=1024, window_pattern="SL")
