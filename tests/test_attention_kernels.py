"""Attention kernels: flex_attention with a sliding-window block mask computes what SDPA with a boolean mask does
(logits, grouped-query attention, qk scale, KV-cached decoding), and the model switches between them."""
import pytest
import torch
import torch.nn.functional as F

from nanochat import attention_kernels as ak
from nanochat.common import NanochatError
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not ak.has_flex(), reason="this torch has no flex_attention")]

# 3 layers "S", "S", "L": the short window is 8 keys back over a 32-token context; 4 query heads share 2 kv heads
WINDOWED = dict(sequence_len=32, vocab_size=97, n_layer=3, n_head=4, n_kv_head=2, n_embd=64, window_pattern="SSL",
                short_window_frac=0.25, qk_scale=1.3, value_embeds=True)


def model_of(seed=0, device="cpu", **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT.build(GPTConfig(**{**WINDOWED, **kw}), device=device)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # the zero-initialised projections get some weight, so every layer matters
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.3)
    return model


def qkv(b=2, h=4, hkv=2, t=24, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g), torch.randn(b, hkv, t, d, generator=g),
            torch.randn(b, hkv, t, d, generator=g))


@pytest.mark.parametrize("window", [0, 1, 7, 23])
def test_flex_window_equals_sdpa_mask(window):
    q, k, v = qkv()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=ak.window_mask(24, window, "cpu"), enable_gqa=True)
    got = ak.attend(q, k, v, window, "flex")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if window == 0:  # each query sees only itself: the output is its own value
        torch.testing.assert_close(got, v.repeat_interleave(2, dim=1), atol=1e-5, rtol=1e-5)


def test_block_masks_are_cached_and_full_layers_stay_causal_sdpa(monkeypatch):
    assert ak.block_mask(24, 7, "cpu") is ak.block_mask(24, 7, torch.device("cpu"))
    assert ak.block_mask(24, 7, "cpu") is not ak.block_mask(24, 8, "cpu")

    def no_flex(*a, **k):
        raise AssertionError("a window covering the sequence must not reach flex")

    monkeypatch.setattr(ak, "flex_window_attention", no_flex)
    q, k, v = qkv()
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(ak.attend(q, k, v, 24, "flex", enable_gqa=True), want)


@pytest.mark.parametrize("kw", [{}, dict(n_kv_head=4, value_embeds=False, smear=True), dict(window_pattern=None)])
@torch.no_grad()
def test_model_logits_equal_under_both_backends(kw):
    model = model_of(**kw)
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    sdpa = model(idx)
    assert all(b.attn.backend == "sdpa" for b in model.transformer.h)  # the default
    model.set_attention("flex")
    assert all(b.attn.backend == "flex" for b in model.transformer.h)
    torch.testing.assert_close(model(idx), sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(idx[:, :20]), sdpa[:, :20], atol=1e-5, rtol=1e-5)  # shorter than the context
    model.set_attention("sdpa")
    assert torch.equal(model(idx), sdpa)


def test_set_attention_refuses_unknown_and_cpu_training():
    model = model_of()
    with pytest.raises(NanochatError, match="must be one of: sdpa, flex"):
        model.set_attention("fa3")
    model.set_attention("flex")
    idx = torch.randint(0, 97, (1, 32))
    with pytest.raises(NanochatError, match="cannot train on cpu"):
        model(idx, idx)  # flex_attention has no backward off CUDA


@torch.no_grad()
def test_kv_cached_decoding_same_under_both_backends():
    model = model_of()
    prompt = list(range(1, 20))  # 19 + 20 positions: past the 8-token windows and past the 32-token context

    def greedy():
        return [t[0] for t, _ in Engine(model).generate(prompt, max_tokens=20, temperature=0.0)]

    sdpa_tokens = greedy()
    model.set_attention("flex")
    assert greedy() == sdpa_tokens and len(set(sdpa_tokens)) > 3
    # the cached prefill's last logits equal the uncached flex forward's
    ids = torch.tensor([prompt])
    from nanochat.engine import KVCache

    cache = KVCache(model.config.n_layer, 1, 64, model.config.n_kv_head, model.config.head_dim, torch.float32, "cpu")
    torch.testing.assert_close(model(ids, kv_cache=cache)[:, -1], model(ids)[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_flex_traces_inside_a_compiled_model():
    # dynamo must get through the cached block-mask lookup (on CUDA the model is compiled with flex inside);
    # the eager backend checks the tracing without a C++ compiler
    torch._dynamo.reset()
    model = model_of(seed=1)
    idx = torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(5))
    want = model(idx)
    model.set_attention("flex")
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(idx), want, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention trains only on CUDA")
def test_flex_gradients_equal_sdpa_on_cuda():
    model = model_of(device="cuda")
    idx = torch.randint(0, 97, (2, 32), device="cuda")
    grads = []
    for backend in ("sdpa", "flex"):
        model.set_attention(backend)
        model.zero_grad(set_to_none=True)
        loss = model(idx, idx)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, atol=1e-4, rtol=1e-4)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention trains only on CUDA")
def test_flex_in_a_compiled_model_trains_on_cuda():
    model = model_of(device="cuda")
    idx = torch.randint(0, 97, (2, 32), device="cuda")
    want = model(idx, idx).item()
    model.set_attention("flex")
    model.compile(dynamic=False)
    loss = model(idx, idx)
    loss.backward()
    assert abs(loss.item() - want) < 1e-4
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.transformer.h.parameters())
