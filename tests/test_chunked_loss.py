"""The chunked lm_head + soft-capped cross-entropy: same loss and gradients as the full logits, less memory."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanochat import scaling
from nanochat.chunked_loss import chunked_cross_entropy
from nanochat.common import NanochatError
from nanochat.gpt import GPT, GPTConfig
from nanochat.memory import estimate_training_memory, measure_peak


def plain_loss(h, weight, targets, cap, reduction):
    logits = F.linear(h, weight.to(h.dtype)).float()
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                           reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def inputs(n=37, d=24, V=70, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, d, generator=g) * 0.5).requires_grad_()
    t = torch.randint(0, V, (n,), generator=g)
    t[::4] = -1  # ignored targets
    return h, w, t


def grads(loss, params, seed=1):
    """Gradients under a random incoming gradient (a per-token one for 'none')."""
    g = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(loss, params, g)


@pytest.mark.parametrize("cap", [0.0, 15.0, 2.0])  # 2.0: the cap actually bends the logits
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_full_logits_fp32(cap, reduction):
    h, w, t = inputs()
    ref = plain_loss(h, w, t, cap, reduction)
    out = chunked_cross_entropy(h, w, t, cap, chunk=8, reduction=reduction)  # 37 tokens: the last chunk has 5
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(out, (h, w)), grads(ref, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if reduction == "none":
        assert (out[t < 0] == 0).all()


def near(a, b, tol=1e-2):
    """Close as whole tensors: bf16 rounding makes single entries near zero differ relatively."""
    assert ((a.float() - b.float()).norm() / b.float().norm()).item() < tol


def test_bf16_inputs_and_autocast_follow_the_plain_path():
    h, w, t = inputs(dtype=torch.bfloat16)
    ref = plain_loss(h, w, t, 15.0, "mean")
    out = chunked_cross_entropy(h, w, t, 15.0, chunk=16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    gh, gw = grads(out, (h, w))
    rh, rw = grads(ref, (h, w))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.float32  # each gradient in its input's dtype
    near(gh, rh)
    near(gw, rw)
    # autocast: fp32 inputs, bf16 matmul, fp32 after it (the 'none' path recomputes in the backward)
    h, w, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain_loss(h, w, t, 15.0, "none")
        out = chunked_cross_entropy(h, w, t, 15.0, chunk=16, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads(out, (h, w)), grads(ref, (h, w))):
        assert a.dtype == torch.float32
        near(a, b)


def test_without_gradients_and_bad_arguments():
    h, w, t = inputs()
    with torch.no_grad():
        out = chunked_cross_entropy(h, w, t, 15.0, chunk=5)
        torch.testing.assert_close(out, plain_loss(h, w, t, 15.0, "mean"))
    with pytest.raises(ValueError, match="loss_reduction"):
        chunked_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(NanochatError, match="chunk"):
        chunked_cross_entropy(h, w, t, chunk=0)
    with pytest.raises(NanochatError, match="do not match"):
        chunked_cross_entropy(h, w, t[:-1])


def tiny_model(cap=15.0, seq=24, vocab=61):
    cfg = GPTConfig(sequence_len=seq, vocab_size=vocab, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                    logit_softcap=cap, init="jan2026")  # jan2026: a nonzero lm_head, so its gradients flow
    torch.manual_seed(0)
    return GPT.build(cfg)


@pytest.mark.parametrize("cap,reduction", [(15.0, "mean"), (0.0, "sum"), (15.0, "none")])
def test_whole_model_gradients_match(cap, reduction):
    model = tiny_model(cap)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 61, (2, 24), generator=g)
    y = torch.randint(0, 61, (2, 24), generator=g)
    y[0, :5] = -1

    def run(chunk):
        model.set_loss_chunk(chunk)
        model.zero_grad(set_to_none=True)
        loss = model(x, y, loss_reduction=reduction)
        (loss * torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)).sum().backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = run(0)
    loss, got = run(7)  # 48 tokens in chunks of 7
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert got.keys() == ref_grads.keys() and "lm_head.weight" in got
    for name in got:
        torch.testing.assert_close(got[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    model.set_loss_chunk(7)
    assert model(x).shape == (2, 24, 61)  # without targets: still the logits
    with pytest.raises(NanochatError, match="loss_chunk"):
        model.set_loss_chunk(-1)


def test_memory_estimate_drops_with_loss_chunk():
    plan = scaling.plan(20, vocab_size=65536, seq_len=2048, device_batch_size=32, num_iterations=1)
    for compile_ in (False, True):
        full = estimate_training_memory(plan, precision="bf16-cast", compile=compile_)
        chunked = estimate_training_memory(plan, precision="bf16-cast", compile=compile_, loss_chunk=4096)
        assert chunked.total < full.total and chunked.logits_activations < full.logits_activations
        assert chunked.loss_chunk == 4096 and "chunks of 4,096 tokens" in chunked.describe()
    # a chunk larger than the micro-batch's tokens counts only the tokens there are
    small = estimate_training_memory(plan, device_batch_size=1, loss_chunk=2048)
    assert small.total == estimate_training_memory(plan, device_batch_size=1, loss_chunk=10**6).total
    with pytest.raises(NanochatError, match="loss_chunk"):
        estimate_training_memory(plan, loss_chunk=-4)


def test_measured_peak_is_lower_and_near_the_estimate():
    """A model whose logits dominate (vocab 4096, 512 tokens): measured peak of forward + backward on CPU."""
    cfg = GPTConfig(sequence_len=256, vocab_size=4096, n_layer=1, n_head=2, n_kv_head=2, n_embd=64, init="jan2026")
    torch.manual_seed(0)
    model = GPT.build(cfg)
    x = torch.randint(0, 4096, (2, 256))

    def peak(chunk):
        model.set_loss_chunk(chunk)

        def step():
            model(x, x).backward()
            model.zero_grad(set_to_none=True)
        return measure_peak(step)

    full, chunked = peak(0), peak(128)
    assert chunked < 0.5 * full, (full, chunked)
    # the estimate's activations + workspace (what one micro-step adds) tracks both within 35%
    for chunk, measured in ((0, full), (128, chunked)):
        est = estimate_training_memory(cfg, device_batch_size=2, loss_chunk=chunk)
        transient = est.activations + est.workspace + est.grads
        assert abs(transient - measured) / measured < 0.35, (chunk, transient, measured)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile traces the chunked loss (no graph break) and gives the eager loss and gradients (~20 s)."""
    import torch._dynamo

    model = tiny_model(seq=32, vocab=97)
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(5))
    y = x.clone()
    y[0, :3] = -1

    def run(m, chunk):
        model.set_loss_chunk(chunk)
        model.zero_grad(set_to_none=True)
        loss = m(x, y)
        loss.backward()
        return [loss.detach(), *(p.grad.clone() for p in model.parameters())]

    ref = run(model, 0)
    torch._dynamo.utils.counters.clear()
    got = run(torch.compile(model, dynamic=False), 16)
    assert not torch._dynamo.utils.counters["graph_break"]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
