"""The training-memory estimate against measured peaks (CPU, live tensor bytes) and users' DGX Spark figures."""
from __future__ import annotations

import pytest
import torch

from nanochat import scaling
from nanochat.common import NanochatError
from nanochat.gpt import GPT
from nanochat.memory import _LiveTensorMeter, estimate_training_memory, measure_peak
from nanochat.optim import build_optimizer


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measured_training_peak(plan, precision: str = "32-true") -> int:
    """Peak bytes of a steady-state optimizer step with 2 accumulated micro-batches.

    One full step runs first (outside the meter: it creates the optimizer state and warms kernels up); then the
    resident weights, buffers and optimizer state are counted directly and the next step (gradients created
    from nothing, as after zero_grad(set_to_none=True)) is metered tensor by tensor.
    """
    torch.manual_seed(0)
    B, T, V = plan.device_batch_size, plan.seq_len, plan.model.vocab_size
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    model = GPT.build(plan.model)
    opt = build_optimizer(model, **plan.optimizer_kwargs())

    def step():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = model(x, y)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    resident = _storage_bytes([*model.parameters(), *model.buffers(),
                               *(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))])
    meter = _LiveTensorMeter()
    with meter:
        step()
    return resident + meter.peak


def tiny_plan(depth, vocab, seq, batch, preset="v0"):
    return scaling.plan(depth, vocab_size=vocab, seq_len=seq, device_batch_size=batch, head_dim=64, num_iterations=2,
                        total_batch_tokens=2 * batch * seq, preset=preset)


@pytest.mark.parametrize("depth,vocab,seq,batch,preset,precision", [
    (1, 512, 64, 4, "v0", "32-true"),
    (2, 512, 64, 4, "jan2026", "32-true"),  # windows, value embeddings, residual scalars, NorMuon
    pytest.param(2, 2048, 128, 4, "v0", "32-true", marks=pytest.mark.slow),
    pytest.param(2, 512, 128, 8, "v0", "bf16-mixed", marks=pytest.mark.slow),
])
def test_estimate_within_20_percent_of_measured_peak(depth, vocab, seq, batch, preset, precision):
    plan = tiny_plan(depth, vocab, seq, batch, preset)
    measured = measured_training_peak(plan, precision)
    est = estimate_training_memory(plan, precision=precision)
    assert abs(est.total - measured) / measured < 0.20, (est.describe(), measured)


def test_measure_peak_counts_live_tensors():
    def fn():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(1 << 19, dtype=torch.uint8)
        del a, b
        c = torch.empty(1 << 18, dtype=torch.uint8)
        return c.sum()

    assert measure_peak(fn) == (1 << 20) + (1 << 19)  # the two big blocks were alive together


def test_estimate_components_and_scaling():
    plan = tiny_plan(2, 512, 64, 4)
    e1 = estimate_training_memory(plan)
    e2 = estimate_training_memory(plan, device_batch_size=8)
    # weights, grads and optimizer state do not depend on the batch; activations are linear in it
    assert e1.static == e2.static
    assert e2.activations == pytest.approx(2 * e1.activations, rel=0.01)
    n = plan.n_params
    assert e1.grads == 4 * n
    assert e1.total == e1.static + max(e1.activations + e1.workspace, e1.step_workspace)
    # Muon momentum for the matrices + two AdamW moments for the rest
    matrix = scaling.count_params_breakdown(plan.model)["transformer_matrices"]
    assert e1.optimizer == 4 * (matrix + 2 * (n - matrix))
    assert estimate_training_memory(plan, optimizer="adamw").optimizer == 8 * n
    assert estimate_training_memory(plan, muon_beta2=0.95).optimizer > e1.optimizer
    # half activations with mixed precision, fewer still with compile; pure bf16 halves the static part
    mixed = estimate_training_memory(plan, precision="bf16-mixed")
    assert mixed.activations < e1.activations
    assert estimate_training_memory(plan, precision="bf16-mixed", compile=True).activations < mixed.activations
    assert estimate_training_memory(plan, precision="bf16-true").grads == 2 * n
    text = e1.describe()
    assert "total (peak)" in text and "activations" in text and "per layer" in text


def test_estimate_from_config_and_bad_input():
    cfg = scaling.model_config(2, vocab_size=512, seq_len=64, head_dim=64)
    e = estimate_training_memory(cfg, device_batch_size=2)
    assert e.seq_len == 64 and e.total > 0
    assert estimate_training_memory(cfg, device_batch_size=2, seq_len=128).activations > e.activations
    with pytest.raises(NanochatError, match="device_batch_size"):
        estimate_training_memory(cfg)
    with pytest.raises(NanochatError, match="precision"):
        estimate_training_memory(cfg, device_batch_size=2, precision="fp8")
    with pytest.raises(NanochatError, match="optimizer"):
        estimate_training_memory(cfg, device_batch_size=2, optimizer="sgd")
    with pytest.raises(NanochatError, match="Plan or a GPTConfig"):
        estimate_training_memory({"depth": 2}, device_batch_size=2)


@pytest.mark.parametrize("depth,batch,reported_gb", [(24, 32, 94), (24, 16, 56)])
def test_estimate_matches_dgx_spark_reports(depth, batch, reported_gb):
    """DGX Spark users (reference nanochat, bf16 autocast, compiled, vocab 65,536): d24 used 94 GB at device
    batch 32 and 56 GB at 16."""
    plan = scaling.plan(depth, vocab_size=65536, seq_len=2048, device_batch_size=batch, num_iterations=1)
    est = estimate_training_memory(plan, precision="bf16-mixed", compile=True)
    assert abs(est.total / 1e9 - reported_gb) / reported_gb < 0.15


def test_reference_h100_batches_fit_80gb():
    """The reference trains d20 at device batch 32 on 80 GB H100s, and needs 16 for d26."""
    est = lambda depth, b: estimate_training_memory(  # noqa: E731
        scaling.plan(depth, vocab_size=65536, seq_len=2048, device_batch_size=b, num_iterations=1),
        precision="bf16-mixed", compile=True).total
    assert est(20, 32) < 80e9
    assert est(26, 32) > 80e9 > est(26, 16)
