"""The July-2026 recipe (preset jul2026): Muon's MuonEq / Muon+ / NorMuon / cautious decay step, the momentum and
weight-decay schedules, the per-group AdamW settings, the automatic token batch and its weight-decay rule, and
the `total_batch_tokens=auto` setting, each checked against an independent formulation on tiny tensors."""
import math

import pytest
import torch
from torch import nn

from nanochat.common import NanochatError
from nanochat.optim import (MuonAdamW, build_optimizer, lr_multiplier, muon_momentum, renormalize, row_equilibrate,
                            update_muon_groups, weight_decay_multiplier)
from nanochat.recipe import JUL2026, V0, check_batch_tokens, get_preset
from nanochat.scaling import auto_batch_tokens, plan
from tests.test_optim import pe_f64


@pytest.fixture
def exact_polar_express(monkeypatch):
    """Polar Express in float64 (the bf16 kernel is checked elsewhere), so the step can be checked to fp32."""
    import nanochat.optim as optim

    monkeypatch.setitem(optim.ORTHOGONALIZERS, "polar_express",
                        lambda G, steps, norm_factor=1.02, dtype=None: pe_f64(G, steps, norm_factor).float())


# -- Muon: MuonEq, Muon+, the whole step ---------------------------------------------------------------------


def test_row_equilibration_gives_every_row_the_rms_row_norm():
    torch.manual_seed(0)
    X = torch.randn(2, 6, 4) * torch.arange(1, 7).view(1, 6, 1)  # rows of very different sizes
    Y = row_equilibrate(X)
    for x, y in zip(X, Y):
        rms_row = math.sqrt(sum(r.norm().item() ** 2 for r in x) / x.shape[0])  # = ||x||_F / sqrt(rows)
        for r_in, r_out in zip(x, y):
            assert r_out.norm().item() == pytest.approx(rms_row, rel=1e-5)
            assert torch.allclose(r_out / r_out.norm(), r_in / r_in.norm(), atol=1e-6)  # direction kept
        assert y.norm().item() == pytest.approx(x.norm().item(), rel=1e-5)  # the Frobenius norm is unchanged


def test_renormalize_sets_the_semi_orthogonal_norm():
    torch.manual_seed(0)
    for shape, k in (((5, 3), 3), ((3, 8), 3), ((2, 4, 4), 4)):
        Y = renormalize(torch.randn(*shape) * 7)
        norms = Y.reshape(-1, *shape[-2:]).norm(dim=(-2, -1))
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(k)), rtol=1e-5)
    Q, _ = torch.linalg.qr(torch.randn(6, 3))  # an exactly semi-orthogonal matrix is left alone
    assert torch.allclose(renormalize(Q), Q, atol=1e-6)


def jul2026_muon_by_hand(W0, g, lr, momentum, beta2, wd):
    """One first step of the reference's fused Muon, written out: Nesterov momentum -> row equilibration ->
    Polar Express (input / 1.01 ||X||) -> Frobenius norm sqrt(min(m, n)) -> NorMuon -> cautious decay."""
    m, n = W0.shape
    buf = (1 - momentum) * g
    u = g + momentum * (buf - g)
    u = torch.stack([row * (u.norm() / math.sqrt(m)) / row.norm() for row in u])
    o = pe_f64(u, 5, norm_factor=1.01).float()
    o = o * (math.sqrt(min(m, n)) / o.norm())
    red = 1 if m >= n else 0  # rows >= cols: one second moment per row
    v_mean = o.square().mean(dim=red, keepdim=True)
    second = (1 - beta2) * v_mean
    scaled = o * second.rsqrt()
    o = scaled * (o.norm() / scaled.norm())
    lr = lr * max(1.0, m / n) ** 0.5
    mask = (o * W0) >= 0
    return W0 - lr * o - lr * wd * W0 * mask


@pytest.mark.parametrize("shape", [(24, 8), (8, 20)])
def test_jul2026_muon_step_matches_the_hand_written_step(exact_polar_express, shape):
    torch.manual_seed(3)
    W = nn.Parameter(torch.randn(*shape) * 0.1)
    W0 = W.detach().clone()
    opt = MuonAdamW([dict(kind="muon", params=[W], lr=0.02, momentum=0.9, orthogonalizer="polar_express",
                          norm_factor=1.01, row_equilibration=True, renormalize=True, beta2=0.9, weight_decay=0.2)])
    g = torch.randn(*shape)
    W.grad = g.clone()
    opt.step()
    assert torch.allclose(W.detach(), jul2026_muon_by_hand(W0, g, 0.02, 0.9, 0.9, 0.2), atol=1e-6)


def test_muon_update_norm_with_muon_plus_on_the_real_kernel():
    """bf16 Polar Express + Muon+ and no variance reduction: the applied update has norm lr * sqrt(min(m, n))."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(16, 32))
    W0 = W.detach().clone()
    opt = MuonAdamW([dict(kind="muon", params=[W], lr=0.1, momentum=0.0, orthogonalizer="polar_express",
                          norm_factor=1.01, row_equilibration=True, renormalize=True)])
    W.grad = torch.randn(16, 32)
    opt.step()
    assert (W0 - W.detach()).norm().item() == pytest.approx(0.1 * math.sqrt(16), rel=1e-4)


# -- schedules ----------------------------------------------------------------------------------------------


def reference_momentum(it, num_iterations, warmdown_ratio):
    """The July-2026 reference's momentum schedule, transcribed literally (0.85 -> 0.97 over 400 steps, then
    0.97 -> 0.90 during the lr warm-down)."""
    warmdown_iters = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown_iters
    if it < 400:
        frac = it / 400
        return (1 - frac) * 0.85 + frac * 0.97
    elif it >= warmdown_start:
        progress = (it - warmdown_start) / warmdown_iters
        return 0.97 * (1 - progress) + 0.90 * progress
    return 0.97


@pytest.mark.parametrize("total", [2000, 700, 300])  # the last two: the warm-down starts inside the warm-up
def test_momentum_schedule_with_warmdown_matches_the_reference(total):
    kw = dict(warmup=400, start=0.85, end=0.97, final=0.90, total_steps=total, warmdown_ratio=0.65)
    for step in range(total + 1):
        assert muon_momentum(step, **kw) == pytest.approx(reference_momentum(step, total, 0.65), abs=1e-12)
    if total >= 400:
        assert muon_momentum(total, **kw) == pytest.approx(0.90)
    # final = 0 (the v0 and jan2026 presets): no warm-down phase
    assert muon_momentum(total, 300, 0.85, 0.95, 0.0, total, 0.65) == pytest.approx(0.95)


def test_cosine_weight_decay_and_update_muon_groups():
    T = 100
    for t in (0, 13, 50, 77, 100):
        assert weight_decay_multiplier(t, T, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * t / T)))
    assert weight_decay_multiplier(50, T, "cosine") == pytest.approx(0.5)
    W = nn.Parameter(torch.randn(4, 4))
    opt = MuonAdamW([dict(kind="muon", params=[W], lr=0.02, weight_decay=0.3, weight_decay_schedule="cosine")])
    update_muon_groups(opt, 25, T, warmup=10, start=0.85, end=0.97, final=0.90, warmdown_ratio=0.5)
    group = opt.param_groups[0]
    assert group["weight_decay"] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert group["momentum"] == pytest.approx(0.97)
    update_muon_groups(opt, 75, T, warmup=10, start=0.85, end=0.97, final=0.90, warmdown_ratio=0.5)
    assert group["momentum"] == pytest.approx(0.97 * 0.5 + 0.90 * 0.5)


def test_jul2026_lr_schedule():
    kw = dict(warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05)
    assert lr_multiplier(0, 1000, **kw) == pytest.approx(1 / 40) and lr_multiplier(39, 1000, **kw) == 1.0
    assert lr_multiplier(350, 1000, **kw) == 1.0 and lr_multiplier(1000, 1000, **kw) == pytest.approx(0.05)
    assert lr_multiplier(675, 1000, **kw) == pytest.approx(0.5 + 0.5 * 0.05)


# -- AdamW groups ------------------------------------------------------------------------------------------


class Roles(nn.Module):
    """A stand-in model with every optimizer role of a jul2026 GPT (the optimizer only reads the roles)."""

    def __init__(self, smear=True):
        super().__init__()
        self.w = nn.ParameterDict({name: nn.Parameter(torch.randn(*shape)) for name, shape in (
            ("matrix", (8, 8)), ("embedding", (16, 8)), ("lm_head", (16, 8)), ("value_embeds", (16, 8)),
            ("resid_scalars", (2,)), ("x0_scalars", (2,)), ("smear", (1, 24)))
            if smear or name != "smear"})

    def param_groups(self):
        return {name: [p] for name, p in self.w.items()}


def test_jul2026_adamw_groups_have_the_reference_settings():
    o = JUL2026.optim
    opt = build_optimizer(Roles(), o, d_model=1536, lr_scale=2.0)  # width 2 x 768, batch scale 2
    g = {group["name"]: group for group in opt.param_groups}
    w = 2 ** -0.5 * 2.0
    want = {  # name: (lr, betas, weight decay), from the reference's setup_optimizer
        "lm_head": (0.008 * w, (0.8, 0.96), 0.01),
        "embedding": (0.3 * w, (0.8, 0.995), 0.001),
        "value_embeds": (0.3 * 0.5 * w, (0.8, 0.995), 0.01),
        "resid_scalars": (0.5 * 0.01 * 2.0, (0.8, 0.95), 0.05),
        "x0_scalars": (0.5 * 2.0, (0.96, 0.95), 0.0),
        "smear": (0.2, (0.8, 0.95), 0.0),  # fixed: neither width- nor batch-scaled
    }
    for name, (lr, betas, wd) in want.items():
        assert (g[name]["kind"], g[name]["lr"], g[name]["betas"], g[name]["weight_decay"]) == \
            ("adamw", pytest.approx(lr), betas, pytest.approx(wd)), name
    m = g["matrix"]
    assert (m["kind"], m["norm_factor"], m["row_equilibration"], m["renormalize"], m["beta2"],
            m["weight_decay_schedule"]) == ("muon", 1.01, True, True, 0.9, "cosine")
    # lr_multiplier (later stages) reaches the smear group too
    half = build_optimizer(Roles(), o, d_model=768, lr_scale=0.5, lr_multiplier=0.5)
    assert {gr["name"]: gr["lr"] for gr in half.param_groups}["smear"] == pytest.approx(0.1)


def test_v0_groups_unchanged_and_missing_smear_group_is_fine():
    opt = build_optimizer(Roles(smear=False), V0.optim, d_model=768)
    g = {group["name"]: group for group in opt.param_groups}
    assert "smear" not in g
    assert all(g[n]["betas"] == (0.8, 0.95) and g[n]["weight_decay"] == 0.0
               for n in ("lm_head", "embedding", "value_embeds", "resid_scalars"))
    assert g["value_embeds"]["lr"] == g["embedding"]["lr"] == pytest.approx(0.2)
    assert (g["matrix"]["row_equilibration"], g["matrix"]["renormalize"]) == (False, False)


# -- preset, auto batch, weight-decay rule ------------------------------------------------------------------


def test_preset_resolution():
    p = get_preset("jul2026")
    optim, schedule, horizon, batch = p.resolve(matrix_lr=0.03)
    assert optim.matrix_lr == 0.03 and optim.momentum_final == 0.90 and optim.muon_weight_decay == 0.28
    assert (schedule.warmup_steps, schedule.warmdown_ratio, schedule.final_lr_frac) == (40, 0.65, 0.05)
    assert (horizon.param_data_ratio, horizon.scaling_params, batch.total_batch_tokens) == \
        (12.0, "matrices+lm_head", "auto")
    assert p.vocab_size == 32768 and p.model["smear"] and p.model["init"] == "jul2026"
    with pytest.raises(NanochatError, match="unknown preset"):
        get_preset("jul2025")


def test_auto_batch_table_at_vocab_32768():
    got = {d: plan(d, preset="jul2026").total_batch_tokens for d in (8, 12, 20, 26)}
    assert got == {8: 2**18, 12: 2**19, 20: 2**20, 26: 2**20}
    assert auto_batch_tokens(1.0) == 2**19 and auto_batch_tokens(2.0 ** (1 / 0.383)) == 2**20


def test_auto_batch_weight_decay_and_lr_scaling():
    d12, d20 = plan(12, preset="jul2026"), plan(20, preset="jul2026")
    assert d12.optim.muon_weight_decay == pytest.approx(0.28) and d12.lr_scale == 1.0
    ratio = (12 * d20.n_scaling_params) / (12 * d12.n_scaling_params)  # D / D_ref
    assert d20.optim.muon_weight_decay == pytest.approx(0.28 * math.sqrt(2) / ratio, rel=1e-6)
    assert d20.lr_scale == pytest.approx(math.sqrt(2))
    assert "auto: 2^round(log2(2^19 x (D/D_ref)^0.383)) = 2^20" in d20.describe()
    # a given batch is kept and still moves the weight decay and the lrs (as the reference does)
    fixed = plan(20, preset="jul2026", total_batch_tokens=2**19, device_batch_size=16)
    assert fixed.total_batch_tokens == 2**19 and "fixed" in fixed.describe()
    assert fixed.optim.muon_weight_decay == pytest.approx(0.28 / ratio, rel=1e-6) and fixed.lr_scale == 1.0
    # every preset may ask for the automatic batch; v0's count is its own horizon definition (all params)
    assert plan(12, preset="v0", total_batch_tokens="auto").total_batch_tokens == 2**19


def test_device_batch_auto_takes_the_whole_batch():
    p = plan(8, preset="jul2026", device_batch_size="auto")
    assert (p.device_batch_size, p.grad_accum) == (2**18 // 2048, 1)


@pytest.mark.parametrize("bad", ["big", "2**19", 0, -4, 1.5, True])
def test_total_batch_tokens_accepts_integers_and_auto_only(bad):
    assert check_batch_tokens("auto") == "auto" and check_batch_tokens(4096) == 4096
    with pytest.raises(NanochatError, match=r"^stage.total_batch_tokens: .* is not allowed; expected a positive "
                                            r"integer or auto$"):
        check_batch_tokens(bad)
    with pytest.raises(NanochatError, match="expected a positive integer or auto"):
        plan(4, preset="jul2026", total_batch_tokens=bad)


def test_hydra_stage_auto_batch_reaches_the_plan():
    from hydra.core.global_hydra import GlobalHydra

    from nanochat.config.app import compose
    from nanochat.lit.runner import build_plan, token_batch
    from nanochat.stages import validate

    GlobalHydra.instance().clear()
    cfg = compose("train", ["hardware=cpu", "model.preset=jul2026", "model.depth=2", "model.sequence_len=64",
                            "model.head_dim=64", "hardware.device_batch_size=2", "stage.total_batch_tokens=auto"])
    validate(cfg)
    p = build_plan(cfg, vocab_size=32768)
    assert p.batch_source.startswith("auto") and p.total_batch_tokens == token_batch(cfg)
    assert p.total_batch_tokens == auto_batch_tokens(p.n_scaling_params / plan(12, preset="jul2026", seq_len=64,
                                                                                 head_dim=64).n_scaling_params)
    GlobalHydra.instance().clear()
    bad = compose("train", ["hardware=cpu", "stage.total_batch_tokens=lots"])
    with pytest.raises(NanochatError, match="^stage.total_batch_tokens: 'lots' is not allowed"):
        validate(bad)
    GlobalHydra.instance().clear()
    validate(compose("train", ["hardware=cpu", "stage=all", "pipeline.base.total_batch_tokens=auto"]))
    GlobalHydra.instance().clear()
    bad = compose("train", ["hardware=cpu", "stage=all", "pipeline.mid.total_batch_tokens=huge"])
    with pytest.raises(NanochatError, match="^pipeline.mid.total_batch_tokens: 'huge' is not allowed"):
        validate(bad)


def test_plan_momentum_kwargs_drive_the_reference_schedule():
    p = plan(12, preset="jul2026", num_iterations=1000)
    W = nn.Parameter(torch.randn(4, 4))
    opt = MuonAdamW([dict(kind="muon", params=[W], lr=0.02, weight_decay=p.optim.muon_weight_decay,
                          weight_decay_schedule=p.optim.muon_weight_decay_schedule)])
    for step in (0, 200, 400, 349, 350, 700, 999):
        update_muon_groups(opt, step, p.num_steps, **p.momentum_kwargs())
        assert opt.param_groups[0]["momentum"] == pytest.approx(reference_momentum(step, 1000, 0.65))
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.28 * 0.5 * (1 + math.cos(math.pi * 0.999)))


@pytest.mark.slow
def test_jul2026_trains_end_to_end(tiny_env):
    import json

    from tests.helpers import run_train, tiny_train_overrides

    root, corpus, tok = tiny_env
    proc = run_train(tiny_train_overrides("jul2026_e2e", corpus, tok, steps=3, **{"model.preset": "jul2026"}), root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MuonEq and Muon+" in proc.stdout and "warmup 40 steps" in proc.stdout
    summary = json.loads((root / "outputs" / "jul2026_e2e" / "summary.json").read_text())
    assert summary["plan"]["preset"] == "jul2026" and math.isfinite(summary["val_bpb"])
    ckpt = torch.load(root / "outputs" / "jul2026_e2e" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    groups = {g["name"]: g for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert groups["smear"]["lr"] == pytest.approx(0.2 * 4 / 40)  # fixed lr x warm-up, as set for a 4th step
    assert groups["matrix"]["row_equilibration"] and groups["matrix"]["momentum"] < 0.86


def test_muon_orthogonalises_in_the_compute_dtype_for_jul2026():
    """The July-2026 reference runs Polar Express in its compute dtype (fp32 on CPU); January's always in bf16."""
    import torch

    from nanochat import optim
    from nanochat.recipe import JAN2026, JUL2026

    seen = []
    real = optim.ORTHOGONALIZERS["polar_express"]

    def spy(G, steps, **kw):
        seen.append(kw["dtype"])
        return real(G, steps, **kw)

    optim.ORTHOGONALIZERS["polar_express"] = spy
    try:
        for settings in (JAN2026.optim, JUL2026.optim):
            p = torch.nn.Parameter(torch.randn(8, 4))
            opt = optim.MuonAdamW([dict(kind="muon", params=[p], lr=0.01, orthogonalizer="polar_express",
                                        ortho_dtype=settings.muon_ortho_dtype)])
            p.grad = torch.randn(8, 4)
            opt.step()
    finally:
        optim.ORTHOGONALIZERS["polar_express"] = real
    assert seen == [torch.bfloat16, torch.float32]
    G = torch.randn(3, 16, 8)
    assert optim.polar_express(G, 5, dtype=torch.float32).dtype == torch.float32


def test_jul2026_counts_raw_token_bytes_for_bpb(tmp_path):
    """val bpb of a jul2026 run counts each token's raw bytes (the July-2026 reference's token_bytes); older presets
    the UTF-8 length of its decoded text. The evaluation reads the rule from the model's run config."""
    from nanochat.evaluation import bpb_bytes_kind
    from nanochat.recipe import JAN2026, JUL2026, V0

    assert (V0.bpb_token_bytes, JAN2026.bpb_token_bytes, JUL2026.bpb_token_bytes) == ("decoded", "decoded", "raw")
    run = tmp_path / "base" / "r"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  preset: jul2026\n")
    assert bpb_bytes_kind(run / "model") == "raw"
    (run / "config.yaml").write_text("model:\n  preset: jan2026\n")
    assert bpb_bytes_kind(run / "model") == "decoded"
    assert bpb_bytes_kind(tmp_path / "elsewhere") == "decoded"
