"""fp8 training (nanochat.fp8) on CPU: which layers convert, the scaling maths, the three fp8 matmuls against a
dequantised reference, that conversion changes no parameter, key or FLOP count, and the refusal without sm_89+."""
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from nanochat import scaling
from nanochat.common import NanochatError
from nanochat.fp8 import (E4M3, E5M2, Fp8Linear, Fp8Matmul, check_fp8, convert_to_fp8, dequantize,
                          describe_conversion, fp8_layer_names, quantize)
from nanochat.gpt import GPT, GPTConfig
from tests.helpers import ROOT

BLOCK_LAYERS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
HAS = {f.name for f in fields(GPTConfig)}


def meta_model(depth, vocab, head_dim=64, **switches) -> GPT:
    cfg = scaling.model_config(depth, vocab_size=vocab, seq_len=256, head_dim=head_dim, **switches)
    with torch.device("meta"):
        return GPT(cfg)


def cpu_scaled_mm() -> bool:
    try:
        a = torch.zeros(16, 16).to(E4M3)
        torch._scaled_mm(a, a.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


needs_cpu_fp8 = pytest.mark.skipif(not cpu_scaled_mm(), reason="this torch has no CPU torch._scaled_mm")


# -- which layers ---------------------------------------------------------------------------------------------
def test_selection_at_d12_every_block_matrix_and_lm_head_but_no_gate():
    extra = {"smear": True} if "smear" in HAS else {}
    model = meta_model(12, 32768, head_dim=128, value_embeds=True, ve_gate_channels=12, **extra)
    expected = [f"transformer.h.{i}.{name}" for i in range(12) for name in BLOCK_LAYERS] + ["lm_head"]
    assert sorted(fp8_layer_names(model)) == sorted(expected)
    gates = [n for n, m in model.named_modules() if n.endswith(("ve_gate", "smear_gate"))]
    assert any(n.endswith("ve_gate") for n in gates) and not set(gates) & set(fp8_layer_names(model))


def test_selection_tiny_thresholds():
    # d2 at head_dim 64: every side is 128 (the threshold itself); vocab 500 is not a multiple of 16
    names = fp8_layer_names(meta_model(2, 500, value_embeds=True))
    assert sorted(names) == sorted(f"transformer.h.{i}.{n}" for i in range(2) for n in BLOCK_LAYERS)
    assert "lm_head" in fp8_layer_names(meta_model(2, 512))
    # d1 at head_dim 32: 64 channels, below the 128 floor: nothing converts
    assert fp8_layer_names(meta_model(1, 512, head_dim=32)) == []


# -- conversion changes no parameter, key, count or FLOP -----------------------------------------------------
def test_conversion_keeps_parameters_keys_and_flops():
    torch.manual_seed(0)
    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64, value_embeds=True, resid_scalars=True)
    model = GPT.build(cfg)
    before = dict(model.state_dict(keep_vars=True))
    params, flops, counts = list(model.parameters()), model.estimate_flops(), model.num_scaling_params()
    groups = {k: [id(p) for p in v] for k, v in model.param_groups().items()}
    idx = torch.randint(0, 512, (2, 32))
    model.eval()
    with torch.no_grad():
        ref = model(idx)
    converted = convert_to_fp8(model)
    assert len(converted) == 13 and all(isinstance(model.get_submodule(n), Fp8Linear) for n in converted)
    assert convert_to_fp8(model) == converted  # idempotent
    after = dict(model.state_dict(keep_vars=True))
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)  # same Parameters
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert {k: [id(p) for p in v] for k, v in model.param_groups().items()} == groups
    # the FLOP count (and so MFU) is by parameter role, not by module class: conversion changes nothing
    assert model.estimate_flops() == flops == scaling.flops_per_token(cfg)
    assert model.num_scaling_params() == counts
    with torch.no_grad():  # eval mode is the full-precision layer, bit for bit
        assert torch.equal(model(idx), ref)
    line = describe_conversion(model, converted)
    gates = sum(n.endswith("ve_gate") for n, _ in model.named_modules())
    assert line.startswith(f"fp8: 13 of {13 + gates} Linear layers") and gates and "\n" not in line


# -- scaling maths -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, mantissa", [(E4M3, 3), (E5M2, 2)])
def test_quantize_round_trip_and_amax_scaling(dtype, mantissa):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 48, generator=g) * torch.logspace(-2, 2, 48)  # columns over four decades
    q, inv = quantize(x, dtype)
    assert q.dtype == dtype and q.is_contiguous() and inv.dtype == torch.float32 and inv.ndim == 0
    fp8_max = torch.finfo(dtype).max
    assert q.float().abs().max().item() == fp8_max  # amax lands on the format's largest value
    assert torch.allclose(inv, x.abs().max() / fp8_max, rtol=1e-6)
    back = dequantize(q, inv)
    normal = x.abs() / inv >= torch.finfo(dtype).smallest_normal
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0 ** -(mantissa + 1) + 1e-6  # round to nearest: half an ulp
    assert normal.float().mean() > 0.9


def test_quantize_zero_tensor_and_saturation():
    q, inv = quantize(torch.zeros(4, 4), E4M3)
    assert torch.isfinite(inv) and not q.float().any()
    x = torch.tensor([1.0, -3.0, 2.0])
    q, inv = quantize(x, E5M2)
    assert q.float().abs().max() == torch.finfo(E5M2).max and torch.allclose(dequantize(q, inv), x, rtol=0.13)


@needs_cpu_fp8
def test_fp8_matmul_matches_dequantised_reference_forward_and_backward():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 64, generator=g, requires_grad=True)  # 40 rows: the weight gradient pads to 48
    w = torch.randn(48, 64, generator=g, requires_grad=True)
    grad = torch.randn(40, 48, generator=g)
    y = Fp8Matmul.apply(x, w)
    y.backward(grad)
    xd, wd, gd = (dequantize(*quantize(t, dt)) for t, dt in ((x.detach(), E4M3), (w.detach(), E4M3), (grad, E5M2)))
    assert y.dtype == x.dtype and w.grad.dtype == w.dtype
    torch.testing.assert_close(y, xd @ wd.t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, gd @ wd, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, gd.t() @ xd, rtol=1e-5, atol=1e-4)
    # and close to the exact fp32 products (fp8 rounding only)
    exact = x.detach() @ w.detach().t()
    assert (y - exact).norm() / exact.norm() < 0.06
    assert (w.grad - grad.t() @ x.detach()).norm() / (grad.t() @ x.detach()).norm() < 0.12


@needs_cpu_fp8
def test_fp8_model_loss_and_gradients_track_fp32():
    torch.manual_seed(0)
    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64)
    ref = GPT.build(cfg)
    with torch.no_grad():  # v0 starts lm_head and the projections at zero: give every layer a signal
        for p in ref.parameters():
            p.normal_(0, 0.05)
    model = GPT.build(cfg, init_weights=False)
    model.load_state_dict(ref.state_dict())
    convert_to_fp8(model)
    idx = torch.randint(0, 512, (4, 33))
    losses = []
    for m in (ref, model):
        m.train()
        loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[1] - losses[0]) / losses[0] < 0.01
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.98, (name, cos.item())


def test_module_converts_when_asked_and_keeps_plain_keys(capsys):
    from nanochat.lit.module import NanochatLM

    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64)
    plan = scaling.plan(cfg, device_batch_size=2, total_batch_tokens=64, num_iterations=2)
    plain, fp8 = (NanochatLM(plan, torch.ones(512, dtype=torch.int32), fp8=f) for f in (False, True))
    plain.configure_model(), fp8.configure_model()
    assert not any(isinstance(m, Fp8Linear) for m in plain.model.modules())
    assert sum(isinstance(m, Fp8Linear) for m in fp8.model.modules()) == 13
    assert list(fp8.model.state_dict()) == list(plain.model.state_dict())
    assert "fp8: 13 of 13 Linear layers" in capsys.readouterr().out


@needs_cpu_fp8
@pytest.mark.slow
def test_lightning_trains_in_fp8_and_validates_in_full_precision(monkeypatch):
    import lightning as L

    import nanochat.fp8
    from nanochat.lit.module import NanochatLM

    calls = []
    real = nanochat.fp8.Fp8Matmul.apply
    monkeypatch.setattr(nanochat.fp8.Fp8Matmul, "apply", lambda *a: calls.append(1) or real(*a))
    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64)
    plan = scaling.plan(cfg, device_batch_size=2, total_batch_tokens=64, num_iterations=2)
    module = NanochatLM(plan, torch.ones(512, dtype=torch.int32), fp8=True)
    rows = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(0))

    class Data:  # an iterable (a list would read as several loaders)
        def __iter__(self):
            return iter([(rows[:, :-1], rows[:, 1:])] * 2)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=Data())
    assert trainer.global_step == 2 and len(calls) == 2 * 13  # every eligible layer, every training forward
    trainer.limit_val_batches = 1.0
    results = trainer.validate(module, dataloaders=Data(), verbose=False)
    assert "val/bpb" in results[0] and len(calls) == 26  # validation ran, with the same layers in full precision
    module.model.train()
    module.model(rows[:, :-1], rows[:, 1:])
    assert len(calls) == 39  # and back in training mode they are fp8 again


# -- refusal -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerator, devices, says", [
    ("cpu", None, "accelerator=cpu"),
    ("gpu", [("NVIDIA A100-SXM4-80GB", (8, 0))], "A100-SXM4-80GB is sm_80"),
    ("gpu", [("NVIDIA H100", (9, 0)), ("Tesla T4", (7, 5))], "T4 is sm_75"),
    ("auto", [], "no CUDA GPU"),
])
def test_refused_without_sm89(accelerator, devices, says):
    with pytest.raises(NanochatError) as e:
        check_fp8(accelerator, devices=devices if devices is not None else [])
    assert "compute capability 8.9" in str(e.value) and says in str(e.value) and "\n" not in str(e.value)


def test_accepted_on_ada_hopper_blackwell_and_when_planning():
    check_fp8("gpu", devices=[("NVIDIA L4", (8, 9)), ("NVIDIA H100", (9, 0)), ("NVIDIA GB10", (12, 1))])
    check_fp8("gpu", check_device=False)  # plan_only for another machine: only the profile is checked
    with pytest.raises(NanochatError, match="accelerator=cpu"):
        check_fp8("cpu", check_device=False)
    with pytest.raises(NanochatError, match="transformer-engine"):
        check_fp8("gpu", "transformer-engine", devices=[("NVIDIA H100", (9, 0))])


def test_validation_refuses_fp8_on_cpu_and_plans_it_for_a_gpu_profile():
    from hydra.core.global_hydra import GlobalHydra

    from nanochat.config.app import compose
    from nanochat.stages import validate

    GlobalHydra.instance().clear()
    try:
        with pytest.raises(NanochatError, match="accelerator=cpu"):
            validate(compose("train", ["stage=base", "hardware=cpu", "hardware.fp8=true"]))
        validate(compose("train", ["stage=base", "hardware=h100", "hardware.fp8=true", "plan_only=true"]))
        if not torch.cuda.is_available():
            with pytest.raises(NanochatError, match="no CUDA GPU is visible"):
                validate(compose("train", ["stage=base", "hardware=h100", "hardware.fp8=true"]))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_cli_refuses_fp8_on_cpu_in_one_line(tmp_path):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path / "base"), "NANOCHAT_OUTPUTS": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "stage=base", "hardware=cpu", "hardware.fp8=true"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: hardware.fp8=true needs an NVIDIA GPU of compute capability 8.9")
    # refused before the run writes anything: only Hydra's own record of the command (as for every config error)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.name == "train.log" or p.parent.name == ".hydra" for p in written), written


@needs_cpu_fp8
@pytest.mark.slow
def test_fp8_layers_compile_to_the_same_step():
    """torch.compile treats the fp8 matmul as one graph node: loss and gradients match eager exactly."""
    torch.manual_seed(0)
    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64)
    eager = GPT.build(cfg)
    compiled = GPT.build(cfg, init_weights=False)
    compiled.load_state_dict(eager.state_dict())
    convert_to_fp8(eager), convert_to_fp8(compiled)
    compiled.compile(backend="aot_eager", dynamic=False)
    idx = torch.randint(0, 512, (4, 33))
    losses = []
    for m in (eager, compiled):
        loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.equal(a.grad, b.grad)
