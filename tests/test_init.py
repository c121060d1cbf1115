"""GPT.build and init_weights: meta construction, the reference's order of random draws, init statistics.

The replays below restate the reference's draw order with plain torch calls on same-shaped tensors; a build
from the same seed must reproduce them bit for bit and leave the global RNG exactly where they leave it.
"""
import math

import pytest
import torch
import torch.nn as nn

from nanochat.common import NanochatError
from nanochat.gpt import GPT, GPTConfig

JAN = dict(window_pattern="SSSL", short_window_frac=0.5, value_embeds=True, resid_scalars=True, x0_init=0.1,
           init="jan2026")
JUL = dict(window_pattern="SSSL", short_window_frac=0.25, short_window_multiple=128, value_embeds=True,
           ve_gate_channels=12, ve_gate_scale=3.0, resid_scalars=True, smear=True, backout=True, qk_scale=1.2,
           rope_base=100000.0, init="jul2026")


def tiny(**kw) -> GPTConfig:
    base = dict(sequence_len=16, vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    base.update(kw)
    return GPTConfig(**base)


def seeded_build(cfg: GPTConfig, seed: int, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT.build(cfg, **kw)


def _linear_shapes(cfg: GPTConfig) -> list[tuple[str, tuple[int, int]]]:
    d, hd = cfg.n_embd, cfg.head_dim
    return [
        ("attn.c_q", (cfg.n_head * hd, d)),
        ("attn.c_k", (cfg.n_kv_head * hd, d)),
        ("attn.c_v", (cfg.n_kv_head * hd, d)),
        ("attn.c_proj", (d, cfg.n_head * hd)),
        ("mlp.c_fc", (4 * d, d)),
        ("mlp.c_proj", (d, 4 * d)),
    ]


def replay_v0(cfg: GPTConfig, device="cpu") -> dict[str, torch.Tensor]:
    """First release: model.apply(_init_weights) -> wte, then every Linear of every block, then lm_head."""
    out = {}

    def normal(name, shape, std):
        out[name] = torch.empty(shape, device=device).normal_(0.0, std)

    def std_for(fan_out, fan_in):  # the reference's float expression, so the values match bitwise
        return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))

    normal("transformer.wte.weight", (cfg.vocab_size, cfg.n_embd), 1.0)
    for i in range(cfg.n_layer):
        for name, shape in _linear_shapes(cfg):
            normal(f"transformer.h.{i}.{name}.weight", shape, std_for(*shape))
    normal("lm_head.weight", (cfg.vocab_size, cfg.n_embd), std_for(cfg.vocab_size, cfg.n_embd))
    return out


def replay_jan2026(cfg: GPTConfig, device="cpu") -> dict[str, torch.Tensor]:
    """Commit 348fbb3: wte, lm_head, per block c_q c_k c_v c_fc (uniform), then value embeddings by layer."""
    out = {}
    s = 3**0.5 * cfg.n_embd**-0.5
    out["transformer.wte.weight"] = torch.empty(cfg.vocab_size, cfg.n_embd, device=device).normal_(0.0, 1.0)
    out["lm_head.weight"] = torch.empty(cfg.vocab_size, cfg.n_embd, device=device).normal_(0.0, 0.001)
    shapes = dict(_linear_shapes(cfg))
    for i in range(cfg.n_layer):
        for name in ("attn.c_q", "attn.c_k", "attn.c_v", "mlp.c_fc"):
            out[f"transformer.h.{i}.{name}.weight"] = torch.empty(shapes[name], device=device).uniform_(-s, s)
    if cfg.value_embeds:
        kv_dim = cfg.n_kv_head * cfg.head_dim
        for i in range(cfg.n_layer):
            if i % 2 == (cfg.n_layer - 1) % 2:  # alternating layers, the last one included
                out[f"value_embeds.{i}.weight"] = torch.empty(cfg.vocab_size, kv_dim, device=device).uniform_(-s, s)
    return out


def replay_jul2026(cfg: GPTConfig, device="cpu") -> dict[str, torch.Tensor]:
    """HEAD 92d63d4: wte, lm_head, per block c_q c_k c_v c_fc(0.4 s), smear gate, value embeddings, ve gates."""
    out = {}
    s = 3**0.5 * cfg.n_embd**-0.5
    out["transformer.wte.weight"] = torch.empty(cfg.vocab_size, cfg.n_embd, device=device).normal_(0.0, 0.8)
    out["lm_head.weight"] = torch.empty(cfg.vocab_size, cfg.n_embd, device=device).normal_(0.0, 0.001)
    shapes = dict(_linear_shapes(cfg))
    for i in range(cfg.n_layer):
        for name in ("attn.c_q", "attn.c_k", "attn.c_v", "mlp.c_fc"):
            bound = s * 0.4 if name == "mlp.c_fc" else s
            out[f"transformer.h.{i}.{name}.weight"] = torch.empty(shapes[name], device=device).uniform_(-bound, bound)
    if cfg.smear:
        out["smear_gate.weight"] = torch.empty(1, 24, device=device).uniform_(0.0, 0.02)
    ve_layers = [i for i in range(cfg.n_layer) if i % 2 == (cfg.n_layer - 1) % 2] if cfg.value_embeds else []
    kv_dim = cfg.n_kv_head * cfg.head_dim
    for i in ve_layers:
        out[f"value_embeds.{i}.weight"] = torch.empty(cfg.vocab_size, kv_dim, device=device).uniform_(-s, s)
    for i in ve_layers:
        gate = torch.empty(cfg.n_kv_head, min(cfg.ve_gate_channels, cfg.n_embd), device=device).uniform_(0.0, 0.02)
        out[f"transformer.h.{i}.attn.ve_gate.weight"] = gate
    return out


def expected_constants(cfg: GPTConfig) -> dict[str, float]:
    """Every parameter the replay does not draw: its constant value."""
    consts = {"lm_head.weight": 0.0} if cfg.init == "v0" else {}
    for i in range(cfg.n_layer):
        consts[f"transformer.h.{i}.attn.c_proj.weight"] = 0.0
        consts[f"transformer.h.{i}.mlp.c_proj.weight"] = 0.0
        if cfg.value_embeds and i % 2 == (cfg.n_layer - 1) % 2 and cfg.init != "jul2026":
            consts[f"transformer.h.{i}.attn.ve_gate.weight"] = 0.0
    if cfg.resid_scalars and cfg.init == "jul2026":  # ramps over the layers, the reference's float expressions
        L = cfg.n_layer
        consts["resid_lambdas"] = torch.tensor([1.15 - (0.10 * i / max(L - 1, 1)) for i in range(L)])
        consts["x0_lambdas"] = torch.tensor([0.20 - (0.15 * i / max(L - 1, 1)) for i in range(L)])
    elif cfg.resid_scalars:
        consts["resid_lambdas"] = 1.0
        consts["x0_lambdas"] = cfg.x0_init
    if cfg.smear:
        consts["smear_lambda"] = 0.0
    if cfg.backout:
        consts["backout_lambda"] = 0.2
    return consts


CASES = {
    "v0": (tiny(), replay_v0),
    "v0-mqa-d3": (tiny(n_layer=3, n_kv_head=1), replay_v0),
    "jan2026": (tiny(**JAN), replay_jan2026),
    "jan2026-d11": (tiny(n_layer=11, n_embd=32, n_head=2, n_kv_head=1, **JAN), replay_jan2026),  # layer "10" after "2"
    "jan2026-plain": (tiny(init="jan2026"), replay_jan2026),
    "jul2026": (tiny(**JUL), replay_jul2026),
    "jul2026-d5-mqa": (tiny(n_layer=5, n_kv_head=1, **JUL), replay_jul2026),
    "jul2026-plain": (tiny(init="jul2026"), replay_jul2026),
}


def check_against_replay(model: GPT, cfg: GPTConfig, drawn: dict, after_build: torch.Tensor, after_replay):
    state = model.state_dict()
    consts = expected_constants(cfg)
    assert set(state) == set(drawn) | set(consts)  # every tensor is accounted for
    for name, tensor in state.items():
        if name in consts:
            assert torch.all(tensor == consts[name]), name
        else:
            assert torch.equal(tensor, drawn[name]), name  # same values: same draws, same order, same scales
    assert torch.equal(after_build, after_replay)  # and nothing else was drawn


@pytest.mark.parametrize("case", list(CASES))
def test_build_draws_exactly_the_reference_sequence(case):
    cfg, replay = CASES[case]
    model = seeded_build(cfg, 1234)
    after_build = torch.rand(8)
    torch.manual_seed(1234)
    drawn = replay(cfg)
    after_replay = torch.rand(8)
    check_against_replay(model, cfg, drawn, after_build, after_replay)


@pytest.mark.parametrize("init", ["v0", "jan2026", "jul2026"])
def test_same_seed_same_model_other_seed_other_model(init):
    cfg = tiny(**{"v0": {}, "jan2026": JAN, "jul2026": JUL}[init])
    a, b, c = seeded_build(cfg, 7), seeded_build(cfg, 7), seeded_build(cfg, 8)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)
    assert torch.equal(a.cos, b.cos) and torch.equal(a.sin, b.sin)


def _boom(*args, **kwargs):
    raise AssertionError("a default initialiser ran")


@pytest.mark.parametrize("cfg", [tiny(), tiny(**JAN), tiny(**JUL)], ids=["v0", "jan2026", "jul2026"])
def test_no_default_initialiser_runs(monkeypatch, cfg):
    monkeypatch.setattr(nn.init, "kaiming_uniform_", _boom)
    monkeypatch.setattr(nn.Linear, "reset_parameters", _boom)
    monkeypatch.setattr(nn.Embedding, "reset_parameters", _boom)
    model = seeded_build(cfg, 0)
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all()
    # plain construction (any device) draws nothing either: init_weights is the only initialiser
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    GPT(cfg)
    assert torch.equal(torch.rand(4), expected)


def _reference_rotary(cfg: GPTConfig, length: int):
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


@pytest.mark.parametrize("init_weights", [True, False])
def test_rotary_buffers_are_real_after_build(init_weights):
    cfg = tiny(rope_base=100000.0)
    model = GPT.build(cfg, device="cpu", init_weights=init_weights)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    cos, sin = _reference_rotary(cfg, cfg.sequence_len * GPT.ROTARY_OVERSIZE)
    assert model.cos.shape == cos.shape and model.cos.device.type == "cpu"
    assert torch.equal(model.cos, cos) and torch.equal(model.sin, sin)


def test_uninitialised_build_then_load_matches_source():
    cfg = tiny(**JAN)
    src = seeded_build(cfg, 3)
    dst = GPT.build(cfg, init_weights=False)
    dst.load_state_dict(src.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    assert torch.equal(src(idx), dst(idx))


def test_bad_device_is_a_user_error():
    with pytest.raises(NanochatError, match="device"):
        GPT.build(tiny(), device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(NanochatError, match="CUDA"):
            GPT.build(tiny(), device="cuda")


# -- statistics (DESIGN.md): the schemes as the reference describes them ----------------------------------------
def _assert_normal(w: torch.Tensor, std: float, name: str):
    n = w.numel()
    assert w.std().item() == pytest.approx(std, rel=0.1), name
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n), name
    # a normal sample of this size reaches beyond 2.5 sigma; a uniform one of the same std stops at 1.73 sigma
    assert w.abs().max().item() > 2.5 * std, name


def _assert_uniform(w: torch.Tensor, bound: float, name: str):
    assert w.abs().max().item() <= bound, name
    assert w.abs().max().item() > 0.95 * bound, name
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name


STATS_CFG = dict(sequence_len=16, vocab_size=512, n_layer=2, n_head=4, n_kv_head=1, n_embd=128)  # c_k: 32 x 128


def test_v0_statistics_per_layer():
    cfg = GPTConfig(**STATS_CFG)
    model = seeded_build(cfg, 0)
    d = cfg.n_embd
    _assert_normal(model.transformer.wte.weight, 1.0, "wte")
    for i, block in enumerate(model.transformer.h):
        for name in ("c_q", "c_k", "c_v"):
            w = getattr(block.attn, name).weight
            fan_out, fan_in = w.shape
            std = 1 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
            _assert_normal(w, std, f"{i}.{name}")
        assert block.attn.c_k.weight.std().item() == pytest.approx(0.5 / math.sqrt(d), rel=0.1)  # GQA: fan_out d/4
        _assert_normal(block.mlp.c_fc.weight, 1 / math.sqrt(d), f"{i}.c_fc")  # fan_out 4d: min(1, 2) = 1
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
    assert torch.count_nonzero(model.lm_head.weight) == 0
    # every logit is 0 at init: the loss is exactly ln(V)
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    assert model(idx, idx).item() == pytest.approx(math.log(cfg.vocab_size), abs=1e-6)


def test_jan2026_statistics_per_layer():
    cfg = GPTConfig(**STATS_CFG, **{**JAN, "x0_init": 0.0})
    model = seeded_build(cfg, 0)
    bound = math.sqrt(3) / math.sqrt(cfg.n_embd)
    _assert_normal(model.transformer.wte.weight, 1.0, "wte")
    _assert_normal(model.lm_head.weight, 0.001, "lm_head")
    for i, block in enumerate(model.transformer.h):
        for name, lin in (("c_q", block.attn.c_q), ("c_k", block.attn.c_k), ("c_v", block.attn.c_v),
                          ("c_fc", block.mlp.c_fc)):
            _assert_uniform(lin.weight, bound, f"{i}.{name}")
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        if block.attn.ve_gate is not None:
            assert torch.count_nonzero(block.attn.ve_gate.weight) == 0
    assert sorted(model.value_embeds.keys()) == ["1"]
    _assert_uniform(model.value_embeds["1"].weight, bound, "value_embeds.1")
    assert torch.all(model.resid_lambdas == 1.0) and torch.all(model.x0_lambdas == 0.0)


def test_jul2026_statistics_per_layer():
    cfg = GPTConfig(**{**STATS_CFG, **JUL, "n_layer": 4})
    model = seeded_build(cfg, 0)
    s = math.sqrt(3) / math.sqrt(cfg.n_embd)
    _assert_normal(model.transformer.wte.weight, 0.8, "wte")
    _assert_normal(model.lm_head.weight, 0.001, "lm_head")
    for i, block in enumerate(model.transformer.h):
        for name, lin, bound in (("c_q", block.attn.c_q, s), ("c_k", block.attn.c_k, s), ("c_v", block.attn.c_v, s),
                                 ("c_fc", block.mlp.c_fc, 0.4 * s)):
            _assert_uniform(lin.weight, bound, f"{i}.{name}")
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        if block.attn.ve_gate is not None:  # U(0, 0.02): every gate starts slightly above 3 * sigmoid(0)
            w = block.attn.ve_gate.weight
            assert w.shape == (cfg.n_kv_head, 12) and w.min() >= 0 and 0.015 < w.max() <= 0.02
    assert sorted(model.value_embeds.keys()) == ["1", "3"]
    for key in ("1", "3"):
        _assert_uniform(model.value_embeds[key].weight, s, f"value_embeds.{key}")
    torch.testing.assert_close(model.resid_lambdas, torch.tensor([1.15, 1.15 - 0.1 / 3, 1.15 - 0.2 / 3, 1.05]))
    torch.testing.assert_close(model.x0_lambdas, torch.tensor([0.20, 0.15, 0.10, 0.05]))
    gate = model.smear_gate.weight
    assert gate.shape == (1, 24) and gate.min() >= 0 and 0.01 < gate.max() <= 0.02
    assert model.smear_lambda.item() == 0.0 and model.backout_lambda.item() == pytest.approx(0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["v0", "jan2026", "jul2026"])
def test_cuda_build_draws_the_reference_sequence(case):
    cfg, replay = CASES[case]
    torch.manual_seed(5)
    model = GPT.build(cfg, device="cuda")
    after_build = torch.rand(8, device="cuda")
    torch.manual_seed(5)
    drawn = replay(cfg, device="cuda")
    after_replay = torch.rand(8, device="cuda")
    assert model.cos.device.type == "cuda"
    check_against_replay(model, cfg, drawn, after_build, after_replay)
