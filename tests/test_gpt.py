import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.gpt import GPT, GPTConfig, apply_rotary, window_sizes
from nanochat.scaling import count_params, count_params_breakdown, flops_per_token, model_config


def tiny(**kw) -> GPTConfig:
    base = dict(sequence_len=32, vocab_size=97, n_layer=2, n_head=4, n_kv_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    model = GPT(cfg)
    torch.manual_seed(seed)  # after construction: init_weights alone decides the values
    model.init_weights()
    return model


def randomize_outputs(model: GPT, seed: int = 1) -> None:
    """Give the zero-initialised output projections and lm_head some weight so the tests see signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


ALL_FEATURES = dict(window_pattern="SL", value_embeds=True, resid_scalars=True, init="jan2026")
JUL_FEATURES = dict(window_pattern="SSSL", short_window_multiple=8, value_embeds=True, ve_gate_channels=12,
                    ve_gate_scale=3.0, resid_scalars=True, smear=True, backout=True, qk_scale=1.2, init="jul2026")


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("features", [{}, ALL_FEATURES, JUL_FEATURES, dict(backout=True)])
def test_param_count_analytic_equals_actual(depth, features):
    cfg = model_config(depth, vocab_size=101, seq_len=16, head_dim=32, **features)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == count_params(cfg)
    assert model.num_scaling_params() == count_params_breakdown(cfg)
    assert model.estimate_flops() == flops_per_token(cfg)


def test_reference_param_counts():
    # nanochat v0: d16 ~ 335M, d20 = 561M (vocab 65,536)
    assert count_params(model_config(16)) == 335_544_320
    assert count_params(model_config(20)) == 560_988_160
    with torch.device("meta"):
        assert GPT(model_config(20)).num_params() == 560_988_160


def test_estimate_flops_formula():
    cfg = model_config(20)
    with torch.device("meta"):
        model = GPT(cfg)
    n, emb = model.num_params(), cfg.vocab_size * cfg.n_embd
    expected = 6 * (n - emb) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.sequence_len
    assert model.estimate_flops() == expected == 3_491_758_080


def test_forward_shapes_and_loss_reductions():
    cfg = tiny()
    model = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 10))
    logits = model(idx)
    assert logits.shape == (3, 10, cfg.vocab_size) and logits.dtype == torch.float32
    targets = torch.randint(0, cfg.vocab_size, (3, 10))
    targets[0, :4] = -1
    none = model(idx, targets, loss_reduction="none")
    assert none.shape == (3, 10)
    assert torch.all(none[0, :4] == 0)
    total = model(idx, targets, loss_reduction="sum")
    mean = model(idx, targets)
    assert torch.allclose(total, none.sum())
    assert torch.allclose(mean, none.sum() / (targets != -1).sum())
    with pytest.raises(ValueError):
        model(idx, targets, loss_reduction="avg")


@pytest.mark.parametrize("vocab", [97, 1000])
def test_initial_loss_is_uniform(vocab):
    model = build(tiny(vocab_size=vocab))  # v0 init zeroes lm_head: every logit is exactly 0
    idx = torch.randint(0, vocab, (2, 16))
    loss = model(idx, torch.randint(0, vocab, (2, 16)))
    assert loss.item() == pytest.approx(math.log(vocab), abs=1e-6)


def test_jan2026_init_loss_close_to_uniform():
    model = build(tiny(vocab_size=500, **ALL_FEATURES))
    idx = torch.randint(0, 500, (2, 16))
    assert model(idx, torch.randint(0, 500, (2, 16))).item() == pytest.approx(math.log(500), abs=0.05)


def test_init_statistics_v0():
    cfg = model_config(2, vocab_size=300, seq_len=16, head_dim=64)  # d_model 128
    model = build(cfg)
    block = model.transformer.h[0]
    d = cfg.n_embd
    assert block.attn.c_q.weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.1)
    # c_fc: fan_in d, fan_out 4d -> min(1, sqrt(4)) = 1; 1/sqrt(d)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.1)
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)
    for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight, model.lm_head.weight):
        assert torch.count_nonzero(w) == 0


def test_softcap_bounds_logits():
    cfg = tiny(logit_softcap=15.0)
    model = build(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 100.0)
    logits = model(torch.randint(0, cfg.vocab_size, (2, 8)))
    assert logits.abs().max().item() <= 15.0
    assert logits.abs().max().item() > 14.0  # the cap is actually reached


@pytest.mark.parametrize("features", [{}, ALL_FEATURES, dict(n_kv_head=1)])
def test_causal(features):
    cfg = tiny(**features)
    model = build(cfg)
    randomize_outputs(model)
    idx = torch.randint(0, cfg.vocab_size, (1, 20))
    base = model(idx)
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % cfg.vocab_size
    out = model(changed)
    assert torch.allclose(base[0, :12], out[0, :12], atol=1e-5)
    assert not torch.allclose(base[0, 12:], out[0, 12:], atol=1e-5)


def test_window_sizes_pattern():
    assert window_sizes(tiny(n_layer=1, window_pattern="S")) == [32]  # the last layer is always full
    assert window_sizes(tiny(n_layer=4, window_pattern="SSSL", short_window_frac=0.25)) == [8, 8, 8, 32]
    assert window_sizes(tiny(n_layer=3, window_pattern="sl", short_window_frac=0.5)) == [16, 32, 32]
    assert window_sizes(tiny(n_layer=3)) == [32, 32, 32]


def test_sliding_window_limits_context():
    # two layers that both look 4 tokens back: position t only depends on tokens t-8 .. t
    model = build(tiny(n_layer=2, window_pattern="S", short_window_frac=0.125))
    randomize_outputs(model)
    model.window_sizes = [4, 4]
    idx = torch.randint(0, 97, (1, 24))
    base = model(idx)
    changed = idx.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 97
    out = model(changed)
    assert torch.allclose(base[0, 9:], out[0, 9:], atol=1e-5)
    assert not torch.allclose(base[0, 1:5], out[0, 1:5], atol=1e-5)


def test_gqa_matches_repeated_heads():
    cfg = tiny(n_head=4, n_kv_head=2)
    gqa = build(cfg)
    randomize_outputs(gqa)
    full = GPT(tiny(n_head=4, n_kv_head=4))
    full.init_weights()
    sd = gqa.state_dict()
    hd = cfg.head_dim
    for i in range(cfg.n_layer):
        for name in ("c_k", "c_v"):
            w = sd[f"transformer.h.{i}.attn.{name}.weight"].view(2, hd, cfg.n_embd)
            sd[f"transformer.h.{i}.attn.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(4 * hd, cfg.n_embd)
    full.load_state_dict(sd)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    assert torch.allclose(gqa(idx), full(idx), atol=1e-5)
    assert gqa.num_params() < full.num_params()


def test_rotary_is_a_rotation_and_relative():
    x = torch.randn(1, 5, 2, 8)
    cfg = tiny(n_embd=16, n_head=2, n_kv_head=2)
    model = build(cfg)
    cos, sin = model.cos[:, :5], model.sin[:, :5]
    y = apply_rotary(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[:, 0], x[:, 0])  # position 0 is the identity
    # dot products depend only on the offset between positions
    q, k = torch.randn(8), torch.randn(8)
    qs = apply_rotary(q.expand(1, 5, 1, 8), cos, sin)[0, :, 0]
    ks = apply_rotary(k.expand(1, 5, 1, 8), cos, sin)[0, :, 0]
    assert torch.allclose(qs[3] @ ks[1], qs[4] @ ks[2], atol=1e-5)


def test_meta_device_init():
    cfg = tiny(**ALL_FEATURES)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.transformer.wte.weight.is_meta
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    ref = build(cfg, seed=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(model.cos, ref.cos) and torch.equal(model.sin, ref.sin)
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    assert torch.isfinite(model(idx)).all()


def test_load_state_dict_rebuilds_rotary_buffers():
    cfg = tiny()
    ref = build(cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.cos.fill_(float("nan"))
    model.load_state_dict(ref.state_dict())
    assert torch.equal(model.cos, ref.cos)
    assert "cos" not in ref.state_dict()


def test_param_groups_cover_everything():
    model = build(tiny(**ALL_FEATURES))
    groups = model.param_groups()
    assert set(groups) == {"matrix", "embedding", "lm_head", "value_embeds", "resid_scalars", "x0_scalars"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.ndim == 2 for p in groups["matrix"])
    assert set(build(tiny()).param_groups()) == {"matrix", "embedding", "lm_head"}


def test_smear_group_and_counts():
    model = build(tiny(**JUL_FEATURES))
    groups = model.param_groups()
    assert groups["smear"] == [model.smear_gate.weight, model.smear_lambda, model.backout_lambda]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.ndim == 2 for p in groups["matrix"])  # ve_gate in the blocks (Muon), the smear gate outside
    counts = model.num_scaling_params()
    assert counts["scalars"] == 2 * 2 + 24 + 1 + 1
    assert counts["total"] == model.num_params()
    only_backout = build(tiny(backout=True))
    assert only_backout.param_groups()["smear"] == [only_backout.backout_lambda]
    # FLOPs count every 2-D weight but the embedding tables, the smear gate included (as the reference does)
    cfg = model.config
    tables = cfg.vocab_size * cfg.n_embd + sum(p.numel() for p in model.value_embeds.parameters())
    dense = counts["transformer_matrices"] + counts["lm_head"] + 24
    attn = sum(12 * cfg.n_head * cfg.head_dim * w for w in model.window_sizes)
    assert model.estimate_flops() == 6 * dense + attn
    assert tables + dense + 2 * 2 + 2 == model.num_params()


def test_flops_follow_parameter_shapes_not_module_classes():
    """Swapping a Linear for another module with the same weight (as an fp8 conversion does) keeps its FLOPs."""
    model = build(tiny(**JUL_FEATURES))
    before = model.estimate_flops()

    class Other(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

    for block in model.transformer.h:
        block.mlp.c_fc = Other(block.mlp.c_fc.weight)
    model.lm_head = Other(model.lm_head.weight)
    assert model.estimate_flops() == before


def test_value_embeddings_and_scalars_init():
    model = build(tiny(n_layer=4, **ALL_FEATURES))
    assert sorted(model.value_embeds.keys()) == ["1", "3"]  # alternate layers, last included
    assert [b.attn.ve_gate is not None for b in model.transformer.h] == [False, True, False, True]
    assert torch.all(model.resid_lambdas == 1.0) and torch.allclose(model.x0_lambdas, torch.full((4,), 0.1))
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)


def test_backward_reaches_every_parameter():
    cfg = tiny(**ALL_FEATURES)
    model = build(cfg)
    randomize_outputs(model)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    model(idx, torch.randint(0, cfg.vocab_size, (2, 16))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_generate_is_deterministic_and_keeps_global_rng():
    cfg = tiny()
    model = build(cfg)
    randomize_outputs(model)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = list(model.generate([1, 2, 3], max_tokens=8, temperature=1.0, top_k=5, seed=7))
    assert torch.equal(before, torch.random.get_rng_state())
    b = list(model.generate([1, 2, 3], max_tokens=8, temperature=1.0, top_k=5, seed=7))
    assert a == b and len(a) == 8 and all(0 <= t < cfg.vocab_size for t in a)
    greedy = list(model.generate([1, 2, 3], max_tokens=4, temperature=0.0))
    ids = torch.tensor([[1, 2, 3]])
    for t in greedy:
        assert t == model(ids)[0, -1].argmax().item()
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    # longer than the context: the window slides
    assert len(list(model.generate(list(range(40)), max_tokens=3))) == 3


def test_bad_configs_are_user_errors():
    with pytest.raises(NanochatError):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(NanochatError):
        GPTConfig(n_head=6, n_kv_head=4)
    with pytest.raises(NanochatError):
        GPTConfig(window_pattern="SXL")


def test_bf16_autocast_forward_backward():
    cfg = tiny(**ALL_FEATURES)
    model = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), idx.view(-1))
    assert logits.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
