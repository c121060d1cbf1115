"""The July-2026 architecture switches: smear, backout, ve gate scale, qk scale, short-window rounding, long
prompts, the bf16-cast precision; and (with a reference checkout) bit-identical init and forward.

Set NANOCHAT_REFERENCE to the root of a checkout of the reference at 92d63d4 (the folder holding its `nanochat/`
package) to run the parity test; it runs the reference in a subprocess, since both packages are called nanochat.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.common import NanochatError
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig, cast_compute_dtype, norm, window_sizes

JUL = dict(window_pattern="SSSL", short_window_frac=0.25, short_window_multiple=128, value_embeds=True,
           ve_gate_channels=12, ve_gate_scale=3.0, resid_scalars=True, smear=True, backout=True, qk_scale=1.2,
           rope_base=100000.0, logit_softcap=15.0, init="jul2026")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> GPTConfig:
    base = dict(sequence_len=32, vocab_size=128, n_layer=4, n_head=2, n_kv_head=1, n_embd=64)
    base.update(kw)
    return GPTConfig(**base)


def lively(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A seeded build with every parameter nudged, so zero-initialised projections and lambdas carry signal."""
    torch.manual_seed(seed)
    model = GPT.build(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_short_window_rounding_and_last_layer_full():
    jul = dict(window_pattern="SSSL", short_window_frac=0.25, short_window_multiple=128, n_layer=6)
    assert window_sizes(tiny(sequence_len=2048, **jul)) == [512, 512, 512, 2048, 512, 2048]
    assert window_sizes(tiny(sequence_len=512, **jul)) == [128, 128, 128, 512, 128, 512]
    assert window_sizes(tiny(sequence_len=600, **jul))[0] == 256  # 150 rounded up
    # multiple 1 keeps the Jan-2026 rule (the product, truncated)
    assert window_sizes(tiny(sequence_len=2048, window_pattern="SL", short_window_frac=0.5)) == [1024, 2048] * 2
    assert window_sizes(tiny(sequence_len=30, window_pattern="S", short_window_frac=0.25))[0] == 7
    with pytest.raises(NanochatError, match="short_window_multiple"):
        tiny(short_window_multiple=0)
    with pytest.raises(NanochatError, match="smear"):
        tiny(n_embd=16, n_head=2, smear=True)


def test_smear_mixes_the_previous_normed_embedding():
    model = lively(tiny(smear=True, n_layer=1))
    idx = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    e = norm(model.transformer.wte(idx))
    gate = model.smear_lambda * torch.sigmoid(e[..., :24] @ model.smear_gate.weight.T)
    expected = e.clone()
    expected[:, 1:] = e[:, 1:] + gate[:, 1:] * e[:, :-1]
    torch.testing.assert_close(model._smear(e), expected, atol=1e-6, rtol=0)
    # lambda 0 (the init) turns smear off exactly: the model equals one without the switch
    plain = GPT.build(tiny(n_layer=1))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "smear" not in k})
    with torch.no_grad():
        model.smear_lambda.zero_()
        assert torch.equal(model(idx), plain(idx))


def test_backout_subtracts_the_mid_depth_residual():
    model = lively(tiny(backout=True, n_layer=4))
    seen = {}
    for i in (2, 3):  # block n_layer // 2 = 2 is cached; block 3 is the last
        model.transformer.h[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    idx = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx)
        x = seen[3] - model.backout_lambda * seen[2]
        expected = model.lm_head(norm(x)).float()
    cap = model.config.logit_softcap
    torch.testing.assert_close(logits, cap * torch.tanh(expected / cap), atol=1e-6, rtol=0)


def test_ve_gate_scale_is_the_gate_range():
    """Zero gate weights give gate = scale / 2: scale 3 equals scale 2 with value tables 1.5x larger."""
    kw = dict(value_embeds=True, ve_gate_channels=12)
    a = lively(tiny(ve_gate_scale=3.0, **kw))
    b = GPT.build(tiny(ve_gate_scale=2.0, **kw))
    state = a.state_dict()
    with torch.no_grad():
        for k in state:
            if "ve_gate" in k:
                state[k].zero_()
            if k.startswith("value_embeds."):
                state[k] = state[k] * 1.5
    b.load_state_dict(state)
    a.load_state_dict({k: (v / 1.5 if k.startswith("value_embeds.") else v) for k, v in state.items()})
    idx = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(a(idx), b(idx), atol=1e-5, rtol=0)


def test_qk_scale_scales_normed_queries_and_keys(monkeypatch):
    import nanochat.attention as attention

    norms = []
    sdpa = attention.F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        norms.append((q.norm(dim=-1).mean().item(), k.norm(dim=-1).mean().item()))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = lively(tiny(qk_scale=1.2, n_layer=1))
    model(torch.randint(0, 128, (1, 6)))
    root_d = math.sqrt(model.config.head_dim)  # QK-norm gives every head vector the norm sqrt(D)
    assert norms[0] == pytest.approx((1.2 * root_d, 1.2 * root_d), rel=1e-4)


def test_prompts_longer_than_the_context_use_sequence_len_windows():
    """Up to the rotary table (10x the context): a long layer attends sequence_len tokens back, no further."""
    model = lively(tiny(n_layer=1, sequence_len=16))
    idx = torch.randint(0, 128, (1, 60), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(idx)
        t = 50
        far, near = idx.clone(), idx.clone()
        far[0, t - 17] = (far[0, t - 17] + 1) % 128  # 17 back: outside a window of 16
        near[0, t - 16] = (near[0, t - 16] + 1) % 128  # 16 back: inside
        assert torch.equal(model(far)[0, t], base[0, t])
        assert not torch.allclose(model(near)[0, t], base[0, t])
    jul = lively(tiny(sequence_len=16, **{**JUL, "short_window_multiple": 4}))
    with torch.no_grad():
        assert torch.isfinite(jul(torch.randint(0, 128, (1, 160)))).all()  # exactly the rotary table
    with pytest.raises(NanochatError, match="rotary table"):
        jul(torch.randint(0, 128, (1, 161)))


def test_bf16_cast_precision_on_cpu():
    cfg = tiny(**{**JUL, "short_window_multiple": 8})
    assert cast_compute_dtype("cpu") == torch.float32  # CPU runs fp32: identical to 32-true
    ref = lively(cfg)
    model = lively(cfg)
    model.set_compute_dtype(torch.bfloat16)  # what a CUDA sm80+ device gets
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert all(t.weight.dtype == torch.bfloat16 for t in model.value_embeds.values())
    assert model.lm_head.weight.dtype == torch.float32 and model.transformer.h[0].attn.c_q.weight.dtype == torch.float32
    idx = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(4))
    model.train()
    loss = model(idx, idx)
    assert loss.dtype == torch.float32
    loss.backward()
    assert model.lm_head.weight.grad.dtype == torch.float32  # fp32 master weights get fp32 gradients
    assert model.transformer.wte.weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert abs(loss.item() - ref(idx, idx).item()) < 0.05
    # the KV cache follows the activations; cached generation runs in bf16
    out = [t[0] for t, _ in Engine(model.eval()).generate(idx[0, :5].tolist(), max_tokens=4, temperature=0.0)]
    assert len(out) == 4
    # build(compute_dtype=...) is the same as build then set_compute_dtype
    torch.manual_seed(0)
    built = GPT.build(cfg, compute_dtype=torch.bfloat16)
    torch.manual_seed(0)
    then = GPT.build(cfg).set_compute_dtype(torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), then.state_dict().values()))


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.skipif(not _cuda_bf16(), reason="needs a CUDA GPU with bf16 (sm80+)")
def test_bf16_cast_on_cuda_trains_and_decodes():
    from nanochat.engine import KVCache

    cfg = tiny(sequence_len=64, **{**JUL, "short_window_multiple": 16})
    assert cast_compute_dtype("cuda") == torch.bfloat16
    torch.manual_seed(0)
    model = GPT.build(cfg, device="cuda", compute_dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.float32
    g = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.1 * torch.randn(p.shape, generator=g, device="cuda")).to(p.dtype))
    idx = torch.randint(0, 128, (2, 64), generator=g, device="cuda")
    loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.h[0].attn.c_q.weight.grad.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.for_model(model, 2, 64)
        assert cache.k.dtype == torch.bfloat16
        got = [model(idx[:, :40], kv_cache=cache)[:, -1]]
        got += [model(idx[:, t : t + 1], kv_cache=cache)[:, -1] for t in range(40, 64)]
    torch.testing.assert_close(torch.stack(got, 1), full[:, 39:], atol=0.15, rtol=0.05)


# -- parity with the reference implementation (only with a checkout) ---------------------------------------------
REFERENCE = os.environ.get("NANOCHAT_REFERENCE")

_REFERENCE_SIDE = r"""
import json, sys, torch
spec = json.loads(sys.argv[2])
sys.path.insert(0, spec["root"])
from nanochat.gpt import GPT, GPTConfig
torch.manual_seed(spec["seed"])
with torch.device("meta"):
    m = GPT(GPTConfig(**spec["config"]))
m.to_empty(device="cpu")
m.init_weights()
init = {k: v.clone() for k, v in m.state_dict().items()}
after = torch.rand(4)
g = torch.Generator().manual_seed(1)
params = dict(m.named_parameters())
with torch.no_grad():
    for name in sorted(params):
        params[name].add_((0.05 * torch.randn(params[name].shape, generator=g)).to(params[name].dtype))
idx = torch.randint(0, spec["config"]["vocab_size"], (2, spec["T"]), generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    logits = m(idx)
torch.save({"init": init, "after": after, "state": m.state_dict(), "idx": idx, "logits": logits}, sys.argv[1])
"""


@pytest.mark.skipif(not REFERENCE or not (Path(REFERENCE or ".") / "nanochat" / "gpt.py").exists(),
                    reason="set NANOCHAT_REFERENCE to a reference checkout")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_init_and_forward_match_the_reference(tmp_path, dtype):
    shape = dict(sequence_len=256, vocab_size=512, n_layer=5, n_head=2, n_kv_head=1, n_embd=128)
    spec = {"root": str(Path(REFERENCE).resolve()), "seed": 7, "T": 300,  # T past the context: long prompts too
            "config": {**shape, "window_pattern": "SSSL"}}
    out = tmp_path / "ref.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", _REFERENCE_SIDE, str(out), json.dumps(spec)], check=True, cwd=tmp_path,
                   env={**env, "NANOCHAT_DTYPE": dtype}, capture_output=True)
    ref = torch.load(out)
    torch.manual_seed(7)
    model = GPT.build(GPTConfig(**shape, **JUL), compute_dtype=getattr(torch, dtype))
    after = torch.rand(4)
    state = model.state_dict()
    assert set(state) == set(ref["init"])
    for name, tensor in state.items():
        assert torch.equal(tensor, ref["init"][name]), name
    assert torch.equal(after, ref["after"])  # the same number of draws
    model.load_state_dict(ref["state"])
    with torch.no_grad():
        assert torch.equal(model(ref["idx"]), ref["logits"])


def test_lightning_module_builds_the_bf16_cast_model(monkeypatch):
    import nanochat.lit.module as lit_module
    from nanochat import scaling

    assert lit_module.lightning_precision("bf16-cast") == "32-true"  # no autocast: the model casts
    assert lit_module.lightning_precision("bf16-mixed") == "bf16-mixed"
    cfg = scaling.model_config(2, vocab_size=512, seq_len=32, head_dim=64, **{**JUL, "short_window_multiple": 8})
    plan = scaling.plan(cfg, device_batch_size=2, total_batch_tokens=64, num_iterations=2)
    module = lit_module.NanochatLM(plan, torch.ones(512, dtype=torch.int32), precision="bf16-cast")
    module.configure_model()  # on CPU: fp32, identical to 32-true
    assert module.model.transformer.wte.weight.dtype == torch.float32
    monkeypatch.setattr(lit_module, "cast_compute_dtype", lambda device: torch.bfloat16)  # as on an sm80+ GPU
    module = lit_module.NanochatLM(plan, torch.ones(512, dtype=torch.int32), precision="bf16-cast")
    module.configure_model()
    model = module.model
    assert model.transformer.wte.weight.dtype == torch.bfloat16 and model.value_embeds["1"].weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32
    plain = lit_module.NanochatLM(plan, torch.ones(512, dtype=torch.int32), precision="bf16-mixed")
    plain.configure_model()
    assert plain.model.transformer.wte.weight.dtype == torch.float32
