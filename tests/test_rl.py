"""RL pieces on hand-made batches: advantages, the token-normalised loss, masks, skips, seeding, pass@k, one step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.rl import (Group, build_train_rows, collect_rollouts, group_advantages, mix_seed, pack_rows, pass_at_k,
                         policy_loss, step_questions)
from nanochat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()


def tiny_model(seed=0, seq_len=64):
    torch.manual_seed(seed)
    model = GPT.build(GPTConfig(sequence_len=seq_len, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                n_embd=32))
    with torch.no_grad():  # v0 init zeroes lm_head (uniform logits); give the policy some shape
        model.lm_head.weight.normal_(0, 0.5)
    return model


class FakeTask:
    """Questions 'q<i>'; reward from a function of the completion text."""

    def __init__(self, n=8, reward=lambda i, text: float(text.startswith("a"))):
        self.n, self.fn = n, reward

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "#### 1"}],
                "i": i}

    def reward(self, conversation, text):
        return self.fn(conversation["i"], text)

    def evaluate(self, conversation, text):
        return int(self.fn(conversation["i"], text) > 0)


# -- advantages -----------------------------------------------------------------------------------------------
def test_advantages_are_reward_minus_group_mean():
    adv, valid = group_advantages([1.0, 0.0, 0.0, 1.0, 1.0])
    assert adv == pytest.approx([0.4, -0.6, -0.6, 0.4, 0.4]) and all(valid)
    assert group_advantages([0.1, 0.1, 0.1]) == ([0.0, 0.0, 0.0], [True] * 3)  # exact zeros, not 1e-17


def test_nan_reward_drops_its_sample_from_the_group():
    adv, valid = group_advantages([1.0, float("nan"), 0.0, float("inf")])
    assert valid == [True, False, True, False]
    assert adv == [0.5, 0.0, -0.5, 0.0]
    assert group_advantages([float("nan")] * 2) == ([0.0, 0.0], [False, False])


# -- the loss on a hand-made batch -------------------------------------------------------------------------------
def hand_groups():
    bos = TOK.bos_token_id
    return [
        # advantages +0.5 / -0.5; 2 + 1 sampled tokens
        Group(0, [bos, 5], [[7, 8], [9]], [[1, 1], [1]], [1.0, 0.0], [False, False]),
        # equal rewards: zero advantage, skipped, but its 2 sampled tokens count in the normaliser
        Group(1, [bos, 6], [[3], [4]], [[1], [1]], [1.0, 1.0], [False, False]),
        # a calculator output forced into the first sample (mask 0): 2 + 1 sampled tokens
        Group(2, [bos], [[10, 11, 12], [13]], [[1, 0, 1], [1]], [0.0, 1.0], [False, True]),
        # NaN reward: the sample is dropped (its 4 tokens do not count); the other is alone: zero advantage
        Group(3, [bos], [[20, 21, 22, 23], [24]], [[1, 1, 1, 1], [1]], [float("nan"), 1.0], [False, False]),
    ]


@torch.no_grad()
def hand_loss(model, groups):
    """sum over trained tokens of -A x log p(token | prefix), / every valid sampled token: one row at a time."""
    total, count = 0.0, 0
    for g in groups:
        adv, valid = group_advantages(g.rewards)
        for comp, mask, a, ok in zip(g.completions, g.masks, adv, valid):
            if not ok:
                continue
            count += sum(mask)
            seq = g.prompt + comp
            logp = F.log_softmax(model(torch.tensor([seq[:-1]])).double(), dim=-1)[0]
            for j, (tok, m) in enumerate(zip(comp, mask)):
                if m:
                    pos = len(g.prompt) - 1 + j
                    total += -a * float(logp[pos, tok])
    return total / count, count


def test_token_normalised_loss_equals_the_hand_computed_value():
    model = tiny_model()
    groups = hand_groups()
    rows = build_train_rows(groups)
    assert rows.num_tokens == 3 + 2 + 3 + 1 and rows.zero_adv_groups == 2
    assert sorted(rows.advantages) == [-0.5, -0.5, 0.5, 0.5]  # groups 1 and 3 add no rows
    expected, count = hand_loss(model, groups)
    assert count == rows.num_tokens
    got = 0.0
    for chunk in rows.chunks(3):  # 2 chunks: the sum over chunks is the whole step's loss
        inputs, targets, adv = pack_rows([rows.tokens[i] for i in chunk], [rows.masks[i] for i in chunk],
                                         [rows.advantages[i] for i in chunk], pad_id=TOK.bos_token_id)
        got += policy_loss(model, inputs, targets, adv, rows.num_tokens).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_tool_output_tokens_get_no_gradient():
    """The gradient reaching the logits is zero exactly at the positions that predict forced tokens."""
    model = tiny_model()
    bos = TOK.bos_token_id
    g = Group(0, [bos, 5], [[10, 11, 12, 13], [14]], [[1, 0, 0, 1], [1]], [1.0, 0.0], [False, False])
    rows = build_train_rows([g])
    inputs, targets, adv = pack_rows(rows.tokens, rows.masks, rows.advantages, pad_id=bos)
    seen = {}

    def keep(module, args, out):
        out.retain_grad()
        seen["out"] = out

    handle = model.lm_head.register_forward_hook(keep)
    policy_loss(model, inputs, targets, adv, rows.num_tokens).backward()
    handle.remove()
    grad = seen["out"].grad[0].abs().sum(-1)  # row 0: prompt [bos, 5] + [10, 11*, 12*, 13]
    # input position p predicts token p+1: 10 (p=1) and 13 (p=4) are trained; 11, 12 (p=2, 3) are forced
    assert grad[1] > 0 and grad[4] > 0
    assert grad[0] == 0 and grad[2] == 0 and grad[3] == 0
    assert targets[0].tolist() == [-1, 10, -1, -1, 13]


def test_zero_advantage_groups_give_zero_gradient():
    model = tiny_model()
    bos = TOK.bos_token_id
    same = [Group(i, [bos, 5 + i], [[7, 8], [9, 3]], [[1, 1], [1, 1]], [r, r], [False] * 2)
            for i, r in enumerate([0.0, 1.0, 0.25])]
    rows = build_train_rows(same)
    assert rows.tokens == [] and rows.zero_adv_groups == 3 and rows.num_tokens == 12
    # mixed with a learning group, the skipped groups change nothing: same gradient as computing them at A = 0
    learn = Group(9, [bos, 4], [[7], [8, 9]], [[1], [1, 1]], [1.0, 0.0], [False] * 2)
    rows = build_train_rows(same + [learn])

    def grads(tokens, masks, advs):
        model.zero_grad()
        policy_loss(model, *pack_rows(tokens, masks, advs, pad_id=bos), rows.num_tokens).backward()
        return [p.grad.clone() for p in model.parameters()]

    skipped = grads(rows.tokens, rows.masks, rows.advantages)
    full_tokens = rows.tokens + [g.prompt + c for g in same for c in g.completions]
    full_masks = rows.masks + [[0] * len(g.prompt) + m for g in same for m in g.masks]
    full = grads(full_tokens, full_masks, rows.advantages + [0.0] * 6)
    for a, b in zip(skipped, full):
        assert torch.allclose(a, b, atol=1e-7)
    assert any(a.abs().sum() > 0 for a in skipped)


# -- sampling ------------------------------------------------------------------------------------------------------
def test_seeded_rollouts_are_reproducible():
    model = tiny_model()
    task = FakeTask()
    kw = dict(num_samples=3, max_new_tokens=6, temperature=1.0, top_k=50, rows_per_call=6, context_len=64)
    a, sa = collect_rollouts(Engine(model, TOK), TOK, task, [0, 1, 2], seed=mix_seed(42, 0, 5), **kw)
    b, sb = collect_rollouts(Engine(model, TOK), TOK, task, [0, 1, 2], seed=mix_seed(42, 0, 5), **kw)
    c, _ = collect_rollouts(Engine(model, TOK), TOK, task, [0, 1, 2], seed=mix_seed(42, 0, 6), **kw)
    assert [g.completions for g in a] == [g.completions for g in b] and sa == sb
    assert [g.completions for g in a] != [g.completions for g in c]
    assert sa.samples == 9 and sa.questions == 3 and [g.index for g in a] == [0, 1, 2]
    assert mix_seed(42, 0, 5) == mix_seed(42, 0, 5) != mix_seed(42, 5, 0)


class ScriptedEngine:
    """Yields fixed per-row token streams (token, mask); records the calls it gets."""

    def __init__(self, streams):
        self.special = {n: TOK.encode_special(f"<|{n}|>") for n in ("bos", "assistant_end")}
        self.streams, self.calls = streams, []

    def generate(self, prompts, num_samples, max_tokens, **kw):
        self.calls.append((len(prompts), num_samples, max_tokens, kw["seed"]))
        rows = [self.streams[i % len(self.streams)] for i in range(len(prompts) * num_samples)]
        for t in range(max_tokens):
            out = [(r[t] if t < len(r) else (r[-1][0], 0)) for r in rows]
            yield [o[0] for o in out], [o[1] for o in out]


def test_rollouts_keep_the_stop_token_mask_forced_tokens_and_count_truncation():
    end = TOK.encode_special("<|assistant_end|>")
    a, b, hash_ = ord("a"), ord("b"), ord("#")
    streams = [[(a, 1), (hash_, 0), (b, 1), (end, 1)],  # forced '#' then a sampled stop
               [(b, 1), (b, 1), (b, 1), (b, 1), (b, 1), (b, 1)]]  # never stops: truncated at the cap
    engine = ScriptedEngine(streams)
    seen = []
    groups, stats = collect_rollouts(engine, TOK, FakeTask(), [0, 1], num_samples=2, max_new_tokens=5,
                                     temperature=1.0, top_k=50, seed=7, rows_per_call=2, context_len=64,
                                     score=lambda conv, text: seen.append(text) or float(text == "a#b"))
    assert [c[0] for c in engine.calls] == [1, 1]  # 2 rows per call = one question per call
    assert engine.calls[0][3] != engine.calls[1][3]  # each call its own seed
    g = groups[0]
    assert g.completions[0] == [a, hash_, b, end] and g.masks[0] == [1, 0, 1, 1]
    assert g.completions[1] == [b] * 5 and g.truncated == [False, True]
    assert seen[:2] == ["a#b", "bbbbb"] and g.rewards == [1.0, 0.0]  # the stop token is not part of the text
    assert stats.truncated == 2 and stats.forced_tokens == 2 and stats.sampled_tokens == 2 * (3 + 5)


def test_completions_are_capped_by_the_context_and_overlong_prompts_skipped():
    engine = ScriptedEngine([[(ord("b"), 1)] * 50])
    task = FakeTask(n=3)
    from nanochat.chat import render_for_completion

    plen = len(render_for_completion(TOK, task[0]))
    groups, stats = collect_rollouts(engine, TOK, task, [0, 1], num_samples=1, max_new_tokens=256,
                                     temperature=1.0, top_k=None, seed=1, rows_per_call=8, context_len=plen + 5)
    assert engine.calls[0][2] == 5 and all(len(c) == 5 for g in groups for c in g.completions)
    groups, stats = collect_rollouts(engine, TOK, task, [0, 1, 2], num_samples=1, max_new_tokens=256,
                                     temperature=1.0, top_k=None, seed=1, rows_per_call=8, context_len=plen)
    assert groups == [] and stats.long_prompts == 3


# -- bookkeeping ------------------------------------------------------------------------------------------------
def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(8, 2, 3) == pytest.approx(1 - math.comb(6, 3) / math.comb(8, 3))
    with pytest.raises(NanochatError):
        pass_at_k(2, 1, 3)


def test_step_questions_read_the_task_in_order_and_wrap():
    assert step_questions(10, 4, 0) == [0, 1, 2, 3]
    assert step_questions(10, 4, 2) == [8, 9, 0, 1]
    with pytest.raises(NanochatError):
        step_questions(0, 4, 0)


# -- one optimizer step through Lightning: nothing to learn / NaN rewards never reach the weights ---------------
def fit_steps(task, steps=2):
    import lightning as L

    from nanochat.lit.rl_module import RLModule, RLSettings, StepCounter
    from nanochat.scaling import plan

    model = tiny_model()
    p = plan(model.config, device_batch_size=2, num_iterations=steps, total_batch_tokens=2 * 64, lr_multiplier=0.05,
             warmdown_ratio=1.0, final_lr_frac=0.0)
    s = RLSettings(examples_per_step=2, num_samples=4, max_new_tokens=4, device_batch_size=3, rollout_batch=8,
                   eval_every=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = RLModule(p, TOK, task, task, s, init_state=model.state_dict())
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(StepCounter(steps), batch_size=None))
    after = module.model.state_dict()
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert trainer.global_step == steps
    return module.counters, changed


@pytest.mark.parametrize("case", ["all_equal", "all_nan", "some_nan"])
def test_a_step_with_nothing_to_learn_or_nan_rewards_is_a_counted_skip(case):
    reward = {"all_equal": lambda i, text: 1.0,
              "all_nan": lambda i, text: float("nan"),
              "some_nan": lambda i, text: float("nan") if len(text) % 3 == 0 else float(ord(text[0]) % 2 if text else 0)}
    counters, changed = fit_steps(FakeTask(reward=reward[case]))
    assert counters["samples"] == 2 * 2 * 4
    if case == "some_nan":
        assert changed and counters["nan_rewards"] > 0
    else:
        assert not changed, "weights moved on a step without an advantage"
        assert counters["skipped_steps"] == 2
        assert counters["zero_adv_groups"] == (4 if case == "all_equal" else 0)
        assert counters["nan_rewards"] == (16 if case == "all_nan" else 0)


def test_missing_data_and_missing_sft_model_are_one_clear_error(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from nanochat.stages.chat_common import input_model
    from nanochat.stages.rl import load_tasks

    with pytest.raises(NanochatError, match="does not exist"):
        load_tasks(OmegaConf.create({"gsm8k_path": str(tmp_path / "nowhere")}))
    monkeypatch.setenv("NANOCHAT_OUTPUTS", str(tmp_path / "outputs"))
    cfg = OmegaConf.create({"ckpt_path": None, "stage": {"name": "rl", "init_from": None}})
    with pytest.raises(NanochatError, match="python train.py stage=sft"):
        input_model(cfg, tmp_path / "run")
