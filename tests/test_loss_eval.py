"""Bits per byte: hand-computed values, ignored targets, special tokens, the evaluation loop."""
import math

import pytest
import torch

from nanochat.loss_eval import bpb_from_sums, bpb_sums, evaluate_bpb


def test_bpb_sums_by_hand():
    # vocab of 4: token 0 is special (0 bytes), tokens 1..3 have 1, 2 and 3 bytes
    token_bytes = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    nats = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    targets = torch.tensor([[1, 0, 3], [-1, 2, 2]])
    s_nats, s_bytes = bpb_sums(nats, targets, token_bytes)
    # counted positions: (0,0) 1 byte, (0,2) 3 bytes, (1,1) 2 bytes, (1,2) 2 bytes; special and -1 skipped
    assert s_nats.item() == pytest.approx(1 + 3 + 5 + 6)
    assert s_bytes.item() == 1 + 3 + 2 + 2
    assert bpb_from_sums(s_nats, s_bytes) == pytest.approx(15 / (math.log(2) * 8))


def test_nan_at_ignored_position_does_not_leak():
    token_bytes = torch.tensor([0, 1], dtype=torch.int32)
    nats = torch.tensor([[float("nan"), 2.0]])
    s_nats, s_bytes = bpb_sums(nats, torch.tensor([[-1, 1]]), token_bytes)
    assert s_nats.item() == 2.0 and s_bytes.item() == 1


def test_no_bytes_is_inf():
    assert bpb_from_sums(0.0, 0.0) == float("inf")


def test_shape_mismatch():
    with pytest.raises(ValueError):
        bpb_sums(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.long), torch.ones(4))


class UniformModel(torch.nn.Module):
    """Predicts a uniform distribution over V tokens: every target costs ln V nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, targets=None, loss_reduction="mean"):
        logits = torch.zeros(*x.shape, self.vocab) + self.dummy
        loss = torch.nn.functional.cross_entropy(logits.view(-1, self.vocab), targets.reshape(-1),
                                                 ignore_index=-1, reduction="none")
        return loss.view(targets.shape)


def test_evaluate_bpb_known_sequence():
    # byte-level vocabulary: 256 one-byte tokens + 1 special (0 bytes); uniform model -> ln(257) nats per token,
    # one byte per counted token, so bpb = log2(257) exactly; the special target and the -1 targets do not count
    vocab = 257
    token_bytes = torch.tensor([1] * 256 + [0], dtype=torch.int32)
    text = b"hello world"
    x = torch.tensor([[256] + list(text[:-1])])
    y = torch.tensor([list(text)])
    y2 = y.clone()
    y2[0, 3:] = -1
    y2[0, 0] = 256
    bpb = evaluate_bpb(UniformModel(vocab), [(x, y), (x, y2)], token_bytes)
    assert bpb == pytest.approx(math.log2(vocab), rel=1e-6)
    # the ignored positions would have changed nothing, but the counts are right: 11 + 2 counted tokens
    s_nats, s_bytes = bpb_sums(UniformModel(vocab)(x, targets=y2, loss_reduction="none"), y2, token_bytes)
    assert s_bytes.item() == 2


def test_evaluate_bpb_with_gpt():
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=64))
    model.init_weights()  # zero lm_head: uniform predictions
    token_bytes = torch.ones(32, dtype=torch.int32) * 2
    x = torch.randint(0, 32, (2, 16))
    y = torch.randint(0, 32, (2, 16))
    # uniform over 32 tokens of 2 bytes each: ln(32) / (ln 2 * 2) = 2.5 bits per byte
    assert evaluate_bpb(model, [(x, y)], token_bytes) == pytest.approx(2.5, rel=1e-5)
