import copy
import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.optim import (
    NS_COEFFS,
    POLAR_EXPRESS_COEFFS,
    MuonAdamW,
    build_optimizer,
    lr_multiplier,
    muon_momentum,
    newton_schulz,
    polar_express,
    update_muon_groups,
    weight_decay_multiplier,
)


# -- orthogonalisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 160), (3, 48, 32)])
@pytest.mark.parametrize("fn", [newton_schulz, polar_express])
def test_orthogonalisation_singular_values(shape, fn):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    X = fn(G, 5)
    assert X.shape == G.shape and X.dtype == torch.bfloat16
    s = torch.linalg.svdvals(X.float())
    assert s.min().item() > 0.5 and s.max().item() < 1.5
    # the result keeps the singular vectors of G: X ~ U f(S) V^T, so U^T X V is nearly diagonal
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    core = U.mT @ X.float() @ Vh.mT
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.abs().max().item() < 0.05


def test_square_matrix_is_mostly_orthogonalised_and_scale_free():
    torch.manual_seed(0)
    G = torch.randn(128, 128)
    s = torch.linalg.svdvals(newton_schulz(G).float())
    assert ((s > 0.5) & (s < 1.5)).float().mean() > 0.9  # only the tiniest singular values lag behind
    assert torch.allclose(newton_schulz(G * 1000).float(), newton_schulz(G).float(), atol=2e-2)


def test_coefficients_are_the_reference_ones():
    assert NS_COEFFS == (3.4445, -4.7750, 2.0315)
    assert len(POLAR_EXPRESS_COEFFS) == 5 and POLAR_EXPRESS_COEFFS[0][0] == pytest.approx(8.156554524902461)


# -- one step against hand-written reference updates ---------------------------------------------------------


def ns_f64(G, steps=5, coeffs=None, norm_factor=1.02):
    """Newton-Schulz / Polar Express in float64 (batched), as a precise stand-in for the bf16 kernels."""
    X = G.double()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    if coeffs is None:
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        coeffs = [NS_COEFFS] * steps
    else:
        X = X / (X.norm(dim=(-2, -1), keepdim=True) * norm_factor + 1e-6)
    for a, b, c in coeffs[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def pe_f64(G, steps=5, norm_factor=1.02):
    return ns_f64(G, steps, coeffs=POLAR_EXPRESS_COEFFS, norm_factor=norm_factor)


@pytest.mark.parametrize("shape", [(48, 16), (16, 40), (2, 32, 32)])
def test_bf16_kernels_match_float64(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    for fast, exact in ((newton_schulz, ns_f64), (polar_express, pe_f64)):
        got, want = fast(G, 5).double(), exact(G, 5)
        assert ((got - want).norm() / want.norm()).item() < 0.08  # bf16 iterations: ~3-6% noise


@pytest.fixture
def exact_orthogonalizers(monkeypatch):
    """Swap the bf16 kernels for float64 ones so the optimizer logic can be checked to fp32 precision."""
    import nanochat.optim as optim

    monkeypatch.setitem(optim.ORTHOGONALIZERS, "newton_schulz", lambda G, steps, dtype=None: ns_f64(G, steps).float())
    monkeypatch.setitem(optim.ORTHOGONALIZERS, "polar_express",
                        lambda G, steps, norm_factor=1.02, dtype=None: pe_f64(G, steps, norm_factor).float())


def test_single_step_muon_and_adamw_match_reference(exact_orthogonalizers):
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(48, 16))  # tall: lr scaled by sqrt(48/16)
    E = torch.nn.Parameter(torch.randn(10, 8))
    W0, E0 = W.detach().clone(), E.detach().clone()
    opt = MuonAdamW(
        [
            dict(kind="muon", params=[W], lr=0.02, momentum=0.9),
            dict(kind="adamw", params=[E], lr=0.1, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.01),
        ]
    )
    gW, gE = torch.randn(48, 16), torch.randn(10, 8)
    W.grad, E.grad = gW.clone(), gE.clone()
    opt.step()
    # Muon: buf = (1 - m) g; nesterov update = lerp(g, buf, m); orthogonalise; scale by sqrt(rows/cols)
    buf = 0.1 * gW
    u = gW + 0.9 * (buf - gW)
    expected_W = W0 - 0.02 * math.sqrt(48 / 16) * ns_f64(u).float()
    assert torch.allclose(W.detach(), expected_W, atol=1e-6)
    assert torch.equal(W.grad, gW)  # the gradient itself is left alone
    # AdamW, first step: m = 0.2 g, v = 0.05 g^2, bias corrections 0.2 and 0.05 -> update = g / (|g| + eps)
    m, v = 0.2 * gE, 0.05 * gE**2
    expected_E = E0 * (1 - 0.1 * 0.01) - 0.1 * (m / 0.2) / ((v / 0.05).sqrt() + 1e-10)
    assert torch.allclose(E.detach(), expected_E, atol=1e-6)
    # second step: momentum buffer carries over
    g2 = torch.randn(48, 16)
    W.grad = g2.clone()
    W1 = W.detach().clone()
    opt.step()
    buf = buf + 0.1 * (g2 - buf)
    u2 = g2 + 0.9 * (buf - g2)
    assert torch.allclose(W.detach(), W1 - 0.02 * math.sqrt(3) * ns_f64(u2).float(), atol=1e-6)


def test_muon_real_kernel_step_is_close_to_exact():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(48, 16))
    W0 = W.detach().clone()
    opt = MuonAdamW([dict(kind="muon", params=[W], lr=0.02, momentum=0.9)])
    g = torch.randn(48, 16)
    W.grad = g.clone()
    opt.step()
    want = 0.02 * math.sqrt(3) * ns_f64(g + 0.9 * (0.1 * g - g)).float()
    got = W0 - W.detach()
    assert ((got - want).norm() / want.norm()).item() < 0.08


def test_adamw_matches_torch_adamw_over_several_steps():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 5))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MuonAdamW([dict(kind="adamw", params=[a], lr=0.05, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)])
    ref = torch.optim.AdamW([b], lr=0.05, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(7, 5)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_jan2026_muon_step_matches_reference(exact_orthogonalizers):
    """Polar Express + variance reduction (beta2) + cautious weight decay, written out by hand."""
    torch.manual_seed(1)
    W = torch.nn.Parameter(torch.randn(16, 40) * 0.1)  # wide: per-column second moment, no lr boost
    W0 = W.detach().clone()
    opt = MuonAdamW(
        [dict(kind="muon", params=[W], lr=0.02, momentum=0.95, orthogonalizer="polar_express", beta2=0.95,
              weight_decay=0.3)]
    )
    g = torch.randn(16, 40)
    W.grad = g.clone()
    opt.step()
    u = g + 0.95 * (0.05 * g - g)
    o = pe_f64(u).float()
    v_mean = o.square().mean(dim=0, keepdim=True)  # (1, 40): one second moment per column
    second = 0.05 * v_mean  # lerp from zero with weight 1 - beta2
    scaled = o * second.rsqrt()
    o = scaled * (o.norm() / scaled.norm())  # renormalised to the Frobenius norm before the scaling
    mask = (o * W0) >= 0
    expected = W0 - 0.02 * o - 0.02 * 0.3 * W0 * mask
    assert torch.allclose(W.detach(), expected, atol=1e-6)
    assert opt.state[W]["second_momentum_buffer"].shape == (1, 40)
    assert torch.allclose(opt.state[W]["second_momentum_buffer"], second)


# -- integration with a model -------------------------------------------------------------------------------


def tiny_model(**kw):
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32, **kw)
    model = GPT(cfg)
    torch.manual_seed(0)
    model.init_weights()
    return model


def train_steps(model, opt, n, seed=0, total=10, fixed_batch=False):
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 64, (4, 16), generator=g)
    losses = []
    for step in range(n):
        update_muon_groups(opt, step, total)
        idx = batch if fixed_batch else torch.randint(0, 64, (4, 16), generator=g)
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "features,extra",
    [
        ({}, {}),
        (dict(value_embeds=True, resid_scalars=True, window_pattern="SL", init="jan2026"),
         dict(muon_orthogonalizer="polar_express", muon_beta2=0.95, muon_weight_decay=0.1,
              muon_weight_decay_schedule="linear", embedding_lr=0.3)),
    ],
)
def test_build_optimizer_groups_and_training_reduces_loss(features, extra):
    model = tiny_model(**features)
    kwargs = dict(embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, d_model=32)
    kwargs.update(extra)
    opt = build_optimizer(model, **kwargs)
    kinds = {g["name"]: g["kind"] for g in opt.param_groups}
    assert kinds["matrix"] == "muon" and kinds["embedding"] == "adamw" and kinds["lm_head"] == "adamw"
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["embedding"] == pytest.approx(kwargs["embedding_lr"] * (32 / 768) ** -0.5)
    assert lrs["lm_head"] == pytest.approx(0.004 * (32 / 768) ** -0.5)
    assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    if features:
        assert lrs["resid_scalars"] == pytest.approx(0.005) and lrs["x0_scalars"] == pytest.approx(0.5)
    losses = train_steps(model, opt, 12, total=12, fixed_batch=True)  # memorise one batch
    assert losses[-1] < losses[0] - 0.5


def test_lr_scheduler_and_clipping_work_with_one_optimizer():
    model = tiny_model()
    opt = build_optimizer(model, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, d_model=32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, 10, warmdown_ratio=0.5))
    idx = torch.randint(0, 64, (2, 16))
    for _ in range(8):
        model(idx[:, :-1], idx[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["initial_lr"] * lr_multiplier(8, 10, warmdown_ratio=0.5))


def test_state_dict_round_trip_gives_identical_steps():
    features = dict(value_embeds=True, resid_scalars=True, init="jan2026")
    extra = dict(muon_orthogonalizer="polar_express", muon_beta2=0.95, muon_weight_decay=0.1,
                 muon_weight_decay_schedule="linear")
    kw = dict(embedding_lr=0.3, unembedding_lr=0.004, matrix_lr=0.02, d_model=32, **extra)
    model = tiny_model(**features)
    opt = build_optimizer(model, **kw)
    train_steps(model, opt, 3, seed=0)
    model_sd, opt_sd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    resumed = tiny_model(**features)
    resumed.load_state_dict(model_sd)
    opt2 = build_optimizer(resumed, **kw)
    opt2.load_state_dict(opt_sd)

    a = train_steps(model, opt, 3, seed=5)
    b = train_steps(resumed, opt2, 3, seed=5)
    assert a == b
    for (n, p), (_, q) in zip(model.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_optimizer_rejects_bad_groups():
    with pytest.raises(ValueError):
        MuonAdamW([dict(kind="sgd", params=[torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1)])
    with pytest.raises(ValueError):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.zeros(3))], lr=0.1)])


def test_step_accepts_closure():
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.1)])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 16.0
    assert not torch.equal(p.detach(), torch.ones(4, 4))


# -- schedules ----------------------------------------------------------------------------------------------


def test_lr_multiplier_v0():
    # v0: no warmup, flat, linear warmdown over the last 20% to 0
    assert lr_multiplier(0, 1000) == 1.0
    assert lr_multiplier(800, 1000) == 1.0
    assert lr_multiplier(900, 1000) == pytest.approx(0.5)
    assert lr_multiplier(1000, 1000) == 0.0
    assert lr_multiplier(1200, 1000) == 0.0


def test_lr_multiplier_late_and_jan():
    assert lr_multiplier(0, 1000, 40, 0.65, 0.05) == pytest.approx(1 / 40)
    assert lr_multiplier(39, 1000, 40, 0.65, 0.05) == 1.0
    assert lr_multiplier(350, 1000, 40, 0.65, 0.05) == 1.0
    assert lr_multiplier(1000, 1000, 40, 0.65, 0.05) == pytest.approx(0.05)
    assert lr_multiplier(675, 1000, 40, 0.65, 0.05) == pytest.approx(0.5 + 0.5 * 0.05)
    assert lr_multiplier(750, 1000, 0, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(5, 10, 0, 0.0, 0.0) == 1.0


def test_momentum_and_weight_decay_schedules():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)
    assert weight_decay_multiplier(0, 100) == 1.0
    assert weight_decay_multiplier(25, 100) == 0.75
    assert weight_decay_multiplier(50, 100, "constant") == 1.0
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.1, weight_decay=0.2, weight_decay_schedule="linear")])
    update_muon_groups(opt, 150, 300)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)
